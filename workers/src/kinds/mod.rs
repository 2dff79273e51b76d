//! The job kinds this worker runs, one module each behind [`crate::handler::JobHandler`], and the
//! registry from a message's kind to its handler: adding a kind is its module and one line here.

pub mod batch_complete;
pub mod ingest;
pub mod rag_answer;

use ragq::config::Config;
use ragq::jobs::JobKind;

use crate::attempt::{self, Attempt};
use crate::handler::JobHandler;
use crate::WorkerContext;

/// Runs a dispatched attempt through the handler of its kind; returns the dead-letter reason of a
/// job that panicked on its last attempt.
pub(crate) async fn process(ctx: &WorkerContext, run: Attempt) -> Option<String> {
    match run.job.kind {
        JobKind::BatchComplete => attempt::process::<batch_complete::BatchComplete>(ctx, run).await,
        JobKind::Ingest => attempt::process::<ingest::Ingest>(ctx, run).await,
        JobKind::RagAnswer => attempt::process::<rag_answer::RagAnswer>(ctx, run).await,
    }
}

/// A collection a job names: a valid name, and not the response cache's own.
pub(crate) fn check_collection(name: &str, cfg: &Config) -> Result<(), crate::JobError> {
    ragq::retrieval::check_collection_name(name)
        .map_err(|e| crate::JobError::invalid(e.to_string()))?;
    if name == cfg.cache.collection {
        return Err(crate::JobError::invalid(format!(
            "collection `{name}` is reserved for the response cache"
        )));
    }
    Ok(())
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
