//! Each worker's share of the models' rate limits: 1 / live workers, from a heartbeat table.
//!
//! A worker renews its lease every [`HEARTBEAT`] and reads how many leases are live in the same
//! round trip; a worker that dies is forgotten when its lease expires ([`LEASE`]). Shares converge
//! within one heartbeat of a worker joining, and within one lease of one dying. Calls never touch
//! the database for this.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const HEARTBEAT: Duration = Duration::from_secs(2);
pub const LEASE: Duration = Duration::from_secs(6);

/// Renews `worker_id`'s lease and returns the number of live workers (itself included).
pub async fn heartbeat(pool: &PgPool, worker_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH renewed AS ( \
             INSERT INTO worker_leases (worker_id, expires_at) \
             VALUES ($1, now() + make_interval(secs => $2)) \
             ON CONFLICT (worker_id) DO UPDATE SET expires_at = EXCLUDED.expires_at \
             RETURNING worker_id) \
         SELECT 1 + count(*) FROM worker_leases \
         WHERE expires_at > now() AND worker_id NOT IN (SELECT worker_id FROM renewed)",
    )
    .bind(worker_id)
    .bind(LEASE.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// Gives the lease up at shutdown, so the others' shares grow at their next heartbeat.
pub async fn leave(pool: &PgPool, worker_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM worker_leases WHERE worker_id = $1")
        .bind(worker_id)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Keeps the lease and calls `set_share` with 1 / live workers until `cancel`, then leaves. The
/// caller took the first heartbeat before consuming, so this one waits a beat first. With the
/// database unreachable the last share stands (workers rarely come and go during an outage).
pub async fn run(
    pool: PgPool,
    worker_id: String,
    set_share: impl Fn(f64),
    cancel: CancellationToken,
) {
    loop {
        match heartbeat(&pool, &worker_id).await {
            Ok(live) => set_share(1.0 / live.max(1) as f64),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the worker lease; keeping the last rate share")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
    let _ = leave(&pool, &worker_id).await;
}
