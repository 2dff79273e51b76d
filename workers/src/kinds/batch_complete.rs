//! `batch.complete`: answer each prompt of a batch with a model chosen by the job's policy.
//!
//! Prompts run a few at a time. A prompt that fails for good is reported in its slot of the result;
//! a retryable failure (an outage outlasting the router's budget) makes the whole attempt retryable.

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use ragq::jobs::{BatchCompleteInput, JobKind, JobMessage, TemplateRef};
use ragq::providers::{ChatMessage, ChatRequest, Usage};
use ragq::spend::budget::Estimate;
use ragq::spend::Price;

use crate::booking::AttemptOf;
use crate::error::JobError;
use crate::handler::{ClaimIntents, JobContext, JobHandler, WorkerEnv};

/// The `batch.complete` kind.
pub struct BatchComplete;

impl JobHandler for BatchComplete {
    type Input = BatchCompleteInput;
    const KIND: JobKind = JobKind::BatchComplete;

    /// Saved prompts were rendered at intake; one that was not cannot run.
    fn input(job: &JobMessage) -> Result<Self::Input, String> {
        let input = job.batch_input()?;
        if let Some(i) = (input.prompts.iter()).position(|p| p.prompt.trim().is_empty()) {
            return Err(format!(
                "input.prompts[{i}]: the saved prompt was not rendered at intake"
            ));
        }
        Ok(input)
    }

    fn estimate(env: WorkerEnv<'_>, job: &JobMessage, input: &Self::Input) -> Estimate {
        let max_output = env.cfg.spend.default_max_output_tokens;
        let own = estimate(input, &env.router.candidate_prices(&job.policy), max_output);
        // A shadow copy may be made of every call: its worst case is reserved too.
        match env.router.shadow_price(&job.policy) {
            Some(p) => own.plus(&estimate(input, &[p], max_output)),
            None => own,
        }
    }

    /// The prompts the attempt sends first (see [`JobContext::declared_calls`]).
    fn claim_intents(env: WorkerEnv<'_>, of: AttemptOf<'_>, input: &Self::Input) -> ClaimIntents {
        let max_output = env.cfg.spend.default_max_output_tokens;
        let first = input.prompts.len().min(PROMPT_CONCURRENCY);
        let intents = (0..first)
            .flat_map(|index| {
                let request = request(input, index, max_output, None);
                of.chat_intents(env.router, index, &request, true)
            })
            .collect();
        ClaimIntents {
            intents,
            calls: first,
        }
    }

    async fn run(ctx: &JobContext<'_>, input: Self::Input) -> Result<Value, JobError> {
        complete(ctx, input).await
    }
}

/// Prompts of one job in flight at once.
const PROMPT_CONCURRENCY: usize = 4;

/// The job's calls; `max_tokens` is always set so that each call's cost has a known bound.
fn requests(
    input: &BatchCompleteInput,
    default_max_output_tokens: u32,
    call_id: impl Fn(usize) -> Option<String>,
) -> Vec<ChatRequest> {
    (0..input.prompts.len())
        .map(|index| request(input, index, default_max_output_tokens, call_id(index)))
        .collect()
}

/// The request of prompt `index`.
fn request(
    input: &BatchCompleteInput,
    index: usize,
    default_max_output_tokens: u32,
    call_id: Option<String>,
) -> ChatRequest {
    let prompt = &input.prompts[index];
    let system = prompt.system.as_deref().or(input.system.as_deref());
    ChatRequest {
        messages: messages(system, &prompt.prompt),
        max_tokens: Some(input.max_tokens.unwrap_or(default_max_output_tokens)),
        temperature: input.temperature,
        call_id,
        // The router counts when its ranking needs it (a cost policy with a choice).
        counted_input_tokens: None,
        credential: None,
    }
}

/// Upper bounds of the job's cost on the priciest and cheapest of `prices`, and of its tokens.
pub fn estimate(
    input: &BatchCompleteInput,
    prices: &[Price],
    default_max_output_tokens: u32,
) -> Estimate {
    let calls = requests(input, default_max_output_tokens, |_| None);
    let total = |price: &Price| {
        calls
            .iter()
            .map(|c| c.worst_case_micros(price))
            .sum::<i64>()
    };
    let costs: Vec<i64> = prices.iter().map(total).collect();
    let tokens = calls
        .iter()
        .map(|c| c.max_input_tokens() + u64::from(c.max_tokens.unwrap_or(0)))
        .sum::<u64>();
    Estimate {
        max_micros: costs.iter().copied().max().unwrap_or(0),
        min_micros: costs.iter().copied().min().unwrap_or(0),
        tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
        calls: i64::try_from(calls.len()).unwrap_or(i64::MAX),
    }
}

async fn complete(ctx: &JobContext<'_>, input: BatchCompleteInput) -> Result<Value, JobError> {
    let requests = requests(&input, ctx.env.cfg.spend.default_max_output_tokens, |i| {
        Some(ctx.call_id(i))
    });
    let calls = requests.into_iter().enumerate().map(|(index, request)| {
        let template = input.prompts[index].template.as_ref();
        answer(ctx, index, request, template)
    });
    let answers: Vec<Result<Value, JobError>> = stream::iter(calls)
        .buffered(PROMPT_CONCURRENCY)
        .collect()
        .await;
    if let Some(e) = answers
        .iter()
        .find_map(|a| a.as_ref().err().filter(|e| e.is_retryable()))
    {
        return Err(e.clone());
    }
    if let Some(Err(first)) = answers
        .first()
        .filter(|_| answers.iter().all(Result::is_err))
    {
        return Err(first.clone());
    }
    let mut usage = Usage::default();
    let mut cost_micros = 0i64;
    let completions: Vec<Value> = answers
        .into_iter()
        .enumerate()
        .map(|(index, a)| match a {
            Ok(v) => {
                usage.input_tokens += v["usage"]["input_tokens"].as_u64().unwrap_or(0);
                usage.output_tokens += v["usage"]["output_tokens"].as_u64().unwrap_or(0);
                cost_micros += v["cost_micros"].as_i64().unwrap_or(0);
                v
            }
            Err(e) => json!({"index": index, "error": {"code": e.code(), "message": e.message()}}),
        })
        .collect();
    Ok(json!({"completions": completions, "usage": usage, "cost_micros": cost_micros}))
}

/// The saved prompt version a completion used, as results name it.
pub fn prompt_used(t: &TemplateRef) -> Value {
    json!({"name": t.name, "version": t.version, "label": t.label, "shared": t.shared})
}

fn messages(system: Option<&str>, prompt: &str) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: system.into(),
        });
    }
    messages.push(ChatMessage {
        role: "user".into(),
        content: prompt.into(),
    });
    messages
}

async fn answer(
    ctx: &JobContext<'_>,
    index: usize,
    request: ChatRequest,
    template: Option<&TemplateRef>,
) -> Result<Value, JobError> {
    let routed = ctx.chat(index, &request).await?;
    let shadow_cost = routed.shadow.as_ref().map_or(0, |s| s.cost_micros());
    let shadow = routed.shadow.as_ref().map(|s| {
        json!({"model": s.model, "usage": s.response.usage, "cost_micros": s.cost_micros(),
               "latency_ms": s.latency.as_millis() as u64})
    });
    let lookup_cost = routed.cache_lookup.as_ref().map_or(0, |l| l.cost_micros());
    let call = routed.primary?;
    let answer = &call.answer;
    let own = answer.cost_micros();
    let mut completion = json!({
        "index": index,
        "content": answer.response.content,
        "model": answer.model,
        "provider": answer.provider,
        "usage": answer.response.usage,
        // This prompt's cost: its answer's, plus its shadow copy's and its semantic cache
        // lookup's if there were.
        "cost_micros": own + shadow_cost + lookup_cost,
        "routing": call.trace,
        "shadow": shadow,
    });
    if let Some(hit) = &call.cache {
        completion["cache"] = json!(hit);
    }
    if let Some(t) = template {
        completion["prompt"] = prompt_used(t);
    }
    if let Some(l) = &routed.cache_lookup {
        completion["cache_lookup"] =
            json!({"model": l.model, "usage": l.response.usage, "cost_micros": lookup_cost});
    }
    Ok(completion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragq::jobs::Prompt;

    #[test]
    fn estimate_bounds_every_call_on_the_priciest_and_cheapest_model() {
        let input = BatchCompleteInput {
            prompts: vec![
                Prompt {
                    prompt: "x".repeat(92),
                    ..Prompt::default()
                },
                Prompt {
                    prompt: "y".repeat(192),
                    ..Prompt::default()
                },
            ],
            system: None,
            max_tokens: Some(100),
            temperature: None,
        };
        let cheap = Price {
            input_micros_per_mtok: 1_000_000,
            output_micros_per_mtok: 2_000_000,
        };
        let dear = Price {
            input_micros_per_mtok: 10_000_000,
            output_micros_per_mtok: 20_000_000,
        };
        let e = estimate(&input, &[cheap, dear], 1024);
        // inputs: 92+8 and 192+8 bytes = 300 tokens; outputs 2 x 100 = 200 tokens
        assert_eq!(e.tokens, 500);
        assert_eq!(e.calls, 2);
        assert_eq!(e.min_micros, 300 + 400, "300 tokens at $1/M + 200 at $2/M");
        assert_eq!(e.max_micros, 10 * 700);
        let unbounded = BatchCompleteInput {
            max_tokens: None,
            ..input
        };
        assert_eq!(
            estimate(&unbounded, &[cheap], 1024).tokens,
            300 + 2 * 1024,
            "the default cap bounds output"
        );
    }
}
