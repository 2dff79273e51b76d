//! The dispatcher: which queued job a worker runs next. Fair share between tenants lives here.
//!
//! Each worker runs at most `queue.prefetch` attempts at once. Whenever slots are free it takes
//! that many jobs from Postgres in one short transaction ([`take`]): the tenants with ready work
//! and the least virtual time are locked (skipping those another dispatch holds: it serves them,
//! and a dispatch never waits), the slots go one at a time to the tenant
//! whose virtual time after the job is least (a job adds 1 / weight, so a tenant of weight 3 gets
//! three slots to another's one), within each tenant's in-flight cap, and each tenant's jobs come
//! best priority first. A tenant that had nothing queued starts at the least virtual time of those
//! waiting, so a newcomer is served in the next round, and an idle spell earns no burst.
//!
//! The dispatch commits asynchronously (no fsync wait): a job only runs once its admission commits
//! synchronously, which makes the dispatch before it durable, and admission checks that the attempt
//! still holds the job. Jobs of a worker whose lease ended are queued again by [`sweep`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use ragq::jobs::{JobMessage, Priority};

use crate::attempt::Attempt;
use crate::commit::shares::{self, Deltas};
use crate::WorkerContext;

/// The channel intake notifies when it queued jobs, so idle dispatchers on other workers wake.
pub const READY_CHANNEL: &str = "ragq_jobs_ready";
/// How often an idle dispatcher looks anyway: delayed retries coming due, a missed notification.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// The longest a dispatch waits for a batch of slots to free up.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// How often jobs of workers whose lease ended are looked for.
const SWEEP_EVERY: Duration = ragq::routing::share::HEARTBEAT;

/// One job a dispatch took, as stored.
#[derive(Debug)]
struct Taken {
    tenant_id: String,
    id: String,
    kind: String,
    policy: String,
    input: serde_json::Value,
    tags: serde_json::Value,
    webhook_url: Option<String>,
    attempts: i32,
    priority: i16,
    traceparent: Option<String>,
    redaction: Option<serde_json::Value>,
    cache: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
}

/// Dispatches until `cancel`, spawning each attempt on `tasks`; `worker_id` is this worker's lease.
pub async fn run(
    ctx: Arc<WorkerContext>,
    worker_id: String,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    let concurrency = usize::from(ctx.cfg.queue.prefetch.max(1));
    let slots = Arc::new(Semaphore::new(concurrency));
    let batch = (concurrency / 4).max(1);
    let listener = tokio::spawn(listen(Arc::clone(&ctx), cancel.clone()));
    let mut conn: Option<PgConnection> = None;
    let mut last_sweep = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(wanted) = free_slots(&slots, batch, &cancel).await else {
            break;
        };
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = std::time::Instant::now();
            let swept = match connection(&ctx, &mut conn).await {
                Ok(c) => sweep(c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = swept {
                conn = None;
                tracing::warn!(error = %e, "cannot look for the jobs of departed workers");
            }
        }
        let taken = match connection(&ctx, &mut conn).await {
            Ok(c) => take(c, wanted, &worker_id).await,
            Err(e) => Err(e),
        };
        let Dispatched { jobs, contended } = match taken {
            Ok(dispatched) => {
                delay = Duration::from_millis(100);
                dispatched
            }
            Err(e) => {
                conn = None;
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot dispatch jobs");
                slots.add_permits(wanted);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let got = jobs.len();
        slots.add_permits(wanted - got);
        for job in jobs {
            let ctx = Arc::clone(&ctx);
            let slots = Arc::clone(&slots);
            tasks.spawn(async move {
                run_one(&ctx, job).await;
                slots.add_permits(1);
            });
        }
        if contended {
            // Every ready tenant is being served by another dispatch, which ends in a moment.
            slots_retry_pause().await;
        } else if got < wanted {
            // Nothing more is ready: wait for intake, a notification, or the next poll.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ctx.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }
    listener.abort();
}

/// The pause before trying again when other dispatches held every ready tenant.
async fn slots_retry_pause() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Waits for a batch of free slots and takes every free one; `None` once cancelled. A batch is a
/// quarter of the worker's slots, or whatever is free after [`BATCH_WAIT`]: under load a dispatch
/// then serves several slots at once, and when few jobs run there is no wait at all.
async fn free_slots(slots: &Semaphore, batch: usize, cancel: &CancellationToken) -> Option<usize> {
    let first = tokio::select! {
        _ = cancel.cancelled() => return None,
        permit = slots.acquire() => permit.ok()?,
    };
    first.forget();
    let mut got = 1;
    if got + slots.available_permits() < batch {
        let more = async {
            while got + slots.available_permits() < batch {
                match slots.acquire().await {
                    Ok(p) => {
                        p.forget();
                        got += 1;
                    }
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(BATCH_WAIT, more).await;
    }
    let rest = slots.available_permits();
    if rest > 0 {
        if let Ok(p) = slots.try_acquire_many(u32::try_from(rest).unwrap_or(u32::MAX)) {
            p.forget();
            got += rest;
        }
    }
    Some(got)
}

/// The dispatcher's own connection, opened if there is none (one that failed is dropped by the
/// caller, to be opened again next time).
async fn connection<'c>(
    ctx: &WorkerContext,
    held: &'c mut Option<PgConnection>,
) -> Result<&'c mut PgConnection, sqlx::Error> {
    Ok(match held {
        Some(c) => c,
        None => held.insert(ragq::db::connect_for_batches(&ctx.pool).await?),
    })
}

/// What a dispatch took: the jobs, and whether tenants with ready jobs were all held by other
/// dispatches (then it is worth trying again at once).
struct Dispatched {
    jobs: Vec<Taken>,
    contended: bool,
}

/// Takes up to `wanted` jobs for `holder` (see the module's doc, `sql/candidates.sql` and
/// `sql/dispatch.sql`) in one transaction that commits without waiting for fsync.
async fn take(
    conn: &mut PgConnection,
    wanted: usize,
    holder: &str,
) -> Result<Dispatched, sqlx::Error> {
    let wanted = i64::try_from(wanted).unwrap_or(i64::MAX);
    // On an error the caller drops the connection, which rolls the transaction back.
    conn.execute("BEGIN; SET LOCAL synchronous_commit = off")
        .await?;
    let tenants: Vec<String> = sqlx::query_file_scalar!("sql/candidates.sql", wanted)
        .fetch_all(&mut *conn)
        .await?;
    if tenants.is_empty() {
        let waiting = sqlx::query_file_scalar!("sql/waiting.sql")
            .fetch_one(&mut *conn)
            .await?;
        conn.execute("COMMIT").await?;
        return Ok(Dispatched {
            jobs: Vec::new(),
            contended: waiting,
        });
    }
    let jobs = sqlx::query_file_as!(Taken, "sql/dispatch.sql", holder, wanted, &tenants)
        .fetch_all(&mut *conn)
        .await?;
    // Slots left unfilled: some tenant may have run out of ready jobs.
    if i64::try_from(jobs.len()).unwrap_or(i64::MAX) < wanted {
        sqlx::query_file!("sql/next_ready.sql", &tenants)
            .execute(&mut *conn)
            .await?;
    }
    conn.execute("COMMIT").await?;
    Ok(Dispatched {
        jobs,
        contended: false,
    })
}

/// Queues the jobs of departed workers again, in one transaction with their tenants' counts.
async fn sweep(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut tx = Connection::begin(conn).await?;
    let lost = sqlx::query_file!("sql/sweep.sql")
        .fetch_all(&mut *tx)
        .await?;
    if lost.is_empty() {
        tx.commit().await?;
        return Ok(());
    }
    let mut deltas = Deltas::new();
    for row in &lost {
        tracing::warn!(
            tenant = %row.tenant_id,
            jobs = row.jobs,
            "queuing again the jobs of a worker whose lease ended"
        );
        deltas
            .entry(row.tenant_id.clone())
            .or_default()
            .queue_now(row.jobs);
    }
    shares::apply(&mut tx, &deltas).await?;
    tx.commit().await
}

/// Wakes this worker's dispatcher when another worker's intake queues jobs. Without a listener
/// (the database unreachable) the idle poll stands in.
async fn listen(ctx: Arc<WorkerContext>, cancel: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        let listened = async {
            let mut listener = PgListener::connect_with(&ctx.pool).await?;
            listener.listen(READY_CHANNEL).await?;
            loop {
                listener.recv().await?;
                ctx.wake.notify_one();
            }
        };
        let result: Result<(), sqlx::Error> = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listened => r,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "lost the ready-jobs listener; listening again");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Runs one taken job as a `job` span (continuing the trace its intake kept), and dead-letters a
/// job that panicked on its last attempt once its failure is committed.
async fn run_one(ctx: &WorkerContext, taken: Taken) {
    let span = tracing::info_span!(
        "job",
        job_id = %taken.id,
        tenant = %taken.tenant_id,
        kind = %taken.kind,
        outcome = tracing::field::Empty,
    );
    ragq::telemetry::traces::continue_trace(&span, taken.traceparent.as_deref());
    async {
        let Some(attempt) = attempt_of(ctx, taken).await else {
            return;
        };
        let job = attempt.job.clone();
        if let Some(reason) = crate::kinds::process(ctx, attempt).await {
            dead_letter(ctx, &job, &reason).await;
        }
    }
    .instrument(span)
    .await
}

/// The attempt a taken row holds. A row that no longer reads as a job (or whose tenant is gone)
/// fails with the reason; the database out of reach leaves it to the lease sweep.
async fn attempt_of(ctx: &WorkerContext, taken: Taken) -> Option<Attempt> {
    let tenant = match ctx.tenants.get(&taken.tenant_id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            fail(
                ctx,
                &taken,
                "unknown_tenant",
                "the job's tenant no longer exists",
            )
            .await;
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the job's tenant; it runs again after this worker's lease");
            return None;
        }
    };
    let kind = serde_json::from_value(serde_json::Value::String(taken.kind.clone()));
    let tags = serde_json::from_value(taken.tags.clone());
    let (Ok(kind), Ok(tags)) = (kind, tags) else {
        fail(
            ctx,
            &taken,
            "invalid_input",
            "the stored job cannot be read",
        )
        .await;
        return None;
    };
    let job = JobMessage {
        id: taken.id,
        tenant: taken.tenant_id,
        kind,
        policy: taken.policy,
        webhook_url: taken.webhook_url,
        input: taken.input,
        tags,
        priority: Priority::from_rank(taken.priority),
        // Checked at intake; a value this build cannot read leaves the job to its policy and plan.
        cache: taken.cache.and_then(|c| serde_json::from_value(c).ok()),
        policy_named: true,
    };
    if taken.attempts == 1 {
        let waited = (Utc::now() - taken.created_at).to_std().unwrap_or_default();
        ragq::telemetry::metrics::dispatch_wait(&job.tenant, waited);
    }
    Some(Attempt {
        job,
        attempt: taken.attempts,
        tenant,
        redaction: taken.redaction,
    })
}

/// Fails a taken job that cannot run, without a webhook (its row could not be read).
async fn fail(ctx: &WorkerContext, taken: &Taken, code: &str, message: &str) {
    let outcome = crate::commit::Outcome {
        tenant_id: taken.tenant_id.clone(),
        job_id: taken.id.clone(),
        attempt: taken.attempts,
        finish: crate::commit::Finish::Failed {
            code: code.into(),
            message: message.into(),
        },
        webhook: None,
    };
    if let Err(e) = ctx.commits.finish(outcome).await {
        tracing::warn!(error = %e, "cannot fail a job that cannot run");
    }
}

/// Publishes the job, as ragq took it in, to the dead-letter queue with the reason. The job's
/// failure is already committed, so a publish that fails loses only this copy.
async fn dead_letter(ctx: &WorkerContext, job: &JobMessage, reason: &str) {
    let publisher = ctx.publisher.read().ok().and_then(|p| p.clone());
    let (Some(publisher), Ok(body)) = (publisher, serde_json::to_vec(job)) else {
        tracing::warn!("no RabbitMQ connection to dead-letter the job; its failure is recorded");
        return;
    };
    let letter = crate::dead_letter::Letter {
        routing_key: job.kind.as_str(),
        body: &body,
        publisher: "",
        count: ragq::queue::dead_letters::DeadLetter {
            tenant: Some(&job.tenant),
            kind: Some(job.kind.as_str()),
            reason,
            message_id: Some(&job.id),
        },
    };
    if let Err(e) = crate::dead_letter::send(ctx, &publisher, letter).await {
        tracing::warn!(error = %e, "cannot dead-letter the job; its failure is recorded");
    }
}
