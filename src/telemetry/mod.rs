//! What an operator sees of a process: logs (human-readable by default, JSON lines with
//! `--log-json`, level from `RUST_LOG`) and Prometheus metrics ([`metrics`]).

pub mod metrics;

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    // lapin's own logger reports a graceful close as an error; every lapin failure that matters
    // reaches ragq as a Result and is logged once, where it is handled.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=off,qdrant_edge=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, the demo) keeps the first subscriber.
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}
