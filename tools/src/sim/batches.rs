//! Anthropic's Message Batches API, simulated (groundwork for deadline-aware batch routing): a
//! batch of requests is created and ends after `batch_delay_ms`, each request answered as
//! `/v1/messages` would, or `errored` at `batch_error_rate`. Requests are worked through evenly
//! over the delay, so a batch cancelled before it ends has answered its first requests and the
//! rest are `canceled`; one not ended after `batch_expiry_ms` likewise ends with the rest
//! `expired`. Results are JSON lines, one per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use ragq::providers::anthropic;

use super::{anthropic_message, anthropic_request, reply, SimState};

/// One batch: its requests, when it was made, and how it ended (once it has).
#[derive(Debug)]
pub struct Batch {
    id: String,
    created: Instant,
    created_at: chrono::DateTime<chrono::Utc>,
    requests: Vec<BatchRequest>,
    delay: Duration,
    expiry: Option<Duration>,
    error_rate: f64,
    cancel_requested: bool,
    ended: Option<Ended>,
}

#[derive(Debug, Deserialize)]
struct BatchRequest {
    custom_id: String,
    params: anthropic::WireRequest,
}

/// How a batch ended: when, and one result line per request.
#[derive(Debug)]
struct Ended {
    at: chrono::DateTime<chrono::Utc>,
    results: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct NewBatch {
    requests: Vec<BatchRequest>,
}

/// `POST /v1/messages/batches`.
pub(super) async fn create(
    State(state): State<Arc<SimState>>,
    body: axum::body::Bytes,
) -> Response {
    let new: NewBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("invalid batch: {e}")),
    };
    if new.requests.is_empty() || new.requests.len() > 100_000 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a batch holds 1 to 100,000 requests",
        );
    }
    let options = state.options.lock().map(|o| o.clone()).unwrap_or_default();
    let id = format!("msgbatch_sim{:016x}", rand::thread_rng().gen::<u64>());
    let batch = Batch {
        id: id.clone(),
        created: Instant::now(),
        created_at: chrono::Utc::now(),
        requests: new.requests,
        delay: Duration::from_millis(options.batch_delay_ms),
        expiry: (options.batch_expiry_ms > 0)
            .then(|| Duration::from_millis(options.batch_expiry_ms)),
        error_rate: options.batch_error_rate,
        cancel_requested: false,
        ended: None,
    };
    let view = view(&batch);
    if let Ok(mut batches) = state.batches.lock() {
        batches.insert(id, batch);
    }
    Json(view).into_response()
}

/// `GET /v1/messages/batches/{id}`.
pub(super) async fn retrieve(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Response {
    with_batch(&state, &id, |b| Json(view(b)).into_response())
}

/// `POST /v1/messages/batches/{id}/cancel`: the batch ends now, its requests canceled (a batch
/// that has ended is left as it is).
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
            let lines: Vec<String> = ended.results.iter().map(Value::to_string).collect();
            ([("content-type", "application/x-jsonl")], lines.join("\n")).into_response()
        }
        None => refuse(StatusCode::CONFLICT, "the batch has not ended"),
    })
}

/// Runs `f` on batch `id`, brought up to date; 404 if there is none.
fn with_batch(state: &SimState, id: &str, f: impl FnOnce(&mut Batch) -> Response) -> Response {
    let Ok(mut batches) = state.batches.lock() else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "sim state poisoned");
    };
    match batches.get_mut(id) {
        Some(batch) => {
            advance(batch);
            f(batch)
        }
        None => refuse(StatusCode::NOT_FOUND, "no such batch"),
    }
}

/// Ends the batch if its time has come: answered after its delay, expired after its expiry,
/// canceled when asked.
fn advance(b: &mut Batch) {
    if b.ended.is_some() {
        return;
    }
    let age = b.created.elapsed();
    let expired = b.expiry.is_some_and(|e| age >= e && e < b.delay);
    let outcome = if age >= b.delay && !expired {
        None
    } else if expired {
        Some("expired")
    } else if b.cancel_requested {
        Some("canceled")
    } else {
        return;
    };
    // Requests are worked through evenly over the delay: a batch cut short has answered its
    // first ones (the provider bills those), and the rest are canceled or expired.
    let cut = match (outcome, b.expiry) {
        (Some("expired"), Some(expiry)) => expiry,
        _ => age,
    };
    let share = cut.as_secs_f64() / b.delay.as_secs_f64().max(f64::MIN_POSITIVE);
    let done = (share.min(1.0) * b.requests.len() as f64).floor() as usize;
    let mut rng = rand::thread_rng();
    let results = (b.requests.iter().enumerate())
        .map(|(i, r)| {
            let result = match outcome {
                Some(kind) if i >= done => json!({"type": kind}),
                _ if rng.gen::<f64>() < b.error_rate => json!({"type": "errored",
                    "error": {"type": "error", "error": {"type": "api_error", "message": "simulated failure"}}}),
                _ => answer(&r.params),
            };
            json!({"custom_id": r.custom_id, "result": result})
        })
        .collect();
    b.ended = Some(Ended {
        at: chrono::Utc::now(),
        results,
    });
}

/// One request's result, as `/v1/messages` would answer it.
fn answer(params: &anthropic::WireRequest) -> Value {
    let wire = anthropic::WireRequest {
        model: params.model.clone(),
        max_tokens: params.max_tokens,
        system: params.system.clone(),
        messages: (params.messages.iter())
            .map(|m| anthropic::WireMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect(),
        temperature: params.temperature,
    };
    match anthropic_request(wire) {
        Ok(request) => json!({"type": "succeeded", "message": anthropic_message(reply(&request))}),
        Err(message) => json!({"type": "errored",
            "error": {"type": "error", "error": {"type": "invalid_request_error", "message": message}}}),
    }
}

/// The batch as the API describes it.
fn view(b: &Batch) -> Value {
    let total = b.requests.len();
    let count = |kind: &str| {
        (b.ended.iter())
            .flat_map(|e| &e.results)
            .filter(|r| r["result"]["type"] == kind)
            .count()
    };
    let (status, processing) = match (&b.ended, b.cancel_requested) {
        (Some(_), _) => ("ended", 0),
        (None, true) => ("canceling", total),
        (None, false) => ("in_progress", total),
    };
    let expires = b.created_at + chrono::Duration::hours(24);
    json!({
        "id": b.id, "type": "message_batch", "processing_status": status,
        "request_counts": {"processing": processing, "succeeded": count("succeeded"),
            "errored": count("errored"), "canceled": count("canceled"), "expired": count("expired")},
        "created_at": b.created_at.to_rfc3339(),
        "expires_at": expires.to_rfc3339(),
        "ended_at": b.ended.as_ref().map(|e| e.at.to_rfc3339()),
        "cancel_initiated_at": null,
        "results_url": b.ended.as_ref().map(|_| format!("/v1/messages/batches/{}/results", b.id)),
    })
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

    fn requests(n: usize) -> Value {
        let one = |i: usize| {
            json!({"custom_id": format!("job-{i}/1/0"), "params": {"model": "sim-small",
                "max_tokens": 20, "messages": [{"role": "user", "content": format!("question {i}")}]}})
        };
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

    /// The result types of a batch's results, by custom id order.
    async fn result_types(base: &str, id: &str) -> Vec<String> {
        let (status, text) = call(
            reqwest::Method::GET,
            &format!("{base}/v1/messages/batches/{id}/results"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let mut lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines.sort_by_key(|l| l["custom_id"].as_str().unwrap().to_string());
        (lines.iter())
            .map(|l| l["result"]["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_batch_ends_with_answers_or_is_cut_short_by_cancel_and_expiry() {
        let cancel = CancellationToken::new();
        let sim = spawn("127.0.0.1:0", SimOptions::default(), cancel.clone())
            .await
            .unwrap();
        let base = sim.base_url().trim_end_matches("/v1").to_string();
        let batches = format!("{base}/v1/messages/batches");
        let post = reqwest::Method::POST;

        // No delay: ended at the first look, every request answered as /v1/messages would.
        let (status, made) = call(post.clone(), &batches, Some(requests(3))).await;
        assert_eq!(status, 200, "{made}");
        let made: Value = serde_json::from_str(&made).unwrap();
        let id = made["id"].as_str().unwrap();
        assert!(id.starts_with("msgbatch_"));
        let (_, seen) = call(reqwest::Method::GET, &format!("{batches}/{id}"), None).await;
        let seen: Value = serde_json::from_str(&seen).unwrap();
        assert_eq!(seen["processing_status"], "ended", "{seen}");
        assert_eq!(seen["request_counts"]["succeeded"], 3);
        assert_eq!(result_types(&base, id).await, ["succeeded"; 3]);

        // A long batch cancelled at once: nothing answered, everything canceled.
        sim.set_options(SimOptions {
            batch_delay_ms: 60_000,
            ..SimOptions::default()
        });
        let (_, made) = call(post.clone(), &batches, Some(requests(4))).await;
        let id = serde_json::from_str::<Value>(&made).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, _) = call(
            reqwest::Method::GET,
            &format!("{batches}/{id}/results"),
            None,
        )
        .await;
        assert_eq!(status, 409, "no results before the batch ends");
        let (_, canceled) = call(post.clone(), &format!("{batches}/{id}/cancel"), None).await;
        let canceled: Value = serde_json::from_str(&canceled).unwrap();
        assert_eq!(canceled["processing_status"], "ended");
        assert_eq!(result_types(&base, &id).await, ["canceled"; 4]);

        // Expiry halfway through a batch: the first half answered, the rest expired.
        sim.set_options(SimOptions {
            batch_delay_ms: 400,
            batch_expiry_ms: 200,
            ..SimOptions::default()
        });
        let (_, made) = call(post.clone(), &batches, Some(requests(10))).await;
        let id = serde_json::from_str::<Value>(&made).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let types = result_types(&base, &id).await;
        let answered = types.iter().filter(|t| *t == "succeeded").count();
        let expired = types.iter().filter(|t| *t == "expired").count();
        assert_eq!(answered + expired, 10, "{types:?}");
        assert_eq!(answered, 5, "half answered at expiry: {types:?}");

        // Every request errored at an error rate of 1.
        sim.set_options(SimOptions {
            batch_error_rate: 1.0,
            ..SimOptions::default()
        });
        let (_, made) = call(post, &batches, Some(requests(2))).await;
        let id = serde_json::from_str::<Value>(&made).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(result_types(&base, &id).await, ["errored"; 2]);
        cancel.cancel();
    }
}
