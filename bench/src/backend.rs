//! The fake backend: answers `bootstrap/` at once with a wildcard room (and, with
//! `--allowed-rooms`, a large list, shared or one per connection), so connection setup measures
//! the server, not an API. It runs on its own thread and single-threaded runtime, so
//! bootstrap calls never wait behind the load generator's clients.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;

/// Every benchmark room is `{"target":"bench","room":<name>}`; this allows them all.
pub const BOOTSTRAP_BODY: &str = r#"{"allowed_rooms":[{"target":"bench","room":"*"}]}"#;

/// What `bootstrap/` allows each connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lists {
    /// Rooms `{"target":"message","customer":"<i>"}` besides the benchmark wildcard (a large
    /// allowed list: 5,000 of them make a ~220 KB answer).
    pub rooms: usize,
    /// Every answer its own list (each connection a user of its own) instead of one shared by
    /// all connections (users of one role).
    pub distinct: bool,
}

impl Lists {
    /// The answer to bootstrap number `n`.
    fn body(&self, n: u64) -> String {
        if self.rooms == 0 {
            return BOOTSTRAP_BODY.to_string();
        }
        let mut body = String::with_capacity(48 * self.rooms + 100);
        body.push_str(r#"{"allowed_rooms":[{"target":"bench","room":"*"}"#);
        for i in 0..self.rooms {
            let _ = match self.distinct {
                true => write!(body, r#",{{"target":"message","customer":"{n}-{i}"}}"#),
                false => write!(body, r#",{{"target":"message","customer":"{i}"}}"#),
            };
        }
        body.push_str("]}");
        body
    }
}

/// Starts the backend on `listen` (port 0 for any), answering with `lists`; returns its
/// address. It lives until the process exits.
pub fn start(listen: SocketAddr, lists: Lists) -> std::io::Result<SocketAddr> {
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
                let shared: Arc<str> = lists.body(0).into();
                let answered = Arc::new(AtomicU64::new(0));
                let router = Router::new().route(
                    "/api/bootstrap/",
                    get(move || {
                        let n = answered.fetch_add(1, Ordering::Relaxed);
                        let body = match lists.distinct {
                            true => lists.body(n),
                            false => shared.to_string(),
                        };
                        async move {
                            (
                                [(axum::http::header::CONTENT_TYPE, "application/json")],
                                body,
                            )
                        }
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
