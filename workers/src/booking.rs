//! What an attempt writes to the spend ledger: the intent of each call before it is sent, and its
//! booked row once answered, keyed by (tenant, job, attempt, call index).

use std::time::Duration;

use ragq::cache::CacheHit;
use ragq::jobs::{JobKind, JobMessage};
use ragq::providers::embeddings::EmbeddingRequest;
use ragq::providers::{ChatRequest, Metered, Usage};
use ragq::routing::catalog::ModelSpec;
use ragq::routing::{Answered, Router};
use ragq::spend::intents::CallIntent;
use ragq::spend::{
    CachedCall, LedgerEntry, Price, PromptUse, CACHE_EMBED_OFFSET, SHADOW_CALL_OFFSET,
};

/// One attempt of a job: what its ledger rows and intents are keyed by. The claim builds intents
/// with attempt 0 and numbers them once it knows the attempt.
#[derive(Debug, Clone, Copy)]
pub struct AttemptOf<'a> {
    pub job: &'a JobMessage,
    pub attempt: i32,
}

impl AttemptOf<'_> {
    /// Intents of chat call `index`: the primary at its worst case on the policy's priciest
    /// candidate, and the shadow copy's if the policy has one and `shadow` allows it.
    pub fn chat_intents(
        &self,
        router: &Router,
        index: usize,
        request: &ChatRequest,
        shadow: bool,
    ) -> Vec<CallIntent> {
        let policy = &self.job.policy;
        let worst = Usage {
            input_tokens: request.max_input_tokens(),
            output_tokens: u64::from(request.max_tokens.unwrap_or(0)),
        };
        let shadow_model = router.shadow_model(policy).filter(|_| shadow);
        [
            (index, router.priciest_candidate(policy, request)),
            (SHADOW_CALL_OFFSET + index, shadow_model),
        ]
        .into_iter()
        .filter_map(|(i, spec)| spec.map(|s| self.intent(i, s, worst)))
        .collect()
    }

    /// The intent of embeddings call `index` on `model` (none for a model the catalog lacks: that
    /// call fails before any request).
    pub fn embed_intent(
        &self,
        router: &Router,
        index: usize,
        model: &str,
        request: &EmbeddingRequest,
    ) -> Option<CallIntent> {
        let worst = Usage {
            // Texts never hold more tokens than bytes.
            input_tokens: request.inputs.iter().map(|t| t.len() as u64).sum(),
            output_tokens: 0,
        };
        Some(self.intent(index, router.model(model)?, worst))
    }

    /// The intent of call `call_index` on `model` at the bound `usage`.
    fn intent(&self, call_index: usize, model: &ModelSpec, usage: Usage) -> CallIntent {
        self.call(call_index, &model.provider, &model.name, usage, model.price)
    }

    /// Call `call_index` of this attempt, now.
    fn call(
        &self,
        call_index: usize,
        provider: &str,
        model: &str,
        usage: Usage,
        price: Price,
    ) -> CallIntent {
        CallIntent {
            tenant_id: self.job.tenant.clone(),
            job_id: self.job.id.clone(),
            attempt: self.attempt,
            call_index: i32::try_from(call_index).unwrap_or(i32::MAX),
            provider: provider.to_string(),
            model: model.to_string(),
            usage,
            price,
            occurred_at: chrono::Utc::now(),
        }
    }

    /// The ledger row of call `call_index`; shadow copies (at [`SHADOW_CALL_OFFSET`] + index) are
    /// tagged `shadow`.
    ///
    /// A call made with the tenant's own key is tagged `byok` with its list cost
    /// (`byok_cost_micros`); unless `bill_byok`, the operator books it at cost 0, so budgets,
    /// reports and reconciliation with the operator's provider invoices leave it out.
    pub fn entry(&self, call_index: usize, call: &BookedCall<'_>, bill_byok: bool) -> LedgerEntry {
        let list_cost = call.price.cost_micros(call.usage);
        let mut tags = Vec::new();
        if (SHADOW_CALL_OFFSET..CACHE_EMBED_OFFSET).contains(&call_index) {
            tags.push(("shadow", "true".to_string()));
        }
        if call_index >= CACHE_EMBED_OFFSET {
            tags.push(("cache_lookup", "true".to_string()));
        }
        if call.byok {
            tags.push(("byok", "true".to_string()));
            tags.push(("byok_cost_micros", list_cost.to_string()));
        }
        let cost_micros = if call.byok && !bill_byok {
            0
        } else {
            list_cost
        };
        LedgerEntry {
            call: self.call(
                call_index,
                call.provider,
                call.model,
                call.usage,
                call.price,
            ),
            feature: self.job.feature().to_string(),
            cost_micros,
            latency_ms: i32::try_from(call.latency.as_millis()).unwrap_or(i32::MAX),
            tags: self.tags(tags),
            cache: None,
            prompt: self.prompt_of(call_index),
        }
    }

    /// The ledger row of call `call_index`, answered from the cache by `answer` (the model that
    /// gave the cached answer, at its price now): no tokens, cost 0, tagged `cache_hit` and
    /// `cache_entry`, and what it saved.
    pub fn hit_entry(
        &self,
        call_index: usize,
        answer: &BookedCall<'_>,
        hit: &CacheHit,
    ) -> LedgerEntry {
        let tags = vec![
            ("cache_hit", hit.hit.as_str().to_string()),
            ("cache_entry", hit.entry_id.to_string()),
        ];
        LedgerEntry {
            call: self.call(
                call_index,
                answer.provider,
                answer.model,
                Usage::default(),
                answer.price,
            ),
            feature: self.job.feature().to_string(),
            cost_micros: 0,
            latency_ms: i32::try_from(answer.latency.as_millis()).unwrap_or(i32::MAX),
            tags: self.tags(tags),
            cache: Some(CachedCall {
                hit: hit.hit,
                saved_micros: hit.saved_micros,
            }),
            prompt: self.prompt_of(call_index),
        }
    }

    /// The saved prompt version call `call_index` rendered: a batch's prompt of that index (for
    /// its shadow copy and cache lookup too), a `rag.answer` job's template for all its calls.
    /// Intake pinned the version into the input.
    fn prompt_of(&self, call_index: usize) -> PromptUse {
        let input = &self.job.input;
        let template = match self.job.kind {
            // Shadow copies and cache lookups are numbered from offsets that are multiples of
            // the shadow offset.
            JobKind::BatchComplete => (input.get("prompts"))
                .and_then(|p| p.get(call_index % SHADOW_CALL_OFFSET))
                .and_then(|p| p.get("template")),
            JobKind::RagAnswer => input.get("template"),
            JobKind::Ingest => None,
        };
        let Some(t) = template.filter(|t| t.is_object()) else {
            return PromptUse::default();
        };
        PromptUse {
            name: t["name"].as_str().unwrap_or_default().to_string(),
            version: (t["version"].as_i64()).map_or(0, |v| i32::try_from(v).unwrap_or(0)),
        }
    }

    /// The job's tags with a row's own.
    fn tags(&self, own: Vec<(&str, String)>) -> serde_json::Value {
        let mut tags = serde_json::to_value(&self.job.tags).unwrap_or_default();
        if let Some(t) = tags.as_object_mut() {
            for (k, v) in own {
                t.insert(k.into(), v.into());
            }
        }
        tags
    }
}

/// What the ledger needs of an answered call, primary or shadow.
#[derive(Debug, Clone, Copy)]
pub struct BookedCall<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub usage: Usage,
    pub price: Price,
    pub latency: Duration,
    /// Made with the tenant's own key.
    pub byok: bool,
}

impl<'a, R: Metered> From<&'a Answered<R>> for BookedCall<'a> {
    fn from(c: &'a Answered<R>) -> Self {
        Self {
            provider: &c.provider,
            model: &c.model,
            usage: c.usage(),
            price: c.price,
            latency: c.latency,
            byok: c.byok,
        }
    }
}
