//! docker-compose.yml runs the real thing: workers share a Qdrant server (never each its own
//! embedded store), the scheduler runs, and every service says what it is for. There is no Docker
//! engine on these machines, so the file is checked here instead of started.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_norway::Value;

fn compose() -> (String, Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut value: Value = serde_norway::from_str(&text).unwrap();
    // `<<: *ragq-env` merges the shared settings into a service's environment.
    value.apply_merge().unwrap();
    (text, value)
}

fn env_of<'a>(service: &'a Value, key: &str) -> Option<&'a str> {
    service["environment"][key].as_str()
}

#[test]
fn workers_share_the_qdrant_server_and_the_scheduler_runs() {
    let (_, file) = compose();
    let services = &file["services"];
    let worker = &services["worker"];
    assert_eq!(env_of(worker, "RAGQ_RETRIEVAL__STORE"), Some("qdrant"));
    let url = env_of(worker, "RAGQ_RETRIEVAL__QDRANT_URL").unwrap();
    assert!(url.starts_with("http://qdrant:6334"), "{url}");
    assert!(worker["depends_on"]["qdrant"].is_mapping());
    assert!(services["qdrant"]["image"]
        .as_str()
        .unwrap()
        .starts_with("qdrant/qdrant:v1."));
    let scheduler = &services["scheduler"];
    let command: Vec<&str> = scheduler["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(command.contains(&"scheduler"), "{command:?}");
    assert_eq!(env_of(scheduler, "RAGQ_RETRIEVAL__STORE"), Some("qdrant"));
    for name in ["worker", "api", "scheduler", "migrate"] {
        assert!(
            env_of(&services[name], "RAGQ_DATABASE__URL").is_some(),
            "{name} has no database"
        );
    }
}

#[test]
fn every_service_says_what_it_is_for() {
    let (text, file) = compose();
    let lines: Vec<&str> = text.lines().collect();
    for name in file["services"].as_mapping().unwrap().keys() {
        let name = name.as_str().unwrap();
        let at = lines
            .iter()
            .position(|l| *l == format!("  {name}:"))
            .unwrap();
        assert!(
            lines[at - 1].trim_start().starts_with('#'),
            "service {name} has no comment above it"
        );
    }
}

/// Metric names an expression uses: identifiers starting `ragq_` or `gen_ai_client_`, with a
/// histogram's `_bucket` / `_sum` / `_count` folded into its family.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = expr[i..].starts_with("ragq_") || expr[i..].starts_with("gen_ai_client_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            let name = &expr[i..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| ragq::telemetry::metrics::names::ALL.contains(f))
                .unwrap_or(name);
            names.push(family.to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_grafana_dashboard_uses_only_exported_metric_names() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/dashboards/ragq.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} reads no ragq metric");
            used.extend(names);
        }
    }
    for name in &used {
        assert!(
            ragq::telemetry::metrics::names::ALL.contains(&name.as_str()),
            "the dashboard reads {name}, which ragq does not export"
        );
    }
    // Every family is on the dashboard.
    for name in ragq::telemetry::metrics::names::ALL {
        assert!(used.contains(name), "{name} is on no panel");
    }
    assert_eq!(
        metric_names("rate(ragq_jobs_total[5m]) / x_ragq_no"),
        ["ragq_jobs_total"]
    );
}

#[test]
fn prometheus_scrapes_every_process_where_it_serves_metrics() {
    let (_, file) = compose();
    let services = &file["services"];
    let listen = env_of(&services["worker"], "RAGQ_TELEMETRY__METRICS_LISTEN").unwrap();
    let port = listen.rsplit(':').next().unwrap();
    assert_eq!(
        env_of(&services["scheduler"], "RAGQ_TELEMETRY__METRICS_LISTEN"),
        Some(listen)
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus.yml");
    let scrape: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let text = serde_json::to_string(&scrape).unwrap();
    assert!(
        text.contains(&format!("\"port\":{port}")),
        "workers on {port}: {text}"
    );
    assert!(text.contains(&format!("scheduler:{port}")), "{text}");
    let api_port = env_of(&services["api"], "RAGQ_API__LISTEN")
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert!(text.contains(&format!("api:{api_port}")), "{text}");
    let mounts = serde_json::to_string(&services["prometheus"]["volumes"]).unwrap();
    assert!(mounts.contains("./deploy/prometheus.yml"), "{mounts}");
    let grafana = serde_json::to_string(&services["grafana"]["volumes"]).unwrap();
    assert!(grafana.contains("./deploy/grafana/dashboards"), "{grafana}");
}
