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

mod backoff;
pub mod byok;
pub mod catalog;
mod error;
pub mod health;
pub mod pace;
mod rank;
pub mod share;

pub use error::RouteError;
use error::{circuits_open, exhausted};
use rank::unit_hash;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;

use crate::providers::anthropic::AnthropicClient;
use crate::providers::openai::OpenAiClient;
use crate::providers::{
    ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Metered, ProviderClient,
    ProviderError, Usage,
};
use crate::spend::Price;
use crate::telemetry::{metrics, stats};
use catalog::{Catalog, ModelSpec, ProviderKind};
use health::ModelHealth;
use pace::ModelPace;

/// What happened to one candidate model, for the job's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CandidateTrace {
    pub model: String,
    pub provider: String,
    pub attempts: u32,
    pub outcome: String,
    /// The provider's id of the response that answered, and why it stopped (the answering
    /// candidate only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// What a call produced: the primary outcome, and the shadow copy's if one was made.
#[derive(Debug)]
pub struct Routed {
    pub primary: Result<RoutedCall, RouteError>,
    pub shadow: Option<ShadowCall>,
    /// The embeddings call a semantic cache lookup made before the call (booked with it).
    pub cache_lookup: Option<EmbeddedCall>,
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
    /// Made with the tenant's own key (bring your own key).
    pub byok: bool,
}

impl<R: Metered> Answered<R> {
    fn new(model: &ModelSpec, response: R, latency: Duration) -> Self {
        Self {
            response,
            model: model.name.clone(),
            provider: model.provider.clone(),
            price: model.price,
            latency,
            byok: false,
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
    /// Set when the response cache answered (the answer then reports no billed tokens).
    pub cache: Option<crate::cache::CacheHit>,
}

/// Who a call is for: the tenant's plan (policies may restrict models per plan) and, after a budget
/// downgrade, the most each call may cost in the worst case.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallScope<'a> {
    pub plan: Option<&'a str>,
    pub cost_cap_micros: Option<i64>,
    /// The tenant's own provider keys (bring your own key), used on their providers' calls.
    pub own_keys: Option<&'a byok::OwnKeys>,
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
    /// What every call did, for the dashboard (written by the worker's stats task).
    stats: Arc<stats::ProviderStats>,
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
                // The one place the closed set of API shapes is matched.
                let client: ProviderClient = match p.kind {
                    ProviderKind::OpenAi => {
                        Arc::new(OpenAiClient::new(p.endpoint.clone(), http.clone()))
                    }
                    ProviderKind::Anthropic => {
                        Arc::new(AnthropicClient::new(p.endpoint.clone(), http.clone()))
                    }
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
            stats: Arc::default(),
        })
    }

    /// The call stats this router records, for the task that writes them.
    pub fn stats(&self) -> Arc<stats::ProviderStats> {
        Arc::clone(&self.stats)
    }

    /// Sets this worker's share of every model's rate limits (1 / live workers).
    pub fn set_rate_share(&self, share: f64) {
        for p in self.pace.values() {
            if let Ok(mut p) = p.lock() {
                p.set_share(share.clamp(0.0, 1.0));
            }
        }
    }

    pub fn has_policy(&self, name: &str) -> bool {
        self.catalog.policy(name).is_some()
    }

    /// A policy's candidate models, in its order (none for an unknown policy).
    pub fn policy_models(&self, policy: &str) -> &[String] {
        self.catalog.policy(policy).map_or(&[], |p| &p.models)
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
                cache_lookup: None,
            };
        };
        let copy = ChatRequest {
            call_id: shadow_call_id,
            ..request.clone()
        };
        let (primary, shadow) = tokio::join!(primary, self.shadow_call(model, client, &copy));
        Routed {
            primary,
            shadow,
            cache_lookup: None,
        }
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
        let result = sent(CHAT, model, client.chat(&model.model_id, request)).await;
        let latency = started.elapsed();
        self.learn(CHAT, model, &result, latency, 1);
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
        own_keys: Option<&byok::OwnKeys>,
    ) -> Result<EmbeddedCall, RouteError> {
        let Some((spec, client)) = self.resolve(model) else {
            return Err(RouteError::UnknownPolicy(format!(
                "embedding model {model}"
            )));
        };
        let exhausted_by = |e: ProviderError, attempts: u32| {
            let trace = vec![failed(spec, attempts, &e)];
            let retryable = e.is_retryable();
            exhausted(model, e, retryable, trace)
        };
        if !self.with_health(&spec.name, |h| h.admit(Instant::now())) {
            return Err(exhausted_by(circuits_open(), 0));
        }
        // Texts never hold more tokens than bytes: a sound bound for the token limit.
        let tokens = request.inputs.iter().map(|t| t.len() as u64).sum();
        let started = Instant::now();
        let own = own_keys.and_then(|k| k.get(&spec.provider));
        let (result, attempts, byok) = match own {
            None => {
                let (r, a) = self.embed_once(spec, client, tokens, request).await;
                (r, a, false)
            }
            Some(own) => {
                let with_key = EmbeddingRequest {
                    credential: Some(own.key.clone()),
                    ..request.clone()
                };
                let (r, a) = self.embed_once(spec, client, tokens, &with_key).await;
                match r {
                    Err(e) if own.allow_fallback && byok::refuses_key(&e) => {
                        let (r, more) = self.embed_once(spec, client, tokens, request).await;
                        (r, a + more, false)
                    }
                    r => (r, a, true),
                }
            }
        };
        let latency = started.elapsed();
        if !(byok && result.as_ref().is_err_and(byok::refuses_key)) {
            self.learn(EMBEDDINGS, spec, &result, latency, attempts);
        }
        match result {
            Ok(response) => Ok(Answered {
                byok,
                ..Answered::new(spec, response, latency)
            }),
            Err(e) => Err(exhausted_by(e, attempts)),
        }
    }

    /// One embeddings call on `spec`, retried with backoff; returns the attempt count.
    async fn embed_once(
        &self,
        spec: &ModelSpec,
        client: &ProviderClient,
        tokens: u64,
        request: &EmbeddingRequest,
    ) -> (Result<EmbeddingResponse, ProviderError>, u32) {
        self.with_backoff(&spec.name, tokens, || async {
            let r = sent(EMBEDDINGS, spec, client.embed(&spec.model_id, request)).await;
            self.note_rate_limit(&spec.name, &r);
            r
        })
        .await
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
            .map(|c| c.model.name.clone())
            .collect();
        Ok((order, skipped))
    }

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
        for rank::Candidate { model, client, .. } in candidates {
            if !self.with_health(&model.name, |h| h.admit(Instant::now())) {
                metrics::circuit_skipped(&model.name);
                (self.stats).call(&model.provider, &model.name, "circuit_open", 0, None);
                trace.push(candidate(model, 0, "skipped: circuit open".into()));
                circuit_open = true;
                continue;
            }
            let span = tracing::info_span!(
                "provider_call",
                model = %model.name,
                provider = %model.provider,
                response_id = tracing::field::Empty,
                finish_reason = tracing::field::Empty,
            );
            let started = Instant::now();
            let own = scope.own_keys.and_then(|k| k.get(&model.provider));
            let (result, attempts, byok) = self
                .call_candidate(client, model, request, own)
                .instrument(span.clone())
                .await;
            let latency = started.elapsed();
            // A tenant's refused key says nothing about the model: its health does not learn it.
            if !(byok && result.as_ref().is_err_and(byok::refuses_key)) {
                self.learn(CHAT, model, &result, latency, attempts);
            }
            match result {
                Ok(response) => {
                    if let Some(id) = &response.response_id {
                        span.record("response_id", id.as_str());
                    }
                    if let Some(reason) = &response.finish_reason {
                        span.record("finish_reason", reason.as_str());
                    }
                    trace.push(CandidateTrace {
                        response_id: response.response_id.clone(),
                        finish_reason: response.finish_reason.clone(),
                        ..candidate(model, attempts, "ok".into())
                    });
                    let answer = Answered {
                        byok,
                        ..Answered::new(model, response, latency)
                    };
                    return Ok(RoutedCall {
                        answer,
                        trace,
                        cache: None,
                    });
                }
                Err(e) => {
                    any_retryable |= e.is_retryable();
                    trace.push(failed(model, attempts, &e));
                    last = Some(e);
                }
            }
        }
        match (last, cost_cap_micros) {
            // Nothing was called because every usable model's circuit is open: try again later.
            (None, _) if circuit_open => Err(exhausted(policy, circuits_open(), true, trace)),
            (None, Some(cap)) => Err(RouteError::OverBudget {
                policy: policy.to_string(),
                cap_micros: cap,
                trace,
            }),
            (None, None) => Err(RouteError::NoCandidate {
                policy: policy.to_string(),
                trace,
            }),
            (Some(last), _) => Err(exhausted(policy, last, any_retryable, trace)),
        }
    }

    /// Teaches the model's health what a call did (faults count toward its breaker), and counts
    /// it with its tokens.
    fn learn<T: Metered>(
        &self,
        operation: &'static str,
        model: &ModelSpec,
        result: &Result<T, ProviderError>,
        latency: Duration,
        attempts: u32,
    ) {
        let fault = result
            .as_ref()
            .err()
            .is_some_and(ProviderError::is_provider_fault);
        let breaker = self.with_health(&model.name, |h| {
            h.record(Instant::now(), result.is_ok(), fault, latency);
            h.breaker()
        });
        let state = match breaker {
            health::Breaker::Closed { .. } => stats::BreakerState::Closed,
            health::Breaker::HalfOpen { .. } => stats::BreakerState::HalfOpen,
            health::Breaker::Open { .. } => stats::BreakerState::Open,
        };
        metrics::circuit_state(&model.name, state as u8);
        self.stats.breaker(&model.provider, &model.name, state);
        let outcome = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
        metrics::provider_call(&model.provider, &model.name, outcome, attempts);
        (self.stats).call(
            &model.provider,
            &model.name,
            outcome,
            attempts,
            Some(latency),
        );
        if let Ok(answer) = result {
            let usage = answer.usage();
            let tokens = (usage.input_tokens, usage.output_tokens);
            metrics::token_usage(operation, &model.provider, &model.model_id, tokens);
        }
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
}

/// GenAI operation names (OpenTelemetry semantic conventions).
const CHAT: &str = "chat";
const EMBEDDINGS: &str = "embeddings";

/// Sends one request to a provider, timing it for the GenAI request-duration histogram.
async fn sent<T>(
    operation: &'static str,
    model: &ModelSpec,
    request: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    let span = tracing::info_span!(
        "provider_request",
        gen_ai.operation.name = operation,
        gen_ai.provider.name = %model.provider,
        gen_ai.request.model = %model.model_id,
        error.type = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = request.instrument(span.clone()).await;
    let error = result.as_ref().err().map(ProviderError::code);
    if let Some(code) = error {
        span.record("error.type", code);
    }
    let elapsed = started.elapsed();
    metrics::provider_request(operation, &model.provider, &model.model_id, error, elapsed);
    result
}

/// A candidate that failed: the tenant's trace gets the failure's public form; the log gets the
/// whole error (upstream text, the transport's cause) for the operator.
fn failed(model: &ModelSpec, attempts: u32, e: &ProviderError) -> CandidateTrace {
    tracing::warn!(model = %model.name, attempts, code = e.code(), error = %e, "provider call failed");
    candidate(model, attempts, format!("{}: {}", e.code(), e.public()))
}

fn candidate(model: &ModelSpec, attempts: u32, outcome: String) -> CandidateTrace {
    CandidateTrace {
        model: model.name.clone(),
        provider: model.provider.clone(),
        attempts,
        outcome,
        response_id: None,
        finish_reason: None,
    }
}

/// In-process retries of one provider call (the only place brief provider errors are retried).
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub initial_interval: Duration,
    pub max_interval: Duration,
    pub max_elapsed: Duration,
    pub pace_max_wait: Duration,
    pub multiplier: f64,
    pub randomization_factor: f64,
}
