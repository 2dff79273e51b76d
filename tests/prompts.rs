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
