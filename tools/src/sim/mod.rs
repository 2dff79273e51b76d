//! `ragq sim-provider`: an OpenAI-compatible chat-completions and embeddings server for demos, tests and benchmarks.
//!
//! Replies are deterministic (a function of the model and the prompt) and carry usage, so spend can be
//! checked exactly. Faults are injected at random rates (500s, 429s with Retry-After, hangs past any
//! sane timeout) or scripted: a test queues the exact statuses the next requests get.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use ragq::providers::anthropic;
use ragq::providers::embeddings::{
    WireEmbedding, WireEmbeddingRequest, WireEmbeddingResponse, WireEmbeddingUsage,
};
use ragq::providers::openai::{
    WireChatRequest, WireChatResponse, WireChoice, WireMessage, WireUsage,
};
use ragq::providers::ChatMessage;

mod batches;

/// Fault rates and latency; every rate is a probability in 0..=1.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
pub struct SimOptions {
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of requests answered with HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub error_rate: f64,
    /// Share of requests answered with HTTP 429 and Retry-After.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub rate_limit_rate: f64,
    /// Retry-After sent with 429s, in seconds.
    #[arg(long, default_value_t = 1)]
    #[serde(default)]
    pub retry_after_secs: u64,
    /// Share of requests that hang (for 10 minutes) instead of answering.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub timeout_rate: f64,
    /// How long a batch takes to end, in milliseconds.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub batch_delay_ms: u64,
    /// Share of a batch's requests that fail (Anthropic `errored`, OpenAI error file).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub batch_error_rate: f64,
    /// A batch not ended this long after it was created expires (its unfinished requests
    /// `expired`); 0: never.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub batch_expiry_ms: u64,
}

/// A scripted answer for one upcoming request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status and an error body.
    Status { status: u16 },
    /// 429 with this Retry-After in seconds.
    RateLimited { retry_after_secs: u64 },
    /// Never answer (until the client gives up).
    Hang,
}

#[derive(Debug, Default)]
struct SimState {
    options: Mutex<SimOptions>,
    script: Mutex<VecDeque<Fault>>,
    requests: AtomicU64,
    successes: AtomicU64,
    answered_call_ids: Mutex<Vec<String>>,
    /// When each request arrived (for checking pacing).
    arrivals: Mutex<Vec<std::time::Instant>>,
    /// The latest requests as they arrived (what a provider would have seen).
    log: Mutex<VecDeque<LoggedRequest>>,
    /// Message batches (Anthropic's Batches API), by id.
    batches: Mutex<batches::Store>,
}

/// One request as the sim received it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub path: &'static str,
    /// The `Authorization` (OpenAI shape) or `x-api-key` (Anthropic shape) header.
    pub credential: Option<String>,
    pub body: String,
}

/// Requests the log keeps (the oldest go first).
const LOGGED_REQUESTS: usize = 10_000;

impl SimState {
    fn log(&self, path: &'static str, headers: &axum::http::HeaderMap, body: &[u8]) {
        let credential = (headers
            .get("authorization")
            .or_else(|| headers.get("x-api-key")))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
        if let Ok(mut log) = self.log.lock() {
            if log.len() >= LOGGED_REQUESTS {
                log.pop_front();
            }
            log.push_back(LoggedRequest {
                path,
                credential,
                body: String::from_utf8_lossy(body).into_owned(),
            });
        }
    }
}

/// A running sim provider.
#[derive(Debug, Clone)]
pub struct SimHandle {
    pub addr: SocketAddr,
    state: Arc<SimState>,
}

impl SimHandle {
    /// The base URL to put in a provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues faults for the next requests, in order.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        if let Ok(mut s) = self.state.script.lock() {
            s.extend(faults);
        }
    }

    pub fn set_options(&self, options: SimOptions) {
        if let Ok(mut o) = self.state.options.lock() {
            *o = options;
        }
    }

    /// The `x-ragq-call-id` of every request answered successfully, in order.
    pub fn answered_call_ids(&self) -> Vec<String> {
        self.state
            .answered_call_ids
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Requests received, and those answered successfully.
    /// When each request arrived, in order.
    /// The latest requests (up to 10,000), oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        (self.state.log.lock())
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.state
            .arrivals
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    pub fn counts(&self) -> (u64, u64) {
        (
            self.state.requests.load(Ordering::Relaxed),
            self.state.successes.load(Ordering::Relaxed),
        )
    }
}

/// Binds and serves until `cancel` fires.
pub async fn spawn(
    listen: &str,
    options: SimOptions,
    cancel: CancellationToken,
) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState {
        options: Mutex::new(options),
        ..SimState::default()
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages/batches", post(batches::create))
        .route("/v1/messages/batches/{id}", get(batches::retrieve))
        .route("/v1/messages/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/messages/batches/{id}/results", get(batches::results))
        .route("/v1/files", post(batches::upload))
        .route("/v1/files/{id}/content", get(batches::content))
        .route("/v1/batches", post(batches::create_openai))
        .route("/v1/batches/{id}", get(batches::retrieve_openai))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/sim/script", post(add_script))
        .route("/sim/stats", get(stats))
        .with_state(state.clone());
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "sim provider stopped");
        }
    });
    Ok(SimHandle { addr, state })
}

async fn add_script(
    State(state): State<Arc<SimState>>,
    Json(faults): Json<Vec<Fault>>,
) -> StatusCode {
    if let Ok(mut s) = state.script.lock() {
        s.extend(faults);
    }
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<Arc<SimState>>) -> Json<serde_json::Value> {
    Json(json!({
        "requests": state.requests.load(Ordering::Relaxed),
        "successes": state.successes.load(Ordering::Relaxed),
    }))
}

/// Picks this request's fault: the script first, then the random rates.
fn next_fault(state: &SimState) -> (Option<Fault>, u64) {
    let scripted = state.script.lock().ok().and_then(|mut s| s.pop_front());
    let options = state.options.lock().map(|o| o.clone()).unwrap_or_default();
    if scripted.is_some() {
        return (scripted, options.latency_ms);
    }
    let mut rng = rand::thread_rng();
    let roll: f64 = rng.gen();
    let fault = if roll < options.error_rate {
        Some(Fault::Status { status: 500 })
    } else if roll < options.error_rate + options.rate_limit_rate {
        Some(Fault::RateLimited {
            retry_after_secs: options.retry_after_secs,
        })
    } else if roll < options.error_rate + options.rate_limit_rate + options.timeout_rate {
        Some(Fault::Hang)
    } else {
        None
    };
    (fault, options.latency_ms)
}

async fn chat(
    State(state): State<Arc<SimState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    state.log("/v1/chat/completions", &headers, &body);
    answer(&state, &headers, || {
        let request: WireChatRequest =
            serde_json::from_slice(&body).map_err(|e| format!("invalid request: {e}"))?;
        if request.messages.is_empty() {
            return Err("messages must not be empty".into());
        }
        Ok((reply(&request), |r: WireChatResponse| {
            Json(r).into_response()
        }))
    })
    .await
}

/// `POST /v1/messages`: the same model behind Anthropic's Messages shape.
async fn messages(
    State(state): State<Arc<SimState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    state.log("/v1/messages", &headers, &body);
    answer(&state, &headers, || {
        let wire: anthropic::WireRequest =
            serde_json::from_slice(&body).map_err(|e| format!("invalid request: {e}"))?;
        let request = anthropic_request(wire)?;
        let render = |r: WireChatResponse| Json(anthropic_message(&r)).into_response();
        Ok((reply(&request), render))
    })
    .await
}

/// An Anthropic-shape request as the chat request the sim answers.
fn anthropic_request(wire: anthropic::WireRequest) -> Result<WireChatRequest, String> {
    let mut messages: Vec<ChatMessage> = wire
        .system
        .map(|content| ChatMessage {
            role: "system".into(),
            content,
        })
        .into_iter()
        .collect();
    messages.extend(wire.messages.into_iter().map(|m| ChatMessage {
        role: m.role,
        content: m.content,
    }));
    if messages.iter().all(|m| m.role == "system") {
        return Err("messages must hold at least one user message".into());
    }
    Ok(WireChatRequest {
        model: wire.model,
        messages,
        max_tokens: Some(wire.max_tokens),
        temperature: wire.temperature,
    })
}

/// The sim's answer in Anthropic's message shape.
fn anthropic_message(r: &WireChatResponse) -> serde_json::Value {
    let id = r.id.as_deref().map(|id| id.replace("chatcmpl-", "msg_"));
    let choice = r.choices.first();
    let stop_reason = match choice.and_then(|c| c.finish_reason.as_deref()) {
        Some("length") => "max_tokens",
        _ => "end_turn",
    };
    let text = choice
        .and_then(|c| c.message.content.clone())
        .unwrap_or_default();
    let usage = r
        .usage
        .as_ref()
        .map(|u| json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}));
    json!({"id": id, "type": "message", "role": "assistant", "model": r.model,
           "content": [{"type": "text", "text": text}],
           "stop_reason": stop_reason, "stop_sequence": null, "usage": usage})
}

/// `POST /v1/embeddings`: deterministic vectors in which texts sharing words are close.
async fn embeddings(
    State(state): State<Arc<SimState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    state.log("/v1/embeddings", &headers, &body);
    answer(&state, &headers, || {
        let request: WireEmbeddingRequest =
            serde_json::from_slice(&body).map_err(|e| format!("invalid request: {e}"))?;
        if request.input.is_empty() || request.input.iter().any(|t| t.trim().is_empty()) {
            return Err("input must hold non-empty texts".into());
        }
        let dimension = embedding_dimension(&request.model);
        let data = request
            .input
            .iter()
            .enumerate()
            .map(|(index, text)| WireEmbedding {
                index,
                embedding: embed(text, dimension),
            })
            .collect();
        let prompt_tokens = request.input.iter().map(|t| count_tokens(t)).sum();
        let response = WireEmbeddingResponse {
            data,
            usage: Some(WireEmbeddingUsage { prompt_tokens }),
        };
        Ok((response, |r: WireEmbeddingResponse| Json(r).into_response()))
    })
    .await
}

/// The sim's embedding size for a model: a trailing `-<n>` in its id, else 256.
pub fn embedding_dimension(model: &str) -> usize {
    model
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .filter(|&n: &usize| (2..=4096).contains(&n))
        .unwrap_or(256)
}

/// A deterministic embedding: each lowercased word adds a signed unit at a hashed coordinate
/// (feature hashing), then the vector is normalized. Texts sharing words have positive cosine
/// similarity, growing with the words they share.
pub fn embed(text: &str, dimension: usize) -> Vec<f32> {
    let mut v = vec![0f32; dimension];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = fnv1a(word.to_lowercase().as_bytes());
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % dimension as u64) as usize] += sign;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else {
        v[0] = 1.0;
    }
    v
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Applies this request's fault and latency, then answers with `build`'s reply rendered in its
/// API shape, recording the call id of every success.
async fn answer<T, B, R>(state: &SimState, headers: &axum::http::HeaderMap, build: B) -> Response
where
    B: FnOnce() -> Result<(T, R), String>,
    R: FnOnce(T) -> Response,
{
    state.requests.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut a) = state.arrivals.lock() {
        a.push(std::time::Instant::now());
    }
    // A key with `revoked` in it is refused as a provider refuses a bad key (for testing what a
    // tenant's own key does when its provider refuses it).
    let credential = (headers
        .get("authorization")
        .or_else(|| headers.get("x-api-key")))
    .and_then(|v| v.to_str().ok())
    .unwrap_or_default();
    if credential.contains("revoked") {
        return error(401, "invalid api key");
    }
    let (fault, latency_ms) = next_fault(state);
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    match fault {
        Some(Fault::Status { status }) => return error(status, "simulated failure"),
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut r = error(429, "simulated rate limit");
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
        Some(Fault::Hang) => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            return error(504, "simulated hang");
        }
        None => {}
    }
    let (response, render) = match build() {
        Ok(built) => built,
        Err(refused) => return error(400, &refused),
    };
    state.successes.fetch_add(1, Ordering::Relaxed);
    let call_id = headers
        .get(ragq::providers::http::CALL_ID_HEADER)
        .and_then(|v| v.to_str().ok());
    if let (Some(id), Ok(mut ids)) = (call_id, state.answered_call_ids.lock()) {
        ids.push(id.to_string());
    }
    render(response)
}

fn error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        Json(json!({"error": {"message": message, "type": "sim"}})),
    )
        .into_response()
}

/// Counts tokens the way the sim bills them: whitespace-separated words, plus 3 per message.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The deterministic answer to a request.
pub fn reply(request: &WireChatRequest) -> WireChatResponse {
    let prompt = request
        .messages
        .last()
        .map(|m| m.content.as_str())
        .unwrap_or_default();
    let digest = ragq::tenants::hash_api_key(&format!("{}\n{prompt}", request.model));
    let words: Vec<&str> = prompt.split_whitespace().take(12).collect();
    let mut content = format!(
        "[{}:{}] {}",
        request.model,
        hex::encode(&digest[..4]),
        words.join(" ")
    );
    if let Some(max) = request.max_tokens {
        let kept: Vec<&str> = content.split_whitespace().take(max as usize).collect();
        content = kept.join(" ");
    }
    let prompt_tokens = request
        .messages
        .iter()
        .map(|m| count_tokens(&m.content) + 3)
        .sum();
    let completion_tokens = count_tokens(&content);
    // Truncated by max_tokens: the reason a real provider gives.
    let truncated = request
        .max_tokens
        .is_some_and(|max| content.split_whitespace().count() >= max as usize);
    WireChatResponse {
        id: Some(format!("chatcmpl-{}", hex::encode(&digest[4..16]))),
        object: Some("chat.completion".into()),
        created: Some(chrono::Utc::now().timestamp()),
        model: Some(request.model.clone()),
        choices: vec![WireChoice {
            index: 0,
            message: WireMessage {
                role: "assistant".into(),
                content: Some(content.clone()),
            },
            finish_reason: Some(if truncated { "length" } else { "stop" }.into()),
        }],
        usage: Some(WireUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: Some(prompt_tokens + completion_tokens),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_deterministic_and_carry_usage() {
        let req = WireChatRequest {
            model: "m".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "what is two plus two".into(),
            }],
            max_tokens: None,
            temperature: None,
        };
        let a = reply(&req);
        let b = reply(&req);
        let text = a.choices[0].message.content.clone().unwrap_or_default();
        assert_eq!(Some(text.clone()), b.choices[0].message.content);
        assert!(text.contains("what is two plus two"));
        let usage = a.usage.expect("usage");
        assert_eq!(usage.prompt_tokens, 5 + 3);
        assert_eq!(usage.completion_tokens, count_tokens(&text));
        assert_eq!(
            usage.total_tokens,
            Some(usage.prompt_tokens + usage.completion_tokens)
        );
        // The whole OpenAI shape: what SDKs read besides the text.
        assert!(a
            .id
            .as_deref()
            .is_some_and(|id| id.starts_with("chatcmpl-")));
        assert_eq!(a.object.as_deref(), Some("chat.completion"));
        assert_eq!(a.model.as_deref(), Some("m"));
        assert!(a.created.is_some_and(|t| t > 1_700_000_000));
        assert_eq!(a.choices[0].finish_reason.as_deref(), Some("stop"));
        let short = reply(&WireChatRequest {
            max_tokens: Some(2),
            ..req
        });
        assert_eq!(short.choices[0].finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn embeddings_bring_texts_that_share_words_close() {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let q = embed("How long do refunds take?", 256);
        let near = embed("Refunds take 14 days to arrive.", 256);
        let far = embed("Our office dog is called Biscuit.", 256);
        assert!((dot(&q, &q) - 1.0).abs() < 1e-5, "unit length");
        assert!(dot(&q, &near) > dot(&q, &far) + 0.2);
        assert_eq!(embed("same words", 64), embed("Same, words!", 64));
        assert_eq!(embedding_dimension("sim-embed"), 256);
        assert_eq!(embedding_dimension("sim-embed-64"), 64);
    }

    #[test]
    fn script_goes_first() {
        let state = SimState::default();
        state
            .script
            .lock()
            .expect("lock")
            .push_back(Fault::Status { status: 503 });
        assert_eq!(next_fault(&state).0, Some(Fault::Status { status: 503 }));
        assert_eq!(next_fault(&state).0, None);
    }
}
