//! The OpenAI chat-completions shape, spoken by OpenAI and most servers that copy it (vLLM, Ollama,
//! TGI, LiteLLM) and by `ragq sim-provider`.
//!
//! Request building, response parsing and error classification are pure functions; the client only
//! moves bytes.

use serde::{Deserialize, Serialize};

use super::embeddings::{self, EmbeddingRequest, EmbeddingResponse};
use super::http::exchange;
use super::{ChatMessage, ChatRequest, ChatResponse, ProviderEndpoint, ProviderError, Usage};

pub use super::http::CALL_ID_HEADER;

/// Client for one OpenAI-compatible endpoint; cheap to clone (shares the connection pool).
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    endpoint: ProviderEndpoint,
    http: reqwest::Client,
    chat_url: String,
    embeddings_url: String,
}

/// The request body of `POST /chat/completions`.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

/// A chat completion as OpenAI sends it (streaming aside); ragq needs only the choices and the
/// usage, and keeps the id and finish reason for traces.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireChatResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub choices: Vec<WireChoice>,
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireChoice {
    #[serde(default)]
    pub index: u32,
    pub message: WireMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireMessage {
    pub role: String,
    pub content: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
}

impl OpenAiClient {
    pub fn new(endpoint: ProviderEndpoint, http: reqwest::Client) -> Self {
        let chat_url = format!(
            "{}/chat/completions",
            endpoint.base_url.trim_end_matches('/')
        );
        let embeddings_url = format!("{}/embeddings", endpoint.base_url.trim_end_matches('/'));
        Self {
            endpoint,
            http,
            chat_url,
            embeddings_url,
        }
    }

    /// A JSON POST to `url` with the tenant's key (when it brought one) or the endpoint's as a
    /// bearer token.
    fn post(
        &self,
        url: &str,
        body: &impl Serialize,
        credential: Option<&crate::secret::Secret>,
    ) -> reqwest::RequestBuilder {
        let http = self.http.post(url).json(body);
        match credential.or(self.endpoint.api_key.as_ref()) {
            Some(key) => http.bearer_auth(key.expose()),
            None => http,
        }
    }

    async fn chat_call(
        &self,
        model_id: &str,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let body = build_request(model_id, request);
        let http = self.post(&self.chat_url, &body, request.credential.as_ref());
        let bytes = exchange(&self.endpoint, http, request.call_id.as_deref()).await?;
        parse_response(&self.endpoint.name, &bytes)
    }

    async fn embed_call(
        &self,
        model_id: &str,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let body = embeddings::build_request(model_id, request);
        let http = self.post(&self.embeddings_url, &body, request.credential.as_ref());
        let bytes = exchange(&self.endpoint, http, request.call_id.as_deref()).await?;
        embeddings::parse_response(&self.endpoint.name, request.inputs.len(), &bytes)
    }
}

impl super::ModelProvider for OpenAiClient {
    fn name(&self) -> &str {
        &self.endpoint.name
    }

    fn chat<'a>(
        &'a self,
        model_id: &'a str,
        request: &'a ChatRequest,
    ) -> super::CallFuture<'a, ChatResponse> {
        Box::pin(self.chat_call(model_id, request))
    }

    fn embed<'a>(
        &'a self,
        model_id: &'a str,
        request: &'a EmbeddingRequest,
    ) -> super::CallFuture<'a, EmbeddingResponse> {
        Box::pin(self.embed_call(model_id, request))
    }
}

/// Builds the wire request for one model.
pub fn build_request(model_id: &str, request: &ChatRequest) -> WireChatRequest {
    WireChatRequest {
        model: model_id.to_string(),
        messages: request.messages.clone(),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
    }
}

/// Reads the answer and the provider-reported usage; a response without usage cannot be booked and is
/// refused rather than guessed.
pub fn parse_response(provider: &str, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let invalid = |message: String| ProviderError::InvalidResponse {
        provider: provider.to_string(),
        message,
    };
    let wire: WireChatResponse =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a chat completion: {e}")))?;
    let usage = wire
        .usage
        .ok_or_else(|| invalid("no usage reported".into()))?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| invalid("no choices".into()))?;
    let content = (choice.message.content).ok_or_else(|| invalid("no message content".into()))?;
    Ok(ChatResponse {
        content,
        response_id: wire.id,
        finish_reason: choice.finish_reason,
        usage: Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::error::error_from_status;
    use std::time::Duration;

    #[test]
    fn request_carries_model_and_messages() {
        let req = ChatRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            max_tokens: Some(5),
            temperature: None,
            call_id: None,
            counted_input_tokens: None,
            credential: None,
        };
        let json = serde_json::to_value(build_request("m1", &req)).expect("json");
        assert_eq!(json["model"], "m1");
        assert_eq!(json["messages"][0]["content"], "hi");
        assert_eq!(json["max_tokens"], 5);
        assert!(json.get("temperature").is_none());
    }

    #[test]
    fn response_usage_is_read_not_guessed() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"yo"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let r = parse_response("p", body).expect("parsed");
        assert_eq!(r.content, "yo");
        assert_eq!((r.response_id, r.finish_reason), (None, None));
        let full = br#"{"id":"chatcmpl-9","object":"chat.completion","created":1764547200,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"yo"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let r = parse_response("p", full).expect("parsed");
        assert_eq!(r.response_id.as_deref(), Some("chatcmpl-9"));
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 3,
                output_tokens: 1
            }
        );
        let no_usage = br#"{"choices":[{"message":{"role":"assistant","content":"yo"}}]}"#;
        assert!(matches!(
            parse_response("p", no_usage),
            Err(ProviderError::InvalidResponse { .. })
        ));
    }

    #[test]
    fn error_body_message_and_retry_after_are_kept() {
        let e = error_from_status(
            "p",
            429,
            br#"{"error":{"message":"slow down"}}"#,
            Some(Duration::from_secs(1)),
        );
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert!(e.to_string().contains("slow down"));
        let e = error_from_status("p", 400, b"plain text", None);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("plain text"));
    }
}
