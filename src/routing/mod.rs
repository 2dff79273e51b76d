//! Routing: which model answers a call, and the one place where brief provider errors are retried.
//!
//! A job names a policy, never a vendor model id. The router walks the policy's candidates in order;
//! for each it retries retryable errors with exponential backoff and jitter (the `backoff` crate,
//! honouring Retry-After within the call's time budget) and fails over to the next candidate on
//! anything else. Outages that outlast the budget surface as a retryable [`RouteError`], which the
//! worker turns into a delayed redelivery through the queue: retries are never stacked.
//!
//! This is the seam for cost-ranked routing with health and circuit breakers: callers only see
//! [`Router::chat`] and the [`RoutedCall`] it returns.

pub mod catalog;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;

use crate::config::RetryConfig;
use crate::providers::anthropic::AnthropicClient;
use crate::providers::openai::OpenAiClient;
use crate::providers::{ChatRequest, ChatResponse, ProviderClient, ProviderError};
use crate::spend::Price;
use catalog::{Catalog, ModelSpec, ProviderKind};

/// What happened to one candidate model, for the job's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CandidateTrace {
    pub model: String,
    pub provider: String,
    pub attempts: u32,
    pub outcome: String,
}

/// A successful call: the answer, who gave it, and what it cost.
#[derive(Debug, Clone)]
pub struct RoutedCall {
    pub response: ChatResponse,
    pub model: String,
    pub provider: String,
    pub price: Price,
    pub latency: Duration,
    pub trace: Vec<CandidateTrace>,
}

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
    #[error(
        "every candidate of policy `{policy}` failed; last: {last} ({})",
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
            Self::UnknownPolicy(_) | Self::OverBudget { .. } => false,
            Self::Exhausted { retryable, .. } => *retryable,
        }
    }

    /// The longest delay a provider asked for, to pace the job's redelivery.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::UnknownPolicy(_) | Self::OverBudget { .. } => None,
            Self::Exhausted { last, .. } => last.retry_after(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownPolicy(_) => "unknown_policy",
            Self::OverBudget { .. } => "budget_exceeded",
            Self::Exhausted { last, .. } => last.code(),
        }
    }
}

/// Routes calls over the catalog's providers; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Router {
    catalog: Arc<Catalog>,
    clients: HashMap<String, ProviderClient>,
    retry: RetryConfig,
}

impl Router {
    pub fn new(catalog: Arc<Catalog>, retry: RetryConfig) -> Self {
        // One HTTP client for every provider: pooled keep-alive connections are reused across jobs.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        let clients = catalog
            .providers()
            .iter()
            .map(|p| {
                let client = match p.kind {
                    ProviderKind::OpenAi => {
                        ProviderClient::OpenAi(OpenAiClient::new(p.endpoint.clone(), http.clone()))
                    }
                    ProviderKind::Anthropic => ProviderClient::Anthropic(AnthropicClient::new(
                        p.endpoint.clone(),
                        http.clone(),
                    )),
                };
                (p.endpoint.name.clone(), client)
            })
            .collect();
        Self {
            catalog,
            clients,
            retry,
        }
    }

    pub fn has_policy(&self, name: &str) -> bool {
        self.catalog.policy(name).is_some()
    }

    /// The prices of a policy's candidates (empty for an unknown policy), to bound a job's cost.
    pub fn candidate_prices(&self, policy: &str) -> Vec<Price> {
        self.catalog
            .policy(policy)
            .map(|p| {
                p.models
                    .iter()
                    .filter_map(|m| self.catalog.model(m).map(|s| s.price))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Answers one chat request under a policy. With `cost_cap_micros` (a budget downgrade), only
    /// candidates whose worst-case cost for this request fits the cap are tried.
    pub async fn chat(
        &self,
        policy: &str,
        request: &ChatRequest,
        cost_cap_micros: Option<i64>,
    ) -> Result<RoutedCall, RouteError> {
        let candidates = &self
            .catalog
            .policy(policy)
            .ok_or_else(|| RouteError::UnknownPolicy(policy.to_string()))?
            .models;
        let mut trace = Vec::with_capacity(candidates.len());
        let mut last = None;
        let mut any_retryable = false;
        for name in candidates {
            let Some((model, client)) = self.resolve(name) else {
                continue;
            };
            if let Some(cap) = cost_cap_micros {
                let worst = request.worst_case_micros(&model.price);
                if worst > cap {
                    let why = format!(
                        "skipped: worst case {worst} micro-dollars is over the budget cap {cap}"
                    );
                    trace.push(candidate(model, 0, why));
                    continue;
                }
            }
            let span = tracing::info_span!("provider_call", model = %model.name, provider = %model.provider);
            let started = Instant::now();
            let (result, attempts) = self
                .call_with_backoff(client, model, request)
                .instrument(span)
                .await;
            match result {
                Ok(response) => {
                    trace.push(candidate(model, attempts, "ok".into()));
                    return Ok(RoutedCall {
                        response,
                        model: model.name.clone(),
                        provider: model.provider.clone(),
                        price: model.price,
                        latency: started.elapsed(),
                        trace,
                    });
                }
                Err(e) => {
                    any_retryable |= e.is_retryable();
                    trace.push(candidate(model, attempts, format!("{}: {e}", e.code())));
                    last = Some(e);
                }
            }
        }
        let (None, Some(cap)) = (&last, cost_cap_micros) else {
            return Err(exhausted(policy, last, any_retryable, trace));
        };
        Err(RouteError::OverBudget {
            policy: policy.to_string(),
            cap_micros: cap,
            trace,
        })
    }

    fn resolve(&self, model: &str) -> Option<(&ModelSpec, &ProviderClient)> {
        let spec = self.catalog.model(model)?;
        Some((spec, self.clients.get(&spec.provider)?))
    }

    /// Calls one model, retrying retryable errors within the time budget. Returns the attempt count.
    async fn call_with_backoff(
        &self,
        client: &ProviderClient,
        model: &ModelSpec,
        request: &ChatRequest,
    ) -> (Result<ChatResponse, ProviderError>, u32) {
        let started = Instant::now();
        let budget = self.retry.max_elapsed;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let policy = backoff::ExponentialBackoff {
            initial_interval: self.retry.initial_interval,
            current_interval: self.retry.initial_interval,
            max_interval: self.retry.max_interval,
            multiplier: self.retry.multiplier,
            randomization_factor: self.retry.randomization_factor,
            max_elapsed_time: Some(budget),
            ..backoff::ExponentialBackoff::default()
        };
        let op = || async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            client
                .chat(&model.model_id, request)
                .await
                .map_err(|e| classify_for_backoff(e, started.elapsed(), budget))
        };
        let notify = |e: ProviderError, wait: Duration| {
            tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "provider call failed, retrying");
        };
        let result = backoff::future::retry_notify(policy, op, notify).await;
        (result, attempts.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Decides whether backoff may try again: retryable errors are transient unless the provider's
/// Retry-After would overrun the call's time budget (then the queue's delayed retry takes over).
fn classify_for_backoff(
    e: ProviderError,
    elapsed: Duration,
    budget: Duration,
) -> backoff::Error<ProviderError> {
    if !e.is_retryable() {
        return backoff::Error::permanent(e);
    }
    match e.retry_after() {
        Some(wait) if elapsed + wait > budget => backoff::Error::permanent(e),
        Some(wait) => backoff::Error::retry_after(e, wait),
        None => backoff::Error::transient(e),
    }
}

/// `model: outcome` for each candidate, for error messages.
fn summary(trace: &[CandidateTrace]) -> String {
    trace
        .iter()
        .map(|c| format!("{}: {}", c.model, c.outcome))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every candidate was tried and failed (or the policy had none usable).
fn exhausted(
    policy: &str,
    last: Option<ProviderError>,
    retryable: bool,
    trace: Vec<CandidateTrace>,
) -> RouteError {
    let last = last.unwrap_or_else(|| ProviderError::InvalidResponse {
        provider: "-".into(),
        message: format!("policy `{policy}` has no usable model"),
    });
    RouteError::Exhausted {
        policy: policy.to_string(),
        last,
        retryable,
        trace,
    }
}

fn candidate(model: &ModelSpec, attempts: u32, outcome: String) -> CandidateTrace {
    CandidateTrace {
        model: model.name.clone(),
        provider: model.provider.clone(),
        attempts,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::Status {
            provider: "p".into(),
            status,
            message: String::new(),
            retry_after,
        }
    }

    #[test]
    fn non_retryable_errors_are_permanent() {
        let e = classify_for_backoff(status(400, None), Duration::ZERO, Duration::from_secs(5));
        assert!(matches!(e, backoff::Error::Permanent(_)));
    }

    #[test]
    fn retry_after_is_honoured_within_budget_only() {
        let budget = Duration::from_secs(10);
        let within = classify_for_backoff(
            status(429, Some(Duration::from_secs(2))),
            Duration::ZERO,
            budget,
        );
        assert!(matches!(
            within,
            backoff::Error::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(2)
        ));
        let beyond = classify_for_backoff(
            status(429, Some(Duration::from_secs(20))),
            Duration::ZERO,
            budget,
        );
        assert!(matches!(beyond, backoff::Error::Permanent(_)));
        let plain = classify_for_backoff(status(503, None), Duration::ZERO, budget);
        assert!(matches!(
            plain,
            backoff::Error::Transient {
                retry_after: None,
                ..
            }
        ));
    }
}
