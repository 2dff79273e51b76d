//! The latency floor under `ragq bench --rate R`: what the broker and the database take on their own
//! at the same rate, with nothing of ragq in between. A job crosses the broker once and waits for
//! two durable commits (its claim, then its outcome), so these set the least its overhead can be on
//! this machine; a tail in them is the machine's, not the platform's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::stats::{quantiles, Quantiles};
use super::JobBody;
use ragq::queue::publisher::{Envelope, Publisher};

#[derive(Debug, Serialize)]
pub struct FloorReport {
    /// Publish → delivery to a consumer, through a fresh quorum queue (persistent, confirms,
    /// manual acks), the same bodies at the same rate.
    pub broker_ms: Quantiles,
    /// One durable single-row INSERT (its own transaction, so one WAL flush) on the run's database.
    pub commit_ms: Quantiles,
}

pub async fn measure(
    conn: &lapin::Connection,
    pool: &PgPool,
    bodies: &[JobBody],
    rate: f64,
    cancel: &CancellationToken,
) -> anyhow::Result<FloorReport> {
    Ok(FloorReport {
        broker_ms: broker(conn, bodies, rate, cancel).await?,
        commit_ms: commits(pool, bodies.len(), rate, cancel).await?,
    })
}

/// Runs `step(i)` for `0..n` at `rate` per second (open loop, 1 ms slices), one at a time; returns
/// each step's duration in milliseconds.
async fn paced<F, Fut>(
    n: usize,
    rate: f64,
    cancel: &CancellationToken,
    mut step: F,
) -> anyhow::Result<Vec<f64>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut took = Vec::with_capacity(n);
    while took.len() < n {
        tick.tick().await;
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
        while took.len() < due {
            let at = Instant::now();
            step(took.len()).await?;
            took.push(at.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(took)
}

async fn broker(
    conn: &lapin::Connection,
    bodies: &[JobBody],
    rate: f64,
    cancel: &CancellationToken,
) -> anyhow::Result<Quantiles> {
    let queue = format!("ragq.bench.floor.{}", std::process::id());
    let channel = super::quorum_queue(conn, &queue).await?;
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "ragq-bench-floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let log = received.clone();
    let expected = bodies.len();
    let consuming = tokio::spawn(async move {
        for _ in 0..expected {
            let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .context("floor consumer stalled")?
                .context("floor consumer ended")??;
            let at = Instant::now();
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string());
            if let (Some(id), Ok(mut log)) = (id, log.lock()) {
                log.insert(id, at);
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        anyhow::Ok(())
    });
    let publisher = Publisher::open(conn, "guest").await?;
    let mut sent = HashMap::with_capacity(bodies.len());
    let (publisher, queue_name, sent_at) = (&publisher, queue.as_str(), &mut sent);
    paced(bodies.len(), rate, cancel, move |i| {
        let b = &bodies[i];
        sent_at.insert(b.id.clone(), Instant::now());
        let env = Envelope {
            message_id: Some(&b.id),
            headers: Vec::new(),
        };
        async move { Ok(publisher.publish("", queue_name, &b.body, &env).await?) }
    })
    .await?;
    consuming.await??;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let received = received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(quantiles(
        sent.iter()
            .filter_map(|(id, at)| Some(received.get(id)?.duration_since(*at).as_secs_f64() * 1e3))
            .collect(),
    ))
}

async fn commits(
    pool: &PgPool,
    n: usize,
    rate: f64,
    cancel: &CancellationToken,
) -> anyhow::Result<Quantiles> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_commit_floor (n bigint PRIMARY KEY, at timestamptz NOT NULL)")
        .execute(pool)
        .await?;
    let took = paced(n, rate, cancel, |i| async move {
        sqlx::query("INSERT INTO bench_commit_floor (n, at) VALUES ($1, now())")
            .bind(i as i64)
            .execute(pool)
            .await?;
        Ok(())
    })
    .await?;
    sqlx::query("DROP TABLE bench_commit_floor")
        .execute(pool)
        .await?;
    Ok(quantiles(took))
}
