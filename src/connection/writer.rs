//! The writer half of a connection: drains the outbox into the socket.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;

use super::{close_message, CLIENT_CLOSED, CLOSE_GRACE};
use crate::outbox::{close_code, CloseReason, Outbox, OutboxReceiver, SLOW_CLIENT};
use crate::stats::Stats;

/// Most frames written before one flush. Bounds the write buffer a burst can grow (at ~200
/// bytes a frame, 64 frames are ~13 KiB) while still turning a burst into few syscalls.
const MAX_FRAMES_PER_FLUSH: usize = 64;

/// Drains the outbox into the socket until the connection closes, then sends the close frame.
pub(super) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut receiver: OutboxReceiver,
    outbox: Outbox,
    stats: Arc<Stats>,
) {
    loop {
        tokio::select! {
            biased;
            () = outbox.closing() => break,
            first = receiver.recv() => {
                // A dead peer can stall a write forever: a close request interrupts it.
                let written = tokio::select! {
                    biased;
                    () = outbox.closing() => break,
                    written = write_batch(&mut sink, &mut receiver, first) => written,
                };
                match written {
                    Ok(n) => Stats::add(&stats.ws_messages_send, n as u64),
                    Err(error) => {
                        Stats::incr(&stats.ws_messages_send_error);
                        tracing::debug!(%error, "websocket write failed");
                        outbox.close(CloseReason { code: close_code::NORMAL, reason: "write-error" });
                        return;
                    }
                }
            }
        }
    }
    let reason = outbox.close_reason();
    let finish = async {
        match reason {
            // The peer closed first: tungstenite already queued its close reply; flush it.
            Some(CLIENT_CLOSED) | None => {
                let _ = sink.flush().await;
            }
            Some(reason) => {
                // Frames queued before the close (a last answer, say) go out first, except a
                // slow client's backlog, which is what got it closed.
                if reason != SLOW_CLIENT {
                    while let Some(message) = receiver.try_recv() {
                        if sink.feed(message).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = sink.send(close_message(reason)).await;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, finish).await;
}

/// Writes `first` and whatever else is already queued (up to a bound), then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    receiver: &mut OutboxReceiver,
    first: Message,
) -> Result<usize, axum::Error> {
    sink.feed(first).await?;
    let mut written = 1;
    while written < MAX_FRAMES_PER_FLUSH {
        match receiver.try_recv() {
            Some(message) => {
                sink.feed(message).await?;
                written += 1;
            }
            None => break,
        }
    }
    sink.flush().await?;
    Ok(written)
}
