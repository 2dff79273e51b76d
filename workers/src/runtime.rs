//! The worker process: its long-lived parts (group commit, webhook sender, spend upkeep, rate-limit
//! share and lease), the consumer of `ragq.jobs` (intake) with reconnection, the dispatcher that
//! runs jobs, and an orderly shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use ragq::config::Config;
use ragq::queue::topology::{self, JOBS_QUEUE};
use ragq::queue::{self, Publisher, QueueError};
use ragq::routing::Router;
use ragq::tenants::TenantDirectory;
use ragq::webhooks::WebhookSender;

use crate::commit::GroupCommit;
use crate::WorkerContext;

/// Runs a worker until `cancel` fires, then drains in-flight jobs within the grace period.
pub async fn run(cfg: Config, pool: PgPool, cancel: CancellationToken) -> anyhow::Result<()> {
    let router = Router::new(Arc::new(cfg.catalog.clone()), cfg.retry.clone())?;
    let tenants = TenantDirectory::new(pool.clone(), Duration::from_secs(30));
    let commit_cancel = CancellationToken::new();
    let group_commit = GroupCommit {
        pool: pool.clone(),
        max_batch: cfg.worker.commit_batch_max,
        webhook_lease: cfg.webhooks.claim_lease,
        reservation_ttl: cfg.spend.reservation_ttl,
    };
    // Intake commits on its own connection: its transactions touch tenants' dispatch state, which
    // dispatches lock, and must not hold up (or wait behind) the job path's ledger and outcomes.
    // A batch may hold every delivery in flight: intake's rate is what a small tenant's message
    // waits behind while another tenant's backlog is still in the broker.
    let intake_commit = GroupCommit {
        max_batch: usize::from(cfg.queue.intake_prefetch),
        ..group_commit.clone()
    };
    let (intakes, intake_task) = intake_commit.spawn(commit_cancel.clone());
    let (commits, commit_task) = group_commit.spawn(commit_cancel.clone());
    let (hook_tx, hook_rx) = mpsc::channel(cfg.webhooks.concurrency * 4);
    let hook_cancel = CancellationToken::new();
    let sender = WebhookSender::new(
        pool.clone(),
        tenants.clone(),
        cfg.webhooks.clone(),
        commits.clone(),
    )?;
    let hook_task = tokio::spawn(sender.run(hook_rx, hook_cancel.clone()));
    let upkeep_cancel = CancellationToken::new();
    let upkeep_task = tokio::spawn(ragq::spend::maintenance::run(
        pool.clone(),
        cfg.spend.clone(),
        cfg.retention.jobs,
        upkeep_cancel.clone(),
    ));
    let worker_id = format!("worker-{}", uuid::Uuid::new_v4().simple());
    let (vectors, site) = crate::placement::open(&cfg.retrieval.store, &worker_id).await?;
    let cache = ragq::cache::ResponseCache::start(cfg.cache.clone(), pool.clone(), vectors.clone());
    let cache_task = tokio::spawn(ragq::cache::upkeep::run(
        pool.clone(),
        vectors.clone(),
        cfg.cache.clone(),
        upkeep_cancel.clone(),
    ));
    let ctx = Arc::new(WorkerContext {
        own_amqp_user: ragq::queue::url_user(&cfg.queue.url),
        router,
        cache,
        vectors,
        cfg,
        tenants,
        commits,
        intakes,
        webhooks: hook_tx,
        pool: pool.clone(),
        job_stats: Default::default(),
        wake: Default::default(),
        publisher: Default::default(),
    });
    let share_cancel = CancellationToken::new();
    let share_task = spawn_rate_share(&ctx, &pool, &worker_id, share_cancel.clone()).await;
    // Stopped after the jobs, so that it writes their last provider calls.
    let stats_cancel = CancellationToken::new();
    let sources = ragq::telemetry::stats::Sources {
        providers: ctx.router.stats(),
        jobs: Arc::clone(&ctx.job_stats),
    };
    let stats_task = tokio::spawn(ragq::telemetry::stats::run(
        sources,
        pool.clone(),
        worker_id.clone(),
        STATS_INTERVAL,
        stats_cancel.clone(),
    ));
    if let Some(site) = site {
        if let Err(e) = crate::placement::record_and_check(&pool, &site).await {
            tracing::warn!(error = %e, "cannot compare this worker's vector store with the others'");
        }
    }
    // The lease is renewed (by the rate-share task) before the first dispatch names it.
    let jobs = TaskTracker::new();
    let dispatch_cancel = cancel.child_token();
    let dispatcher = tokio::spawn(crate::dispatch::run(
        Arc::clone(&ctx),
        worker_id.clone(),
        jobs.clone(),
        dispatch_cancel.clone(),
    ));
    let tasks = TaskTracker::new();
    let intake_drained = consume_until_cancelled(&ctx, &tasks, &cancel).await;
    dispatch_cancel.cancel();
    let _ = dispatcher.await;
    if !intake_drained || !drain(&ctx, &jobs).await {
        tracing::warn!(
            in_flight = jobs.len(),
            "shutdown grace over; unfinished jobs are queued again when this worker's lease ends"
        );
        commit_cancel.cancel();
    }
    // The webhook sender records attempts through the commit task, so it stops first; the commit
    // task then ends once every handle is gone and its queue is written.
    hook_cancel.cancel();
    let _ = hook_task.await;
    upkeep_cancel.cancel();
    let _ = upkeep_task.await;
    let _ = cache_task.await;
    share_cancel.cancel();
    let _ = share_task.await;
    stats_cancel.cancel();
    let _ = stats_task.await;
    drop(ctx);
    let _ = commit_task.await;
    let _ = intake_task.await;
    Ok(())
}

/// How often provider call stats are written for the dashboard: what a crash can lose of them.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// This worker's share of the models' rate limits, kept from the live-worker heartbeat.
async fn spawn_rate_share(
    ctx: &Arc<WorkerContext>,
    pool: &PgPool,
    worker_id: &str,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if let Ok(live) = ragq::routing::share::heartbeat(pool, worker_id).await {
        ctx.router.set_rate_share(1.0 / live.max(1) as f64);
    }
    let share_ctx = Arc::clone(ctx);
    tokio::spawn(ragq::routing::share::run(
        pool.clone(),
        worker_id.to_string(),
        move |share| share_ctx.router.set_rate_share(share),
        cancel,
    ))
}

/// Consumes, reconnecting with backoff whenever the connection is lost. Once cancelled, waits for
/// in-flight jobs within the grace period (once, whichever state it was in) and says whether they
/// all finished.
async fn consume_until_cancelled(
    ctx: &Arc<WorkerContext>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        let Ok(conn) = queue::connect(&ctx.cfg.queue.url, "ragq-worker", cancel).await else {
            break;
        };
        match consume(ctx, &conn, tasks, cancel).await {
            Ok(()) => {
                // Closing the connection requeues unacked messages: in-flight jobs finish first.
                let drained = drain(ctx, tasks).await;
                let _ = conn.close(200, "shutdown".into()).await;
                return drained;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "lost RabbitMQ; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    drain(ctx, tasks).await
}

/// Waits for in-flight jobs within the grace period; nothing is spawned once this is called.
async fn drain(ctx: &WorkerContext, tasks: &TaskTracker) -> bool {
    tasks.close();
    tokio::time::timeout(ctx.cfg.worker.shutdown_grace, tasks.wait())
        .await
        .is_ok()
}

async fn consume(
    ctx: &Arc<WorkerContext>,
    conn: &Connection,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(), QueueError> {
    let setup = conn.create_channel().await?;
    topology::declare(&setup, &ctx.cfg.queue).await?;
    let user = queue::url_user(&ctx.cfg.queue.url);
    let publisher = Publisher::open(conn, &user).await?;
    if let Ok(mut current) = ctx.publisher.write() {
        *current = Some(publisher.clone());
    }
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(ctx.cfg.queue.intake_prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("ragq-worker-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            JOBS_QUEUE.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(
        intake_prefetch = ctx.cfg.queue.intake_prefetch,
        concurrency = ctx.cfg.queue.prefetch,
        "worker taking in {JOBS_QUEUE}"
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let ctx = Arc::clone(ctx);
                    let publisher = publisher.clone();
                    tasks.spawn(async move { crate::delivery::handle(&ctx, &publisher, delivery).await });
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(QueueError::Amqp(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Closed, "consumer stream ended")))),
            }
        }
    }
}
