//! The cache as a worker's calls use it: exact lookups through the batched task, semantic
//! matches read back under the tenant's own id, and the entries a miss leaves behind.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use super::key::Fingerprint;
use super::lookup::Lookups;
use super::store::{self, Entry};
use super::{semantic, CacheConfig, CacheError, Settings};
use crate::providers::{ChatRequest, ChatResponse};
use crate::retrieval::VectorStore;

/// One worker's cache: cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    pub cfg: CacheConfig,
    pool: PgPool,
    lookups: Lookups,
    vectors: VectorStore,
    /// Set once this process has made sure the collection exists (a round trip to the store).
    collection_ready: std::sync::Arc<tokio::sync::OnceCell<()>>,
}

/// What a call answered by a provider leaves in the cache.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub policy: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub response: &'a ChatResponse,
    pub cost_micros: i64,
}

/// An entry's id: a UUID of its key's first bytes (the key is a hash, so ids do not collide).
pub fn entry_id(key: &[u8; 32]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&key[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

impl ResponseCache {
    /// The cache over `pool` and `vectors`, with its lookup task (which ends when every clone is
    /// dropped).
    pub fn start(cfg: CacheConfig, pool: PgPool, vectors: VectorStore) -> Self {
        let (lookups, _task) = Lookups::spawn(pool.clone());
        Self {
            cfg,
            pool,
            lookups,
            vectors,
            collection_ready: Default::default(),
        }
    }

    /// The text a semantic lookup would embed for `request`, if it may have one.
    pub fn semantic_text<'r>(
        &self,
        settings: &Settings,
        request: &'r ChatRequest,
    ) -> Option<&'r str> {
        let max = self.cfg.semantic_max_prompt_bytes;
        settings
            .semantic
            .then(|| super::key::semantic_text(request, max))
            .flatten()
    }

    /// The embeddings model semantic lookups use.
    pub fn embedding_model(&self) -> Option<&str> {
        self.cfg.embedding_model.as_deref()
    }

    /// The tenant's fresh entry for the fingerprint's key.
    pub async fn exact(&self, tenant: &str, f: &Fingerprint) -> Result<Option<Entry>, CacheError> {
        self.lookups.find(tenant, f.key).await
    }

    /// The tenant's fresh entry whose prompt is nearest `vector` within the fingerprint's scope,
    /// at `min_similarity` or above, with its similarity.
    pub async fn nearest(
        &self,
        tenant: &str,
        f: &Fingerprint,
        vector: &[f32],
        min_similarity: f32,
    ) -> Result<Option<(Entry, f32)>, CacheError> {
        let collection = &self.cfg.collection;
        let found = semantic::nearest(
            &self.vectors,
            collection,
            tenant,
            &f.scope,
            vector,
            min_similarity,
        )
        .await?;
        let Some((id, similarity)) = found else {
            return Ok(None);
        };
        // Read back under the tenant's own id, and only within the same scope.
        let entry = store::by_id(&self.pool, tenant, id).await?;
        Ok(entry
            .filter(|e| e.scope == f.scope)
            .map(|e| (e, similarity)))
    }

    /// The entry an answer makes, if it may be stored (not over `cache.max_entry_bytes`). With a
    /// prompt vector, the vector is stored first: the entry is semantic only once it is there.
    pub async fn entry(
        &self,
        tenant: &str,
        f: &Fingerprint,
        ttl: Duration,
        answer: Answer<'_>,
        vector: Option<Vec<f32>>,
    ) -> Option<Entry> {
        if answer.response.content.len() > self.cfg.max_entry_bytes {
            return None;
        }
        // Derived from the key: a refreshed entry keeps its id, so its vector is replaced in place.
        let id = entry_id(&f.key);
        let semantic = match vector {
            Some(v) => {
                let collection = &self.cfg.collection;
                let ready = self
                    .collection_ready
                    .get_or_try_init(|| self.vectors.ensure_collection(collection, v.len()));
                let stored = match ready.await {
                    Ok(()) => {
                        semantic::remember(&self.vectors, collection, tenant, id, &f.scope, v).await
                    }
                    Err(e) => Err(e),
                };
                stored
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot store a cached prompt's vector; the entry is exact only"))
                    .is_ok()
            }
            None => false,
        };
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        Some(Entry {
            tenant_id: tenant.to_string(),
            key: f.key,
            id,
            scope: f.scope,
            semantic,
            policy: answer.policy.to_string(),
            provider: answer.provider.to_string(),
            model: answer.model.to_string(),
            content: answer.response.content.clone(),
            finish_reason: answer.response.finish_reason.clone(),
            response_id: answer.response.response_id.clone(),
            usage: answer.response.usage,
            cost_micros: answer.cost_micros,
            created_at: now,
            expires_at: now.checked_add_signed(ttl).unwrap_or(now),
        })
    }
}
