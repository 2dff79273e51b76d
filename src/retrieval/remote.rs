//! The remote store: a Qdrant server or cluster over gRPC, through qdrant-client.
//!
//! Collections are created on first use with the tenant field indexed as the tenant key (Qdrant's
//! multitenancy layout). Writes wait for the server to apply them, so a committed job's chunks are
//! searchable. Transport and server errors are retryable; the job is redelivered later.

use std::collections::HashMap;

use qdrant_client::qdrant::{
    vectors_config, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter,
    IntegerIndexParamsBuilder, KeywordIndexParamsBuilder, PointStruct, Range, SearchParamsBuilder,
    SearchPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant};

use super::{ChunkPoint, FilterValue, Hit, SearchQuery, StoreError};

/// A Qdrant server; cheap to clone (shares its gRPC channel).
#[derive(Clone)]
pub struct QdrantStore {
    client: std::sync::Arc<Qdrant>,
    hnsw_ef: u64,
}

impl QdrantStore {
    /// Connects lazily: the first operation opens the channel. The API key is sent as a header
    /// and never logged.
    pub fn connect(url: &str, api_key: Option<&str>, hnsw_ef: usize) -> Result<Self, StoreError> {
        let mut builder = Qdrant::from_url(url);
        if let Some(key) = api_key {
            builder = builder.api_key(key.to_string());
        }
        let client = builder.build().map_err(unavailable)?;
        Ok(Self {
            client: std::sync::Arc::new(client),
            hnsw_ef: hnsw_ef as u64,
        })
    }

    pub async fn ensure_collection(&self, name: &str, dimension: usize) -> Result<(), StoreError> {
        if let Some(existing) = self.dimension(name).await? {
            return match existing == dimension {
                true => Ok(()),
                false => Err(StoreError::DimensionMismatch {
                    collection: name.to_string(),
                    existing,
                    requested: dimension,
                }),
            };
        }
        let created = self
            .client
            .create_collection(
                CreateCollectionBuilder::new(name)
                    .vectors_config(VectorParamsBuilder::new(dimension as u64, Distance::Cosine)),
            )
            .await;
        // Another worker may have created it first; what matters is its dimension.
        if let Err(e) = created {
            return match self.dimension(name).await? {
                Some(d) if d == dimension => Ok(()),
                Some(d) => Err(StoreError::DimensionMismatch {
                    collection: name.to_string(),
                    existing: d,
                    requested: dimension,
                }),
                None => Err(unavailable(e)),
            };
        }
        let tenant =
            CreateFieldIndexCollectionBuilder::new(name, super::TENANT_FIELD, FieldType::Keyword)
                .field_index_params(KeywordIndexParamsBuilder::default().is_tenant(true))
                .wait(true);
        self.client
            .create_field_index(tenant)
            .await
            .map_err(unavailable)?;
        let document =
            CreateFieldIndexCollectionBuilder::new(name, super::DOCUMENT_FIELD, FieldType::Keyword)
                .wait(true);
        self.client
            .create_field_index(document)
            .await
            .map_err(unavailable)?;
        let chunk =
            CreateFieldIndexCollectionBuilder::new(name, super::CHUNK_FIELD, FieldType::Integer)
                .field_index_params(IntegerIndexParamsBuilder::new(true, true))
                .wait(true);
        self.client
            .create_field_index(chunk)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The collection's vector size, or `None` if it does not exist.
    async fn dimension(&self, name: &str) -> Result<Option<usize>, StoreError> {
        if !self
            .client
            .collection_exists(name)
            .await
            .map_err(unavailable)?
        {
            return Ok(None);
        }
        let info = self
            .client
            .collection_info(name)
            .await
            .map_err(unavailable)?;
        let size = info
            .result
            .and_then(|r| r.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
            .and_then(|c| match c {
                vectors_config::Config::Params(p) => Some(p.size as usize),
                vectors_config::Config::ParamsMap(_) => None,
            });
        Ok(Some(size.unwrap_or(0)))
    }

    pub async fn replace_document(
        &self,
        collection: &str,
        tenant: &str,
        document_id: &str,
        chunks: Vec<ChunkPoint>,
    ) -> Result<(), StoreError> {
        let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        let points: Vec<PointStruct> = chunks
            .iter()
            .map(|chunk| {
                let id = super::point_id(tenant, &chunk.document_id, chunk.chunk_index);
                let payload = Payload::try_from(super::payload(tenant, chunk)).unwrap_or_default();
                PointStruct::new(id.to_string(), chunk.vector.clone(), payload)
            })
            .collect();
        // Overwrite chunk by chunk first, then drop the old tail: the document never vanishes.
        if !points.is_empty() {
            self.client
                .upsert_points(UpsertPointsBuilder::new(collection, points).wait(true))
                .await
                .map_err(|e| self.missing_or_unavailable(collection, e))?;
        }
        let stale = grpc_filter(super::documents_filter(
            tenant,
            &[document_id.to_string()],
            Some(count),
        ));
        self.client
            .delete_points(
                DeletePointsBuilder::new(collection)
                    .points(stale)
                    .wait(true),
            )
            .await
            .map_err(|e| self.missing_or_unavailable(collection, e))?;
        Ok(())
    }

    pub async fn delete_documents(
        &self,
        collection: &str,
        tenant: &str,
        document_ids: &[String],
    ) -> Result<(), StoreError> {
        if self.dimension(collection).await?.is_none() {
            return Ok(());
        }
        self.delete_where(
            collection,
            super::documents_filter(tenant, document_ids, None),
        )
        .await
    }

    pub async fn erase_tenant(&self, collection: &str, tenant: &str) -> Result<(), StoreError> {
        if self.dimension(collection).await?.is_none() {
            return Ok(());
        }
        self.delete_where(collection, super::all_of_tenant(tenant))
            .await
    }

    async fn delete_where(
        &self,
        collection: &str,
        conditions: Vec<super::Condition>,
    ) -> Result<(), StoreError> {
        let filter = grpc_filter(conditions);
        self.client
            .delete_points(
                DeletePointsBuilder::new(collection)
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn search(
        &self,
        collection: &str,
        query: &SearchQuery<'_>,
    ) -> Result<Vec<Hit>, StoreError> {
        let mut request =
            SearchPointsBuilder::new(collection, query.vector.to_vec(), query.top_k as u64)
                .filter(grpc_filter(super::tenant_filter(
                    query.tenant,
                    query.filter,
                )))
                .with_payload(true)
                .params(
                    SearchParamsBuilder::default()
                        .exact(query.exact)
                        .hnsw_ef(self.hnsw_ef),
                );
        if let Some(t) = query.score_threshold {
            request = request.score_threshold(t);
        }
        let response = self
            .client
            .search_points(request)
            .await
            .map_err(|e| self.missing_or_unavailable(collection, e))?;
        Ok(response
            .result
            .into_iter()
            .map(|p| super::hit_from_payload(p.score, &json_payload(p.payload)))
            .collect())
    }

    pub async fn count(&self, collection: &str, tenant: &str) -> Result<u64, StoreError> {
        let filter = grpc_filter(super::tenant_filter(tenant, &Default::default()));
        let response = self
            .client
            .count(
                CountPointsBuilder::new(collection)
                    .filter(filter)
                    .exact(true),
            )
            .await
            .map_err(|e| self.missing_or_unavailable(collection, e));
        // A collection that does not exist holds nothing of anyone's.
        match response {
            Ok(r) => Ok(r.result.map_or(0, |r| r.count)),
            Err(StoreError::UnknownCollection(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn missing_or_unavailable(
        &self,
        collection: &str,
        e: qdrant_client::QdrantError,
    ) -> StoreError {
        let text = e.to_string();
        if text.contains("doesn't exist") || text.contains("Not found") {
            StoreError::UnknownCollection(collection.to_string())
        } else {
            StoreError::Unavailable(text)
        }
    }
}

fn grpc_filter(conditions: Vec<super::Condition>) -> Filter {
    Filter::must(conditions.into_iter().map(|c| match c {
        super::Condition::Is(key, value) => match value {
            FilterValue::Text(s) => Condition::matches(key, s),
            FilterValue::Integer(i) => Condition::matches(key, i),
            FilterValue::Bool(b) => Condition::matches(key, b),
            FilterValue::AnyText(v) => Condition::matches(key, v),
            FilterValue::AnyInteger(v) => Condition::matches(key, v),
        },
        super::Condition::AtLeast(key, min) => Condition::range(
            key,
            Range {
                gte: Some(min as f64),
                ..Default::default()
            },
        ),
    }))
}

fn json_payload(
    payload: HashMap<String, qdrant_client::qdrant::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let value: serde_json::Value = Payload::from(payload).into();
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

super::vector_backend!(QdrantStore, |store| "Qdrant server".to_string());

impl QdrantStore {
    /// The server's writes are durable once acknowledged: nothing to flush.
    async fn flush(&self, _collection: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
