//! One websocket connection, from the bootstrap call to the last close frame.
//!
//! A connection is one task and one loop: it writes what the outbox holds, then reads and
//! handles what the client sent, until something asks it to close. The parts:
//! - [`socket`]: the websocket over the upgraded connection — frames in, bytes out, the
//!   closing handshake;
//! - [`session`]: what the client's messages do — answers, subscriptions, re-authorisation.
//!
//! Anything may ask to close (the hub for a slow client, the session for a flood, the sweeper
//! for an idle or half-open client or on shutdown) through [`Outbox::close`], which wakes the
//! task. While the socket cannot take more output, the client is not read: a client that
//! sends requests without reading the answers slows only itself.

mod budget;
mod recovery;
mod session;
mod socket;

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use crate::backend::ConnectRequest;
use crate::hooks::Hook;
use crate::node::Node;
use crate::outbox::{close_code, CloseReason, Outbox, QueueBound, SLOW_CLIENT};
use crate::protocol::answer;
use crate::stats::Stats;
use crate::sweeper::SERVER_SHUTDOWN;
use session::{Session, NOT_AUTHORIZED};
use socket::{Incoming, Io, ReadEnd, Socket};

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

/// Client messages are JSON text; a binary message is refused (README, "Limits").
const BINARY_NOT_SUPPORTED: CloseReason = CloseReason {
    code: close_code::UNSUPPORTED_DATA,
    reason: "binary-not-supported",
};

/// What the connection holds while it is open.
struct Open {
    socket: Socket,
    session: Session,
}

/// Runs a connection to its end, from the upgrade on. `guard` (admission ticket, shutdown
/// tracking) is held until then.
///
/// The task's future is what every open connection costs for its whole life, so it is kept
/// small: the bootstrap and the closing handshake, large and short-lived, are boxed, and
/// only the socket and the session stay inline (`ht-bench connect`: a 6.1 KB future, most of
/// it a read buffer of the closing phase, became ~0.5 KB).
pub(crate) async fn run<G: Send>(
    upgrade: OnUpgrade,
    request: Arc<ConnectRequest>,
    shared: Arc<Node>,
    guard: G,
) {
    let io = match upgrade.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(error) => return tracing::debug!(%error, "websocket upgrade failed"),
    };
    // At DEBUG, like the connection's own lines: at INFO every open connection held the
    // span's record (~1 KiB: 4.7 instead of 3.7 KiB per idle connection at 19,000). The few
    // lines above DEBUG name the connection themselves.
    let span = tracing::debug_span!("conn", id = %request.id, client = %request.client_ip);
    async {
        let Some(mut open) = Box::pin(open(io, &request, &shared)).await else {
            return;
        };
        let Some(registration) = shared.registry().register(open.session.outbox()) else {
            // The node began shutting down during the bootstrap.
            let finish =
                open.socket
                    .finish(None, Some(SERVER_SHUTDOWN), shared.stats(), CLOSE_GRACE);
            return Box::pin(finish).await;
        };
        let stats = shared.stats();
        stats.open_connections.fetch_add(1, Ordering::Relaxed);
        Stats::incr(&stats.connections_opened);
        tracing::debug!("connection opened");
        shared.hooks().spawn(&request, Hook::Connect);
        let end = serve(&mut open.socket, &mut open.session, stats).await;
        open.session.unsubscribe_all();
        drop(registration);
        let reason = Box::pin(close(open, end, stats)).await;
        stats.open_connections.fetch_sub(1, Ordering::Relaxed);
        Stats::incr(&stats.connections_closed);
        tracing::debug!(
            code = reason.code,
            reason = reason.reason,
            "connection closed"
        );
        shared.hooks().spawn(&request, Hook::Disconnect);
    }
    .instrument(span)
    .await;
    drop(guard);
}

/// The bootstrap: the backend's answer, sent to the client. `None` when refused (the refusal
/// is sent and the socket closed here).
async fn open(io: Io, request: &Arc<ConnectRequest>, shared: &Arc<Node>) -> Option<Open> {
    let stats = shared.stats();
    let budget = budget::Budget::new(&shared.config().policy);
    let mut socket = Socket::new(io, shared.config().max_message_size, budget);
    let bootstrap = shared.bootstrap(request).await;
    let allowed = match bootstrap {
        Ok(allowed) => allowed,
        Err(error) => {
            Stats::incr(&stats.backend_errors);
            tracing::warn!(
                conn = %request.id, client = %request.client_ip, %error,
                "bootstrap failed: refusing with backend-unavailable"
            );
            let counter = &stats.refused_backend_unavailable;
            refuse(
                socket,
                stats,
                counter,
                answer::BACKEND_UNAVAILABLE,
                BACKEND_UNAVAILABLE,
            )
            .await;
            return None;
        }
    };
    let Some(allowed) = allowed else {
        tracing::debug!("backend refused the connection");
        let counter = &stats.refused_unauthorized;
        refuse(
            socket,
            stats,
            counter,
            answer::NOT_AUTHORIZED,
            NOT_AUTHORIZED,
        )
        .await;
        return None;
    };
    socket.queue_shared_text(allowed.first_payload());
    let outbox = Outbox::new(
        QueueBound {
            frames: shared.config().outgoing_queue,
            bytes: shared.config().outgoing_queue_bytes,
        },
        stats.clone(),
    );
    let session = Session::new(shared.clone(), request.clone(), outbox, allowed);
    Some(Open { socket, session })
}

/// The closing handshake after `end`; the reason the connection closed.
async fn close(mut open: Open, end: ReadEnd, stats: &Stats) -> CloseReason {
    let outbox = open.session.outbox().clone();
    match end {
        ReadEnd::Closing => {
            let reason = outbox.close_reason().unwrap_or(CLIENT_CLOSED);
            if reason == SLOW_CLIENT {
                // The backlog is what got it closed: it is not sent.
                outbox.discard();
            }
            if reason.code == close_code::TOO_BIG {
                Stats::incr(&stats.frames_too_big);
            }
            open.socket
                .finish(Some(&outbox), Some(reason), stats, CLOSE_GRACE)
                .await;
            reason
        }
        ReadEnd::ClientClosed(code) => {
            outbox.close(CLIENT_CLOSED);
            open.socket.answer_close(code, stats, CLOSE_GRACE).await;
            CLIENT_CLOSED
        }
        ReadEnd::Gone => {
            outbox.close(CLIENT_CLOSED);
            CLIENT_CLOSED
        }
    }
}

/// The connection's loop: output first, then input, until one of them ends it.
async fn serve(socket: &mut Socket, session: &mut Session, stats: &Stats) -> ReadEnd {
    let outbox = session.outbox().clone();
    poll_fn(|cx| {
        outbox.register(cx);
        loop {
            if outbox.is_closing() {
                return Poll::Ready(ReadEnd::Closing);
            }
            if session.poll_reauth(cx).is_ready() {
                continue;
            }
            match socket.poll_write_out(cx, Some(&outbox), stats) {
                // All out: recoveries go on with the room it made.
                Poll::Ready(Ok(())) if session.pump_recoveries() => continue,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    Stats::incr(&stats.ws_messages_send_error);
                    tracing::debug!(%error, "websocket write failed");
                    return Poll::Ready(ReadEnd::Gone);
                }
                // A full socket: the client is not read until it takes our output.
                Poll::Pending => return Poll::Pending,
            }
            let read = socket.poll_read(cx, &outbox, stats, &mut |message| match message {
                Incoming::Text(text) => session.on_text(text),
                Incoming::Binary(_) => {
                    outbox.close(BINARY_NOT_SUPPORTED);
                }
            });
            match read {
                Poll::Ready(Some(end)) => return Poll::Ready(end),
                Poll::Ready(None) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Sends the refusal answer, then a close frame, and waits briefly for the client's close.
async fn refuse(
    mut socket: Socket,
    stats: &Stats,
    counter: &AtomicU64,
    text: &'static str,
    reason: CloseReason,
) {
    Stats::incr(counter);
    socket.queue_text(text);
    socket.finish(None, Some(reason), stats, CLOSE_GRACE).await;
}
