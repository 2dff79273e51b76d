//! The audit log: who changed what, when, from what to what.
//!
//! Every administrative change (tenants, keys, plans, budgets, pipelines, secrets, replays,
//! erasures) writes one row in the transaction that makes the change, so a change without its row
//! (or a row without its change) cannot be committed. The table refuses UPDATE, DELETE and
//! TRUNCATE. Rows hold settings, never secrets or tenant content: a job template's input is kept
//! as its SHA-256 only (see [`digest_content`]).

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, QueryBuilder};

/// Who made a change: an API key (`key:<id>`) or a command-line user (`cli:<OS user>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// The OS user running this `ragq` command.
    pub fn cli() -> Self {
        let user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".into());
        Self(format!("cli:{user}"))
    }

    /// The API key a request authenticated with (its id, never its secret).
    pub fn key(id: &str) -> Self {
        Self(format!("key:{id}"))
    }

    /// ragq itself (retention, maintenance).
    pub fn system() -> Self {
        Self("system:ragq".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One change as it is recorded.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// `<noun>.<verb>`: `tenant.create`, `key.rotate`, `budget.set`, ...
    pub action: &'a str,
    pub tenant: Option<&'a str>,
    pub target: &'a str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Writes `change` as `actor`'s, on the change's own connection (its transaction).
pub async fn record(
    conn: &mut PgConnection,
    actor: &Actor,
    change: Change<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, tenant_id, target, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(actor.as_str())
    .bind(change.action)
    .bind(change.tenant)
    .bind(change.target)
    .bind(change.before)
    .bind(change.after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces tenant content with its SHA-256 (`{"sha256": "…"}`), so the log shows that it
/// changed without keeping it (erasure must not leave prompts behind in the audit log).
pub fn digest_content(value: &Value) -> Value {
    let digest = Sha256::digest(value.to_string().as_bytes());
    serde_json::json!({ "sha256": hex::encode(digest) })
}

/// Which rows `list` returns; every field narrows.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    /// An action (`key.rotate`) or a noun (`key`, every action on keys).
    pub action: Option<String>,
    pub actor: Option<String>,
    /// RFC 3339; rows at or after it.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339; rows before it.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many rows, newest first (default 100, at most 1,000).
    pub limit: Option<i64>,
}

/// An audit row as `ragq audit` and `GET /v1/audit` show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRow {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub tenant: Option<String>,
    pub target: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// The rows `filter` selects, newest first.
pub async fn list(pool: &PgPool, filter: &AuditFilter) -> Result<Vec<AuditRow>, sqlx::Error> {
    let mut q = QueryBuilder::new(
        "SELECT id, at, actor, action, tenant_id AS tenant, target, before, after \
         FROM audit_log WHERE true",
    );
    if let Some(t) = &filter.tenant {
        q.push(" AND tenant_id = ").push_bind(t);
    }
    if let Some(a) = &filter.action {
        if a.contains('.') {
            q.push(" AND action = ").push_bind(a);
        } else {
            q.push(" AND split_part(action, '.', 1) = ").push_bind(a);
        }
    }
    if let Some(a) = &filter.actor {
        q.push(" AND actor = ").push_bind(a);
    }
    if let Some(s) = filter.since {
        q.push(" AND at >= ").push_bind(s);
    }
    if let Some(u) = filter.until {
        q.push(" AND at < ").push_bind(u);
    }
    let limit = filter.limit.unwrap_or(100).clamp(1, 1_000);
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    q.build_query_as().fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_kept_as_a_digest_only() {
        let input = serde_json::json!({"prompts": [{"messages": [{"content": "secret plan"}]}]});
        let d = digest_content(&input);
        assert!(!d.to_string().contains("secret plan"));
        assert_eq!(d["sha256"].as_str().map(str::len), Some(64));
        assert_ne!(d, digest_content(&serde_json::json!({"prompts": []})));
    }

    #[test]
    fn actors_name_keys_by_id() {
        assert_eq!(
            Actor::key("key_0123456789abcdef").as_str(),
            "key:key_0123456789abcdef"
        );
        assert!(Actor::cli().as_str().starts_with("cli:"));
    }
}
