//! `ragq bench --rate R`: end-to-end latency below saturation. Workers start first; jobs are then
//! published at R per second (open loop: the pace does not wait for the system), each job's
//! publish time recorded. For every job it measures publish → verified webhook (end to end),
//! publish → claim (queue wait), claim → outcome commit (in the worker), and the platform's own
//! overhead: end to end minus the time the provider took to answer the job's call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::stats::{quantiles, Quantiles};
use super::{bench_config, say, setup, BenchArgs};
use ragq::queue::publisher::{OutgoingJob, Publisher};
use ragq_tools::stack::process_usage;

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub jobs: usize,
    pub rate_per_sec: f64,
    pub workers: usize,
    pub provider_latency_ms: u64,
    pub end_to_end_ms: Quantiles,
    pub queue_wait_ms: Quantiles,
    pub in_worker_ms: Quantiles,
    pub overhead_ms: Quantiles,
    pub worker_cpu_us_per_job: f64,
    /// The broker and the database alone at the same rate, after the workers stop.
    pub floor: Option<super::floor::FloorReport>,
}

pub async fn run(args: &BenchArgs, rate: f64, cancel: &CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0, "--rate must be positive");
    let super::Setup {
        sim,
        receiver,
        mut stack,
        bodies,
    } = setup(args, cancel, &bench_config).await?;
    let mut pids = Vec::new();
    for _ in 0..args.workers {
        pids.push(stack.spawn("worker", &[])?);
    }
    // Let the workers connect and start consuming before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before: f64 = pids
        .iter()
        .filter_map(|p| process_usage(*p))
        .map(|u| u.0)
        .sum();
    let conn = ragq::queue::connect(&stack.cfg.queue.url, "ragq-bench", cancel).await?;
    let publisher = Publisher::open(&conn, "guest").await?;
    say(
        args,
        format_args!("publishing {} jobs at {rate} per second", args.jobs),
    );
    let published = pace(&publisher, &bodies, rate, cancel).await?;
    super::wait_for_webhooks(&receiver, args.jobs, cancel).await?;
    let cpu_after: f64 = pids
        .iter()
        .filter_map(|p| process_usage(*p))
        .map(|u| u.0)
        .sum();
    stack.stop_all().await;
    let floor = if args.no_baseline {
        None
    } else {
        say(
            args,
            format_args!("measuring the broker and a commit alone at {rate} per second"),
        );
        Some(super::floor::measure(&conn, &stack.pool, &bodies, rate, cancel).await?)
    };
    let _ = conn.close(200, "bench done".into()).await;

    let times = split_times(&stack.pool, &receiver, &published).await?;
    let report = LatencyReport {
        jobs: args.jobs,
        rate_per_sec: rate,
        workers: args.workers,
        provider_latency_ms: args.latency_ms,
        end_to_end_ms: quantiles(times.e2e),
        queue_wait_ms: quantiles(times.queue),
        in_worker_ms: quantiles(times.worker),
        overhead_ms: quantiles(times.overhead),
        worker_cpu_us_per_job: (cpu_after - cpu_before) * 1e6 / args.jobs as f64,
        floor,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report, rate);
    }
    drop(sim);
    cancel.cancel();
    Ok(())
}

/// Each job's time end to end, waiting in the queue, in the worker, and end to end less the
/// provider's latency, in milliseconds.
#[derive(Default)]
struct SplitTimes {
    e2e: Vec<f64>,
    queue: Vec<f64>,
    worker: Vec<f64>,
    overhead: Vec<f64>,
}

/// Splits every succeeded job's time from its publish, its claim and outcome in Postgres, its
/// provider call, and its webhook's arrival.
async fn split_times(
    pool: &sqlx::PgPool,
    receiver: &ragq_tools::receiver::WebhookReceiver,
    published: &HashMap<String, (Instant, f64)>,
) -> anyhow::Result<SplitTimes> {
    let rows: Vec<(String, f64, f64, f64)> = sqlx::query_as(
        "SELECT j.id, extract(epoch FROM j.started_at)::float8, extract(epoch FROM j.finished_at)::float8, \
           coalesce((SELECT max(latency_ms) FROM provider_calls p \
                     WHERE p.tenant_id = j.tenant_id AND p.job_id = j.id AND p.attempt = j.attempts), 0)::float8 \
         FROM jobs j WHERE j.state = 'succeeded'",
    )
    .fetch_all(pool)
    .await?;
    let arrived: HashMap<String, Instant> = receiver
        .received()
        .into_iter()
        .filter_map(|h| {
            let v: serde_json::Value = serde_json::from_str(&h.body).ok()?;
            Some((v["data"]["job_id"].as_str()?.to_string(), h.at))
        })
        .collect();
    let mut t = SplitTimes::default();
    for (id, started, finished, provider_ms) in rows {
        let (Some((sent_at, sent_wall)), Some(got)) = (published.get(&id), arrived.get(&id)) else {
            continue;
        };
        let total = got.duration_since(*sent_at).as_secs_f64() * 1000.0;
        t.e2e.push(total);
        t.queue.push((started - sent_wall) * 1000.0);
        t.worker.push((finished - started) * 1000.0);
        t.overhead.push(total - provider_ms);
    }
    Ok(t)
}

fn print(report: &LatencyReport, rate: f64) {
    let q = |name: &str, q: &Quantiles| {
        println!("{name:<44} {:>8.2} {:>8.2} {:>8.2}", q.p50, q.p95, q.p99)
    };
    println!(
        "\n== ragq bench --rate {rate}: {} jobs, {} workers, provider latency {} ms",
        report.jobs, report.workers, report.provider_latency_ms
    );
    println!("{:<44} {:>8} {:>8} {:>8}", "ms", "p50", "p95", "p99");
    q(
        "end to end (publish -> verified webhook)",
        &report.end_to_end_ms,
    );
    q("queue wait (publish -> claim)", &report.queue_wait_ms);
    q(
        "in the worker (claim -> outcome committed)",
        &report.in_worker_ms,
    );
    q(
        "platform overhead (end to end - provider)",
        &report.overhead_ms,
    );
    println!(
        "{:<44} {:>8.0}",
        "worker CPU per job (us)", report.worker_cpu_us_per_job
    );
    if let Some(f) = &report.floor {
        println!("-- the same rate, nothing of ragq in between (the floor):");
        q("broker alone (publish -> delivery)", &f.broker_ms);
        q("one durable commit alone (INSERT)", &f.commit_ms);
    }
}

/// Publishes at `rate` jobs per second in 10 ms slices; returns each job's publish instant and
/// wall-clock time (seconds since the epoch, to compare with Postgres timestamps).
pub(super) async fn pace(
    publisher: &Publisher,
    bodies: &[super::JobBody],
    rate: f64,
    cancel: &CancellationToken,
) -> anyhow::Result<HashMap<String, (Instant, f64)>> {
    let started = Instant::now();
    let mut sent = HashMap::with_capacity(bodies.len());
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while next < bodies.len() {
        tick.tick().await;
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(bodies.len());
        let slice = &bodies[next..due.max(next)];
        let outgoing: Vec<OutgoingJob<'_>> = slice.iter().map(super::JobBody::outgoing).collect();
        let wall = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        let at = Instant::now();
        for b in slice {
            sent.insert(b.id.clone(), (at, wall));
        }
        if let (_, Some(e)) = publisher.publish_jobs(&outgoing, 512, || {}).await {
            return Err(e.into());
        }
        next = due.max(next);
    }
    Ok(sent)
}
