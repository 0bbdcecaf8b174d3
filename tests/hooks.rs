//! The backend hooks under load and at shutdown: bounded node-wide, the excess counted, and
//! every disconnect hook delivered before the server's shutdown returns.

mod common;

use std::time::Duration;

use common::{config_for, eventually, start, Client, Reply, TestBackend, WAIT};
use high_templar::hooks::MAX_HOOKS_IN_FLIGHT;
use serde_json::json;

const PING_HOOK: &str = "/api/user/ping/";
const OFFLINE_HOOK: &str = "/api/user/notify_offline/";

#[tokio::test]
async fn shutdown_returns_after_every_disconnect_hook_was_answered() {
    const CLIENTS: usize = 40;
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    // Slow enough that a shutdown not waiting for the hooks returns long before their answers.
    backend.set_hooks(Reply::ok(json!({})).delayed(Duration::from_millis(500)));
    let mut config = config_for(&backend);
    config.backend.on_disconnect = Some("user/notify_offline/".into());
    let server = start(config).await;
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = Client::authorized(server.local_addr).await;
        readers.push(tokio::spawn(async move { client.closed().await.code }));
    }
    server.shutdown(WAIT).await;
    assert_eq!(backend.answered(OFFLINE_HOOK), CLIENTS);
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), 1001);
    }
}

#[tokio::test]
async fn ping_hooks_past_the_bound_are_dropped_and_counted_and_others_go_on() {
    const PINGS: usize = 3 * MAX_HOOKS_IN_FLIGHT;
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"room": "*"}]}))).await;
    // Every hook call takes 3 s: the flood's calls are all in flight while the test looks.
    backend.set_hooks(Reply::ok(json!({})).delayed(Duration::from_secs(3)));
    let mut config = config_for(&backend);
    config.backend.on_ping = Some("user/ping/".into());
    config.backend.on_disconnect = Some("user/notify_offline/".into());
    let server = start(config).await;

    let mut flooder = Client::authorized(server.local_addr).await;
    for _ in 0..PINGS {
        flooder.send("ping").await;
    }
    for _ in 0..PINGS {
        assert_eq!(flooder.recv_text().await, "pong");
    }
    // Each ping's hook was started or dropped before its pong was queued.
    let status = flooder.status().await;
    let dropped = PINGS - MAX_HOOKS_IN_FLIGHT;
    assert_eq!(status["hooks_dropped"]["ping"], dropped, "{status}");

    // Another client meanwhile: connected, answered, subscribed, all before the backend
    // answered a single hook call.
    let mut other = Client::authorized(server.local_addr).await;
    other.ping().await;
    other.subscribe(json!({"room": "1"}), "r").await;
    assert_eq!(
        backend.answered(PING_HOOK),
        0,
        "the other client waited on hooks"
    );
    // Its ping hook found the bound full too; its disconnect hook waits its turn instead.
    other.ws.close(None).await.expect("close");

    let metrics = reqwest::get(format!("http://{}/metrics", server.local_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let line = format!(
        "high_templar_hooks_dropped_total{{hook=\"ping\"}} {}\n",
        dropped + 1
    );
    assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");

    eventually(3 * WAIT, || async {
        match backend.answered(OFFLINE_HOOK) {
            1 => Ok(()),
            n => Err(format!("{n} disconnect hooks answered")),
        }
    })
    .await;
    assert_eq!(backend.answered(PING_HOOK), MAX_HOOKS_IN_FLIGHT);
    assert_eq!(backend.max_in_flight_at(PING_HOOK), MAX_HOOKS_IN_FLIGHT);
    let status = server.status();
    assert_eq!(status["hooks_dropped"]["disconnect"], 0, "{status}");
}
