//! API keys: several per tenant, each named, scoped, optionally expiring, revocable at once, and
//! rotated without a gap.
//!
//! A key is an id (`key_…`, public, shown in lists and the audit log) and a secret (`rq_…`, shown
//! once). Only SHA-256 hashes of secrets are stored. Rotation keeps the id, so the key's rate
//! limit, its audit trail and everything booked against its tenant carry on; the old secret stays
//! valid until the grace period given ends. Lookups are never cached, so a revocation holds from
//! the next request. Time is the database's (`now()`), one clock for every api replica.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use super::{hash_api_key, random_token};
use crate::audit::{self, Actor, Change};
use crate::secret::Secret;

/// What a key may do. Tenant keys hold any of the first six; an operator key holds `operator`
/// only and belongs to no tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    JobsWrite,
    JobsRead,
    SpendRead,
    PipelinesRead,
    PipelinesWrite,
    PromptsWrite,
    ProviderKeysWrite,
    Operator,
}

impl Scope {
    /// Every scope a tenant key may hold (the default for new tenant keys).
    pub const TENANT: [Scope; 7] = [
        Scope::JobsWrite,
        Scope::JobsRead,
        Scope::SpendRead,
        Scope::PipelinesRead,
        Scope::PipelinesWrite,
        Scope::PromptsWrite,
        Scope::ProviderKeysWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::JobsWrite => "jobs:write",
            Scope::JobsRead => "jobs:read",
            Scope::SpendRead => "spend:read",
            Scope::PipelinesRead => "pipelines:read",
            Scope::PipelinesWrite => "pipelines:write",
            Scope::PromptsWrite => "prompts:write",
            Scope::ProviderKeysWrite => "provider_keys:write",
            Scope::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, String> {
        Self::TENANT
            .into_iter()
            .chain([Scope::Operator])
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scope `{s}`: one of jobs:write, jobs:read, spend:read, \
                     pipelines:read, pipelines:write, prompts:write, provider_keys:write, operator"
                )
            })
    }

    /// A comma-separated list, as the CLI takes it.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut scopes = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = Scope::parse(part)?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(scopes)
    }
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// None: an operator key.
    pub tenant: Option<String>,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeySpec {
    fn validate(&self) -> Result<(), KeyError> {
        let invalid = |m: String| Err(KeyError::Invalid(m));
        if self.name.is_empty()
            || self.name.chars().count() > 64
            || self.name.chars().any(char::is_control)
        {
            return invalid(
                "a key's name is 1 to 64 characters, none of them control characters".into(),
            );
        }
        if self.scopes.is_empty() {
            return invalid("a key needs at least one scope".into());
        }
        let operator = self.scopes.contains(&Scope::Operator);
        match (&self.tenant, operator) {
            (Some(_), true) => invalid(
                "the operator scope belongs to operator keys (no --tenant), not to a tenant's key"
                    .into(),
            ),
            (None, false) => invalid(
                "a key without a tenant is an operator key: give --tenant, or the operator scope"
                    .into(),
            ),
            (None, true) if self.scopes.len() > 1 => {
                invalid("an operator key holds the operator scope only".into())
            }
            _ => Ok(()),
        }
    }
}

/// A secret as it is handed out, once.
#[derive(Debug)]
pub struct IssuedKey {
    pub id: String,
    pub secret: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("unknown key `{0}`")]
    Unknown(String),
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    #[error("key `{0}` is revoked")]
    Revoked(String),
    #[error("a live key of this tenant is already named `{0}`")]
    NameTaken(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

fn new_key_id() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("key_{}", hex::encode(bytes))
}

/// A new secret: `rq_` and 256 random bits, URL-safe.
pub(crate) fn new_secret() -> Secret {
    Secret::new(random_token("rq_").replace(['+', '/', '='], "x"))
}

fn scope_names(scopes: &[Scope]) -> Vec<&'static str> {
    scopes.iter().map(|s| s.as_str()).collect()
}

/// Creates a key; its secret is returned once.
pub async fn create(pool: &PgPool, actor: &Actor, spec: &KeySpec) -> Result<IssuedKey, KeyError> {
    let mut tx = pool.begin().await?;
    let issued = insert(&mut tx, spec).await?;
    let after = serde_json::json!({
        "name": spec.name, "scopes": scope_names(&spec.scopes), "expires_at": spec.expires_at,
    });
    let change = Change {
        action: "key.create",
        tenant: spec.tenant.as_deref(),
        target: &issued.id,
        before: None,
        after: Some(after),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(issued)
}

/// Inserts a key in a caller's transaction (tenant creation makes its first key this way).
pub(crate) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    spec: &KeySpec,
) -> Result<IssuedKey, KeyError> {
    spec.validate()?;
    let id = new_key_id();
    let secret = new_secret();
    let inserted = sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, name, scopes, secret_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(spec.tenant.as_deref())
    .bind(&spec.name)
    .bind(scope_names(&spec.scopes))
    .bind(hash_api_key(secret.expose()))
    .bind(spec.expires_at)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => Ok(IssuedKey { id, secret }),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("api_keys_live_name") => {
            Err(KeyError::NameTaken(spec.name.clone()))
        }
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Err(
            KeyError::UnknownTenant(spec.tenant.clone().unwrap_or_default()),
        ),
        Err(e) => Err(e.into()),
    }
}

/// A key as lists show it (never its secret or hash).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyView {
    pub id: String,
    pub tenant: Option<String>,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still works.
    pub previous_until: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Every key (of one tenant, or all), oldest first.
pub async fn list(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<KeyView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id AS tenant, name, scopes, created_at, last_used_at, expires_at, \
           rotated_at, previous_until, revoked_at \
         FROM api_keys WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at, id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// The key, locked for a change in `tx`.
async fn lock(tx: &mut Transaction<'_, Postgres>, id: &str) -> Result<KeyView, KeyError> {
    sqlx::query_as(
        "SELECT id, tenant_id AS tenant, name, scopes, created_at, last_used_at, expires_at, \
           rotated_at, previous_until, revoked_at \
         FROM api_keys WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| KeyError::Unknown(id.to_string()))
}

/// Revokes a key: both its secrets stop working at once. Revoking twice is refused.
pub async fn revoke(pool: &PgPool, actor: &Actor, id: &str) -> Result<(), KeyError> {
    let mut tx = pool.begin().await?;
    let key = lock(&mut tx, id).await?;
    if key.revoked_at.is_some() {
        return Err(KeyError::Revoked(id.to_string()));
    }
    let revoked_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE api_keys SET revoked_at = now(), previous_hash = NULL, previous_until = NULL \
         WHERE id = $1 RETURNING revoked_at",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let change = Change {
        action: "key.revoke",
        tenant: key.tenant.as_deref(),
        target: id,
        before: Some(serde_json::json!({ "revoked_at": null })),
        after: Some(serde_json::json!({ "revoked_at": revoked_at })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(())
}

/// Gives a key a new secret, keeping its id, name, scopes and expiry; the current secret keeps
/// working for `grace` (zero: it stops at once). A secret from an earlier rotation still in its
/// grace period stops now: at most two secrets are live.
pub async fn rotate(
    pool: &PgPool,
    actor: &Actor,
    id: &str,
    grace: std::time::Duration,
) -> Result<IssuedKey, KeyError> {
    let grace = chrono::Duration::from_std(grace)
        .map_err(|_| KeyError::Invalid("grace period too long".into()))?;
    let mut tx = pool.begin().await?;
    let key = lock(&mut tx, id).await?;
    if key.revoked_at.is_some() {
        return Err(KeyError::Revoked(id.to_string()));
    }
    let secret = new_secret();
    let (rotated_at, previous_until): (DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
        "UPDATE api_keys SET rotated_at = now(), \
           previous_hash = CASE WHEN $3 > interval '0' THEN secret_hash END, \
           previous_until = CASE WHEN $3 > interval '0' THEN now() + $3 END, \
           secret_hash = $2 \
         WHERE id = $1 RETURNING rotated_at, previous_until",
    )
    .bind(id)
    .bind(hash_api_key(secret.expose()))
    .bind(grace)
    .fetch_one(&mut *tx)
    .await?;
    let change = Change {
        action: "key.rotate",
        tenant: key.tenant.as_deref(),
        target: id,
        before: Some(serde_json::json!({ "rotated_at": key.rotated_at })),
        after: Some(serde_json::json!({
            "rotated_at": rotated_at, "previous_secret_until": previous_until,
        })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(IssuedKey {
        id: id.to_string(),
        secret,
    })
}

/// Who a presented secret is.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    /// None: an operator key.
    pub tenant: Option<String>,
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// Whether the key holds `scope`; an operator key also reads (jobs, spend, pipelines) across
    /// tenants, but writes nothing of a tenant's.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || (self.scopes.contains(&Scope::Operator)
                && matches!(
                    scope,
                    Scope::JobsRead | Scope::SpendRead | Scope::PipelinesRead
                ))
    }

    pub fn actor(&self) -> Actor {
        Actor::key(&self.key_id)
    }
}

/// Why a secret does not authenticate. The holder of a secret learns which (it tells them what
/// to do); someone guessing learns nothing, since every guess is `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Revoked,
    Expired,
    /// A secret replaced by a rotation whose grace period has ended.
    Replaced,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown API key",
            Refusal::Revoked => "this API key is revoked",
            Refusal::Expired => "this API key has expired",
            Refusal::Replaced => {
                "this API key was rotated and its grace period has ended; use the new secret"
            }
        }
    }
}

/// A key's row as authentication reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct KeyRecord {
    id: String,
    tenant_id: Option<String>,
    scopes: Vec<String>,
    /// The presented secret is the key's current one (else its previous one).
    current: bool,
    previous_until: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

/// Whether the record admits its secret at `now`: the pure rule, tested without a database.
fn judge(record: &KeyRecord, now: DateTime<Utc>) -> Result<(), Refusal> {
    if record.revoked_at.is_some() {
        return Err(Refusal::Revoked);
    }
    if record.expires_at.is_some_and(|at| at <= now) {
        return Err(Refusal::Expired);
    }
    if !record.current && record.previous_until.is_none_or(|until| until <= now) {
        return Err(Refusal::Replaced);
    }
    Ok(())
}

/// How stale `last_used_at` may get: it is written at most once a minute per key.
const LAST_USED_RESOLUTION: chrono::Duration = chrono::Duration::seconds(60);

/// The caller a secret authenticates, or why it does not.
pub async fn authenticate(
    pool: &PgPool,
    secret: &str,
) -> Result<Result<Caller, Refusal>, sqlx::Error> {
    let hash = hash_api_key(secret);
    let record: Option<KeyRecord> = sqlx::query_as(
        "SELECT id, tenant_id, scopes, secret_hash = $1 AS current, previous_until, expires_at, \
           revoked_at, last_used_at, now() AS now \
         FROM api_keys WHERE secret_hash = $1 OR previous_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(pool)
    .await?;
    let Some(record) = record else {
        return Ok(Err(Refusal::Unknown));
    };
    if let Err(refusal) = judge(&record, record.now) {
        return Ok(Err(refusal));
    }
    if record
        .last_used_at
        .is_none_or(|at| record.now - at >= LAST_USED_RESOLUTION)
    {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1")
            .bind(&record.id)
            .execute(pool)
            .await?;
    }
    let scopes = record
        .scopes
        .iter()
        .filter_map(|s| Scope::parse(s).ok())
        .collect();
    Ok(Ok(Caller {
        key_id: record.id,
        tenant: record.tenant_id,
        scopes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(now: DateTime<Utc>) -> KeyRecord {
        KeyRecord {
            id: "key_0123456789abcdef".into(),
            tenant_id: Some("acme".into()),
            scopes: vec!["jobs:write".into()],
            current: true,
            previous_until: None,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            now,
        }
    }

    #[test]
    fn the_old_secret_works_inside_the_grace_period_only() {
        let now = Utc::now();
        let mut old = record(now);
        old.current = false;
        old.previous_until = Some(now + chrono::Duration::minutes(5));
        assert_eq!(judge(&old, now), Ok(()));
        assert_eq!(
            judge(&old, now + chrono::Duration::minutes(5)),
            Err(Refusal::Replaced)
        );
        old.previous_until = None;
        assert_eq!(judge(&old, now), Err(Refusal::Replaced));
        assert_eq!(
            judge(&record(now), now + chrono::Duration::days(999)),
            Ok(())
        );
    }

    #[test]
    fn revoked_and_expired_keys_are_refused() {
        let now = Utc::now();
        let mut r = record(now);
        r.expires_at = Some(now);
        assert_eq!(judge(&r, now), Err(Refusal::Expired));
        assert_eq!(judge(&r, now - chrono::Duration::seconds(1)), Ok(()));
        r.revoked_at = Some(now);
        assert_eq!(
            judge(&r, now - chrono::Duration::seconds(1)),
            Err(Refusal::Revoked)
        );
    }

    #[test]
    fn specs_keep_operator_and_tenant_keys_apart() {
        let spec = |tenant: Option<&str>, scopes: Vec<Scope>| KeySpec {
            tenant: tenant.map(str::to_string),
            name: "ci".into(),
            scopes,
            expires_at: None,
        };
        assert!(spec(Some("acme"), Scope::TENANT.to_vec())
            .validate()
            .is_ok());
        assert!(spec(None, vec![Scope::Operator]).validate().is_ok());
        assert!(spec(Some("acme"), vec![Scope::Operator])
            .validate()
            .is_err());
        assert!(spec(None, vec![Scope::JobsRead]).validate().is_err());
        assert!(spec(None, vec![Scope::Operator, Scope::JobsRead])
            .validate()
            .is_err());
        assert!(spec(Some("acme"), vec![]).validate().is_err());
        assert_eq!(
            Scope::parse_list("jobs:read, spend:read,jobs:read"),
            Ok(vec![Scope::JobsRead, Scope::SpendRead])
        );
        assert!(Scope::parse_list("jobs:admin").is_err());
    }
}
