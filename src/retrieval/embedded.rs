//! The embedded store: qdrant-edge shards on local disk, one per collection, in one process.
//!
//! qdrant-edge is synchronous, so every operation runs on the blocking pool. Its `flush` panics if
//! another thread holds the WAL or segment lock, so writes, flushes and index builds of a
//! collection take that collection's write lock; searches do not. HNSW indexes are built in the
//! background a little after writes stop, and searches before that are exact scans of the new
//! points. A lock file keeps a second process out: two writers would corrupt the WAL.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qdrant_edge::{
    CountRequest, Distance, EdgeConfig, EdgeShard, EdgeVectorParamsBuilder, Filter, NamedQuery,
    PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum, SearchParams,
    SearchRequest, UpdateOperation, WithPayloadInterface, DEFAULT_VECTOR_NAME,
};
use tokio_util::sync::CancellationToken;

use super::{ChunkPoint, Hit, SearchQuery, StoreError};

/// How long writes must pause before indexes are (re)built; under continuous writes, they are
/// rebuilt at most every [`INDEX_MAX_STALENESS`] (a build holds the collection's writes).
const INDEX_DELAY: Duration = Duration::from_secs(2);
const INDEX_MAX_STALENESS: Duration = Duration::from_secs(60);

struct Collection {
    shard: EdgeShard,
    /// Held by writes, flushes and index builds (see the module note).
    writing: Mutex<()>,
    /// Written since the last index build.
    dirty: AtomicBool,
    /// When it was last written (for building indexes once writes pause).
    last_write: Mutex<std::time::Instant>,
    /// Writes applied so far, and how many of them a flush has made durable: a flush asked for
    /// while another runs waits for it, then flushes only if writes it needs are still not durable,
    /// so concurrent ingest jobs share flushes (like a group commit).
    writes: AtomicU64,
    durable: AtomicU64,
    flushing: tokio::sync::Mutex<()>,
}

/// qdrant-edge collections under one directory, owned by this process.
pub struct EmbeddedStore {
    root: PathBuf,
    /// HNSW beam width at search time: higher finds more of the true nearest, slower.
    hnsw_ef: usize,
    collections: Arc<Mutex<HashMap<String, Arc<Collection>>>>,
    indexer: CancellationToken,
    /// Held open for the store's life: its lock keeps other processes out.
    _lock: File,
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.indexer.cancel();
    }
}

impl EmbeddedStore {
    /// Opens (creating) the store at `root`; fails with [`StoreError::Locked`] if another process
    /// has it open. Starts the background index builder on the current tokio runtime.
    pub fn open(root: &Path, hnsw_ef: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| io_error(root, e))?;
        let lock_path = root.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                path: root.display().to_string(),
            });
        }
        // Who holds it, for the other workers' logs (the lock, not this text, is what counts).
        let _ = lock.set_len(0);
        let _ =
            std::io::Write::write_all(&mut &lock, format!("{}\n", std::process::id()).as_bytes());
        let store = Self {
            root: root.to_path_buf(),
            hnsw_ef,
            collections: Arc::default(),
            indexer: CancellationToken::new(),
            _lock: lock,
        };
        tokio::spawn(build_indexes(
            Arc::downgrade(&store.collections),
            store.indexer.clone(),
        ));
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub async fn ensure_collection(&self, name: &str, dimension: usize) -> Result<(), StoreError> {
        let Some(c) = self.open_collection(name, Some(dimension)).await? else {
            return Err(StoreError::UnknownCollection(name.to_string()));
        };
        let existing = vector_size(&c.shard);
        if existing != dimension {
            return Err(StoreError::DimensionMismatch {
                collection: name.to_string(),
                existing,
                requested: dimension,
            });
        }
        Ok(())
    }

    pub async fn replace_document(
        &self,
        collection: &str,
        tenant: &str,
        document_id: &str,
        chunks: Vec<ChunkPoint>,
    ) -> Result<(), StoreError> {
        let c = self.collection(collection).await?;
        let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        let points = chunks
            .iter()
            .map(|chunk| {
                let id = super::point_id(tenant, &chunk.document_id, chunk.chunk_index);
                PointStruct::new(
                    PointId::Uuid(id),
                    chunk.vector.clone(),
                    super::payload(tenant, chunk),
                )
                .into()
            })
            .collect();
        let stale = edge_filter(super::documents_filter(
            tenant,
            &[document_id.to_string()],
            Some(count),
        ))?;
        write(c, move |shard| {
            // Overwrite chunk by chunk first, then drop the old tail: the document never vanishes.
            shard.update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))?;
            shard.update(UpdateOperation::PointOperation(
                PointOperations::DeletePointsByFilter(stale),
            ))
        })
        .await
    }

    pub async fn delete_documents(
        &self,
        collection: &str,
        tenant: &str,
        document_ids: &[String],
    ) -> Result<(), StoreError> {
        let Some(c) = self.existing(collection).await? else {
            return Ok(());
        };
        self.delete_where(c, super::documents_filter(tenant, document_ids, None))
            .await
    }

    pub async fn erase_tenant(&self, collection: &str, tenant: &str) -> Result<(), StoreError> {
        let Some(c) = self.existing(collection).await? else {
            return Ok(());
        };
        self.delete_where(c, super::all_of_tenant(tenant)).await
    }

    async fn delete_where(
        &self,
        c: std::sync::Arc<Collection>,
        conditions: Vec<super::Condition>,
    ) -> Result<(), StoreError> {
        let filter = edge_filter(conditions)?;
        write(c, move |shard| {
            shard.update(UpdateOperation::PointOperation(
                PointOperations::DeletePointsByFilter(filter),
            ))
        })
        .await
    }

    pub async fn search(
        &self,
        collection: &str,
        query: &SearchQuery<'_>,
    ) -> Result<Vec<Hit>, StoreError> {
        let conditions = super::tenant_filter(query.tenant, query.filter);
        self.search_conditions(
            collection,
            query.vector,
            query.top_k,
            query.score_threshold,
            conditions,
            query.exact,
        )
        .await
    }

    /// A search under raw conditions (none: the whole collection). Jobs search through
    /// [`VectorStore::search`](super::VectorStore::search), which always adds the tenant; this is
    /// for benchmarks that measure what the tenant condition costs.
    pub async fn search_conditions(
        &self,
        collection: &str,
        vector: &[f32],
        top_k: usize,
        score_threshold: Option<f32>,
        conditions: Vec<super::Condition>,
        exact: bool,
    ) -> Result<Vec<Hit>, StoreError> {
        let c = self.collection(collection).await?;
        let size = vector_size(&c.shard);
        if vector.len() != size {
            return Err(StoreError::DimensionMismatch {
                collection: collection.to_string(),
                existing: size,
                requested: vector.len(),
            });
        }
        let filter = match conditions.is_empty() {
            true => None,
            false => Some(edge_filter(conditions)?),
        };
        let request = SearchRequest {
            query: QueryEnum::Nearest(NamedQuery::default_dense(vector.to_vec())),
            filter,
            params: Some(SearchParams {
                exact,
                hnsw_ef: Some(self.hnsw_ef),
                ..SearchParams::default()
            }),
            limit: top_k,
            offset: 0,
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: None,
            score_threshold,
        };
        blocking(move || {
            let points = c.shard.search(request).map_err(unavailable)?;
            Ok(points
                .into_iter()
                .map(|p| {
                    let payload = p.payload.map(|p| p.0).unwrap_or_default();
                    super::hit_from_payload(p.score, &payload)
                })
                .collect())
        })
        .await
    }

    pub async fn count(&self, collection: &str, tenant: &str) -> Result<u64, StoreError> {
        let Some(c) = self.existing(collection).await? else {
            return Ok(0);
        };
        let filter = edge_filter(super::tenant_filter(tenant, &Default::default()))?;
        blocking(move || tenant_count(&c.shard, filter)).await
    }

    /// (segments, points, indexed vectors) of a collection, for benchmarks and operators.
    pub async fn stats(&self, collection: &str) -> Result<(usize, usize, usize), StoreError> {
        let c = self.collection(collection).await?;
        let info = c.shard.info();
        Ok((
            info.segments_count,
            info.points_count,
            info.indexed_vectors_count,
        ))
    }

    /// Makes every write applied so far to the collection durable (WAL and segments on disk); an
    /// ingest job calls it once, before its outcome is committed, so committed chunks survive a
    /// crash of the machine. Concurrent callers share one flush.
    pub async fn flush(&self, collection: &str) -> Result<(), StoreError> {
        let Some(c) = self.existing(collection).await? else {
            return Ok(());
        };
        let needed = c.writes.load(Ordering::Acquire);
        let _turn = c.flushing.lock().await;
        if c.durable.load(Ordering::Acquire) >= needed {
            return Ok(());
        }
        let held = Arc::clone(&c);
        blocking(move || {
            let c = held;
            let _writing = lock(&c.writing);
            // Every write counted here is applied: writes count themselves under `writing`.
            let covered = c.writes.load(Ordering::Acquire);
            c.shard.flush();
            c.durable.fetch_max(covered, Ordering::AcqRel);
            Ok(())
        })
        .await
    }

    /// Builds pending indexes now, waiting for them (benchmarks and tests; workers build them in
    /// the background).
    pub async fn build_indexes_now(&self) -> Result<(), StoreError> {
        let all: Vec<Arc<Collection>> = lock(&self.collections).values().cloned().collect();
        for c in all {
            write(c, |shard| shard.optimize().map(|_| ())).await?;
        }
        Ok(())
    }

    async fn collection(&self, name: &str) -> Result<Arc<Collection>, StoreError> {
        self.existing(name)
            .await?
            .ok_or_else(|| StoreError::UnknownCollection(name.to_string()))
    }

    async fn existing(&self, name: &str) -> Result<Option<Arc<Collection>>, StoreError> {
        self.open_collection(name, None).await
    }

    /// The collection, opened from disk if it is there, else created for `create` dimensions
    /// (or `None` when `create` is `None`).
    async fn open_collection(
        &self,
        name: &str,
        create: Option<usize>,
    ) -> Result<Option<Arc<Collection>>, StoreError> {
        if let Some(c) = lock(&self.collections).get(name) {
            return Ok(Some(Arc::clone(c)));
        }
        let path = self.root.join(name);
        let collections = Arc::clone(&self.collections);
        let name = name.to_string();
        blocking(move || {
            let mut open = lock(&collections);
            if let Some(c) = open.get(&name) {
                return Ok(Some(Arc::clone(c)));
            }
            let shard = match create {
                _ if path.join("edge_config.json").exists() => {
                    EdgeShard::load(&path, None).map_err(unavailable)?
                }
                Some(dimension) => create_shard(&path, dimension)?,
                None => return Ok(None),
            };
            let c = Arc::new(Collection {
                shard,
                writing: Mutex::new(()),
                dirty: AtomicBool::new(false),
                last_write: Mutex::new(std::time::Instant::now()),
                writes: AtomicU64::new(0),
                durable: AtomicU64::new(0),
                flushing: tokio::sync::Mutex::new(()),
            });
            open.insert(name, Arc::clone(&c));
            Ok(Some(c))
        })
        .await
    }
}

fn create_shard(path: &Path, dimension: usize) -> Result<EdgeShard, StoreError> {
    let config = EdgeConfig::builder()
        .vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParamsBuilder::new(dimension, Distance::Cosine).build(),
        )
        .build();
    std::fs::create_dir_all(path).map_err(|e| io_error(path, e))?;
    let shard = EdgeShard::new(path, config).map_err(unavailable)?;
    // Qdrant's multitenancy layout: the tenant field indexed and marked as the tenant key.
    let indexes = [
        serde_json::json!({"field_name": super::TENANT_FIELD, "field_schema": {"type": "keyword", "is_tenant": true}}),
        serde_json::json!({"field_name": super::DOCUMENT_FIELD, "field_schema": "keyword"}),
        serde_json::json!({"field_name": super::CHUNK_FIELD, "field_schema": "integer"}),
    ];
    for index in indexes {
        let op = serde_json::from_value(index).map_err(|e| StoreError::Invalid(e.to_string()))?;
        shard
            .update(UpdateOperation::FieldIndexOperation(
                qdrant_edge::FieldIndexOperations::CreateIndex(op),
            ))
            .map_err(unavailable)?;
    }
    Ok(shard)
}

fn vector_size(shard: &EdgeShard) -> usize {
    shard
        .config()
        .vectors
        .get(DEFAULT_VECTOR_NAME)
        .map_or(0, |v| v.size)
}

fn tenant_count(shard: &EdgeShard, filter: Filter) -> Result<u64, StoreError> {
    let n = shard
        .count(CountRequest {
            filter: Some(filter),
            exact: true,
        })
        .map_err(unavailable)?;
    Ok(n as u64)
}

/// Runs a write under the collection's write lock. It is in the WAL (which survives the process)
/// at once; [`EmbeddedStore::flush`] makes it survive the machine.
async fn write(
    c: Arc<Collection>,
    op: impl FnOnce(&EdgeShard) -> qdrant_edge::OperationResult<()> + Send + 'static,
) -> Result<(), StoreError> {
    blocking(move || {
        let _writing = lock(&c.writing);
        op(&c.shard).map_err(unavailable)?;
        c.writes.fetch_add(1, Ordering::AcqRel);
        c.dirty.store(true, Ordering::Release);
        *lock(&c.last_write) = std::time::Instant::now();
        Ok(())
    })
    .await
}

/// Rebuilds the indexes of collections written to, once writes have paused for [`INDEX_DELAY`].
/// Holds the collections weakly: dropping the store closes them at once, not at the next tick.
async fn build_indexes(
    collections: std::sync::Weak<Mutex<HashMap<String, Arc<Collection>>>>,
    cancel: CancellationToken,
) {
    let mut last_build = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(INDEX_DELAY) => {}
        }
        let Some(collections) = collections.upgrade() else {
            return;
        };
        let now = std::time::Instant::now();
        if now.duration_since(last_build) < INDEX_DELAY {
            continue;
        }
        let stale = now.duration_since(last_build) >= INDEX_MAX_STALENESS;
        let dirty: Vec<Arc<Collection>> = lock(&collections)
            .values()
            .filter(|c| {
                let paused = now.duration_since(*lock(&c.last_write)) >= INDEX_DELAY;
                (paused || stale) && c.dirty.swap(false, Ordering::AcqRel)
            })
            .cloned()
            .collect();
        drop(collections);
        if !dirty.is_empty() {
            last_build = now;
        }
        for c in dirty {
            let built = blocking(move || {
                let _writing = lock(&c.writing);
                c.shard.optimize().map_err(unavailable)
            })
            .await;
            if let Err(e) = built {
                tracing::warn!(error = %e, "building vector indexes failed; searches stay exact");
            }
        }
    }
}

/// The conditions as qdrant-edge's filter, through Qdrant's documented JSON form of it.
fn edge_filter(conditions: Vec<super::Condition>) -> Result<Filter, StoreError> {
    use super::{Condition, FilterValue};
    let must: Vec<serde_json::Value> = conditions
        .into_iter()
        .map(|c| match c {
            Condition::Is(key, value) => {
                let matcher = match value {
                    FilterValue::Text(s) => serde_json::json!({"value": s}),
                    FilterValue::Integer(i) => serde_json::json!({"value": i}),
                    FilterValue::Bool(b) => serde_json::json!({"value": b}),
                    FilterValue::AnyText(v) => serde_json::json!({"any": v}),
                    FilterValue::AnyInteger(v) => serde_json::json!({"any": v}),
                };
                serde_json::json!({"key": key, "match": matcher})
            }
            Condition::AtLeast(key, min) => serde_json::json!({"key": key, "range": {"gte": min}}),
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "must": must }))
        .map_err(|e| StoreError::Invalid(format!("filter: {e}")))
}

/// The process that holds (or last held) the store at `root`, as it wrote in the lock file.
pub fn holder_pid(root: &Path) -> Option<u32> {
    std::fs::read_to_string(root.join(".lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("vector store task failed: {e}")))?
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

super::vector_backend!(EmbeddedStore, |store| format!(
    "embedded qdrant-edge at {}",
    store.root().display()
));
