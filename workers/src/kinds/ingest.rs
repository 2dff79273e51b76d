//! `ingest`: split a tenant's documents into chunks, embed them in batches, and store them in a
//! collection (replacing each document's previous chunks); remove the documents it names.
//!
//! Re-running an attempt is harmless: point ids are fixed by (tenant, document, chunk), so the
//! same chunks overwrite themselves. Every embeddings call is booked like any other call.

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tracing::Instrument;

use ragq::jobs::{Document, IngestInput, JobKind, JobMessage};
use ragq::providers::{EmbeddingRequest, Usage};
use ragq::retrieval::chunk::{self, ChunkSpec};
use ragq::retrieval::{ChunkPoint, RetrievalConfig};
use ragq::spend::budget::Estimate;
use ragq::spend::Price;

use crate::error::JobError;
use crate::handler::{JobContext, JobHandler, WorkerEnv};

/// The `ingest` kind.
pub struct Ingest;

impl JobHandler for Ingest {
    type Input = IngestInput;
    const KIND: JobKind = JobKind::Ingest;
    const USES_VECTOR_STORE: bool = true;

    fn input(job: &JobMessage) -> Result<Self::Input, String> {
        job.ingest_input()
    }

    fn estimate(env: WorkerEnv<'_>, _job: &JobMessage, input: &Self::Input) -> Estimate {
        let r = &env.cfg.retrieval;
        estimate(input, r.chunk, embedding_price(env), r.embed_batch)
    }

    async fn run(ctx: &JobContext<'_>, input: Self::Input) -> Result<Value, JobError> {
        index(ctx, input).await
    }
}

/// The price of the configured embeddings model (zero when none is configured: such a job fails
/// before any call).
pub fn embedding_price(env: WorkerEnv<'_>) -> Price {
    (env.cfg.retrieval.embedding_model.as_deref())
        .and_then(|m| env.router.model(m))
        .map(|m| m.price)
        .unwrap_or_default()
}

/// Embeddings calls of one job in flight at once.
const EMBED_CONCURRENCY: usize = 4;
/// Longest document id.
const MAX_DOCUMENT_ID: usize = 256;

/// Upper bounds of the job's embedding cost and tokens: a chunk never holds more tokens than
/// bytes, and overlap repeats at most `overlap / (tokens - overlap)` of them.
pub fn estimate(input: &IngestInput, spec: ChunkSpec, price: Price, batch: usize) -> Estimate {
    let bytes: u64 = input.documents.iter().map(|d| d.text.len() as u64).sum();
    let step = spec.tokens.saturating_sub(spec.overlap).max(1) as u64;
    let tokens = bytes * spec.tokens as u64 / step + input.documents.len() as u64;
    let cost = price.cost_micros(Usage {
        input_tokens: tokens,
        output_tokens: 0,
    });
    let chunks = tokens / step + input.documents.len() as u64;
    Estimate {
        max_micros: cost,
        min_micros: cost,
        tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
        calls: i64::try_from(chunks.div_ceil(batch.max(1) as u64)).unwrap_or(i64::MAX),
    }
}

/// The job's content rules, each broken one named.
pub fn check(input: &IngestInput, cfg: &RetrievalConfig) -> Result<(), JobError> {
    if input.documents.is_empty() && input.delete.is_empty() {
        return Err(JobError::invalid(
            "input: give documents to index or ids to delete",
        ));
    }
    if input.documents.len() > cfg.max_documents_per_job {
        return Err(JobError::invalid(format!(
            "input.documents: at most {} per job, got {}",
            cfg.max_documents_per_job,
            input.documents.len()
        )));
    }
    let ids = input.documents.iter().map(|d| &d.id).chain(&input.delete);
    for id in ids {
        if id.is_empty() || id.len() > MAX_DOCUMENT_ID || id.chars().any(char::is_control) {
            return Err(JobError::invalid(format!(
                "document id {:?}: 1 to {MAX_DOCUMENT_ID} bytes, no control characters",
                id.chars().take(40).collect::<String>()
            )));
        }
    }
    for (i, d) in input.documents.iter().enumerate() {
        if d.text.trim().is_empty() {
            return Err(JobError::invalid(format!(
                "input.documents[{i}] ({}): text is empty",
                d.id
            )));
        }
        if d.text.len() > cfg.max_document_bytes {
            return Err(JobError::invalid(format!(
                "input.documents[{i}] ({}): {} bytes, over the {}-byte limit",
                d.id,
                d.text.len(),
                cfg.max_document_bytes
            )));
        }
    }
    Ok(())
}

async fn index(ctx: &JobContext<'_>, input: IngestInput) -> Result<Value, JobError> {
    let cfg = &ctx.env.cfg.retrieval;
    super::check_collection(&input.collection, ctx.env.cfg)?;
    check(&input, cfg)?;
    let store = ctx.vectors;
    let texts: Vec<(usize, chunk::TextChunk<'_>)> = input
        .documents
        .iter()
        .enumerate()
        .flat_map(|(d, doc)| {
            chunk::split(&doc.text, cfg.chunk)
                .into_iter()
                .map(move |c| (d, c))
        })
        .collect();
    let owned = texts.iter().map(|(_, c)| c.text.to_string()).collect();
    let vectors = embed_texts(ctx, owned, 0)
        .instrument(tracing::info_span!("embed", texts = texts.len()))
        .await?;
    if !input.documents.is_empty() {
        store
            .ensure_collection(&input.collection, cfg.dimensions)
            .await?;
    }
    let mut per_document: Vec<Vec<ChunkPoint>> = vec![Vec::new(); input.documents.len()];
    for ((d, c), vector) in texts.iter().zip(vectors.vectors) {
        per_document[*d].push(chunk_point(&input.documents[*d], c, vector));
    }
    let mut indexed = Vec::with_capacity(input.documents.len());
    for (doc, chunks) in input.documents.iter().zip(per_document) {
        indexed.push(json!({"id": doc.id, "chunks": chunks.len()}));
        store
            .replace_document(&input.collection, &ctx.job.tenant, &doc.id, chunks)
            .await?;
    }
    if !input.delete.is_empty() {
        store
            .delete_documents(&input.collection, &ctx.job.tenant, &input.delete)
            .await?;
    }
    // Durable before the outcome commits: a succeeded ingest's chunks survive a crash.
    store.flush(&input.collection).await?;
    Ok(json!({
        "collection": input.collection,
        "documents": indexed,
        "chunks": texts.len(),
        "deleted": input.delete,
        "embedding_model": cfg.embedding_model,
        "embedding_calls": vectors.calls,
        "usage": {"input_tokens": vectors.input_tokens, "output_tokens": 0},
        "cost_micros": vectors.cost_micros,
    }))
}

fn chunk_point(doc: &Document, c: &chunk::TextChunk<'_>, vector: Vec<f32>) -> ChunkPoint {
    ChunkPoint {
        document_id: doc.id.clone(),
        chunk_index: u32::try_from(c.index).unwrap_or(u32::MAX),
        text: c.text.to_string(),
        metadata: doc.metadata.clone(),
        vector,
    }
}

/// Vectors for every text, in order, and what making them cost.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub calls: usize,
    pub input_tokens: u64,
    pub cost_micros: i64,
}

/// Embeds texts in batches of the configured size, a few calls at a time, booking each call
/// under its batch's index. Also used by `rag.answer` for its question.
pub async fn embed_texts(
    ctx: &JobContext<'_>,
    texts: Vec<String>,
    first_call_index: usize,
) -> Result<Embedded, JobError> {
    let Some(model) = ctx.env.cfg.retrieval.embedding_model.as_deref() else {
        return Err(JobError::permanent(
            "retrieval_not_configured",
            "the model catalog has no embeddings model: add one with capabilities = [\"embeddings\"] and its dimensions",
        ));
    };
    let batch = ctx.env.cfg.retrieval.embed_batch;
    let batches: Vec<Vec<String>> = texts.chunks(batch).map(<[String]>::to_vec).collect();
    let calls = batches.len();
    let results: Vec<(Vec<Vec<f32>>, u64, i64)> = stream::iter(batches.into_iter().enumerate())
        .map(|(b, inputs)| async move {
            let index = first_call_index + b;
            let request = EmbeddingRequest {
                inputs,
                call_id: Some(ctx.call_id(index)),
                credential: None,
            };
            let call = ctx.embed(index, model, &request).await?;
            let cost = call.cost_micros();
            Ok::<_, JobError>((
                call.response.vectors,
                call.response.usage.input_tokens,
                cost,
            ))
        })
        .buffered(EMBED_CONCURRENCY)
        .try_collect()
        .await?;
    let mut out = Embedded {
        vectors: Vec::with_capacity(texts.len()),
        calls,
        input_tokens: 0,
        cost_micros: 0,
    };
    for (vectors, tokens, cost) in results {
        out.vectors.extend(vectors);
        out.input_tokens += tokens;
        out.cost_micros += cost;
    }
    if let Some(v) = out
        .vectors
        .iter()
        .find(|v| v.len() != ctx.env.cfg.retrieval.dimensions)
    {
        return Err(JobError::permanent(
            "dimension_mismatch",
            format!(
                "embedding model `{}` returned {}-dimensional vectors; the catalog says {}",
                model,
                v.len(),
                ctx.env.cfg.retrieval.dimensions
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_bounds_tokens_by_bytes_and_overlap() {
        let input = IngestInput {
            collection: "docs".into(),
            documents: vec![Document {
                id: "d".into(),
                text: "x".repeat(3_000),
                metadata: Default::default(),
            }],
            delete: vec![],
        };
        let spec = ChunkSpec {
            tokens: 256,
            overlap: 64,
        };
        let price = Price {
            input_micros_per_mtok: 1_000_000,
            output_micros_per_mtok: 0,
        };
        let e = estimate(&input, spec, price, 64);
        // 3,000 bytes repeated by 256/192 for overlap, plus one per document.
        assert_eq!(e.tokens, 3_000 * 256 / 192 + 1);
        assert_eq!(e.max_micros, e.tokens);
        let real = chunk::split(&input.documents[0].text, spec);
        let real_tokens: u64 = real.iter().map(|c| ragq::tokens::count(c.text)).sum();
        assert!(real_tokens as i64 <= e.tokens);
    }
}
