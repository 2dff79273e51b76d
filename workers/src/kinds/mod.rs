//! The job kinds this worker runs, one module each behind [`crate::handler::JobHandler`], and the
//! registry from a message's kind to its handler: adding a kind is its module and one line here.

pub mod batch_complete;
pub mod ingest;
pub mod rag_answer;

use lapin::message::Delivery;
use ragq::jobs::{JobKind, JobMessage};
use ragq::tenants::Tenant;

use crate::attempt;
use crate::handler::JobHandler;
use crate::settle::Disposition;
use crate::WorkerContext;

/// Runs an authorized job through the handler of its kind.
pub(crate) async fn process(
    ctx: &WorkerContext,
    delivery: &Delivery,
    job: JobMessage,
    tenant: Tenant,
) -> Disposition {
    match job.kind {
        JobKind::BatchComplete => {
            attempt::process::<batch_complete::BatchComplete>(ctx, delivery, job, tenant).await
        }
        JobKind::Ingest => attempt::process::<ingest::Ingest>(ctx, delivery, job, tenant).await,
        JobKind::RagAnswer => {
            attempt::process::<rag_answer::RagAnswer>(ctx, delivery, job, tenant).await
        }
    }
}

/// Every kind, and whether it uses the vector store.
pub fn all() -> [(JobKind, bool); 3] {
    fn of<H: JobHandler>() -> (JobKind, bool) {
        (H::KIND, H::USES_VECTOR_STORE)
    }
    [
        of::<batch_complete::BatchComplete>(),
        of::<ingest::Ingest>(),
        of::<rag_answer::RagAnswer>(),
    ]
}
