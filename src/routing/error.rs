//! Why a routed call failed, with the trace of every candidate tried.

use std::time::Duration;

use super::CandidateTrace;
use crate::providers::ProviderError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("unknown routing policy `{0}`")]
    UnknownPolicy(String),
    /// The job's budget allows no candidate's worst-case cost.
    #[error("no model of policy `{policy}` fits the {cap_micros} micro-dollars per call the budget leaves ({})", summary(trace))]
    OverBudget {
        policy: String,
        cap_micros: i64,
        trace: Vec<CandidateTrace>,
    },
    /// Every model of the policy was ruled out before any call (plan, region, quality, size).
    #[error(
        "no model of policy `{policy}` may serve this call ({})",
        summary(trace)
    )]
    NoCandidate {
        policy: String,
        trace: Vec<CandidateTrace>,
    },
    #[error(
        "every candidate of policy `{policy}` failed; last: {} ({})",
        last.public(),
        summary(trace)
    )]
    Exhausted {
        policy: String,
        last: ProviderError,
        retryable: bool,
        trace: Vec<CandidateTrace>,
    },
}

impl RouteError {
    /// Whether the job may succeed if run again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::UnknownPolicy(_) | Self::OverBudget { .. } | Self::NoCandidate { .. } => false,
            Self::Exhausted { retryable, .. } => *retryable,
        }
    }

    /// The longest delay a provider asked for, to pace the job's redelivery.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::UnknownPolicy(_) | Self::OverBudget { .. } | Self::NoCandidate { .. } => None,
            Self::Exhausted { last, .. } => last.retry_after(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownPolicy(_) => "unknown_policy",
            Self::OverBudget { .. } => "budget_exceeded",
            Self::NoCandidate { .. } => "no_usable_model",
            Self::Exhausted { last, .. } => last.code(),
        }
    }
}

/// `model: outcome` for each candidate, for error messages.
pub(super) fn summary(trace: &[CandidateTrace]) -> String {
    trace
        .iter()
        .map(|c| format!("{}: {}", c.model, c.outcome))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The error of a call that found every candidate's circuit open.
pub(super) fn circuits_open() -> ProviderError {
    ProviderError::Connect {
        provider: crate::providers::error::RAGQ.into(),
        message: "every candidate's circuit breaker is open".into(),
    }
}

/// Every candidate was tried and failed.
pub(super) fn exhausted(
    policy: &str,
    last: ProviderError,
    retryable: bool,
    trace: Vec<CandidateTrace>,
) -> RouteError {
    RouteError::Exhausted {
        policy: policy.to_string(),
        last,
        retryable,
        trace,
    }
}
