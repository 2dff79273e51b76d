//! ragq tried as a hostile tenant would: over a thousand generated malformed or malicious HTTP
//! requests and AMQP messages (bad JSON, wrong types, huge and deep bodies, control characters,
//! every URL trick, forged tenants, users and publisher headers). Each gets a 4xx or a dead-letter
//! reason, the api and worker processes stay up, and no job runs. Then schemathesis, from PyPI,
//! fuzzes a live `ragq api` from its own `/openapi.json`: no 5xx, and every response matches the
//! document. Every address here is loopback or refused before any connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};

use common::{spawn_worker_logging, terminate, TestEnv, HOSTILE_URLS};

/// Tenant content planted where the parser quotes it in its error: it may travel in the dead
/// letter's header, never into the worker's log.
const CANARY: &str = "canary-tenant-content-7f3a";

/// The URL policy as shipped: no private ranges allowed, so every trick is refused.
const STRICT: &str = "[webhooks]\nallow_private = []\n";

/// One HTTP request a hostile client sends.
struct Request {
    what: String,
    method: reqwest::Method,
    path: String,
    key: Option<String>,
    content_type: &'static str,
    body: Vec<u8>,
}

/// Values of the wrong type or shape for any field.
fn bad_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1e300),
        json!(""),
        json!("\u{0}"),
        json!("\u{202e}evil"),
        json!("x".repeat(5000)),
        json!([]),
        json!([1, 2, 3]),
        json!({}),
        json!({"$ne": null}),
        json!({"a": {"b": {"c": {"d": [[[[[]]]]]}}}}),
    ]
}

/// A valid job of each kind (without `id`, set per case).
fn bases(tenant: &str) -> Vec<Value> {
    vec![
        json!({"tenant": tenant, "kind": "batch.complete", "policy": "cost-optimized",
               "input": {"system": "Be brief.", "prompts": [{"prompt": "hi"}], "max_tokens": 20,
                         "temperature": 0.2},
               "tags": {"feature": "hostile"}}),
        json!({"tenant": tenant, "kind": "rag.answer",
               "input": {"collection": "docs", "question": "why?", "top_k": 3}}),
        json!({"tenant": tenant, "kind": "ingest",
               "input": {"collection": "docs", "documents": [{"id": "d", "text": "t"}]}}),
    ]
}

/// Every field path of a job that a mutation replaces.
const FIELDS: [&[&str]; 14] = [
    &["id"],
    &["kind"],
    &["policy"],
    &["webhook_url"],
    &["tags"],
    &["input"],
    &["input", "prompts"],
    &["input", "max_tokens"],
    &["input", "temperature"],
    &["input", "system"],
    &["input", "collection"],
    &["input", "question"],
    &["input", "documents"],
    &["extra_field"],
];

fn set_path(job: &mut Value, path: &[&str], value: Value) {
    let mut at = job;
    for key in &path[..path.len() - 1] {
        at = &mut at[*key];
    }
    if at.is_object() {
        at[path[path.len() - 1]] = value;
    }
}

/// Jobs that break the message schema: every field of every kind, set to every bad value, kept
/// only where the published schema itself says the result is invalid.
fn schema_breaking_jobs(tenant: &str) -> Vec<(String, Value)> {
    let schema: Value = serde_json::from_str(include_str!("../schemas/job.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut out = Vec::new();
    for (b, base) in bases(tenant).into_iter().enumerate() {
        for path in FIELDS {
            for (v, value) in bad_values().into_iter().enumerate() {
                let mut job = base.clone();
                job["id"] = json!(format!("hostile-{b}-{}-{v}", path.join(".")));
                set_path(&mut job, path, value);
                if !validator.is_valid(&job) {
                    out.push((
                        format!("{} = bad value {v} (kind {b})", path.join(".")),
                        job,
                    ));
                }
            }
        }
    }
    out
}

/// Bodies that are not JSON: a valid job cut at every byte, bad UTF-8, trailing garbage.
fn broken_bodies(tenant: &str) -> Vec<(String, Vec<u8>)> {
    let mut job = bases(tenant)[0].clone();
    job["id"] = json!("hostile-cut");
    let text = job.to_string().into_bytes();
    let mut out: Vec<(String, Vec<u8>)> = (1..text.len())
        .step_by(2)
        .map(|at| (format!("cut at byte {at}"), text[..at].to_vec()))
        .collect();
    let mut bad_utf8 = text.clone();
    bad_utf8.splice(10..10, [0xff, 0xfe, 0xc3]);
    out.push(("invalid UTF-8".into(), bad_utf8));
    let mut trailing = text.clone();
    trailing.extend_from_slice(b"}{\"x\":1}");
    out.push(("trailing garbage".into(), trailing));
    out.push(("NaN".into(), b"{\"id\": NaN}".to_vec()));
    out.push(("empty".into(), Vec::new()));
    out.push(("a string".into(), b"\"job\"".to_vec()));
    out.push(("an array".into(), b"[1,2]".to_vec()));
    out.push(("deep arrays".into(), deep(100_000)));
    let mut deep_input = job.clone();
    deep_input["input"]["prompts"][0]["prompt"] = Value::Null;
    let deep_text = deep_input
        .to_string()
        .replace("null", &String::from_utf8(deep(5_000)).unwrap());
    out.push(("deep inside the input".into(), deep_text.into_bytes()));
    out
}

fn deep(n: usize) -> Vec<u8> {
    let mut v = vec![b'['; n];
    v.extend(std::iter::repeat_n(b']', n));
    v
}

/// Jobs that pass the schema but aim their webhook anywhere the policy refuses.
fn url_tricks(tenant: &str) -> Vec<(String, Value)> {
    HOSTILE_URLS
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let mut job = bases(tenant)[0].clone();
            job["id"] = json!(format!("hostile-url-{i}"));
            job["webhook_url"] = json!(url);
            (format!("webhook_url {url:?}"), job)
        })
        .collect()
}

fn http_cases(env: &TestEnv) -> Vec<Request> {
    let acme = env.api_key("acme");
    let post = |what: String, path: &str, body: Vec<u8>| Request {
        what,
        method: reqwest::Method::POST,
        path: path.into(),
        key: Some(acme.clone()),
        content_type: "application/json",
        body,
    };
    let mut cases = Vec::new();
    for (what, mut job) in schema_breaking_jobs("acme")
        .into_iter()
        .chain(url_tricks("acme"))
    {
        job.as_object_mut().unwrap().remove("tenant");
        cases.push(post(what, "/v1/jobs", job.to_string().into_bytes()));
    }
    for (what, body) in broken_bodies("acme") {
        cases.push(post(what, "/v1/jobs", body));
    }
    // Forged tenants: the body names another tenant, or one that does not exist.
    for tenant in ["globex", "nobody", "ACME", "acme ", "*"] {
        let mut job = bases(tenant)[0].clone();
        job["id"] = json!(format!("hostile-forged-{}", tenant.trim()));
        cases.push(post(
            format!("tenant {tenant:?}"),
            "/v1/jobs",
            job.to_string().into_bytes(),
        ));
    }
    cases.push(post("2 MiB body".into(), "/v1/jobs", vec![b' '; 2 << 20]));
    // Pipelines: broken specs and templates, and every URL trick in the template.
    let spec = json!({"name": "nightly", "cron": "0 0 3 * * *",
        "job_template": {"kind": "batch.complete", "input": {"prompts": [{"prompt": "x"}]}}});
    let mut specs: Vec<(String, Value)> = [
        ("cron", json!("61 * * * *")),
        ("cron", json!("* * *")),
        ("cron", json!(5)),
        ("time_zone", json!("Mars/Olympus")),
        ("name", json!("has space")),
        ("name", json!("")),
        ("name", json!("x".repeat(100))),
        ("missed_limit", json!(0)),
        ("missed_limit", json!(5000)),
        ("starting_deadline_secs", json!(-1)),
        ("overlap", json!("sometimes")),
        ("surprise", json!(1)),
        ("job_template", json!("not an object")),
        ("job_template", json!({"kind": "batch.complete", "id": "x", "input": {"prompts": [{"prompt": "x"}]}})),
        ("job_template", json!({"kind": "batch.complete", "tenant": "globex", "input": {"prompts": [{"prompt": "x"}]}})),
        ("job_template", json!({"kind": "nope", "input": {}})),
    ]
    .into_iter()
    .map(|(k, v)| {
        let mut s = spec.clone();
        s[k] = v;
        (format!("pipeline {k}"), s)
    })
    .collect();
    for url in HOSTILE_URLS {
        let mut s = spec.clone();
        s["job_template"]["webhook_url"] = json!(url);
        specs.push((format!("pipeline webhook_url {url:?}"), s));
    }
    for (what, s) in specs {
        cases.push(post(what, "/v1/pipelines", s.to_string().into_bytes()));
    }
    for (what, body) in broken_bodies("acme").into_iter().step_by(8) {
        cases.push(post(format!("pipeline {what}"), "/v1/pipelines", body));
    }
    // Authentication: none, malformed, unknown, another scheme, control characters.
    let keys = [
        None,
        Some(String::new()),
        Some("rq_not-a-key".into()),
        Some(format!("{acme}x")),
        Some("' OR 1=1 --".into()),
        Some("x".repeat(10_000)),
    ];
    for key in keys {
        for path in [
            "/v1/jobs/any",
            "/v1/spend",
            "/v1/pipelines",
            "/v1/pipelines/nightly/runs",
        ] {
            cases.push(Request {
                what: format!(
                    "key {:?} on {path}",
                    key.as_deref().map(|k| &k[..k.len().min(12)])
                ),
                method: reqwest::Method::GET,
                path: path.into(),
                key: key.clone(),
                content_type: "application/json",
                body: Vec::new(),
            });
        }
    }
    // Reads that are not there, or not the tenant's.
    let get = |path: String| Request {
        what: format!("GET {}", &path[..path.len().min(60)]),
        method: reqwest::Method::GET,
        path,
        key: Some(acme.clone()),
        content_type: "application/json",
        body: Vec::new(),
    };
    for id in [
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "%E2%80%AE",
        "%FF%FE",
        "globex-job",
        "'%20OR%201=1",
    ] {
        cases.push(get(format!("/v1/jobs/{id}")));
    }
    cases.push(get(format!("/v1/jobs/{}", "a".repeat(4000))));
    for query in [
        "group_by=bogus",
        "group_by=feature,,;DROP",
        "from=yesterday",
        "to=2026-13-45",
        "format=xml",
        "from=2026-01-01&from=2026-02-01",
        "%ZZ=1",
    ] {
        cases.push(get(format!("/v1/spend?{query}")));
    }
    for action in ["explode", "pause%00", "trigger/../.."] {
        cases.push(post(
            format!("action {action}"),
            &format!("/v1/pipelines/nightly/{action}"),
            Vec::new(),
        ));
    }
    for (method, path) in [
        (reqwest::Method::PUT, "/v1/jobs"),
        (reqwest::Method::DELETE, "/v1/jobs/x"),
        (reqwest::Method::PATCH, "/v1/pipelines"),
        (reqwest::Method::GET, "/v1/admin"),
    ] {
        cases.push(Request {
            what: format!("{method} {path}"),
            method,
            path: path.into(),
            key: Some(acme.clone()),
            content_type: "application/json",
            body: Vec::new(),
        });
    }
    cases
}

/// One AMQP message a hostile publisher sends: its body, user_id and headers.
struct Message {
    what: String,
    body: Vec<u8>,
    user: Option<String>,
    headers: FieldTable,
}

fn amqp_cases(env: &TestEnv) -> Vec<Message> {
    let as_acme = |what: String, body: Vec<u8>| Message {
        what,
        body,
        user: Some("guest".into()),
        headers: FieldTable::default(),
    };
    let mut cases: Vec<Message> = schema_breaking_jobs("acme")
        .into_iter()
        .chain(url_tricks("acme"))
        .map(|(what, job)| as_acme(what, job.to_string().into_bytes()))
        .collect();
    cases.extend(
        broken_bodies("acme")
            .into_iter()
            .map(|(w, b)| as_acme(w, b)),
    );
    cases.push(as_acme("1.5 MiB message".into(), vec![b' '; 3 << 19]));
    let mut quoted = bases("acme")[0].clone();
    quoted["id"] = json!("hostile-canary");
    quoted["input"] = json!(CANARY);
    cases.push(as_acme(
        "input as a string".into(),
        quoted.to_string().into_bytes(),
    ));
    // acme's user (guest here) naming other tenants; no user at all; and a trusted publisher
    // writing the publisher header only ragq may write.
    for tenant in ["globex", "nobody"] {
        let mut job = bases(tenant)[0].clone();
        job["id"] = json!(format!("hostile-forged-amqp-{tenant}"));
        cases.push(as_acme(
            format!("tenant {tenant}"),
            job.to_string().into_bytes(),
        ));
    }
    let mut job = bases("acme")[0].clone();
    job["id"] = json!("hostile-anonymous");
    cases.push(Message {
        what: "no user_id".into(),
        body: job.to_string().into_bytes(),
        user: None,
        headers: FieldTable::default(),
    });
    let trusted = env.cfg.queue.trusted_publishers[0].clone();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-ragq-publisher".into(),
        AMQPValue::LongString("guest".into()),
    );
    let mut job = bases("globex")[0].clone();
    job["id"] = json!("hostile-header");
    cases.push(Message {
        what: "publisher header from a trusted publisher".into(),
        body: job.to_string().into_bytes(),
        user: Some(trusted),
        headers,
    });
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_requests_and_messages_are_all_refused_and_nothing_crashes() {
    let env = TestEnv::with_sections("", STRICT).await;
    let config = env.config_file();
    let worker_log = config.with_file_name("worker.log");
    let mut worker = spawn_worker_logging(&config, "warn", &worker_log);
    let (mut api, base) = env.spawn_api(&[]).await;
    // A connection each, as hostile clients open them: after an early 413 the server closes its
    // side, and a pooled connection could be reused before the client saw that.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let requests = http_cases(&env);
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut accepted = Vec::new();
    for r in &requests {
        let mut req = http
            .request(r.method.clone(), format!("{base}{}", r.path))
            .header("content-type", r.content_type)
            .body(r.body.clone());
        if let Some(key) = &r.key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let response = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", r.what));
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        if !(400..500).contains(&status) {
            accepted.push(format!("{}: {status}", r.what));
            continue;
        }
        if r.path.starts_with("/v1/") {
            let error: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{}: not a JSON error", r.what));
            assert!(error["error"]["code"].is_string(), "{}: {error}", r.what);
        }
        *by_status.entry(status).or_default() += 1;
    }
    assert!(accepted.is_empty(), "not refused: {accepted:#?}");

    let messages = amqp_cases(&env);
    let conn = env.amqp().await;
    for m in &messages {
        // The case names itself in the message id, which the dead letter keeps.
        let id: String = m.what.chars().take(200).collect();
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into())
            .with_headers(m.headers.clone());
        if let Some(user) = &m.user {
            props = props.with_user_id(user.as_str().into());
        }
        // The trusted publisher's messages go out on its own connection (RabbitMQ checks user_id).
        if m.user.as_deref().is_some_and(|u| u != "guest") {
            let api_conn = lapin::Connection::connect(
                &env.api_config().queue.url,
                lapin::ConnectionProperties::default(),
            )
            .await
            .unwrap();
            env.publish_with(&api_conn, "batch.complete", &m.body, props)
                .await;
        } else {
            env.publish_with(&conn, "batch.complete", &m.body, props)
                .await;
        }
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut letters = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while letters < messages.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{letters} of {} messages dead-lettered",
            messages.len()
        );
        for (reason, _) in env.dead_letters(&conn).await {
            let reason = reason.expect("every dead letter says why");
            let code = reason.split(':').next().unwrap_or_default().to_string();
            *reasons.entry(code).or_default() += 1;
            letters += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(letters, messages.len(), "one dead letter per message");
    assert!(!reasons.contains_key(""), "{reasons:?}");
    let log = std::fs::read_to_string(&worker_log).unwrap();
    assert!(
        log.contains("dead-lettering message"),
        "the worker logged its dead letters"
    );
    assert!(
        !log.contains(CANARY),
        "tenant content reached the worker's log"
    );

    // Nothing ran, for acme or anyone, and neither process died.
    assert_eq!(
        env.count("SELECT count(*) FROM jobs").await,
        0,
        "no hostile job ran"
    );
    assert_eq!(env.count("SELECT count(*) FROM pipelines").await, 0);
    assert!(worker.try_wait().unwrap().is_none(), "the worker is up");
    assert!(api.try_wait().unwrap().is_none(), "the api is up");
    // And both still do their work.
    let mut job = env.job("acme", "after-the-storm", 1);
    job.as_object_mut().unwrap().remove("webhook_url");
    env.submit_http(&base, "acme", &job).await;
    env.wait_for_state("acme", "after-the-storm", "succeeded", 60)
        .await;
    let total = requests.len() + messages.len();
    println!(
        "hostile suite: {} HTTP requests by status {by_status:?}; {} AMQP messages dead-lettered by reason {reasons:?}; {total} in all",
        requests.len(),
        messages.len()
    );
    assert!(total >= 1000, "only {total} hostile inputs");
    terminate(&mut api).await;
    terminate(&mut worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_fuzzes_the_live_api_from_its_document_and_finds_nothing() {
    let env = TestEnv::with_sections("", STRICT).await;
    let (mut api, base) = env.spawn_api(&[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/schemathesis.sh");
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .args(["run", &format!("{base}/openapi.json")])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", env.api_key("acme")),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection",
        ])
        // One worker: hypothesis's generation is not thread-safe in every path (with two it
        // failed now and then inside hypothesis, before any request was sent).
        .args([
            "--max-examples",
            "60",
            "--workers",
            "1",
            "--seed",
            "20261201",
        ])
        .args(["--suppress-health-check", "all", "--no-color"])
        .output()
        .await
        .expect("schemathesis runs");
    let out = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("generated") || l.contains("passed") || l.contains("failed"))
        .collect();
    println!("schemathesis: {}", summary.join(" | "));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("generated"), "{out}");
    assert!(api.try_wait().unwrap().is_none(), "the api is up");
    assert!(reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .status()
        .is_success());
    terminate(&mut api).await;
}
