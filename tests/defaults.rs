//! A high-templar 3.1 deployment moved over with default settings keeps working: what 3.1's own
//! suite and real apps do is answered in full, and floods are slowed, not cut off.

mod common;

use std::time::{Duration, Instant};

#[cfg(feature = "amqp")]
use common::brokers::{unique, with_amqp, AmqpPublisher};
use common::{config_for, start, Client, Reply, TestBackend};
use serde_json::json;

/// high-templar 3.1's `tests/test_load.py`, on default settings: one socket subscribes to 1,500
/// rooms back to back (each answer awaited), a second socket watches the status, then 1,500
/// triggers go through RabbitMQ, each received before the next is sent.
#[cfg(feature = "amqp")]
#[tokio::test]
async fn the_31_load_test_passes_on_defaults() {
    const NUM_ROOMS: usize = 1500;
    let rooms: Vec<serde_json::Value> = (0..NUM_ROOMS)
        .map(|i| json!({"target": "message", "customer": i.to_string()}))
        .collect();
    let backend = TestBackend::start(Reply::ok(json!({ "allowed_rooms": rooms }))).await;
    let exchange = unique("ht-load31");
    let publisher = AmqpPublisher::connect().await;
    let server = start(with_amqp(config_for(&backend), &exchange)).await;
    common::brokers::wait_for_connects(&server, "amqp", 1).await;

    let mut watcher = Client::authorized(server.local_addr).await;
    let status = watcher.status().await;
    assert_eq!(
        (
            status["num_rooms"].clone(),
            status["open_connections"].clone()
        ),
        (json!(0), json!(1))
    );

    let mut ws = Client::authorized(server.local_addr).await;
    for i in 0..NUM_ROOMS {
        ws.send_json(json!({
            "type": "subscribe",
            "room": {"target": "message", "customer": i.to_string()},
            "requestId": i.to_string(),
        }))
        .await;
        let answer = ws.recv_json().await;
        assert_eq!(answer["code"], "success", "subscribe {i}: {answer}");
    }
    let status = watcher.status().await;
    assert_eq!(status["num_rooms"], NUM_ROOMS);
    assert_eq!(status["open_connections"], 2);

    for i in 0..NUM_ROOMS {
        let body = json!({
            "rooms": [{"target": "message", "customer": i.to_string()}],
            "data": {"customer": i.to_string()},
        });
        publisher
            .publish(&exchange, body.to_string().as_bytes())
            .await;
        let frame = ws.recv_json().await;
        assert_eq!(frame["requestId"], i.to_string(), "{frame}");
        assert_eq!(frame["data"]["customer"], i.to_string(), "{frame}");
    }
    ws.ws.close(None).await.expect("close");
    drop(ws);
    common::eventually(common::WAIT, || async {
        let status = server.status();
        match status["num_rooms"] == 0 && status["open_connections"] == 1 {
            true => Ok(()),
            false => Err(format!("the subscriber's rooms stayed: {status}")),
        }
    })
    .await;
    publisher.delete_exchange(&exchange).await;
}

/// 3,000 messages written back to back on one socket are all answered, in order.
#[tokio::test]
async fn a_burst_of_3000_messages_is_answered_in_full() {
    let (_backend, server) = common::server_allowing(json!([{"room": "*"}])).await;
    let mut client = Client::authorized(server.local_addr).await;
    for i in 0..1500 {
        client.send("ping").await;
        client
            .send_json(
                json!({"type": "subscribe", "room": {"room": i}, "requestId": format!("r{i}")}),
            )
            .await;
    }
    for i in 0..1500 {
        assert_eq!(client.recv_text().await, "pong", "answer {}", 2 * i);
        assert_eq!(
            client.recv_json().await,
            json!({"code": "success"}),
            "answer {}",
            2 * i + 1
        );
    }
    let status = client.status().await;
    assert_eq!(status["num_rooms"], 1500);
}

/// Over its budget a connection is read no faster than its rate, nothing it sent is lost, it
/// stays open, and another client on the node keeps its round-trip time.
#[tokio::test]
async fn a_flood_is_slowed_to_the_rate_while_others_are_served() {
    const RATE: f64 = 100.0;
    const BURST: u32 = 20;
    const FLOOD: usize = 320;
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.policy.messages_per_second = RATE;
    config.policy.message_burst = BURST;
    let server = start(config).await;

    let mut flooder = Client::authorized(server.local_addr).await;
    let mut other = Client::authorized(server.local_addr).await;
    let started = Instant::now();
    for _ in 0..FLOOD {
        flooder.send("ping").await;
    }
    let reader = tokio::spawn(async move {
        for i in 0..FLOOD {
            assert_eq!(flooder.recv_text().await, "pong", "pong {i}");
        }
        (started.elapsed(), flooder)
    });
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let sent = Instant::now();
        other.send("ping").await;
        assert_eq!(other.recv_text().await, "pong");
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (took, mut flooder) = reader.await.expect("reader");
    // What the budget allows: the burst at once, the rest at the rate. Slower is fine (a busy
    // machine), faster would mean the flood was not slowed.
    let allowed = Duration::from_secs_f64((FLOOD as f64 - f64::from(BURST)) / RATE);
    assert!(
        took >= allowed.mul_f64(0.9),
        "{FLOOD} pongs in {took:?}: faster than the rate allows ({allowed:?})"
    );
    let rate = FLOOD as f64 / took.as_secs_f64();
    eprintln!("flood answered at {rate:.0} msgs/s (budget {RATE}/s, burst {BURST}); other client's worst round trip {worst:?}");
    assert!(
        worst < Duration::from_millis(1000),
        "the other client waited {worst:?} for a pong"
    );
    // Still open, and counted as limited.
    assert_eq!(flooder.status().await["open_connections"], 2);
    assert!(server.status()["limits_hit"]["rate"].as_u64().unwrap_or(0) >= 1);
}
