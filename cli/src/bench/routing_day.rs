//! `ragq bench --routing-day`: a simulated day of mixed traffic through two providers, the cheap
//! one failing 20% of calls, comparing the `cost-optimized` policy (cost-ranked over both) with
//! always using the most expensive model: cost per 1,000 jobs and success rate for each.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{say, BenchArgs};
use ragq::spend::budget::usd;
use ragq_tools::config_file::ConfigFile;
use ragq_tools::sim::SimOptions;
use ragq_tools::stack::{LocalStack, StackUrls};

#[derive(Debug, Serialize)]
pub struct PolicyOutcome {
    pub policy: String,
    pub jobs: i64,
    pub succeeded: i64,
    pub success_rate: f64,
    pub cost_micros: i64,
    pub cost_per_1000_jobs_micros: i64,
    pub calls_per_model: Vec<(String, i64)>,
}

/// Two providers of different prices and API shapes, and a cost policy over them.
fn config(urls: &StackUrls, cheap_url: &str, dear_url: &str) -> anyhow::Result<String> {
    let catalog = format!(
        r#"[[providers]]
name = "cheap-sim"
kind = "openai"
base_url = "{cheap_url}"
timeout_ms = 2000
[[providers]]
name = "dear-sim"
kind = "anthropic"
base_url = "{dear_url}"
timeout_ms = 2000
[[models]]
name = "cheap"
provider = "cheap-sim"
model_id = "cheap-1"
input_price_micros_per_mtok = 150000
output_price_micros_per_mtok = 600000
context_window = 16384
[[models]]
name = "dear"
provider = "dear-sim"
model_id = "dear-1"
input_price_micros_per_mtok = 2500000
output_price_micros_per_mtok = 10000000
context_window = 128000
[policies.cost-optimized]
models = ["dear", "cheap"]
strategy = "cost"
[policies.most-expensive]
models = ["dear"]
"#
    );
    let file = ConfigFile::new(
        "ragq bench --routing-day",
        &urls.database,
        &urls.queue,
        &urls.vectors,
    )
    .set("queue.prefetch", 128)
    .list("queue.trusted_publishers", ["guest"])
    .set("retry.initial_interval_ms", 20)
    .set("retry.max_interval_ms", 200)
    .set("retry.max_elapsed_ms", 2000)
    .merge(&catalog)?;
    Ok(file.render())
}

pub async fn run(args: &BenchArgs, cancel: &CancellationToken) -> anyhow::Result<()> {
    let failing = SimOptions {
        latency_ms: args.latency_ms,
        error_rate: 0.2,
        ..SimOptions::default()
    };
    let healthy = SimOptions {
        latency_ms: args.latency_ms,
        ..SimOptions::default()
    };
    let cheap = ragq_tools::sim::spawn("127.0.0.1:0", failing, cancel.clone()).await?;
    let dear = ragq_tools::sim::spawn("127.0.0.1:0", healthy, cancel.clone()).await?;
    let mut stack = LocalStack::prepare(&args.servers, "bench_routing", |urls| {
        config(urls, &cheap.base_url(), &dear.base_url())
    })
    .await?;
    for t in 0..args.tenants {
        let id = format!("tenant-{t:04}");
        ragq::tenants::create(
            &stack.pool,
            &ragq::audit::Actor::cli(),
            &stack.cfg.secrets,
            &id,
            &id,
            None,
        )
        .await?;
    }
    let bodies = day_of_jobs(args.jobs, args.tenants);
    say(
        args,
        format_args!(
            "routing a day of {} mixed jobs; the cheap provider fails 20% of calls",
            args.jobs
        ),
    );
    let conn = super::publish(args, &stack, &bodies, cancel).await?;
    for _ in 0..args.workers {
        stack.spawn("worker", &[])?;
    }
    let jobs = i64::try_from(args.jobs)?;
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed')")
                .fetch_one(&stack.pool)
                .await?;
        if done >= jobs {
            break;
        }
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.stop_all().await;
    let _ = conn.close(200, "done".into()).await;
    let mut outcomes = Vec::new();
    for policy in ["cost-optimized", "most-expensive"] {
        outcomes.push(outcome(&stack.pool, policy).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        print(args.jobs, &outcomes);
    }
    Ok(())
}

/// A day's mix: 1 to 5 prompts of 5 to 60 words, half the jobs under each policy.
fn day_of_jobs(jobs: usize, tenants: usize) -> Vec<super::JobBody> {
    const TOPICS: [&str; 7] = [
        "refund", "invoice", "login", "export", "shipping", "upgrade", "outage",
    ];
    (0..jobs)
        .map(|i| {
            let policy = if i % 2 == 0 {
                "cost-optimized"
            } else {
                "most-expensive"
            };
            let prompts: Vec<_> = (0..1 + i % 5)
                .map(|p| {
                    let words = 5 + (i * 7 + p * 13) % 56;
                    let text: Vec<&str> =
                        (0..words).map(|w| TOPICS[(i + w) % TOPICS.len()]).collect();
                    json!({"prompt": format!("Answer ticket {i}.{p}: {}", text.join(" "))})
                })
                .collect();
            let id = format!("day-{i}");
            let body = json!({"id": id, "tenant": format!("tenant-{:04}", i % tenants),
                "kind": "batch.complete", "policy": policy,
                "input": {"prompts": prompts, "max_tokens": 64}, "tags": {"feature": policy}});
            super::JobBody {
                id,
                kind: "batch.complete",
                body: body.to_string().into_bytes(),
            }
        })
        .collect()
}

fn print(jobs: usize, outcomes: &[PolicyOutcome]) {
    println!("\n== ragq bench --routing-day: {jobs} jobs, cheap provider failing 20% of calls");
    println!(
        "{:<16} {:>7} {:>10} {:>16} {:>20}  calls per model",
        "policy", "jobs", "success", "cost", "cost per 1,000 jobs"
    );
    for o in outcomes {
        let calls: Vec<String> = (o.calls_per_model.iter())
            .map(|(m, n)| format!("{m} {n}"))
            .collect();
        println!(
            "{:<16} {:>7} {:>9.2}% {:>16} {:>20}  {}",
            o.policy,
            o.jobs,
            o.success_rate * 100.0,
            usd(o.cost_micros),
            usd(o.cost_per_1000_jobs_micros),
            calls.join(", ")
        );
    }
}

async fn outcome(pool: &sqlx::PgPool, policy: &str) -> anyhow::Result<PolicyOutcome> {
    let (jobs, succeeded): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'succeeded') FROM jobs WHERE policy = $1",
    )
    .bind(policy)
    .fetch_one(pool)
    .await?;
    let cost: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(cost_micros), 0)::int8 FROM provider_calls WHERE feature = $1",
    )
    .bind(policy)
    .fetch_one(pool)
    .await?;
    let calls_per_model: Vec<(String, i64)> = sqlx::query_as(
        "SELECT model, count(*) FROM provider_calls WHERE feature = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(policy)
    .fetch_all(pool)
    .await?;
    Ok(PolicyOutcome {
        policy: policy.to_string(),
        jobs,
        succeeded,
        success_rate: if jobs > 0 {
            succeeded as f64 / jobs as f64
        } else {
            0.0
        },
        cost_micros: cost,
        cost_per_1000_jobs_micros: if jobs > 0 { cost * 1000 / jobs } else { 0 },
        calls_per_model,
    })
}
