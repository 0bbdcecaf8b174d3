//! Using high-templar as a framework: your own binary, your own backend adapter and hooks
//! (high-templar 3.1's `create_app(settings, backend_adapter=...)` with `on_connect` etc.).
//!
//! Here users authenticate with a `?token=` looked up in a fixed table instead of an HTTP call,
//! and connects/disconnects are logged.
//!
//! Run: `cargo run --example custom_backend`, then connect to
//! `ws://127.0.0.1:8080/ws/?token=alice` and publish with
//! `curl -H 'Authorization: Bearer secret' -d '{"rooms":[{"user":"alice"}],"data":"hi"}' http://127.0.0.1:8080/trigger/`.

use high_templar::{Backend, BackendError, Bootstrap, Config, ConnectRequest, Server};
use serde_json::json;

struct TokenTable;

#[async_trait::async_trait]
impl Backend for TokenTable {
    async fn bootstrap(&self, request: &ConnectRequest) -> Result<Bootstrap, BackendError> {
        Ok(match request.query_param("token").as_deref() {
            Some(user @ ("alice" | "bob")) => Bootstrap::Authorized {
                allowed_rooms: vec![
                    json!({"user": user}),
                    json!({"target": "news", "topic": "*"}),
                ],
            },
            _ => Bootstrap::Refused,
        })
    }

    async fn on_connect(&self, request: &ConnectRequest) {
        tracing::info!(conn = %request.id, user = ?request.query_param("token"), "user online");
    }

    async fn on_disconnect(&self, request: &ConnectRequest) {
        tracing::info!(conn = %request.id, "user offline");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let config = Config {
        trigger_token: Some("secret".into()),
        ..Default::default()
    };
    let server = Server::new(config).backend(TokenTable).start().await?;
    println!("listening on ws://{}/ws/?token=alice", server.local_addr);
    tokio::signal::ctrl_c().await?;
    server.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}
