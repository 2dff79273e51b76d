//! `/v1/pipelines`: a tenant's cron pipelines over HTTP (same rules as `ragq pipeline`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use super::{authenticate, ApiError, ApiState};
use crate::scheduler::pipeline::{self, PipelineSpec};

pub(crate) async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let spec = PipelineSpec::from_json(&body).map_err(ApiError::BadRequest)?;
    // The template's webhook is called by every run: the URL policy applies now, not at 3 am.
    if let Some(url) = spec.job_template.get("webhook_url").and_then(Value::as_str) {
        state.url_policy.check(url).await.map_err(|refusal| {
            ApiError::BadRequest(format!("job_template.webhook_url refused: {refusal}"))
        })?;
    }
    let p = pipeline::create(&state.pool, &tenant.id, &spec, Utc::now(), &state.pipelines).await?;
    Ok((StatusCode::CREATED, Json(json!(p))).into_response())
}

pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    Ok(Json(json!(
        pipeline::list(&state.pool, Some(&tenant.id)).await?
    )))
}

pub(crate) async fn runs(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    Ok(Json(json!(
        pipeline::runs(&state.pool, &tenant.id, &name, 100).await?
    )))
}

/// `pause`, `resume` or `trigger`.
pub(crate) async fn act(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let now = Utc::now();
    match action.as_str() {
        "pause" | "resume" => {
            pipeline::set_enabled(&state.pool, &tenant.id, &name, action == "resume", now).await?;
            Ok(Json(json!(
                pipeline::get(&state.pool, &tenant.id, &name).await?
            )))
        }
        "trigger" => {
            // Run the transaction in its own task: a client that disconnects must not cancel it
            // mid-BEGIN (sqlx 0.8 then leaves the pooled connection inside a transaction).
            let (pool, tenant_id) = (state.pool.clone(), tenant.id.clone());
            let max = state.max_message_bytes;
            let job = tokio::spawn(async move {
                crate::scheduler::fire::trigger(&pool, &tenant_id, &name, now, max).await
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
            // Publish now rather than at the scheduler's next tick; if this fails the relay will.
            if let Err(e) = crate::scheduler::outbox::relay(&state.pool, &state.publisher).await {
                tracing::warn!(error = %e, "triggered run left for the scheduler's relay");
            }
            Ok(Json(json!({"job_id": job, "skipped": job.is_none()})))
        }
        other => Err(ApiError::NotFound(format!(
            "no pipeline action `{other}`: use pause, resume or trigger"
        ))),
    }
}
