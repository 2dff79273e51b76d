//! `/v1/prompts`: a tenant saves prompt versions, moves labels (or splits one between versions)
//! and reads what it has (scope `prompts:write`). Jobs name these prompts; see
//! [`crate::prompts::pin`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{caller, tenant_of, ApiError, ApiState, Caller};
use crate::prompts::pin::PinError;
use crate::prompts::store::{
    self, Arm, LabelView, PromptDetail, PromptError, PromptSpec, PromptSummary,
};
use crate::tenants::keys::Scope;
use crate::tenants::Tenant;

/// A prompt version to save: the name, and the templates, variables schema and defaults.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPrompt {
    /// 1 to 64 of `[a-z0-9._-]`.
    name: String,
    /// MiniJinja template of the system message (optional).
    system: Option<String>,
    /// MiniJinja template of the user message.
    user: String,
    /// JSON Schema of the variables; jobs' variables are checked against it at submission.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    variables: Option<serde_json::Value>,
    /// `policy`, `max_tokens`, `temperature`: used where a job sets none.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    defaults: Option<serde_json::Value>,
}

/// The version a save made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Saved {
    name: String,
    version: i32,
}

/// Where a label points: one version, or a weighted split between versions.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LabelBody {
    version: Option<i32>,
    /// `[{"version": 3, "weight": 70}, {"version": 4, "weight": 30}]`
    #[schema(value_type = Option<Vec<Object>>)]
    split: Option<Vec<Arm>>,
}

/// A job's prompt cannot be pinned: the job's fault is a 400 naming the field, the database's a
/// 503.
pub(crate) fn refusal(e: PinError) -> ApiError {
    match e {
        PinError::Refused(m) => ApiError::BadRequest(m),
        PinError::Db(db) => db.into(),
    }
}

fn refused(e: PromptError) -> ApiError {
    match e {
        PromptError::Invalid(m) => ApiError::BadRequest(m),
        PromptError::Unknown { .. } => ApiError::NotFound(e.to_string()),
        PromptError::Db(db) => db.into(),
    }
}

async fn tenant(state: &ApiState, headers: &HeaderMap) -> Result<(Tenant, Caller), ApiError> {
    let caller = caller(state, headers, Scope::PromptsWrite).await?;
    Ok((tenant_of(state, &caller).await?, caller))
}

/// Saves a new version of one of the tenant's prompts (the first save makes version 1).
#[utoipa::path(
    post,
    path = "/v1/prompts",
    tag = "prompts",
    request_body = NewPrompt,
    responses(
        (status = 201, description = "Saved as the next version", body = Saved),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Saved>), ApiError> {
    let (tenant, caller) = tenant(&state, &headers).await?;
    let body: NewPrompt =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    let empty = || serde_json::json!({});
    let spec = PromptSpec {
        system: body.system,
        user: body.user,
        variables: body.variables.unwrap_or_else(empty),
        defaults: body.defaults.unwrap_or_else(empty),
    };
    let version = store::create(&state.pool, &caller.actor(), &tenant.id, &body.name, &spec)
        .await
        .map_err(refused)?;
    let saved = Saved {
        name: body.name,
        version,
    };
    Ok((StatusCode::CREATED, Json(saved)))
}

/// Points a label of one of the tenant's prompts at a version, or splits it between versions.
#[utoipa::path(
    put,
    path = "/v1/prompts/{name}/labels/{label}",
    tag = "prompts",
    params(
        ("name" = String, Path, description = "The prompt"),
        ("label" = String, Path, description = "The label (not `latest`)"),
    ),
    request_body = LabelBody,
    responses(
        (status = 200, description = "The prompt's labels now", body = Vec<LabelView>),
        (status = 404, description = "No such prompt or version", body = super::error::ErrorBody),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn set_label(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, label)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Vec<LabelView>>, ApiError> {
    let (tenant, caller) = tenant(&state, &headers).await?;
    let body: LabelBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    let (pool, actor) = (&state.pool, caller.actor());
    match (body.version, body.split) {
        (Some(v), None) => store::set_label(pool, &actor, &tenant.id, &name, &label, v).await,
        (None, Some(arms)) => {
            store::set_split(pool, &actor, &tenant.id, &name, &label, &arms).await
        }
        _ => {
            return Err(ApiError::BadRequest(
                "body: give either `version` or `split`".into(),
            ))
        }
    }
    .map_err(refused)?;
    Ok(Json(
        store::labels(pool, &tenant.id, &name)
            .await
            .map_err(refused)?,
    ))
}

/// The prompts the tenant can name: its own, and the operator's shared ones.
#[utoipa::path(
    get,
    path = "/v1/prompts",
    tag = "prompts",
    responses(
        (status = 200, description = "One entry per prompt", body = Vec<PromptSummary>),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<PromptSummary>>, ApiError> {
    let (tenant, _) = tenant(&state, &headers).await?;
    Ok(Json(
        store::list(&state.pool, &tenant.id)
            .await
            .map_err(refused)?,
    ))
}

/// One prompt: every version (templates, schema, defaults) and its labels.
#[utoipa::path(
    get,
    path = "/v1/prompts/{name}",
    tag = "prompts",
    params(("name" = String, Path, description = "The prompt")),
    responses(
        (status = 200, description = "The prompt", body = PromptDetail),
        (status = 404, description = "No such prompt", body = super::error::ErrorBody),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn show(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<PromptDetail>, ApiError> {
    let (tenant, _) = tenant(&state, &headers).await?;
    let detail = store::detail(&state.pool, &tenant.id, &name).await;
    Ok(Json(detail.map_err(refused)?))
}
