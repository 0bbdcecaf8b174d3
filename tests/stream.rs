//! One RabbitMQ stream as the shared log (`amqp_stream`, PROTOCOL.md section 7): the same
//! positions on every node, warm starts, a lost broker connection, a recreated stream —
//! against the machine's real broker, checked with `rabbitmqctl` where the broker's own view
//! is the point.

#![cfg(feature = "amqp")]

mod common;

use std::time::Duration;

use common::brokers::*;
use common::*;
use high_templar::Handle;
use serde_json::{json, Value};

/// A stream test's names: its exchange and its stream, deleted by [`Names::clean`].
struct Names {
    exchange: String,
    stream: String,
}

impl Names {
    fn new() -> Names {
        Names {
            exchange: unique("ht-stream-x"),
            stream: unique("ht-stream"),
        }
    }

    async fn clean(&self, publisher: &AmqpPublisher) {
        publisher.delete_queue(&self.stream).await;
        publisher.delete_exchange(&self.exchange).await;
    }
}

/// A node reading `names`' stream, warm; its backend allows every chat room.
async fn node(names: &Names) -> (TestBackend, Handle) {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"chat": "*"}]}))).await;
    let config = with_stream(config_for(&backend), &names.exchange, &names.stream);
    let server = start(config).await;
    wait_warm(&server).await;
    (backend, server)
}

fn chat(n: u64) -> Value {
    json!({"chat": n.to_string()})
}

/// Subscribes with extra keys (`recover`, `since`) and returns the answer.
async fn subscribe_with(client: &mut Client, room: Value, rid: &str, extra: Value) -> Value {
    let mut message = json!({"type": "subscribe", "room": room, "requestId": rid});
    for (k, v) in extra.as_object().expect("object") {
        message[k] = v.clone();
    }
    client.send_json(message).await;
    client.recv_json().await
}

/// Reads publishes until `n` of them, returning (data, offset).
async fn read_publishes(client: &mut Client, n: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = client.recv_json().await;
        assert_eq!(frame["type"], "publish", "{frame}");
        let offset = frame["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("{frame}"));
        out.push((frame["data"].as_u64().expect("data"), offset));
    }
    out
}

fn body(room: &Value, n: u64) -> String {
    trigger(json!([room]), json!(n))
}

#[tokio::test]
async fn the_stream_is_declared_durable_with_its_retention_and_bound_with_star() {
    let publisher = AmqpPublisher::connect().await;
    let names = Names::new();
    let (_b, server) = node(&names).await;

    let queues = admin(
        "rabbitmqctl",
        &["-q", "list_queues", "name", "type", "durable", "arguments"],
    );
    let line = queues
        .lines()
        .find(|l| l.starts_with(&format!("{}\t", names.stream)))
        .unwrap_or_else(|| panic!("no stream {} in {queues}", names.stream));
    assert!(line.contains("\tstream\ttrue\t"), "{line}");
    for argument in [
        r#"{"x-queue-type","stream"}"#,
        r#"{"x-max-age","3600s"}"#,
        r#"{"x-max-length-bytes",1073741824}"#,
        r#"{"x-stream-max-segment-size-bytes",67108864}"#,
    ] {
        assert!(line.contains(argument), "{argument} in {line}");
    }
    let bindings = admin(
        "rabbitmqctl",
        &[
            "-q",
            "list_bindings",
            "source_name",
            "destination_name",
            "routing_key",
        ],
    );
    let binding = format!("{}\t{}\t*", names.exchange, names.stream);
    assert!(bindings.lines().any(|l| l == binding), "{bindings}");

    // Status, /readyz and /metrics name the stream and where the node is in it.
    let stream = server.status()["stream"].clone();
    assert_eq!(stream["name"], names.stream.as_str());
    assert!(
        stream["epoch"].as_str().is_some_and(|e| e.starts_with('s')),
        "{stream}"
    );
    assert!(stream["offset"].as_u64().is_some(), "{stream}");
    assert!(stream["lag_ms"].as_u64().is_some(), "{stream}");
    let base = format!("http://{}", server.local_addr);
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["stream"]["warm_up"]["state"], "warm", "{ready}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for metric in [
        "high_templar_stream_warm 1",
        "high_templar_stream_offset ",
        "high_templar_stream_lag_seconds ",
        "high_templar_stream_epoch_changes_total 0",
    ] {
        assert!(metrics.contains(metric), "{metric} in {metrics}");
    }
    names.clean(&publisher).await;
}

#[tokio::test]
async fn a_31_publish_reaches_three_nodes_with_the_same_position() {
    let publisher = AmqpPublisher::connect().await;
    let names = Names::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&names).await);
    }
    let mut clients = Vec::new();
    let mut epochs = Vec::new();
    for (_, server) in &nodes {
        let mut client = Client::authorized(server.local_addr).await;
        let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
        epochs.push(answer["epoch"].clone());
        clients.push(client);
    }
    assert!(epochs.iter().all(|e| *e == epochs[0]), "{epochs:?}");

    // A plain basic_publish to the exchange, as pika does: nothing else.
    publisher
        .publish(&names.exchange, body(&chat(1), 7).as_bytes())
        .await;
    let mut offsets = Vec::new();
    for client in &mut clients {
        let got = read_publishes(client, 1).await;
        assert_eq!(got[0].0, 7);
        offsets.push(got[0].1);
    }
    assert!(offsets.iter().all(|o| *o == offsets[0]), "{offsets:?}");

    // An HTTP trigger to one node goes through the exchange: every node, the same position.
    let (status, answer) = post_trigger(nodes[1].1.local_addr, &body(&chat(1), 8)).await;
    assert_eq!((status, answer), (200, json!({"published": 1})));
    let mut next = Vec::new();
    for client in &mut clients {
        next.push(read_publishes(client, 1).await[0]);
    }
    assert!(next
        .iter()
        .all(|p| p.0 == 8 && p.1 == next[0].1 && p.1 > offsets[0]));
    // A node reading the stream takes no trigger that would have no stream position.
    assert!(nodes[0].1.publish(body(&chat(1), 9).as_bytes()).is_err());
    names.clean(&publisher).await;
}

#[tokio::test]
async fn a_list_of_several_triggers_in_one_message_is_refused() {
    let publisher = AmqpPublisher::connect().await;
    let names = Names::new();
    let (_b, server) = node(&names).await;
    let mut client = Client::authorized(server.local_addr).await;
    subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let two = format!("[{}, {}]", body(&chat(1), 1), body(&chat(1), 2));
    publisher.publish(&names.exchange, two.as_bytes()).await;
    let one = format!("[{}]", body(&chat(1), 3));
    publisher.publish(&names.exchange, one.as_bytes()).await;
    assert_eq!(read_publishes(&mut client, 1).await[0].0, 3);
    assert_eq!(server.status()["triggers_invalid"], 1);
    names.clean(&publisher).await;
}

/// Publishes `data` to `room` through the exchange, one every `every`.
fn flow(exchange: String, room: Value, data: std::ops::RangeInclusive<u64>, every: Duration) {
    tokio::spawn(async move {
        let publisher = AmqpPublisher::connect().await;
        for n in data {
            publisher
                .publish(&exchange, body(&room, n).as_bytes())
                .await;
            tokio::time::sleep(every).await;
        }
    });
}

#[tokio::test]
async fn a_closed_broker_connection_loses_and_repeats_nothing() {
    const TOTAL: u64 = 300;
    let publisher = AmqpPublisher::connect().await;
    let names = Names::new();
    let (_b, server) = node(&names).await;
    let mut client = Client::authorized(server.local_addr).await;
    subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    flow(
        names.exchange.clone(),
        chat(1),
        1..=TOTAL,
        Duration::from_millis(3),
    );
    let before = read_publishes(&mut client, 50).await;
    admin(
        "rabbitmqctl",
        &[
            "-q",
            "close_connection",
            &connection_pid(server.local_addr),
            "high-templar test: connection killed",
        ],
    );
    let after = read_publishes(&mut client, TOTAL as usize - 50).await;
    let all: Vec<(u64, u64)> = before.into_iter().chain(after).collect();
    assert_eq!(
        all.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=TOTAL).collect::<Vec<_>>()
    );
    assert!(all.windows(2).all(|w| w[0].1 < w[1].1), "offsets increase");
    client.expect_silence(Duration::from_millis(300)).await;
    let status = server.status();
    assert!(status["amqp_connects"].as_u64() >= Some(2), "{status}");
    assert_eq!(status["stream"]["losses"], 0);
    assert_eq!(status["open_connections"], 1);
    names.clean(&publisher).await;
}

#[tokio::test]
async fn a_node_started_later_recovers_a_position_from_another_node() {
    let publisher = AmqpPublisher::connect().await;
    let names = Names::new();
    let (_b1, first) = node(&names).await;
    let mut client = Client::authorized(first.local_addr).await;
    let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let epoch = answer["epoch"].clone();
    for n in 1..=2 {
        publisher
            .publish(&names.exchange, body(&chat(1), n).as_bytes())
            .await;
    }
    let seen = read_publishes(&mut client, 2).await;
    drop(client);
    for n in 3..=5 {
        let room = if n == 4 { chat(2) } else { chat(1) };
        publisher
            .publish(&names.exchange, body(&room, n).as_bytes())
            .await;
    }
    wait_for_count(&first, "rabbitmq_messages_received", 5).await;

    // A node that was not running when any of it was published warms from the stream.
    let (_b2, second) = node(&names).await;
    assert_eq!(second.status()["stream"]["epoch"], epoch);
    let mut client = Client::authorized(second.local_addr).await;
    let since = json!({"since": {"epoch": epoch, "offset": seen[1].1}});
    let answer = subscribe_with(&mut client, chat(1), "r", since).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let replayed = read_publishes(&mut client, 2).await;
    assert_eq!(replayed.iter().map(|p| p.0).collect::<Vec<_>>(), vec![3, 5]);
    assert_eq!(
        second.status()["triggers_received"]["amqp"],
        0,
        "warmed, not live"
    );
    names.clean(&publisher).await;
}

#[tokio::test]
async fn a_recreated_stream_is_a_new_epoch_and_old_positions_are_not_recovered() {
    let publisher = AmqpPublisher::connect().await;
    let names = Names::new();
    let (_b, server) = node(&names).await;
    let mut client = Client::authorized(server.local_addr).await;
    let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let old = answer["epoch"].clone();
    publisher
        .publish(&names.exchange, body(&chat(1), 1).as_bytes())
        .await;
    let (_, offset) = read_publishes(&mut client, 1).await[0];

    publisher.delete_queue(&names.stream).await;
    // The node's consumer is cancelled; it declares the stream again, finds no epoch in it,
    // claims a new one and warms: its subscriptions with positions are closed (1012).
    assert_eq!(
        client.closed().await,
        Closed {
            code: 1012,
            reason: "epoch-changed".into()
        }
    );
    let stream = wait_warm(&server).await;
    assert_ne!(stream["epoch"], old);
    assert_eq!(stream["epoch_changes"], 1);
    let mut client = Client::authorized(server.local_addr).await;
    let since = json!({"since": {"epoch": old, "offset": offset}});
    let answer = subscribe_with(&mut client, chat(1), "r", since).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(answer["epoch"], stream["epoch"]);
    // The new stream delivers, at positions of the new epoch.
    publisher
        .publish(&names.exchange, body(&chat(1), 2).as_bytes())
        .await;
    assert_eq!(read_publishes(&mut client, 1).await[0].0, 2);
    names.clean(&publisher).await;
}

#[tokio::test]
async fn without_its_broker_a_stream_node_is_not_ready() {
    let port = common::process::free_port();
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"chat": "*"}]}))).await;
    let mut config = with_stream(config_for(&backend), "unused", "unused");
    if let Some(amqp) = config.amqp.as_mut() {
        amqp.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    }
    let server = start(config).await;
    let ready = reqwest::get(format!("http://{}/readyz", server.local_addr))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["stream"]["warm_up"]["state"], "cold", "{ready}");
    assert_eq!(ready["stream"]["lag_ms"], Value::Null, "{ready}");
    server.shutdown(Duration::from_secs(5)).await;
}
