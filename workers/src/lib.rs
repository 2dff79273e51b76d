//! ragq's worker: the runtime that consumes `ragq.jobs` and the job handlers, one module per kind.
//!
//! A worker consumes `ragq.jobs` with a bounded prefetch and manual acks. For each delivery it
//! validates the message, checks the publisher against the tenant, claims the job in Postgres, runs
//! the kind's handler, commits the outcome, and only then settles the delivery. Follow one job:
//!
//! 1. [`runtime`] receives the delivery and spawns [`delivery::handle`];
//! 2. [`delivery`] parses and authorizes the message and picks the kind's handler in [`kinds`];
//! 3. [`attempt::process`] claims the job through [`commit`], runs the [`handler::JobHandler`]
//!    (its calls booked through [`booking`]), and commits the outcome;
//! 4. [`settle`] decides, in pure functions, what is committed and how the delivery is settled.
//!
//! A worker killed at any instant loses nothing: unacked messages are redelivered, and the claim
//! rules make the redelivery run the job again only if its outcome was not committed.

pub mod attempt;
pub mod booking;
pub mod commit;
pub mod delivery;
pub mod error;
pub mod handler;
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
    webhooks: mpsc::Sender<PendingDelivery>,
    vectors: VectorStore,
    pool: sqlx::PgPool,
    /// Finished attempts for the dashboard, written with the router's call stats.
    job_stats: std::sync::Arc<ragq::telemetry::stats::JobStats>,
    /// The AMQP user this worker publishes as: the only one whose publisher header is believed.
    own_amqp_user: String,
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
