//! `batch.complete`: answer each prompt of a batch with a model chosen by the job's policy.
//!
//! Prompts run a few at a time. A prompt that fails for good is reported in its slot of the result;
//! a retryable failure (an outage outlasting the router's budget) makes the whole attempt retryable.

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::jobs::BatchCompleteInput;
use crate::providers::{ChatMessage, ChatRequest, Usage};

use super::handler::{JobContext, JobError};

/// Prompts of one job in flight at once.
const PROMPT_CONCURRENCY: usize = 4;

pub async fn run(ctx: &JobContext<'_>, input: BatchCompleteInput) -> Result<Value, JobError> {
    let requests: Vec<ChatRequest> = input
        .prompts
        .iter()
        .enumerate()
        .map(|(index, prompt)| ChatRequest {
            messages: messages(input.system.as_deref(), &prompt.prompt),
            max_tokens: input.max_tokens,
            temperature: input.temperature,
            call_id: Some(ctx.call_id(index)),
        })
        .collect();
    let calls = requests
        .into_iter()
        .enumerate()
        .map(|(index, request)| answer(ctx, index, request));
    let answers: Vec<Result<Value, JobError>> = stream::iter(calls)
        .buffered(PROMPT_CONCURRENCY)
        .collect()
        .await;
    if let Some(e) = answers
        .iter()
        .find_map(|a| a.as_ref().err().filter(|e| e.retryable))
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
            Err(e) => json!({"index": index, "error": {"code": e.code, "message": e.message}}),
        })
        .collect();
    Ok(json!({"completions": completions, "usage": usage, "cost_micros": cost_micros}))
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
) -> Result<Value, JobError> {
    let call = ctx.router.chat(&ctx.job.policy, &request).await?;
    ctx.book(index, &call).await?;
    Ok(json!({
        "index": index,
        "content": call.response.content,
        "model": call.model,
        "provider": call.provider,
        "usage": call.response.usage,
        "cost_micros": call.price.cost_micros(call.response.usage),
        "routing": call.trace,
    }))
}
