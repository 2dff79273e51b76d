//! The worker runtime and the job handlers (one module per job kind).
//!
//! A worker consumes `ragq.jobs` with a bounded prefetch and manual acks. For each delivery it
//! validates the message, checks the publisher against the tenant, claims the job in Postgres, runs
//! the handler, commits the outcome, and only then settles the delivery:
//!
//! | outcome                                   | delivery                                  |
//! | ----------------------------------------- | ----------------------------------------- |
//! | succeeded / failed for good (committed)   | ack                                       |
//! | retryable failure (job back to `queued`)  | publish to a retry queue, then ack        |
//! | poison or unauthorized message            | publish to the DLQ with reason, then ack  |
//! | job already finished                      | ack                                       |
//! | same job running under another delivery   | publish to a retry queue, then ack        |
//! | database gone at shutdown                 | left unacked: the broker redelivers it    |
//!
//! A worker killed at any instant loses nothing: unacked messages are redelivered, and the claim
//! rules make the redelivery run the job again only if its outcome was not committed.

pub mod batch_complete;
pub mod commit;
pub mod handler;
pub mod ingest;
pub mod rag_answer;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::jobs::{JobInput, JobKind, JobMessage, PoisonReason};
use crate::queue::topology::{self, DEAD_LETTER_EXCHANGE, JOBS_QUEUE};
use crate::queue::{self, Publisher, QueueError};
use crate::retrieval::LazyStore;
use crate::routing::{CallScope, Router};
use crate::spend::budget::{Admission, Estimate};
use crate::tenants::{Tenant, TenantDirectory};
use crate::webhooks::{PendingDelivery, WebhookSender};

use commit::{
    Claim, ClaimRequest, CommitError, CommitHandle, Finish, FinishResult, GroupCommit, NewDelivery,
    Outcome,
};
use handler::{AttemptOf, JobContext, JobError};

/// Everything a job task needs, shared by all tasks of one worker.
struct WorkerContext {
    cfg: Config,
    router: Router,
    tenants: TenantDirectory,
    commits: CommitHandle,
    webhooks: mpsc::Sender<PendingDelivery>,
    vectors: LazyStore,
}

/// How a delivery is settled once its processing is over.
#[derive(Debug, PartialEq)]
enum Disposition {
    Ack,
    DeadLetter(String),
    Retry(Duration),
    /// Leave it unacked; the broker redelivers when the channel closes.
    Abandon,
}

/// Runs a worker until `cancel` fires, then drains in-flight jobs within the grace period.
pub async fn run(cfg: Config, pool: PgPool, cancel: CancellationToken) -> anyhow::Result<()> {
    let tenants = TenantDirectory::new(pool.clone(), Duration::from_secs(30));
    let commit_cancel = CancellationToken::new();
    let (commits, commit_task) = GroupCommit {
        pool: pool.clone(),
        max_batch: cfg.worker.commit_batch_max,
        webhook_lease: cfg.webhooks.claim_lease,
        reservation_ttl: cfg.spend.reservation_ttl,
    }
    .spawn(commit_cancel.clone());
    let (hook_tx, hook_rx) = mpsc::channel(cfg.webhooks.concurrency * 4);
    let hook_cancel = CancellationToken::new();
    let sender = WebhookSender::new(
        pool.clone(),
        tenants.clone(),
        cfg.webhooks.clone(),
        commits.clone(),
    );
    let hook_task = tokio::spawn(sender.run(hook_rx, hook_cancel.clone()));
    let upkeep_cancel = CancellationToken::new();
    let upkeep_task = tokio::spawn(crate::spend::maintenance::run(
        pool.clone(),
        cfg.spend.clone(),
        upkeep_cancel.clone(),
    ));
    let ctx = Arc::new(WorkerContext {
        router: Router::new(Arc::new(cfg.catalog.clone()), cfg.retry.clone()),
        vectors: LazyStore::new(cfg.retrieval.store.clone()),
        cfg,
        tenants,
        commits,
        webhooks: hook_tx,
    });
    // This worker's share of the models' rate limits, from the live-worker heartbeat.
    let worker_id = format!("worker-{}", uuid::Uuid::new_v4().simple());
    let first_share = crate::routing::share::heartbeat(&pool, &worker_id).await;
    if let Ok(live) = first_share {
        ctx.router.set_rate_share(1.0 / live.max(1) as f64);
    }
    let share_cancel = CancellationToken::new();
    let share_ctx = Arc::clone(&ctx);
    let share_task = tokio::spawn(crate::routing::share::run(
        pool.clone(),
        worker_id,
        move |share| share_ctx.router.set_rate_share(share),
        share_cancel.clone(),
    ));
    let tasks = TaskTracker::new();
    consume_until_cancelled(&ctx, &tasks, &cancel).await;

    tasks.close();
    let grace = ctx.cfg.worker.shutdown_grace;
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tasks.len(),
            "shutdown grace over; unfinished jobs will be redelivered"
        );
        commit_cancel.cancel();
    }
    // The webhook sender records attempts through the commit task, so it stops first; the commit
    // task then ends once every handle is gone and its queue is written.
    hook_cancel.cancel();
    let _ = hook_task.await;
    upkeep_cancel.cancel();
    let _ = upkeep_task.await;
    share_cancel.cancel();
    let _ = share_task.await;
    drop(ctx);
    let _ = commit_task.await;
    Ok(())
}

/// Consumes, reconnecting with backoff whenever the connection is lost.
async fn consume_until_cancelled(
    ctx: &Arc<WorkerContext>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        let conn = match queue::connect(&ctx.cfg.queue.url, "ragq-worker", cancel).await {
            Ok(c) => c,
            Err(_) => return,
        };
        match consume(ctx, &conn, tasks, cancel).await {
            Ok(()) => {
                // Cancelled: wait for in-flight jobs before closing (closing requeues unacked ones).
                // `wait` only resolves on a closed tracker; nothing is spawned after cancellation.
                tasks.close();
                let _ = tokio::time::timeout(ctx.cfg.worker.shutdown_grace, tasks.wait()).await;
                let _ = conn.close(200, "shutdown".into()).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "lost RabbitMQ; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
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
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(ctx.cfg.queue.prefetch, BasicQosOptions::default())
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
        prefetch = ctx.cfg.queue.prefetch,
        "worker consuming {JOBS_QUEUE}"
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
                    tasks.spawn(async move { handle(&ctx, &publisher, delivery).await });
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(QueueError::Amqp(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Closed, "consumer stream ended")))),
            }
        }
    }
}

/// Processes one delivery and settles it.
async fn handle(ctx: &WorkerContext, publisher: &Publisher, delivery: Delivery) {
    let disposition = process(ctx, &delivery).await;
    let settled = match &disposition {
        Disposition::Ack => Ok(()),
        Disposition::DeadLetter(reason) => {
            tracing::warn!(reason = %reason, "dead-lettering message");
            publisher
                .publish_dead_letter(
                    DEAD_LETTER_EXCHANGE,
                    delivery.routing_key.as_str(),
                    &delivery.data,
                    reason,
                )
                .await
        }
        Disposition::Retry(delay) => {
            let tier = topology::retry_tier(&ctx.cfg.queue.retry_delays, *delay);
            publisher
                .publish(
                    "",
                    &topology::retry_queue(tier),
                    &delivery.data,
                    &Default::default(),
                )
                .await
        }
        Disposition::Abandon => return,
    };
    match settled {
        Ok(()) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered and deduplicated");
            }
        }
        // Not acked: the broker redelivers it when this channel closes, or after reconnecting.
        Err(e) => {
            tracing::warn!(error = %e, ?disposition, "cannot settle delivery; leaving it unacked")
        }
    }
}

async fn process(ctx: &WorkerContext, delivery: &Delivery) -> Disposition {
    let job = match JobMessage::parse(&delivery.data, ctx.cfg.queue.max_message_bytes) {
        Ok(job) => job,
        Err(reason) => return dead_letter(&reason),
    };
    let span = tracing::info_span!("job", job_id = %job.id, tenant = %job.tenant, kind = job.kind.as_str());
    async move {
        let tenant = match authorize(ctx, delivery, &job).await {
            Ok(tenant) => tenant,
            Err(Some(reason)) => return dead_letter(&reason),
            Err(None) => return Disposition::Abandon,
        };
        if let Some(d) = pass_on_if_store_held_elsewhere(ctx, &job).await {
            return d;
        }
        let input = job.typed_input();
        let (intents, declared_calls) = match &input {
            Ok(input) => claim_intents(ctx, &job, input),
            Err(_) => (Vec::new(), 0),
        };
        let job = Arc::new(job);
        let claim = ClaimRequest {
            estimate: input
                .as_ref()
                .map_or_else(|_| Estimate::default(), |i| estimate(ctx, &job, i)),
            job: Arc::clone(&job),
            redelivered: delivery.redelivered,
            intents,
        };
        let (attempt, admission) = match ctx.commits.claim(claim).await {
            Ok(Claim::Run { attempt, admission }) => (attempt, admission),
            Ok(Claim::AlreadyFinished) => return Disposition::Ack,
            Ok(Claim::Busy) => return Disposition::Retry(ctx.cfg.queue.retry_delays[0]),
            // The database refused this job's rows: retrying cannot help, so it is poison.
            Err(CommitError::Refused(reason)) => {
                return Disposition::DeadLetter(format!(
                    "refused: the database rejected the job: {reason}"
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim job; it will be redelivered");
                return Disposition::Abandon;
            }
        };
        let attempt = Attempt {
            number: attempt,
            admission,
            input,
            declared_calls,
        };
        run_attempt(ctx, &job, &tenant.plan, attempt).await
    }
    .instrument(span)
    .await
}

/// An embedded vector store serves one process. A worker that cannot take it hands retrieval jobs
/// back through a retry queue before claiming them (no attempt is spent), so they reach the worker
/// that holds it. Several workers that all need retrieval should use a Qdrant server instead.
async fn pass_on_if_store_held_elsewhere(
    ctx: &WorkerContext,
    job: &JobMessage,
) -> Option<Disposition> {
    if !matches!(job.kind, JobKind::Ingest | JobKind::RagAnswer) {
        return None;
    }
    match ctx.vectors.get().await {
        Err(e @ crate::retrieval::StoreError::Locked { .. }) => {
            tracing::info!(reason = %e, "passing a retrieval job on to the worker holding the vector store");
            Some(Disposition::Retry(ctx.cfg.queue.retry_delays[0]))
        }
        _ => None,
    }
}

/// The job's worst-case cost, to reserve against its budgets.
fn estimate(ctx: &WorkerContext, job: &JobMessage, input: &JobInput) -> Estimate {
    let prices = ctx.router.candidate_prices(&job.policy);
    let max_output = ctx.cfg.spend.default_max_output_tokens;
    let shadow = ctx.router.shadow_price(&job.policy);
    match input {
        JobInput::Batch(input) => {
            let own = batch_complete::estimate(input, &prices, max_output);
            // A shadow copy may be made of every call: its worst case is reserved too.
            match shadow {
                Some(p) => own.plus(&batch_complete::estimate(input, &[p], max_output)),
                None => own,
            }
        }
        JobInput::Ingest(input) => {
            let r = &ctx.cfg.retrieval;
            ingest::estimate(input, r.chunk, embedding_price(ctx), r.embed_batch)
        }
        JobInput::Rag(input) => {
            let shape = rag_answer::AnswerShape {
                window: ctx.router.min_context_window(&job.policy).unwrap_or(0),
                max_tokens: input
                    .max_tokens
                    .unwrap_or(ctx.cfg.retrieval.answer_max_tokens),
                min_context_tokens: ctx.cfg.retrieval.chunk.tokens as u64,
            };
            let own = rag_answer::estimate(input, shape, &prices, embedding_price(ctx));
            match shadow {
                Some(p) => own.plus(&rag_answer::estimate(
                    input,
                    shape,
                    &[p],
                    crate::spend::Price::default(),
                )),
                None => own,
            }
        }
    }
}

/// Intents for the calls an attempt makes first, recorded by its claim so that those calls need
/// no commit of their own; and how many calls they cover (see [`JobContext::declared_calls`]).
fn claim_intents(
    ctx: &WorkerContext,
    job: &JobMessage,
    input: &JobInput,
) -> (Vec<crate::spend::intents::CallIntent>, usize) {
    // The claim numbers the attempt.
    let of = AttemptOf { job, attempt: 0 };
    match input {
        JobInput::Batch(input) => batch_complete::claim_intents(
            of,
            &ctx.router,
            input,
            ctx.cfg.spend.default_max_output_tokens,
        ),
        JobInput::Rag(input) => rag_answer::claim_intents(
            of,
            &ctx.router,
            input,
            ctx.cfg.retrieval.embedding_model.as_deref(),
        ),
        JobInput::Ingest(_) => (Vec::new(), 0),
    }
}

fn embedding_price(ctx: &WorkerContext) -> crate::spend::Price {
    ctx.cfg
        .catalog
        .model(
            ctx.cfg
                .retrieval
                .embedding_model
                .as_deref()
                .unwrap_or_default(),
        )
        .map(|m| m.price)
        .unwrap_or_default()
}

fn dead_letter(reason: &PoisonReason) -> Disposition {
    Disposition::DeadLetter(format!("{}: {reason}", reason.code()))
}

/// Checks the tenant exists and the AMQP user (validated by RabbitMQ) may publish for it.
/// `Err(None)` means the check itself could not be made (database down).
async fn authorize(
    ctx: &WorkerContext,
    delivery: &Delivery,
    job: &JobMessage,
) -> Result<Tenant, Option<PoisonReason>> {
    let tenant = match ctx.tenants.get(&job.tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Some(PoisonReason::UnknownTenant(job.tenant.clone()))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load tenant");
            return Err(None);
        }
    };
    let Some(user) = delivery.properties.user_id().as_ref().map(|u| u.as_str()) else {
        return Err(Some(PoisonReason::Unauthorized(
            "message has no user_id property; publish with user_id set to your AMQP user".into(),
        )));
    };
    let trusted = ctx.cfg.queue.trusted_publishers.iter().any(|t| t == user);
    if trusted || tenant.amqp_user.as_deref() == Some(user) {
        Ok(tenant)
    } else {
        Err(Some(PoisonReason::Unauthorized(format!(
            "AMQP user `{user}` may not publish for tenant `{}`",
            job.tenant
        ))))
    }
}

/// An attempt the claim granted, with the job's input parsed once.
struct Attempt {
    number: i32,
    admission: Admission,
    input: Result<JobInput, String>,
    /// Calls whose intents the claim recorded.
    declared_calls: usize,
}

/// Runs one attempt and commits its outcome; returns how to settle the delivery.
async fn run_attempt(
    ctx: &WorkerContext,
    job: &JobMessage,
    plan: &str,
    granted: Attempt,
) -> Disposition {
    let attempt = granted.number;
    let max_attempts = i32::try_from(ctx.cfg.worker.max_attempts).unwrap_or(i32::MAX);
    let result = match granted.admission {
        _ if attempt > max_attempts => Err(JobError::permanent(
            "attempts_exhausted",
            format!(
                "claimed {attempt} times (limit {max_attempts}); previous attempts did not finish"
            ),
        )),
        Admission::Denied { reason } => Err(JobError::permanent("budget_exceeded", reason)),
        Admission::Admitted { cost_cap_micros } => {
            let context = JobContext {
                job,
                attempt,
                router: &ctx.router,
                commits: &ctx.commits,
                scope: CallScope {
                    plan: Some(plan),
                    cost_cap_micros,
                },
                default_max_output_tokens: ctx.cfg.spend.default_max_output_tokens,
                retrieval: &ctx.cfg.retrieval,
                vectors: &ctx.vectors,
                declared_calls: granted.declared_calls,
            };
            run_handler(&context, granted.input).await
        }
    };
    let (finish, delay) = match result {
        Ok(value) => (Finish::Succeeded(value), None),
        Err(e) if e.retryable && attempt < max_attempts => {
            let delay = e
                .retry_after
                .unwrap_or_else(|| job_retry_delay(&ctx.cfg, attempt));
            tracing::info!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "attempt failed; retrying later");
            (
                Finish::Retry {
                    code: e.code,
                    message: e.message,
                },
                Some(delay),
            )
        }
        Err(e) => {
            tracing::info!(error = %e, attempt, "job failed");
            let message = if e.retryable {
                format!("attempts exhausted; last error: {}", e.message)
            } else {
                e.message
            };
            (
                Finish::Failed {
                    code: e.code,
                    message,
                },
                None,
            )
        }
    };
    let webhook = job
        .webhook_url
        .as_ref()
        .and_then(|url| webhook_for(job, attempt, &finish, url));
    let outcome = Outcome {
        tenant_id: job.tenant.clone(),
        job_id: job.id.clone(),
        attempt,
        finish,
        webhook: webhook.clone(),
    };
    match ctx.commits.finish(outcome).await {
        Ok(FinishResult::Committed) => {
            if let Some(w) = webhook {
                let pending = PendingDelivery {
                    id: w.id,
                    tenant_id: job.tenant.clone(),
                    url: w.url,
                    payload: w.payload,
                    attempts: 0,
                };
                // A full channel is fine: the poller sends it when its lease ends.
                let _ = ctx.webhooks.try_send(pending);
            }
            delay.map_or(Disposition::Ack, Disposition::Retry)
        }
        Ok(FinishResult::Fenced) => {
            tracing::warn!(
                attempt,
                "job was taken over by another delivery; dropping this attempt's outcome"
            );
            Disposition::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot commit outcome");
            Disposition::Abandon
        }
    }
}

async fn run_handler(
    ctx: &JobContext<'_>,
    input: Result<JobInput, String>,
) -> Result<serde_json::Value, JobError> {
    if !ctx.router.has_policy(&ctx.job.policy) {
        return Err(JobError::permanent(
            "unknown_policy",
            format!("unknown routing policy `{}`", ctx.job.policy),
        ));
    }
    match input.map_err(JobError::invalid)? {
        JobInput::Batch(input) => batch_complete::run(ctx, input).await,
        JobInput::Ingest(input) => ingest::run(ctx, input).await,
        JobInput::Rag(input) => rag_answer::run(ctx, input).await,
    }
}

/// Delay before the next attempt of a job: the retry tiers, one step per attempt.
fn job_retry_delay(cfg: &Config, attempt: i32) -> Duration {
    let tiers = &cfg.queue.retry_delays;
    let step = usize::try_from(attempt.max(1) - 1)
        .unwrap_or(0)
        .min(tiers.len() - 1);
    tiers[step]
}

/// The webhook for a terminal outcome (none for a retry).
fn webhook_for(job: &JobMessage, attempt: i32, finish: &Finish, url: &str) -> Option<NewDelivery> {
    let (event_type, state, body) = match finish {
        Finish::Succeeded(result) => ("job.succeeded", "succeeded", json!({"result": result})),
        Finish::Failed { code, message } => (
            "job.failed",
            "failed",
            json!({"error": {"code": code, "message": message}}),
        ),
        Finish::Retry { .. } => return None,
    };
    let mut data = json!({
        "job_id": job.id, "tenant": job.tenant, "kind": job.kind.as_str(),
        "state": state, "attempts": attempt, "tags": job.tags,
    });
    if let (Some(data), Some(body)) = (data.as_object_mut(), body.as_object()) {
        data.extend(body.clone());
    }
    let payload =
        json!({"type": event_type, "timestamp": chrono::Utc::now().to_rfc3339(), "data": data});
    Some(NewDelivery {
        // The thread-local CSPRNG, not `new_v4`'s getrandom syscall per id: this runs once per job.
        id: format!(
            "msg_{}",
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .simple()
        ),
        event_type: event_type.into(),
        url: url.to_string(),
        payload: payload.to_string(),
    })
}
