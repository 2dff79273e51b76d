//! Claiming jobs: in one statement per batch, new job ids are inserted as running, queued ones (or
//! running ones whose message the broker redelivered) are taken over, and the rest are reported
//! finished or busy; admitted attempts then reserve their worst case against their budgets.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use ragq::jobs::JobState;
use ragq::spend::budget::{self, Admission};
use ragq::spend::intents::CallIntent;

use super::{Claim, ClaimRequest, Tx};

/// What `sql/claim.sql` says of one job.
struct ClaimedRow {
    tenant_id: String,
    id: String,
    /// The attempt granted to this claim, if it may run.
    attempt: Option<i32>,
    /// The job's state when it was not granted.
    state: Option<JobState>,
}

/// A job's key within a batch.
type JobKey<'a> = (&'a str, &'a str);

fn key(c: &ClaimRequest) -> JobKey<'_> {
    (c.job.tenant.as_str(), c.job.id.as_str())
}

/// Claims a batch of jobs: new ids are inserted as running; queued ones (or running ones whose
/// message was redelivered) are taken over; the rest are finished or busy.
pub(super) async fn claim_jobs(
    tx: &mut Tx<'_>,
    claims: &[&ClaimRequest],
    has_budget: &(dyn Fn(&str) -> bool + Sync),
    reservation_ttl: Duration,
) -> Result<Vec<Claim>, sqlx::Error> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    // The same job twice in one batch: only the first may run.
    let mut seen = HashSet::new();
    let first: Vec<bool> = claims.iter().map(|c| seen.insert(key(c))).collect();
    let unique: Vec<&ClaimRequest> = claims
        .iter()
        .zip(&first)
        .filter_map(|(c, f)| f.then_some(*c))
        .collect();
    let rows = take_over(tx, &unique).await?;
    let mut granted = HashMap::with_capacity(rows.len());
    let mut finished = HashSet::new();
    for row in &rows {
        let k = (row.tenant_id.as_str(), row.id.as_str());
        match (row.attempt, row.state) {
            (Some(a), _) => {
                granted.insert(k, a);
            }
            (None, Some(s)) if s.is_terminal() => {
                finished.insert(k);
            }
            _ => {}
        }
    }
    let attempts: Vec<Option<i32>> = claims
        .iter()
        .zip(first)
        .map(|(c, is_first)| is_first.then(|| granted.get(&key(c)).copied()).flatten())
        .collect();
    let mut admissions = admit(tx, claims, &attempts, has_budget, reservation_ttl)
        .await?
        .into_iter();
    Ok(claims
        .iter()
        .zip(attempts)
        .map(|(c, attempt)| match attempt {
            Some(attempt) => Claim::Run {
                attempt,
                // Admissions come in the order of the budgeted claims.
                admission: has_budget(&c.job.tenant)
                    .then(|| admissions.next())
                    .flatten()
                    .unwrap_or(Admission::Admitted {
                        cost_cap_micros: None,
                    }),
            },
            None if finished.contains(&key(c)) => Claim::AlreadyFinished,
            None => Claim::Busy,
        })
        .collect())
}

/// Runs `sql/claim.sql` for claims of distinct jobs.
async fn take_over(
    tx: &mut Tx<'_>,
    unique: &[&ClaimRequest],
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let text = |f: fn(&ClaimRequest) -> &str| unique.iter().map(|c| f(c)).collect::<Vec<_>>();
    let inputs: Vec<&Value> = unique.iter().map(|c| &c.job.input).collect();
    let tags: Vec<Value> = unique
        .iter()
        .map(|c| serde_json::to_value(&c.job.tags).unwrap_or_default())
        .collect();
    let hooks: Vec<Option<&str>> = unique
        .iter()
        .map(|c| c.job.webhook_url.as_deref())
        .collect();
    let redelivered: Vec<bool> = unique.iter().map(|c| c.redelivered).collect();
    sqlx::query_file_as!(
        ClaimedRow,
        "sql/claim.sql",
        &text(|c| &c.job.tenant) as &[&str],
        &text(|c| &c.job.id) as &[&str],
        &text(|c| c.job.kind.as_str()) as &[&str],
        &text(|c| &c.job.policy) as &[&str],
        &inputs as &[&Value],
        &tags,
        &hooks as &[Option<&str>],
        &redelivered,
    )
    .fetch_all(&mut **tx)
    .await
}

/// Reserves the worst case of every granted attempt of a tenant with budgets; the admissions
/// come back in the order of those claims.
async fn admit(
    tx: &mut Tx<'_>,
    claims: &[&ClaimRequest],
    attempts: &[Option<i32>],
    has_budget: &(dyn Fn(&str) -> bool + Sync),
    reservation_ttl: Duration,
) -> Result<Vec<Admission>, sqlx::Error> {
    let to_admit: Vec<budget::ReserveRequest<'_>> = claims
        .iter()
        .zip(attempts)
        .filter(|(c, _)| has_budget(&c.job.tenant))
        .filter_map(|(c, a)| {
            a.map(|attempt| budget::ReserveRequest {
                tenant: &c.job.tenant,
                job_id: &c.job.id,
                attempt,
                feature: c.job.feature(),
                estimate: c.estimate,
            })
        })
        .collect();
    budget::reserve(tx, &to_admit, reservation_ttl).await
}

/// The intents of the first calls of each admitted claim, numbered with the attempt it was granted.
pub(super) fn claimed_intents(claims: &[&ClaimRequest], answers: &[Claim]) -> Vec<CallIntent> {
    claims
        .iter()
        .zip(answers)
        .filter_map(|(c, answer)| match answer {
            Claim::Run {
                attempt,
                admission: Admission::Admitted { .. },
            } => Some(c.intents.iter().map(move |i| CallIntent {
                attempt: *attempt,
                ..i.clone()
            })),
            _ => None,
        })
        .flatten()
        .collect()
}
