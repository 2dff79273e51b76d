//! The one trait every job kind implements, and what a handler gets for one attempt.
//!
//! A kind is a module in [`crate::kinds`] with a type implementing [`JobHandler`]: how to read its
//! input, its worst-case cost (reserved against budgets when the job is claimed), the intents of
//! the calls it makes first (recorded by the claim itself, so they need no commit of their own),
//! and the attempt itself. Everything around it (claim, budgets, retries, outcome commit, delivery
//! settlement, panics) is the runtime's and the same for every kind.

use std::future::Future;

use serde_json::Value;

use ragq::cache::ResponseCache;
use ragq::config::Config;
use ragq::jobs::{JobKind, JobMessage};
use ragq::providers::embeddings::EmbeddingRequest;
use ragq::providers::ChatRequest;
use ragq::retrieval::VectorStore;
use ragq::routing::{CallScope, EmbeddedCall, Routed, RoutedCall, Router};
use ragq::spend::budget::Estimate;
use ragq::spend::intents::CallIntent;
use ragq::spend::SHADOW_CALL_OFFSET;

use crate::booking::{AttemptOf, BookedCall};
use crate::caching::{self, Lookup};
use crate::commit::CommitHandle;
use crate::error::JobError;

/// What a handler may consult before an attempt exists: the worker's router and configuration.
#[derive(Clone, Copy)]
pub struct WorkerEnv<'a> {
    pub router: &'a Router,
    pub cfg: &'a Config,
}

/// Intents the claim records for an attempt's first calls, and how many calls they cover (see
/// [`JobContext::declared_calls`]).
#[derive(Debug, Default)]
pub struct ClaimIntents {
    pub intents: Vec<CallIntent>,
    pub calls: usize,
}

/// One job kind. Implementations are stateless: everything they need arrives as arguments.
pub trait JobHandler {
    /// The kind's input, parsed once per delivery.
    type Input: Send + Sync;
    /// The kind this handler runs.
    const KIND: JobKind;
    /// Whether the kind reads or writes the vector store.
    const USES_VECTOR_STORE: bool = false;

    /// The typed input (its shape was checked when the message was parsed).
    fn input(job: &JobMessage) -> Result<Self::Input, String>;

    /// The job's worst-case cost, to reserve against its budgets.
    fn estimate(env: WorkerEnv<'_>, job: &JobMessage, input: &Self::Input) -> Estimate;

    /// Intents of the calls an attempt makes first; none unless the kind declares some.
    fn claim_intents(
        _env: WorkerEnv<'_>,
        _of: AttemptOf<'_>,
        _input: &Self::Input,
    ) -> ClaimIntents {
        ClaimIntents::default()
    }

    /// Runs one attempt; its calls are booked through `ctx`.
    fn run(
        ctx: &JobContext<'_>,
        input: Self::Input,
    ) -> impl Future<Output = Result<Value, JobError>> + Send;
}

/// Dependencies injected into a handler for one attempt of one job.
pub struct JobContext<'a> {
    pub job: &'a JobMessage,
    pub attempt: i32,
    /// The worker's router and configuration, as the handler saw them before the claim.
    pub env: WorkerEnv<'a>,
    pub commits: &'a CommitHandle,
    /// The tenant's plan and, after a budget downgrade, the per-call cost cap.
    pub scope: CallScope<'a>,
    pub vectors: &'a VectorStore,
    /// The response cache, for the calls the job's settings cache.
    pub cache: &'a ResponseCache,
    /// For reads a kind makes of its own (a pinned saved prompt's templates).
    pub pool: &'a sqlx::PgPool,
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
    ///
    /// If the job caches its calls, the cache answers first: a hit is booked at cost 0 and
    /// returned with no provider call (and no shadow copy); a provider's answer to a miss is stored.
    pub async fn chat(&self, index: usize, request: &ChatRequest) -> Result<Routed, JobError> {
        let (probe, cache_lookup) = match caching::look_up(self, index, request).await {
            Lookup::Hit(call, cache_lookup) => {
                self.book_hit(index, &call).await?;
                return Ok(Routed {
                    primary: Ok(call),
                    shadow: None,
                    cache_lookup,
                });
            }
            Lookup::Miss(probe, cache_lookup) => (Some(probe), cache_lookup),
            Lookup::Off => (None, None),
        };
        if index >= self.declared_calls {
            let shadow = self.scope.cost_cap_micros.is_none();
            let intents = self
                .of()
                .chat_intents(self.env.router, index, request, shadow);
            self.commits.intend(intents).await?;
        }
        let shadow_id = Some(self.call_id(SHADOW_CALL_OFFSET + index));
        let routed = Routed {
            cache_lookup,
            ..(self.env.router)
                .chat(&self.job.policy, request, self.scope, shadow_id)
                .await
        };
        if let Some(s) = &routed.shadow {
            self.book(SHADOW_CALL_OFFSET + index, &s.into()).await?;
        }
        if let Ok(call) = &routed.primary {
            self.book(index, &(&call.answer).into()).await?;
            if let Some(probe) = probe {
                caching::remember(self, probe, call).await;
            }
        }
        Ok(routed)
    }

    /// Books call `index`, answered from the cache, in place of any intent the claim recorded.
    async fn book_hit(&self, index: usize, call: &RoutedCall) -> Result<(), JobError> {
        let Some(hit) = &call.cache else {
            return Ok(());
        };
        let entry = self.of().hit_entry(index, &(&call.answer).into(), hit);
        self.commits.book(entry).await?;
        let (tenant, feature) = (&self.job.tenant, self.job.feature());
        ragq::telemetry::metrics::cache_saved(
            tenant,
            feature,
            &call.answer.model,
            hit.saved_micros,
        );
        Ok(())
    }

    /// Makes embeddings call `index` on `model`, booked like [`Self::chat`].
    pub async fn embed(
        &self,
        index: usize,
        model: &str,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddedCall, JobError> {
        if index >= self.declared_calls {
            let intents = self
                .of()
                .embed_intent(self.env.router, index, model, request);
            self.commits.intend(intents.into_iter().collect()).await?;
        }
        let call = (self.env.router)
            .embed(model, request, self.scope.own_keys)
            .await?;
        self.book(index, &(&call).into()).await?;
        Ok(call)
    }

    /// Books an answered call under this attempt in place of its intent; `call_index` is stable
    /// for the call within the attempt (the prompt's index, say), so a re-write is a no-op.
    async fn book(&self, call_index: usize, call: &BookedCall<'_>) -> Result<(), JobError> {
        let entry = self
            .of()
            .entry(call_index, call, self.env.cfg.spend.bill_byok);
        let (feature, cost) = (entry.feature.clone(), entry.cost_micros);
        self.commits.book(entry).await.map_err(JobError::from)?;
        ragq::telemetry::metrics::spend(&self.job.tenant, &feature, call.model, cost);
        Ok(())
    }

    fn of(&self) -> AttemptOf<'_> {
        AttemptOf {
            job: self.job,
            attempt: self.attempt,
        }
    }
}
