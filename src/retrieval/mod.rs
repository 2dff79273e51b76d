//! Retrieval: tenants' documents as chunks in a vector store, and the search that grounds answers.
//!
//! One interface, [`VectorStore`], with two implementations that behave the same: [`embedded`]
//! (qdrant-edge on local disk, for one machine) and [`remote`] (a Qdrant server or cluster through
//! qdrant-client). Following Qdrant's multitenancy guidance, a collection holds every tenant's
//! chunks with the tenant as an indexed payload field; the tenant condition is added here, from the
//! job's authenticated tenant, and a caller's metadata filter can only narrow it.

pub mod chunk;
pub mod embedded;
pub mod remote;
pub mod shared;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where the vectors live.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Embedded {
        path: std::path::PathBuf,
        hnsw_ef: usize,
    },
    Qdrant {
        url: String,
        api_key: Option<crate::secret::Secret>,
        hnsw_ef: usize,
    },
}

/// A `rag.answer` prompt: `user` holds `{context}` and `{question}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    pub system: String,
    pub user: String,
}

/// Retrieval settings, validated.
#[derive(Debug, Clone)]
pub struct RetrievalConfig {
    pub store: StoreConfig,
    /// None when the catalog has no embeddings model: retrieval jobs then fail saying so.
    pub embedding_model: Option<String>,
    pub dimensions: usize,
    pub embed_batch: usize,
    pub chunk: chunk::ChunkSpec,
    pub max_document_bytes: usize,
    pub max_documents_per_job: usize,
    pub default_top_k: usize,
    pub max_top_k: usize,
    pub answer_max_tokens: u32,
    pub templates: BTreeMap<String, PromptTemplate>,
}

impl VectorStore {
    /// The configured store. The embedded one is opened by the first operation, by this process if
    /// no other holds it, else through the process that does (see [`shared`]).
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        match config {
            StoreConfig::Embedded { path, hnsw_ef } => Ok(Self::new(Arc::new(
                shared::SharedStore::new(path, *hnsw_ef),
            ))),
            StoreConfig::Qdrant {
                url,
                api_key,
                hnsw_ef,
            } => Ok(Self::new(Arc::new(remote::QdrantStore::connect(
                url,
                api_key.as_ref().map(|k| k.expose()),
                *hnsw_ef,
            )?))),
        }
    }
}

/// Payload fields of every point.
pub const TENANT_FIELD: &str = "tenant";
pub const DOCUMENT_FIELD: &str = "document_id";
pub const CHUNK_FIELD: &str = "chunk_index";
pub const TEXT_FIELD: &str = "text";
pub const METADATA_FIELD: &str = "metadata";

/// One chunk to store: where it comes from, its text, and its embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPoint {
    pub document_id: String,
    pub chunk_index: u32,
    pub text: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub vector: Vec<f32>,
}

/// A chunk found by a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub document_id: String,
    pub chunk_index: u32,
    pub score: f32,
    pub text: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A metadata value a filter matches exactly, or any of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FilterValue {
    Text(String),
    Integer(i64),
    Bool(bool),
    AnyText(Vec<String>),
    AnyInteger(Vec<i64>),
}

/// Conditions on `metadata.<key>`, all of which must hold.
pub type MetadataFilter = BTreeMap<String, FilterValue>;

/// One search, always scoped to one tenant.
#[derive(Debug, Clone)]
pub struct SearchQuery<'a> {
    pub tenant: &'a str,
    pub vector: &'a [f32],
    pub top_k: usize,
    pub score_threshold: Option<f32>,
    pub filter: &'a MetadataFilter,
    /// Exact (brute-force) search instead of the HNSW index: for measuring recall.
    pub exact: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    #[error("collection `{collection}` holds {existing}-dimensional vectors, but the embedding model makes {requested}-dimensional ones")]
    DimensionMismatch {
        collection: String,
        existing: usize,
        requested: usize,
    },
    #[error(
        "the embedded vector store at {path} is open in another process, which alone may open it"
    )]
    Locked { path: String },
    #[error("invalid request to the vector store: {0}")]
    Invalid(String),
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Locked { .. })
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownCollection(_) => "unknown_collection",
            Self::DimensionMismatch { .. } => "dimension_mismatch",
            Self::Locked { .. } => "vector_store_locked",
            Self::Invalid(_) => "invalid_input",
            Self::Unavailable(_) => "vector_store_unavailable",
        }
    }

    /// What a tenant may read: the failure without the store's paths or its driver's text (those
    /// go to the log).
    pub fn public(&self) -> String {
        match self {
            Self::Locked { .. } => "the embedded vector store is held by another process".into(),
            Self::Unavailable(_) => "the vector store is unavailable".into(),
            other => other.to_string(),
        }
    }
}

/// A future a vector store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One vector store implementation: embedded qdrant-edge ([`embedded`]) or a Qdrant server
/// ([`remote`]). [`VectorStore`] checks names and adds the tenant rules around it; both pass the
/// same shared suite (tests/retrieval.rs).
pub trait VectorBackend: Send + Sync {
    /// What it is, for logs.
    fn describe(&self) -> String;

    /// Creates the collection for `dimension`-sized cosine vectors if absent; a collection of
    /// another dimension is an error.
    fn ensure_collection<'a>(&'a self, name: &'a str, dimension: usize) -> StoreFuture<'a, ()>;

    fn replace_document<'a>(
        &'a self,
        collection: &'a str,
        tenant: &'a str,
        document_id: &'a str,
        chunks: Vec<ChunkPoint>,
    ) -> StoreFuture<'a, ()>;

    fn delete_documents<'a>(
        &'a self,
        collection: &'a str,
        tenant: &'a str,
        document_ids: &'a [String],
    ) -> StoreFuture<'a, ()>;

    fn search<'a>(
        &'a self,
        collection: &'a str,
        query: &'a SearchQuery<'a>,
    ) -> StoreFuture<'a, Vec<Hit>>;

    fn count<'a>(&'a self, collection: &'a str, tenant: &'a str) -> StoreFuture<'a, u64>;

    /// Removes every chunk of the tenant in the collection (tenant erasure).
    fn erase_tenant<'a>(&'a self, collection: &'a str, tenant: &'a str) -> StoreFuture<'a, ()>;

    /// Makes the collection's writes durable; a store whose writes already are keeps this default.
    fn flush<'a>(&'a self, _collection: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Implements [`VectorBackend`] for a store whose inherent async methods carry the trait's
/// names and signatures, boxing their futures; `describe` is given as a closure-like expression.
macro_rules! vector_backend {
    ($store:ty, |$s:ident| $describe:expr) => {
        impl $crate::retrieval::VectorBackend for $store {
            fn describe(&self) -> String {
                #[allow(unused_variables)]
                let $s = self;
                $describe
            }

            fn ensure_collection<'a>(
                &'a self,
                name: &'a str,
                dimension: usize,
            ) -> $crate::retrieval::StoreFuture<'a, ()> {
                Box::pin(Self::ensure_collection(self, name, dimension))
            }

            fn replace_document<'a>(
                &'a self,
                collection: &'a str,
                tenant: &'a str,
                document_id: &'a str,
                chunks: Vec<$crate::retrieval::ChunkPoint>,
            ) -> $crate::retrieval::StoreFuture<'a, ()> {
                Box::pin(Self::replace_document(
                    self,
                    collection,
                    tenant,
                    document_id,
                    chunks,
                ))
            }

            fn delete_documents<'a>(
                &'a self,
                collection: &'a str,
                tenant: &'a str,
                document_ids: &'a [String],
            ) -> $crate::retrieval::StoreFuture<'a, ()> {
                Box::pin(Self::delete_documents(
                    self,
                    collection,
                    tenant,
                    document_ids,
                ))
            }

            fn search<'a>(
                &'a self,
                collection: &'a str,
                query: &'a $crate::retrieval::SearchQuery<'a>,
            ) -> $crate::retrieval::StoreFuture<'a, Vec<$crate::retrieval::Hit>> {
                Box::pin(Self::search(self, collection, query))
            }

            fn count<'a>(
                &'a self,
                collection: &'a str,
                tenant: &'a str,
            ) -> $crate::retrieval::StoreFuture<'a, u64> {
                Box::pin(Self::count(self, collection, tenant))
            }

            fn flush<'a>(&'a self, collection: &'a str) -> $crate::retrieval::StoreFuture<'a, ()> {
                Box::pin(Self::flush(self, collection))
            }

            fn erase_tenant<'a>(
                &'a self,
                collection: &'a str,
                tenant: &'a str,
            ) -> $crate::retrieval::StoreFuture<'a, ()> {
                Box::pin(Self::erase_tenant(self, collection, tenant))
            }
        }
    };
}
use vector_backend;

/// The configured store; cheap to clone.
#[derive(Clone)]
pub struct VectorStore {
    backend: Arc<dyn VectorBackend>,
}

impl std::fmt::Debug for VectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VectorStore({})", self.backend.describe())
    }
}

impl VectorStore {
    pub fn new(backend: Arc<dyn VectorBackend>) -> Self {
        Self { backend }
    }

    /// Creates the collection for `dimension`-sized cosine vectors if it does not exist; a
    /// collection of another dimension is an error.
    pub async fn ensure_collection(&self, name: &str, dimension: usize) -> Result<(), StoreError> {
        check_collection_name(name)?;
        self.backend.ensure_collection(name, dimension).await
    }

    /// Stores a document's chunks for `tenant`, replacing whatever it held before under that id.
    pub async fn replace_document(
        &self,
        collection: &str,
        tenant: &str,
        document_id: &str,
        chunks: Vec<ChunkPoint>,
    ) -> Result<(), StoreError> {
        check_collection_name(collection)?;
        (self.backend)
            .replace_document(collection, tenant, document_id, chunks)
            .await
    }

    /// Removes the tenant's documents with these ids (ids it does not have are ignored).
    pub async fn delete_documents(
        &self,
        collection: &str,
        tenant: &str,
        document_ids: &[String],
    ) -> Result<(), StoreError> {
        check_collection_name(collection)?;
        (self.backend)
            .delete_documents(collection, tenant, document_ids)
            .await
    }

    /// Removes every chunk the tenant has in `collection` (a collection that does not exist has
    /// none).
    pub async fn erase_tenant(&self, collection: &str, tenant: &str) -> Result<(), StoreError> {
        check_collection_name(collection)?;
        self.backend.erase_tenant(collection, tenant).await
    }

    /// The tenant's best chunks for the query, best first. A collection the tenant has no chunks
    /// in is unknown to it, whatever other tenants hold.
    pub async fn search(
        &self,
        collection: &str,
        query: &SearchQuery<'_>,
    ) -> Result<Vec<Hit>, StoreError> {
        check_collection_name(collection)?;
        check_filter(query.filter)?;
        let hits = self.backend.search(collection, query).await?;
        // Only an empty answer costs the extra count.
        if hits.is_empty() && self.count(collection, query.tenant).await? == 0 {
            return Err(StoreError::UnknownCollection(collection.to_string()));
        }
        Ok(hits)
    }

    /// Makes the collection's writes durable on disk (the Qdrant server's writes already are).
    pub async fn flush(&self, collection: &str) -> Result<(), StoreError> {
        check_collection_name(collection)?;
        self.backend.flush(collection).await
    }

    /// How many chunks the tenant has in the collection (0 when it does not exist).
    pub async fn count(&self, collection: &str, tenant: &str) -> Result<u64, StoreError> {
        check_collection_name(collection)?;
        self.backend.count(collection, tenant).await
    }
}

/// Collection names: 1 to 64 of `[a-z0-9_-]`, so they are safe as directory and Qdrant names.
pub fn check_collection_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "collection: 1 to 64 characters of [a-z0-9_-], got {name:?}"
        )))
    }
}

/// Filter keys name metadata fields: `[A-Za-z0-9_-]`, so a key cannot reach outside `metadata`.
pub fn check_filter(filter: &MetadataFilter) -> Result<(), StoreError> {
    for key in filter.keys() {
        let ok = !key.is_empty()
            && key.len() <= 64
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(StoreError::Invalid(format!(
                "filter key {key:?}: 1 to 64 characters of [A-Za-z0-9_-]"
            )));
        }
    }
    Ok(())
}

/// A chunk's point id: the same for the same tenant, document and chunk, so re-ingesting
/// overwrites in place.
pub fn point_id(tenant: &str, document_id: &str, chunk_index: u32) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [tenant.as_bytes(), document_id.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(chunk_index.to_le_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The payload stored with a chunk.
pub fn payload(tenant: &str, chunk: &ChunkPoint) -> serde_json::Value {
    serde_json::json!({
        TENANT_FIELD: tenant,
        DOCUMENT_FIELD: chunk.document_id,
        CHUNK_FIELD: chunk.chunk_index,
        TEXT_FIELD: chunk.text,
        METADATA_FIELD: chunk.metadata,
    })
}

/// Reads a hit back from a stored payload.
pub fn hit_from_payload(score: f32, payload: &serde_json::Map<String, serde_json::Value>) -> Hit {
    let text = |k: &str| {
        payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Hit {
        document_id: text(DOCUMENT_FIELD),
        chunk_index: payload
            .get(CHUNK_FIELD)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        score,
        text: text(TEXT_FIELD),
        metadata: payload
            .get(METADATA_FIELD)
            .and_then(|v| v.as_object())
            .cloned()
            .unwrap_or_default(),
    }
}

/// One condition of a store filter; both stores translate the same list, so they filter alike.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Is(String, FilterValue),
    /// An integer field at least this value.
    AtLeast(String, i64),
}

/// A tenant's search conditions: the tenant first, then the caller's metadata conditions.
pub fn tenant_filter(tenant: &str, filter: &MetadataFilter) -> Vec<Condition> {
    let mut all = Vec::with_capacity(filter.len() + 1);
    all.push(Condition::Is(
        TENANT_FIELD.into(),
        FilterValue::Text(tenant.into()),
    ));
    all.extend(
        filter
            .iter()
            .map(|(k, v)| Condition::Is(format!("{METADATA_FIELD}.{k}"), v.clone())),
    );
    all
}

/// One tenant's chunks of some documents, optionally from a chunk index on.
/// Every chunk of the tenant.
pub fn all_of_tenant(tenant: &str) -> Vec<Condition> {
    vec![Condition::Is(
        TENANT_FIELD.into(),
        FilterValue::Text(tenant.into()),
    )]
}

pub fn documents_filter(
    tenant: &str,
    document_ids: &[String],
    from_chunk: Option<u32>,
) -> Vec<Condition> {
    let mut all = vec![
        Condition::Is(TENANT_FIELD.into(), FilterValue::Text(tenant.into())),
        Condition::Is(
            DOCUMENT_FIELD.into(),
            FilterValue::AnyText(document_ids.to_vec()),
        ),
    ];
    if let Some(from) = from_chunk {
        all.push(Condition::AtLeast(CHUNK_FIELD.into(), i64::from(from)));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable_and_distinct() {
        assert_eq!(point_id("a", "d", 0), point_id("a", "d", 0));
        assert_ne!(point_id("a", "d", 0), point_id("a", "d", 1));
        assert_ne!(point_id("a", "d", 0), point_id("b", "d", 0));
        // Length-prefixed parts: ("ab","c") and ("a","bc") differ.
        assert_ne!(point_id("ab", "c", 0), point_id("a", "bc", 0));
    }

    #[test]
    fn tenant_condition_comes_first_and_keys_stay_in_metadata() {
        let mut f = MetadataFilter::new();
        f.insert("lang".into(), FilterValue::Text("en".into()));
        let q = tenant_filter("acme", &f);
        assert_eq!(
            q[0],
            Condition::Is("tenant".into(), FilterValue::Text("acme".into()))
        );
        assert_eq!(
            q[1],
            Condition::Is("metadata.lang".into(), FilterValue::Text("en".into()))
        );
        let mut bad = MetadataFilter::new();
        bad.insert("x.tenant".into(), FilterValue::Text("other".into()));
        assert!(check_filter(&bad).is_err());
        assert!(check_collection_name("Docs!").is_err());
        assert!(check_collection_name("docs_v2").is_ok());
    }
}
