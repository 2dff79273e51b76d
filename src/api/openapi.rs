//! `GET /openapi.json`: the HTTP API described as OpenAPI 3.1, generated from the code.
//!
//! utoipa builds the paths from each handler's `#[utoipa::path]` annotation and the schemas from
//! the types the handlers read and write (`JobView`, `PipelineSpec`, `SpendRow`, `ErrorBody` ...),
//! so the description changes with them. The job message is the one exception: its schema is
//! `schemas/job.schema.json`, the JSON Schema every AMQP publisher uses (held to the parser by
//! tests/schema.rs), inserted here with `tenant` optional, as the API fills it from the key.
//! The outcome webhook ragq sends is described under `webhooks`.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::{JobFailure, JobState, JobView};
use crate::scheduler::pipeline::{Missed, Overlap, Pipeline, PipelineSpec, RunView};
use crate::spend::report::SpendRow;

/// The schema name of a submitted job; its content comes from `schemas/job.schema.json`.
const JOB_SUBMISSION: &str = "JobSubmission";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ragq",
        description = "Background AI jobs for SaaS backends: submit batch completions, document \
            ingestion and RAG answers, read their outcomes, spend and cron pipelines. Every \
            /v1 route authenticates with an API key (`Authorization: Bearer ...`) holding the \
            route's scope (403 without it): a tenant's key sees only that tenant's data, an \
            operator key reads across tenants and the audit log. Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        super::submit,
        super::read,
        super::spend,
        super::pipelines::create,
        super::pipelines::list,
        super::pipelines::runs,
        super::pipelines::act,
        super::audit_log,
        super::replay_webhooks,
        super::provider_keys::list,
        super::provider_keys::set,
        super::provider_keys::delete,
        super::prompts::create,
        super::prompts::set_label,
        super::prompts::list,
        super::prompts::show,
        super::healthz,
        serve,
        crate::telemetry::metrics::metrics_page,
        crate::dashboard::show,
        crate::dashboard::style,
        crate::dashboard::session::login,
        crate::dashboard::session::logout,
    ),
    components(schemas(
        JobSubmission,
        JobView,
        JobState,
        JobFailure,
        ErrorBody,
        ErrorDetail,
        SpendRow,
        PipelineSpec,
        Pipeline,
        RunView,
        Overlap,
        Missed,
        super::pipelines::Triggered,
        crate::dashboard::session::LoginForm,
        crate::audit::AuditRow,
        crate::webhooks::replay::ReplayFilter,
        crate::webhooks::replay::Replayed,
        crate::tenants::provider_keys::ProviderKeyView,
        super::provider_keys::ProviderKeyBody,
        super::prompts::NewPrompt,
        super::prompts::Saved,
        super::prompts::LabelBody,
        crate::prompts::store::PromptDetail,
        crate::prompts::store::PromptSummary,
        crate::prompts::store::LabelView,
        crate::prompts::store::PromptVersion,
    )),
    modifiers(&Security),
    tags(
        (name = "jobs", description = "Submit jobs and read their outcomes"),
        (name = "spend", description = "The tenant's spend from the ledger's daily aggregates"),
        (name = "pipelines", description = "Cron pipelines that submit a job per slot"),
        (name = "prompts", description = "Versioned prompt templates: save versions, move labels, split traffic"),
        (name = "provider keys", description = "Bring your own key: the tenant's own provider keys, stored sealed, never echoed"),
        (name = "audit", description = "Who changed what: every administrative change (operator keys)"),
        (name = "operations", description = "Health, metrics, this description and the dashboard"),
    )
)]
struct ApiDoc;

/// The security schemes: tenants' API keys, and the dashboard's session cookie.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A tenant's API key (`ragq tenant add` prints it once).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "dashboard_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::dashboard::session::COOKIE,
                "Set by POST /dashboard/login.",
            ))),
        );
    }
}

/// A submitted job: a placeholder that [`document`] replaces with `schemas/job.schema.json`.
pub(crate) struct JobSubmission;

impl utoipa::PartialSchema for JobSubmission {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(
            utoipa::openapi::ObjectBuilder::new().build(),
        ))
    }
}

impl utoipa::ToSchema for JobSubmission {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed(JOB_SUBMISSION)
    }
}

/// The document, built once.
pub(crate) fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build)
}

fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let job: Value =
        serde_json::from_str(include_str!("../../schemas/job.schema.json")).unwrap_or_default();
    let (submission, inputs) = submission_schemas(job);
    let schemas = &mut doc["components"]["schemas"];
    schemas[JOB_SUBMISSION] = submission;
    for (name, schema) in inputs {
        schemas[name] = schema;
    }
    doc["webhooks"] = webhooks();
    doc
}

/// The AMQP job schema as the API takes it: `tenant` optional (the key names it), and its `$defs`
/// (one input schema per kind) moved to the document's components, with the references to them.
fn submission_schemas(mut job: Value) -> (Value, Vec<(String, Value)>) {
    let Some(obj) = job.as_object_mut() else {
        return (job, Vec::new());
    };
    obj.remove("$schema");
    obj.remove("$id");
    if let Some(Value::Array(required)) = obj.get_mut("required") {
        required.retain(|r| r != "tenant");
    }
    let defs = match obj.remove("$defs") {
        Some(Value::Object(defs)) => defs,
        _ => Map::new(),
    };
    let component = |def: &str| format!("JobInput_{def}");
    let moved = |r: &str| {
        r.strip_prefix("#/$defs/")
            .map(|def| format!("#/components/schemas/{}", component(def)))
    };
    rewrite_refs(&mut job, &moved);
    // Definitions refer to each other too (an input to the saved-prompt reference).
    let inputs = (defs.into_iter())
        .map(|(k, mut v)| {
            rewrite_refs(&mut v, &moved);
            (component(&k), v)
        })
        .collect();
    (job, inputs)
}

/// Replaces every `$ref` that `map` maps.
fn rewrite_refs(value: &mut Value, map: &dyn Fn(&str) -> Option<String>) {
    match value {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("$ref") {
                if let Some(new) = map(r) {
                    *r = new;
                }
            }
            obj.values_mut().for_each(|v| rewrite_refs(v, map));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, map)),
        _ => {}
    }
}

/// The outcome webhook (OpenAPI 3.1 `webhooks`): what ragq POSTs to a job's `webhook_url`.
fn webhooks() -> Value {
    json!({
        "jobOutcome": {"post": {
            "summary": "A job succeeded or failed for good",
            "description": "Signed per Standard Webhooks with the tenant's `whsec_` secret; \
                retried with backoff until a 2xx. Dedupe on `webhook-id`.",
            "parameters": [
                {"name": "webhook-id", "in": "header", "required": true,
                 "schema": {"type": "string"}, "description": "Unique per event; the same on every retry"},
                {"name": "webhook-timestamp", "in": "header", "required": true,
                 "schema": {"type": "string"}, "description": "Unix seconds"},
                {"name": "webhook-signature", "in": "header", "required": true,
                 "schema": {"type": "string"}, "description": "`v1,<base64 HMAC-SHA256>`, space-separated when several"},
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["type", "timestamp", "data"],
                "properties": {
                    "type": {"enum": ["job.succeeded", "job.failed"]},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "data": {"type": "object", "description": "The job: id, tenant, kind, state, attempts, tags, and `result` or `error`"},
                }
            }}}},
            "responses": {"2XX": {"description": "Received; any other answer is retried"}},
        }},
    })
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object))
)]
pub(crate) async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::Json(document()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_and_the_job_schema() {
        let doc = document();
        assert!(doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"));
        let paths = doc["paths"].as_object().map(|p| p.len()).unwrap_or(0);
        assert!(paths >= 11, "{paths} paths");
        let submission = &doc["components"]["schemas"][JOB_SUBMISSION];
        assert!(submission["properties"]["kind"].is_object(), "{submission}");
        assert!(!submission["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "tenant")));
        let text = doc.to_string();
        assert!(
            !text.contains("#/$defs/"),
            "every reference resolves in the document"
        );
        for input in [
            "JobInput_batch_complete",
            "JobInput_ingest",
            "JobInput_rag_answer",
        ] {
            assert!(doc["components"]["schemas"][input].is_object(), "{input}");
        }
    }
}
