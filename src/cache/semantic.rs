//! Cached prompts' vectors: one point per semantic entry in the cache's own collection, under the
//! tenant like any chunk (so every search is the tenant's alone), with the entry's scope as
//! metadata that a match must equal. The point holds no text: the prompt is not kept anywhere.

use uuid::Uuid;

use crate::retrieval::{
    ChunkPoint, FilterValue, MetadataFilter, SearchQuery, StoreError, VectorStore,
};

/// The metadata field holding an entry's scope (hex).
const SCOPE_FIELD: &str = "scope";

/// The tenant's cached prompt nearest to `vector` among those of `scope`, if its similarity is
/// at least `min_similarity`: the entry's id and the similarity.
pub async fn nearest(
    store: &VectorStore,
    collection: &str,
    tenant: &str,
    scope: &[u8; 32],
    vector: &[f32],
    min_similarity: f32,
) -> Result<Option<(Uuid, f32)>, StoreError> {
    let filter = MetadataFilter::from([(
        SCOPE_FIELD.to_string(),
        FilterValue::Text(hex::encode(scope)),
    )]);
    let query = SearchQuery {
        tenant,
        vector,
        top_k: 1,
        score_threshold: Some(min_similarity),
        filter: &filter,
        exact: false,
    };
    match store.search(collection, &query).await {
        // The tenant has no cached prompt yet.
        Err(StoreError::UnknownCollection(_)) => Ok(None),
        Err(e) => Err(e),
        Ok(hits) => Ok(hits.into_iter().find_map(|h| {
            let id = Uuid::parse_str(&h.document_id).ok()?;
            (h.score >= min_similarity).then_some((id, h.score))
        })),
    }
}

/// Stores the vector of entry `id`'s prompt (in a collection that exists: see
/// [`VectorStore::ensure_collection`]).
pub async fn remember(
    store: &VectorStore,
    collection: &str,
    tenant: &str,
    id: Uuid,
    scope: &[u8; 32],
    vector: Vec<f32>,
) -> Result<(), StoreError> {
    let document_id = id.to_string();
    let mut metadata = serde_json::Map::new();
    metadata.insert(SCOPE_FIELD.into(), hex::encode(scope).into());
    let point = ChunkPoint {
        document_id: document_id.clone(),
        chunk_index: 0,
        text: String::new(),
        metadata,
        vector,
    };
    store
        .replace_document(collection, tenant, &document_id, vec![point])
        .await
}

/// Removes the vectors of the tenant's entries `ids`.
pub async fn forget(
    store: &VectorStore,
    collection: &str,
    tenant: &str,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    store.delete_documents(collection, tenant, &ids).await
}
