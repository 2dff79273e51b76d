//! Why an attempt of a job did not succeed, typed by what may happen next.
//!
//! A handler says only what went wrong and whether another attempt could help; what that means for
//! the job and its delivery (fail, retry later, dead-letter) is decided in one place,
//! [`crate::settle`].

use std::time::Duration;

use ragq::retrieval::StoreError;
use ragq::routing::RouteError;

use crate::commit::CommitError;

/// Why an attempt did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// The job cannot succeed as submitted or configured (bad input, unknown policy, over
    /// budget): it fails for good at once.
    #[error("{code}: {message}")]
    Permanent { code: &'static str, message: String },
    /// Another attempt may succeed (a provider outage outlasting the router's retries, the
    /// database away): retried after a delay while attempts remain.
    #[error("{code}: {message}")]
    Transient {
        code: &'static str,
        message: String,
        /// The delay a provider asked for, used to pick the retry queue.
        retry_after: Option<Duration>,
    },
    /// The handler panicked. Retried like a transient failure; once attempts are spent the job
    /// fails and its message goes to the dead-letter queue, so the input that crashed it can be
    /// looked at.
    #[error("{code}: {message}", code = PANICKED)]
    Panicked { message: String },
}

/// The code of a job whose handler panicked.
pub const PANICKED: &str = "handler_panicked";

impl JobError {
    /// A job whose input breaks a rule: it fails at once with the rule in its reason.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::permanent("invalid_input", message)
    }

    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        Self::Permanent {
            code,
            message: message.into(),
        }
    }

    pub fn transient(code: &'static str, message: impl Into<String>) -> Self {
        Self::Transient {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Permanent { code, .. } | Self::Transient { code, .. } => code,
            Self::Panicked { .. } => PANICKED,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Permanent { message, .. }
            | Self::Transient { message, .. }
            | Self::Panicked { message } => message,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent { .. })
    }

    /// The delay the failure asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error of a panic's payload (a `&str` or `String` message, else a fixed text).
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic without a message".into());
        // The payload may quote input; keep the reason short.
        Self::Panicked {
            message: message.chars().take(200).collect(),
        }
    }

    fn classified(
        code: &'static str,
        message: String,
        retryable: bool,
        retry_after: Option<Duration>,
    ) -> Self {
        if retryable {
            Self::Transient {
                code,
                message,
                retry_after,
            }
        } else {
            Self::permanent(code, message)
        }
    }
}

impl From<RouteError> for JobError {
    fn from(e: RouteError) -> Self {
        Self::classified(e.code(), e.to_string(), e.is_retryable(), e.retry_after())
    }
}

/// A job's error reaches its tenant (result, webhook, API), so infrastructure failures carry only
/// their public form there; the whole error is logged here, once.
impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        if e.is_retryable() {
            tracing::warn!(error = %e, "vector store failed");
        }
        Self::classified(e.code(), e.public(), e.is_retryable(), None)
    }
}

impl From<CommitError> for JobError {
    fn from(e: CommitError) -> Self {
        tracing::warn!(error = %e, "cannot commit the job's outcome");
        Self::transient("database_unavailable", "the database is unavailable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_payload_becomes_a_short_retryable_reason() {
        let long = "x".repeat(500);
        let e = JobError::from_panic(&long);
        assert_eq!(e.code(), PANICKED);
        assert_eq!(e.message().len(), 200);
        assert!(e.is_retryable());
        let e = JobError::from_panic(&"index out of bounds");
        assert_eq!(e.message(), "index out of bounds");
        assert_eq!(
            JobError::from_panic(&42u8).message(),
            "panic without a message"
        );
    }

    #[test]
    fn only_transient_errors_carry_a_retry_after() {
        let e = JobError::Transient {
            code: "rate_limited",
            message: String::new(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(!JobError::invalid("no").is_retryable());
        assert_eq!(JobError::invalid("no").retry_after(), None);
    }
}
