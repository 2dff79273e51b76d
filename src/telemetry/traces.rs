//! Traces: ragq's `tracing` spans exported over OTLP (HTTP, JSON) to any OpenTelemetry backend,
//! and the W3C `traceparent` that carries a trace across the queue.
//!
//! On when `telemetry.otlp_endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `…_TRACES_ENDPOINT`) is set. A job is one trace: the `job` span from delivery to ack, with
//! `claim`, `embed`, `search`, `provider_call` (one per model tried) and its `provider_request`s
//! (one per attempt), `commit` and `webhook_attempt` beneath it. A submitter's `traceparent`
//! (AMQP header, or HTTP header on `POST /v1/jobs`, which the api passes on) makes the job a child
//! of the submitter's trace; a scheduled job is the child of its `pipeline_run` span, whose
//! context is stored with its outbox message. Spans carry ids, kinds, models, sizes, tokens, costs and codes, never
//! prompts, answers or secrets.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (AMQP and HTTP) that carries a trace's context.
pub const TRACEPARENT: &str = "traceparent";

/// Keeps the exporter alive; dropping it flushes the spans still queued.
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl Drop for TraceExport {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("ragq: flushing traces at exit failed: {e}");
        }
    }
}

/// Whether traces are asked for: by config, or by the standard environment variables.
pub fn wanted(otlp_endpoint: Option<&str>) -> bool {
    otlp_endpoint.is_some()
        || [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

/// The OpenTelemetry layer for `service`, exporting to `otlp_endpoint` (a base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is; `/v1/traces` is added) or where the environment says.
pub fn layer<S>(
    service: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    TraceExport,
)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
        .with_headers(HashMap::new());
    if let Some(base) = otlp_endpoint {
        builder = builder.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = builder.build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("ragq");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, TraceExport { provider }))
}

/// Makes `span` a child of the trace `traceparent` names (a malformed one is ignored).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else { return };
    let mut carrier = HashMap::new();
    carrier.insert(TRACEPARENT.to_string(), value.to_string());
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

/// The `traceparent` of `span`, to send on with a message (none when traces are off).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}
