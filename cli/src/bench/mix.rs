//! The job mix of a load run (`--mix batch=90,rag=8,ingest=2`): which kind each job is, its body,
//! and the corpus `rag.answer` jobs search, stored before the workers start.

use serde_json::{json, Value};

use ragq::retrieval::{chunk, ChunkPoint, RetrievalConfig, StoreConfig, VectorStore};

/// The collection the bench's retrieval jobs use.
pub const COLLECTION: &str = "bench";
/// Documents stored per tenant before the run, for `rag.answer` to search.
const CORPUS_DOCUMENTS: usize = 8;

/// Relative weights of the job kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub batch: u32,
    pub rag: u32,
    pub ingest: u32,
}

impl Mix {
    /// Parses `kind=weight` pairs separated by commas; kinds are `batch`, `rag` and `ingest`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut mix = Mix {
            batch: 0,
            rag: 0,
            ingest: 0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: `{part}` is not kind=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("--mix: weight `{weight}` of {kind} is not a whole number"))?;
            match kind.trim() {
                "batch" => mix.batch = weight,
                "rag" => mix.rag = weight,
                "ingest" => mix.ingest = weight,
                other => {
                    return Err(format!(
                        "--mix: unknown kind `{other}` (use batch, rag, ingest)"
                    ))
                }
            }
        }
        if mix.total() == 0 {
            return Err("--mix: the weights add up to 0".into());
        }
        Ok(mix)
    }

    fn total(&self) -> u32 {
        self.batch + self.rag + self.ingest
    }

    /// Whether any job needs the vector store.
    pub fn uses_retrieval(&self) -> bool {
        self.rag + self.ingest > 0
    }

    /// The kind of job `i`: the kinds interleave in proportion to their weights.
    pub fn kind_of(&self, i: usize) -> &'static str {
        let slot = (i as u64 % u64::from(self.total())) as u32;
        if slot < self.batch {
            "batch.complete"
        } else if slot < self.batch + self.rag {
            "rag.answer"
        } else {
            "ingest"
        }
    }
}

/// The saved prompt `--templated` batches name (shared by every tenant); it renders the text the
/// plain batches carry.
pub const TEMPLATE: &str = "ticket-summary";

/// The saved prompt's version 1.
pub fn template_spec() -> ragq::prompts::store::PromptSpec {
    ragq::prompts::store::PromptSpec {
        system: None,
        user: "Summarise support ticket {{ ticket.id }}: {{ ticket.text }}".into(),
        variables: json!({"type": "object", "required": ["ticket"], "properties": {"ticket": {
            "type": "object", "required": ["id", "text"],
            "properties": {"id": {"type": "string"}, "text": {"type": "string", "maxLength": 2000}}}}}),
        defaults: json!({}),
    }
}

const TICKET: &str = "the customer cannot export last month's invoices as CSV from the billing page and asks for a workaround";

/// The input of job `i` of `kind` with `prompts` prompts per batch; `templated` batches name the
/// saved prompt [`TEMPLATE`] with variables instead of carrying the text.
pub fn input(kind: &str, i: usize, prompts: usize, templated: bool) -> Value {
    match kind {
        "rag.answer" => json!({
            "collection": COLLECTION,
            "question": format!("How do I export invoices as CSV for account {i}?"),
            "top_k": 4, "max_tokens": 32,
        }),
        "ingest" => json!({
            "collection": COLLECTION,
            "documents": [{"id": format!("new-{i}"), "text": document(i)}],
        }),
        _ => {
            let prompts: Vec<_> = (0..prompts)
                .map(|p| match templated {
                    true => json!({"template": {"name": TEMPLATE, "variables":
                        {"ticket": {"id": format!("{i}.{p}"), "text": TICKET}}}}),
                    false => {
                        json!({"prompt": format!("Summarise support ticket {i}.{p}: {TICKET}")})
                    }
                })
                .collect();
            json!({"prompts": prompts, "max_tokens": 32})
        }
    }
}

/// A help-centre article of a few hundred words (several chunks).
fn document(i: usize) -> String {
    let topics = [
        "Invoices can be exported as CSV from the billing page.",
        "Refunds are paid within 14 days of the request.",
        "Passwords are reset from the login page with an emailed link.",
        "Plans can be upgraded at any time and are billed pro rata.",
        "Outages are announced on the status page and by email.",
    ];
    (0..60)
        .map(|s| format!("{} (article {i}, note {s})", topics[(i + s) % topics.len()]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stores `CORPUS_DOCUMENTS` articles for each tenant in the bench collection of a fresh store,
/// with vectors made as the sim provider makes them (so searches by the workers find them), then
/// flushes. Returns the chunks stored. The store is closed on return, before the workers start,
/// releasing its lock.
pub async fn store_corpus(cfg: &RetrievalConfig, tenants: &[String]) -> anyhow::Result<usize> {
    if let StoreConfig::Embedded { path, .. } = &cfg.store {
        let _ = std::fs::remove_dir_all(path);
    }
    let store = VectorStore::open(&cfg.store)?;
    let (spec, dimension) = (cfg.chunk, cfg.dimensions);
    store.ensure_collection(COLLECTION, dimension).await?;
    let mut stored = 0;
    for (t, tenant) in tenants.iter().enumerate() {
        for d in 0..CORPUS_DOCUMENTS {
            let text = document(t * CORPUS_DOCUMENTS + d);
            let chunks: Vec<ChunkPoint> = chunk::split(&text, spec)
                .into_iter()
                .map(|c| ChunkPoint {
                    document_id: format!("article-{d}"),
                    chunk_index: u32::try_from(c.index).unwrap_or(u32::MAX),
                    text: c.text.to_string(),
                    metadata: serde_json::Map::new(),
                    vector: ragq_tools::sim::embed(c.text, dimension),
                })
                .collect();
            stored += chunks.len();
            store
                .replace_document(COLLECTION, tenant, &format!("article-{d}"), chunks)
                .await?;
        }
    }
    store.flush(COLLECTION).await?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_interleave_by_weight() {
        let mix = Mix::parse("batch=2, rag=1,ingest=1").unwrap();
        let kinds: Vec<&str> = (0..8).map(|i| mix.kind_of(i)).collect();
        assert_eq!(
            kinds,
            [
                "batch.complete",
                "batch.complete",
                "rag.answer",
                "ingest",
                "batch.complete",
                "batch.complete",
                "rag.answer",
                "ingest"
            ]
        );
        assert!(mix.uses_retrieval());
        assert!(!Mix::parse("batch=1").unwrap().uses_retrieval());
    }

    #[test]
    fn bad_mixes_are_refused_by_name() {
        assert!(Mix::parse("batch=0").unwrap_err().contains("add up to 0"));
        assert!(Mix::parse("chat=1")
            .unwrap_err()
            .contains("unknown kind `chat`"));
        assert!(Mix::parse("rag=x")
            .unwrap_err()
            .contains("weight `x` of rag"));
        assert!(Mix::parse("rag").unwrap_err().contains("not kind=weight"));
    }
}
