//! A reconnect storm: thousands of clients connect at once (as after a deploy) while triggers
//! flow. Nothing crashes, every client ends authorised or cleanly refused (backend-unavailable,
//! close 1013), and no trigger published after a client's subscribe succeeded is lost.
//!
//! Real sockets throughout: the in-process server, the real test backend, one real websocket
//! per client, triggers POSTed to `/trigger/`.
//!
//! Ignored in a plain `cargo test`: it holds ~10,000 sockets (a hard open-files limit of at
//! least 14,096) and both cores of the test VM while it runs (~8 s there). `scripts/test.sh` (and so CI)
//! runs it as a step of its own: `cargo test --locked --test storm -- --ignored`.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use high_templar::Handle;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Clients connecting at once: the scale of one node's users reconnecting after a deploy.
const CLIENTS: usize = 5_000;

/// Pause between two triggers. Every trigger reaches every subscribed client, so the work is
/// CLIENTS × (storm seconds / interval) frames; 5 ms keeps a debug run within seconds.
const TRIGGER_INTERVAL: Duration = Duration::from_millis(5);

/// Triggers published once every client is subscribed or refused, so that each subscribed
/// client's sequence is checked up to a common end.
const TRIGGERS_AFTER_STORM: u64 = 20;

/// File descriptors the test needs at least: a socket at each end of every websocket, plus
/// room for the bootstrap calls in flight (two sockets each: the server's client and the test
/// backend) and the listeners.
const FDS_NEEDED: u64 = 2 * CLIENTS as u64 + 4096;

/// A guard against a hang, not a performance bound: one step of one client (connect, one
/// frame) in a storm may wait behind thousands of others and a dropped-SYN retransmit.
const STEP_WAIT: Duration = Duration::from_secs(60);

/// Tries per client when the kernel resets a connection before the handshake (see `connect`).
const CONNECT_ATTEMPTS: usize = 3;

/// Pause before such a retry, as a browser's reconnect backoff would.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// The client side's websocket buffers: tungstenite's 128 KiB default read buffer times 5,000
/// clients would be 640 MiB; the frames here are under 100 bytes.
const CLIENT_BUFFER: usize = 4 * 1024;

fn room() -> Value {
    json!({"storm": "all"})
}

/// What the publisher and the clients share.
#[derive(Default)]
struct Progress {
    /// Triggers whose POST has started: the next trigger's sequence number.
    started: AtomicU64,
    /// Clients that are subscribed, refused, or failed: the storm is over when all are.
    settled: AtomicUsize,
    /// Connections reset before the server saw them, and tried again.
    reconnects: AtomicUsize,
}

/// Marks its client settled when dropped, so a failing client cannot keep the publisher going.
struct Settle<'a>(Option<&'a Progress>);

impl Settle<'_> {
    fn now(&mut self) {
        if let Some(progress) = self.0.take() {
            progress.settled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.now();
    }
}

/// POSTs numbered triggers until every client settled, then `TRIGGERS_AFTER_STORM` more, the
/// last one marked. Returns the last sequence number.
async fn publish(server: std::net::SocketAddr, progress: Arc<Progress>) -> u64 {
    let mut after_storm = 0;
    loop {
        if progress.settled.load(Ordering::SeqCst) == CLIENTS {
            after_storm += 1;
        }
        let last = after_storm == TRIGGERS_AFTER_STORM;
        // Counted before the POST starts: a client that read its subscribe answer before this
        // point must receive this trigger.
        let seq = progress.started.fetch_add(1, Ordering::SeqCst);
        let body = trigger(json!([room()]), json!({"seq": seq, "last": last}));
        let (status, answer) = post_trigger(server, &body).await;
        assert_eq!(status, 200, "trigger {seq}: {answer}");
        if last {
            return seq;
        }
        tokio::time::sleep(TRIGGER_INTERVAL).await;
    }
}

/// How one client's storm ended.
#[derive(Debug)]
enum Outcome {
    /// Authorised, subscribed, and received a gap-free run of triggers up to the last one.
    Served,
    /// Refused with the backend-unavailable answer and close 1013.
    Refused,
}

#[derive(Deserialize)]
struct Publish {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "requestId")]
    request_id: String,
    data: SeqData,
}

#[derive(Deserialize)]
struct SeqData {
    seq: u64,
    last: bool,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn next_text(ws: &mut Ws, what: &str) -> String {
    loop {
        let message = tokio::time::timeout(STEP_WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} in time"))
            .unwrap_or_else(|| panic!("connection ended before {what}"))
            .unwrap_or_else(|e| panic!("connection failed before {what}: {e}"));
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected {what}, got {other:?}"),
        }
    }
}

/// The triggers one client has received: a gap-free run `first..=previous`.
#[derive(Default)]
struct Run {
    first: Option<u64>,
    previous: Option<u64>,
}

impl Run {
    /// Checks one publish frame against the run so far; true once it is the last trigger.
    fn push(&mut self, text: &str) -> bool {
        let frame: Publish = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("not a publish frame ({e}): {text}"));
        assert_eq!(frame.kind, "publish", "{text}");
        assert_eq!(frame.request_id, "storm", "{text}");
        if let Some(previous) = self.previous {
            assert_eq!(frame.data.seq, previous + 1, "gap or reordering: {text}");
        }
        self.first.get_or_insert(frame.data.seq);
        self.previous = Some(frame.data.seq);
        frame.data.last
    }
}

/// Opens the websocket like a browser's reconnect logic: a connection the kernel reset before
/// the server saw the request (its accept queue full) is tried again, and counted.
async fn connect(server: std::net::SocketAddr, progress: &Progress) -> Ws {
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_BUFFER)
        .write_buffer_size(0);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let connect = tokio_tungstenite::connect_async_with_config(
            format!("ws://{server}/ws/"),
            Some(config),
            false,
        );
        match tokio::time::timeout(STEP_WAIT, connect)
            .await
            .expect("handshake in time")
        {
            Ok((ws, _)) => return ws,
            Err(tungstenite::Error::Io(e)) if attempts < CONNECT_ATTEMPTS => {
                progress.reconnects.fetch_add(1, Ordering::SeqCst);
                eprintln!("storm: reconnecting after {e}");
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
            Err(e) => panic!("websocket handshake, attempt {attempts}: {e}"),
        }
    }
}

async fn storm_client(server: std::net::SocketAddr, progress: Arc<Progress>) -> Outcome {
    let mut settle = Settle(Some(&progress));
    let mut ws = connect(server, &progress).await;
    let first: Value = serde_json::from_str(&next_text(&mut ws, "first frame").await)
        .expect("first frame is JSON");
    if first == json!({"is_authorized": false, "error": "backend-unavailable"}) {
        settle.now();
        let close = tokio::time::timeout(STEP_WAIT, ws.next())
            .await
            .expect("close in time");
        match close {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1013),
            other => panic!("a refusal must close with 1013, got {other:?}"),
        }
        return Outcome::Refused;
    }
    assert_eq!(first["is_authorized"], json!(true), "first frame: {first}");

    let subscribe = json!({"type": "subscribe", "room": room(), "requestId": "storm"});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .expect("send subscribe");
    // Triggers published between the hub registering us and our answer may come first.
    let mut run = Run::default();
    let mut done = false;
    loop {
        let text = next_text(&mut ws, "subscribe answer").await;
        if text.contains(r#""type":"publish""#) {
            done = run.push(&text);
            continue;
        }
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("JSON"),
            json!({"code": "success"})
        );
        break;
    }
    let must_see = progress.started.load(Ordering::SeqCst);
    settle.now();

    while !done {
        done = run.push(&next_text(&mut ws, "a trigger").await);
    }
    // The run is gap-free up to the last trigger; it must also start early enough.
    let first = run.first.expect("the last trigger was seen");
    assert!(
        first <= must_see,
        "triggers {must_see}..{first} were published after the subscribe answer but never arrived"
    );
    ws.close(None).await.expect("send close");
    while let Some(Ok(_)) = tokio::time::timeout(STEP_WAIT, ws.next())
        .await
        .expect("the server answers the close")
    {}
    Outcome::Served
}

/// Polls until the server shows no connection and no room (closing is asynchronous).
async fn wait_until_empty(server: &Handle) -> Value {
    eventually(STEP_WAIT, || async {
        let status = server.status();
        match status["open_connections"] == 0 && status["num_rooms"] == 0 {
            true => Ok(status),
            false => Err(format!("the server never emptied: {status}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "5,000 clients at once: run by scripts/test.sh as `cargo test --test storm -- --ignored`"]
async fn reconnect_storm_serves_or_cleanly_refuses_everyone_and_loses_no_trigger() {
    raise_fd_limit(FDS_NEEDED);
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"storm": "*"}]}))).await;
    let mut config = config_for(&backend);
    // Every client comes from 127.0.0.1: the per-IP limit would refuse the storm before the
    // bootstrap, which is not what is tested here.
    config.policy.max_connections_per_ip = CLIENTS;
    let max_bootstraps = config.policy.max_concurrent_bootstraps;
    let server = start(config).await;
    let addr = server.local_addr;
    let progress = Arc::new(Progress::default());

    let publisher = tokio::spawn(publish(addr, progress.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(storm_client(addr, progress.clone())))
        .collect();

    let (mut served, mut refused) = (0, 0);
    let mut failures = Vec::new();
    for client in clients {
        match client.await {
            Ok(Outcome::Served) => served += 1,
            Ok(Outcome::Refused) => refused += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    let last = publisher.await.expect("publisher");
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(served + refused, CLIENTS);
    assert!(served > 0, "every client was refused");

    let status = wait_until_empty(&server).await;
    assert!(
        backend.max_in_flight() <= max_bootstraps,
        "{} bootstrap calls in flight at once, above the limit of {max_bootstraps}",
        backend.max_in_flight()
    );
    assert_eq!(status["num_subscriptions"], 0, "{status}");
    assert_eq!(status["triggers_received"]["http"], last + 1, "{status}");
    // The server's own counts agree with what the clients saw.
    let refused_by_server = &status["connections_refused"]["backend_unavailable"];
    assert_eq!(refused_by_server, refused, "{status}");
    assert_eq!(status["ws_messages_received"], served, "{status}");
    assert_eq!(status["slow_client_disconnects"], 0, "{status}");
    assert_eq!(status["ws_messages_send_error"], 0, "{status}");
    println!(
        "storm: {served} served, {refused} refused, {} reconnects, {} triggers",
        progress.reconnects.load(Ordering::SeqCst),
        last + 1
    );
}
