//! Issue 4: every limit and refusal, with real sockets.

mod common;

use std::time::Duration;

use common::*;
use high_templar::Config;
use serde_json::json;

fn allowed() -> serde_json::Value {
    json!([{"room": "*"}, {"a": "*", "b": "*"}])
}

async fn backend() -> TestBackend {
    TestBackend::start(Reply::ok(json!({"allowed_rooms": allowed()}))).await
}

async fn server_with(edit: impl FnOnce(&mut Config)) -> (TestBackend, high_templar::Handle) {
    let backend = backend().await;
    let mut config = config_for(&backend);
    edit(&mut config);
    (backend.clone(), start(config).await)
}

#[tokio::test]
async fn foreign_origin_is_refused_with_403_and_same_origin_passes() {
    let (_b, server) = server_with(|_| {}).await;
    let host = server.local_addr.to_string();
    let status =
        Client::try_connect(server.local_addr, &[("Origin", "https://evil.example")]).await;
    assert_eq!(status.err(), Some(403));
    let same = format!("http://{host}");
    let mut client = Client::try_connect(server.local_addr, &[("Origin", &same)])
        .await
        .expect("same origin");
    assert_eq!(client.recv_json().await["is_authorized"], true);
    // No Origin: not a browser page, let in.
    Client::authorized(server.local_addr).await;
    assert_eq!(server.status()["connections_refused"]["origin"], 1);
}

#[tokio::test]
async fn configured_origins_allow_patterns() {
    let (_b, server) = server_with(|c| {
        c.policy.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.corp.example".into(),
        ];
    })
    .await;
    for (origin, ok) in [
        ("https://app.example.com", true),
        ("https://eu.corp.example", true),
        ("https://corp.example", false),
        ("http://app.example.com", false),
        ("https://app.example.com.evil.io", false),
    ] {
        let result = Client::try_connect(server.local_addr, &[("Origin", origin)]).await;
        assert_eq!(result.is_ok(), ok, "{origin}");
    }
}

#[tokio::test]
async fn node_connection_limit_answers_503() {
    let (_b, server) = server_with(|c| c.policy.max_connections = Some(2)).await;
    let _a = Client::authorized(server.local_addr).await;
    let b = Client::authorized(server.local_addr).await;
    assert_eq!(
        Client::try_connect(server.local_addr, &[]).await.err(),
        Some(503)
    );
    drop(b);
    // The place frees once the connection is gone.
    eventually(WAIT, || async {
        match Client::try_connect(server.local_addr, &[]).await {
            Ok(_) => Ok(()),
            Err(503) => Err("still refused: 503".to_string()),
            Err(other) => panic!("refused with {other}"),
        }
    })
    .await;
    assert!(server.status()["connections_refused"]["node_full"].as_u64() >= Some(1));
}

#[tokio::test]
async fn per_ip_limit_answers_429_using_the_proxy_header() {
    let (_b, server) = server_with(|c| {
        // The test client connects from loopback: a trusted proxy by default.
        c.policy.max_connections_per_ip = 1;
    })
    .await;
    let _first = Client::try_connect(server.local_addr, &[("X-Real-IP", "198.51.100.1")])
        .await
        .expect("first");
    let second = Client::try_connect(server.local_addr, &[("X-Real-IP", "198.51.100.1")]).await;
    assert_eq!(second.err(), Some(429));
    Client::try_connect(server.local_addr, &[("X-Real-IP", "198.51.100.2")])
        .await
        .expect("other address");
    assert_eq!(server.status()["connections_refused"]["ip_full"], 1);
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let (_b, server) = server_with(|c| c.policy.max_subscriptions = 2).await;
    let mut client = Client::authorized(server.local_addr).await;
    client.subscribe(json!({"room": 1}), "a").await;
    client.subscribe(json!({"room": 2}), "b").await;
    client
        .send_json(json!({"type": "subscribe", "room": {"room": 3}, "requestId": "c"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"code": "error", "message": "too-many-subscriptions"})
    );
    // Replacing an existing requestId is not a new subscription.
    client.subscribe(json!({"room": 4}), "b").await;
    client
        .send_json(json!({"type": "unsubscribe", "requestId": "a"}))
        .await;
    client.recv_json().await;
    client.subscribe(json!({"room": 3}), "c").await;
}

#[tokio::test]
async fn flooding_clients_are_closed_with_1008_when_the_operator_asks() {
    let (_b, server) = server_with(|c| {
        c.policy.messages_per_second = 1.0;
        c.policy.message_burst = 5;
        c.policy.close_flooders = true;
    })
    .await;
    let mut client = Client::authorized(server.local_addr).await;
    for _ in 0..10 {
        client.send("ping").await;
    }
    let closed = client.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "rate-limited")
    );
    assert_eq!(server.status()["limits_hit"]["rate"], 1);
}

#[tokio::test]
async fn oversized_rooms_are_invalid() {
    let (_b, server) = server_with(|c| {
        c.policy.room_limits.max_keys = 2;
        c.policy.room_limits.max_len = 8;
    })
    .await;
    let mut client = Client::authorized(server.local_addr).await;
    for room in [
        json!({"a": 1, "b": 2, "c": 3}),
        json!({"room": "123456789"}),
    ] {
        client
            .send_json(json!({"type": "subscribe", "room": room, "requestId": "r"}))
            .await;
        assert_eq!(client.recv_json().await["message"], "invalid-room");
    }
    let (status, body) = post_trigger(
        server.local_addr,
        &trigger(json!([{"room": "123456789"}]), json!(1)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn status_can_be_disabled() {
    let (_b, server) = server_with(|c| c.policy.status_enabled = false).await;
    let mut client = Client::authorized(server.local_addr).await;
    assert_eq!(
        client.status().await,
        json!({"code": "error", "message": "status-disabled"})
    );
}

#[tokio::test]
async fn half_open_connections_are_closed_by_websocket_pings() {
    let (_b, server) =
        server_with(|c| c.policy.ws_ping_interval = Some(Duration::from_millis(200))).await;
    let mut responsive = Client::authorized(server.local_addr).await;
    let mut dead = Client::authorized(server.local_addr).await;
    // The responsive client reads (and so answers pings) while sending nothing itself.
    responsive.expect_silence(Duration::from_millis(900)).await;
    // The dead one never read, so never answered: it was closed as going away.
    let closed = dead.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1001, "ping-timeout")
    );
    responsive.send("ping").await;
    assert_eq!(responsive.recv_text().await, "pong");
}

#[tokio::test]
async fn reauthorisation_drops_revoked_rooms_and_closes_refused_users() {
    let (backend, server) =
        server_with(|c| c.policy.reauth_interval = Some(Duration::from_millis(300))).await;
    let mut client = Client::authorized(server.local_addr).await;
    client.subscribe(json!({"room": "kept"}), "keep").await;
    client.subscribe(json!({"a": 1, "b": 2}), "drop").await;
    backend.set_bootstrap(Reply::ok(json!({"allowed_rooms": [{"room": "*"}]})));
    assert_eq!(
        client.recv_json().await,
        json!({"type": "unsubscribed", "requestId": "drop"})
    );
    let (_, body) = post_trigger(
        server.local_addr,
        &trigger(json!([{"a": 1, "b": 2}, {"room": "kept"}]), json!(1)),
    )
    .await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(client.recv_json().await["requestId"], "keep");
    // A backend outage does not log anyone out.
    backend.set_bootstrap(Reply::status(503));
    client.expect_silence(Duration::from_millis(700)).await;
    backend.set_bootstrap(Reply::status(403));
    assert_eq!(client.recv_json().await, json!({"is_authorized": false}));
    assert_eq!(client.closed().await.code, 1000);
}

#[tokio::test]
async fn bootstraps_in_flight_are_limited_and_overflow_gets_backend_unavailable() {
    let backend = TestBackend::start(
        Reply::ok(json!({"allowed_rooms": []})).delayed(Duration::from_millis(300)),
    )
    .await;
    let mut config = config_for(&backend);
    config.policy.max_concurrent_bootstraps = 2;
    config.backend.timeout = Duration::from_millis(1000);
    let server = start(config).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let addr = server.local_addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let first = client.recv_json().await;
            if first["is_authorized"] == true {
                true
            } else {
                assert_eq!(
                    first,
                    json!({"is_authorized": false, "error": "backend-unavailable"})
                );
                assert_eq!(client.closed().await.code, 1013);
                false
            }
        }));
    }
    let mut authorised = 0;
    for task in tasks {
        authorised += usize::from(task.await.expect("client task"));
    }
    assert!(
        backend.max_in_flight() <= 2,
        "backend saw {} at once",
        backend.max_in_flight()
    );
    assert!(authorised >= 2, "only {authorised} authorised");
    assert!(authorised < 12, "the queue should have overflowed");
}

#[tokio::test]
async fn circuit_breaker_opens_and_readyz_reports_it() {
    let backend = TestBackend::start(Reply::status(500)).await;
    let server = start(config_for(&backend)).await;
    let ready = reqwest::get(format!("http://{}/readyz", server.local_addr))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    for _ in 0..20 {
        let mut client = Client::connect(server.local_addr).await;
        assert_eq!(client.recv_json().await["error"], "backend-unavailable");
    }
    let calls_before = backend.requests().len();
    let mut client = Client::connect(server.local_addr).await;
    assert_eq!(client.recv_json().await["error"], "backend-unavailable");
    assert_eq!(
        backend.requests().len(),
        calls_before,
        "an open breaker must not call the backend"
    );
    let ready = reqwest::get(format!("http://{}/readyz", server.local_addr))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let health = reqwest::get(format!("http://{}/healthz", server.local_addr))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn metrics_expose_the_counters() {
    let (_b, server) = server_with(|_| {}).await;
    let mut client = Client::authorized(server.local_addr).await;
    client.subscribe(json!({"room": 1}), "r").await;
    post_trigger(server.local_addr, &trigger(json!([{"room": 1}]), json!(1))).await;
    client.recv_json().await;
    let _ = Client::try_connect(server.local_addr, &[("Origin", "https://evil.example")]).await;
    let text = reqwest::get(format!("http://{}/metrics", server.local_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    for line in [
        "high_templar_connections 1",
        "high_templar_rooms 1",
        "high_templar_subscriptions 1",
        "high_templar_triggers_received_total{source=\"http\"} 1",
        "high_templar_connections_refused_total{reason=\"origin\"} 1",
        "high_templar_messages_sent_total",
        "high_templar_slow_client_disconnects_total 0",
        "high_templar_backend_request_duration_seconds_count 1",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    assert!(!text.contains(TOKEN));
}

#[tokio::test]
async fn ops_endpoints_move_to_the_internal_listener() {
    let (_b, server) =
        server_with(|c| c.internal_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let internal = server.internal_addr.expect("internal");
    for path in ["metrics", "healthz", "readyz", "status"] {
        let public = reqwest::get(format!("http://{}/{path}", server.local_addr))
            .await
            .expect("get");
        assert_eq!(public.status(), 404, "/{path} on the public address");
        let private = reqwest::get(format!("http://{internal}/{path}"))
            .await
            .expect("get");
        assert_eq!(private.status(), 200, "/{path} on the internal address");
    }
}
