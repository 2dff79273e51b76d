//! What every job handler gets (the job, its attempt, the router, the ledger) and what it returns.

use std::time::Duration;

use crate::jobs::JobMessage;
use crate::providers::embeddings::EmbeddingRequest;
use crate::providers::{ChatRequest, Usage};
use crate::retrieval::{LazyStore, RetrievalConfig, StoreError};
use crate::routing::catalog::ModelSpec;
use crate::routing::{CallScope, EmbeddedCall, RouteError, Routed, RoutedCall, Router, ShadowCall};
use crate::spend::intents::CallIntent;
use crate::spend::{LedgerEntry, Price};

use super::commit::{CommitError, CommitHandle};

/// Dependencies injected into a handler for one attempt of one job.
pub struct JobContext<'a> {
    pub job: &'a JobMessage,
    pub attempt: i32,
    pub router: &'a Router,
    pub commits: &'a CommitHandle,
    /// The tenant's plan and, after a budget downgrade, the per-call cost cap.
    pub scope: CallScope<'a>,
    /// `max_tokens` for calls whose job sets none, so every call's worst case is bounded.
    pub default_max_output_tokens: u32,
    pub retrieval: &'a RetrievalConfig,
    pub vectors: &'a LazyStore,
    /// Calls `0..declared_calls` (and their shadow copies) had their intents recorded with the
    /// claim, so they are sent without a commit of their own.
    pub declared_calls: usize,
}

impl JobContext<'_> {
    /// The id of call `index` of this attempt, as booked in the ledger.
    pub fn call_id(&self, index: usize) -> String {
        format!(
            "{}/{}/{}/{}",
            self.job.tenant, self.job.id, self.attempt, index
        )
    }

    /// Makes chat call `index` under the job's policy, booked: an intent is recorded for it (and
    /// for its shadow copy, if the policy may make one) before the request is sent, unless the
    /// claim recorded them, and the answers are booked in their place. A shadow copy is booked
    /// whatever happened to the primary call: its spend is real.
    pub async fn chat(&self, index: usize, request: &ChatRequest) -> Result<Routed, JobError> {
        if index >= self.declared_calls {
            let shadow = self.scope.cost_cap_micros.is_none();
            let intents = self.of().chat_intents(self.router, index, request, shadow);
            self.commits.intend(intents).await?;
        }
        let shadow_id = Some(self.call_id(SHADOW_CALL_OFFSET + index));
        let routed = self
            .router
            .chat(&self.job.policy, request, self.scope, shadow_id)
            .await;
        if let Some(s) = &routed.shadow {
            self.book(SHADOW_CALL_OFFSET + index, &s.into()).await?;
        }
        if let Ok(call) = &routed.primary {
            self.book(index, &call.into()).await?;
        }
        Ok(routed)
    }

    /// Makes embeddings call `index` on `model`, booked like [`Self::chat`].
    pub async fn embed(
        &self,
        index: usize,
        model: &str,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddedCall, JobError> {
        if index >= self.declared_calls {
            let intents = self.of().embed_intent(self.router, index, model, request);
            self.commits.intend(intents.into_iter().collect()).await?;
        }
        let call = self.router.embed(model, request).await?;
        self.book(index, &(&call).into()).await?;
        Ok(call)
    }

    /// Books an answered call under this attempt in place of its intent; `call_index` is stable
    /// for the call within the attempt (the prompt's index, say), so a re-write is a no-op.
    async fn book(&self, call_index: usize, call: &BookedCall<'_>) -> Result<(), JobError> {
        let entry = self.of().entry(call_index, call);
        self.commits.book(entry).await.map_err(JobError::from)
    }

    fn of(&self) -> AttemptOf<'_> {
        AttemptOf {
            job: self.job,
            attempt: self.attempt,
        }
    }
}

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
        CallIntent {
            tenant_id: self.job.tenant.clone(),
            job_id: self.job.id.clone(),
            attempt: self.attempt,
            call_index: i32::try_from(call_index).unwrap_or(i32::MAX),
            provider: model.provider.clone(),
            model: model.name.clone(),
            usage,
            price: model.price,
            occurred_at: chrono::Utc::now(),
        }
    }

    /// The ledger row of call `call_index`; shadow copies (at [`SHADOW_CALL_OFFSET`] + index) are
    /// tagged `shadow`.
    pub fn entry(&self, call_index: usize, call: &BookedCall<'_>) -> LedgerEntry {
        let mut tags = serde_json::to_value(&self.job.tags).unwrap_or_default();
        if call_index >= SHADOW_CALL_OFFSET {
            if let Some(t) = tags.as_object_mut() {
                t.insert("shadow".into(), "true".into());
            }
        }
        LedgerEntry {
            tenant_id: self.job.tenant.clone(),
            job_id: self.job.id.clone(),
            attempt: self.attempt,
            call_index: i32::try_from(call_index).unwrap_or(i32::MAX),
            provider: call.provider.to_string(),
            model: call.model.to_string(),
            feature: self.job.feature().to_string(),
            occurred_at: chrono::Utc::now(),
            usage: call.usage,
            price: call.price,
            cost_micros: call.price.cost_micros(call.usage),
            latency_ms: i32::try_from(call.latency.as_millis()).unwrap_or(i32::MAX),
            tags,
        }
    }
}

pub use crate::spend::SHADOW_CALL_OFFSET;

/// What the ledger needs of an answered call, primary or shadow.
#[derive(Debug, Clone, Copy)]
pub struct BookedCall<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub usage: Usage,
    pub price: Price,
    pub latency: Duration,
}

impl<'a> From<&'a RoutedCall> for BookedCall<'a> {
    fn from(c: &'a RoutedCall) -> Self {
        Self {
            provider: &c.provider,
            model: &c.model,
            usage: c.response.usage,
            price: c.price,
            latency: c.latency,
        }
    }
}

impl<'a> From<&'a EmbeddedCall> for BookedCall<'a> {
    fn from(c: &'a EmbeddedCall) -> Self {
        Self {
            provider: &c.provider,
            model: &c.model,
            usage: c.response.usage,
            price: c.price,
            latency: c.latency,
        }
    }
}

impl<'a> From<&'a ShadowCall> for BookedCall<'a> {
    fn from(c: &'a ShadowCall) -> Self {
        Self {
            provider: &c.provider,
            model: &c.model,
            usage: c.response.usage,
            price: c.price,
            latency: c.latency,
        }
    }
}

/// Why an attempt did not succeed, and whether another attempt may.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    /// The delay a provider asked for, used to pick the retry queue.
    pub retry_after: Option<Duration>,
}

impl JobError {
    /// A job whose input breaks a rule: it fails at once with the rule in its reason.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::permanent("invalid_input", message)
    }

    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }
}

impl From<RouteError> for JobError {
    fn from(e: RouteError) -> Self {
        Self {
            code: e.code().to_string(),
            message: e.to_string(),
            retryable: e.is_retryable(),
            retry_after: e.retry_after(),
        }
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        Self {
            code: e.code().to_string(),
            message: e.to_string(),
            retryable: e.is_retryable(),
            retry_after: None,
        }
    }
}

impl From<CommitError> for JobError {
    fn from(e: CommitError) -> Self {
        Self {
            code: "database_unavailable".into(),
            message: e.to_string(),
            retryable: true,
            retry_after: None,
        }
    }
}
