//! Job and provider call stats for the dashboard: what this worker finished and what its router
//! saw, per minute, written to Postgres every few seconds (`job_stats`, `provider_stats`,
//! `provider_breakers`) so that the dashboard, read by any api process, shows every worker's.
//!
//! Recording is an in-memory map update, so the job path pays no database time for charts (adding
//! the job stats to the outcome's commit statement cost Postgres about 30 us per job); nothing is
//! kept until [`run`] starts the writer. The price: a worker that dies loses what it recorded since
//! its last write, at most one interval of chart data, never money (spend is the ledger's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Upper bounds (ms) of the latency histogram's buckets; the last bucket is unbounded. The same
/// bounds as `ragq_latency_bounds()` in the database, which sums these arrays.
pub const LATENCY_BOUNDS_MS: [f64; 15] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
    300000.0, 1800000.0,
];
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Which bucket `ms` falls in (as `width_bucket` numbers them, from 0).
pub fn bucket_of(ms: f64) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|bound| *bound <= ms)
}

/// A circuit breaker's state as the dashboard shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    minute: DateTime<Utc>,
    provider: String,
    model: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Tally {
    calls: i64,
    attempts: i64,
    latency: [i64; BUCKETS],
}

#[derive(Debug, Default)]
struct Pending {
    calls: HashMap<Key, Tally>,
    breakers: HashMap<String, (String, BreakerState)>,
}

/// What one router saw since its last write; shared with the writer task.
#[derive(Debug, Default)]
pub struct ProviderStats {
    /// Set by [`run`]: without a writer nothing is kept (a map nobody empties only grows).
    recording: AtomicBool,
    pending: Mutex<Pending>,
}

impl ProviderStats {
    fn pending(&self) -> Option<std::sync::MutexGuard<'_, Pending>> {
        if !self.recording.load(Ordering::Relaxed) {
            return None;
        }
        self.pending.lock().ok()
    }

    /// One call to a model ended (after its retries) with `outcome` (`ok`, an error code, or a
    /// call never sent: `paced`, `circuit_open`); `latency` is none for calls never sent.
    pub fn call(
        &self,
        provider: &str,
        model: &str,
        outcome: &'static str,
        attempts: u32,
        latency: Option<Duration>,
    ) {
        let Some(mut p) = self.pending() else { return };
        let key = Key {
            minute: minute(Utc::now()),
            provider: provider.to_string(),
            model: model.to_string(),
            outcome,
        };
        let tally = p.calls.entry(key).or_default();
        tally.calls += 1;
        tally.attempts += i64::from(attempts);
        if let Some(latency) = latency {
            tally.latency[bucket_of(latency.as_secs_f64() * 1000.0)] += 1;
        }
    }

    /// A model's circuit breaker in this process after a call.
    pub fn breaker(&self, provider: &str, model: &str, state: BreakerState) {
        let Some(mut p) = self.pending() else { return };
        p.breakers
            .insert(model.to_string(), (provider.to_string(), state));
    }

    /// Takes what was recorded and adds it to the tables; on failure it is kept for the next try.
    async fn write(&self, pool: &PgPool, worker_id: &str) -> Result<(), sqlx::Error> {
        let taken = match self.pending() {
            Some(mut p) => std::mem::take(&mut *p),
            None => return Ok(()),
        };
        if taken.calls.is_empty() && taken.breakers.is_empty() {
            return Ok(());
        }
        let result = insert(pool, worker_id, &taken).await;
        if result.is_err() {
            if let Some(mut p) = self.pending() {
                merge_back(&mut p, taken);
            }
        }
        result
    }
}

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::TimeDelta::minutes(1)).unwrap_or(t)
}

/// What one worker records: its router's calls and its finished attempts.
#[derive(Debug, Clone)]
pub struct Sources {
    pub providers: Arc<ProviderStats>,
    pub jobs: Arc<JobStats>,
}

/// Writes what `sources` recorded every `interval` until cancelled, then once more.
pub async fn run(
    sources: Sources,
    pool: PgPool,
    worker_id: String,
    interval: Duration,
    cancel: CancellationToken,
) {
    sources.providers.recording.store(true, Ordering::Relaxed);
    sources.jobs.recording.store(true, Ordering::Relaxed);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Err(e) = sources.jobs.write(&pool).await {
            tracing::warn!(error = %e, "cannot write job stats for the dashboard");
        }
        if let Err(e) = sources.providers.write(&pool, &worker_id).await {
            tracing::warn!(error = %e, "cannot write provider stats for the dashboard");
        }
        if stop {
            return;
        }
    }
}

/// The `tenant_id` of the job stats rows that count every tenant (no tenant id can be `*`).
pub const ALL_TENANTS: &str = "*";

/// How long a finished attempt took: since ragq accepted the job, and inside the worker.
#[derive(Debug, Clone, Copy)]
pub struct JobTiming {
    pub since_accepted: Duration,
    pub in_worker: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct JobKey {
    minute: DateTime<Utc>,
    tenant: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Default)]
struct JobTally {
    jobs: i64,
    total: [i64; BUCKETS],
    work: [i64; BUCKETS],
}

/// The attempts one worker finished since its last write.
#[derive(Debug, Default)]
pub struct JobStats {
    recording: AtomicBool,
    pending: Mutex<HashMap<JobKey, JobTally>>,
}

impl JobStats {
    /// An attempt's outcome was committed: `succeeded`, `failed` or `retried`.
    pub fn record(&self, tenant: &str, kind: &'static str, outcome: &'static str, t: JobTiming) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let minute = minute(Utc::now());
        // Each attempt counts for its tenant and for all tenants, so the operator's charts read a
        // few rows per minute however many tenants there are.
        for tenant in [tenant, ALL_TENANTS] {
            let key = JobKey {
                minute,
                tenant: tenant.to_string(),
                kind,
                outcome,
            };
            let tally = pending.entry(key).or_default();
            tally.jobs += 1;
            tally.total[bucket_of(t.since_accepted.as_secs_f64() * 1000.0)] += 1;
            tally.work[bucket_of(t.in_worker.as_secs_f64() * 1000.0)] += 1;
        }
    }

    /// Adds what was recorded to `job_stats`; on failure it is kept for the next try.
    async fn write(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let taken = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(()),
        };
        if taken.is_empty() {
            return Ok(());
        }
        // Key order, so that concurrent writers lock shared rows in one order.
        let rows: std::collections::BTreeMap<&JobKey, &JobTally> = taken.iter().collect();
        let minutes: Vec<DateTime<Utc>> = rows.keys().map(|k| k.minute).collect();
        let tenants: Vec<&str> = rows.keys().map(|k| k.tenant.as_str()).collect();
        let kinds: Vec<&str> = rows.keys().map(|k| k.kind).collect();
        let outcomes: Vec<&str> = rows.keys().map(|k| k.outcome).collect();
        let jobs: Vec<i64> = rows.values().map(|t| t.jobs).collect();
        let total: Vec<String> = rows.values().map(|t| histogram_literal(&t.total)).collect();
        let work: Vec<String> = rows.values().map(|t| histogram_literal(&t.work)).collect();
        let written = sqlx::query_file!(
            "src/telemetry/sql/job_stats.sql",
            &minutes,
            &tenants as &[&str],
            &kinds as &[&str],
            &outcomes as &[&str],
            &jobs,
            &total,
            &work,
        )
        .execute(pool)
        .await;
        if let Err(e) = written {
            if let Ok(mut p) = self.pending.lock() {
                for (key, t) in taken {
                    let tally = p.entry(key).or_default();
                    tally.jobs += t.jobs;
                    add(&mut tally.total, &t.total);
                    add(&mut tally.work, &t.work);
                }
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Adds histogram `from` into `into`, bucket by bucket.
pub fn add(into: &mut [i64; BUCKETS], from: &[i64]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

fn merge_back(into: &mut Pending, from: Pending) {
    for (key, t) in from.calls {
        let tally = into.calls.entry(key).or_default();
        tally.calls += t.calls;
        tally.attempts += t.attempts;
        add(&mut tally.latency, &t.latency);
    }
    for (model, state) in from.breakers {
        into.breakers.entry(model).or_insert(state);
    }
}

async fn insert(pool: &PgPool, worker_id: &str, taken: &Pending) -> Result<(), sqlx::Error> {
    let mut rows: Vec<(&Key, &Tally)> = taken.calls.iter().collect();
    // Key order, so that concurrent writers lock shared rows in one order.
    rows.sort_by(|a, b| {
        (a.0.minute, &a.0.provider, &a.0.model, a.0.outcome).cmp(&(
            b.0.minute,
            &b.0.provider,
            &b.0.model,
            b.0.outcome,
        ))
    });
    let minutes: Vec<DateTime<Utc>> = rows.iter().map(|r| r.0.minute).collect();
    let providers: Vec<&str> = rows.iter().map(|r| r.0.provider.as_str()).collect();
    let models: Vec<&str> = rows.iter().map(|r| r.0.model.as_str()).collect();
    let outcomes: Vec<&str> = rows.iter().map(|r| r.0.outcome).collect();
    let calls: Vec<i64> = rows.iter().map(|r| r.1.calls).collect();
    let attempts: Vec<i64> = rows.iter().map(|r| r.1.attempts).collect();
    // Histograms travel as text array literals: Postgres arrays of arrays must be rectangular,
    // and these are, but sqlx binds no two-dimensional arrays.
    let latency: Vec<String> = rows
        .iter()
        .map(|r| histogram_literal(&r.1.latency))
        .collect();
    let mut tx = pool.begin().await?;
    sqlx::query_file!(
        "src/telemetry/sql/provider_stats.sql",
        &minutes,
        &providers as &[&str],
        &models as &[&str],
        &outcomes as &[&str],
        &calls,
        &attempts,
        &latency,
    )
    .execute(&mut *tx)
    .await?;
    let mut breakers: Vec<(&String, &(String, BreakerState))> = taken.breakers.iter().collect();
    breakers.sort_by(|a, b| a.0.cmp(b.0));
    let models: Vec<&str> = breakers.iter().map(|b| b.0.as_str()).collect();
    let providers: Vec<&str> = breakers.iter().map(|b| b.1 .0.as_str()).collect();
    let states: Vec<&str> = breakers.iter().map(|b| b.1 .1.as_str()).collect();
    sqlx::query!(
        "INSERT INTO provider_breakers (worker_id, model, provider, state, updated_at) \
         SELECT $1, * , now() FROM UNNEST($2::text[], $3::text[], $4::text[]) \
         ON CONFLICT (worker_id, model) DO UPDATE SET \
           provider = excluded.provider, state = excluded.state, updated_at = now()",
        worker_id,
        &models as &[&str],
        &providers as &[&str],
        &states as &[&str],
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Folds minute stats older than two days into hour rows and drops expired dashboard sessions.
pub async fn fold(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT ragq_stats_maintenance()")
        .execute(pool)
        .await?;
    Ok(())
}

fn histogram_literal(counts: &[i64]) -> String {
    let items: Vec<String> = counts.iter().map(i64::to_string).collect();
    format!("{{{}}}", items.join(","))
}

/// The value at quantile `q` (0..1) of a histogram over [`LATENCY_BOUNDS_MS`], interpolated
/// within its bucket (the unbounded last bucket reports its lower bound); none when empty.
pub fn quantile_ms(counts: &[i64], q: f64) -> Option<f64> {
    let total: i64 = counts.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0.0;
    for (i, &n) in counts.iter().enumerate() {
        let n = n as f64;
        if n > 0.0 && seen + n >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1]
            };
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(lower);
            };
            return Some(lower + (upper - lower) * ((rank - seen) / n));
        }
        seen += n;
    }
    LATENCY_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_width_bucket() {
        // width_bucket(ms, bounds): 0 below the first bound, i when bounds[i-1] <= ms < bounds[i].
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(4.9), 0);
        assert_eq!(bucket_of(5.0), 1);
        assert_eq!(bucket_of(99.0), 4);
        assert_eq!(bucket_of(100.0), 5);
        assert_eq!(bucket_of(1e9), BUCKETS - 1);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut h = [0i64; BUCKETS];
        h[bucket_of(60.0)] = 100; // all in [50, 100)
        assert_eq!(quantile_ms(&h, 0.5), Some(75.0));
        assert_eq!(quantile_ms(&h, 1.0), Some(100.0));
        h[bucket_of(2e6)] = 100;
        assert_eq!(quantile_ms(&h, 0.99), Some(1_800_000.0));
        assert_eq!(quantile_ms(&[0; BUCKETS], 0.5), None);
    }

    #[test]
    fn a_failed_write_keeps_its_counts() {
        let mut into = Pending::default();
        let key = Key {
            minute: minute(Utc::now()),
            provider: "p".into(),
            model: "m".into(),
            outcome: "ok",
        };
        let mut t = Tally {
            calls: 2,
            attempts: 3,
            ..Tally::default()
        };
        t.latency[1] = 2;
        into.calls.insert(key.clone(), t.clone());
        let mut from = Pending::default();
        from.calls.insert(key.clone(), t);
        merge_back(&mut into, from);
        let merged = &into.calls[&key];
        assert_eq!(
            (merged.calls, merged.attempts, merged.latency[1]),
            (4, 6, 4)
        );
        assert_eq!(histogram_literal(&merged.latency[..3]), "{0,4,0}");
    }
}
