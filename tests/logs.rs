//! What the real binary logs at INFO, the level an operator keeps on: node events and one
//! summary line per interval, not a line per connection (a reconnect storm of 10,000 clients
//! would be 20,000 lines).
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::process::{self, free_port, spawn_listening, Log};
use common::*;
use serde_json::json;

/// The summary interval the test sets: short, so the test runs in seconds.
const EVERY: &str = "1s";

/// The sum of `field=N` over the summary lines of `log`.
fn summed(log: &Log, field: &str) -> u64 {
    let key = format!(" {field}=");
    log.lines()
        .iter()
        .filter(|line| line.contains("summary of the last"))
        .filter_map(|line| {
            let rest = &line[line.find(&key)? + key.len()..];
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test]
async fn connections_are_not_logged_at_info_and_a_summary_line_says_what_they_added_up_to() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"room": "*"}]}))).await;
    let port = free_port();
    let mut command = process::command(port, &backend, &["--log-summary-interval", EVERY]);
    command.env("RUST_LOG", "info");
    Log::capture(&mut command);
    let mut child = spawn_listening(command, port).await;
    let log = Log::collect(&mut child);
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::authorized(addr).await);
    }
    clients[0].subscribe(json!({"room": "a"}), "r").await;
    let (status, _) = post_trigger(addr, &trigger(json!([{"room": "a"}]), json!(1))).await;
    assert_eq!(status, 200);
    assert_eq!(clients[0].recv_json().await["data"], 1);
    clients.truncate(1);
    // A refusal: the backend says no.
    backend.set_bootstrap(Reply::status(403));
    let mut refused = Client::connect(addr).await;
    assert_eq!(refused.recv_json().await["is_authorized"], false);
    assert_eq!(refused.closed().await.code, 1000);

    // The activity adds up over the summary lines (it may straddle two of them).
    eventually(WAIT, || async {
        match (summed(&log, "opened"), summed(&log, "closed")) {
            (3, 2) => Ok(()),
            _ => Err(format!(
                "the summary lines do not add up; the log:\n{}",
                log.lines().join("\n")
            )),
        }
    })
    .await;
    assert_eq!(summed(&log, "triggers_in"), 1);
    let refusal = log.wait_for("refused=unauthorized=1", WAIT).await;
    assert!(refusal.contains("INFO"), "{refusal}");
    // Messages sent through the outbox (`messages_sent_total`): the subscribe answer and the
    // publish.
    assert_eq!(summed(&log, "messages_out"), 2);

    // Nothing more happens: no more lines.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = log.lines().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(log.lines().len(), settled, "{}", log.lines().join("\n"));

    let lines = log.lines();
    assert!(lines.iter().any(|l| l.contains("capacity:")), "{lines:?}");
    for line in &lines {
        assert!(
            !line.contains("connection opened") && !line.contains("connection closed"),
            "a line per connection at INFO: {line}"
        );
        // Plain text for journald: no colour codes when stderr is not a terminal.
        assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
    }
}
