//! One websocket connection, from the bootstrap call to the last close frame.
//!
//! A connection is one task running two loops side by side (`tokio::join!`, no extra task):
//! - the **reader** ([`reader`]) parses client frames, answers them through the outbox, owns
//!   this connection's subscriptions (`requestId` → room), and runs the idle timeout, the
//!   websocket pings and the optional re-authorisation;
//! - the **writer** ([`writer`]) drains the outbox into the socket, coalescing whatever is
//!   queued into one flush, and sends the close frame when the connection is asked to close.
//!
//! Anything may ask to close (the hub for a slow client, the reader for an idle, oversized or
//! flooding client, the server on shutdown) through [`Outbox::close`]; both loops then wind
//! down.

mod reader;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::StreamExt;
use tracing::Instrument;

use crate::backend::{Bootstrap, ConnectRequest};
use crate::outbox::{close_code, CloseReason, Outbox};
use crate::protocol::{self, answer};
use crate::room::AllowedRooms;
use crate::server::Shared;
use crate::stats::Stats;
use reader::{Reader, TokenBucket};

/// How long we wait for the client's close frame after sending ours, before dropping the
/// socket. Closing with unread input would reset the TCP connection and could destroy the
/// last frames we sent (the refusal message) before the client reads them.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

const CLIENT_CLOSED: CloseReason = CloseReason {
    code: close_code::NORMAL,
    reason: "client-closed",
};

const BACKEND_UNAVAILABLE: CloseReason = CloseReason {
    code: close_code::TRY_AGAIN_LATER,
    reason: "backend-unavailable",
};

/// Runs a connection to its end.
pub(crate) async fn run(socket: WebSocket, request: ConnectRequest, shared: Arc<Shared>) {
    let span = tracing::info_span!("conn", id = %request.id, peer = %request.peer);
    run_inner(socket, Arc::new(request), shared)
        .instrument(span)
        .await;
}

async fn run_inner(mut socket: WebSocket, request: Arc<ConnectRequest>, shared: Arc<Shared>) {
    let stats = &shared.stats;
    let bootstrap = shared
        .gate
        .bootstrap(&*shared.backend, &request, stats)
        .await;
    let allowed = match bootstrap {
        Ok(Bootstrap::Authorized { allowed_rooms }) => AllowedRooms::from_backend(allowed_rooms),
        Ok(Bootstrap::Refused) => None,
        Err(error) => {
            Stats::incr(&stats.backend_errors);
            tracing::warn!(%error, "bootstrap failed: refusing with backend-unavailable");
            let counter = &stats.refused_backend_unavailable;
            return refuse(
                socket,
                counter,
                answer::BACKEND_UNAVAILABLE,
                BACKEND_UNAVAILABLE,
            )
            .await;
        }
    };
    let Some(allowed) = allowed else {
        tracing::info!("backend refused the connection");
        let reason = CloseReason {
            code: close_code::NORMAL,
            reason: "not-authorized",
        };
        return refuse(
            socket,
            &stats.refused_unauthorized,
            answer::NOT_AUTHORIZED,
            reason,
        )
        .await;
    };
    if socket
        .send(Message::Text(protocol::authorized(&allowed.raw).into()))
        .await
        .is_err()
    {
        return;
    }

    stats.open_connections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(allowed_rooms = allowed.raw.len(), "connection opened");
    spawn_hook(&shared, &request, Hook::Connect);

    let (outbox, receiver) = Outbox::new(shared.config.outgoing_queue, stats.clone());
    let (sink, mut stream) = socket.split();
    let policy = &shared.config.policy;
    let mut reader = Reader {
        shared: &shared,
        request: &request,
        outbox: outbox.clone(),
        allowed,
        subscriptions: HashMap::new(),
        rate: TokenBucket::new(policy.messages_per_second, policy.message_burst),
    };
    tokio::join!(
        async {
            reader.read_loop(&mut stream).await;
            // The client may still be sending; reading it until its close frame keeps the
            // TCP connection from being reset while our close frame is in flight.
            let _ = tokio::time::timeout(CLOSE_GRACE, drain(&mut stream)).await;
        },
        writer::write_loop(sink, receiver, outbox.clone(), stats.clone()),
    );

    let subscriptions = std::mem::take(&mut reader.subscriptions);
    shared
        .hub
        .unsubscribe_all(subscriptions.values().map(|(id, room)| (room, *id)));
    stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    let reason = outbox.close_reason().unwrap_or(CLIENT_CLOSED);
    tracing::info!(
        code = reason.code,
        reason = reason.reason,
        "connection closed"
    );
    spawn_hook(&shared, &request, Hook::Disconnect);
}

/// Sends the refusal answer, then a close frame, and waits briefly for the client's close.
async fn refuse(
    mut socket: WebSocket,
    counter: &AtomicU64,
    text: &'static str,
    reason: CloseReason,
) {
    Stats::incr(counter);
    let _ = socket.send(Message::Text(text.into())).await;
    let _ = socket.send(close_message(reason)).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, drain(&mut socket)).await;
}

fn close_message(reason: CloseReason) -> Message {
    Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: reason.reason.into(),
    }))
}

/// Reads and discards until the stream ends or errs.
async fn drain<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    while let Some(Ok(_)) = stream.next().await {}
}

#[derive(Clone, Copy)]
enum Hook {
    Connect,
    Ping,
    Disconnect,
}

/// Hooks run beside the connection: a slow backend never delays the client.
fn spawn_hook(shared: &Arc<Shared>, request: &Arc<ConnectRequest>, hook: Hook) {
    let backend = shared.backend.clone();
    let request = request.clone();
    tokio::spawn(async move {
        match hook {
            Hook::Connect => backend.on_connect(&request).await,
            Hook::Ping => backend.on_ping(&request).await,
            Hook::Disconnect => backend.on_disconnect(&request).await,
        }
    });
}
