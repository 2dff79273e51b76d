//! Anthropic's Messages API (`POST {base_url}/messages`): system prompts travel in their own field,
//! `max_tokens` is required, the answer is a list of content blocks, and usage is reported as
//! input and output tokens. Overloaded (529) and rate-limited (429) answers are retryable like any
//! 5xx or 429 (see `error::status_is_retryable`).

use serde::{Deserialize, Serialize};

use super::http::exchange;
use super::{ChatRequest, ChatResponse, ProviderEndpoint, ProviderError, Usage};

/// The API version ragq speaks, sent as `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when a request sets none (the API requires one; ragq's handlers always set it).
const DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug, Clone)]
pub struct AnthropicClient {
    endpoint: ProviderEndpoint,
    http: reqwest::Client,
    url: String,
}

/// The request body.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct WireRequest {
    pub model: String,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub messages: Vec<WireMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct WireMessage {
    pub role: String,
    pub content: String,
}

/// A message as Anthropic sends it (streaming aside); ragq needs the text blocks and the usage,
/// and keeps the id and stop reason for traces.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub content: Vec<WireBlock>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireBlock {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl AnthropicClient {
    pub fn new(endpoint: ProviderEndpoint, http: reqwest::Client) -> Self {
        let url = format!("{}/messages", endpoint.base_url.trim_end_matches('/'));
        Self {
            endpoint,
            http,
            url,
        }
    }

    async fn chat_call(
        &self,
        model_id: &str,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let mut http = self
            .http
            .post(&self.url)
            .header("anthropic-version", API_VERSION)
            .json(&build_request(model_id, request));
        // The tenant's own key when it brought one, else the operator's.
        if let Some(key) = request
            .credential
            .as_ref()
            .or(self.endpoint.api_key.as_ref())
        {
            http = http.header("x-api-key", key.expose());
        }
        let bytes = exchange(&self.endpoint, http, request.call_id.as_deref()).await?;
        parse_response(&self.endpoint.name, &bytes)
    }
}

impl super::ModelProvider for AnthropicClient {
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
}

/// Builds the wire request: system messages joined into `system`, the rest in order.
pub fn build_request(model_id: &str, request: &ChatRequest) -> WireRequest {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    WireRequest {
        model: model_id.to_string(),
        max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: request
            .messages
            .iter()
            .filter(|m| m.role != "system")
            .map(|m| WireMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect(),
        temperature: request.temperature,
    }
}

/// Reads the text blocks and the reported usage; without usage a call cannot be booked, so the
/// answer is refused rather than guessed.
pub fn parse_response(provider: &str, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let invalid = |message: String| ProviderError::InvalidResponse {
        provider: provider.to_string(),
        message,
    };
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a message: {e}")))?;
    let usage = wire
        .usage
        .ok_or_else(|| invalid("no usage reported".into()))?;
    let text: Vec<String> = wire
        .content
        .into_iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text)
        .collect();
    if text.is_empty() {
        return Err(invalid("no text content".into()));
    }
    Ok(ChatResponse {
        response_id: wire.id,
        finish_reason: wire.stop_reason,
        content: text.concat(),
        usage: Usage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::error::error_from_status;
    use crate::providers::ChatMessage;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn system_prompts_move_to_their_own_field() {
        let req = ChatRequest {
            messages: vec![msg("system", "Be brief."), msg("user", "Hi")],
            max_tokens: None,
            temperature: Some(0.2),
            call_id: None,
            counted_input_tokens: None,
            credential: None,
        };
        let wire = build_request("claude-x", &req);
        assert_eq!(wire.system.as_deref(), Some("Be brief."));
        assert_eq!(
            wire.messages,
            vec![WireMessage {
                role: "user".into(),
                content: "Hi".into()
            }]
        );
        assert_eq!(
            wire.max_tokens, DEFAULT_MAX_TOKENS,
            "the API requires max_tokens"
        );
        let json = serde_json::to_value(&wire).unwrap_or_default();
        assert_eq!(json["model"], "claude-x");
    }

    #[test]
    fn text_blocks_and_usage_are_read() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hello"},{"type":"text","text":" there"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#;
        let r = parse_response("claude", body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.content, "Hello there");
        assert_eq!(r.response_id.as_deref(), Some("msg_1"));
        assert_eq!(r.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 3
            }
        );
        let no_usage = br#"{"content":[{"type":"text","text":"x"}]}"#;
        assert!(matches!(
            parse_response("claude", no_usage),
            Err(ProviderError::InvalidResponse { .. })
        ));
    }

    #[test]
    fn overloaded_and_invalid_requests_are_classified() {
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = error_from_status("claude", 529, overloaded, None);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("Overloaded"));
        let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#;
        assert!(!error_from_status("claude", 400, bad, None).is_retryable());
    }
}
