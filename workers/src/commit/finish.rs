//! Ending attempts: outcomes fenced by attempt number, the intents an ended attempt leaves, the
//! webhook delivery of each outcome that took effect, and the release of its reservation.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use std::time::Duration;

use ragq::jobs::JobState;
use ragq::spend::budget;

use super::shares::Deltas;
use super::{Finish, FinishResult, NewDelivery, Outcome, Tx};

/// What a batch's outcomes did: the answers, in order, and what they changed of their tenants'
/// dispatch state (a retry queues its job again).
#[derive(Default)]
pub(super) struct Finished {
    pub results: Vec<FinishResult>,
    pub deltas: Deltas,
}

/// Commits outcomes fenced by attempt, and the webhook deliveries of those that took effect.
pub(super) async fn finish_jobs(
    tx: &mut Tx<'_>,
    outcomes: &[&Outcome],
    has_budget: &(dyn Fn(&str) -> bool + Sync),
    webhook_lease: Duration,
) -> Result<Finished, sqlx::Error> {
    if outcomes.is_empty() {
        return Ok(Finished::default());
    }
    let committed = commit_outcomes(tx, outcomes, webhook_lease).await?;
    let mut deltas = Deltas::new();
    for ((tenant, _), (_, retry_at)) in &committed {
        if let Some(at) = retry_at {
            deltas.entry(tenant.clone()).or_default().queue_later(*at);
        }
    }
    let took_effect: Vec<Option<DateTime<Utc>>> = outcomes
        .iter()
        .map(|o| {
            committed
                .get(&(o.tenant_id.clone(), o.job_id.clone()))
                .map(|(accepted, _)| *accepted)
        })
        .collect();
    // Settle: the attempt's calls are booked (in this or an earlier batch), so what it reserved goes
    // back; a final outcome also counts the job against its budgets' job totals.
    let settled: Vec<budget::ReleaseKey<'_>> = outcomes
        .iter()
        .zip(&took_effect)
        .filter(|(o, ok)| ok.is_some() && has_budget(&o.tenant_id))
        .map(|(o, _)| budget::ReleaseKey {
            tenant: &o.tenant_id,
            job_id: &o.job_id,
            attempt: Some(o.attempt),
            terminal: !matches!(o.finish, Finish::Retry { .. }),
        })
        .collect();
    budget::release(tx, &settled).await?;
    let result = |ok: Option<DateTime<Utc>>| match ok {
        Some(accepted_at) => FinishResult::Committed { accepted_at },
        None => FinishResult::Fenced,
    };
    Ok(Finished {
        results: took_effect.into_iter().map(result).collect(),
        deltas,
    })
}

/// When a job was accepted, and when a retried one may run again.
type Committed = (DateTime<Utc>, Option<DateTime<Utc>>);

/// Runs `sql/finish.sql`; returns the (tenant, job) of each outcome that took effect.
async fn commit_outcomes(
    tx: &mut Tx<'_>,
    outcomes: &[&Outcome],
    webhook_lease: Duration,
) -> Result<HashMap<(String, String), Committed>, sqlx::Error> {
    let mut states = Vec::with_capacity(outcomes.len());
    let mut results = Vec::with_capacity(outcomes.len());
    let mut codes = Vec::with_capacity(outcomes.len());
    let mut errors = Vec::with_capacity(outcomes.len());
    let mut retry_ms = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let (state, result, code, error) = match &o.finish {
            Finish::Succeeded(v) => (JobState::Succeeded, Some(v), None, None),
            Finish::Failed { code, message } => (JobState::Failed, None, Some(code), Some(message)),
            Finish::Retry { code, message, .. } => {
                (JobState::Queued, None, Some(code), Some(message))
            }
        };
        let delay = match &o.finish {
            Finish::Retry { delay, .. } => i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
            _ => 0,
        };
        retry_ms.push(delay);
        states.push(state.as_str());
        results.push(result);
        codes.push(code.map(String::as_str));
        errors.push(error.map(String::as_str));
    }
    let hook = |f: fn(&NewDelivery) -> &str| -> Vec<Option<&str>> {
        outcomes.iter().map(|o| o.webhook.as_ref().map(f)).collect()
    };
    let traceparents: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.webhook.as_ref().and_then(|h| h.traceparent.as_deref()))
        .collect();
    let lease_ms = i64::try_from(webhook_lease.as_millis()).unwrap_or(i64::MAX);
    let tenants: Vec<&str> = outcomes.iter().map(|o| o.tenant_id.as_str()).collect();
    let jobs: Vec<&str> = outcomes.iter().map(|o| o.job_id.as_str()).collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.attempt).collect();
    let committed = sqlx::query_file!(
        "sql/finish.sql",
        &tenants as &[&str],
        &jobs as &[&str],
        &attempts,
        &states as &[&str],
        &results as &[Option<&serde_json::Value>],
        &codes as &[Option<&str>],
        &errors as &[Option<&str>],
        &hook(|h| &h.id) as &[Option<&str>],
        &hook(|h| &h.event_type) as &[Option<&str>],
        &hook(|h| &h.url) as &[Option<&str>],
        &hook(|h| &h.payload) as &[Option<&str>],
        lease_ms,
        &traceparents as &[Option<&str>],
        &retry_ms,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(committed
        .into_iter()
        .map(|r| ((r.tenant_id, r.id), (r.accepted_at, r.retry_at)))
        .collect())
}
