//! `ragq scheduler`: fires cron pipelines, each slot exactly once, with any number of replicas.
//!
//! Replicas compete for one lease row in Postgres; the holder renews it every tick and is the only
//! one that fires (each firing transaction holds the lease row, so a replica that lost the lease
//! cannot fire beside the new leader). If the leader dies, another takes over when the lease
//! expires. Firing writes the run, the `queued` job and its message in one transaction
//! ([`fire`]); the outbox relay ([`outbox`]) publishes afterwards. Time comes from an injected
//! [`clock::Clock`] so that tests can run days of slots in seconds.

pub mod clock;
pub mod cron;
pub mod fire;
pub mod outbox;
pub mod pipeline;

use std::sync::Arc;

use chrono::Duration;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::queue::publisher::ReconnectingPublisher;
use clock::Clock;

/// How often the leader refreshes the database-wide gauges (webhook backlog, budgets left).
const GAUGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(15);

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub tick: std::time::Duration,
    pub lease_ttl: Duration,
    /// Bounds on the pipelines tenants create (and on the job messages their runs render).
    pub pipelines: pipeline::PipelineLimits,
}

/// One scheduler replica.
pub struct Scheduler {
    pool: PgPool,
    publisher: Arc<ReconnectingPublisher>,
    clock: Arc<dyn Clock>,
    holder: String,
    cfg: SchedulerConfig,
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub leader: bool,
    pub runs: usize,
    pub published: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Relay(#[from] outbox::RelayError),
}

impl Scheduler {
    pub fn new(
        pool: PgPool,
        publisher: Arc<ReconnectingPublisher>,
        clock: Arc<dyn Clock>,
        cfg: SchedulerConfig,
    ) -> Self {
        let holder = format!("scheduler-{}", uuid::Uuid::new_v4().simple());
        Self {
            pool,
            publisher,
            clock,
            holder,
            cfg,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Renews or takes the lease; if this replica leads, fires what is due and relays the outbox.
    pub async fn tick(&self) -> Result<TickReport, SchedulerError> {
        let now = self.clock.now();
        let leader = self.take_lease(now).await?;
        if !leader {
            return Ok(TickReport::default());
        }
        let runs = match fire::fire_due(&self.pool, &self.holder, now, self.cfg.pipelines).await {
            Ok(runs) => runs,
            Err(fire::FireError::LostLease) => return Ok(TickReport::default()),
            Err(fire::FireError::Db(e)) => return Err(e.into()),
        };
        let mut published = 0;
        loop {
            let n = outbox::relay(&self.pool, &self.publisher).await?;
            published += n;
            if n == 0 {
                break;
            }
        }
        Ok(TickReport {
            leader,
            runs,
            published,
        })
    }

    async fn take_lease(&self, now: chrono::DateTime<chrono::Utc>) -> Result<bool, sqlx::Error> {
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, expires_at) VALUES ('scheduler', $1, $2) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= $3 \
             RETURNING holder",
        )
        .bind(&self.holder)
        .bind(now + self.cfg.lease_ttl)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.is_some())
    }

    /// Ticks until cancelled; errors are logged once and the next tick tries again.
    pub async fn run(self, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(self.cfg.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = false;
        let mut last_refresh: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            match self.tick().await {
                Ok(report) => {
                    crate::telemetry::metrics::scheduler_leader(report.leader);
                    crate::telemetry::metrics::scheduler_fired(report.runs as u64);
                    if report.leader && last_refresh.is_none_or(|t| t.elapsed() >= GAUGE_REFRESH) {
                        last_refresh = Some(std::time::Instant::now());
                        if let Err(e) =
                            crate::telemetry::metrics::refresh_from_database(&self.pool).await
                        {
                            tracing::warn!(error = %e, "cannot refresh the database-wide gauges");
                        }
                    }
                    if report.leader != was_leader {
                        tracing::info!(holder = %self.holder, leader = report.leader, "scheduler leadership changed");
                        was_leader = report.leader;
                    }
                    if report.runs > 0 || report.published > 0 {
                        tracing::info!(
                            runs = report.runs,
                            published = report.published,
                            "pipelines fired"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "scheduler tick failed; retrying"),
            }
        }
    }
}
