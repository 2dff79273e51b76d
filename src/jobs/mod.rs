//! Jobs: the message contract outsiders publish, its validation, and the job state machine.
//!
//! `schemas/job.schema.json` documents the message for any language; [`JobMessage::parse`] enforces
//! the same rules (a test keeps the two in agreement). A message that breaks them is poison: it gets
//! a [`PoisonReason`] and goes to the dead-letter queue, never into a handler.

pub mod retention;
pub mod state;
pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use state::JobState;

/// Most tags a job may carry, and the longest tag key and value.
pub const MAX_TAGS: usize = 16;
pub const MAX_TAG_LEN: usize = 64;
pub const MAX_PROMPTS: usize = 1_000;

/// The job kinds this build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    #[serde(rename = "batch.complete")]
    BatchComplete,
    /// Index documents into a collection (and remove others).
    #[serde(rename = "ingest")]
    Ingest,
    /// Answer a question from a collection's chunks, with citations.
    #[serde(rename = "rag.answer")]
    RagAnswer,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BatchComplete => "batch.complete",
            Self::Ingest => "ingest",
            Self::RagAnswer => "rag.answer",
        }
    }
}

/// A job message as published to exchange `ragq.jobs` (routing key: the kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    /// Client-chosen id, the idempotency key within the tenant.
    pub id: String,
    pub tenant: String,
    pub kind: JobKind,
    #[serde(default = "default_policy")]
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    pub input: serde_json::Value,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Order within the tenant's share: `interactive` jobs go before `normal` ones, which go before
    /// `bulk` ones; tenants are served by their weights whatever their jobs' priorities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The response cache for this job's calls, over its policy's and plan's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CacheRequest>,
    /// Whether the message named its policy: a saved prompt's default policy applies otherwise.
    #[serde(skip)]
    pub policy_named: bool,
}

/// A job's priority within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Interactive,
    Normal,
    Bulk,
}

impl Priority {
    /// As stored in `jobs.priority` (higher first).
    pub fn rank(self) -> i16 {
        match self {
            Self::Interactive => 1,
            Self::Normal => 0,
            Self::Bulk => -1,
        }
    }

    pub fn from_rank(rank: i16) -> Option<Self> {
        match rank {
            1 => Some(Self::Interactive),
            0 => None,
            _ => Some(Self::Bulk),
        }
    }
}

/// The routing policy of a job that names none.
pub const DEFAULT_POLICY: &str = "cost-optimized";

fn default_policy() -> String {
    DEFAULT_POLICY.to_string()
}

/// Input of a `batch.complete` job: prompts answered independently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchCompleteInput {
    pub prompts: Vec<Prompt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

/// One prompt: plain text sent as a single user message, or a saved prompt template
/// (`template`) that intake renders into `prompt` and `system` and pins to the version it used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt: String,
    /// This prompt's system text, over the job's `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
}

/// A saved prompt a job names: its version by `label` (default `production`) or by number, and the
/// variables its templates are rendered with. Intake resolves the label and writes the version it
/// found into `version`, so every attempt of the job uses that version whatever the label does
/// next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub variables: serde_json::Map<String, serde_json::Value>,
    /// Set by intake when the version is the operator's shared prompt's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

impl TemplateRef {
    /// The label a reference without a version resolves.
    pub fn label(&self) -> &str {
        self.label.as_deref().unwrap_or(DEFAULT_LABEL)
    }
}

/// The label a template reference names when it names none.
pub const DEFAULT_LABEL: &str = "production";

/// A `rag.answer` job's prompt: a template of the configuration (by name), or a saved prompt
/// rendered with `context` and `question` among its variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RagTemplate {
    Configured(String),
    Saved(TemplateRef),
}

/// Input of an `ingest` job: documents to (re)index and document ids to remove, in one collection.
/// Content rules (empty or oversized text) are checked by the handler, so such a job fails with
/// a reason its owner can read instead of vanishing into the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestInput {
    pub collection: String,
    #[serde(default)]
    pub documents: Vec<Document>,
    /// Ids of documents to remove.
    #[serde(default)]
    pub delete: Vec<String>,
}

/// One document: the tenant's id for it, its text, and metadata searches may filter on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Input of a `rag.answer` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RagAnswerInput {
    pub collection: String,
    pub question: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Chunks scoring below this (cosine similarity) are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_threshold: Option<f32>,
    /// Conditions on document metadata; the tenant condition is always added by the worker.
    #[serde(default)]
    pub filter: crate::retrieval::MetadataFilter,
    /// The configuration's prompt template by name (`default` when absent), or a saved prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<RagTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

/// Why a message cannot become a job; the text is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonReason {
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("message is not valid JSON: {0}")]
    NotJson(String),
    #[error("message does not match the job schema: {0}")]
    Schema(String),
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("webhook_url refused: {0}")]
    WebhookUrl(String),
    #[error("{0}")]
    Prompt(String),
}

impl PoisonReason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::NotJson(_) => "not_json",
            Self::Schema(_) => "schema",
            Self::UnknownTenant(_) => "unknown_tenant",
            Self::Unauthorized(_) => "unauthorized",
            Self::WebhookUrl(_) => "webhook_url_refused",
            Self::Prompt(_) => "prompt",
        }
    }
}

impl JobMessage {
    /// The `feature` tag that budgets and reports group by ("" when absent).
    pub fn feature(&self) -> &str {
        self.tags.get("feature").map_or("", String::as_str)
    }

    /// Parses and validates a message body; everything a handler may rely on is checked here.
    pub fn parse(body: &[u8], max_bytes: usize) -> Result<Self, PoisonReason> {
        if body.len() > max_bytes {
            return Err(PoisonReason::TooLarge {
                size: body.len(),
                limit: max_bytes,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| PoisonReason::NotJson(e.to_string()))?;
        let policy_named = value.get("policy").is_some();
        let mut job: JobMessage =
            serde_json::from_value(value).map_err(|e| PoisonReason::Schema(e.to_string()))?;
        job.validate().map_err(PoisonReason::Schema)?;
        job.policy_named = policy_named;
        Ok(job)
    }

    /// Rules serde cannot express: lengths, character sets, kind-specific input.
    pub fn validate(&self) -> Result<(), String> {
        check_id("id", &self.id, 128)?;
        check_tenant(&self.tenant)?;
        check_id("policy", &self.policy, 64)?;
        if let Some(url) = &self.webhook_url {
            check_webhook_url(url)?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(format!("tags: at most {MAX_TAGS} entries"));
        }
        for (k, v) in &self.tags {
            check_id("tags key", k, MAX_TAG_LEN)?;
            if v.len() > MAX_TAG_LEN || v.contains('\0') {
                return Err(format!("tags.{k}: at most {MAX_TAG_LEN} bytes, no NUL"));
            }
        }
        if let Some(cache) = &self.cache {
            cache.check("cache")?;
        }
        if contains_nul(&self.input) {
            return Err("input: strings must not contain NUL characters".into());
        }
        match self.kind {
            JobKind::BatchComplete => self.batch_input().map(|_| ()),
            JobKind::Ingest => self.ingest_input().map(|_| ()),
            JobKind::RagAnswer => self.rag_input().map(|_| ()),
        }
    }

    /// The typed input of an `ingest` job (its shape only; see [`IngestInput`]).
    pub fn ingest_input(&self) -> Result<IngestInput, String> {
        IngestInput::deserialize(&self.input).map_err(|e| format!("input: {e}"))
    }

    /// The typed input of a `rag.answer` job (its shape only).
    pub fn rag_input(&self) -> Result<RagAnswerInput, String> {
        let input = RagAnswerInput::deserialize(&self.input).map_err(|e| format!("input: {e}"))?;
        if let Some(RagTemplate::Saved(t)) = &input.template {
            t.check("input.template")?;
        }
        Ok(input)
    }

    /// The typed input of a `batch.complete` job.
    pub fn batch_input(&self) -> Result<BatchCompleteInput, String> {
        let input =
            BatchCompleteInput::deserialize(&self.input).map_err(|e| format!("input: {e}"))?;
        if input.prompts.is_empty() || input.prompts.len() > MAX_PROMPTS {
            return Err(format!(
                "input.prompts: between 1 and {MAX_PROMPTS} prompts"
            ));
        }
        for (i, p) in input.prompts.iter().enumerate() {
            match &p.template {
                None if p.prompt.trim().is_empty() => {
                    return Err(format!("input.prompts[{i}].prompt must not be empty"))
                }
                Some(t) => t.check(&format!("input.prompts[{i}].template"))?,
                None => {}
            }
        }
        if input.max_tokens == Some(0) {
            return Err("input.max_tokens must be positive".into());
        }
        if input.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err("input.temperature must be between 0 and 2".into());
        }
        Ok(input)
    }
}

impl TemplateRef {
    /// Names and version number are well formed (whether they exist is intake's question).
    fn check(&self, field: &str) -> Result<(), String> {
        check_prompt_name(&format!("{field}.name"), &self.name)?;
        if let Some(label) = &self.label {
            check_prompt_name(&format!("{field}.label"), label)?;
        }
        if self.version.is_some_and(|v| v < 1) {
            return Err(format!("{field}.version must be 1 or more"));
        }
        Ok(())
    }
}

/// Prompt and label names: 1 to 64 of `[a-z0-9._-]`.
pub fn check_prompt_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: 1 to 64 characters of [a-z0-9._-], got {:?}",
            truncate(name, 80)
        ))
    }
}

/// Whether `value` may name a routing policy.
pub fn check_policy(value: &str) -> Result<(), String> {
    check_id("policy", value, 64)
}

/// Whether `value` may be a job id (what a read of an id that cannot exist skips the database for).
pub fn is_job_id(value: &str) -> bool {
    check_id("id", value, 128).is_ok()
}

fn check_id(field: &str, value: &str, max: usize) -> Result<(), String> {
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if value.is_empty() || value.len() > max || !ok_chars {
        return Err(format!(
            "{field}: 1 to {max} characters of [A-Za-z0-9._:-], got {:?}",
            truncate(value, 80)
        ));
    }
    Ok(())
}

/// Tenant ids follow the database rule: lowercase, digits, `_` and `-`, starting alphanumeric.
pub fn check_tenant(value: &str) -> Result<(), String> {
    let mut bytes = value.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok =
        bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !first_ok || !rest_ok || value.len() > 63 {
        return Err(format!(
            "tenant: 1 to 63 characters of [a-z0-9_-], got {:?}",
            truncate(value, 80)
        ));
    }
    Ok(())
}

pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && reqwest::Url::parse(url).is_ok();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "webhook_url: not an http(s) URL: {:?}",
            truncate(url, 80)
        ))
    }
}

/// Whether any string (or object key) in `value` holds a NUL, which Postgres text cannot store.
pub(crate) fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(contains_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "id": "job-1", "tenant": "acme", "kind": "batch.complete",
            "input": {"prompts": [{"prompt": "hello"}]},
            "tags": {"feature": "summaries"}
        })
    }

    fn parse(v: serde_json::Value) -> Result<JobMessage, PoisonReason> {
        JobMessage::parse(v.to_string().as_bytes(), 4096)
    }

    #[test]
    fn valid_message_parses_with_default_policy() {
        let job = parse(valid()).expect("valid");
        assert_eq!(job.policy, "cost-optimized");
        assert!(
            !job.policy_named,
            "a saved prompt's default policy may apply"
        );
        let mut named = valid();
        named["policy"] = "cost-optimized".into();
        assert!(parse(named).expect("valid").policy_named);
        assert_eq!(job.kind, JobKind::BatchComplete);
        assert_eq!(job.batch_input().expect("input").prompts.len(), 1);
    }

    #[test]
    fn each_poison_kind_has_its_reason() {
        assert!(matches!(
            JobMessage::parse(&[b' '; 5000], 4096),
            Err(PoisonReason::TooLarge { size: 5000, .. })
        ));
        assert!(matches!(
            JobMessage::parse(b"{not json", 4096),
            Err(PoisonReason::NotJson(_))
        ));
        let mut v = valid();
        v["kind"] = "mine.bitcoin".into();
        assert!(matches!(parse(v), Err(PoisonReason::Schema(_))));
        let mut v = valid();
        v["extra"] = 1.into();
        assert!(matches!(parse(v), Err(PoisonReason::Schema(m)) if m.contains("extra")));
        let mut v = valid();
        v["input"]["prompts"] = serde_json::json!([]);
        assert!(matches!(parse(v), Err(PoisonReason::Schema(m)) if m.contains("prompts")));
        let mut v = valid();
        v["tenant"] = "Acme Corp".into();
        assert!(matches!(parse(v), Err(PoisonReason::Schema(m)) if m.contains("tenant")));
        let mut v = valid();
        v["input"]["prompts"][0]["prompt"] = "a\u{0}b".into();
        assert!(matches!(parse(v), Err(PoisonReason::Schema(m)) if m.contains("NUL")));
        let mut v = valid();
        v["webhook_url"] = "ftp://x".into();
        assert!(matches!(parse(v), Err(PoisonReason::Schema(m)) if m.contains("webhook_url")));
    }
}
