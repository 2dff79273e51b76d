//! A webhook receiver for the demo, benchmarks and tests: it records every delivery and checks its
//! signature the way a tenant's endpoint should (Standard Webhooks, 5-minute tolerance).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio_util::sync::CancellationToken;

use ragq::webhooks::signature;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct ReceivedWebhook {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: String,
    /// `Some(true)` when the signature verified with the secret of the tenant named in the body.
    pub verified: Option<bool>,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct ReceiverState {
    received: Mutex<Vec<ReceivedWebhook>>,
    secrets: Mutex<HashMap<String, String>>,
    refuse_next: Mutex<u32>,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl WebhookReceiver {
    /// Binds `127.0.0.1:0` and serves `POST /hook` until `cancel` fires.
    pub async fn spawn(cancel: CancellationToken) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "webhook receiver stopped");
            }
        });
        Ok(Self { addr, state })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Registers a tenant's secret so its deliveries are verified.
    pub fn trust(&self, tenant: &str, secret: &str) {
        if let Ok(mut s) = self.state.secrets.lock() {
            s.insert(tenant.to_string(), secret.to_string());
        }
    }

    /// Answers 503 to the next `n` deliveries (a receiver outage).
    pub fn refuse_next(&self, n: u32) {
        if let Ok(mut r) = self.state.refuse_next.lock() {
            *r = n;
        }
    }

    pub fn received(&self) -> Vec<ReceivedWebhook> {
        self.state
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().map(|r| r.len()).unwrap_or(0)
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    if let Ok(mut refuse) = state.refuse_next.lock() {
        if *refuse > 0 {
            *refuse -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut hook = ReceivedWebhook {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or(0),
        signature: header("webhook-signature"),
        body,
        verified: None,
        at: Instant::now(),
    };
    let tenant = serde_json::from_str::<serde_json::Value>(&hook.body)
        .ok()
        .and_then(|v| v["data"]["tenant"].as_str().map(str::to_string));
    let secret = tenant.and_then(|t| state.secrets.lock().ok()?.get(&t).cloned());
    if let Some(secret) = secret {
        let now = chrono::Utc::now().timestamp();
        let ok = signature::verify(
            &secret,
            &hook.id,
            hook.timestamp,
            &hook.signature,
            hook.body.as_bytes(),
            now,
            300,
        );
        hook.verified = Some(ok.is_ok());
    }
    if let Ok(mut r) = state.received.lock() {
        r.push(hook);
    }
    StatusCode::NO_CONTENT
}
