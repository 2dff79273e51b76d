//! Firing: which slots of a due pipeline run (a pure plan from its policies), and the transaction
//! that records each run, writes its job as `queued` and its message to the outbox, and moves the
//! pipeline on. A crash anywhere before the commit leaves no trace; after it, the outbox relay
//! publishes. Each run's key is (pipeline, scheduled time), so no slot can run twice.

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgConnection, PgPool};

use super::cron::CronSchedule;
use super::pipeline::{self, Missed, Overlap, Pipeline, PipelineLimits};
use crate::jobs::JobState;
use crate::spend::budget;

/// Without a starting deadline, how late a slot may be and still count as on time for `skip`.
pub const ON_TIME: Duration = Duration::seconds(60);
/// Pipelines fired per leader tick, oldest due first, so one far behind cannot block the others.
pub const PIPELINES_PER_TICK: i64 = 100;

/// What one due pipeline does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// Slots to fire, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// The next slot after `now`.
    pub next_fire_at: DateTime<Utc>,
}

/// The slots of `p` due at `now` that its missed-run policy and starting deadline allow.
pub fn plan(schedule: &CronSchedule, p: &Pipeline, now: DateTime<Utc>) -> SlotPlan {
    let deadline = p
        .starting_deadline_secs
        .map(|s| Duration::seconds(i64::from(s)));
    let wanted = match p.missed {
        Missed::RunAll => usize::try_from(p.missed_limit).unwrap_or(1),
        Missed::Skip | Missed::RunOnce => 1,
    };
    let latest = schedule.latest_between(p.next_fire_at, now, wanted);
    let late_limit = match (p.missed, deadline) {
        (Missed::Skip, Some(d)) => Some(d.min(ON_TIME)),
        (Missed::Skip, None) => Some(ON_TIME),
        (_, d) => d,
    };
    let mut fire: Vec<DateTime<Utc>> = latest
        .into_iter()
        .filter(|s| late_limit.is_none_or(|limit| now - *s <= limit))
        .collect();
    fire.reverse();
    let next_fire_at = schedule
        .next_after(now)
        .unwrap_or_else(|| now + Duration::days(365 * 100));
    SlotPlan { fire, next_fire_at }
}

#[derive(Debug, thiserror::Error)]
pub enum FireError {
    #[error("this scheduler no longer holds the lease")]
    LostLease,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Fires every due pipeline (up to [`PIPELINES_PER_TICK`]) while `holder` leads; returns runs made.
pub async fn fire_due(
    pool: &PgPool,
    holder: &str,
    now: DateTime<Utc>,
    limits: PipelineLimits,
) -> Result<usize, FireError> {
    let due: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM pipelines WHERE enabled AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2",
    )
    .bind(now)
    .bind(PIPELINES_PER_TICK)
    .fetch_all(pool)
    .await?;
    let mut runs = 0;
    for id in due {
        match fire_one(pool, id, holder, now, limits).await {
            Ok(n) => runs += n,
            Err(FireError::LostLease) => return Err(FireError::LostLease),
            // One pipeline's failure must not hold up the others; it is tried again next tick.
            Err(FireError::Db(e)) => {
                tracing::warn!(pipeline_id = id, error = %e, "cannot fire pipeline; retrying next tick")
            }
        }
    }
    Ok(runs)
}

async fn fire_one(
    pool: &PgPool,
    id: i64,
    holder: &str,
    now: DateTime<Utc>,
    limits: PipelineLimits,
) -> Result<usize, FireError> {
    let mut tx = pool.begin().await?;
    // Holding the lease row for share makes a takeover wait for this transaction to end, so a
    // scheduler that lost the lease cannot fire alongside the new leader.
    let leads: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM leases WHERE name = 'scheduler' AND holder = $1 AND expires_at > $2 FOR SHARE",
    )
    .bind(holder)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    if leads.is_none() {
        return Err(FireError::LostLease);
    }
    let sql = [
        "SELECT ",
        pipeline::COLUMNS,
        " FROM pipelines WHERE id = $1 AND enabled AND next_fire_at <= $2 FOR UPDATE SKIP LOCKED",
    ]
    .concat();
    let Some(p): Option<Pipeline> = sqlx::query_as(&sql)
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(0);
    };
    let plan = match CronSchedule::parse(&p.cron, &p.time_zone) {
        Ok(schedule) => plan(&schedule, &p, now),
        Err(e) => {
            // Validated at creation; a zone database change could still break it. Park it.
            tracing::error!(pipeline = %p.name, tenant = %p.tenant_id, error = %e, "pipeline disabled: its schedule no longer parses");
            sqlx::query("UPDATE pipelines SET enabled = false WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(0);
        }
    };
    for slot in &plan.fire {
        fire_slot(&mut tx, &p, *slot, false, limits).await?;
    }
    sqlx::query("UPDATE pipelines SET next_fire_at = $2 WHERE id = $1")
        .bind(id)
        .bind(plan.next_fire_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(plan.fire.len())
}

/// Records the run of `p` at `slot`, applying its overlap policy; returns whether a job was
/// enqueued. Safe to repeat: the run's key and the job id make a second call a no-op.
pub async fn fire_slot(
    tx: &mut PgConnection,
    p: &Pipeline,
    slot: DateTime<Utc>,
    manual: bool,
    limits: PipelineLimits,
) -> Result<bool, sqlx::Error> {
    let trigger = if manual { "manual" } else { "schedule" };
    if p.overlap != Overlap::Allow {
        if let Some((job, state)) = unfinished_previous(tx, p).await? {
            if p.overlap == Overlap::Forbid {
                let reason = format!("previous run's job `{job}` is still {state}");
                record_skip(tx, p, slot, trigger, &reason).await?;
                return Ok(false);
            }
            replace(tx, p, &job, slot).await?;
        }
    }
    let (mut job, mut body) = match pipeline::render(p, slot, manual, limits.max_message_bytes) {
        Ok(rendered) => rendered,
        Err(e) => {
            record_skip(tx, p, slot, trigger, &format!("invalid job template: {e}")).await?;
            return Ok(false);
        }
    };
    // A saved prompt the template names is resolved now: the run gets its label's current
    // version, pinned like any submission's.
    if crate::prompts::pin::names_prompts(&job) {
        let (prompts, max) = (limits.prompts, limits.max_message_bytes);
        match crate::prompts::pin::pin_on(tx, &mut job, prompts, max, "pipeline").await {
            Ok(()) => body = serde_json::to_vec(&job).unwrap_or(body),
            Err(crate::prompts::pin::PinError::Refused(e)) => {
                record_skip(tx, p, slot, trigger, &format!("prompt: {e}")).await?;
                return Ok(false);
            }
            Err(crate::prompts::pin::PinError::Db(e)) => return Err(e),
        }
    }
    crate::jobs::store::insert_queued(&mut *tx, &job).await?;
    let recorded = sqlx::query(
        "INSERT INTO pipeline_runs (pipeline_id, scheduled_at, trigger, state, job_id) \
         VALUES ($1, $2, $3, 'enqueued', $4) ON CONFLICT DO NOTHING",
    )
    .bind(p.id)
    .bind(slot)
    .bind(trigger)
    .bind(&job.id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if recorded {
        // The run starts the job's trace: its span is the job span's parent (see telemetry).
        let run =
            tracing::info_span!("pipeline_run", pipeline = %p.name, trigger, job_id = %job.id);
        let traceparent = crate::telemetry::traces::traceparent_of(&run);
        sqlx::query(
            "INSERT INTO outbox (routing_key, message_id, body, traceparent) VALUES ($1, $2, $3, $4)",
        )
        .bind(job.kind.as_str())
        .bind(&job.id)
        .bind(&body)
        .bind(traceparent)
        .execute(&mut *tx)
        .await?;
    }
    Ok(recorded)
}

/// Runs a pipeline now, outside its schedule (no lease needed: the run's key is the trigger time).
/// Returns the run's job id, or `None` if its overlap policy skipped it.
pub async fn trigger(
    pool: &PgPool,
    actor: &crate::audit::Actor,
    tenant: &str,
    name: &str,
    now: DateTime<Utc>,
    limits: PipelineLimits,
) -> Result<Option<String>, pipeline::PipelineError> {
    let mut tx = pool.begin().await?;
    let p = pipeline::lock(&mut tx, tenant, name).await?;
    let enqueued = fire_slot(&mut tx, &p, now, true, limits).await?;
    let job = enqueued.then(|| pipeline::job_id(&p.name, now, true));
    let change = crate::audit::Change {
        action: "pipeline.trigger",
        tenant: Some(tenant),
        target: name,
        before: None,
        after: Some(serde_json::json!({ "job_id": job, "skipped": !enqueued })),
    };
    crate::audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(job)
}

/// The latest enqueued run's job, if it has not finished.
async fn unfinished_previous(
    tx: &mut PgConnection,
    p: &Pipeline,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let last: Option<(String, String)> = sqlx::query_as(
        "SELECT j.id, j.state FROM pipeline_runs r JOIN jobs j ON j.tenant_id = $2 AND j.id = r.job_id \
         WHERE r.pipeline_id = $1 AND r.state = 'enqueued' ORDER BY r.scheduled_at DESC LIMIT 1",
    )
    .bind(p.id)
    .bind(&p.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(last.filter(|(_, s)| !JobState::parse(s).is_some_and(JobState::is_terminal)))
}

/// Fails the previous run's unfinished job as `replaced` (a worker still running it finds its
/// outcome fenced off; the calls it made stay booked) and releases what it reserved.
async fn replace(
    tx: &mut PgConnection,
    p: &Pipeline,
    job: &str,
    slot: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET state = 'failed', error_code = 'replaced', error = $3, finished_at = now() \
         WHERE tenant_id = $1 AND id = $2 AND state IN ('queued', 'running')",
    )
    .bind(&p.tenant_id)
    .bind(job)
    .bind(format!("replaced by the run scheduled at {}", slot.to_rfc3339()))
    .execute(&mut *tx)
    .await?;
    let key = budget::ReleaseKey {
        tenant: &p.tenant_id,
        job_id: job,
        attempt: None,
        terminal: true,
    };
    budget::release(tx, &[key]).await?;
    Ok(())
}

async fn record_skip(
    tx: &mut PgConnection,
    p: &Pipeline,
    slot: DateTime<Utc>,
    trigger: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pipeline_runs (pipeline_id, scheduled_at, trigger, state, reason) \
         VALUES ($1, $2, $3, 'skipped', $4) ON CONFLICT DO NOTHING",
    )
    .bind(p.id)
    .bind(slot)
    .bind(trigger)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, h, m, s)
            .single()
            .unwrap_or_default()
    }

    fn hourly(missed: Missed, limit: i32, deadline: Option<i32>) -> (CronSchedule, Pipeline) {
        let schedule = CronSchedule::parse("0 * * * *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        let p = Pipeline {
            id: 1,
            tenant_id: "acme".into(),
            name: "p".into(),
            cron: "0 * * * *".into(),
            time_zone: "UTC".into(),
            job_template: serde_json::json!({}),
            enabled: true,
            overlap: Overlap::Allow,
            missed,
            missed_limit: limit,
            starting_deadline_secs: deadline,
            next_fire_at: at(1, 0, 0),
        };
        (schedule, p)
    }

    #[test]
    fn an_on_time_slot_fires_under_every_policy() {
        for missed in [Missed::Skip, Missed::RunOnce, Missed::RunAll] {
            let (s, p) = hourly(missed, 10, None);
            let plan = plan(&s, &p, at(1, 0, 2));
            assert_eq!(plan.fire, vec![at(1, 0, 0)], "{missed:?}");
            assert_eq!(plan.next_fire_at, at(2, 0, 0));
        }
    }

    #[test]
    fn after_downtime_each_policy_fires_what_it_says() {
        // Down from 01:00 to 05:30: slots 01:00 .. 05:00 were missed.
        let now = at(5, 30, 0);
        let (s, p) = hourly(Missed::Skip, 10, None);
        assert!(
            plan(&s, &p, now).fire.is_empty(),
            "05:00 is 30 minutes late"
        );
        let (s, p) = hourly(Missed::RunOnce, 10, None);
        assert_eq!(plan(&s, &p, now).fire, vec![at(5, 0, 0)]);
        let (s, p) = hourly(Missed::RunAll, 3, None);
        assert_eq!(
            plan(&s, &p, now).fire,
            vec![at(3, 0, 0), at(4, 0, 0), at(5, 0, 0)]
        );
        let (s, p) = hourly(Missed::RunAll, 10, Some(7200));
        assert_eq!(
            plan(&s, &p, now).fire,
            vec![at(4, 0, 0), at(5, 0, 0)],
            "the deadline drops 01:00-03:00"
        );
        let (s, p) = hourly(Missed::RunOnce, 10, Some(600));
        let late = plan(&s, &p, now);
        assert!(late.fire.is_empty(), "05:00 is past its 10-minute deadline");
        assert_eq!(late.next_fire_at, at(6, 0, 0));
    }
}
