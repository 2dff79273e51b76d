//! `ragq demo`: the whole system on this machine, printing what happened.
//!
//! It prepares a fresh database and RabbitMQ vhost, starts the sim provider (with injected faults)
//! and a verifying webhook receiver in this process, starts worker and api processes, creates two
//! tenants, submits jobs over AMQP and HTTP (plus a few bad messages), waits for every webhook, and
//! prints a summary read back from Postgres and the broker.

use crate::{demo_cache, demo_dashboard, demo_prompts};
use ragq::telemetry::metrics::names;
use ragq_tools::scrape::{sum, Sample};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use ragq::config::Config;
use ragq::queue::{admin, publisher::ReconnectingPublisher};
use ragq::scheduler::pipeline::PipelineSpec;
use ragq::spend::budget::{usd, BudgetSpec, OnLimit};
use ragq::spend::report::{self, Dimension, ReportQuery};
use ragq::tenants::NewTenant;
use ragq_tools::config_file::ConfigFile;
use ragq_tools::receiver::{ReceivedWebhook, WebhookReceiver};
use ragq_tools::sim::SimOptions;
use ragq_tools::stack::{free_port, LocalStack, ServerArgs, StackUrls};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Jobs per tenant.
    #[arg(long, default_value_t = 10)]
    pub jobs: usize,
    /// Prompts per job.
    #[arg(long, default_value_t = 3)]
    pub prompts: usize,
    /// Keep everything running this many seconds after the summary, to open the dashboard.
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    #[command(flatten)]
    pub servers: ServerArgs,
    #[command(flatten)]
    pub sim: SimOptions,
}

const API_USER: &str = "ragq-demo-api";

struct Demo {
    cfg: Config,
    pool: PgPool,
    receiver: WebhookReceiver,
    globex: NewTenant,
    api_url: String,
}

pub async fn run(mut args: DemoArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.sim.latency_ms == 0 && args.sim.error_rate == 0.0 && args.sim.rate_limit_rate == 0.0 {
        args.sim = SimOptions {
            latency_ms: 15,
            error_rate: 0.08,
            rate_limit_rate: 0.04,
            retry_after_secs: 1,
            ..SimOptions::default()
        };
    }
    println!("ragq demo: preparing a fresh database `ragq_demo` and vhost `ragq-demo`");
    let sim = ragq_tools::sim::spawn("127.0.0.1:0", args.sim.clone(), cancel.clone()).await?;
    let receiver = WebhookReceiver::spawn(cancel.clone()).await?;
    let api_port = free_port().await?;
    let mut stack = LocalStack::prepare(&args.servers, "demo", |urls| {
        Ok(demo_config(urls, &sim.base_url(), api_port))
    })
    .await?;
    let api_password = uuid::Uuid::new_v4().simple().to_string();
    admin::ensure_user(API_USER, &api_password, &stack.vhost)?;
    let pool = stack.pool.clone();
    let globex = create_tenants(&pool, &stack.cfg.secrets, &receiver).await?;

    // The api publishes as its own AMQP user, one the workers trust to publish for any tenant.
    let api_amqp =
        stack
            .cfg
            .queue
            .url
            .replacen("guest:guest", &format!("{API_USER}:{api_password}"), 1);
    let mut pids = Vec::new();
    // Every process serves /metrics: workers and the scheduler each on a port of their own.
    let mut metrics = Vec::new();
    for _ in 0..args.workers {
        let listen = format!("127.0.0.1:{}", free_port().await?);
        let pid = stack.spawn("worker", &[(METRICS_LISTEN, listen.as_str())])?;
        metrics.push((format!("worker {pid}"), format!("http://{listen}/metrics")));
        pids.push(pid);
    }
    // Only the api reads the operator key (every process validates the config it is given).
    let operator_key = format!("demo-operator-{}", uuid::Uuid::new_v4().simple());
    let api_env = [
        ("RAGQ_QUEUE__URL", api_amqp.as_str()),
        (
            "RAGQ_API__OPERATOR_KEY_ENV",
            demo_dashboard::OPERATOR_KEY_ENV,
        ),
        (demo_dashboard::OPERATOR_KEY_ENV, operator_key.as_str()),
    ];
    pids.push(stack.spawn("api", &api_env)?);
    metrics.push(("api".into(), format!("http://127.0.0.1:{api_port}/metrics")));
    // The scheduler publishes as the same trusted user as the api.
    let listen = format!("127.0.0.1:{}", free_port().await?);
    let scheduler_env = [
        ("RAGQ_QUEUE__URL", api_amqp.as_str()),
        (METRICS_LISTEN, listen.as_str()),
    ];
    pids.push(stack.spawn("scheduler", &scheduler_env)?);
    metrics.push(("scheduler".into(), format!("http://{listen}/metrics")));
    create_pipeline(&pool, &receiver.url(), &stack.cfg.scheduler.pipelines).await?;
    println!(
        "started: sim provider at {} ({} ms latency, {:.0}% 500s, {:.0}% 429s), webhook receiver at {}, {} workers, an api and a scheduler (pids {}); globex's pipeline `status-digest` fires every 2 s",
        sim.base_url(),
        args.sim.latency_ms,
        args.sim.error_rate * 100.0,
        args.sim.rate_limit_rate * 100.0,
        receiver.url(),
        args.workers,
        pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
    );
    let demo = Demo {
        cfg: stack.cfg.clone(),
        pool,
        receiver,
        globex,
        api_url: format!("http://127.0.0.1:{api_port}"),
    };
    let outcome = submit_and_wait(&demo, &args, &cancel).await;
    let scraped = scrape_all(&metrics).await;
    let expected = match outcome {
        Ok(expected) => expected,
        Err(e) => {
            stack.stop_all().await;
            return Err(e);
        }
    };
    let dead_letters = print_summary(&demo, expected, sim.counts(), started.elapsed()).await?;
    print_metrics(&demo, &scraped).await?;
    let globex_key = demo.globex.api_key.expose();
    let shown = demo_dashboard::print(&demo.pool, &demo.api_url, &operator_key, globex_key).await;
    demo_dashboard::hold(&demo.api_url, &operator_key, args.hold_secs, &cancel).await;
    stack.stop_all().await;
    shown?;
    let checked = check_promises(&demo, &args, sim.counts(), dead_letters).await;
    cancel.cancel();
    checked
}

/// The environment variable that sets `telemetry.metrics_listen` for one process.
const METRICS_LISTEN: &str = "RAGQ_TELEMETRY__METRICS_LISTEN";

/// Each process's `/metrics` (`who`, url), read once the jobs are done.
async fn scrape_all(urls: &[(String, String)]) -> Vec<(String, String, Vec<Sample>)> {
    let mut out = Vec::new();
    for (who, url) in urls {
        match ragq_tools::scrape::scrape(url).await {
            Ok(samples) => out.push((who.clone(), url.clone(), samples)),
            Err(e) => println!("  cannot read {who}'s metrics at {url}: {e}"),
        }
    }
    out
}

/// What Prometheus would read from the processes, summed over them, beside the database's count.
async fn print_metrics(
    demo: &Demo,
    scraped: &[(String, String, Vec<Sample>)],
) -> anyhow::Result<()> {
    println!("\n== metrics (Prometheus text at each process's /metrics; summed over processes)");
    for (who, url, samples) in scraped {
        println!("  {who}: {url} ({} series)", samples.len());
    }
    let total = |name: &str, with: &[(&str, &str)]| -> f64 {
        scraped.iter().map(|(_, _, s)| sum(s, name, with)).sum()
    };
    let count = |sql: &'static str| {
        let pool = demo.pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await }
    };
    let rows = [
        (
            "jobs succeeded",
            total(names::JOBS, &[("outcome", "succeeded")]),
            count("SELECT count(*) FROM jobs WHERE state = 'succeeded'").await?,
        ),
        (
            "jobs failed",
            total(names::JOBS, &[("outcome", "failed")]),
            count("SELECT count(*) FROM jobs WHERE state = 'failed'").await?,
        ),
        (
            "provider calls answered",
            total(names::PROVIDER_CALLS, &[("outcome", "ok")]),
            count("SELECT count(*) FROM provider_calls WHERE cache_hit IS NULL").await?,
        ),
        (
            "calls the cache answered",
            total(names::CACHE_LOOKUPS, &[("outcome", "hit")]),
            count("SELECT count(*) FROM provider_calls WHERE cache_hit IS NOT NULL").await?,
        ),
        (
            "spend, micro-dollars",
            total(names::SPEND, &[]),
            count("SELECT coalesce(sum(cost_micros), 0)::bigint FROM provider_calls").await?,
        ),
    ];
    for (what, metric, db) in rows {
        println!("  {what:<24} {metric:>10.0}   (database: {db})");
    }
    let retries = total(names::PROVIDER_RETRIES, &[]);
    let delivered = total(names::WEBHOOK_ATTEMPTS, &[("outcome", "delivered")]);
    let dead = total(names::DEAD_LETTERS, &[]);
    let requests = total(names::HTTP_REQUESTS, &[]);
    println!("  provider retries {retries:.0}, webhooks delivered {delivered:.0}, dead letters {dead:.0}, api requests {requests:.0}");
    Ok(())
}

/// acme (publishing over AMQP as `guest`) with a monthly budget whose $0.0003 soft limit the demo
/// passes, alerting at 50/80/100% to the receiver; globex (over HTTP). Returns globex, whose API key
/// the demo uses.
async fn create_tenants(
    pool: &PgPool,
    keyring: &ragq::keyring::Keyring,
    receiver: &WebhookReceiver,
) -> anyhow::Result<ragq::tenants::NewTenant> {
    let acme = ragq::tenants::create(
        pool,
        &ragq::audit::Actor::cli(),
        keyring,
        "acme",
        "Acme Corp",
        Some("guest"),
    )
    .await?;
    let globex = ragq::tenants::create(
        pool,
        &ragq::audit::Actor::cli(),
        keyring,
        "globex",
        "Globex",
        None,
    )
    .await?;
    receiver.trust("acme", acme.webhook_secret.expose());
    receiver.trust("globex", globex.webhook_secret.expose());
    ragq::tenants::set_alert_webhook(
        pool,
        &ragq::audit::Actor::cli(),
        "acme",
        Some(&receiver.url()),
    )
    .await?;
    let acme_budget = BudgetSpec {
        tenant: "acme".into(),
        feature: String::new(),
        period: "month".into(),
        soft_limit_micros: Some(300),
        hard_limit_micros: None,
        job_quota: None,
        token_quota: None,
        alert_thresholds: vec![50, 80, 100],
        on_limit: OnLimit::Fail,
    };
    ragq::spend::budget::set(pool, &ragq::audit::Actor::cli(), &acme_budget).await?;
    Ok(globex)
}

/// globex's pipeline `status-digest`, every 2 seconds.
async fn create_pipeline(
    pool: &PgPool,
    hook: &str,
    limits: &ragq::scheduler::pipeline::PipelineLimits,
) -> anyhow::Result<()> {
    let spec = serde_json::json!({
        "name": "status-digest", "cron": "*/2 * * * * *", "time_zone": "Europe/Lisbon", "missed": "skip",
        "job_template": {"kind": "batch.complete", "webhook_url": hook,
            "input": {"prompts": [{"prompt": "Write the status digest for {{scheduled_time}}"}]},
            "tags": {"feature": "digest"}}
    });
    let digest =
        PipelineSpec::from_json(spec.to_string().as_bytes()).map_err(anyhow::Error::msg)?;
    ragq::scheduler::pipeline::create(
        pool,
        &ragq::audit::Actor::cli(),
        "globex",
        &digest,
        chrono::Utc::now(),
        limits,
    )
    .await?;
    Ok(())
}

fn demo_config(urls: &StackUrls, sim_url: &str, api_port: u16) -> String {
    let file = ConfigFile::new("ragq demo", &urls.database, &urls.queue, &urls.vectors)
        .list("queue.retry_delays_ms", [500, 2000, 5000])
        .list("queue.trusted_publishers", [API_USER])
        .set("api.listen", format!("127.0.0.1:{api_port}"))
        .set("webhooks.initial_backoff_ms", 200)
        .set("webhooks.poll_interval_ms", 200)
        .set("webhooks.claim_lease_ms", 5000)
        .set("retry.initial_interval_ms", 50)
        .set("retry.max_interval_ms", 1000)
        .set("retry.max_elapsed_ms", 5000)
        .sim_catalog(sim_url);
    demo_cache::policy(file).render()
}

/// Submits the demo's jobs and waits for every webhook; returns how many jobs were submitted.
async fn submit_and_wait(
    demo: &Demo,
    args: &DemoArgs,
    cancel: &CancellationToken,
) -> anyhow::Result<usize> {
    let publisher = ReconnectingPublisher::new(demo.cfg.queue.clone(), "ragq-demo");
    let jobs = DemoJobs {
        hook: demo.receiver.url(),
        prompts: args.prompts,
    };
    // acme publishes straight to RabbitMQ as AMQP user `guest`.
    for i in 0..args.jobs {
        let body = jobs.job("acme", i, "cost-optimized").to_string();
        publisher
            .publish_job("batch.complete", &format!("acme-{i}"), body.as_bytes())
            .await?;
    }
    submit_over_http(demo, &jobs, args.jobs, cancel).await?;
    // One job that fails for good (unknown policy) and gets a job.failed webhook.
    let failing = jobs.job("acme", args.jobs, "no-such-policy").to_string();
    let failing_id = format!("acme-{}", args.jobs);
    publisher
        .publish_job("batch.complete", &failing_id, failing.as_bytes())
        .await?;
    // Bad messages: broken JSON, and globex's job published by acme's AMQP user.
    publisher
        .publish_job("batch.complete", "broken", b"{\"id\": \"broken\", oops")
        .await?;
    let spoofed = jobs.job("globex", 99, "cost-optimized").to_string();
    publisher
        .publish_job("batch.complete", "globex-99", spoofed.as_bytes())
        .await?;
    ask_the_handbook(demo, &publisher, cancel).await?;
    demo_cache::ask_the_faq(&demo.pool, &publisher, &jobs.hook, cancel).await?;
    demo_prompts::roll_out(&demo.pool, &publisher, &jobs.hook, cancel).await?;
    let expected = 2 * args.jobs + 1 + RAG_JOBS + demo_cache::JOBS + demo_prompts::JOBS;
    println!("submitted: {} jobs for acme over AMQP, {} for globex over HTTP, 1 doomed job, 3 bad messages", args.jobs + 1, args.jobs);
    wait_for_webhooks(demo, expected, cancel).await?;
    Ok(expected)
}

/// The demo's `batch.complete` jobs: support prompts over a few topics, half of them tagged as
/// another feature.
struct DemoJobs {
    hook: String,
    prompts: usize,
}

impl DemoJobs {
    fn job(&self, tenant: &str, i: usize, policy: &str) -> serde_json::Value {
        const TOPICS: [&str; 5] = [
            "refund policy",
            "shipping times",
            "password reset",
            "invoice copy",
            "data export",
        ];
        let prompts: Vec<_> = (0..self.prompts)
            .map(|p| serde_json::json!({"prompt": format!("Customer {i}.{p} asks about {}: summarise the answer in one line", TOPICS[(i + p) % TOPICS.len()])}))
            .collect();
        serde_json::json!({
            "id": format!("{tenant}-{i}"), "tenant": tenant, "kind": "batch.complete", "policy": policy,
            "webhook_url": self.hook, "input": {"system": "You are a support assistant.", "prompts": prompts},
            "tags": {"feature": if i.is_multiple_of(2) { "support-summaries" } else { "faq" }, "plan": "pro"}
        })
    }
}

/// globex submits over HTTP with its API key (the key names the tenant).
async fn submit_over_http(
    demo: &Demo,
    jobs: &DemoJobs,
    n: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    wait_for_api(&http, &demo.api_url, cancel).await?;
    for i in 0..n {
        let policy = if i % 3 == 0 {
            "reliable"
        } else {
            "cost-optimized"
        };
        let mut body = jobs.job("globex", i, policy);
        body.as_object_mut().map(|o| o.remove("tenant"));
        let resp = http
            .post(format!("{}/v1/jobs", demo.api_url))
            .bearer_auth(demo.globex.api_key.expose())
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "api refused a demo job: {}",
            resp.text().await?
        );
    }
    Ok(())
}

/// Waits for every job's webhook, the budget alerts and two pipeline runs; then pauses the
/// pipeline and waits for the system to go quiet, so the summary sees it at rest.
async fn wait_for_webhooks(
    demo: &Demo,
    expected: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = || async {
        let hooks = demo.receiver.received();
        let runs = count(
            &demo.pool,
            "SELECT count(*) FROM jobs WHERE id LIKE 'pl:%' AND state = 'succeeded'",
        )
        .await
        .unwrap_or(0);
        job_hooks(&hooks) >= expected && alerts(&hooks).len() >= 3 && runs >= 2
    };
    while !done().await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {expected} webhooks arrived in time",
            demo.receiver.count()
        );
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = chrono::Utc::now();
    ragq::scheduler::pipeline::set_enabled(
        &demo.pool,
        &ragq::audit::Actor::cli(),
        "globex",
        "status-digest",
        false,
        now,
    )
    .await?;
    let busy = "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')";
    while count(&demo.pool, busy).await? > 0
        || demo.receiver.received().len() < job_hooks_expected(demo).await? + 3
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "pipeline runs did not finish in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The receiver answers before the sender records the attempt: wait for the records.
    let unrecorded = "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'";
    while count(&demo.pool, unrecorded).await? > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "webhook records did not settle in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The retrieval jobs the demo runs: one ingest, then two questions.
const RAG_JOBS: usize = 3;

/// acme indexes its handbook (an `ingest` job), then asks two questions about it (`rag.answer`).
async fn ask_the_handbook(
    demo: &Demo,
    publisher: &ReconnectingPublisher,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let hook = demo.receiver.url();
    let handbook = serde_json::json!([
        {"id": "refunds", "metadata": {"team": "billing"}, "text":
            "Refunds are paid to the original card within 14 days of the returned item arriving. \
             Digital goods are refunded only when the download never worked; open a support ticket."},
        {"id": "shipping", "metadata": {"team": "logistics"}, "text":
            "Orders ship from Lisbon. Shipping inside the EU takes 3 working days; elsewhere 7 to 10."},
        {"id": "passwords", "metadata": {"team": "security"}, "text":
            "To reset a password, use the link on the sign-in page; the link expires after 30 minutes."},
    ]);
    let ingest = serde_json::json!({"id": "acme-handbook", "tenant": "acme", "kind": "ingest",
        "webhook_url": hook, "input": {"collection": "handbook", "documents": handbook}});
    publisher
        .publish_job("ingest", "acme-handbook", ingest.to_string().as_bytes())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(
        &demo.pool,
        "SELECT count(*) FROM jobs WHERE id = 'acme-handbook' AND state IN ('succeeded', 'failed')",
    )
    .await?
        == 0
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the handbook ingest did not finish"
        );
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, question) in [
        ("acme-ask-refunds", "How many days do refunds take?"),
        (
            "acme-ask-shipping",
            "How long does shipping inside the EU take?",
        ),
    ] {
        let ask = serde_json::json!({"id": id, "tenant": "acme", "kind": "rag.answer",
            "webhook_url": hook, "tags": {"feature": "handbook-qa"},
            "input": {"collection": "handbook", "question": question, "top_k": 2}});
        publisher
            .publish_job("rag.answer", id, ask.to_string().as_bytes())
            .await?;
    }
    Ok(())
}

/// Webhooks every job with a webhook should have produced (all of the demo's jobs have one).
async fn job_hooks_expected(demo: &Demo) -> anyhow::Result<usize> {
    Ok(usize::try_from(
        count(
            &demo.pool,
            "SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed')",
        )
        .await?,
    )?)
}

async fn wait_for_api(
    http: &reqwest::Client,
    url: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for _ in 0..100 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the api did not come up at {url}")
}

/// Webhooks about jobs (`job.succeeded`, `job.failed`), as opposed to budget alerts.
fn job_hooks(hooks: &[ReceivedWebhook]) -> usize {
    hooks
        .iter()
        .filter_map(|h| serde_json::from_str::<serde_json::Value>(&h.body).ok())
        .filter(|v| v["type"].as_str().is_some_and(|t| t.starts_with("job.")))
        .count()
}

/// The budget alerts received: (threshold percent, spend when it fired), in threshold order.
fn alerts(hooks: &[ReceivedWebhook]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = hooks
        .iter()
        .filter_map(|h| serde_json::from_str::<serde_json::Value>(&h.body).ok())
        .filter(|v| v["type"] == "budget.threshold")
        .map(|v| {
            let d = &v["data"];
            (
                d["threshold_pct"].as_i64().unwrap_or(0),
                d["cost_micros"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    out.sort_unstable();
    out
}

/// Prints what happened; returns how many messages were in the dead-letter queue.
async fn print_summary(
    demo: &Demo,
    expected: usize,
    sim: (u64, u64),
    took: Duration,
) -> anyhow::Result<usize> {
    print_jobs(demo, expected, took).await?;
    print_pipelines(demo).await?;
    println!("\n== spend (daily aggregates kept in step with the ledger; exact micro-dollars)");
    let dims = [Dimension::Tenant, Dimension::Feature, Dimension::Model];
    let q = ReportQuery {
        group_by: dims.to_vec(),
        ..ReportQuery::default()
    };
    print!(
        "{}",
        report::to_table(&dims, &report::query(&demo.pool, &q).await?)
    );
    print_retrieval(demo).await?;
    demo_cache::print(&demo.pool).await?;
    demo_prompts::print(&demo.pool).await?;
    print_webhooks(demo).await?;
    print_governance(demo).await?;
    println!("\n== dead-letter queue");
    let dead_letters = drain_dead_letters(&demo.cfg).await?;
    for (reason, body) in &dead_letters {
        let start: String = String::from_utf8_lossy(body).chars().take(60).collect();
        println!("  {reason}  <- {start}");
    }
    println!("\n== provider");
    println!("sim provider: {} requests, {} answered, {} failed on purpose and were retried or failed over", sim.0, sim.1, sim.0 - sim.1);
    Ok(dead_letters.len())
}

/// Jobs per tenant, and why each failed job failed.
async fn print_jobs(demo: &Demo, expected: usize, took: Duration) -> anyhow::Result<()> {
    println!(
        "\n== jobs ({expected} submitted, {:.1} s)",
        took.as_secs_f64()
    );
    println!(
        "{:<8} {:>9} {:>6} {:>9}",
        "tenant", "succeeded", "failed", "attempts"
    );
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'failed'), \
         sum(attempts)::int8 FROM jobs GROUP BY tenant_id ORDER BY tenant_id",
    )
    .fetch_all(&demo.pool)
    .await?;
    for (t, ok, failed, attempts) in rows {
        println!("{t:<8} {ok:>9} {failed:>6} {attempts:>9}");
    }
    let failures: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, error_code, error FROM jobs WHERE state = 'failed' ORDER BY id")
            .fetch_all(&demo.pool)
            .await?;
    for (id, code, error) in failures {
        println!("  failed {id}: {code}: {error}");
    }
    Ok(())
}

async fn print_pipelines(demo: &Demo) -> anyhow::Result<()> {
    let runs: Vec<(chrono::DateTime<chrono::Utc>, String, String)> = sqlx::query_as(
        "SELECT r.scheduled_at, r.job_id, j.state FROM pipeline_runs r JOIN jobs j ON j.id = r.job_id ORDER BY 1",
    )
    .fetch_all(&demo.pool)
    .await?;
    println!("\n== pipelines (globex `status-digest`, every 2 s, fired by the scheduler's leader through its outbox)");
    for (at, job, state) in &runs {
        println!("  run {}  job {job}: {state}", at.to_rfc3339());
    }
    Ok(())
}

/// Each ingest's chunks and each answer with its citations and timing.
async fn print_retrieval(demo: &Demo) -> anyhow::Result<()> {
    println!("\n== retrieval (acme's handbook: ingest, then rag.answer on the embedded qdrant-edge store)");
    let rag: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT id, result FROM jobs WHERE kind IN ('ingest', 'rag.answer') AND result IS NOT NULL ORDER BY created_at",
    )
    .fetch_all(&demo.pool)
    .await?;
    for (id, r) in rag {
        let Some(answer) = r["answer"].as_str() else {
            println!(
                "  {id}: {} chunks from {} documents, {} embedding calls, {} micro-dollars",
                r["chunks"],
                r["documents"].as_array().map_or(0, Vec::len),
                r["embedding_calls"],
                r["cost_micros"]
            );
            continue;
        };
        let cite = |c: &serde_json::Value| {
            format!(
                "[{}] {}#{} ({:.2})",
                c["n"],
                c["document_id"].as_str().unwrap_or("?"),
                c["chunk_index"],
                c["score"].as_f64().unwrap_or(0.0)
            )
        };
        let cited: Vec<String> = r["citations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(cite)
            .collect();
        let t = &r["timings_ms"];
        println!(
            "  {id}: {answer}\n    cites {}; {} ms (embed {}, search {}, model {})",
            cited.join(", "),
            t["total"],
            t["embed"],
            t["search"],
            t["model"]
        );
    }
    Ok(())
}

/// Webhooks received and verified, and the budget alerts among them.
async fn print_webhooks(demo: &Demo) -> anyhow::Result<()> {
    let hooks = demo.receiver.received();
    let verified = hooks.iter().filter(|h| h.verified == Some(true)).count();
    let (attempts, delivered): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_attempts), count(*) FILTER (WHERE state = 'delivered') FROM webhook_deliveries",
    )
    .fetch_one(&demo.pool)
    .await?;
    println!("\n== webhooks");
    println!("{} received, {verified} with a valid Standard Webhooks signature; {delivered} deliveries marked delivered after {attempts} attempts", hooks.len());
    for (pct, cost) in alerts(&hooks) {
        println!(
            "  budget alert: acme passed {pct}% of its $0.000300 monthly soft limit (spent {})",
            usd(cost)
        );
    }
    Ok(())
}

/// What governance left: secrets sealed at rest, keys stored as hashes, changes audited.
async fn print_governance(demo: &Demo) -> anyhow::Result<()> {
    let (sealed, tenants, keys, audited): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE webhook_secret LIKE 'enc:v1:%'), count(*), \
           (SELECT count(*) FROM api_keys), (SELECT count(*) FROM audit_log) FROM tenants",
    )
    .fetch_one(&demo.pool)
    .await?;
    println!("\n== governance");
    println!(
        "{sealed} of {tenants} webhook secrets sealed at rest (XChaCha20-Poly1305, key {}); \
         {keys} API keys, stored as SHA-256 hashes; {audited} administrative changes in the audit log (`ragq audit`)",
        demo.cfg.secrets.current_id().unwrap_or("none: stored in clear")
    );
    Ok(())
}

/// Checks the system's promises on what the demo just did; the first broken one is the error.
async fn check_promises(
    demo: &Demo,
    args: &DemoArgs,
    (_, answered): (u64, u64),
    dead_letters: usize,
) -> anyhow::Result<()> {
    let mut broken = Vec::new();
    let runs = check_jobs(demo, args, &mut broken).await?;
    check_ledger(demo, answered, &mut broken).await?;
    demo_prompts::check(&demo.pool, &mut broken).await?;
    let finished = 2 * args.jobs
        + 1
        + RAG_JOBS
        + demo_cache::JOBS
        + demo_prompts::JOBS
        + usize::try_from(runs)?;
    check_webhooks(demo, finished, &mut broken);
    if dead_letters != 3 {
        broken.push(format!("expected 3 dead letters, found {dead_letters}"));
    }
    if broken.is_empty() {
        println!("\n== checks\nall passed: every job and pipeline run finished once, every answered call booked once, cache hits booked at cost 0, results equal the ledger, every webhook verified, each budget alert fired once, every job naming a prompt used the version its label held when it was accepted, all three bad messages dead-lettered");
        Ok(())
    } else {
        anyhow::bail!("demo checks failed:\n  - {}", broken.join("\n  - "))
    }
}

/// Every job finished once as expected, and every pipeline run's job succeeded; returns the runs.
async fn check_jobs(demo: &Demo, args: &DemoArgs, broken: &mut Vec<String>) -> anyhow::Result<i64> {
    let (succeeded, failed, unfinished): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'failed'), \
         count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed')) FROM jobs WHERE id NOT LIKE 'pl:%'",
    )
    .fetch_one(&demo.pool)
    .await?;
    let expected = 2 * i64::try_from(args.jobs)?
        + i64::try_from(RAG_JOBS + demo_cache::JOBS + demo_prompts::JOBS)?;
    if (succeeded, failed, unfinished) != (expected, 1, 0) {
        broken.push(format!("expected {expected} succeeded, 1 failed, 0 unfinished; got {succeeded}, {failed}, {unfinished}"));
    }
    let (runs, run_jobs_ok): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE j.state = 'succeeded') FROM pipeline_runs r \
         JOIN jobs j ON j.tenant_id = 'globex' AND j.id = r.job_id",
    )
    .fetch_one(&demo.pool)
    .await?;
    if runs < 2 || run_jobs_ok != runs {
        broken.push(format!(
            "{runs} pipeline runs, {run_jobs_ok} of their jobs succeeded"
        ));
    }
    Ok(runs)
}

/// Each answered call booked exactly once (no process was killed, so none was lost), the cache's
/// hits booked beside them, and each result reports the cost of its final attempt's calls as
/// booked.
async fn check_ledger(demo: &Demo, answered: u64, broken: &mut Vec<String>) -> anyhow::Result<()> {
    let booked = count(
        &demo.pool,
        "SELECT count(*) FROM provider_calls WHERE cache_hit IS NULL",
    )
    .await?;
    if u64::try_from(booked)? != answered {
        broken.push(format!(
            "the provider answered {answered} calls but {booked} are booked"
        ));
    }
    let hits = count(
        &demo.pool,
        "SELECT count(*) FROM provider_calls WHERE cache_hit IS NOT NULL AND cost_micros = 0",
    )
    .await?;
    if hits < 3 {
        broken.push(format!(
            "expected the cache to answer at least 3 FAQ calls, it answered {hits}"
        ));
    }
    let mismatched = count(
        &demo.pool,
        "SELECT count(*) FROM jobs j WHERE j.state = 'succeeded' AND (j.result->>'cost_micros')::int8 <> \
         (SELECT coalesce(sum(cost_micros), 0) FROM provider_calls p \
          WHERE p.tenant_id = j.tenant_id AND p.job_id = j.id AND p.attempt = j.attempts)",
    )
    .await?;
    if mismatched != 0 {
        broken.push(format!("{mismatched} results disagree with the ledger"));
    }
    Ok(())
}

/// One verified webhook with a distinct id per finished job, and one alert per threshold.
fn check_webhooks(demo: &Demo, finished: usize, broken: &mut Vec<String>) {
    let hooks = demo.receiver.received();
    let ids: std::collections::HashSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
    let unverified = hooks.iter().filter(|h| h.verified != Some(true)).count();
    if unverified > 0 || ids.len() != hooks.len() || job_hooks(&hooks) != finished {
        broken.push(format!(
            "{} webhooks ({} distinct ids, {unverified} unverified) for {finished} finished jobs",
            hooks.len(),
            ids.len(),
        ));
    }
    let thresholds: Vec<i64> = alerts(&hooks).iter().map(|a| a.0).collect();
    if thresholds != [50, 80, 100] {
        broken.push(format!(
            "expected one budget alert at each of 50, 80, 100%; got {thresholds:?}"
        ));
    }
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

async fn drain_dead_letters(cfg: &Config) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let conn =
        lapin::Connection::connect(&cfg.queue.url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(
            ragq::queue::topology::DEAD_LETTER_QUEUE.into(),
            BasicGetOptions::default(),
        )
        .await?
    {
        let reason = msg
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(ragq::queue::topology::REASON_HEADER).cloned())
            .map(|v| match v {
                lapin::types::AMQPValue::LongString(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap_or_else(|| "dead-lettered by the broker".into());
        out.push((reason, msg.delivery.data.clone()));
        msg.delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}
