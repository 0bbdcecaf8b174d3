//! TLS termination: a websocket over wss:// with a certificate the client trusts.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websockets_work_over_tls() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = std::env::temp_dir().join(format!("ht-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).expect("cert file");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("key file");

    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": [{"a": 1}]}))).await;
    let mut config = config_for(&backend);
    config.policy.tls = Some(high_templar::policy::TlsFiles {
        cert: cert_path,
        key: key_path,
    });
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
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(server.local_addr)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
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

#[tokio::test]
async fn unreadable_tls_files_fail_the_start_naming_them() {
    let backend = TestBackend::start(Reply::ok(json!({}))).await;
    let mut config = config_for(&backend);
    config.policy.tls = Some(high_templar::policy::TlsFiles {
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
