//! `/v1/pipelines`: a tenant's cron pipelines over HTTP (same rules as `ragq pipeline`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use super::{authenticate, caller, tenant_of, ApiError, ApiState};
use crate::tenants::keys::Scope;

use crate::scheduler::pipeline::{self, PipelineSpec};

/// The answer of a pipeline action: the pipeline (pause, resume) or the triggered run.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // described, never built: `act` answers with either as JSON
enum PipelineOrTriggered {
    Pipeline(pipeline::Pipeline),
    Triggered(Triggered),
}

/// Creates a cron pipeline for the tenant.
#[utoipa::path(
    post,
    path = "/v1/pipelines",
    tag = "pipelines",
    request_body = PipelineSpec,
    responses(
        (status = 201, description = "Created; its first slot is the first after now", body = pipeline::Pipeline),
        (status = 409, description = "The name exists, or the tenant has scheduler.max_pipelines_per_tenant pipelines", body = super::error::ErrorBody),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&state, &headers, Scope::PipelinesWrite).await?;
    let tenant = tenant_of(&state, &caller).await?;
    let spec = PipelineSpec::from_json(&body).map_err(ApiError::BadRequest)?;
    pipeline::check_webhook(&spec, &state.url_policy)
        .await
        .map_err(ApiError::BadRequest)?;
    (state.plans)
        .check_policy(&tenant.plan, pipeline::template_policy(&spec))
        .map_err(ApiError::Forbidden)?;
    let (pool, actor) = (&state.pool, caller.actor());
    let p = pipeline::create(
        pool,
        &actor,
        &tenant.id,
        &spec,
        Utc::now(),
        &state.pipelines,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(p))).into_response())
}

/// The tenant's pipelines.
#[utoipa::path(
    get,
    path = "/v1/pipelines",
    tag = "pipelines",
    responses(
        (status = 200, description = "Every pipeline of the tenant", body = Vec<pipeline::Pipeline>),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::PipelinesRead).await?;
    Ok(Json(json!(
        pipeline::list(&state.pool, Some(&tenant.id)).await?
    )))
}

/// A pipeline's last 100 runs, newest first, with their jobs' outcomes.
#[utoipa::path(
    get,
    path = "/v1/pipelines/{name}/runs",
    tag = "pipelines",
    params(("name" = String, Path, description = "The pipeline's name")),
    responses(
        (status = 200, description = "The runs", body = Vec<pipeline::RunView>),
        (status = 404, description = "The tenant has no such pipeline", body = super::error::ErrorBody),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn runs(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::PipelinesRead).await?;
    known_name(&name)?;
    Ok(Json(json!(
        pipeline::runs(&state.pool, &tenant.id, &name, 100).await?
    )))
}

/// What `trigger` did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Triggered {
    /// The run's job, queued now; none when the pipeline's overlap rule skipped the run.
    job_id: Option<String>,
    skipped: bool,
}

/// `pause`, `resume` or `trigger` a pipeline.
#[utoipa::path(
    post,
    path = "/v1/pipelines/{name}/{action}",
    tag = "pipelines",
    params(
        ("name" = String, Path, description = "The pipeline's name"),
        ("action" = String, Path, description = "`pause`, `resume` or `trigger`"),
    ),
    responses(
        (status = 200, description = "pause and resume: the pipeline; trigger: the run's job", body = inline(PipelineOrTriggered)),
        (status = 404, description = "No such pipeline or action", body = super::error::ErrorBody),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn act(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&state, &headers, Scope::PipelinesWrite).await?;
    let tenant = tenant_of(&state, &caller).await?;
    known_name(&name)?;
    let now = Utc::now();
    let actor = caller.actor();
    match action.as_str() {
        "pause" | "resume" => {
            let resume = action == "resume";
            pipeline::set_enabled(&state.pool, &actor, &tenant.id, &name, resume, now).await?;
            Ok(Json(json!(
                pipeline::get(&state.pool, &tenant.id, &name).await?
            )))
        }
        "trigger" => {
            // Run the transaction in its own task: a client that disconnects must not cancel it
            // mid-BEGIN (sqlx 0.8 then leaves the pooled connection inside a transaction).
            let (pool, tenant_id) = (state.pool.clone(), tenant.id.clone());
            let max = state.pipelines;
            let job = tokio::spawn(async move {
                crate::scheduler::fire::trigger(&pool, &actor, &tenant_id, &name, now, max).await
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
            // Publish now rather than at the scheduler's next tick; if this fails the relay will.
            if let Err(e) = crate::scheduler::outbox::relay(&state.pool, &state.publisher).await {
                tracing::warn!(error = %e, "triggered run left for the scheduler's relay");
            }
            let skipped = job.is_none();
            Ok(Json(json!(Triggered {
                job_id: job,
                skipped
            })))
        }
        other => Err(ApiError::NotFound(format!(
            "no pipeline action `{other}`: use pause, resume or trigger"
        ))),
    }
}

/// A name no pipeline can have (control characters, too long) is not looked up.
fn known_name(name: &str) -> Result<(), ApiError> {
    if pipeline::is_name(name) {
        Ok(())
    } else {
        Err(ApiError::NotFound("no pipeline with this name".into()))
    }
}
