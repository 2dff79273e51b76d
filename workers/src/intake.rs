//! Intake: an authorized message becomes a `queued` job in Postgres, and only then is it
//! acknowledged. Its redaction policy runs here, before anything stores its text; the tenant's share
//! (weight and cap) is resolved here and written beside its dispatch state; and the job's trace is
//! kept so that whichever worker runs it continues it.
//!
//! Every worker drains `ragq.jobs` this way as fast as it can, so the broker's first-in, first-out
//! order ends at intake: what runs next is the dispatcher's choice ([`crate::dispatch`]).

use std::sync::Arc;

use serde_json::json;

use ragq::jobs::JobMessage;
use ragq::tenants::Tenant;

use crate::commit::IntakeRequest;
use crate::settle::{self, Disposition};
use crate::WorkerContext;

/// Takes an authorized job in; says how to settle its delivery.
pub async fn take_in(
    ctx: &WorkerContext,
    mut job: JobMessage,
    tenant: &Tenant,
    traceparent: Option<String>,
) -> Disposition {
    let redaction = redact(ctx, &mut job);
    let share = (ctx.cfg.plans).share(&tenant.plan, tenant.share_weight, tenant.max_in_flight);
    // A message without a trace context gets the intake's, so the run joins its trace.
    let traceparent =
        traceparent.or_else(|| ragq::telemetry::traces::traceparent_of(&tracing::Span::current()));
    let request = IntakeRequest {
        job: Arc::new(job),
        share,
        traceparent,
        redaction,
    };
    let taken = ctx.intakes.take_in(request).await;
    if matches!(taken, Ok(crate::commit::Taken::New)) {
        ctx.wake.notify_one();
    }
    settle::on_intake(taken)
}

/// Runs the job's redaction policy (its feature's, else its tenant's) over its input before it is
/// stored; returns what the run needs of it: what was found, and the values a restoring policy puts
/// back into the result, sealed.
fn redact(ctx: &WorkerContext, job: &mut JobMessage) -> Option<serde_json::Value> {
    let feature = job.tags.get("feature").map(String::as_str);
    let policy = ctx.cfg.redaction.policy_for(&job.tenant, feature)?;
    let applied = policy.apply(job.kind, &mut job.input);
    for (kind, count) in &applied.found {
        ragq::telemetry::metrics::pii_found(kind, policy.mode.as_str(), *count);
    }
    let vault = policy
        .restore
        .then(|| (applied.vault).seal(&ctx.cfg.secrets, &vault_context(&job.tenant, &job.id)))
        .flatten();
    Some(json!({ "found": applied.found, "vault": vault }))
}

/// What a job's sealed vault is bound to: it opens for this job only.
pub(crate) fn vault_context(tenant: &str, job: &str) -> String {
    format!("redaction-vault:{tenant}:{job}")
}
