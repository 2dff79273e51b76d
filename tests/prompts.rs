//! Prompt versions and labels: each save is a new version, labels move, `latest` follows the
//! newest, a tenant's own prompt hides the operator's shared one, and nothing crosses tenants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestEnv;
use ragq::audit::Actor;
use ragq::prompts::store::{self, PromptError, PromptSpec, Selector, SHARED};
use serde_json::json;

fn spec(user: &str) -> PromptSpec {
    PromptSpec {
        system: Some("You summarize tickets.".into()),
        user: user.into(),
        variables: json!({"type": "object", "required": ["ticket"]}),
        defaults: json!({"max_tokens": 80}),
    }
}

fn label(l: &str) -> Selector {
    Selector::Label(l.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_labels_and_shared_prompts_resolve_per_tenant() {
    let env = TestEnv::new("").await;
    let (pool, cli) = (&env.pool, Actor::cli());
    let v1 = store::create(
        pool,
        &cli,
        "acme",
        "ticket-summary",
        &spec("Summarize: {{ ticket }}"),
    )
    .await
    .unwrap();
    let v2 = store::create(
        pool,
        &cli,
        "acme",
        "ticket-summary",
        &spec("In brief: {{ ticket }}"),
    )
    .await
    .unwrap();
    assert_eq!((v1, v2), (1, 2));
    let latest = store::resolve(pool, "acme", "ticket-summary", &label("latest"))
        .await
        .unwrap();
    assert_eq!(
        (latest.version, latest.user_template.as_str()),
        (2, "In brief: {{ ticket }}")
    );
    assert_eq!(latest.defaults, json!({"max_tokens": 80}));

    // A label points where it is set, and moving it back is a rollback.
    store::set_label(pool, &cli, "acme", "ticket-summary", "production", 2)
        .await
        .unwrap();
    let prod = |s: Selector| {
        let pool = pool.clone();
        async move { store::resolve(&pool, "acme", "ticket-summary", &s).await }
    };
    assert_eq!(prod(label("production")).await.unwrap().version, 2);
    store::set_label(pool, &cli, "acme", "ticket-summary", "production", 1)
        .await
        .unwrap();
    assert_eq!(prod(label("production")).await.unwrap().version, 1);
    assert_eq!(prod(Selector::Version(2)).await.unwrap().version, 2);

    // Refusals name the problem.
    let moved_latest = store::set_label(pool, &cli, "acme", "ticket-summary", "latest", 1).await;
    assert!(matches!(moved_latest, Err(PromptError::Invalid(m)) if m.contains("latest")));
    let no_version = store::set_label(pool, &cli, "acme", "ticket-summary", "staging", 9).await;
    assert!(
        matches!(&no_version, Err(PromptError::Unknown { .. })),
        "{no_version:?}"
    );
    let bad = store::create(pool, &cli, "acme", "broken", &spec("{% for x in %}")).await;
    assert!(
        matches!(bad, Err(PromptError::Invalid(m)) if m.starts_with("user: template does not parse"))
    );
    let bad_name = store::create(pool, &cli, "acme", "Has Space", &spec("x")).await;
    assert!(matches!(bad_name, Err(PromptError::Invalid(_))));
    assert!(prod(label("staging")).await.is_err());

    // Tenants never see each other's prompts; the operator's shared prompt serves any tenant
    // without one of its own.
    let theirs = store::resolve(pool, "globex", "ticket-summary", &label("latest")).await;
    assert!(
        matches!(theirs, Err(PromptError::Unknown { .. })),
        "{theirs:?}"
    );
    store::create(
        pool,
        &cli,
        SHARED,
        "ticket-summary",
        &spec("Shared: {{ ticket }}"),
    )
    .await
    .unwrap();
    let shared = store::resolve(pool, "globex", "ticket-summary", &label("latest"))
        .await
        .unwrap();
    assert_eq!(
        (shared.tenant_id.as_str(), shared.user_template.as_str()),
        ("", "Shared: {{ ticket }}")
    );
    let own = store::resolve(pool, "acme", "ticket-summary", &label("latest"))
        .await
        .unwrap();
    assert_eq!(
        (own.tenant_id.as_str(), own.version),
        ("acme", 2),
        "acme's own hides the shared one"
    );

    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log WHERE action IN ('prompt.create', 'prompt.label')"
        )
        .await,
        5,
        "three versions saved, a label set twice"
    );
}

/// A ticket-summary prompt whose versions differ in their first word.
fn ticket(word: &str) -> PromptSpec {
    PromptSpec {
        system: Some("You summarize support tickets for {{ team }}.".into()),
        user: format!("{word} ticket {{{{ ticket.id }}}}: {{{{ ticket.text }}}}"),
        variables: json!({
            "type": "object",
            "required": ["ticket", "team"],
            "properties": {
                "team": {"type": "string"},
                "ticket": {
                    "type": "object",
                    "required": ["id", "text"],
                    "properties": {"id": {"type": "string"}, "text": {"type": "string", "maxLength": 200}}
                }
            }
        }),
        defaults: json!({"max_tokens": 40, "temperature": 0.2}),
    }
}

fn templated(env: &TestEnv, id: &str, template: serde_json::Value) -> serde_json::Value {
    json!({"id": id, "tenant": "acme", "kind": "batch.complete", "webhook_url": env.hook_url,
           "input": {"prompts": [{"template": template}]}, "tags": {"feature": "support"}})
}

fn summary(label: &str, ticket: &str) -> serde_json::Value {
    json!({"name": "ticket-summary", "label": label,
           "variables": {"team": "billing", "ticket": {"id": ticket, "text": "refund not received"}}})
}

async fn stored(env: &TestEnv, id: &str) -> (serde_json::Value, serde_json::Value, i64) {
    sqlx::query_as("SELECT input, coalesce(result, 'null'), attempts::int8 FROM jobs WHERE tenant_id = 'acme' AND id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_keeps_the_version_its_label_held_when_it_was_accepted() {
    let env = TestEnv::new("").await;
    let (pool, cli) = (&env.pool, Actor::cli());
    for word in ["Summarize", "Condense"] {
        store::create(pool, &cli, "acme", "ticket-summary", &ticket(word))
            .await
            .unwrap();
    }
    store::set_label(pool, &cli, "acme", "ticket-summary", "production", 1)
        .await
        .unwrap();
    // Accepted over HTTP while no worker runs: pinned to version 1 and stored rendered.
    let api = env.serve_api().await;
    env.submit_http(
        &api,
        "acme",
        &templated(&env, "before-move", summary("production", "T-1")),
    )
    .await;
    let (input, _, _) = stored(&env, "before-move").await;
    let prompt = &input["prompts"][0];
    assert_eq!(prompt["template"]["version"], 1, "{input}");
    assert_eq!(prompt["template"]["label"], "production");
    assert_eq!(
        prompt["prompt"],
        "Summarize ticket T-1: refund not received"
    );
    assert_eq!(
        prompt["system"],
        "You summarize support tickets for billing."
    );
    assert!(
        prompt["template"].get("variables").is_none(),
        "the variables are rendered, not kept: {input}"
    );
    assert_eq!(
        (input["max_tokens"].as_i64(), input["temperature"].as_f64()),
        (Some(40), Some(0.2f32 as f64)),
        "the prompt's defaults fill what the job left out"
    );

    // The label moves; the first job's first attempt then fails on an outage and is retried.
    store::set_label(pool, &cli, "acme", "ticket-summary", "production", 2)
        .await
        .unwrap();
    env.set_outage(15);
    let (_stop, _worker) = env.start_worker();
    env.wait_for_state("acme", "before-move", "succeeded", 30)
        .await;
    let (_, result, attempts) = stored(&env, "before-move").await;
    assert!(attempts >= 2, "retried after the move: {attempts} attempts");
    let completion = &result["completions"][0];
    assert_eq!(completion["prompt"]["version"], 1, "{result}");
    assert!(
        completion["content"]
            .as_str()
            .unwrap()
            .contains("Summarize ticket T-1"),
        "the retry sent version 1's text: {result}"
    );

    // A job accepted after the move (over AMQP this time) gets version 2.
    let conn = env.amqp().await;
    env.publish_job(
        &conn,
        &templated(&env, "after-move", summary("production", "T-2")),
    )
    .await;
    env.wait_for_state("acme", "after-move", "succeeded", 30)
        .await;
    let (_, result, _) = stored(&env, "after-move").await;
    assert_eq!(result["completions"][0]["prompt"]["version"], 2);
    assert!(result["completions"][0]["content"]
        .as_str()
        .unwrap()
        .contains("Condense ticket T-2"));

    // Rolling back is moving the label back; `latest` and a version number name versions too.
    store::set_label(pool, &cli, "acme", "ticket-summary", "production", 1)
        .await
        .unwrap();
    let mut by_number = summary("production", "T-3");
    by_number["version"] = json!(2);
    by_number.as_object_mut().unwrap().remove("label");
    let jobs = [
        ("rolled-back", summary("production", "T-3")),
        ("latest", summary("latest", "T-3")),
        ("by-number", by_number),
    ];
    for (id, template) in &jobs {
        env.publish_job(&conn, &templated(&env, id, template.clone()))
            .await;
    }
    for ((id, _), want) in jobs.iter().zip([1, 2, 2]) {
        env.wait_for_state("acme", id, "succeeded", 30).await;
        let (_, result, _) = stored(&env, id).await;
        assert_eq!(result["completions"][0]["prompt"]["version"], want, "{id}");
    }

    // Every call is booked under the version it rendered.
    let booked: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT job_id, prompt, prompt_version FROM provider_calls WHERE tenant_id = 'acme' ORDER BY job_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let expect = |id: &str, v: i32| (id.to_string(), "ticket-summary".to_string(), v);
    assert_eq!(
        booked,
        [
            expect("after-move", 2),
            expect("before-move", 1),
            expect("by-number", 2),
            expect("latest", 2),
            expect("rolled-back", 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_variables_and_unknown_prompts_are_refused_at_submission() {
    let env = TestEnv::new("").await;
    store::create(
        &env.pool,
        &Actor::cli(),
        "acme",
        "ticket-summary",
        &ticket("Summarize"),
    )
    .await
    .unwrap();
    store::set_label(
        &env.pool,
        &Actor::cli(),
        "acme",
        "ticket-summary",
        "production",
        1,
    )
    .await
    .unwrap();
    let mut missing = summary("production", "T-1");
    missing["variables"].as_object_mut().unwrap().remove("team");
    let mut wrong_type = summary("production", "T-1");
    wrong_type["variables"]["ticket"]["id"] = json!(42);
    let mut too_long = summary("production", "T-1");
    too_long["variables"]["ticket"]["text"] = json!("secret words ".repeat(40));
    let cases = [
        ("missing", missing, "variable `team` is required"),
        (
            "wrong-type",
            wrong_type,
            "variables/ticket/id breaks the schema's `type`",
        ),
        (
            "too-long",
            too_long,
            "variables/ticket/text breaks the schema's `maxLength`",
        ),
        (
            "unknown-prompt",
            json!({"name": "no-such-prompt", "variables": {}}),
            "no prompt `no-such-prompt` label `production`",
        ),
        (
            "unknown-label",
            summary("staging", "T-1"),
            "no prompt `ticket-summary` label `staging`",
        ),
        (
            "unknown-version",
            json!({"name": "ticket-summary", "version": 7, "variables": {}}),
            "version 7",
        ),
    ];

    // A job whose rendered prompts would not fit in a message (1 MiB here) is refused too.
    let huge = PromptSpec {
        system: None,
        user: "x".repeat(60_000),
        variables: json!({}),
        defaults: json!({}),
    };
    store::create(&env.pool, &Actor::cli(), "acme", "huge", &huge)
        .await
        .unwrap();
    let mut many = templated(&env, "many", json!({"name": "huge", "version": 1}));
    many["input"]["prompts"] = json!(vec![
        json!({"template": {"name": "huge", "version": 1}});
        20
    ]);

    // Over HTTP: a 400 naming the problem; nothing is stored.
    let api = env.serve_api().await;
    let http = reqwest::Client::new();
    let mut body = many.clone();
    body.as_object_mut().unwrap().remove("tenant");
    let resp = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(env.api_key("acme"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("over the 1048576-byte message limit"),
        "{text}"
    );
    for (id, template, want) in &cases {
        let mut job = templated(&env, id, template.clone());
        job.as_object_mut().unwrap().remove("tenant");
        let resp = http
            .post(format!("{api}/v1/jobs"))
            .bearer_auth(env.api_key("acme"))
            .json(&job)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{id}: {body}");
        assert!(message.contains(want), "{id}: `{message}` lacks `{want}`");
        assert!(
            message.contains("input.prompts[0].template"),
            "{id}: {message}"
        );
        assert!(
            !message.contains("secret words"),
            "a refusal never quotes a variable's value: {message}"
        );
    }

    // Over AMQP: each goes to the dead-letter queue with the same reason.
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    for (id, template, _) in &cases {
        env.publish_job(&conn, &templated(&env, id, template.clone()))
            .await;
    }
    let mut letters = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while letters.len() < cases.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "dead letters: {letters:?}"
        );
        letters.extend(env.dead_letters(&conn).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for (id, _, want) in &cases {
        let reason = letters
            .iter()
            .find(|(_, body)| {
                serde_json::from_slice::<serde_json::Value>(body).unwrap()["id"] == *id
            })
            .and_then(|(r, _)| r.clone())
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        assert!(reason.starts_with("prompt: "), "{id}: {reason}");
        assert!(reason.contains(want), "{id}: `{reason}` lacks `{want}`");
    }
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_70_30_split_lands_near_its_weights_and_reports_add_up_to_the_ledger() {
    let env = TestEnv::new("").await;
    let (pool, cli) = (&env.pool, Actor::cli());
    for word in ["Summarize", "Condense"] {
        store::create(pool, &cli, "acme", "ticket-summary", &ticket(word))
            .await
            .unwrap();
    }
    let arms = [
        store::Arm {
            version: 1,
            weight: 70,
        },
        store::Arm {
            version: 2,
            weight: 30,
        },
    ];
    store::set_split(pool, &cli, "acme", "ticket-summary", "production", &arms)
        .await
        .unwrap();
    let jobs: Vec<_> = (0..1000)
        .map(|i| {
            templated(
                &env,
                &format!("split-{i}"),
                summary("production", &format!("T-{i}")),
            )
        })
        .collect();
    let (_stop, _worker) = env.start_worker();
    env.publish_many(&jobs).await;
    env.wait_until(120, "1,000 jobs finished", || async {
        env.finished_jobs().await == 1000
    })
    .await;
    let by_version: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT (input->'prompts'->0->'template'->>'version')::int, count(*) FROM jobs \
         WHERE state = 'succeeded' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(by_version.len(), 2, "{by_version:?}");
    let v1 = by_version[0].1;
    assert_eq!(by_version[0].1 + by_version[1].1, 1000);
    assert!(
        (650..=750).contains(&v1),
        "70% of 1,000 within 5 points: {by_version:?}"
    );
    // The same job id always picks the same arm.
    let (_, again, _) = store::locate(
        &mut pool.acquire().await.unwrap(),
        "acme",
        "ticket-summary",
        &Selector::Label("production".into()),
        Some("split-7"),
    )
    .await
    .unwrap();
    let (input, _, _) = stored(&env, "split-7").await;
    assert_eq!(json!(again), input["prompts"][0]["template"]["version"]);

    // The report by prompt and version adds up to the ledger, and counts the rendered prompts.
    let out = common::run_ragq(
        &env.config_file(),
        &[
            "spend",
            "report",
            "--tenant",
            "acme",
            "--group-by",
            "prompt,version",
            "--format",
            "json",
        ],
    )
    .await;
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ledger: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT prompt_version, count(*), sum(cost_micros)::int8 FROM provider_calls \
         WHERE prompt = 'ticket-summary' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for ((version, calls, cost), (_, jobs)) in ledger.iter().zip(&by_version) {
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["prompt"] == "ticket-summary" && r["version"] == json!(version.to_string()))
            .unwrap_or_else(|| panic!("no row for version {version}: {rows}"));
        assert_eq!(row["calls"], *calls, "{row}");
        assert_eq!(row["cost_micros"], *cost, "{row}");
        assert_eq!(row["prompts_rendered"], *jobs, "{row}");
        assert_eq!(row["prompt_error_rate"], 0.0, "{row}");
        assert!(row["mean_latency_ms"].as_i64().is_some(), "{row}");
    }
    // The api answers the same rows.
    let api = env.serve_api().await;
    let over_http: serde_json::Value = reqwest::Client::new()
        .get(format!("{api}/v1/spend?group_by=prompt,version"))
        .bearer_auth(env.api_key("acme"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, rows);
    let total: i64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cost_micros"].as_i64().unwrap())
        .sum();
    assert_eq!(
        total,
        env.count("SELECT sum(cost_micros)::int8 FROM provider_calls")
            .await
    );
}

/// POSTs or PUTs `body` to `path` with `tenant`'s key; the status and the JSON answer.
async fn call(
    env: &TestEnv,
    base: &str,
    tenant: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(env.api_key(tenant));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_over_http_and_the_cli_serve_rag_answers_and_pipeline_runs() {
    use reqwest::Method;
    let env = TestEnv::new("").await;
    let api = env.serve_api().await;
    let faq = json!({"name": "faq-answer", "system": "Answer in a {{ tone }} tone.",
        "user": "Context:\n{{ context }}\n\nQuestion: {{ question }}",
        "variables": {"type": "object", "required": ["tone"],
                      "properties": {"tone": {"enum": ["warm", "formal"]}}},
        "defaults": {"max_tokens": 60, "policy": "with-fallback"}});
    let (status, saved) = call(&env, &api, "acme", Method::POST, "/v1/prompts", Some(faq)).await;
    assert_eq!((status, &saved["version"]), (201, &json!(1)), "{saved}");
    // A template that does not parse, a schema that is none, an operator that could grow a
    // string: each refused with a 400.
    for bad in [
        json!({"name": "broken", "user": "{% if %}"}),
        json!({"name": "bad", "user": "x", "variables": {"type": 7}}),
        json!({"name": "grows", "user": "{{ a ~ a }}"}),
    ] {
        let (status, body) = call(&env, &api, "acme", Method::POST, "/v1/prompts", Some(bad)).await;
        assert_eq!(status, 400, "{body}");
    }
    let label = "/v1/prompts/faq-answer/labels/production";
    let (status, labels) = call(
        &env,
        &api,
        "acme",
        Method::PUT,
        label,
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(
        (status, &labels[0]["version"]),
        (200, &json!(1)),
        "{labels}"
    );
    let split = json!({"split": [{"version": 1, "weight": 1}, {"version": 9, "weight": 1}]});
    let (status, body) = call(&env, &api, "acme", Method::PUT, label, Some(split)).await;
    assert_eq!(status, 404, "{body}");

    // globex sees none of acme's prompts, and cannot use them.
    let (_, mine) = call(&env, &api, "acme", Method::GET, "/v1/prompts", None).await;
    assert_eq!(mine[0]["name"], "faq-answer", "{mine}");
    let (_, theirs) = call(&env, &api, "globex", Method::GET, "/v1/prompts", None).await;
    assert_eq!(theirs, json!([]));
    let (status, _) = call(
        &env,
        &api,
        "globex",
        Method::GET,
        "/v1/prompts/faq-answer",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, shown) = call(
        &env,
        &api,
        "acme",
        Method::GET,
        "/v1/prompts/faq-answer",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(shown["versions"][0]["defaults"]["max_tokens"], 60);
    let stolen = json!({"id": "steal", "kind": "batch.complete",
        "input": {"prompts": [{"template": {"name": "faq-answer", "variables": {"tone": "warm"}}}]}});
    let (status, body) = call(&env, &api, "globex", Method::POST, "/v1/jobs", Some(stolen)).await;
    assert_eq!(status, 400, "{body}");

    // A rag.answer job names the saved prompt; context and question are its variables.
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    let ingest = json!({"id": "ingest-1", "tenant": "acme", "kind": "ingest",
        "input": {"collection": "handbook", "documents": [
            {"id": "refunds", "text": "Refunds are paid to the original card within 14 days."}]}});
    env.publish_job(&conn, &ingest).await;
    env.wait_for_state("acme", "ingest-1", "succeeded", 30)
        .await;
    let rag = json!({"id": "rag-1", "tenant": "acme", "kind": "rag.answer",
        "input": {"collection": "handbook", "question": "How are refunds paid?",
                  "template": {"name": "faq-answer", "variables": {"tone": "warm"}}}});
    env.publish_job(&conn, &rag).await;
    env.wait_for_state("acme", "rag-1", "succeeded", 30).await;
    let (input, result, _) = stored(&env, "rag-1").await;
    assert_eq!(input["template"]["version"], 1, "{input}");
    assert_eq!(input["max_tokens"], 60, "the prompt's default: {input}");
    let policy: String = sqlx::query_scalar("SELECT policy FROM jobs WHERE id = 'rag-1'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(policy, "with-fallback", "the prompt's default policy");
    assert_eq!(result["prompt"]["version"], 1, "{result}");
    let sent = env
        .sim
        .requests()
        .into_iter()
        .find(|r| r.body.contains("warm tone"))
        .expect("the rendered prompt reached the provider");
    assert!(
        sent.body.contains("Question: How are refunds paid?")
            && sent.body.contains("[1] Refunds are paid"),
        "{}",
        sent.body
    );

    // The CLI saves a version from a TOML file and moves its label.
    let file = env.config_file().with_file_name("digest.toml");
    std::fs::write(
        &file,
        "user = \"Write the {{ day }} digest.\"\n[variables]\ntype = \"object\"\nrequired = [\"day\"]\n",
    )
    .unwrap();
    let cfg = env.config_file();
    let file_arg = file.display().to_string();
    for word in ["first", "second"] {
        let out = common::run_ragq(
            &cfg,
            &[
                "prompt", "create", "--tenant", "acme", "digest", "--file", &file_arg,
            ],
        )
        .await;
        assert!(out.contains("saved `digest` version"), "{word}: {out}");
    }
    common::run_ragq(
        &cfg,
        &["prompt", "label", "acme", "digest", "production", "1"],
    )
    .await;
    let listed = common::run_ragq(&cfg, &["prompt", "list", "--tenant", "acme"]).await;
    assert!(
        listed.contains("digest") && listed.contains("production=1") && listed.contains("latest=2"),
        "{listed}"
    );
    let refused = common::try_ragq(
        &cfg,
        &["prompt", "label", "acme", "digest", "production", "3"],
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");

    // A pipeline names the prompt: each run gets the label's version at the time it fires.
    let spec = json!({"name": "nightly-digest", "cron": "0 3 * * *",
        "job_template": {"kind": "batch.complete", "input": {"prompts": [
            {"template": {"name": "digest", "variables": {"day": "{{scheduled_date}}"}}}]}}});
    let (status, body) = call(
        &env,
        &api,
        "acme",
        Method::POST,
        "/v1/pipelines",
        Some(spec),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut versions = Vec::new();
    for next in [2, 1] {
        let (status, run) = call(
            &env,
            &api,
            "acme",
            Method::POST,
            "/v1/pipelines/nightly-digest/trigger",
            None,
        )
        .await;
        assert_eq!(status, 200, "{run}");
        let id = run["job_id"].as_str().unwrap().to_string();
        env.wait_for_state("acme", &id, "succeeded", 30).await;
        let (input, result, _) = stored(&env, &id).await;
        let prompt = &input["prompts"][0];
        assert!(
            prompt["prompt"]
                .as_str()
                .unwrap()
                .starts_with("Write the 20"),
            "{input}"
        );
        versions.push(result["completions"][0]["prompt"]["version"].clone());
        common::run_ragq(
            &cfg,
            &[
                "prompt",
                "label",
                "acme",
                "digest",
                "production",
                &next.to_string(),
            ],
        )
        .await;
    }
    assert_eq!(versions, [json!(1), json!(2)]);

    // The tenant's dashboard shows its prompt versions.
    let page = reqwest::Client::new()
        .get(format!("{api}/dashboard"))
        .bearer_auth(env.api_key("acme"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"prompt-versions\""), "{page}");
    for row in ["<td>faq-answer</td><td>1</td>", "<td>digest</td><td>2</td>"] {
        assert!(page.contains(row), "{row} in {page}");
    }
}
