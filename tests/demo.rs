//! Demo mode (`--demo`): the built-in backend, the open trigger path, the page and its status
//! endpoint, and the loopback-only rule.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use high_templar::Config;
use serde_json::json;

async fn demo_server() -> high_templar::Handle {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        demo: true,
        ..Config::default()
    };
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    start(config).await
}

#[tokio::test]
async fn every_visitor_may_join_the_demo_rooms() {
    let server = demo_server().await;
    let mut client = Client::connect(server.local_addr).await;
    assert_eq!(
        client.recv_json().await,
        json!({"is_authorized": true, "allowed_rooms": [{"target": "demo", "room": "*"}]})
    );
    client
        .subscribe(json!({"target": "demo", "room": "lobby"}), "r1")
        .await;
    client
        .send_json(json!({"type": "subscribe", "room": {"target": "secret"}, "requestId": "r2"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"code": "error", "message": "room-not-found"})
    );
}

#[tokio::test]
async fn demo_trigger_needs_no_token() {
    let server = demo_server().await;
    let mut client = Client::authorized(server.local_addr).await;
    client
        .subscribe(json!({"target": "demo", "room": "lobby"}), "r1")
        .await;
    let body = trigger(
        json!([{"target": "demo", "room": "lobby"}]),
        json!({"hi": 1}),
    );
    let (status, answer) = post_trigger_with(server.local_addr, &body, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"delivered": 1, "triggers": 1}));
    assert_eq!(
        client.recv_json().await,
        json!({"type": "publish", "data": {"hi": 1}, "requestId": "r1"})
    );
}

#[tokio::test]
async fn demo_trigger_still_refuses_bad_bodies() {
    let server = demo_server().await;
    let (status, answer) = post_trigger_with(server.local_addr, "{\"data\": 1}", None).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
}

#[tokio::test]
async fn demo_page_and_status_are_served() {
    let server = demo_server().await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("http://{}/", server.local_addr))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("/demo/demo.js"), "page loads its script");
    for asset in ["/demo/client.js", "/demo/demo.js", "/demo/demo.css"] {
        let response = http
            .get(format!("http://{}{asset}", server.local_addr))
            .send()
            .await
            .expect("asset");
        assert_eq!(response.status(), 200, "{asset}");
        assert!(!response.text().await.expect("body").is_empty(), "{asset}");
    }
    let mut client = Client::authorized(server.local_addr).await;
    client
        .subscribe(json!({"target": "demo", "room": "a"}), "r1")
        .await;
    let status: serde_json::Value = http
        .get(format!("http://{}/demo/status", server.local_addr))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["open_connections"], 1, "{status}");
    assert_eq!(status["num_rooms"], 1, "{status}");
}

#[tokio::test]
async fn without_demo_there_is_no_page_and_no_open_trigger() {
    let (_backend, server) = server_allowing(json!([])).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("http://{}/", server.local_addr))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 404);
    let (status, _) = post_trigger_with(server.local_addr, "{}", None).await;
    assert_eq!(status, 401);
}

/// The binary itself, so the flag, the refusal message and the exit code are what a user sees.
fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_high-templar"));
    for (name, _) in std::env::vars() {
        if name.starts_with("HT_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn demo_refuses_a_public_address_without_the_loud_flag() {
    let output = binary()
        .args(["--demo", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("demo mode refuses"), "{stderr}");
    assert!(stderr.contains("--demo-allow-public"), "{stderr}");
}

#[test]
fn demo_is_also_switched_on_by_the_environment() {
    let output = binary()
        .args(["--listen", "0.0.0.0:0"])
        .env("HT_DEMO", "1")
        .output()
        .expect("run binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("demo mode refuses"), "{stderr}");
}

#[test]
fn the_loud_flag_starts_a_public_demo_with_a_warning() {
    let mut child = binary()
        .args(["--demo", "--demo-allow-public", "--listen", "0.0.0.0:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run binary");
    // Logs go to stderr.
    let stderr = child.stderr.take().expect("stderr");
    let mut warned = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("log line");
        if line.contains("DEMO MODE ON A PUBLIC ADDRESS") {
            warned = true;
        }
        if line.contains("demo mode: open") {
            break;
        }
    }
    child.kill().expect("stop binary");
    let _ = child.wait();
    assert!(warned, "no warning before the server was up");
}
