//! `ragq bench`: an end-to-end load run on this machine, and the broker's own rate as a baseline.
//!
//! It prepares a fresh database and vhost, starts the sim provider at the chosen latency and a
//! webhook receiver in this process, publishes every job first (so the measured window holds only
//! the workers' drain), starts N worker processes, waits for every webhook, and reports throughput,
//! time inside the worker per job, worker CPU and peak RSS per process, and a correctness check read
//! back from Postgres. The baseline pushes the same message bodies through a quorum queue with
//! confirms and manual acks, with nothing else attached, so ragq's rate reads as a share of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod cache;
mod dashboard;
mod fairness;
mod faults;
mod floor;
mod latency;
mod ledger;
mod mix;
mod retrieval;
mod router;
mod routing_day;
mod stats;

use ragq::queue::publisher::{OutgoingJob, Publisher};
use ragq_tools::config_file::ConfigFile;
use ragq_tools::receiver::WebhookReceiver;
use ragq_tools::sim::SimOptions;
use ragq_tools::stack::{process_usage, LocalStack, ServerArgs, StackUrls};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Jobs to run.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Prompts per `batch.complete` job (one provider call each).
    #[arg(long, default_value_t = 1)]
    pub prompts: usize,
    /// The job mix as kind=weight pairs: `batch` (batch.complete), `rag` (rag.answer over a corpus
    /// stored before the run) and `ingest`. Retrieval jobs use the embedded store: the first worker
    /// to open it holds it and the others reach it through that worker's socket.
    #[arg(long, default_value = "batch=1")]
    pub mix: String,
    /// Tenants the jobs are spread over.
    #[arg(long, default_value_t = 100)]
    pub tenants: usize,
    /// Sim provider latency per call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Unacknowledged deliveries per worker.
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// Skip the raw broker baseline (under `--rate`: the broker and commit latency floor).
    #[arg(long)]
    pub no_baseline: bool,
    /// Workers record metrics and serve `/metrics` (on an ephemeral port), as in production; for
    /// measuring what recording costs against a run without.
    #[arg(long)]
    pub metrics: bool,
    /// Workers export traces over OTLP to a receiver the bench runs on loopback; for measuring
    /// what tracing costs against a run without.
    #[arg(long)]
    pub traces: bool,
    /// Every job goes through a PII redaction policy of this mode (mask, block or detect, every
    /// built-in detector); for measuring what redaction costs against a run without.
    #[arg(long, value_parser = ["mask", "block", "detect"])]
    pub redaction: Option<String>,
    /// Inject faults during the run (workers killed, RabbitMQ connections dropped, PostgreSQL
    /// restarted, provider errors and hangs, webhook receiver down) and check every invariant after.
    #[arg(long)]
    pub faults: bool,
    /// Time the routing decision alone (50-model catalog, cost-ranked policy) as quantiles.
    #[arg(long)]
    pub router: bool,
    /// Route a simulated day of mixed traffic through two providers (the cheap one failing 20% of
    /// calls) and compare cost-optimized routing with always using the most expensive model.
    #[arg(long)]
    pub routing_day: bool,
    /// What one tenant's backlog does to the others: a bulk tenant with `--bulk-jobs` queued
    /// jobs while ten small tenants submit `--small-jobs` at `--small-rate` per second, against
    /// each alone.
    #[arg(long)]
    pub fairness: bool,
    #[arg(long, default_value_t = 100_000)]
    pub bulk_jobs: usize,
    #[arg(long, default_value_t = 400)]
    pub small_jobs: usize,
    #[arg(long, default_value_t = 20.0)]
    pub small_rate: f64,
    /// Batch jobs name a saved prompt (the operator's shared one, resolved, checked and rendered
    /// at intake) instead of carrying its text: what templates cost against plain prompts.
    #[arg(long)]
    pub templated: bool,
    /// The response cache off, exact and semantic, back to back, on a workload where 30% of
    /// prompts repeat and 20% are paraphrases: cost per 1,000 jobs, provider calls, latency, CPU.
    #[arg(long)]
    pub cache: bool,
    /// Instead of the job path, benchmark the spend ledger with this many rows of history.
    #[arg(long)]
    pub ledger_rows: Option<i64>,
    /// Instead of draining a full queue, publish at this many jobs per second with workers running
    /// and report end-to-end latency (publish to webhook) and the platform's overhead.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Instead of the job path, benchmark retrieval on the embedded store with this many chunks:
    /// ingest rate, search latency with and without the tenant filter, recall@10, and the steps
    /// of `rag.answer`.
    #[arg(long)]
    pub rag_chunks: Option<usize>,
    /// HNSW beam width for `--rag-chunks` searches.
    #[arg(long, default_value_t = 128)]
    pub hnsw_ef: usize,
    /// Instead of the job path, time the `/dashboard` page over 30 days of history (see
    /// `--dashboard-jobs` and `--dashboard-ledger`).
    #[arg(long)]
    pub dashboard: bool,
    /// Finished jobs in the `--dashboard` history.
    #[arg(long, default_value_t = 1_000_000)]
    pub dashboard_jobs: i64,
    /// Ledger rows in the `--dashboard` history.
    #[arg(long, default_value_t = 10_000_000)]
    pub dashboard_ledger: i64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub servers: ServerArgs,
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub jobs: usize,
    pub workers: usize,
    pub prompts_per_job: usize,
    pub mix: String,
    pub provider_latency_ms: u64,
    pub message_bytes: usize,
    /// Jobs per second from the first claim to the last outcome commit.
    pub jobs_per_sec: f64,
    pub drain_secs: f64,
    /// Claim to outcome commit inside a worker, which with a zero-latency provider is the
    /// platform's own time per job (queueing inside the worker included).
    pub in_worker_ms_p50: f64,
    pub in_worker_ms_p95: f64,
    pub in_worker_ms_p99: f64,
    /// The same, per job kind.
    pub by_kind: Vec<KindLatency>,
    pub worker_cpu_secs: Vec<f64>,
    pub worker_cpu_us_per_job: f64,
    pub worker_peak_rss_mb: Vec<f64>,
    pub baseline: Option<BaselineReport>,
    pub correctness: Correctness,
}

/// In-worker time of one job kind.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct KindLatency {
    pub kind: String,
    pub jobs: i64,
    pub in_worker_ms_p50: f64,
    pub in_worker_ms_p99: f64,
}

/// The broker alone: same bodies, quorum queue, persistent, confirms, manual acks.
#[derive(Debug, Serialize)]
pub struct BaselineReport {
    pub publish_per_sec: f64,
    pub consume_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Correctness {
    pub succeeded: i64,
    pub not_succeeded: i64,
    pub ledger_rows: i64,
    pub provider_answers: u64,
    pub webhooks_received: usize,
    pub webhook_ids_distinct: usize,
    pub webhooks_unverified: usize,
    pub results_disagreeing_with_ledger: i64,
    pub ok: bool,
}

pub async fn run(args: BenchArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    // Declared first, dropped last: after the run's processes have stopped.
    let _store = RemovedOnDrop(vectors_dir());
    if let Some(rows) = args.ledger_rows {
        return run_ledger(&args, rows).await;
    }
    if args.faults {
        return faults::run(&args, &cancel).await;
    }
    if args.dashboard {
        let (jobs, rows) = (args.dashboard_jobs, args.dashboard_ledger);
        return dashboard::run(&args.servers, jobs, rows, args.json).await;
    }
    if let Some(chunks) = args.rag_chunks {
        return retrieval::run(chunks, args.hnsw_ef, args.json, &cancel).await;
    }
    if args.router {
        return router::run(args.json);
    }
    if args.routing_day {
        return routing_day::run(&args, &cancel).await;
    }
    if args.fairness {
        return fairness::run(&args, &cancel).await;
    }
    if args.cache {
        return cache::run(&args, &cancel).await;
    }
    if let Some(rate) = args.rate {
        return latency::run(&args, rate, &cancel).await;
    }
    run_load(&args, &cancel).await
}

/// The load run: every job published first, then N workers drain the queue; jobs per second,
/// latency in the worker, CPU and memory per worker, and the correctness check.
async fn run_load(args: &BenchArgs, cancel: &CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.jobs > 0 && args.workers > 0 && args.tenants > 0 && args.prompts > 0,
        "--jobs, --workers, --tenants and --prompts must be positive"
    );
    let mut setup = setup(args, cancel, &bench_config).await?;
    let report = drain(args, &mut setup, cancel).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    cancel.cancel();
    anyhow::ensure!(
        report.correctness.ok,
        "correctness check failed: {:?}",
        report.correctness
    );
    Ok(())
}

/// Publishes the setup's jobs, lets the workers drain them and reports (the broker baseline
/// too, unless `--no-baseline`).
async fn drain(
    args: &BenchArgs,
    setup: &mut Setup,
    cancel: &CancellationToken,
) -> anyhow::Result<BenchReport> {
    let Setup {
        sim,
        receiver,
        stack,
        bodies,
    } = setup;
    let message_bytes = bodies.first().map_or(0, |b| b.body.len());
    let conn = publish(args, stack, bodies, cancel).await?;

    say(args, format_args!("starting {} workers", args.workers));
    let mut pids = Vec::new();
    for _ in 0..args.workers {
        pids.push(stack.spawn("worker", &[])?);
    }
    let waited = wait_for_webhooks(receiver, args.jobs, cancel).await;
    let usage: Vec<(f64, u64)> = pids
        .iter()
        .map(|p| process_usage(*p).unwrap_or((0.0, 0)))
        .collect();
    stack.stop_all().await;
    waited?;
    // The receiver answers before the sender records the attempt: wait for the records.
    let deadline = Instant::now() + Duration::from_secs(10);
    let unrecorded = "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'";
    while sqlx::query_scalar::<_, i64>(unrecorded)
        .fetch_one(&stack.pool)
        .await?
        > 0
    {
        anyhow::ensure!(Instant::now() < deadline, "webhook records did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let baseline = if args.no_baseline {
        None
    } else {
        say(
            args,
            format_args!(
                "measuring the broker alone with the same {} messages",
                bodies.len()
            ),
        );
        Some(broker_baseline(&conn, bodies, args.prefetch).await?)
    };
    let _ = conn.close(200, "bench done".into()).await;
    let answers = sim.counts().1;
    report(
        stack,
        args,
        receiver,
        answers,
        usage,
        message_bytes,
        baseline,
    )
    .await
}

async fn run_ledger(args: &BenchArgs, rows: i64) -> anyhow::Result<()> {
    anyhow::ensure!(rows >= 0, "--ledger-rows must not be negative");
    say(
        args,
        format_args!("filling the ledger with {rows} rows of history"),
    );
    let stack = LocalStack::prepare(&args.servers, "bench_ledger", |urls| {
        let file = ConfigFile::new(
            "ragq bench --ledger-rows",
            &urls.database,
            &urls.queue,
            &urls.vectors,
        )
        .set("database.max_connections", 8);
        Ok(file.render())
    })
    .await?;
    let r = ledger::run(&stack.pool, rows).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("\n== ragq bench --ledger-rows {rows}");
        println!("{:<44} {:>10.1}", "preload time (s)", r.preload_secs);
        println!(
            "{:<44} {:>10.0}",
            format!(
                "ledger rows/s ({} writers, {}-row batches)",
                r.writers, r.batch_rows
            ),
            r.ledger_rows_per_sec
        );
        println!(
            "{:<44} {:>10.0} / {:.0}",
            "admit + settle, tenant with budgets (us p50/p99)",
            r.budget_check_us_p50,
            r.budget_check_us_p99
        );
        println!(
            "{:<44} {:>10.0} / {:.0}",
            "admit + settle, tenant without (us p50/p99)", r.no_budget_us_p50, r.no_budget_us_p99
        );
    }
    Ok(())
}

/// What every load run starts from.
struct Setup {
    sim: ragq_tools::sim::SimHandle,
    receiver: WebhookReceiver,
    stack: LocalStack,
    bodies: Vec<JobBody>,
}

/// One job of a load run, as published.
pub struct JobBody {
    pub id: String,
    pub kind: &'static str,
    pub body: Vec<u8>,
}

/// Starts the sim provider and the receiver, prepares the stack with `config`, creates tenants
/// and job bodies.
async fn setup(
    args: &BenchArgs,
    cancel: &CancellationToken,
    config: &dyn Fn(&StackUrls, &str, u16) -> String,
) -> anyhow::Result<Setup> {
    let sim_options = SimOptions {
        latency_ms: args.latency_ms,
        ..SimOptions::default()
    };
    let sim = ragq_tools::sim::spawn("127.0.0.1:0", sim_options, cancel.clone()).await?;
    let receiver = WebhookReceiver::spawn(cancel.clone()).await?;
    let otlp = match args.traces {
        true => Some(ragq_tools::otlp::OtlpReceiver::spawn(cancel.clone()).await?),
        false => None,
    };
    let stack = LocalStack::prepare(&args.servers, "bench", |urls| {
        let mut text = config(urls, &sim.base_url(), args.prefetch);
        let metrics = args.metrics.then_some("metrics_listen = \"127.0.0.1:0\"\n");
        let traces = otlp
            .as_ref()
            .map(|o| format!("otlp_endpoint = \"{}\"\n", o.url()));
        if metrics.is_some() || traces.is_some() {
            text.push_str("\n[telemetry]\n");
            text.push_str(metrics.unwrap_or_default());
            text.push_str(&traces.unwrap_or_default());
        }
        if let Some(mode) = &args.redaction {
            let policy = format!("\n[redaction]\ndefault = \"bench\"\n[redaction.policies.bench]\nmode = \"{mode}\"\n");
            text.push_str(&policy);
        }
        Ok(text)
    })
    .await?;
    let mix = mix::Mix::parse(&args.mix).map_err(anyhow::Error::msg)?;
    let tenants = create_tenants(&stack, &receiver, args.tenants).await?;
    if args.templated {
        use ragq::prompts::store::{self, SHARED};
        let cli = ragq::audit::Actor::cli();
        store::create(
            &stack.pool,
            &cli,
            SHARED,
            mix::TEMPLATE,
            &mix::template_spec(),
        )
        .await?;
        store::set_label(&stack.pool, &cli, SHARED, mix::TEMPLATE, "production", 1).await?;
    }
    if mix.uses_retrieval() {
        let r = &stack.cfg.retrieval;
        let chunks = mix::store_corpus(r, &tenants).await?;
        say(
            args,
            format_args!("stored a corpus of {chunks} chunks for rag.answer"),
        );
        if args.workers > 1 && matches!(r.store, ragq::retrieval::StoreConfig::Embedded { .. }) {
            say(args, format_args!("the first worker to open the embedded store holds it; the others reach it through its socket"));
        }
    }
    let bodies = job_bodies(&tenants, &receiver, args, mix);
    Ok(Setup {
        sim,
        receiver,
        stack,
        bodies,
    })
}

/// Publishes every job (persistent, confirmed) before any worker starts; returns the connection.
async fn publish(
    args: &BenchArgs,
    stack: &LocalStack,
    bodies: &[JobBody],
    cancel: &CancellationToken,
) -> anyhow::Result<lapin::Connection> {
    let message_bytes = bodies.first().map_or(0, |b| b.body.len());
    say(
        args,
        format_args!(
            "publishing {} jobs ({message_bytes} bytes each) for {} tenants",
            args.jobs, args.tenants
        ),
    );
    let conn = ragq::queue::connect(&stack.cfg.queue.url, "ragq-bench", cancel).await?;
    let setup = conn.create_channel().await?;
    ragq::queue::topology::declare(&setup, &stack.cfg.queue).await?;
    let publisher = Publisher::open(&conn, "guest").await?;
    let outgoing: Vec<OutgoingJob<'_>> = bodies.iter().map(JobBody::outgoing).collect();
    if let (_, Some(e)) = publisher.publish_jobs(&outgoing, 512, || {}).await {
        return Err(e).context("publishing the bench jobs");
    }
    Ok(conn)
}

fn say(args: &BenchArgs, what: std::fmt::Arguments<'_>) {
    if !args.json {
        println!("bench: {what}");
    }
}

impl JobBody {
    fn outgoing(&self) -> OutgoingJob<'_> {
        OutgoingJob {
            kind: self.kind,
            id: &self.id,
            body: &self.body,
            traceparent: None,
        }
    }
}

/// A directory removed when the run ends, however it ends.
struct RemovedOnDrop(String);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The embedded vector store of a load run, apart from anything else on the machine.
fn vectors_dir() -> String {
    std::env::temp_dir()
        .join(format!("ragq-bench-vectors-{}", std::process::id()))
        .display()
        .to_string()
}

fn bench_config(urls: &StackUrls, sim_url: &str, prefetch: u16) -> String {
    bench_file(urls, sim_url, prefetch).render()
}

/// The load run's configuration, before rendering.
fn bench_file(urls: &StackUrls, sim_url: &str, prefetch: u16) -> ConfigFile {
    ConfigFile::new("ragq bench", &urls.database, &urls.queue, &vectors_dir())
        .set("database.max_connections", 8)
        .set("queue.prefetch", i64::from(prefetch))
        .list("queue.trusted_publishers", ["guest"])
        .set("worker.commit_batch_max", 512)
        .set("webhooks.concurrency", 128)
        .sim_catalog(sim_url)
}

/// Creates the tenants, trusted by the receiver.
async fn create_tenants(
    stack: &LocalStack,
    receiver: &WebhookReceiver,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut tenants = Vec::with_capacity(n);
    for t in 0..n {
        let id = format!("tenant-{t:04}");
        let created = ragq::tenants::create(
            &stack.pool,
            &ragq::audit::Actor::cli(),
            &stack.cfg.secrets,
            &id,
            &id,
            None,
        )
        .await?;
        receiver.trust(&id, created.webhook_secret.expose());
        tenants.push(id);
    }
    Ok(tenants)
}

/// The job bodies of the mix, round-robin over tenants.
fn job_bodies(
    tenants: &[String],
    receiver: &WebhookReceiver,
    args: &BenchArgs,
    mix: mix::Mix,
) -> Vec<JobBody> {
    let hook = receiver.url();
    (0..args.jobs)
        .map(|i| {
            let tenant = &tenants[i % tenants.len()];
            let kind = mix.kind_of(i);
            let id = format!("bench-{i}");
            let body = json!({
                "id": id, "tenant": tenant, "kind": kind, "webhook_url": hook,
                "input": mix::input(kind, i, args.prompts, args.templated),
                "tags": {"feature": "bench", "plan": "pro"}
            });
            JobBody {
                id,
                kind,
                body: body.to_string().into_bytes(),
            }
        })
        .collect()
}

async fn wait_for_webhooks(
    receiver: &WebhookReceiver,
    expected: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut last = (0, Instant::now());
    loop {
        let n = receiver.count();
        if n >= expected {
            return Ok(());
        }
        anyhow::ensure!(
            !cancel.is_cancelled(),
            "interrupted with {n} of {expected} webhooks"
        );
        if n > last.0 {
            last = (n, Instant::now());
        }
        anyhow::ensure!(
            last.1.elapsed() < Duration::from_secs(60),
            "no progress for 60 s: {n} of {expected} webhooks"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Declares a durable quorum queue (as the job queues are) on a new channel, with nothing else bound.
async fn quorum_queue(conn: &lapin::Connection, name: &str) -> anyhow::Result<lapin::Channel> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let channel = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(name.into(), durable, args).await?;
    Ok(channel)
}

/// Publishes the bodies to a fresh quorum queue with confirms, then consumes them with manual acks.
async fn broker_baseline(
    conn: &lapin::Connection,
    bodies: &[JobBody],
    prefetch: u16,
) -> anyhow::Result<BaselineReport> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    const QUEUE: &str = "ragq.bench.baseline";
    let channel = quorum_queue(conn, QUEUE).await?;
    let publisher = Publisher::open(conn, "guest").await?;
    let started = Instant::now();
    let env = ragq::queue::publisher::Envelope::default();
    let published = futures_util::stream::iter(bodies)
        .map(|b| publisher.publish("", QUEUE, &b.body, &env))
        .buffer_unordered(512)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    let publish_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        published == bodies.len(),
        "baseline: only {published} of {} confirmed",
        bodies.len()
    );

    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            QUEUE.into(),
            "ragq-bench-baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let consumed = Arc::new(AtomicU64::new(0));
    while consumed.load(Ordering::Relaxed) < bodies.len() as u64 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("baseline consumer stalled")?
            .context("baseline consumer ended")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        consumed.fetch_add(1, Ordering::Relaxed);
    }
    let consume_secs = started.elapsed().as_secs_f64();
    let _ = channel
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await;
    Ok(BaselineReport {
        publish_per_sec: bodies.len() as f64 / publish_secs,
        consume_per_sec: bodies.len() as f64 / consume_secs,
    })
}

async fn report(
    stack: &LocalStack,
    args: &BenchArgs,
    receiver: &WebhookReceiver,
    provider_answers: u64,
    usage: Vec<(f64, u64)>,
    message_bytes: usize,
    baseline: Option<BaselineReport>,
) -> anyhow::Result<BenchReport> {
    let (drain_secs, p50, p95, p99): (f64, f64, f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8, \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000)::float8, \
                percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000)::float8, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000)::float8 \
         FROM jobs WHERE state = 'succeeded'",
    )
    .fetch_one(&stack.pool)
    .await?;
    let by_kind: Vec<KindLatency> = sqlx::query_as(
        "SELECT kind, count(*) AS jobs, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000)::float8 AS in_worker_ms_p50, \
           percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000)::float8 AS in_worker_ms_p99 \
         FROM jobs WHERE state = 'succeeded' GROUP BY kind ORDER BY kind",
    )
    .fetch_all(&stack.pool)
    .await?;
    let correctness = correctness(stack, args, receiver, provider_answers).await?;
    let cpu: Vec<f64> = usage.iter().map(|u| u.0).collect();
    Ok(BenchReport {
        jobs: args.jobs,
        workers: args.workers,
        prompts_per_job: args.prompts,
        mix: args.mix.clone(),
        provider_latency_ms: args.latency_ms,
        message_bytes,
        jobs_per_sec: args.jobs as f64 / drain_secs,
        drain_secs,
        in_worker_ms_p50: p50,
        in_worker_ms_p95: p95,
        in_worker_ms_p99: p99,
        by_kind,
        worker_cpu_us_per_job: cpu.iter().sum::<f64>() * 1e6 / args.jobs as f64,
        worker_cpu_secs: cpu,
        worker_peak_rss_mb: usage
            .iter()
            .map(|u| u.1 as f64 / (1 << 20) as f64)
            .collect(),
        baseline,
        correctness,
    })
}

async fn correctness(
    stack: &LocalStack,
    args: &BenchArgs,
    receiver: &WebhookReceiver,
    provider_answers: u64,
) -> anyhow::Result<Correctness> {
    let (succeeded, not_succeeded, ledger_rows, disagreeing): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state <> 'succeeded'), \
           (SELECT count(*) FROM provider_calls), \
           count(*) FILTER (WHERE (result->>'cost_micros')::int8 IS DISTINCT FROM \
             (SELECT sum(cost_micros) FROM provider_calls p \
              WHERE p.tenant_id = j.tenant_id AND p.job_id = j.id AND p.attempt = j.attempts)) \
         FROM jobs j",
    )
    .fetch_one(&stack.pool)
    .await?;
    let hooks = receiver.received();
    let distinct = hooks
        .iter()
        .map(|h| h.id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let unverified = hooks.iter().filter(|h| h.verified != Some(true)).count();
    let jobs = args.jobs as i64;
    // Calls each job must have made: one per prompt, two per answer (the question's embedding and
    // the answer), and the embedding calls an ingest reports.
    let calls: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(CASE kind WHEN 'batch.complete' THEN $1 WHEN 'rag.answer' THEN 2 \
           ELSE (result->>'embedding_calls')::int8 END), 0)::int8 FROM jobs WHERE state = 'succeeded'",
    )
    .bind(args.prompts as i64)
    .fetch_one(&stack.pool)
    .await?;
    // Calls the response cache answered (booked, no provider answer), and the embeddings calls
    // semantic lookups made (booked, answered).
    let (hits, lookups): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE cache_hit IS NOT NULL), count(*) FILTER (WHERE tags ? 'cache_lookup') \
         FROM provider_calls",
    )
    .fetch_one(&stack.pool)
    .await?;
    let ok = succeeded == jobs
        && not_succeeded == 0
        && ledger_rows == calls + lookups
        && provider_answers == (ledger_rows - hits) as u64
        && hooks.len() == args.jobs
        && distinct == args.jobs
        && unverified == 0
        && disagreeing == 0;
    Ok(Correctness {
        succeeded,
        not_succeeded,
        ledger_rows,
        provider_answers,
        webhooks_received: hooks.len(),
        webhook_ids_distinct: distinct,
        webhooks_unverified: unverified,
        results_disagreeing_with_ledger: disagreeing,
        ok,
    })
}

fn print_table(r: &BenchReport) {
    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("\n== ragq bench: {} jobs (mix {}, {} prompt(s) per batch), {} workers, provider latency {} ms, {} B messages", r.jobs, r.mix, r.prompts_per_job, r.workers, r.provider_latency_ms, r.message_bytes);
    println!("{:<34} {:>12.0}", "jobs per second", r.jobs_per_sec);
    println!("{:<34} {:>12.2}", "drain time (s)", r.drain_secs);
    println!(
        "{:<34} {:>12.1} / {:.1} / {:.1}",
        "in-worker ms p50 / p95 / p99", r.in_worker_ms_p50, r.in_worker_ms_p95, r.in_worker_ms_p99
    );
    if r.by_kind.len() > 1 {
        for k in &r.by_kind {
            println!(
                "{:<34} {:>12.1} / {:.1}  ({} jobs)",
                format!("  {} ms p50 / p99", k.kind),
                k.in_worker_ms_p50,
                k.in_worker_ms_p99,
                k.jobs
            );
        }
    }
    println!(
        "{:<34} {:>12.0}",
        "worker CPU per job (us)", r.worker_cpu_us_per_job
    );
    println!(
        "{:<34} {:>12}",
        "worker CPU (s), per process",
        list(&r.worker_cpu_secs, 2)
    );
    println!(
        "{:<34} {:>12}",
        "worker peak RSS (MiB), per process",
        list(&r.worker_peak_rss_mb, 1)
    );
    if let Some(b) = &r.baseline {
        println!(
            "{:<34} {:>12.0} publish / {:.0} consume",
            "broker alone (msg/s)", b.publish_per_sec, b.consume_per_sec
        );
        println!(
            "{:<34} {:>11.0}%",
            "ragq as a share of broker consume",
            100.0 * r.jobs_per_sec / b.consume_per_sec
        );
    }
    let c = &r.correctness;
    println!(
        "{:<34} {:>12}  ({} succeeded, {} ledger rows, {} provider answers, {} webhooks, {} distinct, {} unverified, {} results off the ledger)",
        "correctness",
        if c.ok { "ok" } else { "FAILED" },
        c.succeeded, c.ledger_rows, c.provider_answers, c.webhooks_received, c.webhook_ids_distinct, c.webhooks_unverified, c.results_disagreeing_with_ledger
    );
}
