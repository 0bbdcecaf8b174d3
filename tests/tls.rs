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
