//! The providers' batch APIs, simulated (groundwork for deadline-aware batch routing), in both
//! shapes: Anthropic's Message Batches (`/v1/messages/batches`, requests in the body) and OpenAI's
//! Batches (a JSONL file uploaded to `/v1/files`, then `/v1/batches`, results in output and error
//! files).
//!
//! A batch ends after `batch_delay_ms`, each request answered as the synchronous endpoint would,
//! or failed at `batch_error_rate`. Requests are worked through evenly over the delay, so a batch
//! cancelled before it ends has answered its first requests and the rest are cancelled; one not
//! ended after `batch_expiry_ms` likewise ends with the rest expired (the provider bills what was
//! answered either way).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use ragq::providers::anthropic;
use ragq::providers::openai::{WireChatRequest, WireChatResponse};

use super::{anthropic_message, anthropic_request, reply, SimState};

/// Batches and uploaded files, by id.
#[derive(Debug, Default)]
pub struct Store {
    batches: HashMap<String, Batch>,
    files: HashMap<String, String>,
}

/// One batch, in either shape.
#[derive(Debug)]
pub struct Batch {
    id: String,
    shape: Shape,
    created: Instant,
    created_at: DateTime<Utc>,
    /// Each request's custom id, and the request (or why it cannot be one).
    requests: Vec<(String, Result<WireChatRequest, String>)>,
    delay: Duration,
    expiry: Option<Duration>,
    error_rate: f64,
    cancel_requested: bool,
    ended: Option<Ended>,
}

#[derive(Debug, Clone)]
enum Shape {
    Anthropic,
    OpenAi { input_file_id: String },
}

/// How a batch ended: when, why, and each request's outcome in request order.
#[derive(Debug)]
struct Ended {
    at: DateTime<Utc>,
    cut: Option<Cut>,
    outcomes: Vec<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Cancelled,
    Expired,
}

#[derive(Debug)]
enum Outcome {
    Answered(WireChatResponse),
    Failed(String),
    Cut(Cut),
}

impl Outcome {
    fn answered(&self) -> bool {
        matches!(self, Self::Answered(_))
    }
}

// ---- Anthropic: /v1/messages/batches ----

#[derive(Debug, Deserialize)]
pub(super) struct NewAnthropicBatch {
    requests: Vec<AnthropicRequest>,
}

#[derive(Debug, Deserialize)]
struct AnthropicRequest {
    custom_id: String,
    params: anthropic::WireRequest,
}

/// `POST /v1/messages/batches`.
pub(super) async fn create(
    State(state): State<Arc<SimState>>,
    body: axum::body::Bytes,
) -> Response {
    let new: NewAnthropicBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("invalid batch: {e}")),
    };
    let requests = (new.requests.into_iter())
        .map(|r| (r.custom_id, anthropic_request(r.params)))
        .collect();
    open(&state, Shape::Anthropic, requests, "msgbatch_sim")
}

/// `GET /v1/messages/batches/{id}`.
pub(super) async fn retrieve(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Response {
    with_batch(&state, &id, |b| Json(view(b)).into_response())
}

/// `POST /v1/messages/batches/{id}/cancel` (and OpenAI's `/v1/batches/{id}/cancel`).
pub(super) async fn cancel(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    with_batch(&state, &id, |b| {
        b.cancel_requested = true;
        advance(b);
        Json(view(b)).into_response()
    })
}

/// `GET /v1/messages/batches/{id}/results`: JSON lines, once the batch has ended.
pub(super) async fn results(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Response {
    with_batch(&state, &id, |b| match &b.ended {
        Some(ended) => {
            let lines = (b.requests.iter().zip(&ended.outcomes))
                .map(|((custom_id, _), o)| json!({"custom_id": custom_id, "result": anthropic_result(o)}));
            jsonl(lines)
        }
        None => refuse(StatusCode::CONFLICT, "the batch has not ended"),
    })
}

fn anthropic_result(o: &Outcome) -> Value {
    match o {
        Outcome::Answered(r) => json!({"type": "succeeded", "message": anthropic_message(r)}),
        Outcome::Failed(m) => json!({"type": "errored",
            "error": {"type": "error", "error": {"type": "api_error", "message": m}}}),
        Outcome::Cut(Cut::Cancelled) => json!({"type": "canceled"}),
        Outcome::Cut(Cut::Expired) => json!({"type": "expired"}),
    }
}

// ---- OpenAI: /v1/files and /v1/batches ----

/// `POST /v1/files` (multipart: `purpose` and `file`): keeps the file, answers its id.
pub(super) async fn upload(State(state): State<Arc<SimState>>, mut form: Multipart) -> Response {
    let mut content = None;
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("file") {
            content = field.text().await.ok();
        }
    }
    let Some(content) = content else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a multipart `file` field is required",
        );
    };
    let id = format!("file-sim{:016x}", rand::thread_rng().gen::<u64>());
    let bytes = content.len();
    if let Ok(mut store) = state.batches.lock() {
        store.files.insert(id.clone(), content);
    }
    Json(
        json!({"id": id, "object": "file", "bytes": bytes, "purpose": "batch",
                "created_at": Utc::now().timestamp()}),
    )
    .into_response()
}

/// `GET /v1/files/{id}/content`.
pub(super) async fn content(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Response {
    let found = state
        .batches
        .lock()
        .ok()
        .and_then(|s| s.files.get(&id).cloned());
    match found {
        Some(text) => ([("content-type", "application/jsonl")], text).into_response(),
        None => refuse(StatusCode::NOT_FOUND, "no such file"),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct NewOpenAiBatch {
    input_file_id: String,
    endpoint: String,
}

/// One line of an OpenAI batch input file.
#[derive(Debug, Deserialize)]
struct OpenAiLine {
    custom_id: String,
    body: WireChatRequest,
}

/// `POST /v1/batches`: a batch of the lines of an uploaded file.
pub(super) async fn create_openai(
    State(state): State<Arc<SimState>>,
    Json(new): Json<NewOpenAiBatch>,
) -> Response {
    if new.endpoint != "/v1/chat/completions" {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the sim batches /v1/chat/completions only",
        );
    }
    let file = state
        .batches
        .lock()
        .ok()
        .and_then(|s| s.files.get(&new.input_file_id).cloned());
    let Some(file) = file else {
        return refuse(StatusCode::NOT_FOUND, "no such input file");
    };
    let mut requests = Vec::new();
    for (n, line) in file.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        match serde_json::from_str::<OpenAiLine>(line) {
            Ok(l) => requests.push((l.custom_id, Ok(l.body))),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("line {}: {e}", n + 1)),
        }
    }
    let shape = Shape::OpenAi {
        input_file_id: new.input_file_id,
    };
    open(&state, shape, requests, "batch_sim")
}

/// `GET /v1/batches/{id}`: once ended, the output file holds the answers and the error file the
/// rest (each created then, as OpenAI does).
pub(super) async fn retrieve_openai(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Response {
    let Ok(mut store) = state.batches.lock() else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "sim state poisoned");
    };
    let Some(batch) = store.batches.get_mut(&id) else {
        return refuse(StatusCode::NOT_FOUND, "no such batch");
    };
    advance(batch);
    let files = batch.ended.as_ref().map(|e| openai_files(batch, e));
    let view = view(batch);
    if let Some((output, errors)) = files {
        store.files.insert(output.0, output.1);
        store.files.insert(errors.0, errors.1);
    }
    Json(view).into_response()
}

/// The output and error files of an ended batch: (id, JSON lines) each.
fn openai_files(b: &Batch, ended: &Ended) -> ((String, String), (String, String)) {
    let mut output = Vec::new();
    let mut errors = Vec::new();
    for ((custom_id, _), o) in b.requests.iter().zip(&ended.outcomes) {
        let line = |response: Value, error: Value| json!({"id": format!("batch_req_{custom_id}"), "custom_id": custom_id, "response": response, "error": error});
        match o {
            Outcome::Answered(r) => output.push(line(
                json!({"status_code": 200, "request_id": r.id, "body": r}),
                Value::Null,
            )),
            Outcome::Failed(m) => errors.push(line(
                json!({"status_code": 500, "request_id": null,
                       "body": {"error": {"message": m, "type": "server_error"}}}),
                Value::Null,
            )),
            Outcome::Cut(cut) => errors.push(line(
                Value::Null,
                json!({"code": if *cut == Cut::Expired { "batch_expired" } else { "batch_cancelled" },
                       "message": "the batch ended before this request ran"}),
            )),
        }
    }
    let text = |lines: Vec<Value>| {
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    (
        (format!("file-out-{}", b.id), text(output)),
        (format!("file-err-{}", b.id), text(errors)),
    )
}

// ---- shared ----

/// Starts a batch under the sim's current options; answers its view.
fn open(
    state: &SimState,
    shape: Shape,
    requests: Vec<(String, Result<WireChatRequest, String>)>,
    prefix: &str,
) -> Response {
    if requests.is_empty() || requests.len() > 100_000 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a batch holds 1 to 100,000 requests",
        );
    }
    let options = state.options.lock().map(|o| o.clone()).unwrap_or_default();
    let id = format!("{prefix}{:016x}", rand::thread_rng().gen::<u64>());
    let batch = Batch {
        id: id.clone(),
        shape,
        created: Instant::now(),
        created_at: Utc::now(),
        requests,
        delay: Duration::from_millis(options.batch_delay_ms),
        expiry: (options.batch_expiry_ms > 0)
            .then(|| Duration::from_millis(options.batch_expiry_ms)),
        error_rate: options.batch_error_rate,
        cancel_requested: false,
        ended: None,
    };
    let view = view(&batch);
    if let Ok(mut store) = state.batches.lock() {
        store.batches.insert(id, batch);
    }
    Json(view).into_response()
}

/// Runs `f` on batch `id`, brought up to date; 404 if there is none.
fn with_batch(state: &SimState, id: &str, f: impl FnOnce(&mut Batch) -> Response) -> Response {
    let Ok(mut store) = state.batches.lock() else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "sim state poisoned");
    };
    match store.batches.get_mut(id) {
        Some(batch) => {
            advance(batch);
            f(batch)
        }
        None => refuse(StatusCode::NOT_FOUND, "no such batch"),
    }
}

/// Ends the batch if its time has come: answered after its delay, expired after its expiry,
/// cancelled when asked.
fn advance(b: &mut Batch) {
    if b.ended.is_some() {
        return;
    }
    let age = b.created.elapsed();
    let expires = b.expiry.filter(|e| *e < b.delay && age >= *e);
    let cut = match (expires, b.cancel_requested) {
        (Some(_), _) => Some(Cut::Expired),
        (None, _) if age >= b.delay => None,
        (None, true) => Some(Cut::Cancelled),
        (None, false) => return,
    };
    // Requests are worked through evenly over the delay: those before the cut were answered.
    let at = expires.unwrap_or(age);
    let share = at.as_secs_f64() / b.delay.as_secs_f64().max(f64::MIN_POSITIVE);
    let done = match cut {
        Some(_) => (share.min(1.0) * b.requests.len() as f64).floor() as usize,
        None => b.requests.len(),
    };
    let mut rng = rand::thread_rng();
    let outcomes = (b.requests.iter().enumerate())
        .map(|(i, (_, request))| match (cut, request) {
            (Some(c), _) if i >= done => Outcome::Cut(c),
            (_, Err(m)) => Outcome::Failed(m.clone()),
            _ if rng.gen::<f64>() < b.error_rate => Outcome::Failed("simulated failure".into()),
            (_, Ok(r)) => Outcome::Answered(reply(r)),
        })
        .collect();
    b.ended = Some(Ended {
        at: Utc::now(),
        cut,
        outcomes,
    });
}

/// The batch as its API describes it.
fn view(b: &Batch) -> Value {
    let total = b.requests.len();
    let outcomes = b.ended.iter().flat_map(|e| &e.outcomes);
    let answered = outcomes.clone().filter(|o| o.answered()).count();
    let failed = outcomes
        .clone()
        .filter(|o| matches!(o, Outcome::Failed(_)))
        .count();
    let cut = |c: Cut| {
        outcomes
            .clone()
            .filter(|o| matches!(o, Outcome::Cut(x) if *x == c))
            .count()
    };
    let expires = b.created_at + chrono::Duration::hours(24);
    let ended_at = b.ended.as_ref().map(|e| e.at);
    match &b.shape {
        Shape::Anthropic => {
            let (status, processing) = match (&b.ended, b.cancel_requested) {
                (Some(_), _) => ("ended", 0),
                (None, true) => ("canceling", total),
                (None, false) => ("in_progress", total),
            };
            json!({
                "id": b.id, "type": "message_batch", "processing_status": status,
                "request_counts": {"processing": processing, "succeeded": answered,
                    "errored": failed, "canceled": cut(Cut::Cancelled), "expired": cut(Cut::Expired)},
                "created_at": b.created_at.to_rfc3339(), "expires_at": expires.to_rfc3339(),
                "ended_at": ended_at.map(|t| t.to_rfc3339()),
                "results_url": ended_at.map(|_| format!("/v1/messages/batches/{}/results", b.id)),
            })
        }
        Shape::OpenAi { input_file_id } => {
            let status = match (b.ended.as_ref().map(|e| e.cut), b.cancel_requested) {
                (Some(None), _) => "completed",
                (Some(Some(Cut::Expired)), _) => "expired",
                (Some(Some(Cut::Cancelled)), _) => "cancelled",
                (None, true) => "cancelling",
                (None, false) => "in_progress",
            };
            let ended = b.ended.is_some();
            json!({
                "id": b.id, "object": "batch", "endpoint": "/v1/chat/completions",
                "input_file_id": input_file_id, "completion_window": "24h", "status": status,
                "output_file_id": ended.then(|| format!("file-out-{}", b.id)),
                "error_file_id": ended.then(|| format!("file-err-{}", b.id)),
                "created_at": b.created_at.timestamp(), "expires_at": expires.timestamp(),
                "request_counts": {"total": total, "completed": answered,
                    "failed": if ended { total - answered } else { 0 }},
            })
        }
    }
}

fn jsonl(lines: impl Iterator<Item = Value>) -> Response {
    let text = lines.map(|l| l.to_string()).collect::<Vec<_>>().join("\n");
    ([("content-type", "application/x-jsonl")], text).into_response()
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let body =
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}});
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::{spawn, SimOptions};
    use serde_json::{json, Value};
    use tokio_util::sync::CancellationToken;

    fn message(i: usize) -> Value {
        json!({"model": "sim-small", "max_tokens": 20,
               "messages": [{"role": "user", "content": format!("question {i}")}]})
    }

    fn anthropic(n: usize) -> Value {
        let one = |i: usize| json!({"custom_id": format!("job-{i:02}"), "params": message(i)});
        json!({"requests": (0..n).map(one).collect::<Vec<_>>()})
    }

    async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, String) {
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    fn json_of(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// JSON lines sorted by custom id.
    fn lines(text: &str) -> Vec<Value> {
        let mut lines: Vec<Value> = text.lines().map(json_of).collect();
        lines.sort_by_key(|l| l["custom_id"].as_str().unwrap().to_string());
        lines
    }

    /// An Anthropic batch's result types, by custom id.
    async fn result_types(base: &str, id: &str) -> Vec<String> {
        let url = format!("{base}/v1/messages/batches/{id}/results");
        let (status, text) = call(reqwest::Method::GET, &url, None).await;
        assert_eq!(status, 200, "{text}");
        (lines(&text).iter())
            .map(|l| l["result"]["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn anthropic_batches_end_with_answers_or_are_cut_short_by_cancel_and_expiry() {
        let cancel = CancellationToken::new();
        let sim = spawn("127.0.0.1:0", SimOptions::default(), cancel.clone())
            .await
            .unwrap();
        let base = sim.base_url().trim_end_matches("/v1").to_string();
        let batches = format!("{base}/v1/messages/batches");
        let (post, get) = (reqwest::Method::POST, reqwest::Method::GET);
        let create = |n: usize| {
            let (post, batches) = (post.clone(), batches.clone());
            async move {
                let (status, made) = call(post, &batches, Some(anthropic(n))).await;
                assert_eq!(status, 200, "{made}");
                json_of(&made)["id"].as_str().unwrap().to_string()
            }
        };

        // No delay: ended at the first look, every request answered as /v1/messages would.
        let id = create(3).await;
        assert!(id.starts_with("msgbatch_"));
        let (_, seen) = call(get.clone(), &format!("{batches}/{id}"), None).await;
        let seen = json_of(&seen);
        assert_eq!(seen["processing_status"], "ended", "{seen}");
        assert_eq!(seen["request_counts"]["succeeded"], 3);
        assert_eq!(result_types(&base, &id).await, ["succeeded"; 3]);
        let url = format!("{batches}/{id}/results");
        let first = &lines(&call(get.clone(), &url, None).await.1)[0];
        assert!(first["result"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("question 0"));

        // A long batch cancelled at once: no results before it ends, then all canceled.
        sim.set_options(SimOptions {
            batch_delay_ms: 60_000,
            ..SimOptions::default()
        });
        let id = create(4).await;
        let (status, _) = call(get.clone(), &format!("{batches}/{id}/results"), None).await;
        assert_eq!(status, 409, "no results before the batch ends");
        let (_, cancelled) = call(post.clone(), &format!("{batches}/{id}/cancel"), None).await;
        assert_eq!(json_of(&cancelled)["processing_status"], "ended");
        assert_eq!(result_types(&base, &id).await, ["canceled"; 4]);

        // Expiry halfway through: the first half answered, the rest expired.
        sim.set_options(SimOptions {
            batch_delay_ms: 400,
            batch_expiry_ms: 200,
            ..SimOptions::default()
        });
        let id = create(10).await;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let types = result_types(&base, &id).await;
        assert_eq!(types[..5], ["succeeded"; 5], "{types:?}");
        assert_eq!(types[5..], ["expired"; 5], "{types:?}");

        // Every request errored at an error rate of 1.
        sim.set_options(SimOptions {
            batch_error_rate: 1.0,
            ..SimOptions::default()
        });
        let id = create(2).await;
        assert_eq!(result_types(&base, &id).await, ["errored"; 2]);
        cancel.cancel();
    }

    #[tokio::test]
    async fn openai_batches_read_an_uploaded_file_and_write_output_and_error_files() {
        let cancel = CancellationToken::new();
        let options = SimOptions {
            batch_delay_ms: 400,
            batch_expiry_ms: 200,
            ..SimOptions::default()
        };
        let sim = spawn("127.0.0.1:0", options, cancel.clone()).await.unwrap();
        let base = sim.base_url();
        let input: Vec<String> = (0..4)
            .map(|i| {
                json!({"custom_id": format!("job-{i:02}"), "method": "POST",
                       "url": "/v1/chat/completions", "body": message(i)})
                .to_string()
            })
            .collect();
        // The form OpenAI's SDKs send: `purpose`, then the file.
        let form = format!(
            "--b0undary\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n{}\r\n--b0undary--\r\n",
            input.join("\n")
        );
        let uploaded: Value = reqwest::Client::new()
            .post(format!("{base}/files"))
            .header("content-type", "multipart/form-data; boundary=b0undary")
            .body(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let file = uploaded["id"].as_str().unwrap();
        let (status, made) = call(
            reqwest::Method::POST,
            &format!("{base}/batches"),
            Some(
                json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"}),
            ),
        )
        .await;
        assert_eq!(status, 200, "{made}");
        let made = json_of(&made);
        assert_eq!(made["status"], "in_progress");
        let id = made["id"].as_str().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let (_, seen) = call(reqwest::Method::GET, &format!("{base}/batches/{id}"), None).await;
        let seen = json_of(&seen);
        assert_eq!(seen["status"], "expired", "{seen}");
        assert_eq!(
            seen["request_counts"],
            json!({"total": 4, "completed": 2, "failed": 2})
        );
        let read = |file: &str| {
            let url = format!("{base}/files/{file}/content");
            async move { lines(&call(reqwest::Method::GET, &url, None).await.1) }
        };
        let output = read(seen["output_file_id"].as_str().unwrap()).await;
        let ids: Vec<&str> = output
            .iter()
            .map(|l| l["custom_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["job-00", "job-01"]);
        assert_eq!(output[0]["response"]["status_code"], 200);
        assert!(
            output[0]["response"]["body"]["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .contains("question 0")
        );
        let errors = read(seen["error_file_id"].as_str().unwrap()).await;
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["error"]["code"], "batch_expired");
        cancel.cancel();
    }
}
