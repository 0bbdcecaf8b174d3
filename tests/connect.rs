//! PROTOCOL.md section 1 (opening a connection) and the lifetime hooks of section 6.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn authorized_connection_gets_allowed_rooms_first() {
    let rooms = json!([{"target": "message", "customer": "1"}, {"target": "user", "id": "*"}]);
    let (_backend, server) = server_allowing(rooms.clone()).await;
    let mut client = Client::connect(server.local_addr).await;
    assert_eq!(
        client.recv_json().await,
        json!({"is_authorized": true, "allowed_rooms": rooms})
    );
}

#[tokio::test]
async fn missing_allowed_rooms_means_none() {
    let backend = TestBackend::start(Reply::ok(json!({"user": 1}))).await;
    let server = start(config_for(&backend)).await;
    let mut client = Client::connect(server.local_addr).await;
    assert_eq!(
        client.recv_json().await,
        json!({"is_authorized": true, "allowed_rooms": []})
    );
}

#[tokio::test]
async fn a_large_allowed_list_is_echoed_whole_and_checked_room_by_room() {
    let rooms: Vec<_> = (0..5000)
        .map(|i| json!({"target": "message", "customer": i.to_string()}))
        .collect();
    let (_backend, server) = server_allowing(json!(rooms)).await;
    for _ in 0..2 {
        let mut client = Client::connect(server.local_addr).await;
        assert_eq!(
            client.recv_json().await,
            json!({"is_authorized": true, "allowed_rooms": rooms})
        );
        client
            .subscribe(json!({"target": "message", "customer": "4321"}), "r1")
            .await;
        client
            .send_json(json!({"type": "subscribe", "room": {"target": "message", "customer": "5000"}, "requestId": "r2"}))
            .await;
        assert_eq!(
            client.recv_json().await,
            json!({"code": "error", "message": "room-not-found"})
        );
    }
}

/// The `allowed_room_lists` gauge once it reads `expected` (connections end asynchronously).
async fn wait_for_allowed_lists(addr: std::net::SocketAddr, expected: u64) {
    let line = format!("high_templar_allowed_room_lists {expected}\n");
    eventually(WAIT, || async {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        if text.contains(&line) {
            Ok(())
        } else {
            Err(format!("no {line:?} in:\n{text}"))
        }
    })
    .await;
}

#[tokio::test]
async fn connections_given_the_same_allowed_rooms_share_one_list() {
    let (backend, server) = server_allowing(json!([{"target": "message", "customer": "*"}])).await;
    let mut a = Client::authorized(server.local_addr).await;
    let b = Client::authorized(server.local_addr).await;
    wait_for_allowed_lists(server.local_addr, 1).await;
    a.subscribe(json!({"target": "message", "customer": "7"}), "r1")
        .await;
    backend.set_bootstrap(Reply::ok(json!({"allowed_rooms": [{"target": "other"}]})));
    let c = Client::authorized(server.local_addr).await;
    wait_for_allowed_lists(server.local_addr, 2).await;
    drop(c);
    wait_for_allowed_lists(server.local_addr, 1).await;
    drop((a, b));
    wait_for_allowed_lists(server.local_addr, 0).await;
}

async fn assert_refused_normally(reply: Reply) {
    let backend = TestBackend::start(reply).await;
    let server = start(config_for(&backend)).await;
    let mut client = Client::connect(server.local_addr).await;
    assert_eq!(client.recv_json().await, json!({"is_authorized": false}));
    assert_eq!(client.closed().await.code, 1000);
}

#[tokio::test]
async fn refused_bootstrap_says_not_authorized_and_closes_normally() {
    assert_refused_normally(Reply::status(403)).await;
    assert_refused_normally(Reply::status(401)).await;
    assert_refused_normally(Reply::status(404)).await;
}

#[tokio::test]
async fn allowed_rooms_that_are_not_objects_are_a_refusal() {
    assert_refused_normally(Reply::ok(json!({"allowed_rooms": ["foo"]}))).await;
}

#[tokio::test]
async fn malformed_bootstrap_bodies_are_a_refusal() {
    assert_refused_normally(Reply::raw(200, "<html>not json</html>")).await;
    assert_refused_normally(Reply::ok(json!([1, 2]))).await;
    assert_refused_normally(Reply::ok(json!({"allowed_rooms": {"a": 1}}))).await;
}

async fn assert_backend_unavailable(server: &high_templar::Handle) {
    let mut client = Client::connect(server.local_addr).await;
    assert_eq!(
        client.recv_json().await,
        json!({"is_authorized": false, "error": "backend-unavailable"})
    );
    assert_eq!(client.closed().await.code, 1013);
}

#[tokio::test]
async fn backend_5xx_is_backend_unavailable() {
    let backend = TestBackend::start(Reply::status(502)).await;
    let server = start(config_for(&backend)).await;
    assert_backend_unavailable(&server).await;
    // The server stays up and serves the next client once the backend recovers.
    backend.set_bootstrap(Reply::ok(json!({"allowed_rooms": []})));
    Client::authorized(server.local_addr).await;
}

#[tokio::test]
async fn unreachable_backend_is_backend_unavailable() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut config = high_templar::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    config.backend.api_url = Some(
        format!("http://127.0.0.1:{port}/api/")
            .parse()
            .expect("url"),
    );
    let server = start(config).await;
    assert_backend_unavailable(&server).await;
}

#[tokio::test]
async fn slow_backend_times_out_as_backend_unavailable() {
    let backend =
        TestBackend::start(Reply::ok(json!({"allowed_rooms": []})).delayed(Duration::from_secs(5)))
            .await;
    let mut config = config_for(&backend);
    config.backend.timeout = Duration::from_millis(300);
    let server = start(config).await;
    assert_backend_unavailable(&server).await;
}

#[tokio::test]
async fn bootstrap_receives_the_forwarded_headers() {
    let (backend, server) = server_allowing(json!([])).await;
    let _client = Client::connect_with(
        server.local_addr,
        "?token=abc123&other=1",
        &[
            ("Cookie", "sessionid=s1; csrftoken=csrf-1"),
            ("User-Agent", "test-agent/1.0"),
            ("X-Real-IP", "203.0.113.7"),
        ],
    )
    .await;
    let request = backend.wait_for("/api/bootstrap/").await;
    assert_eq!(request.method, "GET");
    let h = &request.headers;
    assert_eq!(h["cookie"], "sessionid=s1; csrftoken=csrf-1");
    assert_eq!(h["user-agent"], "test-agent/1.0");
    assert_eq!(h["x-real-ip"], "203.0.113.7");
    assert_eq!(h["x-csrftoken"], "csrf-1");
    assert_eq!(h["authorization"], "Token abc123");
    // The websocket request's Host is not forwarded: the backend sees its own.
    assert_eq!(h["host"], backend.addr.expect("tcp").to_string());
}

#[tokio::test]
async fn headers_without_values_are_not_sent() {
    let (backend, server) = server_allowing(json!([])).await;
    let _client = Client::connect_with(server.local_addr, "?token=", &[("User-Agent", "")]).await;
    let request = backend.wait_for("/api/bootstrap/").await;
    for name in ["cookie", "x-real-ip", "x-csrftoken", "authorization"] {
        assert!(!request.headers.contains_key(name), "{name} was sent");
    }
}

#[tokio::test]
async fn configured_headers_add_and_override() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.backend.forward_headers = [
        "Authorization=cookie:jwt:Bearer {}",
        "X-Tenant=query:tenant",
        "X-Forwarded-For=header:X-Forwarded-For",
        "X-Service=value:high-templar",
    ]
    .iter()
    .map(|r| r.parse().expect("rule"))
    .collect();
    let server = start(config).await;
    let _client = Client::connect_with(
        server.local_addr,
        "?token=ignored&tenant=acme",
        &[("Cookie", "jwt=j.w.t"), ("X-Forwarded-For", "198.51.100.1")],
    )
    .await;
    let h = backend.wait_for("/api/bootstrap/").await.headers;
    assert_eq!(h["authorization"], "Bearer j.w.t");
    assert_eq!(h["x-tenant"], "acme");
    assert_eq!(h["x-forwarded-for"], "198.51.100.1");
    assert_eq!(h["x-service"], "high-templar");
}

#[tokio::test]
async fn backend_over_a_unix_socket() {
    let backend = TestBackend::start_unix(Reply::ok(json!({"allowed_rooms": [{"a": 1}]}))).await;
    let server = start(config_for(&backend)).await;
    let mut client = Client::connect_with(server.local_addr, "?token=t", &[]).await;
    assert_eq!(
        client.recv_json().await,
        json!({"is_authorized": true, "allowed_rooms": [{"a": 1}]})
    );
    let request = backend.wait_for("/api/bootstrap/").await;
    assert_eq!(request.headers["host"], "django.internal");
    assert_eq!(request.headers["authorization"], "Token t");
}

#[tokio::test]
async fn hooks_post_with_forwarded_headers() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.backend.on_connect = Some("user/notify_online/".into());
    config.backend.on_disconnect = Some("user/notify_offline/".into());
    config.backend.on_ping = Some("user/ping/".into());
    let server = start(config).await;
    let mut client = Client::connect_with(
        server.local_addr,
        "?token=abc",
        &[("Cookie", "sessionid=s")],
    )
    .await;
    client.recv_json().await;
    let online = backend.wait_for("/api/user/notify_online/").await;
    assert_eq!(online.method, "POST");
    assert_eq!(online.headers["authorization"], "Token abc");
    assert_eq!(online.headers["cookie"], "sessionid=s");
    client.send("ping").await;
    assert_eq!(client.recv_text().await, "pong");
    let ping = backend.wait_for("/api/user/ping/").await;
    assert_eq!(ping.headers["authorization"], "Token abc");
    client.ws.close(None).await.expect("close");
    let offline = backend.wait_for("/api/user/notify_offline/").await;
    assert_eq!(offline.method, "POST");
    assert_eq!(offline.headers["cookie"], "sessionid=s");
}

#[tokio::test]
async fn hooks_are_off_by_default() {
    let (backend, server) = server_allowing(json!([])).await;
    let mut client = Client::authorized(server.local_addr).await;
    client.send("ping").await;
    assert_eq!(client.recv_text().await, "pong");
    client.ws.close(None).await.expect("close");
    // The shutdown returns once the connection has ended and every hook it started was
    // answered: whatever the backend would get, it has got.
    server.shutdown(WAIT).await;
    let paths: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/api/bootstrap/"]);
}

#[tokio::test]
async fn refused_connections_do_not_call_hooks() {
    let backend = TestBackend::start(Reply::status(403)).await;
    let mut config = config_for(&backend);
    config.backend.on_connect = Some("user/notify_online/".into());
    config.backend.on_disconnect = Some("user/notify_offline/".into());
    let server = start(config).await;
    let mut client = Client::connect(server.local_addr).await;
    assert_eq!(client.recv_json().await, json!({"is_authorized": false}));
    client.closed().await;
    server.shutdown(WAIT).await;
    let paths: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/api/bootstrap/"]);
}
