//! The backend over https, trusted through --api-ca-file.

mod common;

use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use common::*;
use serde_json::json;

#[tokio::test]
async fn bootstrap_over_https_with_an_extra_ca() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = std::env::temp_dir().join(format!("ht-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
        .await
        .expect("tls");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new().route(
        "/api/bootstrap/",
        get(|headers: HeaderMap| async move {
            let token = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            axum::Json(json!({"allowed_rooms": [{"token": token}]}))
        }),
    );
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, tls)
            .expect("server")
            .serve(app.into_make_service())
            .await
    });

    let mut config = high_templar::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    config.backend.api_url = Some(
        format!("https://localhost:{port}/api/")
            .parse()
            .expect("url"),
    );
    config.backend.api_ca_file = Some(cert.clone());
    let server = start(config).await;
    let mut client = Client::connect_with(server.local_addr, "?token=secret", &[]).await;
    assert_eq!(
        client.recv_json().await,
        json!({"is_authorized": true, "allowed_rooms": [{"token": "Token secret"}]})
    );

    // Without the CA the certificate is not trusted: the backend counts as unavailable.
    let mut untrusting = high_templar::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    untrusting.backend.api_url = Some(
        format!("https://localhost:{port}/api/")
            .parse()
            .expect("url"),
    );
    let server = start(untrusting).await;
    let mut client = Client::connect(server.local_addr).await;
    assert_eq!(client.recv_json().await["error"], "backend-unavailable");
}
