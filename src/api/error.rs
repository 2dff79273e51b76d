//! The api's errors, each with its HTTP status and a message that names the problem.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// Past a rate: the message, and whole seconds to wait (sent as `Retry-After`).
    #[error("{0}")]
    TooManyRequests(String, u64),
    #[error("{0}")]
    PiiBlocked(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `too_large`, `rate_limited`, `pii_blocked`, `unavailable` or `internal`.
    pub code: String,
    /// For people: the rule broken; for server errors a generic text with an error id.
    pub message: String,
}

/// The refusals every authenticated route may answer with, for the API's description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // described, never built: the handlers answer with `ApiError`
pub(crate) enum Refusals {
    /// The request breaks a rule; the message names it.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No `Authorization: Bearer <api key>`, or a key that is unknown, revoked or expired.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The key lacks the route's scope, acts for no tenant (an operator key on a tenant's route)
    /// or for another tenant than the request names; or (submissions) the tenant's plan may not
    /// use the policy.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Past the key's request rate (`api.rate_limit_per_s`).
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying"))
    )]
    RateLimited(ErrorBody),
    /// A server fault; the message holds an error id the operator's log explains.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The database or broker is away, or the request ran past `api.request_timeout_ms`: retry
    /// (a submission with the same id).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::PiiBlocked(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::TooLarge(_) => "too_large",
            Self::TooManyRequests(..) => "rate_limited",
            Self::PiiBlocked(_) => "pii_blocked",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<crate::scheduler::pipeline::PipelineError> for ApiError {
    fn from(e: crate::scheduler::pipeline::PipelineError) -> Self {
        use crate::scheduler::pipeline::PipelineError as P;
        match e {
            P::Invalid(m) => Self::BadRequest(format!("invalid pipeline: {m}")),
            P::Exists(_) | P::TooMany(_) => Self::Conflict(e.to_string()),
            P::NotFound(_) => Self::NotFound(e.to_string()),
            P::Db(db) => db.into(),
        }
    }
}

/// Middleware: the api's own routes answer every error as [`ErrorBody`] JSON, including the
/// framework's rejections (a malformed query string, a body over the limit, a wrong method),
/// which come as plain text. Their text says what is wrong with the request and holds nothing
/// internal.
pub(crate) async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let api_route = request.uri().path().starts_with("/v1/");
    let response = next.run(request).await;
    let status = response.status();
    let is_json = (response.headers().get(axum::http::header::CONTENT_TYPE))
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !api_route || is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        _ if status.is_server_error() => "internal error".to_string(),
        "" => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
        t => t.to_string(),
    };
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let mut rebuilt = (
        status,
        axum::Json(ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message,
            },
        }),
    )
        .into_response();
    // Keep what the framework said beyond the body (`Allow` on a 405).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(format!("database: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use axum::response::IntoResponse;

    async fn body(e: ApiError) -> (u16, String) {
        let response = e.into_response();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn server_errors_show_an_id_and_no_details() {
        let leaky = "database: error returned from database: invalid byte sequence for encoding \"UTF8\": 0x00";
        let (status, text) = body(ApiError::Unavailable(leaky.into())).await;
        assert_eq!(status, 503);
        assert!(
            text.contains("error id") && text.contains("retry"),
            "{text}"
        );
        assert!(
            !text.contains("UTF8") && !text.contains("database"),
            "{text}"
        );
        let (status, text) = body(ApiError::Internal("sqlx pool timed out".into())).await;
        assert_eq!(status, 500);
        assert!(!text.contains("sqlx"), "{text}");
        let (status, text) =
            body(ApiError::BadRequest("`id` must be 1-128 characters".into())).await;
        assert_eq!(status, 400);
        assert!(
            text.contains("`id` must be"),
            "client errors say what is wrong: {text}"
        );
    }
}
