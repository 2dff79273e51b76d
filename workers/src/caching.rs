//! The response cache on a job's chat calls: looked up before routing; a hit is booked at cost 0
//! with what it saved and answers in place of a provider; a provider's answer is stored for the
//! next call. The cache never fails a call: a lookup that cannot be made is a miss.

use std::time::Instant;

use ragq::cache::key::{fingerprint, CallOf, Fingerprint};
use ragq::cache::store::Entry;
use ragq::cache::{CacheHit, HitKind, Settings};
use ragq::providers::embeddings::EmbeddingRequest;
use ragq::providers::{ChatRequest, ChatResponse, Usage};
use ragq::routing::{Answered, CandidateTrace, EmbeddedCall, RoutedCall};
use ragq::spend::CACHE_EMBED_OFFSET;
use ragq::telemetry::metrics;

use crate::handler::JobContext;

/// What a lookup found, with the embeddings call a semantic lookup made (booked already).
pub(crate) enum Lookup {
    /// The job does not cache this call.
    Off,
    Hit(RoutedCall, Option<EmbeddedCall>),
    /// Looked up and missed: what storing the answer needs.
    Miss(Probe, Option<EmbeddedCall>),
}

/// A missed lookup: the call's fingerprint and, from a semantic lookup, its prompt's vector.
pub(crate) struct Probe {
    settings: Settings,
    fingerprint: Fingerprint,
    vector: Option<Vec<f32>>,
}

/// Looks chat call `index` up, exactly and then (if the job asks and the prompt allows)
/// semantically; the semantic lookup's embeddings call is booked like any other.
pub(crate) async fn look_up(ctx: &JobContext<'_>, index: usize, request: &ChatRequest) -> Lookup {
    let cfg = &ctx.env.cfg.cache;
    let Some(settings) = cfg.settings(ctx.job.cache.as_ref(), &ctx.job.policy, ctx.scope.plan)
    else {
        return Lookup::Off;
    };
    if !cfg.takes(request) {
        return Lookup::Off;
    }
    let started = Instant::now();
    let of = CallOf {
        tenant: &ctx.job.tenant,
        policy: &ctx.job.policy,
        models: ctx.env.router.policy_models(&ctx.job.policy),
        plan: ctx.scope.plan,
    };
    let fingerprint = fingerprint(of, request);
    if let Some(entry) = exact(ctx, &fingerprint).await {
        return Lookup::Hit(answer(ctx, entry, HitKind::Exact, None, started), None);
    }
    let probe = Probe {
        settings,
        fingerprint,
        vector: None,
    };
    let text = ctx.cache.semantic_text(&settings, request);
    match (text, ctx.cache.embedding_model()) {
        (Some(text), Some(model)) => semantic(ctx, index, (text, model), probe, started).await,
        _ => Lookup::Miss(probe, None),
    }
}

/// The tenant's fresh entry for the fingerprint, if any (a failed lookup is a miss).
async fn exact(ctx: &JobContext<'_>, f: &Fingerprint) -> Option<Entry> {
    let found = ctx.cache.exact(&ctx.job.tenant, f).await;
    metrics::cache_lookup("exact", outcome(&found));
    found
        .inspect_err(|e| tracing::warn!(error = %e, "cache lookup failed; calling the provider"))
        .ok()
        .flatten()
}

/// Embeds `text` with `model` (call `CACHE_EMBED_OFFSET + index`) and looks for the tenant's
/// nearest cached prompt of the same scope.
async fn semantic(
    ctx: &JobContext<'_>,
    index: usize,
    (text, model): (&str, &str),
    probe: Probe,
    started: Instant,
) -> Lookup {
    let request = EmbeddingRequest {
        inputs: vec![text.to_string()],
        call_id: Some(ctx.call_id(CACHE_EMBED_OFFSET + index)),
        credential: None,
    };
    let mut embedded = match ctx.embed(CACHE_EMBED_OFFSET + index, model, &request).await {
        Ok(call) => call,
        Err(e) => {
            tracing::warn!(
                code = e.code(),
                "cannot embed the prompt for a semantic cache lookup"
            );
            metrics::cache_lookup("semantic", "error");
            return Lookup::Miss(probe, None);
        }
    };
    let Some(vector) = embedded.response.vectors.pop() else {
        metrics::cache_lookup("semantic", "error");
        return Lookup::Miss(probe, Some(embedded));
    };
    let (tenant, min) = (&ctx.job.tenant, probe.settings.min_similarity);
    let found = (ctx.cache)
        .nearest(tenant, &probe.fingerprint, &vector, min)
        .await;
    metrics::cache_lookup("semantic", outcome(&found));
    match found {
        Ok(Some((entry, similarity))) => {
            let call = answer(ctx, entry, HitKind::Semantic, Some(similarity), started);
            Lookup::Hit(call, Some(embedded))
        }
        Ok(None) => Lookup::Miss(
            Probe {
                vector: Some(vector),
                ..probe
            },
            Some(embedded),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "semantic cache lookup failed; calling the provider");
            Lookup::Miss(
                Probe {
                    vector: Some(vector),
                    ..probe
                },
                Some(embedded),
            )
        }
    }
}

/// A lookup's outcome as its metric counts it.
fn outcome<T>(found: &Result<Option<T>, ragq::cache::CacheError>) -> &'static str {
    match found {
        Ok(Some(_)) => "hit",
        Ok(None) => "miss",
        Err(_) => "error",
    }
}

/// Stores a provider's answer to a missed call. Answers under a budget downgrade are not
/// stored: a cheaper model answered than the call would otherwise get. An entry never outlives
/// the retention of jobs' content (`retention.jobs_days`): it is tenant content too.
pub(crate) async fn remember(ctx: &JobContext<'_>, probe: Probe, call: &RoutedCall) {
    if ctx.scope.cost_cap_micros.is_some() {
        return;
    }
    let answer = &call.answer;
    let stored = ragq::cache::Answer {
        policy: &ctx.job.policy,
        provider: &answer.provider,
        model: &answer.model,
        response: &answer.response,
        cost_micros: answer.cost_micros(),
    };
    let retention = ctx
        .env
        .cfg
        .retention
        .jobs
        .unwrap_or(std::time::Duration::MAX);
    let (f, ttl) = (&probe.fingerprint, probe.settings.ttl.min(retention));
    if let Some(entry) = ctx
        .cache
        .entry(&ctx.job.tenant, f, ttl, stored, probe.vector)
        .await
    {
        ctx.commits.remember(entry).await;
    }
}

/// The call a cache entry answers: its content and model, no billed tokens (so its cost is 0),
/// and what it saved at the model's price now (the price it had when stored, for a model the
/// catalog no longer lists).
fn answer(
    ctx: &JobContext<'_>,
    entry: Entry,
    hit: HitKind,
    similarity: Option<f32>,
    started: Instant,
) -> RoutedCall {
    let model = ctx.env.router.model(&entry.model);
    let price = model.map(|m| m.price).unwrap_or_default();
    let saved_micros = model.map_or(entry.cost_micros, |m| m.price.cost_micros(entry.usage));
    let cache = CacheHit {
        hit,
        similarity,
        entry_id: entry.id,
        age_s: entry.age_s(chrono::Utc::now()),
        saved_micros,
    };
    let trace = vec![CandidateTrace {
        model: entry.model.clone(),
        provider: entry.provider.clone(),
        attempts: 0,
        outcome: format!("cache hit: {}", hit.as_str()),
        response_id: None,
        finish_reason: None,
    }];
    let response = ChatResponse {
        content: entry.content,
        usage: Usage::default(),
        response_id: entry.response_id,
        finish_reason: entry.finish_reason,
    };
    RoutedCall {
        answer: Answered {
            response,
            model: entry.model,
            provider: entry.provider,
            price,
            latency: started.elapsed(),
            byok: false,
        },
        trace,
        cache: Some(cache),
    }
}
