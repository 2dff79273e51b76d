//! Model providers: one client per API shape behind one closed enum.
//!
//! A provider turns a [`ChatRequest`] into a [`ChatResponse`] with the usage the vendor reported, or a
//! [`ProviderError`] that knows whether trying again can help. Retries and failover are not here: the
//! router owns them, so attempts never multiply across layers.

pub mod anthropic;
pub mod embeddings;
pub mod error;
pub mod http;
pub mod openai;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use embeddings::{EmbeddingRequest, EmbeddingResponse};
pub use error::ProviderError;

use crate::secret::Secret;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What a job asks of a model; the router fills in the vendor model id.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Identifies this call (tenant/job/attempt/index) to providers that log or dedupe by it; sent as
    /// the `x-ragq-call-id` header.
    pub call_id: Option<String>,
    /// The prompt's tokens as counted by ragq's tokenizer, when the caller counted them (a prompt
    /// assembled to fill a context window); the context-window check then uses this count
    /// instead of the byte bound.
    pub counted_input_tokens: Option<u64>,
    /// The tenant's own key for this provider (bring your own key), sent instead of the
    /// operator's; set by the router per candidate.
    pub credential: Option<Secret>,
}

use crate::tokens::MESSAGE_OVERHEAD_TOKENS;

/// The tokens of a chat prompt as ragq's tokenizer counts them: each message's text plus its
/// framing.
pub fn count_tokens(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| crate::tokens::count(&m.content) + MESSAGE_OVERHEAD_TOKENS)
        .sum()
}

impl ChatRequest {
    /// An upper bound on the input tokens any provider will bill for this request: byte-level BPE
    /// tokenizers never produce more tokens than bytes. Used to reserve budget, never to bill.
    pub fn max_input_tokens(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| m.content.len() as u64 + MESSAGE_OVERHEAD_TOKENS)
            .sum()
    }

    /// The input tokens to check against a context window: the counted ones if known.
    pub fn context_input_tokens(&self) -> u64 {
        self.counted_input_tokens
            .unwrap_or_else(|| self.max_input_tokens())
    }

    /// The most this request can cost at `price`, given its `max_tokens` (required for a bound).
    pub fn worst_case_micros(&self, price: &crate::money::Price) -> i64 {
        price.cost_micros(Usage {
            input_tokens: self.max_input_tokens(),
            output_tokens: u64::from(self.max_tokens.unwrap_or(u32::MAX)),
        })
    }
}

pub use crate::money::Usage;

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub content: String,
    pub usage: Usage,
    /// The provider's own id of the response (`chatcmpl-…`, `msg_…`), for tracing a call to it.
    pub response_id: Option<String>,
    /// Why generation stopped, as the provider says it (`stop`, `length`, `end_turn`, `max_tokens`).
    pub finish_reason: Option<String>,
}

/// A provider's answer that reports the tokens it was billed for.
pub trait Metered {
    fn usage(&self) -> Usage;
}

impl Metered for ChatResponse {
    fn usage(&self) -> Usage {
        self.usage
    }
}

impl Metered for embeddings::EmbeddingResponse {
    fn usage(&self) -> Usage {
        self.usage
    }
}

/// How to reach one provider.
#[derive(Debug, Clone)]
pub struct ProviderEndpoint {
    pub name: String,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub timeout: Duration,
    /// Largest response body read; a bigger one fails the call naming the limit.
    pub max_response_bytes: usize,
}

/// A future a provider call returns.
pub type CallFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// One API shape ragq speaks (a file each: `openai`, `anthropic`): one HTTP call, no retries (the
/// router owns those). Request building, response parsing and error classification are pure
/// functions in the shape's file.
pub trait ModelProvider: std::fmt::Debug + Send + Sync {
    /// The provider's name in the catalog.
    fn name(&self) -> &str;

    fn chat<'a>(
        &'a self,
        model_id: &'a str,
        request: &'a ChatRequest,
    ) -> CallFuture<'a, ChatResponse>;

    /// An API shape without an embeddings endpoint keeps this default; the config refuses
    /// embedding models on such providers, so this is a guard, not a path.
    fn embed<'a>(
        &'a self,
        _model_id: &'a str,
        _request: &'a EmbeddingRequest,
    ) -> CallFuture<'a, EmbeddingResponse> {
        let error = ProviderError::InvalidResponse {
            provider: self.name().to_string(),
            message: "this provider's API has no embeddings endpoint".into(),
        };
        Box::pin(std::future::ready(Err(error)))
    }
}

/// A provider's client, shared by every call the router makes to it.
pub type ProviderClient = std::sync::Arc<dyn ModelProvider>;
