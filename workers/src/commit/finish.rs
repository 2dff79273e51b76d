//! Ending attempts: outcomes fenced by attempt number, the intents an ended attempt leaves, the
//! webhook delivery of each outcome that took effect, and the release of its reservation.

use std::time::Duration;

use ragq::jobs::JobState;
use ragq::spend::budget;

use super::{Finish, FinishResult, NewDelivery, Outcome, Tx};

/// Ends a batch of attempts in one statement: outcomes fenced by attempt; the intents every ended
/// attempt leaves (committed or fenced, it booked its answered calls before this outcome, so they
/// are calls that failed without an answer); and the webhook delivery of each outcome that took
/// effect. Returns the jobs whose outcome took effect.
const FINISH: &str = "\
WITH t AS (
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[],
                       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
    AS t(tenant_id, id, attempt, state, result, error_code, error, hook_id, event_type, url, payload)),
committed AS (
  UPDATE jobs j SET state = t.state, result = t.result, error_code = t.error_code, error = t.error,
    finished_at = CASE WHEN t.state IN ('succeeded', 'failed') THEN now() END
  FROM t WHERE j.tenant_id = t.tenant_id AND j.id = t.id AND j.state = 'running' AND j.attempts = t.attempt
  RETURNING j.tenant_id, j.id),
discarded AS (
  DELETE FROM call_intents c USING t
  WHERE c.tenant_id = t.tenant_id AND c.job_id = t.id AND c.attempt = t.attempt),
delivered AS (
  INSERT INTO webhook_deliveries (id, tenant_id, job_id, event_type, url, payload, state, next_attempt_at)
  SELECT t.hook_id, t.tenant_id, t.id, t.event_type, t.url, t.payload, 'pending',
         now() + make_interval(secs => $12::float8 / 1000)
  FROM t JOIN committed USING (tenant_id, id) WHERE t.hook_id IS NOT NULL
  ON CONFLICT (tenant_id, job_id, event_type) DO NOTHING)
SELECT tenant_id, id FROM committed";

/// Commits outcomes fenced by attempt, and the webhook deliveries of those that took effect.
pub(super) async fn finish_jobs(
    tx: &mut Tx<'_>,
    outcomes: &[&Outcome],
    has_budget: &(dyn Fn(&str) -> bool + Sync),
    webhook_lease: Duration,
) -> Result<Vec<FinishResult>, sqlx::Error> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let mut states = Vec::with_capacity(outcomes.len());
    let mut results = Vec::with_capacity(outcomes.len());
    let mut codes = Vec::with_capacity(outcomes.len());
    let mut errors = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let (state, result, code, error) = match &o.finish {
            Finish::Succeeded(v) => (JobState::Succeeded, Some(v), None, None),
            Finish::Failed { code, message } => (JobState::Failed, None, Some(code), Some(message)),
            Finish::Retry { code, message } => (JobState::Queued, None, Some(code), Some(message)),
        };
        states.push(state.as_str());
        results.push(result);
        codes.push(code.map(String::as_str));
        errors.push(error.map(String::as_str));
    }
    let hooks: Vec<Option<&NewDelivery>> = outcomes.iter().map(|o| o.webhook.as_ref()).collect();
    let hook = |f: fn(&NewDelivery) -> &str| -> Vec<Option<&str>> {
        hooks.iter().map(|h| h.map(f)).collect()
    };
    let lease_ms = i64::try_from(webhook_lease.as_millis()).unwrap_or(i64::MAX);
    let committed: Vec<(String, String)> = sqlx::query_as(FINISH)
        .bind(
            outcomes
                .iter()
                .map(|o| o.tenant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| o.job_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(outcomes.iter().map(|o| o.attempt).collect::<Vec<_>>())
        .bind(&states)
        .bind(&results)
        .bind(&codes)
        .bind(&errors)
        .bind(hook(|h| &h.id))
        .bind(hook(|h| &h.event_type))
        .bind(hook(|h| &h.url))
        .bind(hook(|h| &h.payload))
        .bind(lease_ms)
        .fetch_all(&mut **tx)
        .await?;
    let committed: std::collections::HashSet<(String, String)> = committed.into_iter().collect();
    let took_effect: Vec<bool> = outcomes
        .iter()
        .map(|o| committed.contains(&(o.tenant_id.clone(), o.job_id.clone())))
        .collect();
    // Settle: the attempt's calls are booked (in this or an earlier batch), so what it reserved goes
    // back; a final outcome also counts the job against its budgets' job totals.
    let settled: Vec<budget::ReleaseKey<'_>> = outcomes
        .iter()
        .zip(&took_effect)
        .filter(|(o, ok)| **ok && has_budget(&o.tenant_id))
        .map(|(o, _)| budget::ReleaseKey {
            tenant: &o.tenant_id,
            job_id: &o.job_id,
            attempt: Some(o.attempt),
            terminal: !matches!(o.finish, Finish::Retry { .. }),
        })
        .collect();
    budget::release(tx, &settled).await?;
    Ok(took_effect
        .into_iter()
        .map(|ok| {
            if ok {
                FinishResult::Committed
            } else {
                FinishResult::Fenced
            }
        })
        .collect())
}
