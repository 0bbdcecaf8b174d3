//! Triggers over RabbitMQ (PROTOCOL.md section 4), against the machine's real broker: the
//! original's publishers, several nodes, a lost broker connection, bad messages, and HTTP
//! triggers published through the exchange.

#![cfg(feature = "amqp")]

mod common;

use std::time::Duration;

use common::brokers::*;
use common::*;
use high_templar::Handle;
use serde_json::{json, Value};

/// How long a test waits to be sure a second copy of a trigger does not come.
const NO_DUPLICATE_WITHIN: Duration = Duration::from_millis(300);

/// A server consuming from `exchange`, its backend allowing [`allowed`] rooms.
async fn node(exchange: &str) -> (TestBackend, Handle) {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await;
    let server = start(with_amqp(config_for(&backend), exchange)).await;
    wait_for_connects(&server, "amqp", 1).await;
    (backend, server)
}

#[tokio::test]
async fn a_trigger_published_like_the_original_reaches_a_subscriber() {
    let publisher = AmqpPublisher::connect().await;
    // The default exchange is the point here: 3.1 backends publish to "hightemplar".
    let (_b, server) = node(high_templar::config::DEFAULT_AMQP_EXCHANGE).await;
    let customer = unique("c");
    let mut client = subscriber(&server, &customer, "req-1").await;

    let data = json!({"id": 7, "text": "hé"});
    publisher
        .publish(
            "hightemplar",
            trigger_for(&customer, data.clone()).as_bytes(),
        )
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"type": "publish", "data": data, "requestId": "req-1"})
    );
    let status = server.status();
    assert!(status["triggers_received"]["amqp"].as_u64() >= Some(1));
    assert_eq!(status["amqp_connected"], json!(true));
    let base = format!("http://{}", server.local_addr);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("high_templar_amqp_connected 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("high_templar_redis_connected"),
        "{metrics}"
    );
    assert!(
        metrics.contains("high_templar_trigger_source_connects_total{source=\"amqp\"} 1"),
        "{metrics}"
    );
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (ready["amqp"].clone(), ready["redis"].clone()),
        (json!(true), Value::Null)
    );

    // The topology 3.1 backends expect: a direct, non-durable exchange, bound with "*".
    let exchanges = admin(
        "rabbitmqctl",
        &["-q", "list_exchanges", "name", "type", "durable"],
    );
    assert!(
        exchanges.lines().any(|l| l == "hightemplar\tdirect\tfalse"),
        "{exchanges}"
    );
    let bindings = admin(
        "rabbitmqctl",
        &["-q", "list_bindings", "source_name", "routing_key"],
    );
    assert!(
        bindings.lines().any(|l| l == "hightemplar\t*"),
        "{bindings}"
    );
}

#[tokio::test]
async fn two_nodes_each_deliver_one_trigger_exactly_once() {
    let publisher = AmqpPublisher::connect().await;
    let exchange = unique("ht-test");
    let (_b1, first) = node(&exchange).await;
    let (_b2, second) = node(&exchange).await;
    assert_ne!(first.local_addr, second.local_addr);
    let customer = unique("c");
    let mut on_first = subscriber(&first, &customer, "one").await;
    let mut on_second = subscriber(&second, &customer, "two").await;

    publisher
        .publish(&exchange, trigger_for(&customer, json!("hi")).as_bytes())
        .await;
    for (client, request_id) in [(&mut on_first, "one"), (&mut on_second, "two")] {
        assert_eq!(
            client.recv_json().await,
            json!({"type": "publish", "data": "hi", "requestId": request_id})
        );
        client.expect_silence(NO_DUPLICATE_WITHIN).await;
    }
    assert_eq!(first.status()["triggers_received"]["amqp"], 1);
    assert_eq!(second.status()["triggers_received"]["amqp"], 1);
    publisher.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn a_lost_broker_connection_comes_back_without_a_restart() {
    let publisher = AmqpPublisher::connect().await;
    let exchange = unique("ht-test");
    let (_b, server) = node(&exchange).await;
    let customer = unique("c");
    let mut client = subscriber(&server, &customer, "req").await;
    publisher
        .publish(&exchange, trigger_for(&customer, json!(1)).as_bytes())
        .await;
    assert_eq!(client.recv_json().await["data"], 1);

    let pid = connection_pid(server.local_addr);
    admin(
        "rabbitmqctl",
        &[
            "-q",
            "close_connection",
            &pid,
            "high-templar test: connection killed",
        ],
    );
    // The server notices, reconnects, re-declares and re-binds; the websocket stays open.
    let status = wait_for_connects(&server, "amqp", 2).await;
    assert_eq!(status["open_connections"], 1);
    publisher
        .publish(&exchange, trigger_for(&customer, json!(2)).as_bytes())
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"type": "publish", "data": 2, "requestId": "req"})
    );

    // Shutdown closes the broker connection too.
    let pid = connection_pid(server.local_addr);
    server.shutdown(Duration::from_secs(5)).await;
    eventually(WAIT, || async {
        match admin("rabbitmqctl", &["-q", "list_connections", "pid"]).contains(&pid) {
            false => Ok(()),
            true => Err(format!("connection {pid} still open")),
        }
    })
    .await;
    publisher.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn garbage_on_the_exchange_is_counted_and_ignored() {
    let publisher = AmqpPublisher::connect().await;
    let exchange = unique("ht-test");
    let (_b, server) = node(&exchange).await;
    let customer = unique("c");
    let mut client = subscriber(&server, &customer, "req").await;

    let garbage: [&[u8]; 5] = [
        b"not json",
        b"\xff\xfe binary",
        br#"{"data": 1}"#,
        br#"{"rooms": [{"target": "message"}, "not a room"], "data": 1}"#,
        b"[1, 2]",
    ];
    for body in garbage {
        publisher.publish(&exchange, body).await;
    }
    publisher
        .publish(&exchange, trigger_for(&customer, json!("good")).as_bytes())
        .await;
    assert_eq!(client.recv_json().await["data"], "good");
    let status = server.status();
    assert_eq!(status["triggers_invalid"], 5, "{status}");
    assert_eq!(status["triggers_received"]["amqp"], 1, "{status}");
    assert_eq!(
        status["amqp_connects"], 1,
        "bad messages must not cost the connection"
    );
    publisher.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn http_triggers_published_through_the_exchange_reach_other_nodes() {
    let publisher = AmqpPublisher::connect().await;
    let exchange = unique("ht-test");
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await;
    let mut config = with_amqp(config_for(&backend), &exchange);
    if let Some(amqp) = config.amqp.as_mut() {
        amqp.publish_http_triggers = true;
    }
    let publishing = start(config).await;
    wait_for_connects(&publishing, "amqp", 1).await;
    let (_b, other) = node(&exchange).await;
    let customer = unique("c");
    let mut here = subscriber(&publishing, &customer, "here").await;
    let mut there = subscriber(&other, &customer, "there").await;

    let batch = format!(
        "[{}, {}]",
        trigger_for(&customer, json!(1)),
        trigger_for(&customer, json!(2))
    );
    let (status, body) = post_trigger(publishing.local_addr, &batch).await;
    assert_eq!((status, body), (200, json!({"published": 2})));
    for (client, request_id) in [(&mut here, "here"), (&mut there, "there")] {
        for data in [1, 2] {
            assert_eq!(
                client.recv_json().await,
                json!({"type": "publish", "data": data, "requestId": request_id})
            );
        }
    }
    // Bad bodies are refused before anything is published.
    let (status, body) = post_trigger(publishing.local_addr, r#"{"data": 1}"#).await;
    assert_eq!(status, 400, "{body}");
    here.expect_silence(NO_DUPLICATE_WITHIN).await;
    publisher.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn websockets_are_served_while_the_broker_is_away() {
    // Nothing listens on a port that was just bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await;
    let mut config = with_amqp(config_for(&backend), "unused");
    if let Some(amqp) = config.amqp.as_mut() {
        amqp.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        amqp.publish_http_triggers = true;
    }
    let server = start(config).await;
    let mut client = subscriber(&server, "1", "req").await;
    let status = client.status().await;
    assert_eq!(status["amqp_connected"], json!(false), "{status}");
    assert_eq!(status["redis_connected"], Value::Null, "{status}");
    // Publishing through an absent broker is a clear 503, not a hang or a fake success.
    let (status, body) = post_trigger(server.local_addr, &trigger_for("1", json!(1))).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("not connected"),
        "{body}"
    );
    server.shutdown(Duration::from_secs(5)).await;
}
