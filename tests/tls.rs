//! TLS termination: a websocket over wss:// with a certificate the client trusts, and the
//! request-head deadline over TLS.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use high_templar::Handle;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::{rustls, TlsConnector};
use tokio_tungstenite::tungstenite::Message;

/// A server with TLS on a fresh self-signed certificate for `localhost`, and a connector that
/// trusts it.
async fn tls_server(tweak: impl FnOnce(&mut high_templar::Config)) -> (Handle, TlsConnector) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = std::env::temp_dir().join(format!("ht-tls-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).expect("cert file");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("key file");

    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"a": 1}]}))).await;
    let mut config = config_for(&backend);
    config.policy.tls = Some(high_templar::config::policy::TlsFiles {
        cert: cert_path,
        key: key_path,
    });
    tweak(&mut config);
    let server = start(config).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certified.cert.der().clone())
        .expect("trust the test cert");
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    (server, TlsConnector::from(Arc::new(client_config)))
}

fn unique() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn tls_connect(
    server: &Handle,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server.local_addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test]
async fn websockets_work_over_tls() {
    let (server, connector) = tls_server(|_| {}).await;
    let tls = tls_connect(&server, &connector).await;
    let url = format!("wss://localhost:{}/ws/", server.local_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("websocket over TLS");
    let first = ws.next().await.expect("frame").expect("valid");
    assert_eq!(
        first,
        Message::Text(
            json!({"is_authorized": true, "allowed_rooms": [{"a": 1}]})
                .to_string()
                .into()
        )
    );

    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::get(format!("http://{}/healthz", server.local_addr)).await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
}

/// The server's end of a wss:// websocket has TCP_NODELAY, as a ws:// one has: without it a
/// small frame written while the previous one is unacknowledged waits for the client's delayed
/// ACK (up to 40 ms on loopback). The TLS path once went through an acceptor that did not set it.
#[tokio::test]
async fn the_server_end_of_a_tls_websocket_has_tcp_nodelay() {
    let (server, connector) = tls_server(|_| {}).await;
    let tls = tls_connect(&server, &connector).await;
    let client = tls.get_ref().0.local_addr().expect("client address");
    let url = format!("wss://localhost:{}/ws/", server.local_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("websocket over TLS");
    ws.next().await.expect("frame").expect("valid");
    let nodelay = server_end_nodelay(server.local_addr.port(), client.port());
    assert_eq!(nodelay, Some(true), "TCP_NODELAY of the server's end");

    // The same for a plain websocket on a server without TLS.
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let plain = start(config_for(&backend)).await;
    let tcp = TcpStream::connect(plain.local_addr).await.expect("tcp");
    let client = tcp.local_addr().expect("client address");
    let url = format!("ws://127.0.0.1:{}/ws/", plain.local_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("websocket");
    ws.next().await.expect("frame").expect("valid");
    let nodelay = server_end_nodelay(plain.local_addr.port(), client.port());
    assert_eq!(nodelay, Some(true), "TCP_NODELAY of the server's end");
}

/// TCP_NODELAY of this process's socket bound to `server_port` and connected to `client_port`
/// on 127.0.0.1 (the server runs in the test's process); `None` when there is none.
fn server_end_nodelay(server_port: u16, client_port: u16) -> Option<bool> {
    fn port(fd: i32, peer: bool) -> Option<u16> {
        // SAFETY: a zeroed sockaddr_in is valid, and the length passed is its size.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let ptr = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
        let got = match peer {
            true => unsafe { libc::getpeername(fd, ptr, &mut len) },
            false => unsafe { libc::getsockname(fd, ptr, &mut len) },
        };
        (got == 0 && i32::from(addr.sin_family) == libc::AF_INET)
            .then(|| u16::from_be(addr.sin_port))
    }
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if port(fd, false) != Some(server_port) || port(fd, true) != Some(client_port) {
            continue;
        }
        let mut flag: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `flag` is a c_int and `len` its size, as TCP_NODELAY reads.
        let got = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &mut flag as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        return (got == 0).then_some(flag != 0);
    }
    None
}

/// The request-head deadline holds over TLS: from the accept, handshake included.
#[tokio::test]
async fn over_tls_slow_handshakes_and_trickled_heads_are_closed_at_the_deadline() {
    const DEADLINE: Duration = Duration::from_secs(1);
    let (server, connector) = tls_server(|c| c.policy.request_head_timeout = DEADLINE).await;

    // A socket that never starts its handshake.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.local_addr).await.expect("tcp");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(3 * DEADLINE, silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    assert!(started.elapsed() >= DEADLINE);

    // A handshake, then a head trickled a byte at a time.
    let started = Instant::now();
    let mut tls = tls_connect(&server, &connector).await;
    tls.write_all(b"GET /ws/ HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        .await
        .expect("request line");
    let closed = loop {
        assert!(
            started.elapsed() < 5 * DEADLINE,
            "trickled for {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tls.write_all(b"a").await.is_err() {
            break started.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(1), tls.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => panic!("an answer to a head never finished"),
            Err(_) => {}
        }
    };
    assert!(
        closed >= DEADLINE && closed < 3 * DEADLINE,
        "closed after {closed:?}"
    );
    assert_eq!(server.status()["connections_refused"]["head_timeout"], 2);
}

#[tokio::test]
async fn unreadable_tls_files_fail_the_start_naming_them() {
    let backend = TestBackend::start(Reply::ok(json!({}))).await;
    let mut config = config_for(&backend);
    config.policy.tls = Some(high_templar::config::policy::TlsFiles {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
    });
    let error = high_templar::Server::new(config)
        .start()
        .await
        .err()
        .expect("start fails");
    assert!(
        error.to_string().contains("/nonexistent/cert.pem"),
        "{error}"
    );
}
