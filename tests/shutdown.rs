//! Graceful shutdown of the real binary: SIGTERM (or SIGINT) stops accepting, closes every
//! websocket with 1001 (going away) so clients reconnect elsewhere, and exits 0.
#![cfg(unix)]

mod common;

use std::process::ExitStatus;
use std::time::Duration;

use common::process::{self, free_port, spawn_listening};
use common::*;
use serde_json::json;
use tokio::process::Child;
use tokio_tungstenite::tungstenite;

/// How long the process may take to exit after the signal. The binary gives open connections
/// a 10 s grace period; 5 s more covers a slow start of the shutdown on a busy machine. A bound
/// on waiting, not a performance assertion.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// Clients that answer the server's close frame, as browsers do.
const CLIENTS: usize = 3;

fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = child.id().expect("the binary is running");
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) only reads its two integer arguments.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "kill: {}", std::io::Error::last_os_error());
}

async fn wait_for_exit(child: &mut Child) -> ExitStatus {
    tokio::time::timeout(EXIT_WITHIN, child.wait())
        .await
        .expect("the binary exits after the signal")
        .expect("wait for the binary")
}

/// The whole scenario for one signal.
async fn signal_closes_with_1001_and_exits_0(signal: libc::c_int) {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"chat": "*"}]}))).await;
    let port = free_port();
    let mut child = spawn_listening(process::command(port, &backend, &[]), port).await;
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut client = Client::authorized(addr).await;
        client.subscribe(json!({"chat": i}), "sub").await;
        clients.push(client);
    }
    // One more client that will not answer the close frame: the server then waits a moment
    // for it, so the refusal below is checked against a live process that is still draining,
    // not merely a dead one.
    let mut lingering = Client::authorized(addr).await;

    send_signal(&child, signal);
    for client in &mut clients {
        assert_eq!(client.closed().await.code, 1001);
    }

    // The listener is closed: the TCP connect itself is refused.
    let late = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/")).await;
    match late {
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!(
            "expected a refused connection after the signal, got {:?} (process: {:?})",
            other.map(|(_, response)| response.status()),
            child.try_wait()
        ),
    }

    // The lingering client's close frame was sent too, and waits in its socket buffer.
    assert_eq!(lingering.closed().await.code, 1001);
    let status = wait_for_exit(&mut child).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_0() {
    signal_closes_with_1001_and_exits_0(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_closes_every_socket_with_1001_and_exits_0() {
    signal_closes_with_1001_and_exits_0(libc::SIGINT).await;
}
