//! The AMQP permissions the README gives a tenant's user (configure nothing, write only the
//! `ragq.jobs` exchange, read nothing) are enough to submit jobs and too little to read, consume,
//! purge or declare anything, as RabbitMQ itself enforces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use common::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_tenant_user_publishes_and_reads_nothing() {
    let env = TestEnv::new("").await;
    let user = format!("tenant-w-{}", &env.vhost[7..]);
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
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
    sqlx::query("UPDATE tenants SET amqp_user = $1 WHERE id = 'acme'")
        .bind(&user)
        .execute(&env.pool)
        .await
        .unwrap();
    let (stop, worker) = env.start_worker();
    // The worker declares the topology; wait until the queue exists.
    let admin = env.amqp().await;
    env.wait_until(30, "the topology declared", || async {
        let ch = admin.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare("ragq.jobs".into(), passive, FieldTable::default())
            .await
            .is_ok()
    })
    .await;

    let url = format!("amqp://{user}:pw@127.0.0.1:5672/{}", env.vhost);
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let job = env.job("acme", "by-tenant-user", 1);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_user_id(user.as_str().into());
    let confirm = ch
        .basic_publish(
            "ragq.jobs".into(),
            "batch.complete".into(),
            BasicPublishOptions::default(),
            job.to_string().as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the tenant's user may publish");
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
