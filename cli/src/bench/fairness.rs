//! `ragq bench --fairness`: what one tenant's backlog does to the others. Three runs on fresh
//! stacks: ten small tenants submitting at a steady rate alone; a bulk tenant's backlog alone;
//! and the backlog queued first with the small tenants submitting as before. It reports the
//! small tenants' latency (publish to verified webhook) with and without the backlog, how much of
//! the backlog was done when the last small job finished, and the bulk tenant's throughput with
//! and without the small tenants.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::stats::{quantiles, Quantiles};
use super::{bench_config, say, setup, BenchArgs, JobBody};
use ragq::queue::publisher::Publisher;

/// The bulk tenant and the ten small ones (tenants `setup` makes).
const BULK: &str = "tenant-0000";
const SMALL_TENANTS: usize = 10;

#[derive(Debug, Serialize)]
pub struct FairnessReport {
    pub workers: usize,
    pub bulk_jobs: usize,
    pub small_jobs: usize,
    pub small_rate_per_sec: f64,
    /// Small tenants' publish → webhook, with nothing else queued.
    pub small_alone_ms: Quantiles,
    /// The same, with the bulk backlog queued first.
    pub small_with_backlog_ms: Quantiles,
    /// Share of the bulk backlog done when the last small job's webhook arrived.
    pub bulk_done_when_small_finished: f64,
    pub bulk_alone_jobs_per_sec: f64,
    pub bulk_with_small_jobs_per_sec: f64,
    /// How fast the workers took the backlog out of the broker (from their start until `ragq.jobs`
    /// held no ready message): a small tenant's message waits behind what is still there.
    pub bulk_intake_jobs_per_sec: f64,
}

/// One run: its small jobs' latencies, the share of bulk jobs finished when the last small one
/// did, and the bulk jobs' throughput.
struct Run {
    small_ms: Vec<f64>,
    bulk_done_share: f64,
    bulk_jobs_per_sec: f64,
    intake_jobs_per_sec: f64,
}

pub async fn run(args: &BenchArgs, cancel: &CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tenants > SMALL_TENANTS && args.workers > 0 && args.small_rate > 0.0,
        "--fairness needs --tenants above {SMALL_TENANTS}, workers and a positive --small-rate"
    );
    say(args, format_args!("run 1 of 3: the small tenants alone"));
    let alone = one_run(args, 0, args.small_jobs, cancel).await?;
    say(
        args,
        format_args!("run 2 of 3: the bulk tenant's backlog alone"),
    );
    let bulk = one_run(args, args.bulk_jobs, 0, cancel).await?;
    say(
        args,
        format_args!("run 3 of 3: the backlog, then the small tenants"),
    );
    let both = one_run(args, args.bulk_jobs, args.small_jobs, cancel).await?;
    let report = FairnessReport {
        workers: args.workers,
        bulk_jobs: args.bulk_jobs,
        small_jobs: args.small_jobs,
        small_rate_per_sec: args.small_rate,
        small_alone_ms: quantiles(alone.small_ms),
        small_with_backlog_ms: quantiles(both.small_ms),
        bulk_done_when_small_finished: both.bulk_done_share,
        bulk_alone_jobs_per_sec: bulk.bulk_jobs_per_sec,
        bulk_with_small_jobs_per_sec: both.bulk_jobs_per_sec,
        bulk_intake_jobs_per_sec: both.intake_jobs_per_sec,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    cancel.cancel();
    Ok(())
}

/// A fresh stack; `bulk` jobs for the bulk tenant queued first, workers started, then `small`
/// jobs for the small tenants published at `--small-rate`.
async fn one_run(
    args: &BenchArgs,
    bulk: usize,
    small: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<Run> {
    let super::Setup {
        sim,
        receiver,
        mut stack,
        ..
    } = setup(args, cancel, &bench_config).await?;
    let hook = receiver.url();
    let bulk_bodies = bodies(&hook, "bulk", bulk, |_| BULK.to_string());
    let small_bodies = bodies(&hook, "small", small, |i| {
        format!("tenant-{:04}", 1 + i % SMALL_TENANTS)
    });
    let conn = ragq::queue::connect(&stack.cfg.queue.url, "ragq-bench", cancel).await?;
    let declaring = conn.create_channel().await?;
    ragq::queue::topology::declare(&declaring, &stack.cfg.queue).await?;
    let publisher = Publisher::open(&conn, "guest").await?;
    let outgoing: Vec<_> = bulk_bodies.iter().map(JobBody::outgoing).collect();
    if let (_, Some(e)) = publisher.publish_jobs(&outgoing, 512, || {}).await {
        return Err(e.into());
    }
    for _ in 0..args.workers {
        stack.spawn("worker", &[])?;
    }
    let intake = tokio::spawn(broker_drained(conn.create_channel().await?, Instant::now()));
    // The clock starts once the workers consume (the first bulk webhooks), or after 2 s.
    let warm = Instant::now();
    while receiver.count() == 0 && bulk > 0 && warm.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if bulk == 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let started = Instant::now();
    let published =
        super::latency::pace(&publisher, &small_bodies, args.small_rate, cancel).await?;
    super::wait_for_webhooks(&receiver, bulk + small, cancel).await?;
    let intake_secs = intake.await?;
    stack.stop_all().await;
    let _ = conn.close(200, "bench done".into()).await;
    drop(sim);
    let mut run = measure(&receiver, &published, bulk, started);
    run.intake_jobs_per_sec = bulk as f64 / intake_secs.max(1e-3);
    Ok(run)
}

/// Seconds from `since` until `ragq.jobs` first holds no ready message (checked every 20 ms with
/// a passive declare, which costs the broker next to nothing).
async fn broker_drained(channel: lapin::Channel, since: Instant) -> f64 {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    loop {
        let declared = channel
            .queue_declare(
                ragq::queue::topology::JOBS_QUEUE.into(),
                passive,
                Default::default(),
            )
            .await;
        match declared {
            Ok(q) if q.message_count() > 0 => {}
            _ => return since.elapsed().as_secs_f64(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bodies(hook: &str, prefix: &str, n: usize, tenant: impl Fn(usize) -> String) -> Vec<JobBody> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let body = json!({
                "id": id, "tenant": tenant(i), "kind": "batch.complete", "webhook_url": hook,
                "input": super::mix::input("batch.complete", i, 1, false),
                "tags": {"feature": prefix}
            });
            JobBody {
                id,
                kind: "batch.complete",
                body: body.to_string().into_bytes(),
            }
        })
        .collect()
}

/// Small jobs' latencies, the share of bulk jobs done by the last small webhook, and the bulk
/// throughput from `started` to its last webhook.
fn measure(
    receiver: &ragq_tools::receiver::WebhookReceiver,
    published: &HashMap<String, (Instant, f64)>,
    bulk: usize,
    started: Instant,
) -> Run {
    let arrived: Vec<(String, Instant)> = (receiver.received().into_iter())
        .filter_map(|h| {
            let v: serde_json::Value = serde_json::from_str(&h.body).ok()?;
            Some((v["data"]["job_id"].as_str()?.to_string(), h.at))
        })
        .collect();
    let small_ms: Vec<f64> = (arrived.iter())
        .filter_map(|(id, at)| {
            let (sent, _) = published.get(id)?;
            Some(at.duration_since(*sent).as_secs_f64() * 1000.0)
        })
        .collect();
    let last_small = (arrived.iter())
        .filter(|(id, _)| published.contains_key(id))
        .map(|(_, at)| *at)
        .max();
    let bulk_at: Vec<Instant> = (arrived.iter())
        .filter(|(id, _)| id.starts_with("bulk-"))
        .map(|(_, at)| *at)
        .collect();
    let bulk_done_share = match last_small {
        Some(last) if bulk > 0 => {
            bulk_at.iter().filter(|at| **at <= last).count() as f64 / bulk as f64
        }
        _ => 0.0,
    };
    let bulk_jobs_per_sec = match bulk_at.iter().max() {
        Some(end) if bulk > 0 => {
            bulk_at.len() as f64 / end.duration_since(started).as_secs_f64().max(1e-3)
        }
        _ => 0.0,
    };
    Run {
        small_ms,
        bulk_done_share,
        bulk_jobs_per_sec,
        intake_jobs_per_sec: 0.0,
    }
}

fn print(r: &FairnessReport) {
    println!(
        "\n== ragq bench --fairness: {} bulk jobs queued, {} small jobs at {}/s from {SMALL_TENANTS} tenants, {} workers",
        r.bulk_jobs, r.small_jobs, r.small_rate_per_sec, r.workers
    );
    println!(
        "{:<46} {:>9} {:>9} {:>9}",
        "small tenants, publish -> webhook (ms)", "p50", "p95", "p99"
    );
    let q = |name: &str, q: &Quantiles| {
        println!("{name:<46} {:>9.1} {:>9.1} {:>9.1}", q.p50, q.p95, q.p99)
    };
    q("alone", &r.small_alone_ms);
    q("behind the bulk backlog", &r.small_with_backlog_ms);
    println!(
        "bulk backlog done when the last small job finished: {:.0}%",
        r.bulk_done_when_small_finished * 100.0
    );
    println!(
        "bulk throughput: {:.0} jobs/s alone, {:.0} jobs/s with the small tenants",
        r.bulk_alone_jobs_per_sec, r.bulk_with_small_jobs_per_sec
    );
    println!(
        "bulk backlog taken out of the broker at {:.0} jobs/s (what a small job published behind it waits for)",
        r.bulk_intake_jobs_per_sec
    );
}
