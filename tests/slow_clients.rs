//! Slow and stalled clients cost the node a bounded amount of memory, in bytes as well as in
//! frames, whatever the size of the triggers; a client that reads gets everything.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::process::{self, free_port, memory_kib, spawn_listening};
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The outgoing queue's byte bound the binary runs with (its default).
const BOUND: u64 = 4 * 1024 * 1024;
const STALLED: u64 = 2;
const TRIGGERS: usize = 60;
/// ~1 MiB of data: the largest trigger the default body limit takes.
const DATA_LEN: usize = 1_000_000;

/// A subscriber that never reads.
async fn stalled_subscriber(addr: std::net::SocketAddr) -> Client {
    let mut client = Client::connect_small_buffer(addr).await;
    client.subscribe(json!({"feed": "big"}), "big").await;
    client
}

#[tokio::test]
async fn stalled_subscribers_hold_at_most_the_byte_bound_and_are_closed_1013() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"feed": "*"}]}))).await;
    let port = free_port();
    // History off: it holds recent triggers by design (up to its own bound, 64 MiB), and what
    // is measured here is what the stalled connections hold.
    let command = process::command(port, &backend, &["--history-ttl", "0"]);
    let child = spawn_listening(command, port).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_subscriber(addr).await);
    }
    let mut reader = Client::authorized(addr).await;
    reader.subscribe(json!({"feed": "big"}), "reader").await;
    let reading = tokio::spawn(async move {
        for i in 0..TRIGGERS {
            let frame = reader.recv_json().await;
            assert_eq!(frame["requestId"], "reader");
            assert_eq!(frame["data"]["n"], i, "in order");
            assert_eq!(frame["data"]["pad"].as_str().map(str::len), Some(DATA_LEN));
        }
        reader
    });

    let before = memory_kib(&child, "VmRSS");
    let pad = "x".repeat(DATA_LEN);
    for n in 0..TRIGGERS {
        let body = trigger(json!([{"feed": "big"}]), json!({"n": n, "pad": pad}));
        let (status, answer) = post_trigger(addr, &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut reader = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the reader gets every trigger")
        .expect("reader");
    let peak = memory_kib(&child, "VmHWM");
    let growth = peak.saturating_sub(before) * 1024;
    eprintln!(
        "RSS before {before} KiB, peak {peak} KiB: +{:.1} MiB for {STALLED} stalled subscribers \
         under {TRIGGERS} triggers of {:.2} MiB (bound {:.0} MiB each)",
        growth as f64 / 1048576.0,
        DATA_LEN as f64 / 1048576.0,
        BOUND as f64 / 1048576.0
    );
    // The stalled queues, the reader's queue, and 24 MiB for the rest: the trigger being
    // received and parsed (the body collected, the frame built: ~4 MiB at once) and the pages
    // the allocator keeps for the next one (measured 22-28 MiB in all over several runs).
    // Without the byte bound the stalled queues alone would hold 2 x 60 MiB.
    let allowance = (STALLED + 1) * BOUND + 24 * 1024 * 1024;
    assert!(
        growth <= allowance,
        "the node grew by {growth} bytes, more than {allowance}"
    );

    // The stalled clients' close frames cannot reach them: they go once the grace is over.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = reader.status().await;
        assert_eq!(status["slow_client_disconnects"], STALLED, "{status}");
        if status["open_connections"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What a stalled client finds when it reads again: publishes up to where it fell behind,
    // then the end of the connection, never more than the bound's worth of frames after it.
    for mut client in stalled {
        let mut publishes = 0;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(5), client.ws.next()).await
        {
            match message {
                Message::Text(_) => publishes += 1,
                Message::Close(frame) => {
                    if let Some(frame) = frame {
                        assert_eq!(u16::from(frame.code), 1013);
                    }
                    break;
                }
                _ => {}
            }
        }
        assert!(
            publishes < TRIGGERS,
            "a stalled client got {publishes} publishes"
        );
    }
}
