//! `ragq bench --ledger-rows N`: the spend ledger under a large history.
//!
//! It fills the ledger with N rows spread over the last 60 days and 100 tenants (in SQL, quickly),
//! gives every tenant a monthly budget, then measures: (1) ledger rows per second sustained by
//! concurrent writers booking batches as workers do (write-ahead intents in one commit, then the
//! answered calls in their place, advancing daily aggregates and budget usage, in another), and (2) the time a budget check adds to a job: admitting and
//! settling one job of a tenant with budgets, against the same for a tenant without, each in its own
//! transaction as the claim and the outcome commit do.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use ragq::providers::Usage;
use ragq::spend::budget::{self, Estimate, ReleaseKey, ReserveRequest};
use ragq::spend::intents::CallIntent;
use ragq::spend::{LedgerEntry, Price};

const TENANTS: usize = 100;
const WRITERS: usize = 2;
const BATCH: usize = 256;
const WRITE_FOR: Duration = Duration::from_secs(10);
const CHECKS: usize = 2_000;

#[derive(Debug, Serialize)]
pub struct LedgerReport {
    pub preloaded_rows: i64,
    pub preload_secs: f64,
    pub writers: usize,
    pub batch_rows: usize,
    pub ledger_rows_per_sec: f64,
    pub budget_check_us_p50: f64,
    pub budget_check_us_p99: f64,
    pub no_budget_us_p50: f64,
    pub no_budget_us_p99: f64,
}

pub async fn run(pool: &PgPool, rows: i64) -> anyhow::Result<LedgerReport> {
    for t in 0..TENANTS {
        let id = format!("tenant-{t:04}");
        ragq::tenants::create(
            pool,
            &ragq::audit::Actor::cli(),
            &ragq::keyring::Keyring::plaintext(),
            &id,
            &id,
            None,
        )
        .await?;
    }
    ragq::tenants::create(
        pool,
        &ragq::audit::Actor::cli(),
        &ragq::keyring::Keyring::plaintext(),
        "unbudgeted",
        "unbudgeted",
        None,
    )
    .await?;
    let started = Instant::now();
    preload(pool, rows).await?;
    let preload_secs = started.elapsed().as_secs_f64();
    for t in 0..TENANTS {
        let spec = budget::BudgetSpec {
            tenant: format!("tenant-{t:04}"),
            feature: String::new(),
            period: "month".into(),
            soft_limit_micros: Some(1 << 50),
            hard_limit_micros: Some(1 << 52),
            job_quota: None,
            token_quota: None,
            alert_thresholds: vec![50, 80, 100],
            on_limit: budget::OnLimit::Fail,
        };
        budget::set(pool, &ragq::audit::Actor::cli(), &spec).await?;
    }
    let ledger_rows_per_sec = write_rate(pool).await?;
    let with = check_latency(pool, "tenant-0007").await?;
    let without = check_latency(pool, "unbudgeted").await?;
    Ok(LedgerReport {
        preloaded_rows: rows,
        preload_secs,
        writers: WRITERS,
        batch_rows: BATCH,
        ledger_rows_per_sec,
        budget_check_us_p50: with.0,
        budget_check_us_p99: with.1,
        no_budget_us_p50: without.0,
        no_budget_us_p99: without.1,
    })
}

/// Bulk history straight into the partitions, with matching daily aggregates.
pub(super) async fn preload(pool: &PgPool, rows: i64) -> anyhow::Result<()> {
    ragq::spend::maintenance::maintain_ledger(pool, 0).await?;
    // History older than this month lands in the default partition, as a long-lived ledger's would
    // before retention drops it. Rows go in in time order, as calls are booked.
    let chunk = 1_000_000i64;
    let mut done = 0i64;
    while done < rows {
        let n = chunk.min(rows - done);
        sqlx::query(
            "INSERT INTO provider_calls (tenant_id, job_id, attempt, call_index, provider, model, feature, \
               input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok, \
               cost_micros, latency_ms, tags, occurred_at) \
             SELECT 'tenant-' || lpad((g % 100)::text, 4, '0'), 'hist-' || g, 1, 0, 'sim', \
               CASE WHEN g % 3 = 0 THEN 'sim-large' ELSE 'sim-small' END, \
               CASE WHEN g % 2 = 0 THEN 'faq' ELSE 'search' END, 200, 50, 150000, 600000, 60, 5, '{}', \
               now() - make_interval(secs => 86400 * 28 * ($3 - g)::float8 / $3) \
             FROM generate_series($1::int8, $2::int8) AS g",
        )
        .bind(done)
        .bind(done + n - 1)
        .bind(rows)
        .execute(pool)
        .await?;
        done += n;
    }
    sqlx::query(
        "INSERT INTO spend_daily SELECT (occurred_at AT TIME ZONE 'UTC')::date, tenant_id, feature, model, \
           provider, count(*), sum(input_tokens), sum(output_tokens), sum(cost_micros) \
         FROM provider_calls GROUP BY 1, 2, 3, 4, 5 ON CONFLICT DO NOTHING",
    )
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE provider_calls").execute(pool).await?;
    Ok(())
}

fn entry(writer: usize, seq: usize) -> LedgerEntry {
    let usage = Usage {
        input_tokens: 200,
        output_tokens: 50,
    };
    let price = Price {
        input_micros_per_mtok: 150_000,
        output_micros_per_mtok: 600_000,
    };
    LedgerEntry {
        call: CallIntent {
            tenant_id: format!("tenant-{:04}", seq % TENANTS),
            job_id: format!("live-{writer}-{seq}"),
            attempt: 1,
            call_index: 0,
            provider: "sim".into(),
            model: "sim-small".into(),
            occurred_at: chrono::Utc::now(),
            usage,
            price,
        },
        feature: if seq.is_multiple_of(2) {
            "faq"
        } else {
            "search"
        }
        .into(),
        cost_micros: price.cost_micros(usage),
        latency_ms: 5,
        tags: serde_json::json!({}),
        cache: None,
        prompt: Default::default(),
    }
}

/// Rows per second booked by `WRITERS` concurrent writers for `WRITE_FOR`.
async fn write_rate(pool: &PgPool) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0usize;
            while started.elapsed() < WRITE_FOR {
                let batch: Vec<LedgerEntry> = (0..BATCH).map(|i| entry(w, written + i)).collect();
                let refs: Vec<&LedgerEntry> = batch.iter().collect();
                // As a worker books: the intents commit before the calls, the answers after.
                let mut tx = pool.begin().await?;
                let intents: Vec<CallIntent> = batch.iter().map(CallIntent::from).collect();
                ragq::spend::intents::record(&mut tx, &intents).await?;
                tx.commit().await?;
                let mut tx = pool.begin().await?;
                let mut tenants: Vec<&str> =
                    refs.iter().map(|r| r.call.tenant_id.as_str()).collect();
                tenants.sort_unstable();
                tenants.dedup();
                ragq::spend::budget::lock_in_order(&mut tx, &tenants).await?;
                ragq::spend::ledger::settle(&mut tx, &refs).await?;
                tx.commit().await?;
                written += BATCH;
            }
            Ok::<usize, sqlx::Error>(written)
        }));
    }
    let mut total = 0usize;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// p50 and p99 in microseconds of admitting then settling one job of `tenant`.
async fn check_latency(pool: &PgPool, tenant: &str) -> anyhow::Result<(f64, f64)> {
    let estimate = Estimate {
        max_micros: 1_000,
        min_micros: 100,
        tokens: 2_000,
        calls: 1,
    };
    let mut micros = Vec::with_capacity(CHECKS);
    for i in 0..CHECKS {
        let job_id = format!("check-{i}");
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        let ask = ReserveRequest {
            tenant,
            job_id: &job_id,
            attempt: 1,
            feature: "faq",
            estimate,
        };
        budget::reserve(&mut tx, &[ask], Duration::from_secs(60)).await?;
        tx.commit().await?;
        let mut tx = pool.begin().await?;
        let key = ReleaseKey {
            tenant,
            job_id: &job_id,
            attempt: Some(1),
            terminal: true,
        };
        budget::release(&mut tx, &[key]).await?;
        tx.commit().await?;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99)))
}
