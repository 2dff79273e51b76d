//! Provider failures, classified once: retryable or not, with the provider's Retry-After kept.

use std::time::Duration;

/// Why a provider call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    /// The provider answered with an error status.
    #[error("provider {provider} answered HTTP {status}: {message}")]
    Status {
        provider: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("provider {provider} did not answer within {timeout_ms} ms")]
    Timeout { provider: String, timeout_ms: u64 },
    #[error("cannot reach provider {provider}: {message}")]
    Connect { provider: String, message: String },
    /// The provider answered 2xx with a body we cannot use.
    #[error("provider {provider} sent an unusable response: {message}")]
    InvalidResponse { provider: String, message: String },
}

impl ProviderError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => status_is_retryable(*status),
            Self::Timeout { .. } | Self::Connect { .. } => true,
            Self::InvalidResponse { .. } => false,
        }
    }

    /// Whether the failure says something about the provider's health (an outage, a timeout, a
    /// broken answer) rather than about the request (4xx) or our pace (429); circuit breakers
    /// count only these.
    pub fn is_provider_fault(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status >= 500,
            Self::Timeout { .. } | Self::Connect { .. } | Self::InvalidResponse { .. } => true,
        }
    }

    /// The delay the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What a tenant may read of the failure (job errors, routing traces, webhooks): the provider,
    /// the status and the kind of failure, never the upstream body, a URL or the transport's text,
    /// which may name the operator's endpoints or echo another request. The full error goes to the
    /// log where the call failed. ragq's own failures (provider [`RAGQ`]) are shown whole.
    pub fn public(&self) -> String {
        match self {
            Self::Status {
                provider, message, ..
            }
            | Self::Connect { provider, message }
            | Self::InvalidResponse { provider, message }
                if provider == RAGQ =>
            {
                message.clone()
            }
            Self::Status {
                provider, status, ..
            } => format!("provider {provider} answered HTTP {status}"),
            Self::Timeout { .. } => self.to_string(),
            Self::Connect { provider, .. } => format!("cannot reach provider {provider}"),
            Self::InvalidResponse { provider, .. } => {
                format!("provider {provider} sent an unusable response")
            }
        }
    }

    /// A short machine-readable code for results and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status, .. } if *status >= 500 => "provider_unavailable",
            Self::Status { .. } => "provider_rejected",
            Self::Timeout { .. } => "provider_timeout",
            Self::Connect { .. } => "provider_unreachable",
            Self::InvalidResponse { .. } => "provider_invalid_response",
        }
    }
}

/// The provider named by failures ragq decides itself (every circuit open, every candidate paced
/// out, no usable model): their text is ragq's own and safe to show.
pub const RAGQ: &str = "-";

/// The one place that decides which HTTP statuses are worth retrying.
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429) || (500..=599).contains(&status)
}

/// The longest Retry-After honoured; a provider asking for more is taken to mean this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses a Retry-After header: delta-seconds or an HTTP date (RFC 9110), clamped to
/// [`MAX_RETRY_AFTER`] so that no value a provider sends (`1e20`, a date in the year 9999) can
/// overflow a duration.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        let secs = (secs.is_finite() && secs >= 0.0).then_some(secs)?;
        return Some(Duration::from_secs_f64(
            secs.min(MAX_RETRY_AFTER.as_secs_f64()),
        ));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - now;
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Turns an error status and body into a typed error, keeping the provider's message short. Both
/// API shapes wrap their message as `{"error": {"message": ...}}`.
pub fn error_from_status(
    provider: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
) -> ProviderError {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        message: String,
    }
    let message = serde_json::from_slice::<Envelope>(body)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect());
    ProviderError::Status {
        provider: provider.to_string(),
        status,
        message,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn status(status: u16) -> ProviderError {
        ProviderError::Status {
            provider: "p".into(),
            status,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn classification_separates_retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        assert_eq!(status(429).code(), "rate_limited");
        assert_eq!(status(503).code(), "provider_unavailable");
        assert_eq!(status(401).code(), "provider_rejected");
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("date");
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1e20", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("inf", now), None);
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
