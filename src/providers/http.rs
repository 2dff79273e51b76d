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
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(endpoint, e))?;
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
