//! PROTOCOL.md section 7, row by row: positions on publishes, resuming with `since`, what
//! cannot be recovered, gap notices — over real sockets, with triggers over HTTP and RabbitMQ.

mod common;

use std::time::Duration;

#[cfg(feature = "amqp")]
use common::brokers::{unique, with_amqp, AmqpPublisher};
use common::*;
use high_templar::Config;
use serde_json::{json, Value};

fn chat(n: u64) -> Value {
    json!({"chat": n.to_string()})
}

async fn server(configure: impl FnOnce(&mut Config)) -> (TestBackend, high_templar::Handle) {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"chat": "*"}]}))).await;
    let mut config = config_for(&backend);
    configure(&mut config);
    let handle = start(config).await;
    (backend, handle)
}

/// Sends a subscribe with extra keys and returns the answer.
async fn subscribe_with(client: &mut Client, room: Value, rid: &str, extra: Value) -> Value {
    let mut message = json!({"type": "subscribe", "room": room, "requestId": rid});
    for (k, v) in extra.as_object().expect("object") {
        message[k] = v.clone();
    }
    client.send_json(message).await;
    client.recv_json().await
}

/// POSTs one trigger per data value to `room`, in order.
async fn publish(server: &high_templar::Handle, room: Value, data: impl IntoIterator<Item = u64>) {
    for n in data {
        let (status, body) =
            post_trigger(server.local_addr, &trigger(json!([room]), json!(n))).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Reads `n` publishes of `rid`, returning their (data, offset).
async fn read_publishes(client: &mut Client, rid: &str, n: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = client.recv_json().await;
        assert_eq!(frame["type"], "publish", "{frame}");
        if frame["requestId"] != rid {
            continue;
        }
        let data = frame["data"].as_u64().expect("data");
        let offset = frame["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset: {frame}"));
        out.push((data, offset));
    }
    out
}

fn epoch_of(answer: &Value) -> String {
    answer["epoch"].as_str().expect("epoch").to_string()
}

#[tokio::test]
async fn recover_true_answers_the_position_and_publishes_carry_offsets() {
    let (_b, server) = server(|_| {}).await;
    let mut client = Client::authorized(server.local_addr).await;
    publish(&server, chat(9), [0, 1]).await;
    let answer = subscribe_with(&mut client, chat(1), "r1", json!({"recover": true})).await;
    assert_eq!(answer["code"], "success");
    assert_eq!(
        answer["offset"], 2,
        "two triggers were taken in before: {answer}"
    );
    assert!(!epoch_of(&answer).is_empty());
    assert!(answer.get("recovered").is_none(), "{answer}");
    publish(&server, chat(1), [10, 11, 12]).await;
    let got = read_publishes(&mut client, "r1", 3).await;
    assert_eq!(got, vec![(10, 3), (11, 4), (12, 5)]);
    let status = server.status();
    assert_eq!(status["history"]["offset"], 5);
    assert_eq!(status["history"]["entries"], 5);
}

#[tokio::test]
async fn plain_subscriptions_stay_byte_for_byte_what_31_sends() {
    let (_b, server) = server(|_| {}).await;
    let mut client = Client::authorized(server.local_addr).await;
    client.subscribe(chat(1), "plain").await;
    let answer = subscribe_with(&mut client, chat(1), "pos", json!({"recover": true})).await;
    assert_eq!(answer["code"], "success");
    post_trigger(
        server.local_addr,
        &trigger(json!([chat(1)]), json!({"x": 1})),
    )
    .await;
    let mut texts = vec![client.recv_text().await, client.recv_text().await];
    texts.sort();
    assert_eq!(
        texts,
        vec![
            r#"{"type":"publish","data":{"x":1},"requestId":"plain"}"#.to_string(),
            r#"{"type":"publish","data":{"x":1},"requestId":"pos","offset":1}"#.to_string(),
        ]
    );
    // The plain subscribe's answer too.
    client
        .send_json(json!({"type": "subscribe", "room": chat(2), "requestId": "p2"}))
        .await;
    assert_eq!(client.recv_text().await, r#"{"code":"success"}"#);
}

#[tokio::test]
async fn resuming_replays_exactly_what_was_missed_in_order_then_live() {
    let (_b, server) = server(|_| {}).await;
    let mut client = Client::authorized(server.local_addr).await;
    let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let epoch = epoch_of(&answer);
    publish(&server, chat(1), [1, 2]).await;
    let seen = read_publishes(&mut client, "r", 2).await;
    let last = seen[1].1;
    drop(client);

    // While away: three for its room, others for other rooms.
    publish(&server, chat(1), [3]).await;
    publish(&server, chat(2), [100]).await;
    publish(&server, chat(1), [4, 5]).await;

    let mut client = Client::authorized(server.local_addr).await;
    let since = json!({"since": {"epoch": epoch, "offset": last}});
    let answer = subscribe_with(&mut client, chat(1), "r", since).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(answer["epoch"], epoch.as_str());
    assert_eq!(answer["offset"], 6);
    let replayed = read_publishes(&mut client, "r", 3).await;
    assert_eq!(replayed, vec![(3, 3), (4, 5), (5, 6)]);
    publish(&server, chat(1), [6]).await;
    assert_eq!(read_publishes(&mut client, "r", 1).await, vec![(6, 7)]);
    let status = server.status();
    assert_eq!(status["recoveries"]["recovered"], 1);
    assert_eq!(status["replayed"], 3);
}

#[cfg(feature = "amqp")]
#[tokio::test]
async fn triggers_over_rabbitmq_get_positions_and_are_recovered() {
    let publisher = AmqpPublisher::connect().await;
    let exchange = unique("ht-recovery");
    let (backend, _) = server(|_| {}).await;
    let server = start(with_amqp(config_for(&backend), &exchange)).await;
    brokers::wait_for_connects(&server, "amqp", 1).await;
    backend.set_bootstrap(Reply::ok(json!({"allowed_rooms": [{"chat": "*"}]})));
    let mut client = Client::authorized(server.local_addr).await;
    let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let epoch = epoch_of(&answer);
    let body = |n: u64| trigger(json!([chat(1)]), json!(n));
    publisher.publish(&exchange, body(1).as_bytes()).await;
    assert_eq!(read_publishes(&mut client, "r", 1).await, vec![(1, 1)]);
    drop(client);
    for n in 2..=4 {
        publisher.publish(&exchange, body(n).as_bytes()).await;
    }
    brokers::wait_for_count(&server, "rabbitmq_messages_received", 4).await;
    let mut client = Client::authorized(server.local_addr).await;
    let since = json!({"since": {"epoch": epoch, "offset": 1}});
    let answer = subscribe_with(&mut client, chat(1), "r", since).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(
        read_publishes(&mut client, "r", 3).await,
        vec![(2, 2), (3, 3), (4, 4)]
    );
    publisher.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn what_cannot_be_proven_is_recovered_false_without_a_replay() {
    let (_b, server) = server(|c| c.history.memory = 4096).await;
    let mut client = Client::authorized(server.local_addr).await;
    let answer = subscribe_with(&mut client, chat(1), "probe", json!({"recover": true})).await;
    let epoch = epoch_of(&answer);
    publish(&server, chat(1), 1..=3).await;
    read_publishes(&mut client, "probe", 3).await;

    let cases = [
        (
            "another epoch",
            json!({"epoch": "n-other", "offset": 1}),
            "epoch",
        ),
        (
            "a future offset",
            json!({"epoch": epoch, "offset": 99}),
            "future",
        ),
    ];
    for (what, since, counter) in cases {
        let answer = subscribe_with(&mut client, chat(1), what, json!({"since": since})).await;
        assert_eq!(
            answer,
            json!({"code": "success", "recovered": false, "epoch": epoch, "offset": 3}),
            "{what}"
        );
        assert_eq!(server.status()["recoveries"][counter], 1, "{what}");
    }
    // Evicted by the memory bound: 4 KiB holds a handful of triggers.
    publish(&server, chat(2), 4..=60).await;
    let status = server.status();
    assert!(
        status["history"]["bytes"].as_u64().expect("bytes") <= 4096,
        "{status}"
    );
    let since = json!({"since": {"epoch": epoch, "offset": 3}});
    let answer = subscribe_with(&mut client, chat(1), "evicted", since).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(server.status()["recoveries"]["expired"], 1);
    // Still live with positions: the next publish carries its offset, and nothing else came.
    publish(&server, chat(1), [61]).await;
    let frames = read_publishes(&mut client, "evicted", 1).await;
    assert_eq!(frames, vec![(61, 61)]);
}

#[tokio::test]
async fn history_older_than_its_ttl_is_not_recovered() {
    let (_b, server) = server(|c| c.history.ttl = Duration::from_millis(300)).await;
    let mut client = Client::authorized(server.local_addr).await;
    let epoch = server.status()["history"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    publish(&server, chat(1), [1, 2]).await;
    let fresh = json!({"since": {"epoch": epoch, "offset": 1}});
    let answer = subscribe_with(&mut client, chat(1), "a", fresh.clone()).await;
    assert_eq!(answer["recovered"], true);
    assert_eq!(read_publishes(&mut client, "a", 1).await, vec![(2, 2)]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = subscribe_with(&mut client, chat(1), "b", fresh).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(server.status()["history"]["entries"], 0);
}

#[tokio::test]
async fn history_off_recovers_nothing_but_positions_still_work() {
    let (_b, server) = server(|c| c.history.ttl = Duration::ZERO).await;
    let mut client = Client::authorized(server.local_addr).await;
    let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let epoch = epoch_of(&answer);
    publish(&server, chat(1), [1]).await;
    assert_eq!(read_publishes(&mut client, "r", 1).await, vec![(1, 1)]);
    let since = json!({"since": {"epoch": epoch, "offset": 0}});
    let answer = subscribe_with(&mut client, chat(1), "s", since).await;
    assert_eq!(answer["recovered"], false);
    assert_eq!(server.status()["recoveries"]["off"], 1);
}

#[tokio::test]
async fn a_room_not_allowed_replays_nothing() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"chat": "1"}]}))).await;
    let server = start(config_for(&backend)).await;
    let mut client = Client::authorized(server.local_addr).await;
    let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let epoch = epoch_of(&answer);
    publish(&server, chat(2), [1, 2]).await;
    let since = json!({"since": {"epoch": epoch, "offset": 0}});
    let answer = subscribe_with(&mut client, chat(2), "secret", since).await;
    assert_eq!(
        answer,
        json!({"code": "error", "message": "room-not-found"})
    );
    // Nothing follows the refusal: the next answer is the status's.
    assert!(client.status().await.get("open_connections").is_some());
    assert_eq!(server.status()["replayed"], 0);
}

#[tokio::test]
async fn a_malformed_since_is_invalid_since() {
    let (_b, server) = server(|_| {}).await;
    let mut client = Client::authorized(server.local_addr).await;
    for since in [
        json!("n1:3"),
        json!(null),
        json!({"epoch": "e"}),
        json!({"offset": 1}),
        json!({"epoch": 1, "offset": 1}),
        json!({"epoch": "e", "offset": -1}),
        json!({"epoch": "e", "offset": 1.5}),
        json!({"epoch": "e", "offset": "1"}),
        json!([1, 2]),
    ] {
        let answer = subscribe_with(&mut client, chat(1), "r", json!({"since": since})).await;
        assert_eq!(
            answer,
            json!({"code": "error", "message": "invalid-since"}),
            "{since}"
        );
    }
    assert_eq!(client.status().await["num_subscriptions"], 0);
}

#[tokio::test]
async fn wildcard_triggers_and_wildcard_subscriptions_are_recovered() {
    let allowed = json!({"allowed_rooms": [{"chat": "*", "topic": "*"}]});
    let backend = TestBackend::start(Reply::ok(allowed)).await;
    let server = start(config_for(&backend)).await;
    let room = |c: &str, t: &str| json!({"chat": c, "topic": t});
    let mut client = Client::authorized(server.local_addr).await;
    let epoch = server.status()["history"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    publish(&server, room("1", "a"), [1]).await;
    publish(&server, room("*", "a"), [2]).await; // a wildcard trigger
    publish(&server, room("2", "b"), [3]).await;
    publish(&server, room("1", "*"), [4]).await; // another
                                                 // One trigger whose three rooms all match some subscriptions: at most once each.
    let rooms = json!([room("1", "a"), room("*", "*"), room("1", "a")]);
    let (status, _) = post_trigger(server.local_addr, &trigger(rooms, json!(5))).await;
    assert_eq!(status, 200);

    let since = json!({"since": {"epoch": epoch, "offset": 0}});
    for (rid, sub, expected) in [
        ("exact", room("1", "a"), vec![1, 2, 4, 5]),
        ("star", room("*", "b"), vec![3, 4, 5]),
        ("all", room("*", "*"), vec![1, 2, 3, 4, 5]),
    ] {
        let answer = subscribe_with(&mut client, sub, rid, since.clone()).await;
        assert_eq!(answer["recovered"], true, "{rid}: {answer}");
        let got: Vec<u64> = read_publishes(&mut client, rid, expected.len())
            .await
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(got, expected, "{rid}");
    }
    // Nothing more for any of them: the next frame answers the status.
    assert!(client.status().await.get("open_connections").is_some());
}

#[tokio::test]
async fn a_replay_larger_than_the_outgoing_queue_is_streamed() {
    let (_b, server) = server(|c| c.outgoing_queue = 16).await;
    let mut client = Client::authorized(server.local_addr).await;
    let epoch =
        epoch_of(&subscribe_with(&mut client, chat(0), "x", json!({"recover": true})).await);
    let batch: Vec<Value> = (1..=600)
        .map(|n| json!({"rooms": [chat(1)], "data": n}))
        .collect();
    let (status, _) = post_trigger(server.local_addr, &Value::Array(batch).to_string()).await;
    assert_eq!(status, 200);
    let since = json!({"since": {"epoch": epoch, "offset": 0}});
    assert_eq!(
        subscribe_with(&mut client, chat(1), "r", since).await["recovered"],
        true
    );
    let got = read_publishes(&mut client, "r", 600).await;
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &(d, o))| d == i as u64 + 1 && o == d));
    let status = client.status().await;
    assert_eq!(status["slow_client_disconnects"], 0);
    assert_eq!(status["replayed"], 600);
}

/// A client that drops its connection and resumes, again and again, while triggers flow every
/// few milliseconds: across all its connections it sees every trigger once, in order.
#[tokio::test]
async fn resuming_repeatedly_under_flow_loses_and_repeats_nothing() {
    const TOTAL: u64 = 400;
    let (_b, server) = server(|_| {}).await;
    let addr = server.local_addr;
    let mut client = Client::authorized(addr).await;
    let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let flow = tokio::spawn(async move {
        for n in 1..=TOTAL {
            post_trigger(addr, &trigger(json!([chat(1)]), json!(n))).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let epoch = epoch_of(&answer);
    let mut seen: Vec<u64> = Vec::new();
    let mut last = answer["offset"].as_u64().expect("offset");
    let mut resumes = 0;
    while seen.len() < TOTAL as usize {
        // Read a few, then drop the connection and come back.
        let take = (1 + resumes % 7).min(TOTAL as usize - seen.len());
        for (data, offset) in read_publishes(&mut client, "r", take).await {
            assert!(
                offset > last,
                "offsets strictly increase: {offset} after {last}"
            );
            last = offset;
            seen.push(data);
            if seen.len() == TOTAL as usize {
                break;
            }
        }
        if seen.len() == TOTAL as usize {
            break;
        }
        drop(client);
        client = Client::authorized(addr).await;
        let since = json!({"since": {"epoch": epoch, "offset": last}});
        let answer = subscribe_with(&mut client, chat(1), "r", since).await;
        assert_eq!(answer["recovered"], true, "{answer}");
        resumes += 1;
    }
    flow.await.expect("flow");
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "after {resumes} resumes"
    );
    assert!(resumes > 20, "only {resumes} resumes");
}

/// A subscriber with positions that stops reading loses publishes but not its connection: it
/// gets a gap notice before anything newer, and resuming from its last offset recovers them.
#[tokio::test]
async fn a_slow_subscriber_with_positions_gets_gap_notices_and_recovers() {
    let (_b, server) = server(|c| c.outgoing_queue = 8).await;
    let mut slow = Client::connect_small_buffer(server.local_addr).await;
    let answer = subscribe_with(&mut slow, chat(1), "r", json!({"recover": true})).await;
    let epoch = epoch_of(&answer);
    let pad = "p".repeat(2000);
    let body: Vec<Value> = (1..=300)
        .map(|n| json!({"rooms": [chat(1)], "data": {"n": n, "pad": pad}}))
        .collect();
    let (status, _) = post_trigger(server.local_addr, &Value::Array(body).to_string()).await;
    assert_eq!(status, 200);
    let status = server.status();
    assert!(status["gap_drops"].as_u64().expect("drops") > 0, "{status}");
    assert_eq!(status["slow_client_disconnects"], 0);

    // Read what arrives: publishes, then a gap notice naming the newest lost offset.
    let mut last = 0;
    let gap = loop {
        let frame = slow.recv_json().await;
        match frame["type"].as_str() {
            Some("publish") => {
                let offset = frame["offset"].as_u64().expect("offset");
                assert!(offset > last);
                last = offset;
            }
            Some("gap") => break frame,
            _ => panic!("unexpected {frame}"),
        }
    };
    assert_eq!(gap["requestId"], "r");
    assert_eq!(gap["offset"], 300, "{gap}");
    assert!(last < 300);
    // Still open; resume from the last offset received on the same connection.
    let since = json!({"since": {"epoch": epoch, "offset": last}});
    let answer = subscribe_with(&mut slow, chat(1), "r", since).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let mut next = last + 1;
    while next <= 300 {
        let frame = slow.recv_json().await;
        assert_eq!(frame["type"], "publish", "{frame}");
        assert_eq!(frame["offset"], next);
        assert_eq!(frame["data"]["n"], next);
        next += 1;
    }
    assert!(server.status()["gap_notices"].as_u64().expect("n") >= 1);
}

/// The real binary, restarted: a new epoch, and positions of the old one are not recovered.
#[cfg(unix)]
#[tokio::test]
async fn a_restart_changes_the_epoch() {
    use common::process::{command, free_port, spawn_listening};
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"chat": "*"}]}))).await;
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut first = spawn_listening(command(port, &backend, &[]), port).await;
    let mut client = Client::authorized(addr).await;
    let answer = subscribe_with(&mut client, chat(1), "r", json!({"recover": true})).await;
    let old_epoch = epoch_of(&answer);
    publish_to(addr, [1, 2]).await;
    read_publishes(&mut client, "r", 2).await;
    first.kill().await.expect("kill");
    drop(client);

    let _second = spawn_listening(command(port, &backend, &[]), port).await;
    let mut client = Client::authorized(addr).await;
    let since = json!({"since": {"epoch": old_epoch, "offset": 2}});
    let answer = subscribe_with(&mut client, chat(1), "r", since).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_ne!(epoch_of(&answer), old_epoch);
    assert_eq!(answer["offset"], 0);
}

async fn publish_to(addr: std::net::SocketAddr, data: impl IntoIterator<Item = u64>) {
    for n in data {
        let (status, body) = post_trigger(addr, &trigger(json!([chat(1)]), json!(n))).await;
        assert_eq!(status, 200, "{body}");
    }
}
