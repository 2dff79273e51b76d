//! Prometheus metrics: every family ragq exports, the one place that records each, and the
//! `/metrics` endpoint.
//!
//! Recording goes through the `metrics` facade into `metrics-exporter-prometheus`'s recorder,
//! which keeps atomics per series: a record is a hash of its labels, a lookup and an atomic add
//! (labels that are not static strings are allocated for the lookup). Provider call metrics follow the OpenTelemetry
//! GenAI semantic conventions in Prometheus form (`gen_ai_client_*`); ragq's own are `ragq_*`.
//!
//! Tenants and features are unbounded in a SaaS, so their labels are bounded: the first
//! `telemetry.max_tenant_labels` (`max_feature_labels`) distinct values a process sees keep their
//! names, later ones are counted under `other` (default 100 each; 0 puts everything under
//! `other`). Nothing here carries content: labels are ids, kinds, models, providers and codes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Every family ragq exports, by name (the Grafana dashboard's test checks against these).
pub mod names {
    pub const GEN_AI_DURATION: &str = "gen_ai_client_operation_duration_seconds";
    pub const GEN_AI_TOKENS: &str = "gen_ai_client_token_usage";
    pub const JOBS: &str = "ragq_jobs_total";
    pub const JOB_DURATION: &str = "ragq_job_duration_seconds";
    pub const QUEUE_WAIT: &str = "ragq_queue_wait_seconds";
    pub const PROVIDER_CALLS: &str = "ragq_provider_calls_total";
    pub const PROVIDER_RETRIES: &str = "ragq_provider_retries_total";
    pub const RATE_LIMIT_WAITS: &str = "ragq_rate_limit_wait_seconds";
    pub const RATE_LIMIT_REFUSALS: &str = "ragq_rate_limit_refusals_total";
    pub const CIRCUIT_SKIPS: &str = "ragq_circuit_open_skips_total";
    pub const CIRCUIT_STATE: &str = "ragq_circuit_state";
    pub const BUDGET_REMAINING: &str = "ragq_budget_remaining_micros";
    pub const WEBHOOK_BACKLOG: &str = "ragq_webhook_backlog";
    pub const SPEND: &str = "ragq_spend_micros_total";
    pub const WEBHOOK_ATTEMPTS: &str = "ragq_webhook_attempts_total";
    pub const DEAD_LETTERS: &str = "ragq_dead_letters_total";
    pub const SCHEDULER_FIRINGS: &str = "ragq_scheduler_firings_total";
    pub const SCHEDULER_LEADER: &str = "ragq_scheduler_leader";
    pub const COMMIT_BATCH: &str = "ragq_commit_batch_size";
    pub const COMMIT_DURATION: &str = "ragq_commit_duration_seconds";
    pub const HTTP_REQUESTS: &str = "ragq_http_requests_total";
    pub const PII_FOUND: &str = "ragq_pii_found_total";
    pub const DISPATCH_WAIT: &str = "ragq_dispatch_wait_seconds";
    pub const CACHE_LOOKUPS: &str = "ragq_cache_lookups_total";
    pub const CACHE_SAVED: &str = "ragq_cache_saved_micros_total";
    pub const PROMPT_PINS: &str = "ragq_prompt_pins_total";

    /// Every name above.
    pub const ALL: [&str; 26] = [
        GEN_AI_DURATION,
        GEN_AI_TOKENS,
        JOBS,
        JOB_DURATION,
        QUEUE_WAIT,
        PROVIDER_CALLS,
        PROVIDER_RETRIES,
        RATE_LIMIT_WAITS,
        RATE_LIMIT_REFUSALS,
        CIRCUIT_SKIPS,
        CIRCUIT_STATE,
        BUDGET_REMAINING,
        WEBHOOK_BACKLOG,
        SPEND,
        WEBHOOK_ATTEMPTS,
        DEAD_LETTERS,
        SCHEDULER_FIRINGS,
        SCHEDULER_LEADER,
        COMMIT_BATCH,
        COMMIT_DURATION,
        HTTP_REQUESTS,
        PII_FOUND,
        DISPATCH_WAIT,
        CACHE_LOOKUPS,
        CACHE_SAVED,
        PROMPT_PINS,
    ];
}

/// How many distinct tenants and features keep their own label values in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelLimits {
    pub tenants: usize,
    pub features: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        Self {
            tenants: 100,
            features: 100,
        }
    }
}

struct Recorder {
    handle: PrometheusHandle,
    tenants: BoundedLabel,
    features: BoundedLabel,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Installs the process's recorder (once: later calls keep the first one's limits) and returns
/// the handle that renders it.
pub fn install(limits: LabelLimits) -> PrometheusHandle {
    let recorder = RECORDER.get_or_init(|| {
        let handle = build().unwrap_or_else(|e| {
            // Another recorder is installed (a test harness): render an empty one of our own.
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics stays empty");
            PrometheusBuilder::new().build_recorder().handle()
        });
        Recorder {
            handle,
            tenants: BoundedLabel::new(limits.tenants),
            features: BoundedLabel::new(limits.features),
        }
    });
    recorder.handle.clone()
}

fn build() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    // Histograms as Prometheus histograms (buckets), so they sum across processes.
    let seconds = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let tokens = [
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
    ];
    let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(names::GEN_AI_TOKENS.into()), &tokens)?
        .set_buckets_for_metric(Matcher::Full(names::COMMIT_BATCH.into()), &batch)?
        .install_recorder()
}

/// The exposition text of everything recorded in this process.
pub fn render() -> String {
    RECORDER
        .get()
        .map(|r| r.handle.render())
        .unwrap_or_default()
}

/// Serves `GET /metrics` on `addr` until `cancel`; returns the bound address. Also runs the
/// recorder's upkeep (which the exporter's own listener would do).
pub async fn serve(addr: SocketAddr, cancel: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(metrics_page));
    let stop = cancel.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    tokio::spawn(upkeep(cancel));
    Ok(bound)
}

/// The `/metrics` handler, for any axum router.
/// The process's metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"))
)]
pub async fn metrics_page() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    )
}

async fn upkeep(cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if let Some(r) = RECORDER.get() {
            r.handle.run_upkeep();
        }
    }
}

/// A label whose first `limit` distinct values are kept and the rest reported as `other`.
struct BoundedLabel {
    limit: usize,
    seen: RwLock<HashSet<String>>,
}

impl BoundedLabel {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: RwLock::new(HashSet::new()),
        }
    }

    fn value(&self, value: &str) -> String {
        // Every booked call asks: values already seen take only the shared lock.
        let known = self.seen.read().unwrap_or_else(PoisonError::into_inner);
        if known.contains(value) {
            return value.to_string();
        }
        drop(known);
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() < self.limit {
            seen.insert(value.to_string());
            return value.to_string();
        }
        "other".to_string()
    }
}

fn tenant_label(tenant: &str) -> String {
    RECORDER
        .get()
        .map_or_else(|| "other".into(), |r| r.tenants.value(tenant))
}

fn feature_label(feature: &str) -> String {
    RECORDER
        .get()
        .map_or_else(|| "other".into(), |r| r.features.value(feature))
}

/// Whether a recorder is installed: without one, nothing below builds its labels (the facade
/// would discard them anyway), so metrics that are off cost the job path nothing.
fn recording() -> bool {
    RECORDER.get().is_some()
}

/// A job's attempt ended and its outcome was committed: `succeeded`, `failed` or `retried`.
pub fn job_finished(kind: &'static str, outcome: &'static str, in_worker: Duration) {
    if !recording() {
        return;
    }
    counter!(names::JOBS, "kind" => kind, "outcome" => outcome).increment(1);
    histogram!(names::JOB_DURATION, "kind" => kind, "outcome" => outcome)
        .record(in_worker.as_secs_f64());
}

/// How long a delivered message waited in the queues since it was published (a retry's wait
/// starts at its republish).
pub fn queue_wait(kind: &'static str, wait: Duration) {
    if !recording() {
        return;
    }
    histogram!(names::QUEUE_WAIT, "kind" => kind).record(wait.as_secs_f64());
}

/// How long a job waited from its acceptance to a worker taking its first attempt: what fair
/// share bounds for each tenant.
pub fn dispatch_wait(tenant: &str, wait: Duration) {
    if !recording() {
        return;
    }
    histogram!(names::DISPATCH_WAIT, "tenant" => tenant_label(tenant)).record(wait.as_secs_f64());
}

/// One request to a provider (each retry is one): its duration, and its error type if it failed.
pub fn provider_request(
    operation: &'static str,
    provider: &str,
    model: &str,
    error_type: Option<&'static str>,
    elapsed: Duration,
) {
    if !recording() {
        return;
    }
    let labels = [
        ("gen_ai_operation_name", operation.to_string()),
        ("gen_ai_provider_name", provider.to_string()),
        ("gen_ai_request_model", model.to_string()),
        ("error_type", error_type.unwrap_or("").to_string()),
    ];
    histogram!(names::GEN_AI_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// The billable tokens of an answered call.
pub fn token_usage(operation: &'static str, provider: &str, model: &str, tokens: (u64, u64)) {
    if !recording() {
        return;
    }
    let (input, output) = tokens;
    for (token_type, n) in [("input", input), ("output", output)] {
        if n == 0 && token_type == "output" {
            continue;
        }
        let labels = [
            ("gen_ai_operation_name", operation.to_string()),
            ("gen_ai_provider_name", provider.to_string()),
            ("gen_ai_request_model", model.to_string()),
            ("gen_ai_token_type", token_type.to_string()),
        ];
        histogram!(names::GEN_AI_TOKENS, &labels).record(n as f64);
    }
}

/// A call to one model ended (after its retries): `ok`, or the error code it ended with.
pub fn provider_call(provider: &str, model: &str, outcome: &'static str, attempts: u32) {
    if !recording() {
        return;
    }
    let labels = [
        ("provider", provider.to_string()),
        ("model", model.to_string()),
        ("outcome", outcome.to_string()),
    ];
    counter!(names::PROVIDER_CALLS, &labels).increment(1);
    if attempts > 1 {
        let labels = [
            ("provider", provider.to_string()),
            ("model", model.to_string()),
        ];
        counter!(names::PROVIDER_RETRIES, &labels).increment(u64::from(attempts - 1));
    }
}

/// An attempt waited for a slot under the model's rate limits.
pub fn rate_limit_wait(model: &str, wait: Duration) {
    if !recording() {
        return;
    }
    histogram!(names::RATE_LIMIT_WAITS, "model" => model.to_string()).record(wait.as_secs_f64());
}

/// An attempt was not sent: the model's next slot was too far away.
pub fn rate_limit_refused(model: &str) {
    if !recording() {
        return;
    }
    counter!(names::RATE_LIMIT_REFUSALS, "model" => model.to_string()).increment(1);
}

/// A candidate was skipped because its circuit breaker is open.
pub fn circuit_skipped(model: &str) {
    if !recording() {
        return;
    }
    counter!(names::CIRCUIT_SKIPS, "model" => model.to_string()).increment(1);
}

/// A model's circuit breaker in this process: 0 closed, 1 half-open (one trial call), 2 open.
pub fn circuit_state(model: &str, state: u8) {
    if !recording() {
        return;
    }
    gauge!(names::CIRCUIT_STATE, "model" => model.to_string()).set(f64::from(state));
}

/// Database-wide figures the scheduler's leader refreshes: deliveries waiting to be sent, and
/// what each budget (of tenants and features that have their own labels) has left this period
/// under its soft and hard limits.
pub async fn refresh_from_database(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let backlog: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'")
            .fetch_one(pool)
            .await?;
    gauge!(names::WEBHOOK_BACKLOG).set(backlog as f64);
    let budgets: Vec<BudgetLeft> = sqlx::query_as(
        "SELECT b.tenant_id, b.feature, b.period, b.soft_limit_micros, b.hard_limit_micros, \
                coalesce(u.cost_micros, 0) AS spent \
         FROM budgets b LEFT JOIN budget_usage u ON u.budget_id = b.id \
          AND u.period_start = date_trunc(b.period, now() AT TIME ZONE 'UTC')::date",
    )
    .fetch_all(pool)
    .await?;
    for b in budgets {
        let (tenant, feature) = (tenant_label(&b.tenant_id), feature_label(&b.feature));
        // A gauge cannot add up several budgets under `other`: those stay out.
        if tenant == "other" || feature == "other" {
            continue;
        }
        for (limit, micros) in [("soft", b.soft_limit_micros), ("hard", b.hard_limit_micros)] {
            let Some(micros) = micros else { continue };
            let labels = [
                ("tenant", tenant.clone()),
                ("feature", feature.clone()),
                ("period", b.period.clone()),
                ("limit", limit.to_string()),
            ];
            gauge!(names::BUDGET_REMAINING, &labels).set((micros - b.spent) as f64);
        }
    }
    Ok(())
}

/// A budget's limits and what its current period has spent.
#[derive(sqlx::FromRow)]
struct BudgetLeft {
    tenant_id: String,
    feature: String,
    period: String,
    soft_limit_micros: Option<i64>,
    hard_limit_micros: Option<i64>,
    spent: i64,
}

/// Money booked to the ledger, in micro-dollars.
pub fn spend(tenant: &str, feature: &str, model: &str, micros: i64) {
    micros_by_tenant(names::SPEND, tenant, feature, model, micros);
}

/// Adds `micros` to family `name`'s series of (tenant, feature, model).
fn micros_by_tenant(name: &'static str, tenant: &str, feature: &str, model: &str, micros: i64) {
    if !recording() {
        return;
    }
    let Ok(micros) = u64::try_from(micros) else {
        return;
    };
    let labels = [
        ("tenant", tenant_label(tenant)),
        ("feature", feature_label(feature)),
        ("model", model.to_string()),
    ];
    counter!(name, &labels).increment(micros);
}

/// One response cache lookup: `exact` or `semantic`, and whether it `hit`, `miss`ed or failed
/// (`error`: the call went to a provider).
pub fn cache_lookup(mode: &'static str, outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!(names::CACHE_LOOKUPS, "mode" => mode, "outcome" => outcome).increment(1);
}

/// What a call answered from the cache saved: its cost at the answering model's price.
pub fn cache_saved(tenant: &str, feature: &str, model: &str, micros: i64) {
    micros_by_tenant(names::CACHE_SAVED, tenant, feature, model, micros);
}

/// One job naming saved prompts, resolved where it was accepted (`api`, `queue` or `pipeline`):
/// `pinned`, `refused` (the job's fault) or `unavailable` (the database's).
pub fn prompt_pin(source: &'static str, outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!(names::PROMPT_PINS, "source" => source, "outcome" => outcome).increment(1);
}

/// One webhook attempt: `delivered`, `failed` (to be retried) or `exhausted` (no attempts left).
pub fn webhook_attempt(outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!(names::WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(1);
}

/// Personal data a redaction policy found in a job: `count` values of `kind` (a built-in kind or
/// an operator's custom one: a bounded set), handled in `mode`.
pub fn pii_found(kind: &str, mode: &'static str, count: u32) {
    if !recording() {
        return;
    }
    let labels = [("kind", kind.to_string()), ("mode", mode.to_string())];
    counter!(names::PII_FOUND, &labels).increment(u64::from(count));
}

/// A message went to the dead-letter queue; `reason` starts with its code (`code: details`).
pub fn dead_letter(reason: &str) {
    if !recording() {
        return;
    }
    let code = crate::queue::dead_letters::reason_code(reason);
    counter!(names::DEAD_LETTERS, "reason" => code).increment(1);
}

/// The scheduler fired `runs` pipeline runs.
pub fn scheduler_fired(runs: u64) {
    if !recording() {
        return;
    }
    counter!(names::SCHEDULER_FIRINGS).increment(runs);
}

/// Whether this scheduler holds the leader lease.
pub fn scheduler_leader(leading: bool) {
    if !recording() {
        return;
    }
    gauge!(names::SCHEDULER_LEADER).set(if leading { 1.0 } else { 0.0 });
}

/// One group commit: how many items it wrote and how long it took.
pub fn commit(kind: &'static str, size: usize, elapsed: Duration) {
    if !recording() {
        return;
    }
    histogram!(names::COMMIT_BATCH, "kind" => kind).record(size as f64);
    histogram!(names::COMMIT_DURATION, "kind" => kind).record(elapsed.as_secs_f64());
}

/// One HTTP request to the api: its route (as declared, not the path) and status.
pub fn http_request(route: &str, status: u16) {
    if !recording() {
        return;
    }
    let labels = [("route", route.to_string()), ("status", status.to_string())];
    counter!(names::HTTP_REQUESTS, &labels).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_past_the_limit_are_other() {
        let label = BoundedLabel::new(2);
        assert_eq!(label.value("a"), "a");
        assert_eq!(label.value("b"), "b");
        assert_eq!(label.value("c"), "other");
        assert_eq!(label.value("a"), "a", "a value seen first keeps its name");
        assert_eq!(BoundedLabel::new(0).value("a"), "other");
    }
}
