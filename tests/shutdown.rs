//! Graceful shutdown of the real binary: SIGTERM (or SIGINT) stops accepting, closes every
//! websocket with 1001 (going away) so clients reconnect elsewhere, and exits 0.
#![cfg(unix)]

mod common;

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite;

/// How long the process may take to exit after the signal. The binary gives open connections
/// a 10 s grace period; 5 s more covers a slow start of the shutdown on a busy machine. A bound
/// on waiting, not a performance assertion.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// Clients that answer the server's close frame, as browsers do.
const CLIENTS: usize = 3;

/// A free loopback port: bind port 0, read it, release it for the binary.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Starts the binary on `port` in front of `backend`; it is killed if the test fails.
fn spawn_binary(port: u16, backend: &TestBackend) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_high-templar"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--api-url", &backend.api_url()])
        .args(["--trigger-token", TOKEN])
        // Only warnings: the info log of every connection would clutter the test output.
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // Settings from the developer's environment must not change what is tested.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HT_") {
            command.env_remove(name);
        }
    }
    command.spawn().expect("start the binary")
}

/// Waits until the binary accepts connections.
async fn wait_until_listening(child: &mut Child, port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().expect("child state") {
            panic!("the binary exited before listening: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the binary never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    let mut child = spawn_binary(port, &backend);
    wait_until_listening(&mut child, port).await;
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
