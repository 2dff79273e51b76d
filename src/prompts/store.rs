//! Prompt versions and labels in Postgres: saving a prompt makes its next immutable version,
//! labels move between versions, and a name resolves to the tenant's own prompt, else the
//! operator's shared one (tenant `''`).

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::render;
use crate::audit::{self, Actor, Change};

/// The tenant of the operator's shared prompts.
pub const SHARED: &str = "";

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

/// One saved version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PromptVersion {
    pub tenant_id: String,
    pub name: String,
    pub version: i32,
    pub system_template: Option<String>,
    pub user_template: String,
    pub variables_schema: serde_json::Value,
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
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(PromptError::Invalid(format!(
            "{what}: 1 to 64 characters of [a-z0-9._-], got {name:?}"
        )))
    }
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
    for (part, source) in [
        ("system", spec.system.as_deref()),
        ("user", Some(&spec.user[..])),
    ] {
        if let Some(source) = source {
            render::check(source).map_err(|e| PromptError::Invalid(format!("{part}: {e}")))?;
        }
    }
    if !spec.variables.is_object() || !spec.defaults.is_object() {
        return Err(PromptError::Invalid(
            "variables (a JSON Schema) and defaults must be objects".into(),
        ));
    }
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
    check_name("label", label)?;
    if label == LATEST {
        return Err(PromptError::Invalid(
            "label `latest` always names the newest version and cannot be moved".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    let before: Option<i32> = sqlx::query_scalar(
        "SELECT version FROM prompt_labels WHERE tenant_id = $1 AND name = $2 AND label = $3 FOR UPDATE",
    )
    .bind(tenant)
    .bind(name)
    .bind(label)
    .fetch_optional(&mut *tx)
    .await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM prompt_versions WHERE tenant_id = $1 AND name = $2 AND version = $3)",
    )
    .bind(tenant)
    .bind(name)
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    if !exists {
        return Err(unknown(tenant, name, &format!("version {version}")));
    }
    sqlx::query(
        "INSERT INTO prompt_labels (tenant_id, name, label, version) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, name, label) DO UPDATE SET version = excluded.version, updated_at = now()",
    )
    .bind(tenant)
    .bind(name)
    .bind(label)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    let target = format!("{name}:{label}");
    let change = Change {
        action: "prompt.label",
        tenant: (tenant != SHARED).then_some(tenant),
        target: &target,
        before: before.map(Into::into),
        after: Some(version.into()),
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

/// The version `tenant` gets for `name` and `selector`: from its own prompt of that name if it has
/// one, else from the operator's shared one.
pub async fn resolve(
    pool: &PgPool,
    tenant: &str,
    name: &str,
    selector: &Selector,
) -> Result<PromptVersion, PromptError> {
    let (label, version) = match selector {
        Selector::Label(l) => (Some(l.as_str()), None),
        Selector::Version(v) => (None, Some(*v)),
    };
    let found: Option<PromptVersion> = sqlx::query_as(
        "WITH owner AS (SELECT tenant_id FROM prompt_versions WHERE name = $2 AND tenant_id IN ($1, '') \
                        ORDER BY tenant_id DESC LIMIT 1) \
         SELECT v.tenant_id, v.name, v.version, v.system_template, v.user_template, \
                v.variables_schema, v.defaults \
         FROM prompt_versions v, owner o \
         WHERE v.tenant_id = o.tenant_id AND v.name = $2 AND v.version = coalesce( \
           $4, \
           CASE WHEN $3 = 'latest' \
                THEN (SELECT max(version) FROM prompt_versions m WHERE m.tenant_id = o.tenant_id AND m.name = $2) \
                ELSE (SELECT l.version FROM prompt_labels l WHERE l.tenant_id = o.tenant_id AND l.name = $2 AND l.label = $3) END)",
    )
    .bind(tenant)
    .bind(name)
    .bind(label)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    let which = match selector {
        Selector::Label(l) => format!("label `{l}`"),
        Selector::Version(v) => format!("version {v}"),
    };
    found.ok_or_else(|| unknown(tenant, name, &which))
}

fn unknown(tenant: &str, name: &str, which: &str) -> PromptError {
    PromptError::Unknown {
        tenant: tenant.to_string(),
        name: name.to_string(),
        which: which.to_string(),
    }
}
