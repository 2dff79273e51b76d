//! Prompt versions and labels in Postgres: saving a prompt makes its next immutable version,
//! labels move between versions, and a name resolves to the tenant's own prompt, else the
//! operator's shared one (tenant `''`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use super::render;
use crate::audit::{self, Actor, Change};

/// The tenant of the operator's shared prompts.
pub const SHARED: &str = "";

/// The largest system or user template a version may hold.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// The label that always names the newest version.
pub const LATEST: &str = "latest";

/// A prompt as saved: its templates, the JSON Schema of its variables and the job defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    #[serde(default)]
    pub system: Option<String>,
    pub user: String,
    #[serde(default = "empty_object")]
    pub variables: serde_json::Value,
    #[serde(default = "empty_object")]
    pub defaults: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// What a prompt sets for the jobs that name it, where the job sets nothing itself.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub policy: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

impl Defaults {
    /// Reads and checks a version's `defaults` object.
    pub fn read(value: &serde_json::Value) -> Result<Self, String> {
        let d = Self::deserialize(value).map_err(|e| format!("defaults: {e}"))?;
        if d.max_tokens == Some(0) {
            return Err("defaults.max_tokens must be positive".into());
        }
        if d.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err("defaults.temperature must be between 0 and 2".into());
        }
        if let Some(p) = &d.policy {
            crate::jobs::check_policy(p).map_err(|e| format!("defaults.{e}"))?;
        }
        Ok(d)
    }
}

/// One saved version.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PromptVersion {
    /// The owning tenant; `""` for the operator's shared prompts.
    pub tenant_id: String,
    pub name: String,
    pub version: i32,
    pub system_template: Option<String>,
    pub user_template: String,
    #[schema(value_type = Object)]
    pub variables_schema: serde_json::Value,
    #[schema(value_type = Object)]
    pub defaults: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{0}")]
    Invalid(String),
    #[error("no prompt `{name}` {which} for tenant `{tenant}`")]
    Unknown {
        tenant: String,
        name: String,
        which: String,
    },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Prompt and label names: 1 to 64 of `[a-z0-9._-]`.
pub fn check_name(what: &str, name: &str) -> Result<(), PromptError> {
    crate::jobs::check_prompt_name(what, name).map_err(PromptError::Invalid)
}

/// Saves `spec` as the next version of `tenant`'s prompt `name` and returns its number. Templates
/// that do not parse are refused.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    tenant: &str,
    name: &str,
    spec: &PromptSpec,
) -> Result<i32, PromptError> {
    check_name("name", name)?;
    let texts = [spec.system.as_deref().unwrap_or_default(), &spec.user];
    if texts.iter().any(|t| t.len() > MAX_TEMPLATE_BYTES) {
        return Err(PromptError::Invalid(format!(
            "a template may be at most {MAX_TEMPLATE_BYTES} bytes"
        )));
    }
    if texts.iter().any(|t| t.contains('\0'))
        || crate::jobs::contains_nul(&spec.variables)
        || crate::jobs::contains_nul(&spec.defaults)
    {
        return Err(PromptError::Invalid(
            "templates, variables and defaults must not contain NUL characters".into(),
        ));
    }
    for (part, source) in [
        ("system", spec.system.as_deref()),
        ("user", Some(&spec.user[..])),
    ] {
        if let Some(source) = source {
            render::check(source).map_err(|e| PromptError::Invalid(format!("{part}: {e}")))?;
        }
    }
    if !spec.variables.is_object() {
        return Err(PromptError::Invalid(
            "variables must be a JSON Schema object".into(),
        ));
    }
    jsonschema::validator_for(&spec.variables)
        .map_err(|e| PromptError::Invalid(format!("variables: not a valid JSON Schema: {e}")))?;
    Defaults::read(&spec.defaults).map_err(PromptError::Invalid)?;
    let mut tx = pool.begin().await?;
    // Versions of one prompt are numbered one at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))")
        .bind(tenant)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let version: i32 = sqlx::query_scalar(
        "INSERT INTO prompt_versions (tenant_id, name, version, system_template, user_template, \
           variables_schema, defaults, created_by) \
         SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7 \
         FROM prompt_versions WHERE tenant_id = $1 AND name = $2 \
         RETURNING version",
    )
    .bind(tenant)
    .bind(name)
    .bind(&spec.system)
    .bind(&spec.user)
    .bind(&spec.variables)
    .bind(&spec.defaults)
    .bind(actor.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let target = format!("{name}@{version}");
    let change = Change {
        action: "prompt.create",
        tenant: (tenant != SHARED).then_some(tenant),
        target: &target,
        before: None,
        after: None,
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(version)
}

/// Points `label` of `tenant`'s prompt `name` at `version` (`latest` is not movable).
pub async fn set_label(
    pool: &PgPool,
    actor: &Actor,
    tenant: &str,
    name: &str,
    label: &str,
    version: i32,
) -> Result<(), PromptError> {
    point(pool, actor, (tenant, name, label), version, None).await
}

/// Splits `label` between versions by weight: a job resolving it gets one arm, chosen by a hash
/// of its id. The heaviest arm is the label's main version (what [`resolve`] answers).
pub async fn set_split(
    pool: &PgPool,
    actor: &Actor,
    tenant: &str,
    name: &str,
    label: &str,
    arms: &[Arm],
) -> Result<(), PromptError> {
    let mut versions: Vec<i32> = arms.iter().map(|a| a.version).collect();
    versions.sort_unstable();
    versions.dedup();
    if arms.len() < 2 || versions.len() != arms.len() || arms.iter().any(|a| a.weight == 0) {
        return Err(PromptError::Invalid(
            "a split names two or more different versions, each with a weight of 1 or more".into(),
        ));
    }
    let main = arms
        .iter()
        .rev()
        .max_by_key(|a| a.weight)
        .map(|a| a.version);
    point(
        pool,
        actor,
        (tenant, name, label),
        main.unwrap_or(0),
        Some(arms),
    )
    .await
}

/// Sets a label to a version, and to a split when given; every version named must exist.
async fn point(
    pool: &PgPool,
    actor: &Actor,
    (tenant, name, label): (&str, &str, &str),
    version: i32,
    split: Option<&[Arm]>,
) -> Result<(), PromptError> {
    check_name("name", name)?;
    check_name("label", label)?;
    if label == LATEST {
        return Err(PromptError::Invalid(
            "label `latest` always names the newest version and cannot be moved".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    let before: Option<(i32, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT version, split FROM prompt_labels WHERE tenant_id = $1 AND name = $2 AND label = $3 FOR UPDATE",
    )
    .bind(tenant)
    .bind(name)
    .bind(label)
    .fetch_optional(&mut *tx)
    .await?;
    let named: Vec<i32> = match split {
        Some(arms) => arms.iter().map(|a| a.version).collect(),
        None => vec![version],
    };
    let existing: Vec<i32> = sqlx::query_scalar(
        "SELECT version FROM prompt_versions WHERE tenant_id = $1 AND name = $2 AND version = ANY($3)",
    )
    .bind(tenant)
    .bind(name)
    .bind(&named)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(missing) = named.iter().find(|v| !existing.contains(v)) {
        return Err(unknown(tenant, name, &format!("version {missing}")));
    }
    let split = split.map(|arms| serde_json::json!(arms));
    sqlx::query(
        "INSERT INTO prompt_labels (tenant_id, name, label, version, split) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id, name, label) DO UPDATE \
         SET version = excluded.version, split = excluded.split, updated_at = now()",
    )
    .bind(tenant)
    .bind(name)
    .bind(label)
    .bind(version)
    .bind(&split)
    .execute(&mut *tx)
    .await?;
    let target = format!("{name}:{label}");
    let shown = |v: i32, s: Option<serde_json::Value>| s.unwrap_or_else(|| v.into());
    let change = Change {
        action: "prompt.label",
        tenant: (tenant != SHARED).then_some(tenant),
        target: &target,
        before: before.map(|(v, s)| shown(v, s)),
        after: Some(shown(version, split)),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(())
}

/// Which version of a prompt a job asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Label(String),
    Version(i32),
}

/// One arm of a label's split: a version and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub version: i32,
    pub weight: u32,
}

/// The version `tenant` gets for `name` and `selector`: from its own prompt of that name if it has
/// one, else from the operator's shared one (a label's main version; a job's split arm is
/// [`locate`]'s to pick).
pub async fn resolve(
    pool: &PgPool,
    tenant: &str,
    name: &str,
    selector: &Selector,
) -> Result<PromptVersion, PromptError> {
    let mut conn = pool.acquire().await?;
    let (owner, version, _) = locate(&mut conn, tenant, name, selector, None).await?;
    get(&mut conn, &owner, name, version)
        .await?
        .ok_or_else(|| unknown(tenant, name, &format!("version {version}")))
}

/// Where a reference points, without reading the version's text: its owner (the tenant, or
/// [`SHARED`]), the version (for a job, a split label's arm its id picks; else the label's main
/// version), and when that version was saved (versions never change, so these three identify its
/// content for good: see [`super::pin`]'s cache).
pub async fn locate(
    conn: &mut PgConnection,
    tenant: &str,
    name: &str,
    selector: &Selector,
    job_id: Option<&str>,
) -> Result<(String, i32, DateTime<Utc>), PromptError> {
    let (label, version) = match selector {
        Selector::Label(l) => (Some(l.as_str()), None),
        Selector::Version(v) => (None, Some(*v)),
    };
    let which = match selector {
        Selector::Label(l) => format!("label `{l}`"),
        Selector::Version(v) => format!("version {v}"),
    };
    type Located = (
        String,
        i32,
        DateTime<Utc>,
        Option<sqlx::types::Json<Vec<Arm>>>,
    );
    let found: Option<Located> = sqlx::query_as(
        "WITH owner AS (SELECT tenant_id FROM prompt_versions WHERE name = $2 AND tenant_id IN ($1, '') \
                        ORDER BY tenant_id DESC LIMIT 1) \
         SELECT o.tenant_id, v.version, v.created_at, t.split FROM owner o, LATERAL ( \
           SELECT $4::int AS version, NULL::jsonb AS split WHERE $4 IS NOT NULL \
           UNION ALL SELECT max(version), NULL FROM prompt_versions m \
             WHERE $4 IS NULL AND $3 = 'latest' AND m.tenant_id = o.tenant_id AND m.name = $2 \
           UNION ALL SELECT l.version, l.split FROM prompt_labels l \
             WHERE $4 IS NULL AND $3 <> 'latest' AND l.tenant_id = o.tenant_id AND l.name = $2 AND l.label = $3) t, \
           prompt_versions v \
         WHERE v.tenant_id = o.tenant_id AND v.name = $2 AND v.version = t.version",
    )
    .bind(tenant)
    .bind(name)
    .bind(label)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    let (owner, main, saved, split) = found.ok_or_else(|| unknown(tenant, name, &which))?;
    let picked = (split.zip(job_id))
        .and_then(|(arms, job)| pick(&arms.0, &format!("{tenant}/{job}/{name}")));
    let Some(arm) = picked.filter(|v| *v != main) else {
        return Ok((owner, main, saved));
    };
    // Another arm of the split: when it was saved.
    let saved: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM prompt_versions WHERE tenant_id = $1 AND name = $2 AND version = $3",
    )
    .bind(&owner)
    .bind(name)
    .bind(arm)
    .fetch_optional(&mut *conn)
    .await?;
    let saved = saved.ok_or_else(|| unknown(tenant, name, &format!("version {arm}")))?;
    Ok((owner, arm, saved))
}

/// Version `version` of `owner`'s prompt `name` (`owner` is a tenant, or [`SHARED`]).
pub async fn get(
    conn: &mut PgConnection,
    owner: &str,
    name: &str,
    version: i32,
) -> Result<Option<PromptVersion>, PromptError> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, name, version, system_template, user_template, variables_schema, defaults \
         FROM prompt_versions WHERE tenant_id = $1 AND name = $2 AND version = $3",
    )
    .bind(owner)
    .bind(name)
    .bind(version)
    .fetch_optional(conn)
    .await?)
}

/// The arm `key` falls in: a point of the arms' total weight chosen by a hash of `key`.
pub fn pick(arms: &[Arm], key: &str) -> Option<i32> {
    use sha2::Digest;
    let total: u64 = arms.iter().map(|a| u64::from(a.weight)).sum();
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut point = u64::from_be_bytes(digest[..8].try_into().ok()?) % total.max(1);
    for arm in arms {
        let w = u64::from(arm.weight);
        if point < w {
            return Some(arm.version);
        }
        point -= w;
    }
    None
}

fn unknown(tenant: &str, name: &str, which: &str) -> PromptError {
    PromptError::Unknown {
        tenant: tenant.to_string(),
        name: name.to_string(),
        which: which.to_string(),
    }
}

/// A label as listed: the version it names, and its split if it has one.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LabelView {
    pub label: String,
    pub version: i32,
    #[schema(value_type = Option<Vec<Object>>)]
    pub split: Option<serde_json::Value>,
}

/// A prompt as listed: whose it is, its newest version and its labels.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PromptSummary {
    pub name: String,
    /// The operator's shared prompt (every tenant without its own of this name uses it).
    pub shared: bool,
    pub latest: i32,
    pub labels: Vec<LabelView>,
}

/// The prompts `tenant` can use: its own, and the shared ones it does not hide.
pub async fn list(pool: &PgPool, tenant: &str) -> Result<Vec<PromptSummary>, PromptError> {
    let names: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT DISTINCT ON (name) name, tenant_id, max(version) OVER (PARTITION BY tenant_id, name) \
         FROM prompt_versions WHERE tenant_id IN ($1, '') ORDER BY name, tenant_id DESC",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(names.len());
    for (name, owner, latest) in names {
        out.push(PromptSummary {
            labels: labels(pool, &owner, &name).await?,
            shared: owner == SHARED,
            name,
            latest,
        });
    }
    Ok(out)
}

/// The labels of `owner`'s prompt `name`.
pub async fn labels(pool: &PgPool, owner: &str, name: &str) -> Result<Vec<LabelView>, PromptError> {
    check_name("name", name)?;
    Ok(sqlx::query_as(
        "SELECT label, version, split FROM prompt_labels WHERE tenant_id = $1 AND name = $2 ORDER BY label",
    )
    .bind(owner)
    .bind(name)
    .fetch_all(pool)
    .await?)
}

/// A prompt with every version and its labels.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PromptDetail {
    pub name: String,
    /// The operator's shared prompt (the tenant has none of its own by that name).
    pub shared: bool,
    pub versions: Vec<PromptVersion>,
    pub labels: Vec<LabelView>,
}

/// Every version of the prompt `name` that `tenant` uses (its own, else the shared one), oldest
/// first, and its labels.
pub async fn detail(pool: &PgPool, tenant: &str, name: &str) -> Result<PromptDetail, PromptError> {
    let versions = versions(pool, tenant, name).await?;
    let owner = versions.first().map_or(SHARED, |v| v.tenant_id.as_str());
    Ok(PromptDetail {
        shared: owner == SHARED,
        labels: labels(pool, owner, name).await?,
        name: name.to_string(),
        versions,
    })
}

/// Every version of the prompt `name` that `tenant` uses (its own, else the shared one), oldest
/// first.
async fn versions(
    pool: &PgPool,
    tenant: &str,
    name: &str,
) -> Result<Vec<PromptVersion>, PromptError> {
    check_name("name", name)?;
    let rows: Vec<PromptVersion> = sqlx::query_as(
        "WITH owner AS (SELECT tenant_id FROM prompt_versions WHERE name = $2 AND tenant_id IN ($1, '') \
                        ORDER BY tenant_id DESC LIMIT 1) \
         SELECT v.tenant_id, v.name, v.version, v.system_template, v.user_template, \
                v.variables_schema, v.defaults \
         FROM prompt_versions v, owner o WHERE v.tenant_id = o.tenant_id AND v.name = $2 \
         ORDER BY v.version",
    )
    .bind(tenant)
    .bind(name)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(unknown(tenant, name, "at all"));
    }
    Ok(rows)
}
