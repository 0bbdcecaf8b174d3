//! PROTOCOL.md sections 2, 3, 5 and 6: client messages, permissions, status, lifetime.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const ROOMS: &str = r#"[{"target": "message", "customer": "1"}, {"target": "user", "id": "*"}]"#;

async fn setup() -> (TestBackend, high_templar::Handle, Client) {
    let rooms: Value = serde_json::from_str(ROOMS).expect("rooms");
    let (backend, server) = server_allowing(rooms).await;
    let client = Client::authorized(server.local_addr).await;
    (backend, server, client)
}

#[tokio::test]
async fn ping_answers_pong_as_raw_text() {
    let (_b, _s, mut client) = setup().await;
    client.send("ping").await;
    assert_eq!(client.recv_text().await, "pong");
}

#[tokio::test]
async fn subscribe_to_an_allowed_room_succeeds() {
    let (_b, _s, mut client) = setup().await;
    client
        .send_json(json!({"type": "subscribe", "room": {"customer": "1", "target": "message"}, "requestId": "r1"}))
        .await;
    assert_eq!(client.recv_text().await, r#"{"code":"success"}"#);
}

#[tokio::test]
async fn subscribe_to_a_room_not_allowed_is_room_not_found() {
    let (_b, _s, mut client) = setup().await;
    for room in [
        json!({"target": "message", "customer": "2"}),
        json!({"target": "message", "customer": 1}),
        json!({"target": "message"}),
        json!({"target": "message", "customer": "1", "extra": "x"}),
    ] {
        client
            .send_json(json!({"type": "subscribe", "room": room, "requestId": "r1"}))
            .await;
        assert_eq!(
            client.recv_json().await,
            json!({"code": "error", "message": "room-not-found"})
        );
    }
}

#[tokio::test]
async fn wildcard_allowed_room_permits_any_value() {
    let (_b, _s, mut client) = setup().await;
    client
        .subscribe(json!({"target": "user", "id": 42}), "a")
        .await;
    client
        .subscribe(json!({"target": "user", "id": "*"}), "b")
        .await;
}

#[tokio::test]
async fn subscribe_without_request_id_is_refused() {
    let (_b, _s, mut client) = setup().await;
    client
        .send_json(json!({"type": "subscribe", "room": {"target": "user", "id": 1}}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"code": "error", "message": "no-request-id"})
    );
}

#[tokio::test]
async fn subscribe_without_a_valid_room_is_invalid_room_and_the_socket_stays_open() {
    let (_b, _s, mut client) = setup().await;
    for message in [
        json!({"type": "subscribe", "requestId": "r"}),
        json!({"type": "subscribe", "room": "target", "requestId": "r"}),
        json!({"type": "subscribe", "room": {"target": {"nested": 1}}, "requestId": "r"}),
        json!({"type": "subscribe", "room": {"target": [1]}, "requestId": "r"}),
    ] {
        client.send_json(message).await;
        assert_eq!(
            client.recv_json().await,
            json!({"code": "error", "message": "invalid-room"})
        );
    }
    client.send("ping").await;
    assert_eq!(client.recv_text().await, "pong");
}

#[tokio::test]
async fn unsubscribe_ends_a_subscription() {
    let (_b, server, mut client) = setup().await;
    client
        .subscribe(json!({"target": "user", "id": 1}), "r1")
        .await;
    client
        .send_json(json!({"type": "unsubscribe", "requestId": "r1", "room": {"ignored": true}}))
        .await;
    assert_eq!(client.recv_json().await, json!({"code": "success"}));
    let (_, body) = post_trigger(
        server.local_addr,
        &trigger(json!([{"target": "user", "id": 1}]), json!(1)),
    )
    .await;
    assert_eq!(body["delivered"], 0);
    client.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unsubscribe_unknown_request_id_is_not_subscribed() {
    let (_b, _s, mut client) = setup().await;
    client
        .send_json(json!({"type": "unsubscribe", "requestId": "nope"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"code": "error", "message": "not-subscribed"})
    );
    client
        .subscribe(json!({"target": "user", "id": 1}), "r1")
        .await;
    client
        .send_json(json!({"type": "unsubscribe", "requestId": "r1"}))
        .await;
    assert_eq!(client.recv_json().await, json!({"code": "success"}));
    client
        .send_json(json!({"type": "unsubscribe", "requestId": "r1"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"code": "error", "message": "not-subscribed"})
    );
}

#[tokio::test]
async fn unsubscribe_without_request_id_is_refused() {
    let (_b, _s, mut client) = setup().await;
    client.send_json(json!({"type": "unsubscribe"})).await;
    assert_eq!(
        client.recv_json().await,
        json!({"code": "error", "message": "no-request-id"})
    );
}

/// The two errors carry the connection's own id: the same on every answer of one connection.
#[tokio::test]
async fn non_json_and_unknown_types_carry_the_connection_id() {
    let (_b, _s, mut client) = setup().await;
    client.send("hello").await;
    let first = client.recv_json().await;
    assert_eq!(first["code"], "error");
    assert_eq!(first["message"], "non-json-message");
    let connection_id = first["requestId"]
        .as_str()
        .expect("connection id")
        .to_string();
    assert!(!connection_id.is_empty());
    for text in [
        r#"{"type":"publish"}"#,
        r#"{"requestId":"x"}"#,
        "[1,2]",
        "42",
        r#""str""#,
    ] {
        client.send(text).await;
        assert_eq!(
            client.recv_json().await,
            json!({"requestId": connection_id, "code": "error", "message": "message-type-not-allowed"}),
            "for {text}"
        );
    }
    let (_b2, server2) = server_allowing(json!([])).await;
    let mut other = Client::authorized(server2.local_addr).await;
    other.send("{").await;
    assert_ne!(other.recv_json().await["requestId"], json!(connection_id));
}

#[tokio::test]
async fn status_reports_the_node() {
    let (_b, server, mut client) = setup().await;
    let mut second = Client::authorized(server.local_addr).await;
    client
        .subscribe(json!({"target": "user", "id": 1}), "a")
        .await;
    second
        .subscribe(json!({"target": "user", "id": 1}), "a")
        .await;
    second
        .subscribe(json!({"target": "user", "id": 2}), "b")
        .await;
    let status = client.status().await;
    for key in [
        "open_connections",
        "num_rooms",
        "rabbitmq_messages_received",
        "ws_messages_received",
        "ws_messages_send",
        "ws_messages_send_error",
        "ws_messages_send_queued",
    ] {
        assert!(
            status[key].is_u64(),
            "{key} missing or not a number in {status}"
        );
    }
    assert_eq!(status["open_connections"], 2);
    assert_eq!(status["num_rooms"], 2);
    assert_eq!(status["ws_messages_received"], 4);
    let since = status["online_since"].as_str().expect("online_since");
    assert!(
        humantime::parse_rfc3339(since).is_ok(),
        "{since} is not ISO-8601"
    );
}

#[tokio::test]
async fn rooms_disappear_with_their_last_subscription() {
    let (_b, server, mut client) = setup().await;
    let mut other = Client::authorized(server.local_addr).await;
    client
        .subscribe(json!({"target": "user", "id": 1}), "a")
        .await;
    client
        .subscribe(json!({"target": "user", "id": 2}), "b")
        .await;
    other
        .subscribe(json!({"target": "user", "id": 2}), "x")
        .await;
    assert_eq!(client.status().await["num_rooms"], 2);
    client
        .send_json(json!({"type": "unsubscribe", "requestId": "a"}))
        .await;
    client.recv_json().await;
    assert_eq!(client.status().await["num_rooms"], 1);
    other.ws.close(None).await.expect("close");
    // The disconnect is processed asynchronously: wait until the room is gone.
    eventually(WAIT, || async {
        let status = server.status();
        match status["num_rooms"] == 1 && status["open_connections"] == 1 {
            true => Ok(()),
            false => Err(format!("room not cleaned up: {status}")),
        }
    })
    .await;
    drop(client);
    eventually(WAIT, || async {
        let status = server.status();
        match status["num_rooms"] == 0 {
            true => Ok(()),
            false => Err(format!("rooms left: {status}")),
        }
    })
    .await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.idle_timeout = Duration::from_millis(400);
    let server = start(config).await;
    let mut client = Client::authorized(server.local_addr).await;
    // Activity keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.send("ping").await;
        assert_eq!(client.recv_text().await, "pong");
    }
    // ...silence closes it.
    let closed = client.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "idle-timeout")
    );
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.max_message_size = 1024;
    let server = start(config).await;
    let mut client = Client::authorized(server.local_addr).await;
    client.send(&"x".repeat(4096)).await;
    assert_eq!(client.closed().await.code, 1009);
    // The node is unaffected.
    let mut other = Client::authorized(server.local_addr).await;
    other.send("ping").await;
    assert_eq!(other.recv_text().await, "pong");
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let (_b, _s, mut client) = setup().await;
    client
        .ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(client.closed().await.code, 1003);
}

#[tokio::test]
async fn answers_come_in_request_order() {
    let (_b, _s, mut client) = setup().await;
    client
        .send_json(
            json!({"type": "subscribe", "room": {"target": "user", "id": 1}, "requestId": "a"}),
        )
        .await;
    client
        .send_json(json!({"type": "subscribe", "room": {"target": "nope"}, "requestId": "b"}))
        .await;
    client.send("ping").await;
    client
        .send_json(json!({"type": "unsubscribe", "requestId": "a"}))
        .await;
    assert_eq!(client.recv_text().await, r#"{"code":"success"}"#);
    assert_eq!(client.recv_json().await["message"], "room-not-found");
    assert_eq!(client.recv_text().await, "pong");
    assert_eq!(client.recv_text().await, r#"{"code":"success"}"#);
}
