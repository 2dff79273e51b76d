//! Retention: a finished job's content (its input, result and webhook payloads) is purged once it
//! is older than `retention.jobs_days`. The job row stays (state, times, attempts, error code), so
//! reports and idempotency by id still hold; the ledger and aggregates are untouched. The input
//! keeps only `{"purged": true}` and the collection it named (erasure finds a tenant's vectors by
//! it). Runs in batches, so no statement holds many locks for long.

use std::time::Duration;

use sqlx::PgPool;

/// Rows one statement purges at most.
const BATCH: i64 = 5_000;

/// What a purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub jobs: u64,
    pub deliveries: u64,
}

/// Purges content finished more than `older_than` ago. `ahead` moves the clock forward (tests pass
/// the retention instead of waiting it out; upkeep passes zero).
pub async fn purge(
    pool: &PgPool,
    older_than: Duration,
    ahead: Duration,
) -> Result<Purged, sqlx::Error> {
    let cutoff = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let cutoff = chrono::Utc::now() + cutoff(ahead) - cutoff(older_than);
    let mut purged = Purged::default();
    loop {
        let jobs = sqlx::query(
            "UPDATE jobs SET purged_at = now(), \
               input = jsonb_build_object('purged', true) \
                 || CASE WHEN input ? 'collection' THEN jsonb_build_object('collection', input -> 'collection') ELSE '{}' END, \
               result = CASE WHEN result IS NULL THEN NULL ELSE '{\"purged\": true}'::jsonb END \
             WHERE ctid = ANY (ARRAY(SELECT ctid FROM jobs \
               WHERE purged_at IS NULL AND created_at < $1 AND finished_at < $1 \
                 AND state IN ('succeeded', 'failed') \
               LIMIT $2 FOR UPDATE SKIP LOCKED))",
        )
        .bind(cutoff)
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        let deliveries = sqlx::query(
            "UPDATE webhook_deliveries SET purged_at = now(), payload = '' \
             WHERE ctid = ANY (ARRAY(SELECT ctid FROM webhook_deliveries \
               WHERE purged_at IS NULL AND created_at < $1 AND state IN ('delivered', 'failed') \
               LIMIT $2 FOR UPDATE SKIP LOCKED))",
        )
        .bind(cutoff)
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        purged.jobs += jobs;
        purged.deliveries += deliveries;
        if jobs < BATCH as u64 && deliveries < BATCH as u64 {
            return Ok(purged);
        }
    }
}
