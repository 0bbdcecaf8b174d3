//! The real binary under the open-files limits a service gets in practice: it raises its soft
//! limit to the hard one and sizes `max_connections` to fit, says so at start, and when it runs
//! out of descriptors anyway, new clients are refused at once while the open ones go on.
#![cfg(unix)]

mod common;

use common::process::{self, free_port, limit_open_files, spawn_listening, Log};
use common::*;
use futures_util::{stream, StreamExt};
use serde_json::json;
use tokio::process::Child;

/// The soft limit of most distributions, and of a systemd service without `LimitNOFILE=`.
const USUAL_SOFT_LIMIT: u64 = 1024;

/// Clients on the node started with that soft limit: ~3 x what it would hold without raising.
const CLIENTS: usize = 3_000;

/// Handshakes in flight at once.
const CONCURRENCY: usize = 100;

/// A hard limit small enough to run out of in a test.
const SMALL_HARD_LIMIT: u64 = 256;

/// What the node keeps for itself at that limit (`server::capacity`): the fixed reserve, one
/// backend socket per bootstrap in flight (64 by default), 16 pending sockets for its one
/// listener.
const ROOM_AT_SMALL_LIMIT: usize = 256 - 64 - 64 - 16;

/// Distinct forwarded addresses, as nginx would send: the per-IP limit is not what is tested.
fn client_headers(i: usize) -> String {
    format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
}

/// POSTs a trigger; its status, or `None` when the connection was refused before answering.
async fn post_trigger_attempt(addr: std::net::SocketAddr, body: &str) -> Option<u16> {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/trigger/"))
        .bearer_auth(TOKEN)
        .body(body.to_string())
        .send()
        .await;
    response.ok().map(|r| r.status().as_u16())
}

/// The binary with `soft`/`hard` open-files limits and `args`, logging at INFO.
async fn start_binary(
    backend: &TestBackend,
    soft: u64,
    hard: Option<u64>,
    args: &[&str],
) -> (Child, Log, std::net::SocketAddr) {
    let port = free_port();
    let mut command = process::command(port, backend, args);
    command.env("RUST_LOG", "info");
    Log::capture(&mut command);
    limit_open_files(&mut command, soft, hard);
    let mut child = spawn_listening(command, port).await;
    let log = Log::collect(&mut child);
    (
        child,
        log,
        format!("127.0.0.1:{port}").parse().expect("addr"),
    )
}

/// How one client's attempt ended, once its first frame (if any) is read.
#[derive(Debug, PartialEq)]
enum Outcome {
    Authorized,
    /// HTTP 503 before the upgrade (node full, or out of descriptors).
    Unavailable,
    /// Upgraded, then told the backend is unavailable (its call found no descriptor).
    BackendUnavailable,
    /// Reset or closed before an answer.
    Closed,
}

async fn outcome(attempt: Attempt) -> (Outcome, Option<Client>) {
    match attempt {
        Attempt::Open(mut client) => {
            let first = client.recv_json().await;
            if first["is_authorized"] == true {
                (Outcome::Authorized, Some(*client))
            } else {
                assert_eq!(first["error"], "backend-unavailable", "{first}");
                (Outcome::BackendUnavailable, None)
            }
        }
        Attempt::Refused(503) => (Outcome::Unavailable, None),
        Attempt::Refused(other) => panic!("refused with HTTP {other}"),
        Attempt::Failed(e) if e.contains("in time") => panic!("a client was left waiting: {e}"),
        Attempt::Failed(_) => (Outcome::Closed, None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_with_a_soft_limit_of_1024_the_binary_serves_3000_clients() {
    raise_fd_limit(2 * CLIENTS as u64 + 1024);
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"room": "*"}]}))).await;
    let (_child, log, addr) = start_binary(&backend, USUAL_SOFT_LIMIT, None, &[]).await;
    let capacity = log.wait_for("capacity:", WAIT).await;
    assert!(capacity.contains("raised_from=1024"), "{capacity}");

    let mut clients: Vec<Client> = stream::iter(0..CLIENTS)
        .map(|i| async move {
            let ip = client_headers(i);
            match outcome(Client::attempt(addr, None, &[("X-Real-IP", &ip)]).await).await {
                (Outcome::Authorized, Some(client)) => client,
                (other, _) => panic!("client {i}: {other:?}"),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    // Every one of them is served, not only connected.
    stream::iter(clients.iter_mut())
        .for_each_concurrent(CONCURRENCY, |client| client.ping())
        .await;
    let status = clients[0].status().await;
    assert_eq!(status["open_connections"], CLIENTS, "{status}");
}

#[tokio::test]
async fn a_small_hard_limit_sizes_max_connections_and_says_how_to_raise_it() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let (_child, log, addr) =
        start_binary(&backend, SMALL_HARD_LIMIT, Some(SMALL_HARD_LIMIT), &[]).await;
    let warning = log.wait_for("LimitNOFILE=", WAIT).await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("room for only {ROOM_AT_SMALL_LIMIT} websockets")),
        "{warning}"
    );

    let extra = 40;
    let outcomes: Vec<(Outcome, Option<Client>)> = stream::iter(0..ROOM_AT_SMALL_LIMIT + extra)
        .map(|i| async move {
            let ip = client_headers(i);
            outcome(Client::attempt(addr, None, &[("X-Real-IP", &ip)]).await).await
        })
        .buffer_unordered(20)
        .collect()
        .await;
    let count = |o: Outcome| outcomes.iter().filter(|(x, _)| *x == o).count();
    // A clean 503 past the limit; every client within it is served.
    assert_eq!(count(Outcome::Authorized), ROOM_AT_SMALL_LIMIT);
    assert_eq!(count(Outcome::Unavailable), extra);
}

#[tokio::test]
async fn out_of_descriptors_new_clients_are_refused_at_once_and_open_ones_keep_working() {
    raise_fd_limit(4096);
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"room": "*"}]}))).await;
    // max_connections above what the limit holds: the node runs out of descriptors first.
    let (_child, log, addr) = start_binary(
        &backend,
        SMALL_HARD_LIMIT,
        Some(SMALL_HARD_LIMIT),
        &["--max-connections", "1000"],
    )
    .await;
    log.wait_for("max_connections is 1000, but", WAIT).await;
    let mut early = Client::authorized(addr).await;
    early.subscribe(json!({"room": "early"}), "e").await;

    let clients = 600;
    let started = tokio::time::Instant::now();
    let outcomes: Vec<(Outcome, Option<Client>)> = stream::iter(0..clients)
        .map(|i| async move {
            let ip = client_headers(i);
            outcome(Client::attempt(addr, None, &[("X-Real-IP", &ip)]).await).await
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let count = |o: Outcome| outcomes.iter().filter(|(x, _)| *x == o).count();
    let authorized = count(Outcome::Authorized);
    let refused = clients - authorized;
    println!(
        "{clients} clients in {elapsed:?}: {authorized} authorised, {} HTTP 503, {} \
         backend-unavailable, {} closed",
        count(Outcome::Unavailable),
        count(Outcome::BackendUnavailable),
        count(Outcome::Closed)
    );
    assert!(authorized >= 50, "only {authorized} authorised");
    assert!(refused > 0, "the node never ran out");
    log.wait_for("out of file descriptors", WAIT).await;

    // The connections already open are served while the node is out of descriptors (a new
    // HTTP request, /trigger/ included, is refused like any newcomer)...
    early.ping().await;
    // ...and once descriptors are freed, triggers reach them and newcomers get in again (after
    // the backend's circuit breaker, which calls that failed for want of descriptors may have
    // opened, closes again).
    drop(outcomes);
    let body = trigger(json!([{"room": "early"}]), json!("still here"));
    eventually(WAIT, || async {
        match post_trigger_attempt(addr, &body).await {
            Some(200) => Ok(()),
            other => Err(format!("/trigger/ answered {other:?}")),
        }
    })
    .await;
    assert_eq!(early.recv_json().await["data"], "still here");
    eventually(2 * WAIT, || async {
        match outcome(Client::attempt(addr, None, &[]).await).await {
            (Outcome::Authorized, _) => Ok(()),
            (other, _) => Err(format!("still refused: {other:?}")),
        }
    })
    .await;
}
