//! ragq's worker: the runtime that consumes `ragq.jobs` and the job handlers, one module per kind.
//!
//! A worker drains `ragq.jobs` into Postgres and runs jobs from there, fairly between tenants. For
//! each delivery it validates the message, checks the publisher against the tenant, writes the job
//! as `queued`, and only then acknowledges it. Its dispatcher takes queued jobs by tenant weight,
//! runs the kind's handler and commits the outcome. Follow one job:
//!
//! 1. [`runtime`] receives the delivery and spawns [`delivery::handle`];
//! 2. [`delivery`] parses and authorizes the message, and [`intake`] queues it through [`commit`];
//! 3. [`dispatch`] takes it when its tenant's turn comes, and [`kinds`] picks the handler;
//! 4. [`attempt::process`] admits the attempt through [`commit`], runs the
//!    [`handler::JobHandler`] (its calls booked through [`booking`]), and commits the outcome;
//! 5. [`settle`] decides, in pure functions, what is committed and how a delivery is settled.
//!
//! A worker killed at any instant loses nothing: an unacked message is redelivered and taken in
//! once (by job id); a job it was running is queued again when its lease ends, and the new attempt
//! fences the old one's outcome.

pub mod attempt;
pub mod booking;
mod caching;
pub mod commit;
mod dead_letter;
pub mod delivery;
pub mod dispatch;
pub mod error;
pub mod handler;
pub mod intake;
pub mod kinds;
pub mod placement;
pub mod runtime;
pub mod settle;

use ragq::config::Config;
use ragq::retrieval::VectorStore;
use ragq::routing::Router;
use ragq::tenants::TenantDirectory;
use ragq::webhooks::PendingDelivery;
use tokio::sync::mpsc;

pub use error::JobError;
pub use kinds::{batch_complete, ingest, rag_answer};
pub use runtime::run;

use commit::CommitHandle;
use handler::WorkerEnv;
use settle::RetryPolicy;

/// Everything a job task needs, shared by all tasks of one worker.
pub struct WorkerContext {
    cfg: Config,
    router: Router,
    tenants: TenantDirectory,
    commits: CommitHandle,
    /// The group commit intake writes through (a connection of its own).
    intakes: CommitHandle,
    webhooks: mpsc::Sender<PendingDelivery>,
    vectors: VectorStore,
    cache: ragq::cache::ResponseCache,
    pool: sqlx::PgPool,
    /// Finished attempts for the dashboard, written with the router's call stats.
    job_stats: std::sync::Arc<ragq::telemetry::stats::JobStats>,
    /// The AMQP user this worker publishes as: the only one whose publisher header is believed.
    own_amqp_user: String,
    /// Wakes the dispatcher: intake queued jobs.
    wake: tokio::sync::Notify,
    /// The current RabbitMQ connection's publisher (none while reconnecting), for dead letters.
    publisher: std::sync::RwLock<Option<ragq::queue::Publisher>>,
}

impl WorkerContext {
    fn env(&self) -> WorkerEnv<'_> {
        WorkerEnv {
            router: &self.router,
            cfg: &self.cfg,
        }
    }

    fn retry_policy(&self) -> RetryPolicy<'_> {
        RetryPolicy {
            max_attempts: i32::try_from(self.cfg.worker.max_attempts).unwrap_or(i32::MAX),
            delays: &self.cfg.queue.retry_delays,
        }
    }
}
