//! A websocket echo server made of high-templar's own websocket layer, for the Autobahn
//! testsuite's fuzzing client (`scripts/ci-autobahn.sh`).
//!
//! The product's `/ws/` cannot be fuzzed as it is: it greets with `{"is_authorized":...}`,
//! needs a backend, takes JSON text only and closes binary messages with 1003. So this
//! compiles the product's wire format (`src/ws.rs`) and its socket (`src/connection/socket.rs`:
//! frames, fragments, control frames, the closing handshake) — the same files, not copies —
//! and echoes each whole message where the server would hand it to the session. Only the
//! HTTP handshake here is its own (the accept key and the key check are `ws.rs`'s), and it
//! declines every extension, permessage-deflate included.
//!
//! An example, not a binary of the package: it is never installed with the product.
//!
//! ```sh
//! cargo run --example autobahn_echo -- 127.0.0.1:0   # prints "listening on ADDR"
//! ```

#[path = "../src/ws.rs"]
mod ws;

#[allow(
    dead_code,
    reason = "the greeting the server queues first (`queue_text`) is not an echo's"
)]
#[path = "../src/connection/socket.rs"]
mod socket;

#[path = "../src/connection/budget.rs"]
mod budget;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

// What `socket.rs` and `budget.rs` reach as `crate::outbox`, `crate::config::policy` and
// `crate::stats` in the library.
use high_templar::{config, outbox, stats};
use outbox::{Outbox, QueueBound};
use socket::{Incoming, ReadEnd, Socket};
use stats::Stats;

/// The largest message echoed: Autobahn's largest is 16 MiB (cases 9.1.6 and 9.2.6).
const MAX_MESSAGE: usize = 16 << 20;

/// Frames queued per connection: more than one read can bring (4 KiB of 6-byte frames), so
/// an echo is never dropped for want of room; the loop writes the queue out before reading
/// again, so it never holds more.
const OUTGOING_QUEUE: usize = 4096;

/// As the server's: how long a close of ours waits for the client's.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(addr) => addr.parse().map_err(std::io::Error::other)?,
        None => "127.0.0.1:9001".parse().expect("a socket address"),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // The script reads the port from this line (it binds port 0).
    println!("listening on {}", listener.local_addr()?);
    let stats = Arc::new(Stats::new());
    let app = axum::Router::new().fallback(move |request| upgrade(request, stats.clone()));
    axum::serve(listener, app).await
}

/// Any path: answers the websocket handshake and echoes on the upgraded connection.
async fn upgrade(mut request: Request, stats: Arc<Stats>) -> Response {
    let accept = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| ws::is_valid_key(key.as_bytes()))
        .map(|key| ws::accept_key(key.as_bytes()));
    let (Some(accept), Some(on_upgrade)) = (accept, request.extensions_mut().remove::<OnUpgrade>())
    else {
        return (StatusCode::BAD_REQUEST, "expected a websocket handshake").into_response();
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            // No message budget: the fuzzing client sends as fast as it can.
            let unlimited = config::policy::Policy {
                messages_per_second: f64::MAX,
                message_burst: u32::MAX,
                ..config::policy::Policy::default()
            };
            let budget = budget::Budget::new(&unlimited);
            echo(
                Socket::new(TokioIo::new(upgraded), MAX_MESSAGE, budget),
                stats,
            )
            .await;
        }
    });
    let accept = HeaderValue::from_str(&accept).expect("base64 is a header value");
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
}

/// The server's connection loop (`connection::serve` and `connection::close`) with an echo
/// in place of the session.
async fn echo(mut socket: Socket, stats: Arc<Stats>) {
    let outbox = Outbox::new(QueueBound::frames(OUTGOING_QUEUE), stats.clone());
    let end = poll_fn(|cx| {
        outbox.register(cx);
        loop {
            if outbox.is_closing() {
                return Poll::Ready(ReadEnd::Closing);
            }
            match socket.poll_write_out(cx, Some(&outbox), &stats) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(ReadEnd::Gone),
                Poll::Pending => return Poll::Pending,
            }
            // Through the outbox, as the server's answers: in order with the socket's pongs.
            let read = socket.poll_read(cx, &outbox, &stats, &mut |message| match message {
                Incoming::Text(text) => outbox.push_reply(text),
                // The outbox has no call for binary (the server sends none); this one appends
                // a frame of any opcode.
                Incoming::Binary(data) => outbox.push_control(ws::opcode::BINARY, data, true),
            });
            match read {
                Poll::Ready(Some(end)) => return Poll::Ready(end),
                Poll::Ready(None) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    match end {
        ReadEnd::Closing => {
            let reason = outbox.close_reason();
            socket
                .finish(Some(&outbox), reason, &stats, CLOSE_GRACE)
                .await;
        }
        ReadEnd::ClientClosed(code) => socket.answer_close(code, &stats, CLOSE_GRACE).await,
        ReadEnd::Gone => {}
    }
}
