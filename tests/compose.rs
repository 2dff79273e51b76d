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
