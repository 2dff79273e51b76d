//! The one place brief provider errors are retried: exponential backoff with jitter within the
//! call's time budget, honouring Retry-After, paced under the model's rate limits. What outlasts
//! the budget is handed to the queue's delayed retry, so retries never stack.

use std::time::{Duration, Instant};

use super::catalog::ModelSpec;
use super::Router;
use crate::providers::{ChatRequest, ChatResponse, ProviderClient, ProviderError};

impl Router {
    /// Calls one candidate: with the tenant's own key when it brought one for the model's
    /// provider, falling back to the operator's key when the provider refuses it and the tenant
    /// allowed that. Returns the outcome, the attempts, and whether the tenant's key made it.
    pub(super) async fn call_candidate(
        &self,
        client: &ProviderClient,
        model: &ModelSpec,
        request: &ChatRequest,
        own: Option<&super::byok::OwnKey>,
    ) -> (Result<ChatResponse, ProviderError>, u32, bool) {
        let Some(own) = own else {
            let (result, attempts) = self.call_with_backoff(client, model, request).await;
            return (result, attempts, false);
        };
        let with_key = ChatRequest {
            credential: Some(own.key.clone()),
            ..request.clone()
        };
        let (result, attempts) = self.call_with_backoff(client, model, &with_key).await;
        match result {
            Err(e) if own.allow_fallback && super::byok::refuses_key(&e) => {
                tracing::info!(model = %model.name, "the tenant's key was refused; calling with the operator's, as the tenant allows");
                let (result, more) = self.call_with_backoff(client, model, request).await;
                (result, attempts + more, false)
            }
            result => (result, attempts, true),
        }
    }

    /// Calls one model, retrying retryable errors within the time budget. Returns the attempt count.
    pub(super) async fn call_with_backoff(
        &self,
        client: &ProviderClient,
        model: &ModelSpec,
        request: &ChatRequest,
    ) -> (Result<ChatResponse, ProviderError>, u32) {
        let tokens = request.context_input_tokens() + u64::from(request.max_tokens.unwrap_or(0));
        // Every attempt, retries included, takes a slot under the model's rate limits.
        self.with_backoff(&model.name, tokens, || async {
            let r = super::sent(super::CHAT, model, client.chat(&model.model_id, request)).await;
            self.note_rate_limit(&model.name, &r);
            r
        })
        .await
    }

    /// Runs `call` until it succeeds, fails for good, or the time budget is spent, backing off
    /// exponentially with jitter and honouring Retry-After. Each attempt first takes a slot under
    /// `model`'s rate limits for `tokens`; time spent waiting for slots is bounded on its own
    /// (`retry.pace_max_wait` per attempt) and not charged to the retry budget, so a busy model
    /// does not turn one 429 into a failed call. Returns the attempt count.
    pub(super) async fn with_backoff<T, F, Fut>(
        &self,
        model: &str,
        tokens: u64,
        call: F,
    ) -> (Result<T, ProviderError>, u32)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let started = Instant::now();
        let budget = self.retry.max_elapsed;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let paced_nanos = std::sync::atomic::AtomicU64::new(0);
        let elapsed = || {
            let paced = paced_nanos.load(std::sync::atomic::Ordering::Relaxed);
            started
                .elapsed()
                .saturating_sub(Duration::from_nanos(paced))
        };
        let policy = backoff::ExponentialBackoff {
            initial_interval: self.retry.initial_interval,
            current_interval: self.retry.initial_interval,
            max_interval: self.retry.max_interval,
            multiplier: self.retry.multiplier,
            randomization_factor: self.retry.randomization_factor,
            // The budget is enforced below, net of pacing waits.
            max_elapsed_time: None,
            ..backoff::ExponentialBackoff::default()
        };
        let op = || async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let slept = self
                .paced(model, tokens)
                .await
                .map_err(|e| classify_for_backoff(e, elapsed(), budget))?;
            let nanos = u64::try_from(slept.as_nanos()).unwrap_or(u64::MAX);
            paced_nanos.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
            call()
                .await
                .map_err(|e| classify_for_backoff(e, elapsed(), budget))
        };
        let notify = |e: ProviderError, wait: Duration| {
            tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "provider call failed, retrying");
        };
        let result = backoff::future::retry_notify(policy, op, notify).await;
        (result, attempts.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Reserves a slot for a call of up to `tokens` tokens under the model's rate limits and
    /// waits for it. A slot further away than `retry.pace_max_wait` is not taken: the attempt
    /// fails as rate-limited with that delay (the next candidate, or the queue, takes over).
    pub(super) async fn paced(&self, model: &str, tokens: u64) -> Result<Duration, ProviderError> {
        let Some(pace) = self.pace.get(model) else {
            return Ok(Duration::ZERO);
        };
        let reserved = match pace.lock() {
            Ok(mut p) => p.reserve(tokens, Instant::now(), self.retry.pace_max_wait),
            Err(_) => Ok(Duration::ZERO),
        };
        let wait = reserved.map_err(|wait| {
            crate::telemetry::metrics::rate_limit_refused(model);
            let provider = self
                .catalog
                .model(model)
                .map_or("", |m| m.provider.as_str());
            self.stats.call(provider, model, "paced", 0, None);
            paced_out(wait)
        })?;
        if !wait.is_zero() {
            crate::telemetry::metrics::rate_limit_wait(model, wait);
            tokio::time::sleep(wait).await;
        }
        Ok(wait)
    }

    /// A 429 with Retry-After pauses the model for every call of this worker.
    pub(super) fn note_rate_limit<T>(&self, model: &str, result: &Result<T, ProviderError>) {
        let Err(error) = result else {
            return;
        };
        let (Some(wait), Some(pace)) = (rate_limit_wait(error), self.pace.get(model)) else {
            return;
        };
        if let Ok(mut p) = pace.lock() {
            p.pause_until(Instant::now() + wait);
        }
    }
}

/// Decides whether backoff may try again: retryable errors are transient unless the provider's
/// Retry-After would overrun the call's time budget (then the queue's delayed retry takes over).
pub(super) fn classify_for_backoff(
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
        None if elapsed >= budget => backoff::Error::permanent(e),
        None => backoff::Error::transient(e),
    }
}

/// The error of a call whose every candidate is paced out until `wait` from now.
pub(super) fn paced_out(wait: Duration) -> ProviderError {
    ProviderError::Status {
        provider: crate::providers::error::RAGQ.into(),
        status: 429,
        message: "every candidate is at its rate limit (paced by ragq, not sent)".into(),
        retry_after: Some(wait),
    }
}

/// The pause a provider asked for with a 429.
pub(super) fn rate_limit_wait(error: &ProviderError) -> Option<Duration> {
    match error {
        ProviderError::Status {
            status: 429,
            retry_after,
            ..
        } => *retry_after,
        _ => None,
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
