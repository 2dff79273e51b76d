//! Cache entries in Postgres: written with the job path's group commit, read by key (exact) or by
//! id (semantic), purged by operators and swept by upkeep.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::money::Usage;

/// One cached answer, keyed by (tenant, key).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub tenant_id: String,
    pub key: [u8; 32],
    pub id: Uuid,
    pub scope: [u8; 32],
    /// Its prompt's vector is in the vector store.
    pub semantic: bool,
    pub policy: String,
    pub provider: String,
    pub model: String,
    pub content: String,
    pub finish_reason: Option<String>,
    pub response_id: Option<String>,
    /// What the provider billed for the answer, and what it cost then.
    pub usage: Usage,
    pub cost_micros: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Entry {
    /// Whole seconds since it was stored.
    pub fn age_s(&self, now: DateTime<Utc>) -> u64 {
        u64::try_from((now - self.created_at).num_seconds()).unwrap_or(0)
    }
}

/// The columns every read selects, in [`Row`]'s order.
const COLUMNS: &str = "e.tenant_id, e.key, e.id, e.scope, e.semantic, e.policy, e.provider, \
    e.model, e.content, e.finish_reason, e.response_id, e.input_tokens, e.output_tokens, \
    e.cost_micros, e.created_at, e.expires_at";

#[derive(sqlx::FromRow)]
pub(super) struct Row {
    tenant_id: String,
    key: Vec<u8>,
    id: Uuid,
    scope: Vec<u8>,
    semantic: bool,
    policy: String,
    provider: String,
    model: String,
    content: String,
    finish_reason: Option<String>,
    response_id: Option<String>,
    input_tokens: i64,
    output_tokens: i64,
    cost_micros: i64,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl From<Row> for Entry {
    fn from(r: Row) -> Self {
        let hash = |v: Vec<u8>| <[u8; 32]>::try_from(v).unwrap_or([0; 32]);
        let tokens = |t: i64| u64::try_from(t).unwrap_or(0);
        Self {
            tenant_id: r.tenant_id,
            key: hash(r.key),
            id: r.id,
            scope: hash(r.scope),
            semantic: r.semantic,
            policy: r.policy,
            provider: r.provider,
            model: r.model,
            content: r.content,
            finish_reason: r.finish_reason,
            response_id: r.response_id,
            usage: Usage {
                input_tokens: tokens(r.input_tokens),
                output_tokens: tokens(r.output_tokens),
            },
            cost_micros: r.cost_micros,
            created_at: r.created_at,
            expires_at: r.expires_at,
        }
    }
}

/// Fresh entries for (tenant, key) pairs, each with the index of the pair it answers. One
/// statement for a batch of lookups: the pairs probe the primary key one by one.
///
/// Planned at every execution (not a prepared statement): Postgres keeps the generic plan of a
/// prepared one, made while the table was nearly empty, and that plan scanned every fresh entry
/// for every key (measured: exact mode ran at half the jobs per second of no cache).
pub(super) async fn by_keys(
    conn: &mut PgConnection,
    tenants: &[&str],
    keys: &[Vec<u8>],
) -> Result<Vec<(i64, Entry)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Found {
        n: i64,
        #[sqlx(flatten)]
        row: Row,
    }
    let sql = format!(
        "SELECT t.n, {COLUMNS} FROM UNNEST($1::text[], $2::bytea[]) WITH ORDINALITY AS t(tenant_id, key, n) \
         JOIN cache_entries e ON e.tenant_id = t.tenant_id AND e.key = t.key AND e.expires_at > now()"
    );
    let rows: Vec<Found> = sqlx::query_as(&sql)
        .persistent(false)
        .bind(tenants)
        .bind(keys)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|f| (f.n - 1, f.row.into())).collect())
}

/// The tenant's fresh entry `id` (a semantic match, read back under the tenant's own id); planned at
/// every execution, like [`by_keys`].
pub async fn by_id(pool: &PgPool, tenant: &str, id: Uuid) -> Result<Option<Entry>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM cache_entries e WHERE e.tenant_id = $1 AND e.id = $2 AND e.expires_at > now()"
    );
    let row: Option<Row> = sqlx::query_as(&sql)
        .persistent(false)
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(Entry::from))
}

/// Stores entries in the caller's transaction. An entry already there for the key stays unless it
/// has expired (two workers that missed at once store one answer).
///
/// Entries go in key order, one per key: two workers' batches storing the same keys then lock them
/// in the same order and cannot deadlock (each deadlock is a second's stall before Postgres
/// breaks it), and a batch never updates a row it inserted (which Postgres refuses).
pub async fn insert(conn: &mut PgConnection, entries: &[&Entry]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut entries = entries.to_vec();
    entries.sort_by(|a, b| (&a.tenant_id, a.key).cmp(&(&b.tenant_id, b.key)));
    entries.dedup_by(|a, b| a.tenant_id == b.tenant_id && a.key == b.key);
    let text = |f: fn(&Entry) -> &str| entries.iter().map(|e| f(e)).collect::<Vec<&str>>();
    let opt = |f: fn(&Entry) -> Option<&str>| entries.iter().map(|e| f(e)).collect::<Vec<_>>();
    let big = |f: fn(&Entry) -> i64| entries.iter().map(|e| f(e)).collect::<Vec<i64>>();
    let time = |f: fn(&Entry) -> DateTime<Utc>| entries.iter().map(|e| f(e)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO cache_entries AS c (tenant_id, key, id, scope, semantic, policy, provider, \
           model, content, finish_reason, response_id, input_tokens, output_tokens, cost_micros, \
           created_at, expires_at) \
         SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::uuid[], $4::bytea[], $5::bool[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[], \
           $13::int8[], $14::int8[], $15::timestamptz[], $16::timestamptz[]) \
           AS t(tenant_id, key) ORDER BY tenant_id, key \
         ON CONFLICT (tenant_id, key) DO UPDATE SET scope = excluded.scope, \
           semantic = excluded.semantic, policy = excluded.policy, provider = excluded.provider, \
           model = excluded.model, content = excluded.content, \
           finish_reason = excluded.finish_reason, response_id = excluded.response_id, \
           input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, \
           cost_micros = excluded.cost_micros, created_at = excluded.created_at, \
           expires_at = excluded.expires_at \
         WHERE c.expires_at <= now()",
    )
    .bind(text(|e| &e.tenant_id))
    .bind(entries.iter().map(|e| e.key.to_vec()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.scope.to_vec()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.semantic).collect::<Vec<_>>())
    .bind(text(|e| &e.policy))
    .bind(text(|e| &e.provider))
    .bind(text(|e| &e.model))
    .bind(text(|e| &e.content))
    .bind(opt(|e| e.finish_reason.as_deref()))
    .bind(opt(|e| e.response_id.as_deref()))
    .bind(big(|e| tokens(e.usage.input_tokens)))
    .bind(big(|e| tokens(e.usage.output_tokens)))
    .bind(big(|e| e.cost_micros))
    .bind(time(|e| e.created_at))
    .bind(time(|e| e.expires_at))
    .execute(conn)
    .await?;
    Ok(())
}

fn tokens(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// An entry removed, and whether its vector is in the store too.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Removed {
    pub tenant_id: String,
    pub id: Uuid,
    pub semantic: bool,
}

/// Removes the tenant's entries, of one policy if given, stored before `before` if given.
pub async fn purge(
    pool: &PgPool,
    tenant: &str,
    policy: Option<&str>,
    before: Option<DateTime<Utc>>,
) -> Result<Vec<Removed>, sqlx::Error> {
    sqlx::query_as(
        "DELETE FROM cache_entries WHERE tenant_id = $1 AND ($2::text IS NULL OR policy = $2) \
           AND ($3::timestamptz IS NULL OR created_at < $3) \
         RETURNING tenant_id, id, semantic",
    )
    .bind(tenant)
    .bind(policy)
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Removes up to `limit` expired entries, then each tenant's oldest beyond `max_per_tenant`, in
/// one transaction that only one process runs at a time.
pub async fn sweep(
    pool: &PgPool,
    max_per_tenant: u64,
    limit: i64,
) -> Result<Vec<Removed>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ours: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('ragq_cache_sweep'))")
            .fetch_one(&mut *tx)
            .await?;
    if !ours {
        return Ok(Vec::new());
    }
    let mut removed: Vec<Removed> = sqlx::query_as(
        "DELETE FROM cache_entries WHERE (tenant_id, key) IN \
           (SELECT tenant_id, key FROM cache_entries WHERE expires_at <= now() LIMIT $1) \
         RETURNING tenant_id, id, semantic",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let bound = i64::try_from(max_per_tenant).unwrap_or(i64::MAX);
    let beyond: Vec<Removed> = sqlx::query_as(
        "WITH over AS (SELECT tenant_id, count(*) - $1 AS excess FROM cache_entries \
                       GROUP BY tenant_id HAVING count(*) > $1), \
         doomed AS (SELECT x.tenant_id, x.key FROM over o CROSS JOIN LATERAL \
                      (SELECT c.tenant_id, c.key FROM cache_entries c WHERE c.tenant_id = o.tenant_id \
                       ORDER BY c.created_at LIMIT o.excess) x) \
         DELETE FROM cache_entries e USING doomed d \
         WHERE e.tenant_id = d.tenant_id AND e.key = d.key \
         RETURNING e.tenant_id, e.id, e.semantic",
    )
    .bind(bound)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    removed.extend(beyond);
    Ok(removed)
}
