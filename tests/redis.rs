//! Triggers over Redis pub/sub, against the machine's real Redis: a PUBLISH reaches a
//! subscriber, several nodes, a killed connection, bad messages.

#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::brokers::*;
use common::*;
use high_templar::Handle;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};

/// How long a test waits to be sure a second copy of a trigger does not come.
const NO_DUPLICATE_WITHIN: Duration = Duration::from_millis(300);

/// A server subscribed to `channel` at `url`, its backend allowing [`allowed`] rooms.
async fn node(url: &str, channel: &str) -> (TestBackend, Handle) {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await;
    let server = start(with_redis(config_for(&backend), url, channel)).await;
    wait_for_connects(&server, "redis", 1).await;
    (backend, server)
}

/// `PUBLISH channel body`; returns how many subscribers Redis delivered it to.
async fn publish(redis: &mut MultiplexedConnection, channel: &str, body: &[u8]) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(body)
        .query_async(redis)
        .await
        .expect("PUBLISH")
}

#[tokio::test]
async fn a_published_trigger_reaches_a_subscriber() {
    let mut redis = redis_connection().await;
    let channel = high_templar::config::DEFAULT_REDIS_CHANNEL;
    let (_b, server) = node(&redis_url(), channel).await;
    let customer = unique("c");
    let mut client = subscriber(&server, &customer, "req-1").await;

    let data = json!({"id": 7, "text": "hé"});
    assert!(
        publish(
            &mut redis,
            "hightemplar",
            trigger_for(&customer, data.clone()).as_bytes()
        )
        .await
            >= 1
    );
    assert_eq!(
        client.recv_json().await,
        json!({"type": "publish", "data": data, "requestId": "req-1"})
    );
    let status = server.status();
    assert!(status["triggers_received"]["redis"].as_u64() >= Some(1));
    assert_eq!(status["redis_connected"], json!(true));
    assert_eq!(status["amqp_connected"], Value::Null);
}

#[tokio::test]
async fn two_nodes_each_deliver_one_trigger_exactly_once() {
    let mut redis = redis_connection().await;
    let channel = unique("ht-test");
    let (_b1, first) = node(&redis_url(), &channel).await;
    let (_b2, second) = node(&redis_url(), &channel).await;
    let customer = unique("c");
    let mut on_first = subscriber(&first, &customer, "one").await;
    let mut on_second = subscriber(&second, &customer, "two").await;

    let receivers = publish(
        &mut redis,
        &channel,
        trigger_for(&customer, json!("hi")).as_bytes(),
    )
    .await;
    assert_eq!(receivers, 2);
    for (client, request_id) in [(&mut on_first, "one"), (&mut on_second, "two")] {
        assert_eq!(
            client.recv_json().await,
            json!({"type": "publish", "data": "hi", "requestId": request_id})
        );
        client.expect_silence(NO_DUPLICATE_WITHIN).await;
    }
    assert_eq!(first.status()["triggers_received"]["redis"], 1);
    assert_eq!(second.status()["triggers_received"]["redis"], 1);
}

#[tokio::test]
async fn a_killed_connection_comes_back_without_a_restart() {
    let mut redis = redis_connection().await;
    // A user of its own lets the test kill exactly this node's connection, not those of
    // tests running beside it.
    let user = unique("ht-test");
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", &user, "on", "nopass", "~*", "&*", "+@all"][..])
        .query_async(&mut redis)
        .await
        .expect("ACL SETUSER");
    let url = redis_url().replacen("redis://", &format!("redis://{user}:unused@"), 1);
    let channel = unique("ht-test");
    let (_b, server) = node(&url, &channel).await;
    let customer = unique("c");
    let mut client = subscriber(&server, &customer, "req").await;
    publish(
        &mut redis,
        &channel,
        trigger_for(&customer, json!(1)).as_bytes(),
    )
    .await;
    assert_eq!(client.recv_json().await["data"], 1);

    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", &user][..])
        .query_async(&mut redis)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);
    let status = wait_for_connects(&server, "redis", 2).await;
    assert_eq!(status["open_connections"], 1);
    publish(
        &mut redis,
        &channel,
        trigger_for(&customer, json!(2)).as_bytes(),
    )
    .await;
    assert_eq!(
        client.recv_json().await,
        json!({"type": "publish", "data": 2, "requestId": "req"})
    );
    let _: i64 = redis::cmd("ACL")
        .arg(&["DELUSER", &user][..])
        .query_async(&mut redis)
        .await
        .expect("ACL DELUSER");
}

#[tokio::test]
async fn garbage_on_the_channel_is_counted_and_ignored() {
    let mut redis = redis_connection().await;
    let channel = unique("ht-test");
    let (_b, server) = node(&redis_url(), &channel).await;
    let customer = unique("c");
    let mut client = subscriber(&server, &customer, "req").await;

    let garbage: [&[u8]; 4] = [
        b"not json",
        b"\xff\xfe binary",
        br#"{"rooms": [{"target": "message"}]}"#,
        b"\"just a string\"",
    ];
    for body in garbage {
        publish(&mut redis, &channel, body).await;
    }
    publish(
        &mut redis,
        &channel,
        trigger_for(&customer, json!("good")).as_bytes(),
    )
    .await;
    assert_eq!(client.recv_json().await["data"], "good");
    let status = server.status();
    assert_eq!(status["triggers_invalid"], 4, "{status}");
    assert_eq!(status["triggers_received"]["redis"], 1, "{status}");
    assert_eq!(
        status["redis_connects"], 1,
        "bad messages must not cost the connection"
    );
}

#[tokio::test]
async fn websockets_are_served_while_redis_is_away() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await;
    let config = with_redis(
        config_for(&backend),
        &format!("redis://127.0.0.1:{port}/"),
        "unused",
    );
    let server = start(config).await;
    let mut client = subscriber(&server, "1", "req").await;
    let status = client.status().await;
    assert_eq!(status["redis_connected"], json!(false), "{status}");
    // HTTP triggers still work locally.
    let (code, body) = post_trigger(server.local_addr, &trigger_for("1", json!(1))).await;
    assert_eq!((code, body), (200, json!({"delivered": 1, "triggers": 1})));
    assert_eq!(client.recv_json().await["data"], 1);
    server.shutdown(Duration::from_secs(5)).await;
}
