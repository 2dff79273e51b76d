//! Pinning at intake: a job naming saved prompts is resolved once, when it is accepted (over HTTP
//! or from the queue), and stored with the version it got. Its variables are checked against that
//! version's JSON Schema there, so a bad job is refused at submission, never at run time.
//!
//! A `batch.complete` prompt is rendered here too: the stored job holds the text it sends, so every
//! attempt sends the same text whatever the label does next, and everything downstream (estimates,
//! redaction, the response cache) sees plain prompts. A `rag.answer` template needs the retrieved
//! context, so the worker renders it from the pinned version ([`pinned`], [`render_rag_parts`]).

use std::collections::hash_map::{Entry, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};

use super::render::{self, Limits};
use super::store::{self, Defaults, PromptError, PromptVersion, Selector, SHARED};
use crate::jobs::{JobKind, JobMessage, RagTemplate, TemplateRef};

/// Why a job's prompt cannot be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The job's fault: an unknown prompt, label or version, variables the schema refuses, a
    /// template that fails on them. The text names the field.
    #[error("{0}")]
    Refused(String),
    /// The database could not answer; the job may be submitted again.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Resolves, checks and pins every saved prompt `job` names, in place; a job naming none is left
/// as it is, without a query. The pinned job must still fit in `max_bytes` (the queue's message
/// limit), since it is published and stored as it is.
pub async fn pin(
    pool: &PgPool,
    job: &mut JobMessage,
    limits: Limits,
    max_bytes: usize,
    source: &'static str,
) -> Result<(), PinError> {
    if !names_prompts(job) {
        return Ok(());
    }
    let pinned = match pool.acquire().await {
        Ok(mut conn) => pin_job(&mut conn, job, limits, max_bytes).await,
        Err(e) => Err(e.into()),
    };
    counted(source, pinned)
}

/// [`pin`] on a connection (a scheduler run pins inside its transaction).
pub async fn pin_on(
    conn: &mut PgConnection,
    job: &mut JobMessage,
    limits: Limits,
    max_bytes: usize,
    source: &'static str,
) -> Result<(), PinError> {
    if !names_prompts(job) {
        return Ok(());
    }
    counted(source, pin_job(conn, job, limits, max_bytes).await)
}

/// Counts a pin's outcome in `ragq_prompt_pins_total`.
fn counted(source: &'static str, pinned: Result<(), PinError>) -> Result<(), PinError> {
    let outcome = match &pinned {
        Ok(()) => "pinned",
        Err(PinError::Refused(_)) => "refused",
        Err(PinError::Db(_)) => "unavailable",
    };
    crate::telemetry::metrics::prompt_pin(source, outcome);
    pinned
}

async fn pin_job(
    conn: &mut PgConnection,
    job: &mut JobMessage,
    limits: Limits,
    max_bytes: usize,
) -> Result<(), PinError> {
    match job.kind {
        JobKind::BatchComplete => pin_batch(conn, job, limits).await?,
        JobKind::RagAnswer => pin_rag(conn, job, limits).await?,
        JobKind::Ingest => return Ok(()),
    }
    let size = serde_json::to_vec(job).map_or(usize::MAX, |b| b.len());
    if size > max_bytes {
        return Err(PinError::Refused(format!(
            "with its prompts rendered the job is {size} bytes, over the {max_bytes}-byte message limit"
        )));
    }
    Ok(())
}

/// Whether the job names a saved prompt.
pub fn names_prompts(job: &JobMessage) -> bool {
    match job.kind {
        JobKind::BatchComplete => (job.input.get("prompts").and_then(Value::as_array))
            .is_some_and(|ps| ps.iter().any(|p| p.get("template").is_some())),
        JobKind::RagAnswer => job.input.get("template").is_some_and(Value::is_object),
        JobKind::Ingest => false,
    }
}

/// Whether every saved prompt the job names is pinned (and a batch's rendered): what a message
/// from ragq's own api or scheduler, which pinned it, looks like.
pub fn is_pinned(job: &JobMessage) -> bool {
    let pinned = |t: &Value| t.get("version").is_some_and(Value::is_i64);
    match job.kind {
        JobKind::BatchComplete => {
            (job.input.get("prompts").and_then(Value::as_array)).is_some_and(|ps| {
                ps.iter().all(|p| match p.get("template") {
                    Some(t) => pinned(t) && p.get("prompt").is_some_and(Value::is_string),
                    None => true,
                })
            })
        }
        JobKind::RagAnswer => {
            (job.input.get("template")).is_none_or(|t| !t.is_object() || pinned(t))
        }
        JobKind::Ingest => true,
    }
}

/// A reference as a job writes it: name, label, version, shared.
type RefKey = (String, Option<String>, Option<i32>, bool);

async fn pin_batch(
    conn: &mut PgConnection,
    job: &mut JobMessage,
    limits: Limits,
) -> Result<(), PinError> {
    let mut input = job.batch_input().map_err(PinError::Refused)?;
    // Prompts of one job naming the same reference share one lookup.
    let mut resolved: HashMap<RefKey, Arc<Checked>> = HashMap::new();
    let mut first_defaults = None;
    for (i, prompt) in input.prompts.iter_mut().enumerate() {
        let Some(t) = prompt.template.as_mut() else {
            continue;
        };
        let field = format!("input.prompts[{i}].template");
        let key = (t.name.clone(), t.label.clone(), t.version, t.shared);
        let checked = match resolved.entry(key) {
            Entry::Occupied(e) => Arc::clone(e.get()),
            Entry::Vacant(e) => Arc::clone(e.insert(resolve(conn, job, t, &field).await?)),
        };
        let variables = Value::Object(std::mem::take(&mut t.variables));
        checked.check(&variables, &field)?;
        let version = &checked.version;
        let rendered = |source: &str, part: &str| {
            render::render(source, &variables, limits)
                .map_err(|e| PinError::Refused(format!("{field}: {} {part}: {e}", about(version))))
        };
        prompt.prompt = rendered(&version.user_template, "user template")?;
        prompt.system = (version.system_template.as_deref())
            .map(|s| rendered(s, "system template"))
            .transpose()?;
        if prompt.prompt.trim().is_empty() {
            return Err(PinError::Refused(format!(
                "{field}: {} renders an empty prompt",
                about(version)
            )));
        }
        pin_ref(t, version);
        first_defaults.get_or_insert_with(|| version.defaults.clone());
    }
    if let Some(defaults) = first_defaults {
        let sampling = (&mut input.max_tokens, &mut input.temperature);
        apply_defaults(job, &defaults, sampling);
    }
    store_input(job, &input)
}

async fn pin_rag(
    conn: &mut PgConnection,
    job: &mut JobMessage,
    limits: Limits,
) -> Result<(), PinError> {
    let mut input = job.rag_input().map_err(PinError::Refused)?;
    let Some(RagTemplate::Saved(t)) = input.template.as_mut() else {
        return Ok(());
    };
    let field = "input.template";
    let checked = resolve(conn, job, t, field).await?;
    // The variables the worker adds: the question, and the context (not known yet: empty here).
    let variables = rag_variables(&t.variables, &input.question, "");
    checked.check(&variables, field)?;
    let version = &checked.version;
    render_rag_parts(version, &variables, limits)
        .map_err(|e| PinError::Refused(format!("input.template: {e}")))?;
    pin_ref(t, version);
    let defaults = version.defaults.clone();
    apply_defaults(
        job,
        &defaults,
        (&mut input.max_tokens, &mut input.temperature),
    );
    store_input(job, &input)
}

/// A prompt's defaults, where the job set nothing: its `max_tokens` and `temperature`, and its
/// policy when the message named none.
fn apply_defaults(
    job: &mut JobMessage,
    defaults: &Value,
    (max_tokens, temperature): (&mut Option<u32>, &mut Option<f32>),
) {
    let d = Defaults::read(defaults).unwrap_or_default();
    *max_tokens = max_tokens.or(d.max_tokens);
    *temperature = temperature.or(d.temperature);
    if let (false, Some(p)) = (job.policy_named, d.policy) {
        job.policy = p;
        job.policy_named = true;
    }
}

/// Writes the pinned input back into the job.
fn store_input(job: &mut JobMessage, input: &impl serde::Serialize) -> Result<(), PinError> {
    job.input = serde_json::to_value(input).map_err(|e| PinError::Refused(e.to_string()))?;
    Ok(())
}

/// The version a reference names for this job: a pinned one exactly (from the owner it was
/// pinned from), else by version number or label; a split label picks by the job's id.
async fn resolve(
    conn: &mut PgConnection,
    job: &JobMessage,
    t: &TemplateRef,
    field: &str,
) -> Result<Arc<Checked>, PinError> {
    let refused = |e: PromptError| match e {
        PromptError::Db(e) => PinError::Db(e),
        other => PinError::Refused(format!("{field}: {other}")),
    };
    let (tenant, selector) = match (t.version, t.shared) {
        // Pinned to the shared prompt: only the shared prompt has that version.
        (Some(v), true) => (SHARED, Selector::Version(v)),
        (Some(v), false) => (job.tenant.as_str(), Selector::Version(v)),
        (None, _) => (job.tenant.as_str(), Selector::Label(t.label().to_string())),
    };
    let (owner, version, saved) = store::locate(conn, tenant, &t.name, &selector, Some(&job.id))
        .await
        .map_err(refused)?;
    let key = (owner, t.name.clone(), version, saved);
    if let Some(hit) = versions().lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(hit);
    }
    let found = store::get(conn, &key.0, &key.1, version)
        .await
        .map_err(refused)?
        .ok_or_else(|| {
            PinError::Refused(format!("{field}: no prompt `{}` version {version}", t.name))
        })?;
    let checked = Arc::new(Checked::new(found, field)?);
    if let Ok(mut cached) = versions().lock() {
        if cached.len() >= CACHED_VERSIONS {
            cached.clear();
        }
        cached.insert(key, Arc::clone(&checked));
    }
    Ok(checked)
}

/// A saved version by owner, name, number and the time it was saved: what identifies its content
/// for good (a tenant erased and created again numbers its versions from 1 again, at other times).
type VersionKey = (String, String, i32, chrono::DateTime<chrono::Utc>);

/// Versions never change, so each process keeps those it used, schemas compiled: a job naming one
/// costs one small lookup (where its label points) instead of reading and compiling the version.
fn versions() -> &'static Mutex<HashMap<VersionKey, Arc<Checked>>> {
    static VERSIONS: OnceLock<Mutex<HashMap<VersionKey, Arc<Checked>>>> = OnceLock::new();
    VERSIONS.get_or_init(Mutex::default)
}

/// Versions kept per process; past it the cache starts again (prompts in use are few).
const CACHED_VERSIONS: usize = 1024;

/// Writes what the job got into its reference: the version, where it came from, and the label it
/// resolved (kept for reports).
fn pin_ref(t: &mut TemplateRef, version: &PromptVersion) {
    if t.version.is_none() {
        t.label = Some(t.label().to_string());
    }
    t.version = Some(version.version);
    t.shared = version.tenant_id == SHARED;
}

/// A version with its variables' schema compiled.
pub struct Checked {
    pub version: PromptVersion,
    schema: jsonschema::Validator,
}

impl Checked {
    /// Compiles the version's schema (checked when it was saved).
    pub fn new(version: PromptVersion, field: &str) -> Result<Self, PinError> {
        let schema = jsonschema::validator_for(&version.variables_schema).map_err(|e| {
            PinError::Refused(format!(
                "{field}: {} has a bad schema: {e}",
                about(&version)
            ))
        })?;
        Ok(Self { version, schema })
    }

    /// Checks `variables` against the schema; a refusal names the first bad variable by its JSON
    /// pointer and the rule it breaks, never its value (tenant content stays out of dead letters
    /// and logs).
    pub fn check(&self, variables: &Value, field: &str) -> Result<(), PinError> {
        let Some(error) = self.schema.iter_errors(variables).next() else {
            return Ok(());
        };
        let at = error.instance_path.as_str();
        let what = match &error.kind {
            jsonschema::error::ValidationErrorKind::Required { property } => format!(
                "variable `{}` is required",
                property.as_str().unwrap_or_default()
            ),
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                format!("variables {unexpected:?} are not in the schema")
            }
            _ => {
                let rule = error.schema_path.as_str();
                let keyword = rule.rsplit('/').next().unwrap_or(rule);
                format!("variables{at} breaks the schema's `{keyword}` (at {rule})")
            }
        };
        Err(PinError::Refused(format!(
            "{field}.variables: {what} ({})",
            about(&self.version)
        )))
    }
}

fn about(version: &PromptVersion) -> String {
    let owner = if version.tenant_id == SHARED {
        "shared prompt"
    } else {
        "prompt"
    };
    format!("{owner} `{}` version {}", version.name, version.version)
}

/// A `rag.answer` template's variables: the job's, with `question` and `context` set by ragq.
pub fn rag_variables(own: &Map<String, Value>, question: &str, context: &str) -> Value {
    let mut all = own.clone();
    all.insert("question".into(), question.into());
    all.insert("context".into(), context.into());
    Value::Object(all)
}

/// A `rag.answer` prompt rendered: its system text (if the version has one) and its user text.
pub fn render_rag_parts(
    version: &PromptVersion,
    variables: &Value,
    limits: Limits,
) -> Result<(Option<String>, String), String> {
    let part = |source: &str, name: &str| {
        render::render(source, variables, limits)
            .map_err(|e| format!("{} {name}: {e}", about(version)))
    };
    let system = (version.system_template.as_deref())
        .map(|s| part(s, "system template"))
        .transpose()?;
    Ok((system, part(&version.user_template, "user template")?))
}

/// Loads the version a `rag.answer` job was pinned to (see [`pin`]).
pub async fn pinned(
    pool: &PgPool,
    tenant: &str,
    t: &TemplateRef,
) -> Result<Option<PromptVersion>, PromptError> {
    let Some(version) = t.version else {
        return Ok(None);
    };
    let owner = if t.shared { SHARED } else { tenant };
    store::get(&mut *pool.acquire().await?, owner, &t.name, version).await
}
