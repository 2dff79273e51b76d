//! The HTTP exchange every API shape shares: post a JSON body with a timeout, keep the provider's
//! Retry-After, and classify what came back (transport failure, error status, or a body to parse).

use bytes::Bytes;

use super::error::{error_from_status, parse_retry_after};
use super::{ProviderEndpoint, ProviderError};

/// Header carrying ragq's id for one call.
pub const CALL_ID_HEADER: &str = "x-ragq-call-id";

/// Sends `request` (already carrying its body and auth headers); returns a 2xx body.
pub async fn exchange(
    endpoint: &ProviderEndpoint,
    request: reqwest::RequestBuilder,
    call_id: Option<&str>,
) -> Result<Bytes, ProviderError> {
    let mut request = request.timeout(endpoint.timeout);
    if let Some(id) = call_id {
        request = request.header(CALL_ID_HEADER, id);
    }
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(endpoint, e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
    let bytes = read_bounded(endpoint, response).await?;
    if !(200..300).contains(&status) {
        return Err(error_from_status(
            &endpoint.name,
            status,
            &bytes,
            retry_after,
        ));
    }
    Ok(bytes)
}

/// Reads a response body of at most `endpoint.max_response_bytes`: an endpoint that answers with
/// gigabytes fails the call naming the limit instead of costing the worker its memory.
async fn read_bounded(
    endpoint: &ProviderEndpoint,
    mut response: reqwest::Response,
) -> Result<Bytes, ProviderError> {
    let limit = endpoint.max_response_bytes;
    let too_large = || ProviderError::InvalidResponse {
        provider: endpoint.name.clone(),
        message: format!(
            "response body over the {limit}-byte limit (providers.max_response_bytes)"
        ),
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(endpoint, e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn transport_error(endpoint: &ProviderEndpoint, e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout {
            provider: endpoint.name.clone(),
            timeout_ms: u64::try_from(endpoint.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    } else {
        ProviderError::Connect {
            provider: endpoint.name.clone(),
            message: e.to_string(),
        }
    }
}
