//! `ragq bench --dashboard`: how long `/dashboard` takes to answer over a large history.
//!
//! It fills a fresh database, in SQL, with 30 days of 100 tenants' history: `--dashboard-jobs`
//! finished jobs (each with its webhook delivery and its job stats, folded into hours past two
//! days as maintenance leaves them), `--dashboard-ledger` ledger rows with their daily aggregates,
//! provider stats for three models, dead letters and a budget per tenant. Then it serves the api
//! in this process and times the page for the operator (every tenant) and for one tenant, over
//! each window, from the request to the last byte.

use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;

use ragq::secret::Secret;
use ragq_tools::config_file::ConfigFile;
use ragq_tools::stack::{free_port, LocalStack, ServerArgs};
use tokio_util::sync::CancellationToken;

const TENANTS: i64 = 100;
const RUNS: usize = 5;
const OPERATOR_KEY: &str = "bench-operator-key-0123456789";

#[derive(Debug, Serialize)]
pub struct DashboardReport {
    pub jobs: i64,
    pub ledger_rows: i64,
    pub preload_secs: f64,
    pub page_bytes: usize,
    pub timings: Vec<PageTiming>,
}

#[derive(Debug, Serialize)]
pub struct PageTiming {
    pub viewer: &'static str,
    pub window: &'static str,
    pub ms_median: f64,
    pub ms_max: f64,
}

pub async fn run(
    servers: &ServerArgs,
    jobs: i64,
    ledger_rows: i64,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        jobs >= 0 && ledger_rows >= 0,
        "--dashboard-jobs and --dashboard-ledger must not be negative"
    );
    let stack = LocalStack::prepare(servers, "bench_dashboard", |urls| {
        let file = ConfigFile::new(
            "ragq bench --dashboard",
            &urls.database,
            &urls.queue,
            &urls.vectors,
        )
        .set("database.max_connections", 16);
        Ok(file.render())
    })
    .await?;
    let pool = &stack.pool;
    if !json {
        println!("filling 30 days of history: {jobs} jobs, {ledger_rows} ledger rows");
    }
    let started = Instant::now();
    let tenant_key = tenants(pool).await?;
    super::ledger::preload(pool, ledger_rows).await?;
    preload_jobs(pool, jobs).await?;
    preload_stats(pool).await?;
    let preload_secs = started.elapsed().as_secs_f64();

    let mut cfg = stack.cfg.clone();
    cfg.api.operator_key = Some(Secret::new(OPERATOR_KEY));
    cfg.api.listen = format!("127.0.0.1:{}", free_port().await?);
    let base = format!("http://{}", cfg.api.listen);
    let stop = CancellationToken::new();
    let server = {
        let (cfg, pool, stop) = (cfg.clone(), pool.clone(), stop.clone());
        tokio::spawn(async move { ragq::api::serve(&cfg.api, &cfg.queue, pool, stop).await })
    };
    let http = reqwest::Client::new();
    wait_until_up(&http, &base).await?;
    let mut timings = Vec::new();
    let mut page_bytes = 0;
    for (viewer, key) in [("operator", OPERATOR_KEY), ("tenant", tenant_key.as_str())] {
        for window in ["hour", "day", "30d"] {
            let mut ms = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                let t = Instant::now();
                let response = http
                    .get(format!("{base}/dashboard?window={window}"))
                    .bearer_auth(key)
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success(), "{}", response.status());
                page_bytes = page_bytes.max(response.bytes().await?.len());
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            ms.sort_by(f64::total_cmp);
            timings.push(PageTiming {
                viewer,
                window,
                ms_median: ms[RUNS / 2],
                ms_max: ms[RUNS - 1],
            });
        }
    }
    stop.cancel();
    server.await??;
    let report = DashboardReport {
        jobs,
        ledger_rows,
        preload_secs,
        page_bytes,
        timings,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("\n== ragq bench --dashboard ({jobs} jobs, {ledger_rows} ledger rows, 30 days, {TENANTS} tenants)");
        println!(
            "preload {:.0} s; largest page {} KB",
            preload_secs,
            page_bytes / 1024
        );
        println!(
            "{:<10} {:<7} {:>12} {:>10}",
            "viewer", "window", "median ms", "max ms"
        );
        for t in &report.timings {
            println!(
                "{:<10} {:<7} {:>12.0} {:>10.0}",
                t.viewer, t.window, t.ms_median, t.ms_max
            );
        }
    }
    Ok(())
}

async fn wait_until_up(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("the api did not come up at {base}")
}

/// The ledger's 100 tenants (as `ledger::preload` names them), each with a monthly budget;
/// returns tenant-0007's API key.
async fn tenants(pool: &PgPool) -> anyhow::Result<String> {
    let mut key = String::new();
    for t in 0..TENANTS {
        let id = format!("tenant-{t:04}");
        let created = ragq::tenants::create(
            pool,
            &ragq::audit::Actor::cli(),
            &ragq::keyring::Keyring::plaintext(),
            &id,
            &id,
            None,
        )
        .await?;
        if t == 7 {
            key = created.api_key.expose().to_string();
        }
    }
    sqlx::query(
        "INSERT INTO budgets (tenant_id, period, soft_limit_micros, hard_limit_micros) \
         SELECT id, 'month', 50000000, 100000000 FROM tenants",
    )
    .execute(pool)
    .await?;
    Ok(key)
}

/// Finished jobs over 30 days (in time order, as they are written) with their webhook deliveries, and the job stats their commits
/// would have written, folded as maintenance leaves them.
async fn preload_jobs(pool: &PgPool, jobs: i64) -> anyhow::Result<()> {
    let chunk = 250_000i64;
    let mut done = 0i64;
    while done < jobs {
        let n = chunk.min(jobs - done);
        sqlx::query(
            "WITH g AS (SELECT g, 'tenant-' || lpad((g % 100)::text, 4, '0') AS tenant, \
                   now() - make_interval(secs => 86400 * 30 * ($3 - g)::float8 / $3) AS at \
                 FROM generate_series($1::int8, $2::int8) AS g), \
             j AS (INSERT INTO jobs (tenant_id, id, kind, state, policy, input, tags, attempts, \
                     result, error_code, created_at, started_at, finished_at) \
                   SELECT tenant, 'job-' || g, \
                     (ARRAY['batch.complete', 'rag.answer', 'ingest'])[g % 3 + 1], \
                     CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'cost-optimized', \
                     '{\"prompts\": [{\"prompt\": \"x\"}]}', '{\"feature\": \"faq\"}', 1, \
                     CASE WHEN g % 50 = 0 THEN NULL ELSE '{\"answers\": []}'::jsonb END, \
                     CASE WHEN g % 50 = 0 THEN 'provider_unavailable' END, \
                     at - interval '2 seconds', at - interval '1 second', at FROM g) \
             INSERT INTO webhook_deliveries (id, tenant_id, job_id, event_type, url, payload, \
                 state, attempts, created_at, delivered_at) \
             SELECT 'msg_' || g, tenant, 'job-' || g, 'job.succeeded', 'https://hooks.invalid/', '{}', \
               CASE WHEN g % 200 = 0 THEN 'failed' ELSE 'delivered' END, 1, at, \
               CASE WHEN g % 200 = 0 THEN NULL ELSE at END FROM g",
        )
        .bind(done)
        .bind(done + n - 1)
        .bind(jobs)
        .execute(pool)
        .await?;
        done += n;
    }
    sqlx::query(
        "INSERT INTO job_stats (bucket, minutes, tenant_id, kind, outcome, jobs, total_ms, work_ms) \
         SELECT date_trunc('minute', finished_at), 1, tenant_id, kind, state, count(*), \
           ragq_hist_sum(ragq_hist_one(extract(epoch FROM finished_at - created_at) * 1000)), \
           ragq_hist_sum(ragq_hist_one(extract(epoch FROM finished_at - started_at) * 1000)) \
         FROM jobs GROUP BY 1, 3, 4, 5",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO job_stats (bucket, minutes, tenant_id, kind, outcome, jobs, total_ms, work_ms) \
         SELECT bucket, 1, '*', kind, outcome, sum(jobs), ragq_hist_sum(total_ms), \
           ragq_hist_sum(work_ms) \
         FROM job_stats GROUP BY bucket, kind, outcome",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO dead_letters (at, tenant_id, kind, reason_code) \
         SELECT now() - make_interval(secs => (g * 2591)::float8), \
           'tenant-' || lpad((g % 100)::text, 4, '0'), 'batch.complete', \
           (ARRAY['not_json', 'schema', 'unauthorized'])[g % 3 + 1] \
         FROM generate_series(1, 1000) AS g",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Every minute of 30 days for three models and three outcomes, then folded and analyzed.
async fn preload_stats(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO provider_stats (bucket, minutes, provider, model, outcome, calls, attempts, latency_ms) \
         SELECT date_trunc('minute', now()) - make_interval(mins => m), 1, 'sim', model, outcome, \
           n, n, ragq_hist_one(40) \
         FROM generate_series(0, 30 * 1440) AS m, \
           (VALUES ('sim-small'), ('sim-large'), ('sim-embed')) AS models(model), \
           (VALUES ('ok', 300), ('provider_unavailable', 6), ('rate_limited', 3)) AS o(outcome, n)",
    )
    .execute(pool)
    .await?;
    sqlx::query("SELECT ragq_stats_maintenance()")
        .execute(pool)
        .await?;
    // What autovacuum does to a table that has grown: statistics, and the BRIN indexes' ranges
    // summarized (an unsummarized range is read by every time-range query).
    sqlx::query(
        "VACUUM (ANALYZE) provider_calls, jobs, job_stats, provider_stats, webhook_deliveries, \
         dead_letters, spend_daily",
    )
    .execute(pool)
    .await?;
    Ok(())
}
