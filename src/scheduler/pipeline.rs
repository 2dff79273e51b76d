//! Pipeline definitions: validated at creation (cron, time zone, template) so a bad one is refused
//! with a clear message, never discovered at 02:00.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;

use super::cron::CronSchedule;
use crate::audit::{self, Actor, Change};
use crate::jobs::JobMessage;

/// What runs may do when the previous one has not finished.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    Allow,
    Forbid,
    Replace,
}

/// What happens to slots missed while no scheduler ran.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    Skip,
    RunOnce,
    RunAll,
}

/// What a tenant's pipelines may be: bounded so that no tenant can fill the schedule.
#[derive(Debug, Clone, Copy)]
pub struct PipelineLimits {
    /// The largest job message a run may render.
    pub max_message_bytes: usize,
    /// The shortest gap allowed between two slots of one pipeline.
    pub min_interval: std::time::Duration,
    /// Pipelines per tenant, paused ones included.
    pub max_per_tenant: u32,
    /// What rendering a saved prompt a run's job names may use.
    pub prompts: crate::prompts::render::Limits,
}

/// Slots looked at to find a schedule's shortest gap (irregular lists such as `0,1 * * * * *`
/// show theirs within a few).
const GAP_SLOTS: usize = 64;

/// A pipeline as created over the CLI or HTTP.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Five fields (minute precision) or six (seconds first).
    #[schema(example = "0 0 3 * * *")]
    pub cron: String,
    /// An IANA zone name.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// A job message without `id` and `tenant`; `{{scheduled_time}}` and `{{scheduled_date}}` in
    /// its strings are filled per run.
    #[schema(value_type = Object)]
    pub job_template: Value,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "allow")]
    pub overlap: Overlap,
    #[serde(default = "run_once")]
    pub missed: Missed,
    #[serde(default = "ten")]
    #[schema(minimum = 1, maximum = 1000)]
    pub missed_limit: i32,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub starting_deadline_secs: Option<i32>,
}

impl PipelineSpec {
    /// Parses a spec from JSON; errors name the field at fault (`overlap: unknown variant ...`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                format!("pipeline spec: {}", e.inner())
            } else {
                format!("pipeline spec: {path}: {}", e.inner())
            }
        })
    }
}

fn utc() -> String {
    "UTC".into()
}
fn yes() -> bool {
    true
}
fn allow() -> Overlap {
    Overlap::Allow
}
fn run_once() -> Missed {
    Missed::RunOnce
}
fn ten() -> i32 {
    10
}

/// A stored pipeline.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Pipeline {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
    pub cron: String,
    pub time_zone: String,
    #[schema(value_type = Object)]
    pub job_template: Value,
    pub enabled: bool,
    pub overlap: Overlap,
    pub missed: Missed,
    pub missed_limit: i32,
    pub starting_deadline_secs: Option<i32>,
    pub next_fire_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid pipeline: {0}")]
    Invalid(String),
    #[error("pipeline `{0}` already exists")]
    Exists(String),
    #[error("no pipeline `{0}`")]
    NotFound(String),
    #[error(
        "a tenant may have {0} pipelines (scheduler.max_pipelines_per_tenant); delete one first"
    )]
    TooMany(u32),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// The job id of a run: derived from (pipeline, scheduled time), so enqueueing it again is a no-op.
pub fn job_id(pipeline: &str, scheduled_at: DateTime<Utc>, manual: bool) -> String {
    let at = scheduled_at.format("%Y%m%dT%H%M%S%.3fZ");
    if manual {
        format!("pl:{pipeline}:manual:{at}")
    } else {
        format!("pl:{pipeline}:{at}")
    }
}

/// The job message of one run: the template with its placeholders filled, the id and the tenant.
pub fn render(
    p: &Pipeline,
    scheduled_at: DateTime<Utc>,
    manual: bool,
    max_bytes: usize,
) -> Result<(JobMessage, Vec<u8>), String> {
    let tz = CronSchedule::parse(&p.cron, &p.time_zone)?.tz();
    let local = scheduled_at.with_timezone(&tz);
    let mut job = p.job_template.clone();
    fill(
        &mut job,
        &local.to_rfc3339(),
        &local.format("%Y-%m-%d").to_string(),
    );
    let obj = job
        .as_object_mut()
        .ok_or("job_template must be a JSON object")?;
    for forbidden in ["id", "tenant"] {
        if obj.contains_key(forbidden) {
            return Err(format!(
                "job_template must not set `{forbidden}`: ragq sets it per run"
            ));
        }
    }
    obj.insert("id".into(), job_id(&p.name, scheduled_at, manual).into());
    obj.insert("tenant".into(), p.tenant_id.clone().into());
    let body = serde_json::to_vec(&job).map_err(|e| e.to_string())?;
    let message = JobMessage::parse(&body, max_bytes).map_err(|e| format!("job_template: {e}"))?;
    Ok((message, body))
}

fn fill(v: &mut Value, time: &str, date: &str) {
    match v {
        Value::String(s) if s.contains("{{") => {
            *s = s
                .replace("{{scheduled_time}}", time)
                .replace("{{scheduled_date}}", date);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| fill(x, time, date)),
        Value::Object(o) => o.values_mut().for_each(|x| fill(x, time, date)),
        _ => {}
    }
}

/// Creates a pipeline; its first slot is the first after `now`.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    tenant: &str,
    spec: &PipelineSpec,
    now: DateTime<Utc>,
    limits: &PipelineLimits,
) -> Result<Pipeline, PipelineError> {
    let invalid = PipelineError::Invalid;
    check_spec(spec).map_err(invalid)?;
    let schedule = CronSchedule::parse(&spec.cron, &spec.time_zone).map_err(invalid)?;
    let next = schedule
        .next_after(now)
        .ok_or_else(|| invalid(format!("`{}` never fires after {now}", spec.cron)))?;
    check_interval(&schedule, &spec.cron, next, limits.min_interval).map_err(invalid)?;
    let mut pipeline = Pipeline {
        id: 0,
        tenant_id: tenant.to_string(),
        name: spec.name.clone(),
        cron: spec.cron.clone(),
        time_zone: spec.time_zone.clone(),
        job_template: spec.job_template.clone(),
        enabled: spec.enabled,
        overlap: spec.overlap,
        missed: spec.missed,
        missed_limit: spec.missed_limit,
        starting_deadline_secs: spec.starting_deadline_secs,
        next_fire_at: next,
    };
    render(&pipeline, next, false, limits.max_message_bytes).map_err(invalid)?;
    // One statement counts and inserts under a per-tenant advisory lock, so concurrent creates
    // cannot pass the cap together. No row back: the name exists, or the tenant is at its cap.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ragq.pipelines'), hashtext($1))")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pipelines WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    if count >= i64::from(limits.max_per_tenant) {
        return Err(PipelineError::TooMany(limits.max_per_tenant));
    }
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO pipelines (tenant_id, name, cron, time_zone, job_template, enabled, overlap, missed, \
           missed_limit, starting_deadline_secs, next_fire_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (tenant_id, name) DO NOTHING RETURNING id",
    )
    .bind(tenant)
    .bind(&spec.name)
    .bind(&spec.cron)
    .bind(&spec.time_zone)
    .bind(&spec.job_template)
    .bind(spec.enabled)
    .bind(spec.overlap)
    .bind(spec.missed)
    .bind(spec.missed_limit)
    .bind(spec.starting_deadline_secs)
    .bind(next)
    .fetch_optional(&mut *tx)
    .await?;
    pipeline.id = id.ok_or_else(|| PipelineError::Exists(spec.name.clone()))?;
    let change = Change {
        action: "pipeline.create",
        tenant: Some(tenant),
        target: &spec.name,
        before: None,
        after: Some(audited(&pipeline)),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(pipeline)
}

/// Refuses a schedule whose slots come closer together than `min` (checked over its next
/// [`GAP_SLOTS`] slots from `first`).
fn check_interval(
    schedule: &CronSchedule,
    cron: &str,
    first: DateTime<Utc>,
    min: std::time::Duration,
) -> Result<(), String> {
    let min = chrono::Duration::from_std(min).unwrap_or(chrono::Duration::MAX);
    let mut at = first;
    for _ in 0..GAP_SLOTS {
        let Some(next) = schedule.next_after(at) else {
            return Ok(());
        };
        if next - at < min {
            return Err(format!(
                "`{cron}` fires {} s apart; the shortest interval allowed is {} s \
                 (scheduler.min_cron_interval_s)",
                (next - at).num_seconds(),
                min.num_seconds()
            ));
        }
        at = next;
    }
    Ok(())
}

/// The template's webhook is called by every run: the URL policy applies at creation, not at 3 am.
pub async fn check_webhook(
    spec: &PipelineSpec,
    policy: &crate::webhooks::url_policy::UrlPolicy,
) -> Result<(), String> {
    match spec.job_template.get("webhook_url").and_then(Value::as_str) {
        Some(url) => (policy.check(url).await)
            .map(|_| ())
            .map_err(|refusal| format!("job_template.webhook_url refused: {refusal}")),
        None => Ok(()),
    }
}

/// The routing policy the template's jobs will name.
pub fn template_policy(spec: &PipelineSpec) -> &str {
    (spec.job_template.get("policy").and_then(Value::as_str)).unwrap_or(crate::jobs::DEFAULT_POLICY)
}

/// Whether `name` may name a pipeline: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && (name.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The spec's own rules: its name, its missed-run limit and its starting deadline.
fn check_spec(spec: &PipelineSpec) -> Result<(), String> {
    if !is_name(&spec.name) {
        return Err(format!(
            "name `{}`: 1 to 64 characters of [A-Za-z0-9._-]",
            spec.name
        ));
    }
    if !(1..=1000).contains(&spec.missed_limit) {
        return Err("missed_limit must be between 1 and 1000".into());
    }
    if spec.starting_deadline_secs.is_some_and(|d| d <= 0) {
        return Err("starting_deadline_secs must be positive".into());
    }
    Ok(())
}

pub(crate) const COLUMNS: &str =
    "id, tenant_id, name, cron, time_zone, job_template, enabled, overlap, missed, \
    missed_limit, starting_deadline_secs, next_fire_at";

pub async fn list(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<Pipeline>, sqlx::Error> {
    let sql = [
        "SELECT ",
        COLUMNS,
        " FROM pipelines WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY tenant_id, name",
    ]
    .concat();
    sqlx::query_as(&sql).bind(tenant).fetch_all(pool).await
}

pub async fn get(pool: &PgPool, tenant: &str, name: &str) -> Result<Pipeline, PipelineError> {
    let sql = [
        "SELECT ",
        COLUMNS,
        " FROM pipelines WHERE tenant_id = $1 AND name = $2",
    ]
    .concat();
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| PipelineError::NotFound(name.to_string()))
}

/// The tenant's pipeline `name`, locked for a change in `tx`.
pub(crate) async fn lock(
    tx: &mut sqlx::PgConnection,
    tenant: &str,
    name: &str,
) -> Result<Pipeline, PipelineError> {
    let sql = [
        "SELECT ",
        COLUMNS,
        " FROM pipelines WHERE tenant_id = $1 AND name = $2 FOR UPDATE",
    ]
    .concat();
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(name)
        .fetch_optional(tx)
        .await?
        .ok_or_else(|| PipelineError::NotFound(name.to_string()))
}

/// Pauses or resumes. Resuming starts from the next slot after `now`: slots while paused are not
/// missed runs.
pub async fn set_enabled(
    pool: &PgPool,
    actor: &Actor,
    tenant: &str,
    name: &str,
    enabled: bool,
    now: DateTime<Utc>,
) -> Result<(), PipelineError> {
    let mut tx = pool.begin().await?;
    let p = lock(&mut tx, tenant, name).await?;
    let next = CronSchedule::parse(&p.cron, &p.time_zone)
        .map_err(PipelineError::Invalid)?
        .next_after(now)
        .unwrap_or(p.next_fire_at);
    sqlx::query(
        "UPDATE pipelines SET enabled = $2, next_fire_at = CASE WHEN $2 AND NOT enabled THEN $3 ELSE next_fire_at END \
         WHERE id = $1",
    )
    .bind(p.id)
    .bind(enabled)
    .bind(next)
    .execute(&mut *tx)
    .await?;
    let change = Change {
        action: if enabled {
            "pipeline.resume"
        } else {
            "pipeline.pause"
        },
        tenant: Some(tenant),
        target: name,
        before: Some(serde_json::json!({ "enabled": p.enabled })),
        after: Some(serde_json::json!({ "enabled": enabled })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(())
}

/// A pipeline as the audit log keeps it: its settings, and its job template's input (tenant
/// content: prompts, questions) as a digest only.
pub(crate) fn audited(p: &Pipeline) -> Value {
    let mut value = serde_json::json!(p);
    if let Some(input) = value.pointer_mut("/job_template/input") {
        *input = audit::digest_content(input);
    }
    value
}

/// One run and its job's outcome.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunView {
    pub scheduled_at: DateTime<Utc>,
    pub trigger: String,
    pub state: String,
    pub job_id: Option<String>,
    pub reason: Option<String>,
    pub job_state: Option<String>,
    pub job_error: Option<String>,
}

pub async fn runs(
    pool: &PgPool,
    tenant: &str,
    name: &str,
    limit: i64,
) -> Result<Vec<RunView>, PipelineError> {
    let p = get(pool, tenant, name).await?;
    Ok(sqlx::query_as(
        "SELECT r.scheduled_at, r.trigger, r.state, r.job_id, r.reason, j.state AS job_state, j.error AS job_error \
         FROM pipeline_runs r LEFT JOIN jobs j ON j.tenant_id = $2 AND j.id = r.job_id \
         WHERE r.pipeline_id = $1 ORDER BY r.scheduled_at DESC LIMIT $3",
    )
    .bind(p.id)
    .bind(tenant)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn pipeline(template: Value) -> Pipeline {
        Pipeline {
            id: 1,
            tenant_id: "acme".into(),
            name: "nightly".into(),
            cron: "0 2 * * *".into(),
            time_zone: "Europe/Lisbon".into(),
            job_template: template,
            enabled: true,
            overlap: Overlap::Allow,
            missed: Missed::RunOnce,
            missed_limit: 10,
            starting_deadline_secs: None,
            next_fire_at: Utc::now(),
        }
    }

    #[test]
    fn template_gets_the_scheduled_time_in_the_pipeline_zone() {
        let p = pipeline(serde_json::json!({
            "kind": "batch.complete",
            "input": {"prompts": [{"prompt": "Summarise the tickets of {{scheduled_date}} (as of {{scheduled_time}})"}]}
        }));
        let at = Utc
            .with_ymd_and_hms(2026, 7, 1, 1, 0, 0)
            .single()
            .unwrap_or_default();
        let (job, _) = render(&p, at, false, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(job.id, "pl:nightly:20260701T010000.000Z");
        assert_eq!(job.tenant, "acme");
        let prompt = &job.batch_input().unwrap_or_else(|e| panic!("{e}")).prompts[0].prompt;
        assert_eq!(
            prompt,
            "Summarise the tickets of 2026-07-01 (as of 2026-07-01T02:00:00+01:00)"
        );
    }

    #[test]
    fn invalid_templates_are_refused_with_the_reason() {
        let at = Utc::now();
        let no_prompts =
            pipeline(serde_json::json!({"kind": "batch.complete", "input": {"prompts": []}}));
        assert!(render(&no_prompts, at, false, 1 << 20).is_err_and(|e| e.contains("prompts")));
        let sets_id =
            pipeline(serde_json::json!({"id": "x", "kind": "batch.complete", "input": {}}));
        assert!(render(&sets_id, at, false, 1 << 20).is_err_and(|e| e.contains("`id`")));
        assert!(render(&pipeline(serde_json::json!([1])), at, false, 1 << 20).is_err());
    }
}
