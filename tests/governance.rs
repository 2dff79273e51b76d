//! Governance against the real Postgres and RabbitMQ: API keys that are scoped, rotated with a
//! grace period, revoked and expired; an audit row for every administrative command.
//!
//! Time is the database's: a test moves it by setting a key's deadline into the past (as if the
//! clock had passed it) instead of sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{run_ragq, try_ragq, TestEnv};
use ragq::audit::Actor;
use ragq::tenants::keys::{self, KeySpec, Scope};
use serde_json::{json, Value};

/// GETs `path` with `key`: the status and the body's error message, if any.
async fn get(base: &str, path: &str, key: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, message)
}

async fn post_job(base: &str, key: &str, id: &str) -> u16 {
    let job = json!({"id": id, "kind": "batch.complete", "policy": "cost-optimized",
        "input": {"prompts": [{"prompt": "hi"}]}});
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(key)
        .json(&job)
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

async fn key(env: &TestEnv, tenant: Option<&str>, name: &str, scopes: &[Scope]) -> keys::IssuedKey {
    let spec = KeySpec {
        tenant: tenant.map(str::to_string),
        name: name.into(),
        scopes: scopes.to_vec(),
        expires_at: None,
    };
    keys::create(&env.pool, &Actor::cli(), &spec).await.unwrap()
}

/// The budgets and their usage as JSON, to show a rotation leaves them as they were.
async fn budgets(env: &TestEnv) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('budgets', (SELECT jsonb_agg(to_jsonb(b) ORDER BY id) FROM budgets b), \
           'usage', (SELECT jsonb_agg(to_jsonb(u) ORDER BY budget_id) FROM budget_usage u))",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_with_grace_revoke_at_once_expire_and_hold_to_their_scopes() {
    let env = TestEnv::new("").await;
    let base = env.serve_api().await;
    let reader = key(&env, Some("acme"), "reader", &[Scope::JobsRead]).await;
    let missing = "/v1/jobs/no-such-job";

    // Scopes: a read-only key reads, and may not submit or read spend.
    assert_eq!(get(&base, missing, reader.secret.expose()).await.0, 404);
    assert_eq!(post_job(&base, reader.secret.expose(), "j1").await, 403);
    let (status, message) = get(&base, "/v1/spend", reader.secret.expose()).await;
    assert_eq!(
        (status, message.as_str()),
        (403, "this API key lacks the `spend:read` scope")
    );
    assert_eq!(
        post_job(&base, &env.api_key("acme"), "j1").await,
        202,
        "the default key holds every tenant scope"
    );

    // A budget with usage in it, to compare after the rotation.
    run_ragq(
        &env.config_file(),
        &[
            "budget",
            "set",
            "--tenant",
            "acme",
            "--hard",
            "5",
            "--job-quota",
            "100",
        ],
    )
    .await;
    sqlx::query("UPDATE budget_usage SET cost_micros = 1234, jobs = 7")
        .execute(&env.pool)
        .await
        .unwrap();
    let before = budgets(&env).await;

    // Rotation with grace: both secrets work, the id stays.
    let rotated = keys::rotate(
        &env.pool,
        &Actor::cli(),
        &reader.id,
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(rotated.id, reader.id);
    assert_ne!(rotated.secret.expose(), reader.secret.expose());
    assert_eq!(
        get(&base, missing, reader.secret.expose()).await.0,
        404,
        "old secret inside the grace period"
    );
    assert_eq!(
        get(&base, missing, rotated.secret.expose()).await.0,
        404,
        "new secret"
    );
    assert_eq!(
        budgets(&env).await,
        before,
        "a rotation resets no budget or usage"
    );

    // The grace period ends: only the new secret works.
    sqlx::query("UPDATE api_keys SET previous_until = now() - interval '1 second' WHERE id = $1")
        .bind(&reader.id)
        .execute(&env.pool)
        .await
        .unwrap();
    let (status, message) = get(&base, missing, reader.secret.expose()).await;
    assert_eq!(status, 401);
    assert!(message.contains("rotated"), "{message}");
    assert_eq!(get(&base, missing, rotated.secret.expose()).await.0, 404);

    // Revocation holds from the next request.
    keys::revoke(&env.pool, &Actor::cli(), &reader.id)
        .await
        .unwrap();
    assert_eq!(
        get(&base, missing, rotated.secret.expose()).await,
        (401, "this API key is revoked".into())
    );
    assert!(
        keys::revoke(&env.pool, &Actor::cli(), &reader.id)
            .await
            .is_err(),
        "revoked twice"
    );

    // Expiry.
    let expiring = key(&env, Some("acme"), "expiring", &[Scope::JobsRead]).await;
    assert_eq!(get(&base, missing, expiring.secret.expose()).await.0, 404);
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(&expiring.id)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        get(&base, missing, expiring.secret.expose()).await,
        (401, "this API key has expired".into())
    );

    // Operator keys read across tenants and the audit log, and act for no tenant.
    let operator = key(&env, None, "ops", &[Scope::Operator]).await;
    assert_eq!(
        get(&base, "/v1/audit?tenant=acme", operator.secret.expose())
            .await
            .0,
        200
    );
    assert_eq!(
        get(&base, "/v1/spend?group_by=tenant", operator.secret.expose())
            .await
            .0,
        200
    );
    assert_eq!(post_job(&base, operator.secret.expose(), "j2").await, 403);
    let (status, message) = get(&base, "/v1/audit", &env.api_key("acme")).await;
    assert_eq!(
        (status, message.as_str()),
        (403, "this API key lacks the `operator` scope")
    );
    assert_eq!(
        get(&base, "/v1/spend?tenant=globex", &env.api_key("acme"))
            .await
            .0,
        403
    );

    // Secrets are stored as hashes only; last use is recorded.
    let clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE encode(secret_hash, 'escape') LIKE '%rq_%' \
           OR position(convert_to($1, 'UTF8') IN secret_hash) > 0",
    )
    .bind(rotated.secret.expose())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(clear, 0);
    let used: bool =
        sqlx::query_scalar("SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = $1")
            .bind(&expiring.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(used);
}

/// A command's arguments, the action it must record, and the before and after it must show
/// (None: not checked).
type Expected = (Vec<String>, &'static str, Option<Value>, Option<Value>);

/// The audit rows after `after_id`, oldest first.
async fn audit_since(
    env: &TestEnv,
    after_id: i64,
) -> Vec<(String, String, String, Option<Value>, Option<Value>)> {
    sqlx::query_as(
        "SELECT actor, action, target, before, after FROM audit_log WHERE id > $1 ORDER BY id",
    )
    .bind(after_id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

async fn last_audit_id(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM audit_log")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_administrative_command_leaves_exactly_one_audit_row() {
    let env = TestEnv::new("").await;
    let config = env.config_file();
    let spec_path = std::env::temp_dir().join(format!("ragq-audit-pipeline-{}.json", env.tag));
    let pipeline = json!({"name": "nightly", "cron": "0 0 3 * * *", "job_template": {
        "kind": "batch.complete", "policy": "cost-optimized",
        "input": {"prompts": [{"prompt": "the secret plan"}]}}});
    std::fs::write(&spec_path, pipeline.to_string()).unwrap();
    let spec_arg = format!("@{}", spec_path.display());
    let provider_key = std::env::temp_dir().join(format!("ragq-audit-key-{}", env.tag));
    std::fs::write(&provider_key, "sk-initech-0000").unwrap();
    let provider_key = provider_key.display().to_string();
    let key_id = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("key:").map(|k| k.trim().to_string()))
            .expect("the command prints the key id")
    };

    let created = run_ragq(
        &config,
        &[
            "key",
            "create",
            "--tenant",
            "acme",
            "--name",
            "ci",
            "--scopes",
            "jobs:write",
        ],
    )
    .await;
    let ci = key_id(&created);
    let commands: Vec<Expected> = vec![
        (
            vec![
                "tenant".into(),
                "add".into(),
                "initech".into(),
                "--name".into(),
                "Initech".into(),
            ],
            "tenant.create",
            None,
            None,
        ),
        (
            vec![
                "tenant".into(),
                "plan".into(),
                "initech".into(),
                "pro".into(),
            ],
            "tenant.plan",
            Some(json!({"plan": "standard"})),
            Some(json!({"plan": "pro"})),
        ),
        (
            vec![
                "tenant".into(),
                "alert-webhook".into(),
                "initech".into(),
                env.hook_url.clone(),
            ],
            "tenant.alert_webhook",
            Some(json!({"alert_webhook_url": null})),
            Some(json!({"alert_webhook_url": env.hook_url})),
        ),
        (
            vec![
                "budget".into(),
                "set".into(),
                "--tenant".into(),
                "initech".into(),
                "--hard".into(),
                "5".into(),
            ],
            "budget.set",
            None,
            None,
        ),
        (
            vec![
                "budget".into(),
                "set".into(),
                "--tenant".into(),
                "initech".into(),
                "--hard".into(),
                "7".into(),
            ],
            "budget.set",
            None,
            None,
        ),
        (
            vec![
                "pipeline".into(),
                "create".into(),
                "--tenant".into(),
                "acme".into(),
                spec_arg.clone(),
            ],
            "pipeline.create",
            None,
            None,
        ),
        (
            vec![
                "pipeline".into(),
                "pause".into(),
                "--tenant".into(),
                "acme".into(),
                "nightly".into(),
            ],
            "pipeline.pause",
            Some(json!({"enabled": true})),
            Some(json!({"enabled": false})),
        ),
        (
            vec![
                "pipeline".into(),
                "resume".into(),
                "--tenant".into(),
                "acme".into(),
                "nightly".into(),
            ],
            "pipeline.resume",
            Some(json!({"enabled": false})),
            Some(json!({"enabled": true})),
        ),
        (
            vec![
                "pipeline".into(),
                "trigger".into(),
                "--tenant".into(),
                "acme".into(),
                "nightly".into(),
            ],
            "pipeline.trigger",
            None,
            None,
        ),
        (
            vec![
                "key".into(),
                "rotate".into(),
                ci.clone(),
                "--grace".into(),
                "1h".into(),
            ],
            "key.rotate",
            None,
            None,
        ),
        (
            vec![
                "tenant".into(),
                "rotate-webhook-secret".into(),
                "initech".into(),
            ],
            "webhook_secret.rotate",
            None,
            None,
        ),
        (
            vec!["secrets".into(), "reencrypt".into()],
            "secrets.reseal",
            None,
            None,
        ),
        (
            [
                "tenant",
                "provider-key",
                "set",
                "initech",
                "sim",
                "--key-file",
                &provider_key,
            ]
            .map(String::from)
            .to_vec(),
            "provider_key.set",
            None,
            Some(json!({"set": true, "allow_fallback": false})),
        ),
        (
            ["tenant", "provider-key", "delete", "initech", "sim"]
                .map(String::from)
                .to_vec(),
            "provider_key.delete",
            Some(json!({"set": true, "allow_fallback": false})),
            Some(json!({"set": false})),
        ),
        (
            ["webhook", "replay", "--tenant", "acme", "--state", "any"]
                .map(String::from)
                .to_vec(),
            "webhook.replay",
            None,
            None,
        ),
        (
            vec!["key".into(), "revoke".into(), ci.clone()],
            "key.revoke",
            Some(json!({"revoked_at": null})),
            None,
        ),
    ];
    for (args, action, before, after) in commands {
        let from = last_audit_id(&env).await;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ragq(&config, &args).await;
        let rows = audit_since(&env, from).await;
        assert_eq!(
            rows.len(),
            1,
            "`ragq {}` left {} audit rows",
            args.join(" "),
            rows.len()
        );
        let (actor, got_action, _, got_before, got_after) = &rows[0];
        assert!(actor.starts_with("cli:"), "{actor}");
        assert_eq!(got_action, action);
        if let Some(b) = before {
            assert_eq!(got_before.as_ref(), Some(&b), "{action}");
        }
        if let Some(a) = after {
            assert_eq!(got_after.as_ref(), Some(&a), "{action}");
        }
        assert!(got_after.is_some(), "{action} records what it made");
    }

    // The second budget.set shows the first as its before.
    let budget_rows = audit_since(&env, 0).await;
    let (.., second_before, second_after) = budget_rows
        .iter()
        .filter(|r| r.1 == "budget.set")
        .nth(1)
        .unwrap();
    assert_eq!(
        second_before.as_ref().unwrap()["hard_limit_micros"],
        5_000_000
    );
    assert_eq!(
        second_after.as_ref().unwrap()["hard_limit_micros"],
        7_000_000
    );
    // The pipeline's prompt is kept as a digest only.
    let log = serde_json::to_string(&budget_rows.iter().map(|r| (&r.3, &r.4)).collect::<Vec<_>>())
        .unwrap();
    assert!(
        !log.contains("the secret plan"),
        "tenant content in the audit log"
    );

    // Over HTTP the actor is the key's id.
    let base = env.serve_api().await;
    let from = last_audit_id(&env).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/pipelines/nightly/pause"))
        .bearer_auth(env.api_key("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let rows = audit_since(&env, from).await;
    let acme_key = &env.tenants[0].api_key_id;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        (format!("key:{acme_key}").as_str(), "pipeline.pause")
    );

    // `ragq audit` filters; the log refuses changes.
    let listed = run_ragq(
        &config,
        &["audit", "--tenant", "acme", "--action", "key", "--json"],
    )
    .await;
    let actions: Vec<String> = listed
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(actions, ["key.revoke", "key.rotate", "key.create"]);
    for sql in [
        "UPDATE audit_log SET actor = 'someone'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let refused = sqlx::query(sql).execute(&env.pool).await;
        assert!(refused.is_err(), "{sql} was allowed");
    }
    let _ = std::fs::remove_file(&spec_path);
    let _ = std::fs::remove_file(&provider_key);
}

/// What the official Standard Webhooks library says of each (secret, webhook) pair: `ok` or
/// `fail: …`.
async fn verify_officially(
    pairs: &[(String, &ragq_tools::receiver::ReceivedWebhook)],
) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/verify-webhooks.sh");
    let mut child = tokio::process::Command::new("bash")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for (secret, hook) in pairs {
        let line = json!({"secret": secret, "id": hook.id, "timestamp": hook.timestamp,
            "signature": hook.signature, "body": hook.body});
        input.push_str(&format!("{line}\n"));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Submits one job for acme over AMQP and returns its webhook once received.
async fn one_delivery(env: &TestEnv, id: &str) -> ragq_tools::receiver::ReceivedWebhook {
    let conn = env.amqp().await;
    env.publish_job(&conn, &env.job("acme", id, 1)).await;
    env.wait_until(30, "the job's webhook", || async {
        env.received().iter().any(|h| h.body.contains(id))
    })
    .await;
    env.received()
        .into_iter()
        .find(|h| h.body.contains(id))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_sealed_at_rest_and_rotate_with_both_signatures() {
    let env = TestEnv::new("").await;
    let config = env.config_file();
    let old_secret = env.secret("acme");

    // At rest: sealed, no secret in clear anywhere in the tenants table.
    let clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenants WHERE webhook_secret NOT LIKE 'enc:v1:%' \
           OR to_jsonb(tenants)::text LIKE '%whsec_%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(clear, 0, "a webhook secret is stored in clear");

    // Rotation with a grace period: deliveries carry both signatures.
    let out = run_ragq(
        &config,
        &["tenant", "rotate-webhook-secret", "acme", "--grace", "1h"],
    )
    .await;
    let new_secret = out
        .lines()
        .find_map(|l| l.strip_prefix("webhook secret:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(new_secret.starts_with("whsec_") && new_secret != old_secret);
    let (worker, handle) = env.start_worker();
    let during = one_delivery(&env, "during-grace").await;
    assert_eq!(
        during.signature.split(' ').count(),
        2,
        "{}",
        during.signature
    );
    let verdicts =
        verify_officially(&[(old_secret.clone(), &during), (new_secret.clone(), &during)]).await;
    assert_eq!(
        verdicts,
        ["ok", "ok"],
        "both secrets verify inside the grace period"
    );
    worker.cancel();
    handle.await.unwrap();

    // The grace period ends (the clock moved past it): only the new secret verifies. A fresh
    // worker, so no cached tenant hides the change.
    sqlx::query("UPDATE tenants SET previous_webhook_secret_until = now() - interval '1 second' WHERE id = 'acme'")
        .execute(&env.pool)
        .await
        .unwrap();
    let (worker, handle) = env.start_worker();
    let after = one_delivery(&env, "after-grace").await;
    assert_eq!(after.signature.split(' ').count(), 1);
    let verdicts =
        verify_officially(&[(old_secret.clone(), &after), (new_secret.clone(), &after)]).await;
    assert_eq!(verdicts[1], "ok");
    assert!(
        verdicts[0].starts_with("fail"),
        "the old secret still verifies: {verdicts:?}"
    );
    worker.cancel();
    handle.await.unwrap();

    // A key change: a new key, the old one retired, `ragq secrets reencrypt`; then the new key
    // alone opens every secret.
    let key_out = run_ragq(&config, &["secrets", "new-key"]).await;
    let beside = |suffix: &str| {
        std::path::PathBuf::from(format!("{}.{suffix}", env.vectors_dir().display()))
    };
    let new_key_file = beside("new-key");
    std::fs::write(&new_key_file, key_out.trim()).unwrap();
    let old_key_file = beside("sealing-key");
    let rekeyed = std::fs::read_to_string(&config).unwrap().replace(
        &format!("key_file = \"{}\"", old_key_file.display()),
        &format!(
            "key_file = \"{}\"\nretired_key_files = [\"{}\"]",
            new_key_file.display(),
            old_key_file.display()
        ),
    );
    let rekeyed_path = beside("rekeyed.toml");
    std::fs::write(&rekeyed_path, &rekeyed).unwrap();
    let out = run_ragq(&rekeyed_path, &["secrets", "reencrypt"]).await;
    assert!(out.starts_with("3 stored secrets re-sealed"), "{out}");
    let new_only = rekeyed.replace(
        &format!("\nretired_key_files = [\"{}\"]", old_key_file.display()),
        "",
    );
    let mut cfg = ragq::config::Config::from_toml(&new_only).unwrap();
    let tenant = ragq::tenants::TenantDirectory::new(env.pool.clone(), std::time::Duration::ZERO)
        .get("acme")
        .await
        .unwrap()
        .unwrap();
    let opened = tenant
        .signing_secrets(&cfg.secrets, chrono::Utc::now())
        .unwrap();
    assert_eq!(opened[0].expose(), new_secret);

    // A secret stored in clear (from before a key was configured) is sealed by the next migration.
    sqlx::query("UPDATE tenants SET webhook_secret = $1 WHERE id = 'globex'")
        .bind(env.secret("globex"))
        .execute(&env.pool)
        .await
        .unwrap();
    cfg.database.migrate_on_start = true;
    ragq::db::connect(&cfg.database).await.unwrap();
    let stored: String =
        sqlx::query_scalar("SELECT webhook_secret FROM tenants WHERE id = 'globex'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(stored.starts_with("enc:v1:"), "{stored}");
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE action IN ('webhook_secret.rotate', 'secrets.reseal') ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        ["webhook_secret.rotate", "secrets.reseal", "secrets.reseal"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_deliveries_alert_the_tenant_and_replay_with_their_webhook_id() {
    let env = TestEnv::new("").await;
    let config = env.config_file();
    ragq::tenants::set_alert_webhook(&env.pool, &Actor::cli(), "acme", Some(&env.hook_url))
        .await
        .unwrap();
    // The receiver is down for exactly the job's six attempts (webhooks.max_attempts = 6).
    env.hooks.refuse_next(6);
    let (_worker, _handle) = env.start_worker();
    let conn = env.amqp().await;
    env.publish_job(&conn, &env.job("acme", "lost-hook", 1))
        .await;
    let delivery_id: String = {
        env.wait_until(60, "the job's delivery to spend its attempts", || async {
            env.count("SELECT count(*) FROM webhook_deliveries WHERE job_id = 'lost-hook' AND state = 'failed'")
                .await
                == 1
        })
        .await;
        sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE job_id = 'lost-hook'")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };

    // The tenant hears of it on its alert webhook, signed like any delivery.
    env.wait_until(30, "webhook.exhausted", || async {
        env.received()
            .iter()
            .any(|h| h.body.contains("webhook.exhausted"))
    })
    .await;
    let alert = env
        .received()
        .into_iter()
        .find(|h| h.body.contains("webhook.exhausted"))
        .unwrap();
    let event: Value = serde_json::from_str(&alert.body).unwrap();
    assert_eq!(event["data"]["webhook_id"], delivery_id.as_str());
    assert_eq!(event["data"]["job_id"], "lost-hook");
    assert_eq!(event["data"]["attempts"], 6);
    assert_eq!(alert.verified, Some(true));
    assert!(
        !env.received().iter().any(|h| h.id == delivery_id),
        "nothing got through yet"
    );

    // The receiver is back: a replay re-sends it with the same webhook-id.
    let out = run_ragq(
        &config,
        &[
            "webhook",
            "replay",
            "--tenant",
            "acme",
            "--job",
            "lost-hook",
        ],
    )
    .await;
    assert!(out.starts_with("1 deliveries"), "{out}");
    env.wait_until(30, "the replayed delivery", || async {
        env.received().iter().any(|h| h.id == delivery_id)
    })
    .await;
    let replayed = env
        .received()
        .into_iter()
        .find(|h| h.id == delivery_id)
        .unwrap();
    assert!(replayed.body.contains("lost-hook") && replayed.verified == Some(true));

    // Over HTTP, scoped to the key's tenant: globex cannot replay acme's, acme can again.
    let base = env.serve_api().await;
    let replay = |key: String, body: Value| {
        let base = base.clone();
        async move {
            let resp = reqwest::Client::new()
                .post(format!("{base}/v1/webhooks/replay"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let body = json!({"job_id": "lost-hook", "state": "delivered"});
    let (status, globex) = replay(env.api_key("globex"), body.clone()).await;
    assert_eq!((status, globex["replayed"].as_u64()), (200, Some(0)));
    let (status, acme) = replay(env.api_key("acme"), body).await;
    assert_eq!(
        (status, acme["webhook_ids"][0].as_str()),
        (200, Some(delivery_id.as_str()))
    );
    env.wait_until(30, "the second replay", || async {
        env.received()
            .iter()
            .filter(|h| h.id == delivery_id)
            .count()
            == 2
    })
    .await;
    let (status, _) = replay(env.api_key("acme"), json!({"state": "lost"})).await;
    assert_eq!(status, 400);
    let audited = env
        .count("SELECT count(*) FROM audit_log WHERE action = 'webhook.replay'")
        .await;
    assert_eq!(audited, 3, "each replay is audited, the empty one included");
}

/// Every row of every table (but the migrations' own) that mentions `needle` anywhere, as
/// `table: row`.
async fn rows_mentioning(env: &TestEnv, needle: &str) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for table in tables {
        // The table name comes from the catalog, quoted by Postgres itself.
        let sql: String = sqlx::query_scalar(
            "SELECT format('SELECT t::text FROM %I t WHERE t::text LIKE ''%%'' || $1 || ''%%''', $2::text)",
        )
        .bind(needle)
        .bind(&table)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        let rows: Vec<String> = sqlx::query_scalar(&sql)
            .bind(needle)
            .fetch_all(&env.pool)
            .await
            .unwrap();
        found.extend(rows.into_iter().map(|r| format!("{table}: {r}")));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_row_or_vector_of_the_tenant_and_keeps_the_ledger_anonymized() {
    let env = TestEnv::new("").await;
    let config = env.config_file();
    let (_worker, _handle) = env.start_worker();
    let conn = env.amqp().await;
    let api = env.serve_api().await;
    let doc = |text: &str| json!([{"id": "handbook-1", "text": text}]);
    let ingest = |tenant: &str, id: &str, text: &str| {
        json!({"id": id, "tenant": tenant, "kind": "ingest", "webhook_url": env.hook_url,
               "input": {"collection": "docs", "documents": doc(text)}})
    };
    env.publish_job(
        &conn,
        &ingest("acme", "acme-ingest", "Acme refunds in 14 days."),
    )
    .await;
    env.publish_job(&conn, &env.job("acme", "acme-batch", 2))
        .await;
    env.submit_http(
        &api,
        "globex",
        &ingest("globex", "globex-ingest", "Globex pays in gold."),
    )
    .await;
    env.submit_http(&api, "globex", &env.job("globex", "globex-batch", 1))
        .await;
    for (tenant, id) in [
        ("acme", "acme-ingest"),
        ("acme", "acme-batch"),
        ("globex", "globex-ingest"),
        ("globex", "globex-batch"),
    ] {
        env.wait_for_state(tenant, id, "succeeded", 30).await;
    }
    run_ragq(
        &config,
        &["budget", "set", "--tenant", "acme", "--hard", "5"],
    )
    .await;
    run_ragq(
        &config,
        &["key", "create", "--tenant", "acme", "--name", "extra"],
    )
    .await;
    env.wait_until(30, "acme's webhooks", || async {
        env.count("SELECT count(*) FROM webhook_deliveries WHERE tenant_id = 'acme' AND state = 'delivered'").await == 2
    })
    .await;
    let store = ragq::retrieval::VectorStore::open(&env.cfg.retrieval.store).unwrap();
    assert_eq!(store.count("docs", "acme").await.unwrap(), 1);
    let ledger_before: i64 =
        sqlx::query_scalar("SELECT sum(cost_micros)::bigint FROM provider_calls")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(!rows_mentioning(&env, "acme").await.is_empty());

    let refused = try_ragq(&config, &["tenant", "delete", "acme"])
        .await
        .unwrap_err();
    assert!(refused.contains("--yes"), "{refused}");
    run_ragq(&config, &["tenant", "delete", "acme", "--yes"]).await;

    let left = rows_mentioning(&env, "acme").await;
    assert!(left.is_empty(), "rows still mention acme: {left:#?}");
    assert_eq!(
        store.count("docs", "acme").await.unwrap(),
        0,
        "acme's vectors are gone"
    );
    assert_eq!(
        store.count("docs", "globex").await.unwrap(),
        1,
        "globex's stay"
    );
    let ledger_after: i64 =
        sqlx::query_scalar("SELECT sum(cost_micros)::bigint FROM provider_calls")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        ledger_after, ledger_before,
        "the anonymized ledger still adds up"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE tenant_id = 'globex'")
            .await,
        2
    );
    let erased = env
        .count("SELECT count(*) FROM audit_log WHERE action = 'tenant.erase'")
        .await;
    assert_eq!(erased, 1);
    // acme's old key is gone with it.
    assert_eq!(
        get(&api, "/v1/jobs/acme-batch", &env.api_key("acme"))
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_finished_jobs_content_and_keeps_their_rows() {
    let env = TestEnv::new("").await;
    let (_worker, _handle) = env.start_worker();
    let conn = env.amqp().await;
    env.publish_job(&conn, &env.job("acme", "old-job", 1)).await;
    env.wait_for_state("acme", "old-job", "succeeded", 30).await;
    env.wait_until(30, "its webhook", || async {
        env.count("SELECT count(*) FROM webhook_deliveries WHERE job_id = 'old-job' AND state = 'delivered'").await == 1
    })
    .await;
    let day = std::time::Duration::from_secs(86_400);
    // Not yet due: nothing purged.
    let none = ragq::jobs::retention::purge(&env.pool, 30 * day, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((none.jobs, none.deliveries), (0, 0));
    // Thirty-one days later.
    let purged = ragq::jobs::retention::purge(&env.pool, 30 * day, 31 * day)
        .await
        .unwrap();
    assert_eq!((purged.jobs, purged.deliveries), (1, 1));
    let (input, result, state, purged_at): (
        Value,
        Value,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as("SELECT input, result, state, purged_at FROM jobs WHERE id = 'old-job'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        (input, result, state.as_str()),
        (
            json!({"purged": true}),
            json!({"purged": true}),
            "succeeded"
        )
    );
    assert!(purged_at.is_some());
    let payload: String =
        sqlx::query_scalar("SELECT payload FROM webhook_deliveries WHERE job_id = 'old-job'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(payload, "");
    assert!(
        env.count("SELECT count(*) FROM provider_calls WHERE job_id = 'old-job'")
            .await
            >= 1,
        "the ledger stays"
    );
    let again = ragq::jobs::retention::purge(&env.pool, 30 * day, 31 * day)
        .await
        .unwrap();
    assert_eq!((again.jobs, again.deliveries), (0, 0), "purged once");

    // Dead letters expire too: ragq.dlq is declared with the TTL (14 days by default).
    let queues = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-p",
            &env.vhost,
            "name",
            "arguments",
            "--no-table-headers",
        ])
        .output()
        .unwrap();
    let queues = String::from_utf8_lossy(&queues.stdout);
    let dlq = queues
        .lines()
        .find(|l| l.starts_with("ragq.dlq"))
        .unwrap_or_default();
    assert!(
        dlq.contains("x-message-ttl") && dlq.contains("1209600000"),
        "{queues}"
    );
}

const REDACTION: &str = r#"
[redaction]
tenants = { acme = "mask-pii", globex = "block-pii" }
features = { audit = "detect-pii", blocked = "block-pii" }
custom = [{ name = "ticket", pattern = "TCK-[0-9]{6}" }]
[redaction.policies.mask-pii]
mode = "mask"
restore = true
[redaction.policies.block-pii]
mode = "block"
[redaction.policies.detect-pii]
mode = "detect"
"#;

/// One value of each kind of personal data, and the kind it is.
const PII: [(&str, &str); 7] = [
    ("email", "jane.doe@example.com"),
    ("phone", "+44 20 7946 0958"),
    ("card", "4111 1111 1111 1111"),
    ("iban", "GB82 WEST 1234 5698 7654 32"),
    ("ip", "192.168.1.20"),
    ("national_id", "078-05-1120"),
    ("ticket", "TCK-123456"),
];

fn pii_text() -> String {
    PII.iter()
        .map(|(_, v)| *v)
        .collect::<Vec<_>>()
        .join(" and ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_masks_blocks_and_detects_as_its_policy_says() {
    let env = TestEnv::with_sections("", REDACTION).await;
    let (_worker, _handle) = env.start_worker();
    let conn = env.amqp().await;
    let api = env.serve_api().await;
    let text = pii_text();
    let batch = |id: &str, feature: &str| {
        json!({"id": id, "tenant": "acme", "kind": "batch.complete", "webhook_url": env.hook_url,
               "input": {"system": format!("Write to {}", PII[0].1),
                         "prompts": [{"prompt": PII.iter().map(|(_, v)| *v).take(3).collect::<Vec<_>>().join(" ")},
                                     {"prompt": text.clone()}]},
               "tags": {"feature": feature}})
    };
    let ingest = json!({"id": "pii-ingest", "tenant": "acme", "kind": "ingest",
        "input": {"collection": "kb", "documents": [{"id": "d1", "text": format!("Contact: {text}")}]}});
    let ask = json!({"id": "pii-ask", "tenant": "acme", "kind": "rag.answer",
        "input": {"collection": "kb", "question": format!("Who is {}?", PII[0].1)}});
    env.publish_job(&conn, &batch("pii-mask", "support")).await;
    env.publish_job(&conn, &ingest).await;
    env.wait_for_state("acme", "pii-ingest", "succeeded", 30)
        .await;
    env.publish_job(&conn, &ask).await;
    env.publish_job(&conn, &batch("pii-blocked", "blocked"))
        .await;
    for (id, state) in [
        ("pii-mask", "succeeded"),
        ("pii-ask", "succeeded"),
        ("pii-blocked", "failed"),
    ] {
        env.wait_for_state("acme", id, state, 30).await;
    }

    // Mask: no provider request (chat or embeddings) holds a value; the stored input holds
    // typed placeholders.
    let requests = env.sim.requests();
    assert!(
        requests.iter().any(|r| r.body.contains("[CARD_1]")),
        "the prompts reached the provider masked"
    );
    assert!(requests.iter().any(|r| r.path == "/v1/embeddings"));
    for r in &requests {
        for (kind, value) in PII {
            assert!(
                !r.body.contains(value),
                "{kind} `{value}` reached the provider: {}",
                r.body
            );
        }
    }
    let input: Value = sqlx::query_scalar("SELECT input FROM jobs WHERE id = 'pii-mask'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    for (kind, value) in PII {
        assert!(
            !input.to_string().contains(value),
            "stored input holds the {kind}"
        );
    }
    assert_eq!(input["system"], "Write to [EMAIL_1]");
    assert!(input["prompts"][1]["prompt"]
        .as_str()
        .unwrap()
        .contains("[IBAN_1] and [IP_1] and [NATIONAL_ID_1] and [TICKET_1]"));
    for id in ["pii-ingest", "pii-ask"] {
        let stored: Value = sqlx::query_scalar("SELECT input FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert!(!stored.to_string().contains(PII[0].1), "{id}: {stored}");
    }
    // restore = true: the values are back in the result, which says what was found.
    let result: Value = sqlx::query_scalar("SELECT result FROM jobs WHERE id = 'pii-mask'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(result.to_string().contains(PII[0].1), "restored: {result}");
    assert_eq!(result["redaction"]["found"]["email"], 3);
    assert_eq!(result["redaction"]["found"]["card"], 2);

    // Block: the job failed, naming the kinds and never a value; its stored input is masked.
    let (code, error, input): (String, String, Value) =
        sqlx::query_as("SELECT error_code, error, input FROM jobs WHERE id = 'pii-blocked'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(code, "pii_blocked");
    assert!(
        error.contains("email") && error.contains("card") && error.contains("ticket"),
        "{error}"
    );
    for (_, value) in PII {
        assert!(!error.contains(value) && !input.to_string().contains(value));
    }
    // Over HTTP a blocked submission is refused before anything is stored.
    let mut globex = batch("pii-http", "support");
    globex.as_object_mut().unwrap().remove("tenant");
    let resp = reqwest::Client::new()
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(env.api_key("globex"))
        .json(&globex)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("pii_blocked") && body.contains("card"),
        "{body}"
    );
    assert!(!PII.iter().any(|(_, v)| body.contains(v)), "{body}");
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE id = 'pii-http'")
            .await,
        0
    );

    // Detect: the text is left alone and counted.
    env.publish_job(&conn, &batch("pii-detect", "audit")).await;
    env.wait_for_state("acme", "pii-detect", "succeeded", 30)
        .await;
    let (input, result): (Value, Value) =
        sqlx::query_as("SELECT input, result FROM jobs WHERE id = 'pii-detect'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(input.to_string().contains(PII[2].1));
    assert_eq!(result["redaction"]["mode"], "detect");
    assert_eq!(result["redaction"]["found"]["ticket"], 1);
}

const OPERATOR_KEY: &str = "sk-operator-test-0123";
const ACME_KEY: &str = "sk-acme-own-key-4567";

/// A second sim provider, `sim-op`, reached with the operator's key, and a policy over it.
fn byok_sections(operator_key_file: &std::path::Path) -> String {
    format!(
        "[[providers]]\nname = \"sim-op\"\nkind = \"openai\"\nbase_url = \"{{sim_url}}\"\n\
         api_key_file = \"{}\"\n\
         [[models]]\nname = \"op-small\"\nprovider = \"sim-op\"\nmodel_id = \"sim-small\"\n\
         input_price_micros_per_mtok = 150000\noutput_price_micros_per_mtok = 600000\n\
         context_window = 16384\n\
         [policies.byok]\nmodels = [\"op-small\"]\n",
        operator_key_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_provider_key_carries_its_calls_and_never_shows() {
    let dir = std::env::temp_dir().join(format!("ragq-byok-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let operator_key_file = dir.join("operator-key");
    std::fs::write(&operator_key_file, OPERATOR_KEY).unwrap();
    let env = TestEnv::with_sections("", &byok_sections(&operator_key_file)).await;
    let config = env.config_file();
    let acme_key_file = dir.join("acme-key");
    std::fs::write(&acme_key_file, ACME_KEY).unwrap();
    run_ragq(
        &config,
        &[
            "tenant",
            "provider-key",
            "set",
            "acme",
            "sim-op",
            "--key-file",
            acme_key_file.to_str().unwrap(),
        ],
    )
    .await;
    let api = env.serve_api().await;
    // globex brings a key the provider refuses, and allows falling back to the operator's.
    let put = |body: Value| {
        let api = api.clone();
        let key = env.api_key("globex");
        async move {
            let resp = reqwest::Client::new()
                .put(format!("{api}/v1/provider-keys/sim-op"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, answer) =
        put(json!({"key": "sk-revoked-globex-89", "allow_fallback": true})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer.contains("sk-revoked"),
        "the key is never echoed: {answer}"
    );
    let (status, answer) =
        put(json!({"key": "sk-revoked-globex-89", "allow_fallback": "yes"})).await;
    assert_eq!(status, 400);
    assert!(!answer.contains("sk-revoked"), "nor in an error: {answer}");

    let log = dir.join("worker.log");
    let mut worker = common::spawn_worker_logging(&config, "debug", &log);
    let conn = env.amqp().await;
    let mut acme_job = env.job("acme", "byok-acme", 1);
    acme_job["policy"] = json!("byok");
    env.publish_job(&conn, &acme_job).await;
    let mut globex_job = env.job("globex", "byok-globex", 1);
    globex_job["policy"] = json!("byok");
    env.submit_http(&api, "globex", &globex_job).await;
    env.wait_for_state("acme", "byok-acme", "succeeded", 60)
        .await;
    env.wait_for_state("globex", "byok-globex", "succeeded", 60)
        .await;

    // What the provider saw: acme's key on acme's call; on globex's, its refused key, then the
    // operator's.
    let requests = env.sim.requests();
    let credentials = |job: &str| -> Vec<String> {
        requests
            .iter()
            .filter(|r| r.body.contains(&format!("of job {job}")))
            .map(|r| r.credential.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(credentials("byok-acme"), [format!("Bearer {ACME_KEY}")]);
    assert_eq!(
        credentials("byok-globex"),
        [
            "Bearer sk-revoked-globex-89".to_string(),
            format!("Bearer {OPERATOR_KEY}")
        ]
    );

    // The ledger: acme's call is byok, at cost 0 to the operator with its list cost beside;
    // globex's went out on the operator's key and is billed.
    let (cost, tags): (i64, Value) =
        sqlx::query_as("SELECT cost_micros, tags FROM provider_calls WHERE job_id = 'byok-acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(cost, 0);
    assert_eq!(tags["byok"], "true");
    assert!(
        tags["byok_cost_micros"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    let (cost, tags): (i64, Value) =
        sqlx::query_as("SELECT cost_micros, tags FROM provider_calls WHERE job_id = 'byok-globex'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(cost > 0 && tags.get("byok").is_none(), "{tags}");

    // Never in clear: not in any row, not in the worker's debug log.
    common::terminate(&mut worker).await;
    for key in [ACME_KEY, "sk-revoked-globex-89"] {
        assert!(
            rows_mentioning(&env, key).await.is_empty(),
            "{key} stored in clear"
        );
        assert!(
            !std::fs::read_to_string(&log).unwrap().contains(key),
            "{key} in the worker's log"
        );
    }
    let sealed = env
        .count("SELECT count(*) FROM tenant_provider_keys WHERE sealed_key LIKE 'enc:v1:%'")
        .await;
    assert_eq!(sealed, 2);
    let audited = env
        .count("SELECT count(*) FROM audit_log WHERE action = 'provider_key.set'")
        .await;
    assert_eq!(audited, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
