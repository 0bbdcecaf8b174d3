//! PROTOCOL.md section 4: triggers over HTTP and their fan-out.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn allowed() -> serde_json::Value {
    json!([{"target": "message", "customer": "*"}, {"target": "board"}])
}

#[tokio::test]
async fn a_trigger_reaches_its_subscriber_with_data_unchanged() {
    let (_b, server) = server_allowing(allowed()).await;
    let mut client = Client::authorized(server.local_addr).await;
    client
        .subscribe(json!({"target": "message", "customer": "1"}), "req-1")
        .await;
    let data = json!({"id": 7, "text": "hé \"quoted\"", "nested": [1, {"a": null}], "f": 1.5});
    let (status, body) = post_trigger(
        server.local_addr,
        &trigger(
            json!([{"customer": "1", "target": "message"}]),
            data.clone(),
        ),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"delivered": 1, "triggers": 1}))
    );
    assert_eq!(
        client.recv_json().await,
        json!({"type": "publish", "data": data, "requestId": "req-1"})
    );
}

#[tokio::test]
async fn two_clients_in_one_room_both_receive() {
    let (_b, server) = server_allowing(allowed()).await;
    let mut a = Client::authorized(server.local_addr).await;
    let mut b = Client::authorized(server.local_addr).await;
    a.subscribe(json!({"target": "board"}), "a1").await;
    b.subscribe(json!({"target": "board"}), "b1").await;
    let (_, body) = post_trigger(
        server.local_addr,
        &trigger(json!([{"target": "board"}]), json!("hi")),
    )
    .await;
    assert_eq!(body["delivered"], 2);
    assert_eq!(
        a.recv_json().await,
        json!({"type": "publish", "data": "hi", "requestId": "a1"})
    );
    assert_eq!(
        b.recv_json().await,
        json!({"type": "publish", "data": "hi", "requestId": "b1"})
    );
}

#[tokio::test]
async fn other_rooms_receive_nothing() {
    let (_b, server) = server_allowing(allowed()).await;
    let mut client = Client::authorized(server.local_addr).await;
    client
        .subscribe(json!({"target": "message", "customer": "1"}), "r")
        .await;
    for rooms in [
        json!([{"target": "message", "customer": "2"}]),
        json!([{"target": "message", "customer": 1}]),
        json!([{"target": "message"}]),
        json!([]),
    ] {
        let (_, body) = post_trigger(server.local_addr, &trigger(rooms, json!(1))).await;
        assert_eq!(body["delivered"], 0);
    }
    client.expect_silence(Duration::from_millis(200)).await;
}

/// Wildcards on both sides, several matching rooms in one trigger: one copy per subscription.
#[tokio::test]
async fn wildcard_fan_out_delivers_each_subscription_once() {
    let (_b, server) = server_allowing(allowed()).await;
    let mut client = Client::authorized(server.local_addr).await;
    client
        .subscribe(json!({"target": "message", "customer": "1"}), "one")
        .await;
    client
        .subscribe(json!({"target": "message", "customer": "2"}), "two")
        .await;
    client
        .subscribe(json!({"target": "message", "customer": "*"}), "all")
        .await;
    client
        .subscribe(json!({"target": "message", "customer": "1"}), "one-again")
        .await;

    // A trigger naming a room twice, plus a wildcard room matching everything.
    let rooms = json!([
        {"target": "message", "customer": "1"},
        {"customer": "1", "target": "message"},
        {"target": "message", "customer": "*"}
    ]);
    let (_, body) = post_trigger(server.local_addr, &trigger(rooms, json!("x"))).await;
    assert_eq!(body["delivered"], 4);
    let counts = collect_publishes(&mut client, 4).await;
    for rid in ["one", "two", "all", "one-again"] {
        assert_eq!(counts.get(rid), Some(&1), "{rid}: {counts:?}");
    }
    client.expect_silence(Duration::from_millis(200)).await;

    // An exact trigger reaches the exact and the wildcard subscription.
    let (_, body) = post_trigger(
        server.local_addr,
        &trigger(json!([{"target": "message", "customer": "2"}]), json!("y")),
    )
    .await;
    assert_eq!(body["delivered"], 2);
    let counts = collect_publishes(&mut client, 2).await;
    assert_eq!((counts.get("two"), counts.get("all")), (Some(&1), Some(&1)));
}

#[tokio::test]
async fn trigger_endpoint_requires_the_token() {
    let (_b, server) = server_allowing(allowed()).await;
    let body = trigger(json!([{"target": "board"}]), json!(1));
    let (status, answer) = post_trigger_with(server.local_addr, &body, None).await;
    assert_eq!(status, 401);
    assert!(answer["error"].as_str().expect("error").contains("token"));
    let (status, _) = post_trigger_with(server.local_addr, &body, Some("wrong-token")).await;
    assert_eq!(status, 401);
    let (status, _) = post_trigger_with(server.local_addr, &body, Some(TOKEN)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_trigger_bodies_get_400_with_a_reason() {
    let (_b, server) = server_allowing(allowed()).await;
    let cases = [
        ("not json", "not valid JSON"),
        (r#"{"data": 1}"#, "no \"rooms\""),
        (r#"{"rooms": [{"target": "board"}]}"#, "no \"data\""),
        (r#"{"rooms": ["board"], "data": 1}"#, "room 0"),
        (r#"{"rooms": [{"a": {"b": 1}}], "data": 1}"#, "room 0"),
        (r#"{"rooms": "board", "data": 1}"#, "malformed"),
        ("42", "JSON object"),
        (r#"[{"rooms": [], "data": 1}, 5]"#, "JSON object"),
    ];
    for (body, reason) in cases {
        let (status, answer) = post_trigger(server.local_addr, body).await;
        assert_eq!(status, 400, "{body}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{body}: {error:?} lacks {reason:?}");
    }
    let mut client = Client::authorized(server.local_addr).await;
    assert_eq!(client.status().await["triggers_invalid"], cases.len());
}

#[tokio::test]
async fn batches_deliver_every_trigger() {
    let (_b, server) = server_allowing(allowed()).await;
    let mut client = Client::authorized(server.local_addr).await;
    client.subscribe(json!({"target": "board"}), "b").await;
    client
        .subscribe(json!({"target": "message", "customer": "3"}), "m")
        .await;
    let batch = json!([
        {"rooms": [{"target": "board"}], "data": 1},
        {"rooms": [{"target": "message", "customer": "3"}], "data": 2},
        {"rooms": [{"target": "nobody"}], "data": 3},
    ]);
    let (status, body) = post_trigger(server.local_addr, &batch.to_string()).await;
    assert_eq!(
        (status, body),
        (200, json!({"delivered": 2, "triggers": 3}))
    );
    assert_eq!(
        client.recv_json().await,
        json!({"type": "publish", "data": 1, "requestId": "b"})
    );
    assert_eq!(
        client.recv_json().await,
        json!({"type": "publish", "data": 2, "requestId": "m"})
    );
    assert_eq!(client.status().await["rabbitmq_messages_received"], 3);
}

/// The test runtime has one thread, shared by the server and its clients: a batch that held
/// it to the end would answer the other client only after its last trigger.
#[tokio::test]
async fn a_batch_of_ten_thousand_arrives_in_order_while_another_client_is_answered() {
    const BATCH: usize = 10_000;
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await;
    let mut config = config_for(&backend);
    // The subscriber takes every trigger of the batch: not a test of the slow-client bound.
    config.outgoing_queue = 2 * BATCH;
    config.outgoing_queue_bytes = 64 * 1024 * 1024;
    let server = start(config).await;
    let addr = server.local_addr;
    let mut subscriber = Client::authorized(addr).await;
    subscriber.subscribe(json!({"target": "board"}), "b").await;
    let mut other = Client::authorized(addr).await;
    let batch: Vec<_> = (0..BATCH)
        .map(|i| json!({"rooms": [{"target": "board"}], "data": i}))
        .collect();
    let body = serde_json::to_string(&batch).expect("batch");
    let post = tokio::spawn(async move { post_trigger(addr, &body).await });

    // The batch has begun once its first publish arrives; the other client asks then.
    assert_eq!(subscriber.recv_json().await["data"], 0);
    let status = other.status().await;
    let position = status["history"]["offset"].as_u64().expect("offset");
    assert!(
        position < BATCH as u64,
        "answered only after the whole batch: {status}"
    );
    for i in 1..BATCH {
        assert_eq!(subscriber.recv_json().await["data"], i);
    }
    let answer = post.await.expect("post");
    assert_eq!(
        answer,
        (200, json!({"delivered": BATCH, "triggers": BATCH}))
    );
}

#[tokio::test]
async fn oversized_trigger_bodies_are_refused() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.max_trigger_body = 1024;
    let server = start(config).await;
    let body = trigger(json!([{"target": "board"}]), json!("x".repeat(2048)));
    let (status, _) = post_trigger(server.local_addr, &body).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn internal_listener_serves_triggers_and_the_public_one_does_not() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await;
    let mut config = config_for(&backend);
    config.trigger_token = None;
    config.internal_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let server = start(config).await;
    let internal = server.internal_addr.expect("internal address");
    let mut client = Client::authorized(server.local_addr).await;
    client.subscribe(json!({"target": "board"}), "b").await;
    let body = trigger(json!([{"target": "board"}]), json!(1));
    let (status, _) = post_trigger_with(server.local_addr, &body, None).await;
    assert_eq!(status, 404);
    let (status, answer) = post_trigger_with(internal, &body, None).await;
    assert_eq!((status, answer["delivered"].clone()), (200, json!(1)));
    assert_eq!(client.recv_json().await["data"], 1);
}

#[tokio::test]
async fn without_token_or_internal_listener_triggers_are_disabled() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.trigger_token = None;
    let server = start(config).await;
    let (status, _) =
        post_trigger_with(server.local_addr, &trigger(json!([]), json!(1)), None).await;
    assert_eq!(status, 404);
}

/// A client that never reads fills its socket and then its bounded queue: it is disconnected
/// with 1013, while a reading client in the same room gets every message.
#[tokio::test]
async fn a_slow_client_does_not_delay_a_fast_one() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await;
    let mut config = config_for(&backend);
    config.outgoing_queue = 8;
    let server = start(config).await;
    let mut slow = Client::authorized(server.local_addr).await;
    slow.subscribe(json!({"target": "board"}), "slow").await;
    let mut fast = Client::authorized(server.local_addr).await;
    fast.subscribe(json!({"target": "board"}), "fast").await;

    // 64 KiB per message: a few hundred fill any socket buffer of the never-reading client.
    let payload = "x".repeat(64 * 1024);
    let total = 400;
    let addr = server.local_addr;
    let server = std::sync::Arc::new(server);
    let fast_reader = tokio::spawn(async move {
        for i in 0..total {
            let frame = fast.recv_json().await;
            assert_eq!(frame["data"]["i"], i);
        }
        fast
    });
    // Once disconnected, the slow client starts reading: it gets its backlog, then the close.
    let watcher = {
        let server = server.clone();
        tokio::spawn(async move {
            while server.status()["slow_client_disconnects"] != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            slow.closed().await
        })
    };
    for i in 0..total {
        let (status, _) = post_trigger(
            addr,
            &trigger(json!([{"target": "board"}]), json!({"i": i, "p": payload})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let _fast = fast_reader
        .await
        .expect("fast client got every message in order");
    let closed = watcher.await.expect("slow client closed");
    assert_eq!((closed.code, closed.reason.as_str()), (1013, "slow-client"));
    assert_eq!(server.status()["slow_client_disconnects"], 1);
}

#[tokio::test]
async fn publishing_from_rust_code_reaches_subscribers() {
    let (_b, server) = server_allowing(allowed()).await;
    let mut client = Client::authorized(server.local_addr).await;
    client.subscribe(json!({"target": "board"}), "b").await;
    let delivered = server
        .publish(trigger(json!([{"target": "board"}]), json!({"from": "rust"})).as_bytes())
        .expect("valid trigger");
    assert_eq!(delivered, 1);
    assert_eq!(client.recv_json().await["data"], json!({"from": "rust"}));
}
