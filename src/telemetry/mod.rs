//! What an operator sees of a process: logs (human-readable by default, JSON lines with
//! `--log-json`, level from `RUST_LOG`), Prometheus metrics ([`metrics`]) and OpenTelemetry
//! traces ([`traces`]).

pub mod metrics;
pub mod stats;
pub mod traces;

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Starts logging and, when asked for (see [`traces::wanted`]), trace export as `service`. Keep
/// the returned guard for the life of the process: dropping it flushes the spans still queued.
pub fn init(json: bool, service: &str, otlp_endpoint: Option<&str>) -> Option<traces::TraceExport> {
    // lapin's own logger reports a graceful close as an error; every lapin failure that matters
    // reaches ragq as a Result and is logged once, where it is handled.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=off,qdrant_edge=error"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(std::io::stderr),
        )
    } else {
        Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
    };
    let logs = logs.with_filter(filter);
    // Spans go to the trace exporter whatever the log level: ragq's spans are at info. Without
    // traces the logs layer stands alone: an absent (`None`) layer would declare interest in every
    // callsite and enable every span and event of every crate, only for the log filter to drop
    // them.
    let registry = tracing_subscriber::registry().with(logs);
    // A second init (tests, the demo) keeps the first subscriber.
    if !traces::wanted(otlp_endpoint) {
        let _ = registry.try_init();
        return None;
    }
    match traces::layer(service, otlp_endpoint) {
        Ok((layer, export)) => {
            let _ = registry.with(layer.with_filter(ragq_spans())).try_init();
            Some(export)
        }
        Err(e) => {
            eprintln!("ragq: traces are off: cannot start the OTLP exporter: {e}");
            let _ = registry.try_init();
            None
        }
    }
}

/// ragq's own spans, at info and above (dependencies' spans stay out of traces).
fn ragq_spans() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_target("ragq", LevelFilter::INFO)
        .with_target("ragq_workers", LevelFilter::INFO)
}
