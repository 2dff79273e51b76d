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
pub mod health;
pub mod pace;
pub mod share;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;

use crate::config::RetryConfig;
use crate::providers::anthropic::AnthropicClient;
use crate::providers::openai::OpenAiClient;
use crate::providers::{
    ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Metered, ProviderClient,
    ProviderError, Usage,
};
use crate::spend::Price;
use catalog::{Catalog, ModelSpec, ProviderKind, RoutingPolicy, Strategy};
use health::ModelHealth;
use pace::ModelPace;

/// What happened to one candidate model, for the job's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CandidateTrace {
    pub model: String,
    pub provider: String,
    pub attempts: u32,
    pub outcome: String,
}

/// What a call produced: the primary outcome, and the shadow copy's if one was made.
#[derive(Debug)]
pub struct Routed {
    pub primary: Result<RoutedCall, RouteError>,
    pub shadow: Option<ShadowCall>,
}

/// An answered call: the provider's response, the model that gave it, its price and its latency.
/// Chat answers, shadow copies and embeddings share it, so one function books them all.
#[derive(Debug, Clone)]
pub struct Answered<R> {
    pub response: R,
    pub model: String,
    pub provider: String,
    pub price: Price,
    pub latency: Duration,
}

impl<R: Metered> Answered<R> {
    fn new(model: &ModelSpec, response: R, latency: Duration) -> Self {
        Self {
            response,
            model: model.name.clone(),
            provider: model.provider.clone(),
            price: model.price,
            latency,
        }
    }

    pub fn usage(&self) -> Usage {
        self.response.usage()
    }

    /// What the call cost, at the model's price.
    pub fn cost_micros(&self) -> i64 {
        self.price.cost_micros(self.usage())
    }
}

/// A shadow copy's answer: booked and timed, never returned to the job.
pub type ShadowCall = Answered<ChatResponse>;

/// A successful embeddings call.
pub type EmbeddedCall = Answered<EmbeddingResponse>;

/// A successful routed call: the answer, and the trace of the candidates tried for it.
#[derive(Debug, Clone)]
pub struct RoutedCall {
    pub answer: Answered<ChatResponse>,
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

/// Who a call is for: the tenant's plan (policies may restrict models per plan) and, after a budget
/// downgrade, the most each call may cost in the worst case.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallScope<'a> {
    pub plan: Option<&'a str>,
    pub cost_cap_micros: Option<i64>,
}

/// Routes calls over the catalog's providers; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Router {
    catalog: Arc<Catalog>,
    clients: HashMap<String, ProviderClient>,
    retry: RetryConfig,
    /// Per model: error rate, latency and circuit breaker, learned from every call.
    health: HashMap<String, Mutex<ModelHealth>>,
    /// Per model with rate limits: this worker's pacing under its share of them.
    pace: HashMap<String, Mutex<ModelPace>>,
}

impl Router {
    /// Builds the router and its HTTP client; fails if the client cannot be built (its TLS
    /// backend), rather than falling back to a client without its settings.
    pub fn new(catalog: Arc<Catalog>, retry: RetryConfig) -> Result<Self, reqwest::Error> {
        // One HTTP client for every provider: pooled keep-alive connections are reused across jobs.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
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
        let health = catalog
            .model_names()
            .map(|m| (m.to_string(), Mutex::new(ModelHealth::default())))
            .collect();
        let now = Instant::now();
        let pace = catalog
            .model_names()
            .filter_map(|m| catalog.model(m))
            .filter(|m| m.rpm.is_some() || m.tpm.is_some())
            .map(|m| {
                (
                    m.name.clone(),
                    Mutex::new(ModelPace::new(m.rpm, m.tpm, 1.0, now)),
                )
            })
            .collect();
        Ok(Self {
            catalog,
            clients,
            retry,
            health,
            pace,
        })
    }

    /// Sets this worker's share of every model's rate limits (1 / live workers).
    pub fn set_rate_share(&self, share: f64) {
        for p in self.pace.values() {
            if let Ok(mut p) = p.lock() {
                p.set_share(share.clamp(0.0, 1.0));
            }
        }
    }

    /// Reserves a slot for a call of up to `tokens` tokens under the model's rate limits and
    /// waits for it. A slot further away than `retry.pace_max_wait` is not taken: the attempt
    /// fails as rate-limited with that delay (the next candidate, or the queue, takes over).
    async fn paced(&self, model: &str, tokens: u64) -> Result<Duration, ProviderError> {
        let Some(pace) = self.pace.get(model) else {
            return Ok(Duration::ZERO);
        };
        let reserved = match pace.lock() {
            Ok(mut p) => p.reserve(tokens, Instant::now(), self.retry.pace_max_wait),
            Err(_) => Ok(Duration::ZERO),
        };
        let wait = reserved.map_err(paced_out)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(wait)
    }

    /// A 429 with Retry-After pauses the model for every call of this worker.
    fn note_rate_limit<T>(&self, model: &str, result: &Result<T, ProviderError>) {
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
    /// Answers one chat request under a policy, and copies it to the policy's shadow model when
    /// this call falls in the shadow share (never under a budget cap). `shadow_call_id`
    /// identifies the copy to the provider. The shadow's outcome comes back beside the primary's
    /// even when the primary fails, so its cost is always booked.
    pub async fn chat(
        &self,
        policy: &str,
        request: &ChatRequest,
        scope: CallScope<'_>,
        shadow_call_id: Option<String>,
    ) -> Routed {
        let target = self.shadow_target(policy, request, scope);
        let primary = self.route(policy, request, scope);
        let Some((model, client)) = target else {
            return Routed {
                primary: primary.await,
                shadow: None,
            };
        };
        let copy = ChatRequest {
            call_id: shadow_call_id,
            ..request.clone()
        };
        let (primary, shadow) = tokio::join!(primary, self.shadow_call(model, client, &copy));
        Routed { primary, shadow }
    }

    /// The shadow model for this call, if the policy has one and the call falls in its share.
    fn shadow_target(
        &self,
        policy: &str,
        request: &ChatRequest,
        scope: CallScope<'_>,
    ) -> Option<(&ModelSpec, &ProviderClient)> {
        let (model, share) = self.catalog.policy(policy)?.shadow.as_ref()?;
        let chosen = scope.cost_cap_micros.is_none()
            && unit_hash(request.call_id.as_deref(), "shadow") < *share;
        chosen.then(|| self.resolve(model)).flatten()
    }

    /// One attempt, no retries or failover: a shadow must not cost more than the share asked.
    async fn shadow_call(
        &self,
        model: &ModelSpec,
        client: &ProviderClient,
        request: &ChatRequest,
    ) -> Option<ShadowCall> {
        if !self.with_health(&model.name, |h| h.admit(Instant::now())) {
            return None;
        }
        let started = Instant::now();
        let result = client.chat(&model.model_id, request).await;
        let latency = started.elapsed();
        self.learn(&model.name, &result, latency);
        match result {
            Ok(response) => Some(Answered::new(model, response, latency)),
            Err(e) => {
                tracing::debug!(model = %model.name, error = %e, "shadow call failed");
                None
            }
        }
    }

    /// Embeds texts with one named model. Embeddings never fail over to another model: vectors
    /// of different models do not compare, so a collection is bound to its model. Retryable
    /// errors are retried with backoff like chat calls, and the model's health learns from them.
    pub async fn embed(
        &self,
        model: &str,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddedCall, RouteError> {
        let Some((spec, client)) = self.resolve(model) else {
            return Err(RouteError::UnknownPolicy(format!(
                "embedding model {model}"
            )));
        };
        let exhausted_by = |e: ProviderError, attempts: u32| {
            let trace = vec![candidate(spec, attempts, format!("{}: {e}", e.code()))];
            let retryable = e.is_retryable();
            exhausted(model, Some(e), retryable, trace)
        };
        if !self.with_health(&spec.name, |h| h.admit(Instant::now())) {
            return Err(exhausted_by(circuits_open(), 0));
        }
        // Texts never hold more tokens than bytes: a sound bound for the token limit.
        let tokens = request.inputs.iter().map(|t| t.len() as u64).sum();
        let started = Instant::now();
        let (result, attempts) = self
            .with_backoff((&spec.name, tokens), || async {
                let r = client.embed(&spec.model_id, request).await;
                self.note_rate_limit(&spec.name, &r);
                r
            })
            .await;
        let latency = started.elapsed();
        self.learn(&spec.name, &result, latency);
        match result {
            Ok(response) => Ok(Answered::new(spec, response, latency)),
            Err(e) => Err(exhausted_by(e, attempts)),
        }
    }

    /// The smallest context window among a policy's candidates: a prompt that fits it fits any.
    pub fn min_context_window(&self, policy: &str) -> Option<u32> {
        let p = self.catalog.policy(policy)?;
        p.models
            .iter()
            .filter_map(|m| self.catalog.model(m))
            .map(|m| m.context_window)
            .min()
    }

    /// The routing decision alone, as a call would make it now: the models it would try, in order,
    /// and why the others were skipped. For operators (a dry run) and for measuring the decision.
    pub fn plan(
        &self,
        policy: &str,
        request: &ChatRequest,
        scope: CallScope<'_>,
    ) -> Result<(Vec<String>, Vec<CandidateTrace>), RouteError> {
        let spec = self
            .catalog
            .policy(policy)
            .ok_or_else(|| RouteError::UnknownPolicy(policy.to_string()))?;
        let mut skipped = Vec::new();
        let order = self
            .candidates(spec, request, scope, &mut skipped)
            .into_iter()
            .map(|(m, _)| m.name.clone())
            .collect();
        Ok((order, skipped))
    }

    /// The worst-case price of the policy's shadow model, for budget estimates.
    /// The model a call under `policy` may cost the most on: the candidate with the highest worst
    /// case for `request`. Write-ahead intents record a call at this bound.
    pub fn priciest_candidate(&self, policy: &str, request: &ChatRequest) -> Option<&ModelSpec> {
        self.catalog
            .policy(policy)?
            .models
            .iter()
            .filter_map(|m| self.catalog.model(m))
            .max_by_key(|m| request.worst_case_micros(&m.price))
    }

    /// The policy's shadow model, if it has one.
    pub fn shadow_model(&self, policy: &str) -> Option<&ModelSpec> {
        let (model, _) = self.catalog.policy(policy)?.shadow.as_ref()?;
        self.catalog.model(model)
    }

    /// A model of the catalog by name.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.catalog.model(name)
    }

    pub fn shadow_price(&self, policy: &str) -> Option<Price> {
        let (model, _) = self.catalog.policy(policy)?.shadow.as_ref()?;
        self.catalog.model(model).map(|m| m.price)
    }

    async fn route(
        &self,
        policy: &str,
        request: &ChatRequest,
        scope: CallScope<'_>,
    ) -> Result<RoutedCall, RouteError> {
        let cost_cap_micros = scope.cost_cap_micros;
        let spec = self
            .catalog
            .policy(policy)
            .ok_or_else(|| RouteError::UnknownPolicy(policy.to_string()))?;
        let mut trace = Vec::with_capacity(spec.models.len());
        let candidates = self.candidates(spec, request, scope, &mut trace);
        let mut last = None;
        let mut any_retryable = false;
        let mut circuit_open = false;
        for (model, client) in candidates {
            if !self.with_health(&model.name, |h| h.admit(Instant::now())) {
                trace.push(candidate(model, 0, "skipped: circuit open".into()));
                circuit_open = true;
                continue;
            }
            let span = tracing::info_span!("provider_call", model = %model.name, provider = %model.provider);
            let started = Instant::now();
            let (result, attempts) = self
                .call_with_backoff(client, model, request)
                .instrument(span)
                .await;
            let latency = started.elapsed();
            self.learn(&model.name, &result, latency);
            match result {
                Ok(response) => {
                    trace.push(candidate(model, attempts, "ok".into()));
                    return Ok(RoutedCall {
                        answer: Answered::new(model, response, latency),
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
        match (&last, cost_cap_micros) {
            // Nothing was called because every usable model's circuit is open: try again later.
            (None, _) if circuit_open => Err(exhausted(policy, Some(circuits_open()), true, trace)),
            (None, Some(cap)) => Err(RouteError::OverBudget {
                policy: policy.to_string(),
                cap_micros: cap,
                trace,
            }),
            _ => Err(exhausted(policy, last, any_retryable, trace)),
        }
    }

    /// The policy's candidates for this request, constraints applied (each skip traced with its
    /// reason), ranked by its strategy, cut to its fallback depth.
    fn candidates<'a>(
        &'a self,
        policy: &RoutingPolicy,
        request: &ChatRequest,
        scope: CallScope<'_>,
        trace: &mut Vec<CandidateTrace>,
    ) -> Vec<(&'a ModelSpec, &'a ProviderClient)> {
        let cost_cap_micros = scope.cost_cap_micros;
        let plan_allows = |model: &str| {
            let allowed = scope.plan.and_then(|p| policy.plans.get(p));
            allowed.is_none_or(|list| list.iter().any(|m| m == model))
        };
        let needed = request.context_input_tokens() + u64::from(request.max_tokens.unwrap_or(0));
        let mut out = Vec::with_capacity(policy.models.len());
        for name in &policy.models {
            let Some((model, client)) = self.resolve(name) else {
                continue;
            };
            let worst = request.worst_case_micros(&model.price);
            let skip = if policy.min_quality.is_some_and(|q| model.quality_tier < q) {
                Some(format!(
                    "skipped: quality tier {} is below the policy's minimum",
                    model.quality_tier
                ))
            } else if policy
                .regions
                .as_ref()
                .is_some_and(|r| !r.contains(&model.region))
            {
                Some(format!(
                    "skipped: region `{}` is not allowed by the policy",
                    model.region
                ))
            } else if policy
                .providers
                .as_ref()
                .is_some_and(|p| !p.contains(&model.provider))
            {
                Some(format!(
                    "skipped: provider `{}` is not allowed by the policy",
                    model.provider
                ))
            } else if !plan_allows(&model.name) {
                Some(format!(
                    "skipped: plan `{}` may not use this model",
                    scope.plan.unwrap_or_default()
                ))
            } else if needed > u64::from(model.context_window) {
                Some(format!(
                    "skipped: needs up to {needed} tokens, context window is {}",
                    model.context_window
                ))
            } else if cost_cap_micros.is_some_and(|cap| worst > cap) {
                Some(format!(
                    "skipped: worst case {worst} micro-dollars is over the budget cap {}",
                    cost_cap_micros.unwrap_or(0)
                ))
            } else {
                None
            };
            match skip {
                Some(why) => trace.push(candidate(model, 0, why)),
                None => out.push((model, client, worst)),
            }
        }
        if policy.strategy == Strategy::Cost && out.len() > 1 {
            // Cost ranking uses the expected cost: prompt tokens counted (once per call, only
            // when there is a choice to make), `max_tokens` of output.
            let usage = crate::providers::Usage {
                input_tokens: request
                    .counted_input_tokens
                    .unwrap_or_else(|| crate::tokens::count_messages(&request.messages)),
                output_tokens: u64::from(request.max_tokens.unwrap_or(0)),
            };
            for c in out.iter_mut() {
                c.2 = c.0.price.cost_micros(usage);
            }
        }
        self.rank(policy.strategy, &mut out);
        if !policy.ab.is_empty() {
            ab_first(&policy.ab, request.call_id.as_deref(), &mut out);
        }
        out.truncate(policy.fallback_depth.unwrap_or(usize::MAX));
        out.into_iter().map(|(m, c, _)| (m, c)).collect()
    }

    /// Orders candidates (model, client, worst-case cost) by `strategy` from what health knows.
    fn rank(&self, strategy: Strategy, candidates: &mut [(&ModelSpec, &ProviderClient, i64)]) {
        let rate = |m: &ModelSpec| self.with_health(&m.name, |h| h.failure_rate());
        match strategy {
            Strategy::Ordered => {}
            Strategy::Cost => {
                // The cheapest alternative to each candidate: the cheapest overall, or the second
                // cheapest for the cheapest itself (two passes, not a sort per candidate).
                let mut two = [i64::MAX; 2];
                for c in candidates.iter() {
                    if c.2 < two[0] {
                        two = [c.2, two[0]];
                    } else if c.2 < two[1] {
                        two[1] = c.2;
                    }
                }
                let cheapest_other = |own: i64| {
                    let other = if own == two[0] { two[1] } else { two[0] };
                    if other == i64::MAX {
                        own
                    } else {
                        other
                    }
                };
                let mut keyed: Vec<(f64, usize)> = candidates
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        (
                            health::expected_cost(c.2, rate(c.0), cheapest_other(c.2)),
                            i,
                        )
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                reorder(candidates, keyed.into_iter().map(|k| k.1).collect());
            }
            Strategy::Latency => {
                candidates.sort_by_key(|c| {
                    self.with_health(&c.0.name, |h| h.p95())
                        .unwrap_or(Duration::ZERO)
                });
            }
            Strategy::Reliable => {
                candidates.sort_by(|a, b| rate(a.0).total_cmp(&rate(b.0)));
            }
        }
    }

    /// Teaches the model's health what a call did (faults count toward its breaker).
    fn learn<T>(&self, model: &str, result: &Result<T, ProviderError>, latency: Duration) {
        let fault = result
            .as_ref()
            .err()
            .is_some_and(ProviderError::is_provider_fault);
        self.with_health(model, |h| {
            h.record(Instant::now(), result.is_ok(), fault, latency)
        });
    }

    fn with_health<T>(&self, model: &str, f: impl FnOnce(&mut ModelHealth) -> T) -> T {
        let mut fresh = ModelHealth::default();
        match self.health.get(model).map(|m| m.lock()) {
            Some(Ok(mut h)) => f(&mut h),
            _ => f(&mut fresh),
        }
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
        let tokens = request.context_input_tokens() + u64::from(request.max_tokens.unwrap_or(0));
        // Every attempt, retries included, takes a slot under the model's rate limits.
        self.with_backoff((&model.name, tokens), || async {
            let r = client.chat(&model.model_id, request).await;
            self.note_rate_limit(&model.name, &r);
            r
        })
        .await
    }

    /// Runs `call` until it succeeds, fails for good, or the time budget is spent, backing off
    /// exponentially with jitter and honouring Retry-After. Each attempt first takes a slot under
    /// `pace`'s rate limits (model, tokens); time spent waiting for slots is bounded on its own
    /// (`retry.pace_max_wait` per attempt) and not charged to the retry budget, so a busy model
    /// does not turn one 429 into a failed call. Returns the attempt count.
    async fn with_backoff<T, F, Fut>(
        &self,
        pace: (&str, u64),
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
                .paced(pace.0, pace.1)
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
        None if elapsed >= budget => backoff::Error::permanent(e),
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

/// A number in [0, 1) fixed by the call id (and `salt`), so splits are stable and testable.
fn unit_hash(call_id: Option<&str>, salt: &str) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (call_id, salt).hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Moves the A/B arm this call falls in (by weight, among the arms still candidates) to the front.
fn ab_first(
    arms: &[(String, u32)],
    call_id: Option<&str>,
    candidates: &mut [(&ModelSpec, &ProviderClient, i64)],
) {
    let present: Vec<&(String, u32)> = arms
        .iter()
        .filter(|(m, _)| candidates.iter().any(|c| &c.0.name == m))
        .collect();
    let total: u64 = present.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return;
    }
    let mut point = (unit_hash(call_id, "ab") * total as f64) as u64;
    let chosen = present.iter().find(|(_, w)| {
        let hit = point < u64::from(*w);
        point = point.saturating_sub(u64::from(*w));
        hit
    });
    if let Some(i) = chosen.and_then(|(m, _)| candidates.iter().position(|c| &c.0.name == m)) {
        candidates[..=i].rotate_right(1);
    }
}

/// Puts `items` in the order of `order` (a permutation of their indexes).
fn reorder<T: Copy>(items: &mut [T], order: Vec<usize>) {
    let ordered: Vec<T> = order.into_iter().map(|i| items[i]).collect();
    items.copy_from_slice(&ordered);
}

/// The error of a call whose every candidate is paced out until `wait` from now.
fn paced_out(wait: Duration) -> ProviderError {
    ProviderError::Status {
        provider: "-".into(),
        status: 429,
        message: "every candidate is at its rate limit (paced by ragq, not sent)".into(),
        retry_after: Some(wait),
    }
}

/// The pause a provider asked for with a 429.
fn rate_limit_wait(error: &ProviderError) -> Option<Duration> {
    match error {
        ProviderError::Status {
            status: 429,
            retry_after,
            ..
        } => *retry_after,
        _ => None,
    }
}

/// The error of a call that found every candidate's circuit open.
fn circuits_open() -> ProviderError {
    ProviderError::Connect {
        provider: "-".into(),
        message: "every candidate's circuit breaker is open".into(),
    }
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
