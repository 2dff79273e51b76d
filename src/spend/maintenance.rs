//! Spend upkeep every worker runs: release reservations whose worker died, book the call intents
//! it left (as estimates), and keep the ledger's monthly partitions created ahead and pruned to the
//! retention, fold the dashboard's minute stats into hours (both serialized in Postgres, so any
//! number of workers may run them), and purge jobs' content past `retention.jobs_days`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::SpendConfig;

/// Months of ledger partitions created ahead of the current one.
const MONTHS_AHEAD: i32 = 2;

/// Runs until cancelled; errors are logged and retried on the next tick.
pub async fn run(
    pool: PgPool,
    cfg: SpendConfig,
    job_retention: Option<Duration>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.maintenance_interval);
    let mut ticks: u64 = 0;
    // Partitions are checked at start and then about hourly; reservations on every tick.
    let partition_every = (3_600_000 / cfg.maintenance_interval.as_millis().max(1)) as u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = expire_reservations(&pool, Duration::ZERO).await {
            tracing::warn!(error = %e, "cannot expire budget reservations");
        }
        if let Err(e) = expire_intents(&pool, cfg.reservation_ttl).await {
            tracing::warn!(error = %e, "cannot book the call intents of workers that died");
        }
        if ticks.is_multiple_of(partition_every.max(1)) {
            if let Err(e) = maintain_ledger(&pool, cfg.ledger_retention_months).await {
                tracing::warn!(error = %e, "cannot maintain ledger partitions");
            }
            if let Err(e) = crate::telemetry::stats::fold(&pool).await {
                tracing::warn!(error = %e, "cannot fold the dashboard's minute stats into hours");
            }
            if let Some(keep) = job_retention {
                match crate::jobs::retention::purge(&pool, keep, Duration::ZERO).await {
                    Ok(p) if p.jobs + p.deliveries > 0 => {
                        tracing::info!(
                            jobs = p.jobs,
                            deliveries = p.deliveries,
                            "purged content past retention"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot purge content past retention"),
                }
            }
        }
        ticks += 1;
    }
}

/// Releases expired reservations; returns how many.
///
/// `ahead` moves the clock forward: reservations that will have expired by then go now. Upkeep
/// passes zero; tests pass a TTL instead of sleeping through it.
pub async fn expire_reservations(pool: &PgPool, ahead: Duration) -> Result<i64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let expired = super::budget::expire(&mut conn, ahead).await?;
    if expired > 0 {
        tracing::info!(expired, "released budget reservations of workers that died");
    }
    Ok(expired)
}

/// Books the call intents of workers that died as estimated ledger rows; returns how many.
pub async fn expire_intents(pool: &PgPool, ttl: std::time::Duration) -> Result<u64, sqlx::Error> {
    let booked = super::intents::expire(pool, ttl).await?;
    if booked.rows > 0 {
        tracing::warn!(
            calls = booked.rows,
            "booked calls of workers that died before booking them, at their worst-case cost (estimated)"
        );
    }
    Ok(booked.rows)
}

/// Creates upcoming ledger partitions and drops those past retention.
pub async fn maintain_ledger(pool: &PgPool, retention_months: u32) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT ragq_ledger_maintenance($1, $2)")
        .bind(MONTHS_AHEAD)
        .bind(i32::try_from(retention_months).unwrap_or(i32::MAX))
        .execute(pool)
        .await?;
    Ok(())
}
