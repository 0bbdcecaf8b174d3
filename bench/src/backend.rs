//! The fake backend: answers `bootstrap/` at once with a wildcard room, so connection setup
//! measures the server, not an API. It runs on its own thread and single-threaded runtime, so
//! bootstrap calls never wait behind the load generator's clients.

use std::net::SocketAddr;
use std::sync::mpsc;

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;

/// Every benchmark room is `{"target":"bench","room":<name>}`; this allows them all.
pub const BOOTSTRAP_BODY: &str = r#"{"allowed_rooms":[{"target":"bench","room":"*"}]}"#;

/// Starts the backend on `listen` (port 0 for any); returns its address. It lives until the
/// process exits.
pub fn start(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("fake-backend".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = tx.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match bind(listen) {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = tx.send(Err(error));
                        return;
                    }
                };
                let _ = tx.send(listener.local_addr());
                let listener = listener.tap_io(|stream| {
                    let _ = stream.set_nodelay(true);
                });
                let router = Router::new().route(
                    "/api/bootstrap/",
                    get(|| async {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            BOOTSTRAP_BODY,
                        )
                    }),
                );
                if let Err(error) = axum::serve(listener, router).await {
                    eprintln!("ht-bench: fake backend failed: {error}");
                }
            });
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("fake backend thread died"))?
}

/// The server opens up to one backend connection per websocket being opened: a backlog of 128
/// (tokio's default) overflows at a few hundred at once.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
