//! `ragq api`: HTTP submission and reads for SaaS backends.
//!
//! `POST /v1/jobs` records the job as `queued` in Postgres, then publishes it (confirmed) to
//! `ragq.jobs`; `GET /v1/jobs/{id}` reads it back. Both authenticate with the tenant's API key
//! (`Authorization: Bearer ...`), and a tenant only ever sees its own jobs. Submitting an id again is
//! idempotent: the existing job is returned, and re-published if it is still waiting to be queued.

pub mod error;
mod limits;
mod openapi;
mod pipelines;
mod prompts;
mod provider_keys;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::jobs::JobMessage;
use crate::queue::publisher::{OutgoingJob, ReconnectingPublisher};
use crate::queue::QueueConfig;
use crate::tenants::keys::{self, Caller, Scope};
use crate::tenants::{Tenant, TenantDirectory};
pub use error::ApiError;

pub(crate) struct ApiState {
    pub(crate) pool: PgPool,
    pub(crate) tenants: TenantDirectory,
    pub(crate) publisher: ReconnectingPublisher,
    pub(crate) max_message_bytes: usize,
    /// SHA-256 of the operator key, which opens the all-tenant dashboard (none: no such view).
    pub(crate) operator_key_hash: Option<Vec<u8>>,
    pub(crate) dashboard_cookie_secure: bool,
    pub(crate) url_policy: crate::webhooks::url_policy::UrlPolicy,
    pub(crate) plans: crate::tenants::plans::Plans,
    pub(crate) limiter: limits::KeyLimiter,
    pub(crate) request_timeout: std::time::Duration,
    pub(crate) pipelines: crate::scheduler::pipeline::PipelineLimits,
    pub(crate) redaction: crate::redaction::RedactionConfig,
    pub(crate) keyring: crate::keyring::Keyring,
    /// The catalog's provider names: the providers a tenant may bring keys for.
    pub(crate) providers: Vec<String>,
    pub(crate) prompt_limits: crate::prompts::render::Limits,
}

/// Builds the router (also used by tests on an ephemeral port).
pub fn router(api: &ApiConfig, queue: &QueueConfig, pool: PgPool) -> Router {
    let state = Arc::new(ApiState {
        tenants: TenantDirectory::new(pool.clone(), std::time::Duration::from_secs(30)),
        pool,
        publisher: ReconnectingPublisher::new(queue.clone(), "ragq-api"),
        max_message_bytes: queue.max_message_bytes,
        operator_key_hash: (api.operator_key.as_ref())
            .map(|k| crate::tenants::hash_api_key(k.expose())),
        dashboard_cookie_secure: api.dashboard_cookie_secure,
        url_policy: api.url_policy.clone(),
        plans: api.plans.clone(),
        limiter: limits::KeyLimiter::new(api.rate_limit_per_s),
        request_timeout: api.request_timeout,
        pipelines: api.pipelines,
        redaction: api.redaction.clone(),
        keyring: api.keyring.clone(),
        providers: api.providers.clone(),
        prompt_limits: api.prompts,
    });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/jobs", post(submit))
        .route("/v1/jobs/{id}", get(read))
        .route("/v1/spend", get(spend))
        .route(
            "/v1/pipelines",
            post(pipelines::create).get(pipelines::list),
        )
        .route("/v1/pipelines/{name}/runs", get(pipelines::runs))
        .route("/v1/pipelines/{name}/{action}", post(pipelines::act))
        .route("/v1/prompts", post(prompts::create).get(prompts::list))
        .route("/v1/prompts/{name}", get(prompts::show))
        .route(
            "/v1/prompts/{name}/labels/{label}",
            axum::routing::put(prompts::set_label),
        )
        .route("/v1/audit", get(audit_log))
        .route("/v1/webhooks/replay", post(replay_webhooks))
        .route("/v1/provider-keys", get(provider_keys::list))
        .route(
            "/v1/provider-keys/{provider}",
            axum::routing::put(provider_keys::set).delete(provider_keys::delete),
        )
        .route("/metrics", get(crate::telemetry::metrics::metrics_page))
        .merge(crate::dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            limits::deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            limits::rate_limit,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(count_request))
        .layer(DefaultBodyLimit::max(api.max_body_bytes))
        .with_state(state)
}

/// Counts each request by its route as declared (`/v1/jobs/{id}`, never the path, so ids do not
/// become series) and status.
async fn count_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    crate::telemetry::metrics::http_request(&route, response.status().as_u16());
    response
}

/// Serves until `cancel` fires.
pub async fn serve(
    api: &ApiConfig,
    queue: &QueueConfig,
    pool: PgPool,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&api.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    axum::serve(listener, router(api, queue, pool))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await?;
    Ok(())
}

/// The `Bearer` secret of a request, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The API key a request carries, held to its rate and to `scope`: 401 without a working key,
/// 429 past the key's rate, 403 without the scope.
pub(crate) async fn caller(
    state: &ApiState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<Caller, ApiError> {
    let secret = bearer(headers).ok_or(ApiError::Unauthorized(
        "missing `Authorization: Bearer <api key>` header",
    ))?;
    let caller = match &state.operator_key_hash {
        Some(hash) if *hash == crate::tenants::hash_api_key(secret) => Caller {
            key_id: OPERATOR_ENV_KEY.into(),
            tenant: None,
            scopes: vec![Scope::Operator],
        },
        _ => keys::authenticate(&state.pool, secret)
            .await?
            .map_err(|refusal| ApiError::Unauthorized(refusal.message()))?,
    };
    state.limiter.admit_key(&caller.key_id)?;
    if caller.may(scope) {
        return Ok(caller);
    }
    Err(ApiError::Forbidden(match caller.tenant {
        None => "an operator key acts for no tenant: use a key of the tenant".into(),
        Some(_) => format!("this API key lacks the `{}` scope", scope.as_str()),
    }))
}

/// The key id the environment's operator key (`api.operator_key_env`) acts as in the audit log.
pub(crate) const OPERATOR_ENV_KEY: &str = "operator-env";

/// The tenant a request acts for: its key's, which must hold `scope`.
pub(crate) async fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<Tenant, ApiError> {
    let caller = caller(state, headers, scope).await?;
    tenant_of(state, &caller).await
}

/// The caller's tenant (a key's tenant exists: keys go with their tenant).
pub(crate) async fn tenant_of(state: &ApiState, caller: &Caller) -> Result<Tenant, ApiError> {
    let id = caller.tenant.as_deref().ok_or_else(|| {
        ApiError::Forbidden("an operator key acts for no tenant: use a key of the tenant".into())
    })?;
    state
        .tenants
        .get(id)
        .await?
        .ok_or(ApiError::Unauthorized("unknown API key"))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Submits a job. The id is the idempotency key: the same id again returns the job as it is.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body(
        content = openapi::JobSubmission,
        description = "A job message (schemas/job.schema.json); `tenant` may be left out, the key names it"
    ),
    params(("traceparent" = Option<String>, Header, description = "W3C trace context: the job joins the caller's trace")),
    responses(
        (status = 202, description = "Accepted and queued", body = JobView),
        (status = 200, description = "This id was submitted before: the job as it is", body = JobView),
        (status = 413, description = "Larger than queue.max_message_bytes or api.max_body_bytes", body = error::ErrorBody),
        (status = 422, description = "`pii_blocked`: the tenant's redaction policy blocks the personal data the input holds (the kinds are named, never the values)", body = error::ErrorBody),
        error::Refusals,
    ),
    security(("api_key" = []))
)]
async fn submit(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::JobsWrite).await?;
    let mut job = parse_submission(&body, &tenant, state.max_message_bytes)?;
    // Saved prompts are resolved, checked and pinned before the job is stored.
    crate::prompts::pin::pin(
        &state.pool,
        &mut job,
        state.prompt_limits,
        state.max_message_bytes,
        "api",
    )
    .await
    .map_err(prompts::refusal)?;
    (state.plans)
        .check_policy(&tenant.plan, &job.policy)
        .map_err(ApiError::Forbidden)?;
    if let Some(url) = &job.webhook_url {
        state
            .url_policy
            .check(url)
            .await
            .map_err(|refusal| ApiError::BadRequest(format!("webhook_url refused: {refusal}")))?;
    }
    let (job, wire) = redact_submission(&state, job)?;
    let inserted = crate::jobs::store::insert_queued(&state.pool, &job).await?;
    let current = job_view(&state.pool, &tenant.id, &job.id).await?;
    let still_queued = current
        .as_ref()
        .is_some_and(|v| v.state == JobState::Queued);
    if inserted || still_queued {
        // A submitter's W3C trace context makes the job part of its trace.
        let traceparent = headers
            .get(crate::telemetry::traces::TRACEPARENT)
            .and_then(|v| v.to_str().ok());
        let outgoing = OutgoingJob {
            kind: job.kind.as_str(),
            id: &job.id,
            body: &wire,
            traceparent,
        };
        state.publisher.send_job(&outgoing).await.map_err(|e| {
            ApiError::Unavailable(format!("cannot queue the job, retry with the same id: {e}"))
        })?;
    }
    let status = if inserted {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    // The row was just written (or found): absent only if deleted meanwhile.
    let current = current.ok_or_else(|| ApiError::Internal("job vanished after insert".into()))?;
    Ok((status, Json(current)).into_response())
}

/// Applies the job's redaction policy: the job to store (masked) and the message to publish (the
/// original when the policy restores values into the result: the worker masks it the same way
/// and needs the values; else the masked one). A blocked job is refused here.
fn redact_submission(state: &ApiState, job: JobMessage) -> Result<(JobMessage, Vec<u8>), ApiError> {
    let wire =
        |j: &JobMessage| serde_json::to_vec(j).map_err(|e| ApiError::Internal(e.to_string()));
    let feature = job.tags.get("feature").map(String::as_str);
    let Some(policy) = state.redaction.policy_for(&job.tenant, feature) else {
        let bytes = wire(&job)?;
        return Ok((job, bytes));
    };
    let mut stored = job.clone();
    let applied = policy.apply(job.kind, &mut stored.input);
    if policy.mode == crate::redaction::Mode::Block && !applied.found.is_empty() {
        return Err(ApiError::PiiBlocked(format!(
            "the input holds personal data ({}); redaction policy `{}` blocks it",
            applied.kinds(),
            policy.name
        )));
    }
    let bytes = if policy.restore {
        wire(&job)?
    } else {
        wire(&stored)?
    };
    Ok((stored, bytes))
}

/// Reads a submission: the tenant comes from the API key; a body naming another tenant is refused.
fn parse_submission(
    body: &[u8],
    tenant: &Tenant,
    max_bytes: usize,
) -> Result<JobMessage, ApiError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("body must be a JSON object".into()))?;
    match obj.get("tenant") {
        None => {
            obj.insert("tenant".into(), Value::String(tenant.id.clone()));
        }
        Some(Value::String(t)) if *t == tenant.id => {}
        Some(_) => {
            return Err(ApiError::Forbidden(
                "`tenant` does not match the API key".into(),
            ))
        }
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| ApiError::Internal(e.to_string()))?;
    JobMessage::parse(&bytes, max_bytes).map_err(|e| match e {
        crate::jobs::PoisonReason::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    })
}

/// Reads one of the tenant's jobs: state, attempts, result or error.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "The tenant has no job with this id", body = error::ErrorBody),
        error::Refusals,
    ),
    security(("api_key" = []))
)]
async fn read(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let tenant = authenticate(&state, &headers, Scope::JobsRead).await?;
    // An id no job can have (control characters, too long) is not looked up.
    if !crate::jobs::is_job_id(&id) {
        return Err(ApiError::NotFound("no job with this id".into()));
    }
    job_view(&state.pool, &tenant.id, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no job `{id}`")))
}

/// `GET /v1/spend?group_by=feature,model,day&from=YYYY-MM-DD&to=YYYY-MM-DD&format=json|csv`: the
/// caller's own spend from the daily aggregates.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SpendParams {
    /// Comma-separated: tenant, feature, model, provider, day, prompt, version (default feature).
    group_by: Option<String>,
    /// First day, inclusive (`YYYY-MM-DD`, UTC).
    from: Option<String>,
    /// Last day, inclusive.
    to: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// One tenant: a tenant key may name only its own; an operator key reads every tenant
    /// without it.
    tenant: Option<String>,
}

/// The tenant's spend, grouped as asked, from the ledger's daily aggregates.
#[utoipa::path(
    get,
    path = "/v1/spend",
    tag = "spend",
    params(SpendParams),
    responses(
        (status = 200, description = "One row per group", content(
            (Vec<crate::spend::report::SpendRow> = "application/json"),
            (String = "text/csv"),
        )),
        error::Refusals,
    ),
    security(("api_key" = []))
)]
async fn spend(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<SpendParams>,
) -> Result<Response, ApiError> {
    use crate::spend::report::{self, Dimension, ReportQuery};
    let caller = caller(&state, &headers, Scope::SpendRead).await?;
    let tenant = match (caller.tenant, params.tenant) {
        (Some(own), None) => Some(own),
        (Some(own), Some(asked)) if own == asked => Some(own),
        (Some(_), Some(_)) => {
            return Err(ApiError::Forbidden(
                "`tenant` names another tenant than the API key's".into(),
            ))
        }
        // An operator key reads every tenant, or the one asked for.
        (None, asked) => asked,
    };
    let group_by = Dimension::parse_list(params.group_by.as_deref().unwrap_or("feature"))
        .map_err(ApiError::BadRequest)?;
    let date = |v: &Option<String>, name: &str| {
        v.as_deref()
            .map(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d"))
            .transpose()
            .map_err(|_| ApiError::BadRequest(format!("`{name}` must be a date like 2026-11-25")))
    };
    let q = ReportQuery {
        tenant,
        from: date(&params.from, "from")?,
        to: date(&params.to, "to")?,
        group_by,
    };
    let rows = report::query(&state.pool, &q).await?;
    match params.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(report::to_json(&q.group_by, &rows)).into_response()),
        "csv" => Ok((
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report::to_csv(&q.group_by, &rows),
        )
            .into_response()),
        other => Err(ApiError::BadRequest(format!(
            "`format` must be json or csv, not `{other}`"
        ))),
    }
}

/// Re-sends the tenant's kept webhook deliveries (failed ones by default) with their original
/// `webhook-id`, so receivers dedupe; running workers send them within their poll interval.
#[utoipa::path(
    post,
    path = "/v1/webhooks/replay",
    tag = "jobs",
    request_body = crate::webhooks::replay::ReplayFilter,
    responses(
        (status = 200, description = "The deliveries queued to be sent again", body = crate::webhooks::replay::Replayed),
        error::Refusals,
    ),
    security(("api_key" = []))
)]
async fn replay_webhooks(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<crate::webhooks::replay::Replayed>, ApiError> {
    use crate::webhooks::replay::{self, ReplayError, ReplayFilter};
    let caller = caller(&state, &headers, Scope::JobsWrite).await?;
    let tenant = tenant_of(&state, &caller).await?;
    let filter: ReplayFilter =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    match replay::replay(&state.pool, &caller.actor(), &tenant.id, &filter).await {
        Ok(done) => Ok(Json(done)),
        Err(ReplayError::Invalid(m)) => Err(ApiError::BadRequest(m)),
        Err(ReplayError::Db(e)) => Err(e.into()),
    }
}

/// The audit log, newest first, filtered; operator keys only.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(crate::audit::AuditFilter),
    responses(
        (status = 200, description = "The rows, newest first", body = Vec<crate::audit::AuditRow>),
        error::Refusals,
    ),
    security(("api_key" = []))
)]
async fn audit_log(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Query(filter): axum::extract::Query<crate::audit::AuditFilter>,
) -> Result<Json<Vec<crate::audit::AuditRow>>, ApiError> {
    caller(&state, &headers, Scope::Operator).await?;
    Ok(Json(crate::audit::list(&state.pool, &filter).await?))
}

/// A job as clients see it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    pub tenant: String,
    #[schema(value_type = String, example = "batch.complete")]
    pub kind: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub state: JobState,
    pub policy: String,
    /// Attempts started so far.
    pub attempts: i32,
    #[schema(value_type = Object)]
    pub tags: Value,
    /// The outcome of a succeeded job (its completions, answer or indexing counts).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why a failed job failed.
    #[sqlx(json(nullable))]
    pub error: Option<JobFailure>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// A failed job's error: a stable code and a message for people.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobFailure {
    pub code: String,
    pub message: Option<String>,
}

/// A job as clients see it, if `tenant` has one with this id.
pub async fn job_view(
    pool: &PgPool,
    tenant: &str,
    id: &str,
) -> Result<Option<JobView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id AS tenant, kind, state, policy, attempts, tags, result, \
           CASE WHEN error_code IS NULL THEN NULL \
                ELSE jsonb_build_object('code', error_code, 'message', error) END AS error, \
           created_at, finished_at \
         FROM jobs WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await
}

impl IntoResponse for ApiError {
    /// Client errors say what is wrong. Server errors never show their details (driver, broker or
    /// upstream text): the client gets a generic message and an error id, the log gets both.
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            let error_id = uuid::Uuid::new_v4().simple().to_string();
            tracing::error!(error = %self, error_id = %error_id, "api request failed");
            let what = match self {
                Self::Unavailable(_) => "temporarily unavailable; retry (a job with the same id)",
                _ => "internal error",
            };
            format!("{what} (error id {error_id})")
        } else {
            self.to_string()
        };
        let body = error::ErrorBody {
            error: error::ErrorDetail {
                code: self.code().into(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::TooManyRequests(_, secs) = self {
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    /// The key that opens the dashboard's all-tenant view, read from the environment variable
    /// `api.operator_key_env` names.
    pub operator_key: Option<crate::secret::Secret>,
    /// Marks the dashboard's session cookie `Secure` (set it when clients reach the api over
    /// HTTPS, through a proxy that terminates TLS).
    pub dashboard_cookie_secure: bool,
    /// Which webhook URLs submissions may name (`webhooks.allow_private`, `webhooks.https_only`).
    pub url_policy: crate::webhooks::url_policy::UrlPolicy,
    /// Which policies each plan may name, checked at submission as the worker checks it again.
    pub plans: crate::tenants::plans::Plans,
    /// Requests per second per API key; 0: unlimited.
    pub rate_limit_per_s: u32,
    pub request_timeout: std::time::Duration,
    /// Bounds on the pipelines `POST /v1/pipelines` creates.
    pub pipelines: crate::scheduler::pipeline::PipelineLimits,
    /// PII redaction policies, applied to submissions before they are stored.
    pub redaction: crate::redaction::RedactionConfig,
    /// Seals the provider keys tenants bring.
    pub keyring: crate::keyring::Keyring,
    /// The catalog's provider names.
    pub providers: Vec<String>,
    /// What one render of a saved prompt template may use (prompts are pinned at submission).
    pub prompts: crate::prompts::render::Limits,
}
