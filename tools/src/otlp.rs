//! An OTLP/HTTP trace receiver (JSON encoding) on loopback, standing in for a collector: the
//! tests read the spans it got, `ragq bench --traces` gives the workers somewhere to export to.

use std::sync::{Arc, Mutex};

use axum::routing::post;
use tokio_util::sync::CancellationToken;

/// A span as an OTLP/JSON export carries it (ids in hex).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub name: String,
}

/// The receiver: its base URL (what `telemetry.otlp_endpoint` takes) and the spans it got.
#[derive(Clone)]
pub struct OtlpReceiver {
    url: String,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
}

impl OtlpReceiver {
    pub async fn spawn(cancel: CancellationToken) -> anyhow::Result<Self> {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| {
                let sink = Arc::clone(&sink);
                async move {
                    let Ok(export) = serde_json::from_slice::<serde_json::Value>(&body) else {
                        return (axum::http::StatusCode::BAD_REQUEST, "not OTLP/JSON");
                    };
                    let got = spans_of(&export);
                    if let Ok(mut all) = sink.lock() {
                        all.extend(got);
                    }
                    (axum::http::StatusCode::OK, "{}")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the OTLP receiver stopped");
            }
        });
        Ok(Self { url, spans })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The spans of one `ExportTraceServiceRequest` in JSON.
fn spans_of(export: &serde_json::Value) -> Vec<ExportedSpan> {
    let list = |v: &serde_json::Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for resource in list(export, "resourceSpans") {
        for scope in list(&resource, "scopeSpans") {
            for s in list(&scope, "spans") {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                out.push(ExportedSpan {
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent: text("parentSpanId"),
                    name: text("name"),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_read_from_an_export() {
        let export = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "4bf9", "spanId": "00f0", "parentSpanId": "", "name": "job"},
            {"traceId": "4bf9", "spanId": "00f1", "parentSpanId": "00f0", "name": "claim"}]}]}]});
        let spans = spans_of(&export);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1].parent, "00f0");
        assert_eq!(spans[1].name, "claim");
    }
}
