//! Spend: what each provider call cost, in integer micro-dollars; the ledger that books every call
//! once; budgets and quotas enforced by reserving before a job's calls and settling after; alerts;
//! reports and reconciliation.
//!
//! Money never touches a float. A call's cost is computed once, from the tokens the provider reported
//! and the catalog prices in force, and written with those prices so the row explains itself.

pub mod audit;
pub mod budget;
pub mod intents;
pub mod ledger;
pub mod maintenance;
pub mod reconcile;
pub mod report;

use serde::{Deserialize, Serialize};

use crate::providers::Usage;

/// Catalog prices in micro-dollars per million tokens ($0.15 / Mtok is 150_000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
}

impl Price {
    /// Cost of one call in micro-dollars, rounded half up once per call.
    pub fn cost_micros(&self, usage: Usage) -> i64 {
        let input = u128::from(usage.input_tokens) * u128::from(self.input_micros_per_mtok);
        let output = u128::from(usage.output_tokens) * u128::from(self.output_micros_per_mtok);
        let micros = input.saturating_add(output).saturating_add(500_000) / 1_000_000;
        i64::try_from(micros).unwrap_or(i64::MAX)
    }
}

/// Call indexes of shadow copies start here, apart from a job's own calls; their rows are tagged
/// `shadow`.
pub const SHADOW_CALL_OFFSET: usize = 1_000_000;

/// One provider call, as booked in `provider_calls`. Unique by (tenant, job, attempt, call index), so
/// writing it again after a crash or retry is a no-op; `occurred_at` is fixed when the provider
/// answered, so a re-write also lands in the same monthly partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub tenant_id: String,
    pub job_id: String,
    pub attempt: i32,
    pub call_index: i32,
    pub provider: String,
    pub model: String,
    /// The job's `feature` tag, or "".
    pub feature: String,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub usage: Usage,
    pub price: Price,
    pub cost_micros: i64,
    pub latency_ms: i32,
    pub tags: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_integer_micros() {
        let price = Price {
            input_micros_per_mtok: 150_000,
            output_micros_per_mtok: 600_000,
        };
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 500,
        };
        // 1000 * 0.15 $/M + 500 * 0.6 $/M = 150 + 300 micro-dollars
        assert_eq!(price.cost_micros(usage), 450);
        // 7 tokens at $0.15/M is 1.05 micros: rounds to 1; 10 tokens is 1.5: rounds up to 2
        let small = |n| Usage {
            input_tokens: n,
            output_tokens: 0,
        };
        assert_eq!(price.cost_micros(small(7)), 1);
        assert_eq!(price.cost_micros(small(10)), 2);
        assert_eq!(price.cost_micros(Usage::default()), 0);
    }

    #[test]
    fn huge_usage_does_not_overflow() {
        let price = Price {
            input_micros_per_mtok: u64::MAX,
            output_micros_per_mtok: u64::MAX,
        };
        let usage = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
        };
        assert_eq!(price.cost_micros(usage), i64::MAX);
    }
}
