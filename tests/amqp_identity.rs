//! The AMQP permissions the README gives a tenant's user (configure nothing, write only the
//! `ragq.jobs` exchange, read nothing) are enough to submit jobs and too little to read, consume,
//! purge or declare anything, as RabbitMQ itself enforces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use common::{rabbitmqctl as ctl, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_tenant_user_publishes_and_reads_nothing() {
    let env = TestEnv::new("").await;
    let (user, conn) = write_only_user(&env, "acme").await;
    let (stop, worker) = env.start_worker();
    topology_declared(&env).await;
    let job = env.job("acme", "by-tenant-user", 1);
    publish_as(&conn, &user, &job, FieldTable::default()).await;
    env.wait_for_state("acme", "by-tenant-user", "succeeded", 60)
        .await;

    // Every read, purge, consume or declare is refused by the broker (each closes its channel).
    for queue in ["ragq.jobs", "ragq.dlq"] {
        let ch = conn.create_channel().await.unwrap();
        let got = ch.basic_get(queue.into(), BasicGetOptions::default()).await;
        assert!(got.is_err(), "basic.get on {queue} was allowed");
        let ch = conn.create_channel().await.unwrap();
        let consumed = ch
            .basic_consume(
                queue.into(),
                "spy".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert!(consumed.is_err(), "basic.consume on {queue} was allowed");
        let ch = conn.create_channel().await.unwrap();
        let purged = ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await;
        assert!(purged.is_err(), "queue.purge on {queue} was allowed");
    }
    let ch = conn.create_channel().await.unwrap();
    let declared = ch
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(declared.is_err(), "queue.declare was allowed");
    stop.cancel();
    worker.await.unwrap();
    ctl(&["delete_user", &user]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_the_publisher_and_a_replayed_forgery_is_refused_again() {
    let env = TestEnv::new("").await;
    // The worker publishes as guest (ragq's own user here), which is nobody's tenant user.
    sqlx::query("UPDATE tenants SET amqp_user = 'acme-elsewhere' WHERE id = 'acme'")
        .execute(&env.pool)
        .await
        .unwrap();
    let (user, conn) = write_only_user(&env, "globex").await;
    // More 503s than one attempt absorbs: globex's job, authorized as globex's at intake, is
    // retried from Postgres, without being published again.
    env.set_outage(15);
    let (stop, worker) = env.start_worker();
    topology_declared(&env).await;
    let retried = env.job("globex", "retried", 1);
    publish_as(&conn, &user, &retried, FieldTable::default()).await;
    env.wait_for_state("globex", "retried", "succeeded", 60)
        .await;
    let attempts = env
        .count("SELECT attempts::int8 FROM jobs WHERE id = 'retried'")
        .await;
    assert!(
        attempts >= 2,
        "the job went through a retry, got {attempts}"
    );

    // globex's user names acme: dead-lettered. An operator replays the dead-letter queue with
    // ragq's own user (as a shovel would): the copy is refused again, as globex's user.
    let forged = env.job("acme", "forged", 1);
    publish_as(&conn, &user, &forged, FieldTable::default()).await;
    let admin = env.amqp().await;
    let first = dead_letter_with_reason(&env, &admin, "may not publish for tenant `acme`").await;
    let headers = first.properties.headers().clone().unwrap_or_default();
    assert_eq!(
        header(&headers, "x-ragq-publisher").as_deref(),
        Some(user.as_str()),
        "the dead letter names its publisher"
    );
    replay(&env, &admin, &first).await;
    let again = dead_letter_with_reason(&env, &admin, "may not publish for tenant `acme`").await;
    assert_eq!(again.data, forged.to_string().into_bytes());
    let reason = header(
        &again.properties.headers().clone().unwrap_or_default(),
        "x-ragq-reason",
    )
    .unwrap();
    assert!(reason.contains(&format!("AMQP user `{user}`")), "{reason}");

    // A tenant that writes the header itself is refused for forging it.
    let mut claimed = FieldTable::default();
    let trusted = env.cfg.queue.trusted_publishers[0].as_str();
    claimed.insert(
        "x-ragq-publisher".into(),
        AMQPValue::LongString(trusted.into()),
    );
    publish_as(&conn, &user, &env.job("acme", "claimed", 1), claimed).await;
    dead_letter_with_reason(&env, &admin, "is set by ragq only").await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE id IN ('forged', 'claimed')")
            .await,
        0,
        "neither forgery ran"
    );
    stop.cancel();
    worker.await.unwrap();
    ctl(&["delete_user", &user]);
}

/// A RabbitMQ user with the README's tenant permissions, made `tenant`'s AMQP user, connected.
async fn write_only_user(env: &TestEnv, tenant: &str) -> (String, Connection) {
    let user = format!("{tenant}-w-{}", &env.vhost[7..]);
    ctl(&["add_user", &user, "pw"]);
    ctl(&[
        "set_permissions",
        "-p",
        &env.vhost,
        &user,
        "^$",
        "^ragq\\.jobs$",
        "^$",
    ]);
    sqlx::query("UPDATE tenants SET amqp_user = $1 WHERE id = $2")
        .bind(&user)
        .bind(tenant)
        .execute(&env.pool)
        .await
        .unwrap();
    let url = format!("amqp://{user}:pw@127.0.0.1:5672/{}", env.vhost);
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    (user, conn)
}

/// Waits until the worker has declared the topology: it consumes ragq.jobs only after declaring
/// every queue and binding.
async fn topology_declared(env: &TestEnv) {
    let admin = env.amqp().await;
    env.wait_until(30, "the topology declared", || async {
        let ch = admin.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare("ragq.jobs".into(), passive, FieldTable::default())
            .await
            .is_ok_and(|q| q.consumer_count() > 0)
    })
    .await;
}

/// Publishes a job as `user` (RabbitMQ checks the user_id), confirmed. The user may only write
/// to the exchange, so nothing is declared.
async fn publish_as(conn: &Connection, user: &str, job: &serde_json::Value, headers: FieldTable) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_user_id(user.into())
        .with_headers(headers);
    common::publish_confirmed(&ch, "batch.complete", job.to_string().as_bytes(), props).await;
    let _ = ch.close(200, "done".into()).await;
}

fn header(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Takes the next dead letter off `ragq.dlq` (waiting for it) and checks its reason.
async fn dead_letter_with_reason(
    env: &TestEnv,
    admin: &Connection,
    reason: &str,
) -> lapin::message::BasicGetMessage {
    let ch = admin.create_channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = ch
            .basic_get("ragq.dlq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if let Some(msg) = got {
            let headers = msg.properties.headers().clone().unwrap_or_default();
            let found = header(&headers, "x-ragq-reason").unwrap_or_default();
            assert!(
                found.contains(reason),
                "dead letter `{found}`, expected `{reason}`"
            );
            return msg;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter saying `{reason}` in {}",
            env.vhost
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Publishes a dead letter back to `ragq.jobs` as ragq's own user (guest), with its headers, as a
/// shovel replaying the dead-letter queue does.
async fn replay(env: &TestEnv, admin: &Connection, msg: &lapin::message::BasicGetMessage) {
    let props = msg.properties.clone().with_user_id("guest".into());
    env.publish_with(admin, "batch.complete", &msg.data, props)
        .await;
}
