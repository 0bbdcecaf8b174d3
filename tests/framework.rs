//! The library as a framework: a custom backend adapter and hooks, without any HTTP backend.

mod common;

use std::sync::{Arc, Mutex};

use common::{eventually, Client, WAIT};
use high_templar::{Backend, BackendError, Bootstrap, Config, ConnectRequest, Server};
use serde_json::json;

#[derive(Default, Clone)]
struct Recording {
    events: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl Backend for Recording {
    async fn bootstrap(&self, request: &ConnectRequest) -> Result<Bootstrap, BackendError> {
        match request.query_param("user").as_deref() {
            Some("down") => Err(BackendError::ServerError(503)),
            Some(user) => Ok(Bootstrap::Authorized {
                allowed_rooms: vec![json!({"user": user})],
            }),
            None => Ok(Bootstrap::Refused),
        }
    }
    async fn on_connect(&self, r: &ConnectRequest) {
        self.events.lock().expect("lock").push(format!(
            "connect {}",
            r.query_param("user").unwrap_or_default()
        ));
    }
    async fn on_ping(&self, _: &ConnectRequest) {
        self.events.lock().expect("lock").push("ping".into());
    }
    async fn on_disconnect(&self, _: &ConnectRequest) {
        self.events.lock().expect("lock").push("disconnect".into());
    }
}

#[tokio::test]
async fn a_custom_backend_decides_and_hears_hooks() {
    let backend = Recording::default();
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    let server = Server::new(config)
        .backend(backend.clone())
        .start()
        .await
        .expect("start");

    let mut alice = Client::connect_with(server.local_addr, "?user=alice", &[]).await;
    assert_eq!(
        alice.recv_json().await,
        json!({"is_authorized": true, "allowed_rooms": [{"user": "alice"}]})
    );
    alice.subscribe(json!({"user": "alice"}), "me").await;
    alice.send("ping").await;
    assert_eq!(alice.recv_text().await, "pong");
    assert_eq!(
        server
            .publish(br#"{"rooms":[{"user":"alice"}],"data":5}"#)
            .expect("valid"),
        1
    );
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "publish", "data": 5, "requestId": "me"})
    );
    alice.ws.close(None).await.expect("close");

    let mut anonymous = Client::connect(server.local_addr).await;
    assert_eq!(anonymous.recv_json().await, json!({"is_authorized": false}));
    let mut unlucky = Client::connect_with(server.local_addr, "?user=down", &[]).await;
    assert_eq!(unlucky.recv_json().await["error"], "backend-unavailable");
    assert_eq!(unlucky.closed().await.code, 1013);

    let events = eventually(WAIT, || async {
        let events = backend.events.lock().expect("lock").clone();
        match events.len() {
            3 => Ok(events),
            _ => Err(format!("hooks: {events:?}")),
        }
    })
    .await;
    assert_eq!(events, vec!["connect alice", "ping", "disconnect"]);
}
