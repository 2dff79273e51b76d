//! `ragq bench --rag-chunks N`: the retrieval path on the embedded store.
//!
//! Builds a synthetic corpus of N chunks over several tenants, ingests it the way an `ingest` job
//! does (token-aware chunks, batched embeddings from the sim over HTTP, upserts), builds the HNSW
//! index, then measures: ingest chunks per second; search latency with and without the tenant
//! condition; recall@10 of the index against exact search; and `rag.answer`'s own steps (embed,
//! search, model call) as p50/p99. The queue and database are measured by the other modes; this
//! one isolates what retrieval adds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::stats::{quantiles, Quantiles};
use ragq::config::Config;
use ragq::providers::{ChatMessage, ChatRequest, EmbeddingRequest};
use ragq::retrieval::embedded::EmbeddedStore;
use ragq::retrieval::{chunk, ChunkPoint, SearchQuery, VectorStore};
use ragq::routing::{CallScope, Router};

const TENANTS: usize = 10;
const CHUNKS_PER_DOCUMENT: usize = 10;
const VOCABULARY: usize = 5_000;
const QUERIES: usize = 300;
const DOCUMENTS_PER_JOB: usize = 100;

#[derive(Debug, Serialize)]
pub struct RetrievalReport {
    pub chunks: usize,
    pub tenants: usize,
    pub dimensions: usize,
    pub hnsw_ef: usize,
    pub ingest_secs: f64,
    pub ingest_chunks_per_sec: f64,
    pub index_build_secs: f64,
    pub segments: usize,
    pub indexed_vectors: usize,
    pub search_tenant_filter_ms: Quantiles,
    pub search_no_filter_ms: Quantiles,
    pub recall_at_10_tenant_filter: f64,
    pub recall_at_10_no_filter: f64,
    pub answer_embed_ms: Quantiles,
    pub answer_search_ms: Quantiles,
    pub answer_model_ms: Quantiles,
    pub answer_total_ms: Quantiles,
}

pub async fn run(
    chunks: usize,
    hnsw_ef: usize,
    json: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(chunks >= 1_000, "--rag-chunks must be at least 1000");
    let sim = ragq_tools::sim::spawn("127.0.0.1:0", Default::default(), cancel.clone()).await?;
    let file = ragq_tools::config_file::ConfigFile::empty("ragq bench --rag-chunks");
    let cfg = Config::from_toml(&file.sim_catalog(&sim.base_url()).render())?;
    let router = Router::new(Arc::new(cfg.catalog.clone()), cfg.retry.clone())?;
    let dir = std::env::temp_dir().join(format!("ragq-bench-rag-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let embedded = Arc::new(EmbeddedStore::open(&dir, hnsw_ef)?);
    let store = VectorStore::new(Arc::clone(&embedded) as _);
    let r = &cfg.retrieval;
    let embedding_model = r
        .embedding_model
        .clone()
        .context("the sim catalog has an embeddings model")?;
    store.ensure_collection("bench", r.dimensions).await?;

    let started = Instant::now();
    let corpus = Corpus {
        store: &store,
        router: &router,
        cfg: &cfg,
        embedding_model: &embedding_model,
    };
    let (ingested, samples) = corpus.fill(chunks, cancel).await?;
    let ingest_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    embedded.build_indexes_now().await?;
    let index_build_secs = started.elapsed().as_secs_f64();
    let (segments, _, indexed_vectors) = embedded.stats("bench").await?;

    let searched = measure_searches(&embedded, &samples, r.dimensions).await?;
    let mut answer = AnswerTimes::default();
    for (tenant, question) in &samples {
        answer
            .record(&router, &store, &cfg, tenant, question)
            .await?;
    }
    drop(store);
    drop(embedded);
    let _ = std::fs::remove_dir_all(&dir);
    let report = RetrievalReport {
        chunks: ingested,
        tenants: TENANTS,
        dimensions: r.dimensions,
        hnsw_ef,
        ingest_secs,
        ingest_chunks_per_sec: ingested as f64 / ingest_secs,
        index_build_secs,
        segments,
        indexed_vectors,
        recall_at_10_tenant_filter: searched.recall_with_filter(),
        recall_at_10_no_filter: searched.recall_without(),
        search_tenant_filter_ms: quantiles(searched.with_filter),
        search_no_filter_ms: quantiles(searched.without),
        answer_embed_ms: quantiles(answer.embed),
        answer_search_ms: quantiles(answer.search),
        answer_model_ms: quantiles(answer.model),
        answer_total_ms: quantiles(answer.total),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    cancel.cancel();
    Ok(())
}

/// The store and what fills it like `ingest` jobs would.
struct Corpus<'a> {
    store: &'a VectorStore,
    router: &'a Router,
    cfg: &'a Config,
    embedding_model: &'a str,
}

impl Corpus<'_> {
    /// Stores about `chunks` chunks as `ingest` jobs of DOCUMENTS_PER_JOB documents do (chunk,
    /// embed a few batches at a time, store each document, flush once per job); returns how many
    /// chunks, and a sample of (tenant, question) to query with.
    async fn fill(
        &self,
        chunks: usize,
        cancel: &CancellationToken,
    ) -> anyhow::Result<(usize, Vec<(String, String)>)> {
        let mut rng = StdRng::seed_from_u64(7);
        let documents = chunks.div_ceil(CHUNKS_PER_DOCUMENT);
        let mut ingested = 0;
        let mut samples = Vec::new();
        let every = (documents / QUERIES).max(1);
        for first in (0..documents).step_by(DOCUMENTS_PER_JOB) {
            let docs = self.documents(first..(first + DOCUMENTS_PER_JOB).min(documents), &mut rng);
            let mut vectors = self.embed(&docs).await?.into_iter();
            for (d, pieces) in docs {
                let tenant = format!("t{}", d % TENANTS);
                if samples.len() < QUERIES && d % every == 0 {
                    samples.push((tenant.clone(), query_from(&pieces[0], &mut rng)));
                }
                let points: Vec<ChunkPoint> = pieces
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| ChunkPoint {
                        document_id: format!("doc-{d}"),
                        chunk_index: i as u32,
                        text,
                        metadata: Default::default(),
                        vector: vectors.next().unwrap_or_default(),
                    })
                    .collect();
                ingested += points.len();
                (self.store)
                    .replace_document("bench", &tenant, &format!("doc-{d}"), points)
                    .await?;
            }
            self.store.flush("bench").await?;
            anyhow::ensure!(!cancel.is_cancelled(), "cancelled");
        }
        Ok((ingested, samples))
    }

    /// Documents `range`, each as its chunks' texts.
    fn documents(
        &self,
        range: std::ops::Range<usize>,
        rng: &mut StdRng,
    ) -> Vec<(usize, Vec<String>)> {
        let spec = self.cfg.retrieval.chunk;
        range
            .map(|d| {
                let texts: Vec<String> = (0..CHUNKS_PER_DOCUMENT).map(|_| passage(rng)).collect();
                let pieces = texts
                    .iter()
                    .flat_map(|t| {
                        chunk::split(t, spec)
                            .into_iter()
                            .map(|c| c.text.to_string())
                    })
                    .collect();
                (d, pieces)
            })
            .collect()
    }

    /// Every chunk's vector, in order, embedded in batches of `retrieval.embed_batch`, 4 at a time.
    async fn embed(&self, docs: &[(usize, Vec<String>)]) -> anyhow::Result<Vec<Vec<f32>>> {
        let all: Vec<String> = docs.iter().flat_map(|(_, p)| p.iter().cloned()).collect();
        let batch = self.cfg.retrieval.embed_batch;
        let batches: Vec<Vec<String>> = all.chunks(batch).map(<[String]>::to_vec).collect();
        let vectors: Vec<Vec<Vec<f32>>> = futures_util::stream::iter(batches)
            .map(|inputs| async move {
                let request = EmbeddingRequest {
                    inputs,
                    call_id: None,
                    credential: None,
                };
                (self.router)
                    .embed(self.embedding_model, &request, None)
                    .await
                    .map(|c| c.response.vectors)
            })
            .buffered(4)
            .try_collect()
            .await?;
        Ok(vectors.into_iter().flatten().collect())
    }
}

/// Search latencies with and without the tenant filter, and how many of the exact top 10 the
/// approximate search found.
#[derive(Default)]
struct Searched {
    with_filter: Vec<f64>,
    without: Vec<f64>,
    /// (found, exact) with the tenant filter, then without.
    hits: [(usize, usize); 2],
}

impl Searched {
    fn recall_with_filter(&self) -> f64 {
        self.hits[0].0 as f64 / self.hits[0].1.max(1) as f64
    }

    fn recall_without(&self) -> f64 {
        self.hits[1].0 as f64 / self.hits[1].1.max(1) as f64
    }
}

async fn measure_searches(
    embedded: &EmbeddedStore,
    samples: &[(String, String)],
    dimensions: usize,
) -> anyhow::Result<Searched> {
    let mut out = Searched::default();
    for (tenant, question) in samples {
        let vector = ragq_tools::sim::embed(question, dimensions);
        let scoped = ragq::retrieval::tenant_filter(tenant, &Default::default());
        for (slot, conditions) in [scoped, vec![]].into_iter().enumerate() {
            let search = |exact| {
                embedded.search_conditions("bench", &vector, 10, None, conditions.clone(), exact)
            };
            let (t, approx) = timed(search(false)).await?;
            let (_, exact) = timed(search(true)).await?;
            if slot == 0 {
                out.with_filter.push(t);
            } else {
                out.without.push(t);
            }
            out.hits[slot].0 += overlap(&approx, &exact);
            out.hits[slot].1 += exact.len();
        }
    }
    Ok(out)
}

/// The steps of `rag.answer` as its handler takes them, timed one by one.
#[derive(Default)]
struct AnswerTimes {
    embed: Vec<f64>,
    search: Vec<f64>,
    model: Vec<f64>,
    total: Vec<f64>,
}

impl AnswerTimes {
    async fn record(
        &mut self,
        router: &Router,
        store: &VectorStore,
        cfg: &Config,
        tenant: &str,
        question: &str,
    ) -> anyhow::Result<()> {
        let r = &cfg.retrieval;
        let t0 = Instant::now();
        let request = EmbeddingRequest {
            inputs: vec![question.to_string()],
            call_id: None,
            credential: None,
        };
        let vector = router
            .embed(
                r.embedding_model.as_deref().unwrap_or_default(),
                &request,
                None,
            )
            .await?
            .response
            .vectors;
        let t1 = Instant::now();
        let query = SearchQuery {
            tenant,
            vector: vector.first().map_or(&[][..], Vec::as_slice),
            top_k: r.default_top_k,
            score_threshold: None,
            filter: &Default::default(),
            exact: false,
        };
        let hits = store.search("bench", &query).await?;
        let t2 = Instant::now();
        let context: String = hits
            .iter()
            .map(|h| h.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
        let request = ChatRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: format!("Context:\n{context}\n\nQuestion: {question}"),
            }],
            max_tokens: Some(r.answer_max_tokens),
            temperature: None,
            call_id: None,
            counted_input_tokens: None,
            credential: None,
        };
        router
            .chat("cost-optimized", &request, CallScope::default(), None)
            .await
            .primary?;
        let t3 = Instant::now();
        self.embed.push(ms(t1 - t0));
        self.search.push(ms(t2 - t1));
        self.model.push(ms(t3 - t2));
        self.total.push(ms(t3 - t0));
        Ok(())
    }
}

/// 40 to 80 words, Zipf-like over the vocabulary, so some words are common and most are rare.
fn passage(rng: &mut StdRng) -> String {
    let n = rng.gen_range(40..80);
    (0..n)
        .map(|_| {
            let u: f64 = rng.gen_range(0.0..1.0);
            let rank = (VOCABULARY as f64).powf(u) as usize;
            format!("w{rank}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A question made of a few words of a passage (what a user asking about it might type).
fn query_from(text: &str, rng: &mut StdRng) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    (0..8)
        .map(|_| words[rng.gen_range(0..words.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, ragq::retrieval::StoreError>>,
) -> anyhow::Result<(f64, T)> {
    let t = Instant::now();
    let out = f.await?;
    Ok((ms(t.elapsed()), out))
}

fn overlap(a: &[ragq::retrieval::Hit], b: &[ragq::retrieval::Hit]) -> usize {
    let key = |h: &ragq::retrieval::Hit| (h.document_id.clone(), h.chunk_index);
    let exact: std::collections::HashSet<_> = b.iter().map(key).collect();
    a.iter().filter(|h| exact.contains(&key(h))).count()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print(r: &RetrievalReport) {
    let q = |q: &Quantiles| format!("p50 {:.3} ms  p99 {:.3} ms", q.p50, q.p99);
    println!(
        "retrieval on the embedded store (qdrant-edge), {} chunks over {} tenants, {} dimensions",
        r.chunks, r.tenants, r.dimensions
    );
    println!(
        "  ingest                 {:.0} chunks/s ({:.1} s: chunk, embed via sim HTTP, upsert, flush per 100-document job)",
        r.ingest_chunks_per_sec, r.ingest_secs
    );
    println!(
        "  HNSW index build       {:.1} s after ingest ({} segments, {} vectors indexed)",
        r.index_build_secs, r.segments, r.indexed_vectors
    );
    println!("  search, tenant filter  {}", q(&r.search_tenant_filter_ms));
    println!("  search, no filter      {}", q(&r.search_no_filter_ms));
    println!(
        "  recall@10 vs exact     {:.4} (tenant filter), {:.4} (no filter)",
        r.recall_at_10_tenant_filter, r.recall_at_10_no_filter
    );
    println!("  rag.answer embed       {}", q(&r.answer_embed_ms));
    println!("  rag.answer search      {}", q(&r.answer_search_ms));
    println!("  rag.answer model       {}", q(&r.answer_model_ms));
    println!("  rag.answer total       {}", q(&r.answer_total_ms));
}
