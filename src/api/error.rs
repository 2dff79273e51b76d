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
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
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
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
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
            Self::TooManyRequests(_) => "rate_limited",
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
