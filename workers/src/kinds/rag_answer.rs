//! `rag.answer`: embed the question, search the tenant's chunks, assemble a prompt of the best
//! chunks that fit the context budget (counted with the tokenizer), ask a model, and return the
//! answer with its citations, usage and a timing split.
//!
//! The prompt is sized for the smallest context window among the policy's candidates, so any of
//! them can take it. Under a budget downgrade (a per-call cost cap) the context shrinks first:
//! fewer chunks, so the cheaper prompt may still fit the better model.

use std::time::Instant;

use serde_json::{json, Value};
use tracing::Instrument;

use ragq::jobs::{JobKind, JobMessage, RagAnswerInput, RagTemplate};
use ragq::prompts::pin;
use ragq::prompts::render::Limits;
use ragq::prompts::store::PromptVersion;
use ragq::providers::embeddings::EmbeddingRequest;
use ragq::providers::{ChatMessage, ChatRequest, Usage};
use ragq::retrieval::{check_filter, Hit, PromptTemplate, SearchQuery};
use ragq::spend::budget::Estimate;
use ragq::spend::Price;
use ragq::tokens::{self, MESSAGE_OVERHEAD_TOKENS};

use super::ingest::embedding_price;
use crate::booking::AttemptOf;
use crate::error::JobError;
use crate::handler::{ClaimIntents, JobContext, JobHandler, WorkerEnv};

/// The `rag.answer` kind.
pub struct RagAnswer;

impl JobHandler for RagAnswer {
    type Input = RagAnswerInput;
    const KIND: JobKind = JobKind::RagAnswer;
    const USES_VECTOR_STORE: bool = true;

    fn input(job: &JobMessage) -> Result<Self::Input, String> {
        job.rag_input()
    }

    fn estimate(env: WorkerEnv<'_>, job: &JobMessage, input: &Self::Input) -> Estimate {
        let shape = AnswerShape {
            window: env.router.min_context_window(&job.policy).unwrap_or(0),
            max_tokens: input
                .max_tokens
                .unwrap_or(env.cfg.retrieval.answer_max_tokens),
            min_context_tokens: env.cfg.retrieval.chunk.tokens as u64,
        };
        let prices = env.router.candidate_prices(&job.policy);
        let own = estimate(input, shape, &prices, embedding_price(env));
        // A shadow copy of the answer may be made: its worst case is reserved too.
        match env.router.shadow_price(&job.policy) {
            Some(p) => own.plus(&estimate(input, shape, &[p], Price::default())),
            None => own,
        }
    }

    /// The question's embedding, the attempt's first call.
    fn claim_intents(env: WorkerEnv<'_>, of: AttemptOf<'_>, input: &Self::Input) -> ClaimIntents {
        let request = EmbeddingRequest {
            inputs: vec![input.question.clone()],
            call_id: None,
            credential: None,
        };
        let model = env.cfg.retrieval.embedding_model.as_deref();
        match model.and_then(|m| of.embed_intent(env.router, EMBED_CALL, m, &request)) {
            Some(intent) => ClaimIntents {
                intents: vec![intent],
                calls: EMBED_CALL + 1,
            },
            None => ClaimIntents::default(),
        }
    }

    async fn run(ctx: &JobContext<'_>, input: Self::Input) -> Result<Value, JobError> {
        answer(ctx, input).await
    }
}

/// Call indexes within an attempt: the question's embedding, then the answer.
const EMBED_CALL: usize = 0;
const ANSWER_CALL: usize = 1;

/// The shape of a rag.answer call, for its cost bounds.
#[derive(Debug, Clone, Copy)]
pub struct AnswerShape {
    /// The policy's smallest context window: the most context a prompt may hold.
    pub window: u32,
    pub max_tokens: u32,
    /// The least context worth answering from: one chunk.
    pub min_context_tokens: u64,
}

/// Bounds of the job's cost. The upper one: the question's embedding, and an answer whose prompt
/// fills the window, on the priciest candidate. The lower one, what a budget downgrade must leave
/// room for: the answer on the cheapest candidate with one chunk of context, since under a cost cap
/// the context shrinks to fit (see [`affordable_bytes`]).
pub fn estimate(
    input: &RagAnswerInput,
    shape: AnswerShape,
    prices: &[Price],
    embed_price: Price,
) -> Estimate {
    let question = input.question.len() as u64 + MESSAGE_OVERHEAD_TOKENS;
    let embed = embed_price.cost_micros(Usage {
        input_tokens: question,
        output_tokens: 0,
    });
    let answer = |context: u64| Usage {
        input_tokens: context,
        output_tokens: u64::from(shape.max_tokens),
    };
    let full = answer(u64::from(shape.window));
    let least = answer((question + shape.min_context_tokens).min(u64::from(shape.window)));
    Estimate {
        max_micros: embed
            + prices
                .iter()
                .map(|p| p.cost_micros(full))
                .max()
                .unwrap_or(0),
        min_micros: embed
            + prices
                .iter()
                .map(|p| p.cost_micros(least))
                .min()
                .unwrap_or(0),
        tokens: i64::try_from(question + full.input_tokens + full.output_tokens)
            .unwrap_or(i64::MAX),
        calls: 2,
    }
}

async fn answer(ctx: &JobContext<'_>, input: RagAnswerInput) -> Result<Value, JobError> {
    let started = Instant::now();
    let top_k = check(&input, ctx)?;
    let template = template(ctx, &input).await?;
    let (max_tokens, budget) = prompt_budget(ctx, &input, &template)?;
    let found = retrieve(ctx, &input, top_k).await?;
    let timings = |model_done: Instant| {
        json!({
            "embed": ms(found.embed_done - started),
            "search": ms(found.search_done - found.embed_done),
            "model": ms(model_done - found.search_done),
            "total": ms(model_done - started),
        })
    };
    let (mut usage, mut cost_micros) = (found.usage, found.cost_micros);
    if found.hits.is_empty() {
        return Ok(json!({
            "answer": null,
            "reason": "no chunk of the collection matched the question and filter",
            "citations": [], "usage": usage, "cost_micros": cost_micros,
            "timings_ms": timings(Instant::now()),
        }));
    }
    let prompt = assemble(&template, &input.question, &found.hits, budget)?;
    if prompt.used == 0 {
        return Err(JobError::permanent(
            "context_too_small",
            "not even the best chunk fits the context the policy and budget leave",
        ));
    }
    let request = ChatRequest {
        messages: prompt.messages,
        max_tokens: Some(max_tokens),
        temperature: input.temperature,
        call_id: Some(ctx.call_id(ANSWER_CALL)),
        counted_input_tokens: Some(prompt.tokens),
        credential: None,
    };
    let routed = ctx.chat(ANSWER_CALL, &request).await?;
    cost_micros += routed.shadow.as_ref().map_or(0, |s| s.cost_micros());
    if let Some(lookup) = &routed.cache_lookup {
        usage.input_tokens += lookup.response.usage.input_tokens;
        cost_micros += lookup.cost_micros();
    }
    let call = routed.primary?;
    let model_done = Instant::now();
    let answer = &call.answer;
    usage.input_tokens += answer.response.usage.input_tokens;
    usage.output_tokens += answer.response.usage.output_tokens;
    cost_micros += answer.cost_micros();
    let citations: Vec<Value> = found.hits[..prompt.used]
        .iter()
        .enumerate()
        .map(|(i, h)| json!({"n": i + 1, "document_id": h.document_id, "chunk_index": h.chunk_index, "score": h.score}))
        .collect();
    let mut result = json!({
        "answer": answer.response.content,
        "citations": citations,
        "chunks_found": found.hits.len(),
        "model": answer.model,
        "provider": answer.provider,
        "usage": usage,
        "cost_micros": cost_micros,
        "prompt_tokens_counted": prompt.tokens,
        "timings_ms": timings(model_done),
        "routing": call.trace,
    });
    if let Some(hit) = &call.cache {
        result["cache"] = json!(hit);
    }
    if let Some(RagTemplate::Saved(t)) = &input.template {
        result["prompt"] = super::batch_complete::prompt_used(t);
    }
    Ok(result)
}

/// The text around a prompt's context: a template of the configuration, or the saved prompt
/// version the job was pinned to at intake, rendered with the job's variables.
pub enum Template<'c> {
    Configured(&'c PromptTemplate),
    Saved {
        version: Box<PromptVersion>,
        variables: serde_json::Map<String, Value>,
        limits: Limits,
    },
}

impl Template<'_> {
    /// The prompt's messages around `context`.
    fn messages(&self, question: &str, context: &str) -> Result<Vec<ChatMessage>, JobError> {
        let (system, user) = match self {
            Self::Configured(t) => (
                Some(t.system.clone()),
                t.user
                    .replace("{context}", context)
                    .replace("{question}", question),
            ),
            Self::Saved {
                version,
                variables,
                limits,
            } => {
                let all = pin::rag_variables(variables, question, context);
                pin::render_rag_parts(version, &all, *limits)
                    .map_err(|e| JobError::permanent("prompt_failed", e))?
            }
        };
        let role = |role: &str, content: String| ChatMessage {
            role: role.into(),
            content,
        };
        Ok((system.map(|s| role("system", s)).into_iter())
            .chain([role("user", user)])
            .collect())
    }
}

/// The job's template: the configuration's by name, or its pinned saved prompt.
async fn template<'c>(
    ctx: &JobContext<'c>,
    input: &RagAnswerInput,
) -> Result<Template<'c>, JobError> {
    let cfg = ctx.env.cfg;
    let name = match &input.template {
        Some(RagTemplate::Saved(t)) => {
            let version = pin::pinned(ctx.pool, &ctx.job.tenant, t)
                .await
                .map_err(|e| {
                    // The driver's text stays in the log; the tenant reads what happened.
                    tracing::warn!(error = %e, "cannot read a pinned prompt");
                    JobError::transient("database", "cannot read the job's saved prompt now")
                })?
                .ok_or_else(|| {
                    JobError::permanent(
                        "prompt_missing",
                        format!(
                            "prompt `{}` was not pinned to a version that exists",
                            t.name
                        ),
                    )
                })?;
            return Ok(Template::Saved {
                version: Box::new(version),
                variables: t.variables.clone(),
                limits: cfg.prompts,
            });
        }
        Some(RagTemplate::Configured(name)) => name.as_str(),
        None => "default",
    };
    (cfg.retrieval.templates.get(name))
        .map(Template::Configured)
        .ok_or_else(|| JobError::invalid("input.template: unknown template"))
}

/// The answer's `max_tokens` and the room the prompt has: the policy's smallest context window
/// and, under a budget downgrade, the per-call cost cap. A question that leaves no room fails
/// here, before any call.
fn prompt_budget(
    ctx: &JobContext<'_>,
    input: &RagAnswerInput,
    template: &Template<'_>,
) -> Result<(u32, PromptBudget), JobError> {
    let cfg = &ctx.env.cfg.retrieval;
    let max_tokens = input.max_tokens.unwrap_or(cfg.answer_max_tokens);
    let window = ctx
        .env
        .router
        .min_context_window(&ctx.job.policy)
        .unwrap_or(0);
    let budget = PromptBudget {
        tokens: tokens::input_budget(window, max_tokens),
        bytes: affordable_bytes(ctx, max_tokens),
    };
    let fixed = prompt_tokens(&template.messages(&input.question, "")?);
    if fixed > budget.tokens {
        return Err(JobError::permanent(
            "question_too_long",
            format!("the question and template need {fixed} tokens; the policy's smallest context window leaves {} for input", budget.tokens),
        ));
    }
    Ok((max_tokens, budget))
}

/// What retrieval found, what its embedding cost, and when each step ended.
struct Retrieved {
    hits: Vec<Hit>,
    usage: Usage,
    cost_micros: i64,
    embed_done: Instant,
    search_done: Instant,
}

/// Embeds the question and searches the tenant's chunks.
async fn retrieve(
    ctx: &JobContext<'_>,
    input: &RagAnswerInput,
    top_k: usize,
) -> Result<Retrieved, JobError> {
    let store = ctx.vectors;
    let embedded = super::ingest::embed_texts(ctx, vec![input.question.clone()], EMBED_CALL)
        .instrument(tracing::info_span!("embed", texts = 1))
        .await?;
    let embed_done = Instant::now();
    let vector = embedded.vectors.first().cloned().unwrap_or_default();
    let query = SearchQuery {
        tenant: &ctx.job.tenant,
        vector: &vector,
        top_k,
        score_threshold: input.score_threshold,
        filter: &input.filter,
        exact: false,
    };
    let search = tracing::info_span!("search", collection = %input.collection, top_k, hits = tracing::field::Empty);
    let hits = store
        .search(&input.collection, &query)
        .instrument(search.clone())
        .await?;
    search.record("hits", hits.len());
    Ok(Retrieved {
        hits,
        usage: Usage {
            input_tokens: embedded.input_tokens,
            output_tokens: 0,
        },
        cost_micros: embedded.cost_micros,
        embed_done,
        search_done: Instant::now(),
    })
}

/// The job's content rules; returns the top-k to search for.
fn check(input: &RagAnswerInput, ctx: &JobContext<'_>) -> Result<usize, JobError> {
    let cfg = &ctx.env.cfg.retrieval;
    super::check_collection(&input.collection, ctx.env.cfg)?;
    check_filter(&input.filter).map_err(|e| JobError::invalid(e.to_string()))?;
    if input.question.trim().is_empty() {
        return Err(JobError::invalid("input.question is empty"));
    }
    let top_k = input.top_k.unwrap_or(cfg.default_top_k);
    if !(1..=cfg.max_top_k).contains(&top_k) {
        return Err(JobError::invalid(format!(
            "input.top_k: between 1 and {}, got {top_k}",
            cfg.max_top_k
        )));
    }
    if input
        .score_threshold
        .is_some_and(|t| !(-1.0..=1.0).contains(&t))
    {
        return Err(JobError::invalid(
            "input.score_threshold: a cosine similarity, between -1 and 1",
        ));
    }
    if input.max_tokens == Some(0) {
        return Err(JobError::invalid("input.max_tokens must be positive"));
    }
    if input.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(JobError::invalid(
            "input.temperature must be between 0 and 2",
        ));
    }
    Ok(top_k)
}

/// What the prompt may hold: counted tokens (the context window), and bytes (what a budget cap
/// allows: the router bounds a call's cost by its bytes).
#[derive(Debug, Clone, Copy)]
pub struct PromptBudget {
    pub tokens: u64,
    pub bytes: u64,
}

/// Under a budget cap, the prompt bytes the cheapest candidate can take within it.
fn affordable_bytes(ctx: &JobContext<'_>, max_tokens: u32) -> u64 {
    let Some(cap) = ctx.scope.cost_cap_micros else {
        return u64::MAX;
    };
    let cap = u128::try_from(cap.max(0)).unwrap_or(0) * 1_000_000;
    ctx.env
        .router
        .candidate_prices(&ctx.job.policy)
        .iter()
        .filter(|p| p.input_micros_per_mtok > 0)
        .map(|p| {
            let output = u128::from(max_tokens) * u128::from(p.output_micros_per_mtok);
            let input = cap.saturating_sub(output) / u128::from(p.input_micros_per_mtok);
            u64::try_from(input).unwrap_or(u64::MAX)
        })
        .max()
        .unwrap_or(u64::MAX)
}

/// An assembled prompt: its messages, how many of the hits it holds, and its counted tokens.
#[derive(Debug)]
pub struct Prompt {
    pub messages: Vec<ChatMessage>,
    pub used: usize,
    pub tokens: u64,
}

/// Fills the template with the best hits, in order, while the prompt stays within `budget`.
pub fn assemble(
    template: &Template<'_>,
    question: &str,
    hits: &[Hit],
    budget: PromptBudget,
) -> Result<Prompt, JobError> {
    let bare = template.messages(question, "")?;
    let mut tokens = prompt_tokens(&bare);
    let mut bytes =
        bare.iter().map(|m| m.content.len() as u64).sum::<u64>() + 2 * MESSAGE_OVERHEAD_TOKENS;
    let mut context = String::new();
    let mut used = 0;
    for (i, hit) in hits.iter().enumerate() {
        let passage = format!("[{}] {}\n\n", i + 1, hit.text.trim());
        let (t, b) = (tokens::count(&passage), passage.len() as u64);
        if tokens + t > budget.tokens || bytes + b > budget.bytes {
            break;
        }
        tokens += t;
        bytes += b;
        context.push_str(&passage);
        used += 1;
    }
    Ok(Prompt {
        messages: template.messages(question, context.trim_end())?,
        used,
        tokens,
    })
}

fn prompt_tokens(messages: &[ChatMessage]) -> u64 {
    ragq::providers::count_tokens(messages)
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(text: &str) -> Hit {
        Hit {
            document_id: "d".into(),
            chunk_index: 0,
            score: 0.9,
            text: text.into(),
            metadata: Default::default(),
        }
    }

    fn configured() -> PromptTemplate {
        PromptTemplate {
            system: "Answer from the context.".into(),
            user: "Context:\n{context}\n\nQuestion: {question}".into(),
        }
    }

    #[test]
    fn assembles_best_hits_within_the_counted_budget() {
        let hits: Vec<Hit> = (0..10)
            .map(|i| hit(&format!("passage {i} {}", "about refunds ".repeat(20))))
            .collect();
        let unlimited = PromptBudget {
            tokens: u64::MAX,
            bytes: u64::MAX,
        };
        let configured = configured();
        let template = Template::Configured(&configured);
        let all = assemble(&template, "How do refunds work?", &hits, unlimited).unwrap();
        assert_eq!(all.used, 10);
        let counted = ragq::providers::count_tokens(&all.messages);
        // Passages are counted one by one; joined, BPE may merge across their seams a little.
        assert!(
            counted <= all.tokens && all.tokens <= counted + 10,
            "{counted} vs {}",
            all.tokens
        );
        let tight = PromptBudget {
            tokens: all.tokens / 2,
            bytes: u64::MAX,
        };
        let half = assemble(&template, "How do refunds work?", &hits, tight).unwrap();
        assert!(half.used > 0 && half.used < 10);
        assert!(half.tokens <= tight.tokens);
        assert!(half.messages[1].content.contains("[1] passage 0"));
        assert!(!half.messages[1].content.contains("passage 9"));
        let poor = PromptBudget {
            tokens: u64::MAX,
            bytes: 200,
        };
        assert_eq!(assemble(&template, "q", &hits, poor).unwrap().used, 0);
    }

    #[test]
    fn estimate_covers_the_embedding_and_a_full_window() {
        let input = RagAnswerInput {
            collection: "docs".into(),
            question: "q".repeat(92),
            top_k: None,
            score_threshold: None,
            filter: Default::default(),
            template: None,
            max_tokens: None,
            temperature: None,
        };
        let price = Price {
            input_micros_per_mtok: 1_000_000,
            output_micros_per_mtok: 2_000_000,
        };
        let shape = AnswerShape {
            window: 10_000,
            max_tokens: 500,
            min_context_tokens: 256,
        };
        let cheap = Price {
            input_micros_per_mtok: 100_000,
            output_micros_per_mtok: 200_000,
        };
        let e = estimate(&input, shape, &[price, cheap], price);
        assert_eq!(
            e.max_micros,
            100 + 10_000 + 1_000,
            "92 bytes + 8 of framing"
        );
        assert_eq!(
            e.min_micros,
            100 + 36 + 100,
            "the embedding, then (100 + 256) in and 500 out on the cheap model, half up"
        );
        assert_eq!(e.calls, 2);
    }
}
