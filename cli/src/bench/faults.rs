//! `ragq bench --faults`: a load run with faults injected one after another while workers run,
//! then every invariant checked: each job finished (or failed with a reason), each job's webhook
//! delivered (duplicates only under the same webhook-id), each booked call answered by the
//! provider and booked once, each final attempt fully booked, each result equal to the ledger.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{publish, say, setup, BenchArgs};
use ragq::queue::admin;
use ragq_tools::audit::{self, LedgerAudit};
use ragq_tools::config_file::ConfigFile;
use ragq_tools::receiver::WebhookReceiver;
use ragq_tools::sim::{SimHandle, SimOptions};
use ragq_tools::stack::{LocalStack, StackUrls};

/// What the fault run found.
#[derive(Debug, Serialize)]
pub struct FaultReport {
    pub jobs: usize,
    pub faults: Vec<(String, f64)>,
    /// Jobs not yet finished when the last fault (the PostgreSQL restart) began: a run that had
    /// finished its work before the faults proves nothing, and is reported as a failure.
    pub unfinished_at_last_fault: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub unfinished: i64,
    pub webhooks_received: usize,
    pub jobs_with_webhook: usize,
    pub deliveries_not_delivered: i64,
    pub ledger: LedgerAudit,
    pub secs: f64,
    pub ok: bool,
}

fn fault_config(urls: &StackUrls, sim_url: &str, prefetch: u16) -> String {
    ConfigFile::new(
        "ragq bench --faults",
        &urls.database,
        &urls.queue,
        &super::vectors_dir(),
    )
    .set("database.max_connections", 8)
    .set("queue.prefetch", i64::from(prefetch))
    .list("queue.trusted_publishers", ["guest"])
    .list("queue.retry_delays_ms", [200, 1000, 3000])
    .set("worker.max_attempts", 10)
    .set("webhooks.concurrency", 128)
    .set("webhooks.initial_backoff_ms", 200)
    .set("webhooks.max_backoff_ms", 2000)
    .set("webhooks.max_attempts", 40)
    .set("webhooks.poll_interval_ms", 200)
    .set("webhooks.claim_lease_ms", 3000)
    .set("spend.reservation_ttl_ms", 3000)
    .set("spend.maintenance_interval_ms", 500)
    .set("retry.initial_interval_ms", 50)
    .set("retry.max_interval_ms", 500)
    .set("retry.max_elapsed_ms", 3000)
    .sim_models(sim_url, 1000)
    .list("policies.cost-optimized.models", ["sim-small", "sim-large"])
    .render()
}

pub async fn run(args: &BenchArgs, cancel: &CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    let super::Setup {
        sim,
        receiver,
        mut stack,
        bodies,
    } = setup(args, cancel, &fault_config).await?;
    let conn = publish(args, &stack, &bodies, cancel).await?;
    let _ = conn.close(200, "published".into()).await;
    let (faults, unfinished_at_last_fault) =
        inject_faults(args, &mut stack, &sim, &receiver, started).await?;
    say(
        args,
        format_args!("faults done; waiting for every job to finish"),
    );
    let finished = wait_for_outcomes(&stack.pool, args.jobs, cancel).await;
    // Webhooks refused or interrupted are retried by the poller, and intents left by killed
    // workers are booked once they expire; give both time to land.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(&stack.pool).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.stop_all().await;
    finished?;
    let mut report = check(
        &stack.pool,
        args,
        &sim.answered_call_ids(),
        &receiver,
        faults,
        started,
    )
    .await?;
    report.unfinished_at_last_fault = unfinished_at_last_fault;
    report.ok &= unfinished_at_last_fault > 0;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    cancel.cancel();
    anyhow::ensure!(report.ok, "an invariant failed under faults");
    Ok(())
}

/// Starts the workers and injects the faults one after another while they run: workers killed,
/// every broker connection closed, a failing provider, a refusing receiver, Postgres restarted.
/// Returns each fault with its time since `started`, and how many jobs were unfinished before
/// the last one.
async fn inject_faults(
    args: &BenchArgs,
    stack: &mut LocalStack,
    sim: &SimHandle,
    receiver: &WebhookReceiver,
    started: Instant,
) -> anyhow::Result<(Vec<(String, f64)>, i64)> {
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(stack.spawn("worker", &[])?);
    }
    let mut faults = Vec::new();
    let mut fault = |name: &str, at: Instant| {
        say(args, format_args!("fault: {name}"));
        faults.push((name.to_string(), at.duration_since(started).as_secs_f64()));
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    for _ in 0..3 {
        fault("kill -9 a worker, start a new one", Instant::now());
        let victim = workers.remove(0);
        stack.kill(victim).await;
        workers.push(stack.spawn("worker", &[])?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    fault("RabbitMQ closes every connection", Instant::now());
    admin::close_all_connections(&stack.vhost, "ragq bench --faults")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    fault(
        "provider: 30% 500s, 10% 429s, 2% hangs for 3 s",
        Instant::now(),
    );
    let normal = SimOptions {
        latency_ms: args.latency_ms,
        ..SimOptions::default()
    };
    sim.set_options(SimOptions {
        error_rate: 0.3,
        rate_limit_rate: 0.1,
        retry_after_secs: 1,
        timeout_rate: 0.02,
        ..normal.clone()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.set_options(normal);

    fault(
        "webhook receiver answers 503 to the next 500 deliveries",
        Instant::now(),
    );
    receiver.refuse_next(500);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let unfinished_at_last_fault: i64 =
        sqlx::query_scalar("SELECT $1 - count(*) FROM jobs WHERE state IN ('succeeded', 'failed')")
            .bind(i64::try_from(args.jobs)?)
            .fetch_one(&stack.pool)
            .await?;
    fault("PostgreSQL restarts", Instant::now());
    restart_postgres()?;
    Ok((faults, unfinished_at_last_fault))
}

/// Restarts the local cluster the way an operator would (every connection drops).
fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no PostgreSQL cluster under /etc/postgresql"))?;
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()?;
    anyhow::ensure!(status.success(), "pg_ctlcluster restart failed: {status}");
    Ok(())
}

async fn wait_for_outcomes(
    pool: &sqlx::PgPool,
    jobs: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed')")
                .fetch_one(pool)
                .await;
        if done.is_ok_and(|d| d >= i64::try_from(jobs).unwrap_or(i64::MAX)) {
            return Ok(());
        }
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        anyhow::ensure!(
            Instant::now() < deadline,
            "jobs still unfinished after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Webhook deliveries still to make, and call intents still to book.
async fn pending(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending') \
              + (SELECT count(*) FROM call_intents)",
    )
    .fetch_one(pool)
    .await?)
}

async fn check(
    pool: &sqlx::PgPool,
    args: &BenchArgs,
    answered: &[String],
    receiver: &ragq_tools::receiver::WebhookReceiver,
    faults: Vec<(String, f64)>,
    started: Instant,
) -> anyhow::Result<FaultReport> {
    let (succeeded, failed, unfinished): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'failed'), \
         count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed')) FROM jobs",
    )
    .fetch_one(pool)
    .await?;
    let not_delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'")
            .fetch_one(pool)
            .await?;
    let hooks = receiver.received();
    let with_webhook: HashSet<String> = hooks
        .iter()
        .filter_map(|h| serde_json::from_str::<serde_json::Value>(&h.body).ok())
        .filter_map(|v| v["data"]["job_id"].as_str().map(str::to_string))
        .collect();
    let ledger = audit::audit(pool, answered, args.prompts).await?;
    let jobs = i64::try_from(args.jobs)?;
    let ok = succeeded + failed == jobs
        && unfinished == 0
        && with_webhook.len() == args.jobs
        && not_delivered == 0
        && ledger.ok();
    Ok(FaultReport {
        jobs: args.jobs,
        faults,
        unfinished_at_last_fault: 0,
        succeeded,
        failed,
        unfinished,
        webhooks_received: hooks.len(),
        jobs_with_webhook: with_webhook.len(),
        deliveries_not_delivered: not_delivered,
        ledger,
        secs: started.elapsed().as_secs_f64(),
        ok,
    })
}

fn print(r: &FaultReport) {
    println!("\n== ragq bench --faults: {} jobs, {:.1} s", r.jobs, r.secs);
    for (name, at) in &r.faults {
        println!("  at {at:>5.1} s  {name}");
    }
    println!(
        "{} jobs were still unfinished when the last fault began",
        r.unfinished_at_last_fault
    );
    println!(
        "jobs: {} succeeded, {} failed with a reason, {} unfinished",
        r.succeeded, r.failed, r.unfinished
    );
    println!(
        "webhooks: {} received for {} distinct jobs (repeats carry the same webhook-id); {} deliveries not delivered",
        r.webhooks_received, r.jobs_with_webhook, r.deliveries_not_delivered
    );
    let l = &r.ledger;
    println!(
        "ledger: {} calls booked, {} answered; {} booked but never answered, {} answered twice, {} final-attempt calls unbooked, {} lost, {} results off the ledger, {} intents pending",
        l.booked_calls, l.answered_calls, l.booked_not_answered.len(), l.answered_twice.len(), l.final_attempt_unbooked.len(), l.lost.len(), l.results_off_ledger, l.pending_intents
    );
    println!(
        "estimated: {} calls of killed workers booked at their worst case ({} of them answered by the provider, so their spend would otherwise be lost)",
        l.estimated_calls, l.estimated_answered
    );
    println!("invariants: {}", if r.ok { "all hold" } else { "BROKEN" });
}
