//! Spend: what each provider call cost, in integer micro-dollars; the ledger that books every call
//! once; budgets and quotas enforced by reserving before a job's calls and settling after; alerts;
//! reports and reconciliation.
//!
//! Money never touches a float. A call's cost is computed once, from the tokens the provider reported
//! and the catalog prices in force, and written with those prices so the row explains itself.

pub mod budget;
pub mod intents;
pub mod ledger;
pub mod maintenance;
pub mod reconcile;
pub mod report;

use std::time::Duration;

use serde::Serialize;

pub use crate::money::{Price, Usage};
pub use intents::CallIntent;

/// Call indexes of shadow copies start here, apart from a job's own calls; their rows are tagged
/// `shadow`.
pub const SHADOW_CALL_OFFSET: usize = 1_000_000;

/// Call indexes of the embeddings calls semantic cache lookups make start here (the lookup for
/// call `i` is `CACHE_EMBED_OFFSET + i`); their rows are tagged `cache_lookup`.
pub const CACHE_EMBED_OFFSET: usize = 2_000_000;

/// One provider call, as booked in `provider_calls`: the call (its key, model, tokens as the
/// provider reported them, price and time) and what booking adds. Unique by (tenant, job, attempt,
/// call index), so writing it again after a crash or retry is a no-op; `occurred_at` is fixed when
/// the provider answered, so a re-write also lands in the same monthly partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    #[serde(flatten)]
    pub call: CallIntent,
    /// The job's `feature` tag, or "".
    pub feature: String,
    pub cost_micros: i64,
    pub latency_ms: i32,
    pub tags: serde_json::Value,
    /// Set when the call was answered from the response cache (cost 0, no tokens billed).
    pub cache: Option<CachedCall>,
    /// The saved prompt version the call rendered (empty when none).
    pub prompt: PromptUse,
}

/// A saved prompt's name and version, as a ledger row and a report name them; `""` and 0 for
/// calls of jobs that named none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PromptUse {
    pub name: String,
    pub version: i32,
}

/// What the ledger records of a call answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CachedCall {
    pub hit: crate::cache::HitKind,
    /// What the call would have cost.
    pub saved_micros: i64,
}

/// Budget enforcement and ledger upkeep.
#[derive(Debug, Clone)]
pub struct SpendConfig {
    /// Sent as `max_tokens` when a job sets none, so a job's worst-case cost is known before it runs.
    pub default_max_output_tokens: u32,
    /// How long a reservation outlives a worker that died holding it; longer than any job runs.
    pub reservation_ttl: Duration,
    /// Months of raw ledger rows kept (0: forever); daily aggregates are always kept.
    pub ledger_retention_months: u32,
    pub maintenance_interval: Duration,
    /// Calls made with a tenant's own provider key are booked at their list cost (else at 0,
    /// with the list cost in the row's `byok_cost_micros` tag).
    pub bill_byok: bool,
}
