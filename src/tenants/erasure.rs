//! Erasing a tenant: its vectors in the store, then every row of it in one transaction (the SQL
//! function `ragq_erase_tenant` finds every table with a `tenant_id` in the catalog and refuses to
//! commit if any row of the tenant would remain), keeping or anonymizing the ledger as configured.
//!
//! Keys are revoked first, in their own transaction, so the tenant's traffic stops before its
//! data goes; the erasure can be run again if it fails midway (every step is idempotent).

use rand::RngCore;
use serde_json::Value;
use sqlx::PgPool;

use crate::audit::{self, Actor, Change};
use crate::retrieval::VectorStore;

/// What an erasure removed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Erased {
    /// The random name the tenant's ledger and audit rows now carry.
    pub pseudonym: String,
    /// Collections the tenant's chunks were removed from.
    pub collections: Vec<String>,
    /// Rows per table (deleted, or anonymized where it says so).
    pub rows: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("unknown tenant `{0}`")]
    Unknown(String),
    #[error("vector store: {0}")]
    Store(#[from] crate::retrieval::StoreError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Erases `tenant`, with its cached prompts' vectors in `cache_collection` (its cache entries
/// go with its other rows).
pub async fn erase(
    pool: &PgPool,
    store: &VectorStore,
    actor: &Actor,
    tenant: &str,
    keep_ledger: bool,
    cache_collection: &str,
) -> Result<Erased, ErasureError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
        .bind(tenant)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Err(ErasureError::Unknown(tenant.to_string()));
    }
    sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .execute(pool)
    .await?;
    let mut collections = collections(pool, tenant).await?;
    if !collections.iter().any(|c| c == cache_collection) {
        collections.push(cache_collection.to_string());
    }
    for collection in &collections {
        store.erase_tenant(collection, tenant).await?;
    }
    let pseudonym = pseudonym();
    let mut tx = pool.begin().await?;
    let rows: Value = sqlx::query_scalar("SELECT ragq_erase_tenant($1, $2, $3)")
        .bind(tenant)
        .bind(&pseudonym)
        .bind(keep_ledger)
        .fetch_one(&mut *tx)
        .await?;
    let change = Change {
        action: "tenant.erase",
        tenant: Some(&pseudonym),
        target: &pseudonym,
        before: None,
        after: Some(serde_json::json!({
            "ledger": if keep_ledger { "kept" } else { "anonymized" },
            "collections": collections.len(), "rows": rows,
        })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(Erased {
        pseudonym,
        collections,
        rows,
    })
}

/// Every collection the tenant's jobs named (retention keeps the name when it purges a job's
/// input, so old ingestions are found too).
async fn collections(pool: &PgPool, tenant: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT input ->> 'collection' FROM jobs \
         WHERE tenant_id = $1 AND kind IN ('ingest', 'rag.answer') AND input ? 'collection' \
         ORDER BY 1",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// `erased-` and 48 random bits: not derived from the tenant's id, so it cannot be reversed.
fn pseudonym() -> String {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("erased-{}", hex::encode(bytes))
}
