//! Group commit: every Postgres write a worker makes on the job path — intakes, admissions, ledger
//! rows, outcomes with their webhook deliveries, and what they change of tenants' dispatch state —
//! goes through one task that writes whatever has queued up in one
//! transaction, one multi-row statement per kind of write.
//!
//! Under load a batch holds many jobs, so a job costs a fraction of a round trip and of an fsync; when
//! idle a batch holds one write and adds no delay. Ordering is the channel's: a job's ledger rows are
//! sent before its outcome, so they commit in the same or an earlier transaction. A batch that fails
//! on a lost connection is retried whole (every write in it is idempotent); one that fails on bad data
//! is split so only the guilty write fails.

mod admit;
mod finish;
mod intake;
pub mod shares;

use std::time::Duration;

use serde_json::Value;
use sqlx::{Acquire, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use ragq::jobs::JobMessage;
use ragq::spend::budget::{self, Admission, Estimate};
use ragq::spend::intents::CallIntent;
use ragq::spend::{self, LedgerEntry};
use ragq::tenants::plans::Share;
use ragq::webhooks::{write_attempts, AttemptLog, AttemptRecord};

/// A message to take in as a queued job.
#[derive(Debug, Clone)]
pub struct IntakeRequest {
    pub job: std::sync::Arc<JobMessage>,
    /// The tenant's share as this worker resolves it (plan and overrides).
    pub share: Share,
    /// The trace the job's run continues.
    pub traceparent: Option<String>,
    /// What its redaction policy found, and the values a restoring policy puts back (sealed).
    pub redaction: Option<Value>,
}

/// The answer to an intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Queued now.
    New,
    /// A job with this id was taken in before (queued, running or finished): nothing changed.
    Known,
}

/// A dispatched attempt asking to run: its worst case is reserved against its budgets and the
/// intents of its first calls are recorded.
#[derive(Debug, Clone)]
pub struct AdmitRequest {
    pub job: std::sync::Arc<JobMessage>,
    pub attempt: i32,
    pub estimate: Estimate,
    /// Intents of the attempt's first calls, numbered with its attempt.
    pub intents: Vec<CallIntent>,
}

/// The answer to an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// The attempt still holds its job; its budgets admitted it, or not.
    Run(Admission),
    /// The job was queued again (this worker's lease ended) and is another attempt's now.
    Fenced,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Succeeded(Value),
    Failed {
        code: String,
        message: String,
    },
    /// Hand the job back (`queued`) to run again after `delay`.
    Retry {
        code: String,
        message: String,
        delay: Duration,
    },
}

/// A webhook delivery created with a terminal outcome.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub event_type: String,
    pub url: String,
    pub payload: String,
    /// The job's trace, which the delivery's retries continue (none when traces are off).
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub tenant_id: String,
    pub job_id: String,
    pub attempt: i32,
    pub finish: Finish,
    pub webhook: Option<NewDelivery>,
}

/// Whether an outcome took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishResult {
    /// The outcome is the job's; it was accepted (first recorded) at `accepted_at`.
    Committed {
        accepted_at: chrono::DateTime<chrono::Utc>,
    },
    /// The job was claimed again by someone else since this attempt started; its outcome is theirs.
    Fenced,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database refused the write: {0}")]
    Refused(String),
}

type Reply<T> = oneshot::Sender<Result<T, CommitError>>;

/// The commit task's connection, between batches.
type Held = Option<PgConnection>;

enum Op {
    Intake(IntakeRequest, Reply<Taken>),
    Admit(AdmitRequest, Reply<Admit>),
    Intend(Vec<CallIntent>, Reply<()>),
    Ledger(LedgerEntry),
    CacheStore(ragq::cache::store::Entry),
    Finish(Outcome, Reply<FinishResult>),
    WebhookAttempt(AttemptRecord),
}

/// The handle job tasks write through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CommitHandle {
    tx: mpsc::Sender<Op>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Intake(r, _) => write!(f, "Intake({})", r.job.id),
            Op::Admit(r, _) => write!(f, "Admit({}#{})", r.job.id, r.attempt),
            Op::Intend(e, _) => write!(f, "Intend({} calls)", e.len()),
            Op::Ledger(e) => write!(f, "Ledger({}#{})", e.call.job_id, e.call.call_index),
            Op::CacheStore(e) => write!(f, "CacheStore({})", e.id),
            Op::Finish(o, _) => write!(f, "Finish({})", o.job_id),
            Op::WebhookAttempt(r) => write!(f, "WebhookAttempt({}#{})", r.delivery_id, r.attempt),
        }
    }
}

fn gone() -> CommitError {
    CommitError::Unavailable("commit task stopped".into())
}

impl CommitHandle {
    /// Takes a message in as a queued job; once this answers, the message may be acknowledged.
    pub async fn take_in(&self, req: IntakeRequest) -> Result<Taken, CommitError> {
        self.ask(|reply| Op::Intake(req, reply)).await
    }

    /// Asks whether a dispatched attempt may run (see [`Admit`]).
    pub async fn admit(&self, req: AdmitRequest) -> Result<Admit, CommitError> {
        self.ask(|reply| Op::Admit(req, reply)).await
    }

    /// Records intents for calls about to be made; returns once they are durable, so the requests
    /// may be sent (see [`ragq::spend::intents`]).
    pub async fn intend(&self, intents: Vec<CallIntent>) -> Result<(), CommitError> {
        self.ask(|reply| Op::Intend(intents, reply)).await
    }

    /// Queues a ledger row in place of its intent; it commits before (or with) the outcome sent
    /// after it.
    pub async fn book(&self, entry: LedgerEntry) -> Result<(), CommitError> {
        self.tx.send(Op::Ledger(entry)).await.map_err(|_| gone())
    }

    /// Queues a response cache entry; it commits with the batch it lands in (whole, or not at
    /// all). Losing it costs a later miss, nothing more.
    pub async fn remember(&self, entry: ragq::cache::store::Entry) {
        let _ = self.tx.send(Op::CacheStore(entry)).await;
    }

    pub async fn finish(&self, outcome: Outcome) -> Result<FinishResult, CommitError> {
        self.ask(|reply| Op::Finish(outcome, reply)).await
    }

    /// Queues a write and waits for the answer of the transaction that commits it.
    async fn ask<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(op(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl AttemptLog for CommitHandle {
    /// Queues the record; if it never lands, the delivery is simply sent again after its lease.
    async fn record(&self, record: AttemptRecord) {
        let _ = self.tx.send(Op::WebhookAttempt(record)).await;
    }
}

/// The commit task's settings.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    pub pool: PgPool,
    pub max_batch: usize,
    /// How long a new webhook delivery belongs to the worker that committed it.
    pub webhook_lease: Duration,
    /// How long a budget reservation outlives a worker that died holding it.
    pub reservation_ttl: Duration,
}

impl GroupCommit {
    /// Starts the task; it ends when every handle is dropped and the queue is drained.
    pub fn spawn(self, cancel: CancellationToken) -> (CommitHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(self.max_batch * 4);
        let task = tokio::spawn(self.run(rx, cancel));
        (CommitHandle { tx }, task)
    }

    async fn run(self, mut rx: mpsc::Receiver<Op>, cancel: CancellationToken) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // The task keeps a connection of its own: a pool checkout pings the connection first (a
        // round trip on every batch) and a check-in pings it again.
        let mut conn = None;
        while rx.recv_many(&mut batch, self.max_batch).await > 0 {
            self.write_with_retry(std::mem::take(&mut batch), &cancel, &mut conn)
                .await;
        }
    }

    /// Writes a batch, retrying lost connections until it lands or shutdown gives up on it.
    async fn write_with_retry(&self, ops: Vec<Op>, cancel: &CancellationToken, conn: &mut Held) {
        let mut delay = Duration::from_millis(50);
        let mut tries = 0u32;
        loop {
            let started = std::time::Instant::now();
            match self.write_on(&ops, conn).await {
                Ok(answers) => {
                    let elapsed = started.elapsed();
                    ragq::telemetry::metrics::commit("group", ops.len(), elapsed);
                    return answer(ops, answers);
                }
                Err(e) if is_transient(&e) => {
                    tries += 1;
                    if cancel.is_cancelled() && tries > 3 {
                        tracing::error!(error = %e, writes = ops.len(), "database unavailable at shutdown; unacknowledged jobs will be redelivered");
                        return fail(ops, CommitError::Unavailable(e.to_string()));
                    }
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable; retrying batch");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) if ops.len() == 1 => {
                    tracing::error!(error = %e, op = ?ops[0], "database refused a write");
                    return fail(ops, CommitError::Refused(e.to_string()));
                }
                Err(_) => {
                    for op in ops {
                        Box::pin(self.write_with_retry(vec![op], cancel, conn)).await;
                    }
                    return;
                }
            }
        }
    }

    /// Writes a batch on the held connection (opened first if there is none); a connection that
    /// failed is closed.
    async fn write_on(&self, ops: &[Op], held: &mut Held) -> Result<Answers, sqlx::Error> {
        let conn = match held {
            Some(c) => c,
            None => held.insert(self.connect().await?),
        };
        let result = self.write(ops, conn).await;
        if result.as_ref().is_err_and(is_transient) {
            *held = None;
        }
        result
    }

    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        ragq::db::connect_for_batches(&self.pool).await
    }

    async fn write(&self, ops: &[Op], conn: &mut PgConnection) -> Result<Answers, sqlx::Error> {
        let mut intakes = Vec::new();
        let mut admits = Vec::new();
        let mut intents = Vec::new();
        let mut ledger = Vec::new();
        let mut cached = Vec::new();
        let mut outcomes = Vec::new();
        let mut hook_attempts = Vec::new();
        for op in ops {
            match op {
                Op::Intake(r, _) => intakes.push(r),
                Op::Admit(r, _) => admits.push(r),
                Op::Intend(e, _) => intents.extend(e),
                Op::Ledger(e) => ledger.push(e),
                Op::CacheStore(e) => cached.push(e),
                Op::Finish(o, _) => outcomes.push(o),
                Op::WebhookAttempt(r) => hook_attempts.push(r),
            }
        }
        let mut tenants: Vec<&str> = (admits.iter().map(|r| r.job.tenant.as_str()))
            .chain(ledger.iter().map(|e| e.call.tenant_id.as_str()))
            .chain(outcomes.iter().map(|o| o.tenant_id.as_str()))
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut tx = conn.begin().await?;
        let budgeted = budget::lock_in_order(&mut tx, &tenants).await?;
        let has_budget = |t: &str| budgeted.binary_search_by(|b| b.as_str().cmp(t)).is_ok();
        if !ledger.is_empty() {
            let booked = spend::ledger::settle(&mut tx, &ledger).await?;
            if booked.rows < ledger.len() as u64 {
                tracing::warn!(
                    calls = ledger.len() as u64 - booked.rows,
                    "answered calls not booked: booked already, or their intents had expired into estimates"
                );
            }
            let alerting: Vec<&str> = (booked.tenants.iter().map(String::as_str))
                .filter(|t| has_budget(t))
                .collect();
            budget::fire_alerts(&mut tx, &alerting).await?;
        }
        ragq::cache::store::insert(&mut tx, &cached).await?;
        let admit_answers =
            admit::admit(&mut tx, &admits, &has_budget, self.reservation_ttl).await?;
        // The batch's intents in one statement: those running attempts asked for, and those of the
        // first calls of the attempts just admitted. Before any outcome, whose statement discards
        // what its attempt left.
        let admitted = admit::admitted_intents(&admits, &admit_answers);
        intents.extend(&admitted);
        spend::intents::record(&mut tx, &intents).await?;
        let finished =
            finish::finish_jobs(&mut tx, &outcomes, &has_budget, self.webhook_lease).await?;
        write_attempts(&mut tx, &hook_attempts).await?;
        let taken = intake::take_in(&mut tx, &intakes).await?;
        let mut deltas = finished.deltas;
        for (r, t) in intakes.iter().zip(&taken) {
            let delta = deltas.entry(r.job.tenant.clone()).or_default();
            delta.share = Some(r.share);
            if *t == Taken::New {
                delta.queue_now(1);
            }
        }
        shares::apply(&mut tx, &deltas).await?;
        if taken.contains(&Taken::New) {
            // Delivered at commit: idle dispatchers of other workers wake.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(crate::dispatch::READY_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Answers {
            taken,
            admits: admit_answers,
            finishes: finished.results,
        })
    }
}

struct Answers {
    taken: Vec<Taken>,
    admits: Vec<Admit>,
    finishes: Vec<FinishResult>,
}

fn answer(ops: Vec<Op>, answers: Answers) {
    let mut taken = answers.taken.into_iter();
    let mut admits = answers.admits.into_iter();
    let mut finishes = answers.finishes.into_iter();
    for op in ops {
        match op {
            Op::Intake(_, reply) => {
                let _ = reply.send(taken.next().ok_or_else(gone));
            }
            Op::Admit(_, reply) => {
                let _ = reply.send(admits.next().ok_or_else(gone));
            }
            Op::Finish(_, reply) => {
                let _ = reply.send(finishes.next().ok_or_else(gone));
            }
            Op::Intend(_, reply) => {
                let _ = reply.send(Ok(()));
            }
            Op::Ledger(_) | Op::CacheStore(_) | Op::WebhookAttempt(_) => {}
        }
    }
}

fn fail(ops: Vec<Op>, error: CommitError) {
    for op in ops {
        match op {
            Op::Intake(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Op::Admit(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Op::Finish(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Op::Intend(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Op::Ledger(entry) => {
                tracing::error!(tenant = %entry.call.tenant_id, job = %entry.call.job_id, attempt = entry.call.attempt, call = entry.call.call_index, cost_micros = entry.cost_micros, "ledger row not written");
            }
            Op::CacheStore(e) => {
                tracing::warn!(entry = %e.id, "response cache entry not stored");
            }
            Op::WebhookAttempt(r) => {
                tracing::warn!(delivery = %r.delivery_id, attempt = r.attempt, "webhook attempt not recorded; the delivery is sent again after its lease");
            }
        }
    }
}

/// Errors worth retrying the same batch for: the connection, not the data.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // Serialization failures, deadlocks, shutdown and connection-class errors.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c.starts_with("57") || c == "40001" || c == "40P01"
        }),
        _ => false,
    }
}

pub(crate) type Tx<'a> = Transaction<'a, Postgres>;
