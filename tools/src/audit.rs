//! Auditing the ledger against what a provider really answered, after faults: the checks behind
//! "every call booked once, none lost, none twice" in tests and in `ragq bench --faults`.

use std::collections::HashSet;

use serde::Serialize;
use sqlx::PgPool;

/// What the audit found; `ok()` when nothing is wrong.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LedgerAudit {
    pub booked_calls: usize,
    pub answered_calls: usize,
    /// Calls booked at their worst case from the intent of a worker that died.
    pub estimated_calls: usize,
    /// Of those, calls the provider had answered: spend the dead worker would have lost.
    pub estimated_answered: usize,
    /// Intents not yet booked or discarded (an audit runs once every job has finished and dead
    /// workers' intents have expired, so there should be none).
    pub pending_intents: i64,
    /// Booked calls the provider never answered (a booking out of thin air), estimates apart.
    pub booked_not_answered: Vec<String>,
    /// Calls answered twice under one id (the same call made twice).
    pub answered_twice: Vec<String>,
    /// Calls of a job's final attempt that are missing from the ledger.
    pub final_attempt_unbooked: Vec<String>,
    /// Answered calls missing from the ledger, of any attempt (lost spend).
    pub lost: Vec<String>,
    /// Succeeded jobs whose result's cost differs from their final attempt's ledger rows.
    pub results_off_ledger: i64,
}

impl LedgerAudit {
    pub fn ok(&self) -> bool {
        self.pending_intents == 0
            && self.booked_not_answered.is_empty()
            && self.answered_twice.is_empty()
            && self.final_attempt_unbooked.is_empty()
            && self.lost.is_empty()
            && self.results_off_ledger == 0
    }
}

/// Audits every job in the database against `answered`, the call ids (`tenant/job/attempt/index`)
/// the provider answered, for jobs of `calls_per_job` calls each.
pub async fn audit(
    pool: &PgPool,
    answered: &[String],
    calls_per_job: usize,
) -> Result<LedgerAudit, sqlx::Error> {
    let (booked, estimated) = booked_calls(pool).await?;
    let pending_intents: i64 = sqlx::query_scalar("SELECT count(*) FROM call_intents")
        .fetch_one(pool)
        .await?;
    let mut seen = HashSet::new();
    let answered_twice: Vec<String> = answered
        .iter()
        .filter(|id| !seen.insert(id.as_str()))
        .cloned()
        .collect();
    let answered_set: HashSet<&str> = answered.iter().map(String::as_str).collect();
    let lost: Vec<String> = answered
        .iter()
        .filter(|id| !booked.contains(*id))
        .cloned()
        .collect();
    let booked_not_answered = booked
        .iter()
        .filter(|id| !answered_set.contains(id.as_str()) && !estimated.contains(*id))
        .cloned()
        .collect();
    Ok(LedgerAudit {
        booked_calls: booked.len(),
        answered_calls: answered_set.len(),
        estimated_calls: estimated.len(),
        estimated_answered: (estimated.iter())
            .filter(|id| answered_set.contains(id.as_str()))
            .count(),
        pending_intents,
        booked_not_answered,
        answered_twice,
        final_attempt_unbooked: final_attempt_unbooked(pool, &booked, calls_per_job).await?,
        lost,
        results_off_ledger: results_off_ledger(pool).await?,
    })
}

/// The ids of every booked call, and of those booked as estimates.
async fn booked_calls(pool: &PgPool) -> Result<(HashSet<String>, HashSet<String>), sqlx::Error> {
    let rows: Vec<(String, String, i32, i32, bool)> = sqlx::query_as(
        "SELECT tenant_id, job_id, attempt, call_index, estimated FROM provider_calls",
    )
    .fetch_all(pool)
    .await?;
    let id = |(t, j, a, c, _): &(String, String, i32, i32, bool)| format!("{t}/{j}/{a}/{c}");
    let booked = rows.iter().map(id).collect();
    let estimated = rows.iter().filter(|r| r.4).map(id).collect();
    Ok((booked, estimated))
}

/// Calls of succeeded jobs' final attempts missing from the ledger.
async fn final_attempt_unbooked(
    pool: &PgPool,
    booked: &HashSet<String>,
    calls_per_job: usize,
) -> Result<Vec<String>, sqlx::Error> {
    let finals: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT tenant_id, id, attempts FROM jobs WHERE state = 'succeeded'")
            .fetch_all(pool)
            .await?;
    Ok(finals
        .iter()
        .flat_map(|(t, j, a)| (0..calls_per_job).map(move |c| format!("{t}/{j}/{a}/{c}")))
        .filter(|id| !booked.contains(id))
        .collect())
}

/// Succeeded jobs whose result's cost differs from their final attempt's ledger rows.
async fn results_off_ledger(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs j WHERE j.state = 'succeeded' AND (j.result->>'cost_micros')::int8 <> \
         (SELECT coalesce(sum(cost_micros), 0) FROM provider_calls p \
          WHERE p.tenant_id = j.tenant_id AND p.job_id = j.id AND p.attempt = j.attempts)",
    )
    .fetch_one(pool)
    .await
}
