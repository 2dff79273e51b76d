//! One dispatched attempt through its kind's handler: admit it (reserving its worst case and
//! recording the intents of its first calls), run it with panics caught, and commit the outcome
//! with its webhook. The same path for every kind.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::json;
use tracing::Instrument;

use ragq::jobs::JobMessage;
use ragq::routing::CallScope;
use ragq::spend::budget::Estimate;
use ragq::tenants::Tenant;
use ragq::webhooks::PendingDelivery;

use crate::booking::AttemptOf;
use crate::commit::{Admit, AdmitRequest, CommitError, Finish, NewDelivery, Outcome};
use crate::error::JobError;
use crate::handler::{ClaimIntents, JobContext, JobHandler};
use crate::settle;
use crate::WorkerContext;

/// An attempt a dispatcher took for this worker.
pub struct Attempt {
    pub job: JobMessage,
    pub attempt: i32,
    pub tenant: Tenant,
    /// What the job's redaction policy found at intake, and the sealed values to restore.
    pub redaction: Option<serde_json::Value>,
}

/// Runs a dispatched attempt as kind `H`; returns the dead-letter reason of a job that panicked
/// on its last attempt, once its failure is committed.
pub async fn process<H: JobHandler>(ctx: &WorkerContext, run: Attempt) -> Option<String> {
    let started = std::time::Instant::now();
    let Attempt {
        job,
        attempt,
        tenant,
        redaction,
    } = run;
    let redaction = Redacted::of(ctx, &job, redaction.as_ref());
    let input = H::input(&job);
    let job = Arc::new(job);
    let policy = ctx.retry_policy();
    let (admitted, first_calls) = admit::<H>(ctx, &job, attempt, &input, &tenant.plan)
        .instrument(tracing::info_span!("claim"))
        .await;
    let admission = match settle::on_admit(admitted) {
        Ok(Some(admission)) => Ok(admission),
        Ok(None) => {
            tracing::warn!(
                attempt,
                "the job was queued again meanwhile; dropping this attempt"
            );
            return None;
        }
        Err(e) => Err(e),
    };
    let own_keys = open_own_keys(ctx, &tenant);
    let admitted = admission.and_then(|a| settle::admit(attempt, a, policy));
    let result = match (admitted, &own_keys) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.clone()),
        (Ok(cost_cap_micros), Ok(own_keys)) => {
            let context = JobContext {
                job: &job,
                attempt,
                env: ctx.env(),
                commits: &ctx.commits,
                scope: CallScope {
                    plan: Some(&tenant.plan),
                    cost_cap_micros,
                    own_keys: own_keys.as_ref(),
                },
                vectors: &ctx.vectors,
                cache: &ctx.cache,
                pool: &ctx.pool,
                declared_calls: first_calls,
            };
            match &redaction {
                Some(r) if r.blocks() => Err(r.refusal()),
                _ => run_guarded::<H>(&context, input).await,
            }
        }
    };
    let result = match (result, &redaction) {
        (Ok(value), Some(r)) => Ok(r.finish(value)),
        (result, _) => result,
    };
    let job_span = tracing::Span::current();
    commit(ctx, &job, attempt, result, started, job_span)
        .instrument(tracing::info_span!("commit", attempt))
        .await
}

/// The tenant's own provider keys, opened for this job's calls (none brought: none). A key that
/// cannot be opened (its sealing key retired from the keyring) fails the attempt for a retry, so
/// the operator can put the key back; the call never silently goes out on the operator's key.
fn open_own_keys(
    ctx: &WorkerContext,
    tenant: &Tenant,
) -> Result<Option<ragq::routing::byok::OwnKeys>, JobError> {
    if tenant.provider_keys.is_empty() {
        return Ok(None);
    }
    ragq::tenants::provider_keys::open(&ctx.cfg.secrets, &tenant.id, &tenant.provider_keys)
        .map(Some)
        .map_err(|e| JobError::Transient {
            code: "provider_key_unreadable",
            message: format!("the tenant's provider key cannot be opened: {e}"),
            retry_after: None,
        })
}

/// What the redaction policy of a job found and did at intake.
struct Redacted<'p> {
    policy: &'p ragq::redaction::Policy,
    applied: ragq::redaction::Applied,
}

impl<'p> Redacted<'p> {
    /// The job's redaction as intake stored it, under the policy that applies to it now. A vault
    /// that no longer opens (its sealing key retired) restores nothing: the result keeps the
    /// placeholders, which is the safe side.
    fn of(
        ctx: &'p WorkerContext,
        job: &JobMessage,
        stored: Option<&serde_json::Value>,
    ) -> Option<Self> {
        let stored = stored?;
        let feature = job.tags.get("feature").map(String::as_str);
        let policy = ctx.cfg.redaction.policy_for(&job.tenant, feature)?;
        let found = serde_json::from_value(stored["found"].clone()).unwrap_or_default();
        let context = crate::intake::vault_context(&job.tenant, &job.id);
        let vault = match stored["vault"].as_str() {
            Some(sealed) => ragq::redaction::Vault::open(&ctx.cfg.secrets, sealed, &context)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot open the job's redaction vault; nothing restored");
                    Default::default()
                }),
            None => Default::default(),
        };
        let applied = ragq::redaction::Applied { found, vault };
        Some(Self { policy, applied })
    }
}

impl Redacted<'_> {
    fn blocks(&self) -> bool {
        self.policy.mode == ragq::redaction::Mode::Block && !self.applied.found.is_empty()
    }

    /// The failure of a blocked job: the kinds found, never the values.
    fn refusal(&self) -> JobError {
        JobError::permanent(
            "pii_blocked",
            format!(
                "the input holds personal data ({}); redaction policy `{}` blocks it",
                self.applied.kinds(),
                self.policy.name
            ),
        )
    }

    /// The result as stored and delivered: values put back if the policy restores them, and
    /// what was found.
    fn finish(&self, mut result: serde_json::Value) -> serde_json::Value {
        if self.policy.restore {
            self.applied.vault.restore(&mut result);
        }
        if let Some(map) = result.as_object_mut() {
            map.insert("redaction".into(), self.applied.summary(self.policy));
        }
        result
    }
}

/// Admits the attempt, reserving its worst case and recording the intents of its first calls (a
/// job whose input cannot be read reserves and declares nothing: it fails before any call);
/// returns the answer and how many calls it declared.
async fn admit<H: JobHandler>(
    ctx: &WorkerContext,
    job: &Arc<JobMessage>,
    attempt: i32,
    input: &Result<H::Input, String>,
    plan: &str,
) -> (Result<Admit, CommitError>, usize) {
    let env = ctx.env();
    let of = AttemptOf { job, attempt };
    let (estimate, first_calls) = match input {
        Ok(input) => (
            with_cache_lookups(ctx, job, plan, H::estimate(env, job, input)),
            H::claim_intents(env, of, input),
        ),
        Err(_) => (Estimate::default(), ClaimIntents::default()),
    };
    let request = AdmitRequest {
        job: Arc::clone(job),
        attempt,
        estimate,
        intents: first_calls.intents,
    };
    (ctx.commits.admit(request).await, first_calls.calls)
}

/// The estimate with the embeddings calls of semantic cache lookups, if the job makes them: each
/// embeds a prompt, whose tokens the estimate already bounds, so its tokens bound theirs.
fn with_cache_lookups(
    ctx: &WorkerContext,
    job: &JobMessage,
    plan: &str,
    estimate: Estimate,
) -> Estimate {
    let cache = &ctx.cfg.cache;
    let semantic =
        (cache.settings(job.cache.as_ref(), &job.policy, Some(plan))).is_some_and(|s| s.semantic);
    let price = (cache.embedding_model.as_deref())
        .and_then(|m| ctx.router.model(m))
        .map(|m| m.price);
    let Some(price) = price.filter(|_| semantic) else {
        return estimate;
    };
    let tokens = u64::try_from(estimate.tokens).unwrap_or(0);
    let cost = price.cost_micros(ragq::providers::Usage {
        input_tokens: tokens,
        output_tokens: 0,
    });
    estimate.plus(&Estimate {
        max_micros: cost,
        min_micros: cost,
        tokens: estimate.tokens,
        calls: estimate.calls,
    })
}

/// Runs the handler; a panic becomes [`JobError::Panicked`], so its delivery is settled like any
/// failure instead of staying unacknowledged with the job `running`.
async fn run_guarded<H: JobHandler>(
    ctx: &JobContext<'_>,
    input: Result<H::Input, String>,
) -> Result<serde_json::Value, JobError> {
    if !ctx.env.router.has_policy(&ctx.job.policy) {
        return Err(JobError::permanent(
            "unknown_policy",
            format!("unknown routing policy `{}`", ctx.job.policy),
        ));
    }
    if let Some(plan) = ctx.scope.plan {
        (ctx.env.cfg.plans)
            .check_policy(plan, &ctx.job.policy)
            .map_err(|refusal| JobError::permanent("policy_not_allowed", refusal))?;
    }
    let input = input.map_err(JobError::invalid)?;
    guard(H::run(ctx, input)).await
}

/// Awaits an attempt, turning a panic into [`JobError::Panicked`].
async fn guard(
    attempt: impl std::future::Future<Output = Result<serde_json::Value, JobError>>,
) -> Result<serde_json::Value, JobError> {
    match AssertUnwindSafe(attempt).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let error = JobError::from_panic(&*payload);
            tracing::error!(error = %error, "job handler panicked");
            Err(error)
        }
    }
}

/// Commits the attempt's outcome (with its webhook, for a final one) and hands the webhook to the
/// sender once committed.
async fn commit(
    ctx: &WorkerContext,
    job: &JobMessage,
    attempt: i32,
    result: Result<serde_json::Value, JobError>,
    started: std::time::Instant,
    job_span: tracing::Span,
) -> Option<String> {
    let plan = settle::after_attempt(result, attempt, ctx.retry_policy());
    let ended = match &plan.finish {
        Finish::Succeeded(_) => "succeeded",
        Finish::Failed { .. } => "failed",
        Finish::Retry { .. } => "retried",
    };
    match &plan.finish {
        Finish::Retry { code, delay, .. } => {
            let delay_ms = delay.as_millis() as u64;
            tracing::info!(code = %code, attempt, delay_ms, "attempt failed; retrying later")
        }
        Finish::Failed { code, .. } => tracing::info!(code = %code, attempt, "job failed"),
        Finish::Succeeded(_) => {}
    }
    let webhook = job
        .webhook_url
        .as_ref()
        .and_then(|url| webhook_for(job, attempt, &plan.finish, url))
        .map(|w| NewDelivery {
            traceparent: ragq::telemetry::traces::traceparent_of(&job_span),
            ..w
        });
    let outcome = Outcome {
        tenant_id: job.tenant.clone(),
        job_id: job.id.clone(),
        attempt,
        finish: plan.finish,
        webhook: webhook.clone(),
    };
    let committed = ctx.commits.finish(outcome).await;
    match &committed {
        Ok(crate::commit::FinishResult::Committed { accepted_at }) => {
            let kind = job.kind.as_str();
            let in_worker = started.elapsed();
            ragq::telemetry::metrics::job_finished(kind, ended, in_worker);
            let since_accepted = (chrono::Utc::now() - *accepted_at)
                .to_std()
                .unwrap_or_default();
            let timing = ragq::telemetry::stats::JobTiming {
                since_accepted,
                in_worker,
            };
            (ctx.job_stats).record(&job.tenant, kind, ended, timing);
            if let Some(w) = webhook {
                // A full channel is fine: the poller sends it when its lease ends.
                let _ = ctx.webhooks.try_send(PendingDelivery {
                    id: w.id,
                    tenant_id: job.tenant.clone(),
                    url: w.url,
                    payload: w.payload,
                    attempts: 0,
                    attempts_base: 0,
                    traceparent: None,
                    job_span: Some(job_span),
                });
            }
        }
        Ok(crate::commit::FinishResult::Fenced) => tracing::warn!(
            attempt,
            "job was queued again and taken by another attempt; dropping this attempt's outcome"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot commit outcome; the job is queued again when this worker's lease ends")
        }
    }
    let committed = matches!(committed, Ok(crate::commit::FinishResult::Committed { .. }));
    plan.dead_letter.filter(|_| committed)
}

/// The webhook for a final outcome (none for a retry).
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
        traceparent: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::{after_attempt, RetryPolicy};

    #[tokio::test]
    async fn a_panicking_attempt_settles_like_a_failure() {
        let delays = [std::time::Duration::from_secs(1)];
        let policy = RetryPolicy {
            max_attempts: 2,
            delays: &delays,
        };
        let panicking = || {
            guard(async {
                let v: Vec<u8> = Vec::new();
                Ok(json!(v[3]))
            })
        };
        let result = panicking().await;
        assert!(
            matches!(&result, Err(JobError::Panicked { message }) if message.contains("index out of bounds"))
        );
        let first = after_attempt(result, 1, policy);
        assert!(matches!(first.finish, Finish::Retry { delay, .. } if delay == delays[0]));
        assert_eq!(first.dead_letter, None);
        let last = after_attempt(panicking().await, 2, policy);
        assert!(matches!(last.dead_letter, Some(ref r) if r.starts_with("handler_panicked")));
        assert!(matches!(last.finish, Finish::Failed { .. }));
        assert_eq!(guard(async { Ok(json!(1)) }).await, Ok(json!(1)));
    }
}
