//! The outgoing side of one connection: a bounded queue of frames and a close signal.
//!
//! The hub holds an [`Outbox`] per subscription and only ever `try_send`s into it, so a trigger
//! never waits on a socket. A full queue means the client cannot keep up: it is disconnected
//! (close 1013, "try again later") and counted, rather than buffered without bound.

use std::sync::{Arc, OnceLock};

use axum::extract::ws::Message;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::stats::Stats;

/// Close codes this server sends (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// A client that could not keep up: its backlog is dropped, not sent.
pub const SLOW_CLIENT: CloseReason = CloseReason {
    code: close_code::TRY_AGAIN_LATER,
    reason: "slow-client",
};

/// Why a connection ends, as sent in its close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

struct Inner {
    tx: mpsc::Sender<Message>,
    closing: CancellationToken,
    reason: OnceLock<CloseReason>,
    stats: Arc<Stats>,
}

/// Cheap to clone; every clone feeds the same connection.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// The connection's writer end of the queue.
pub struct OutboxReceiver {
    pub rx: mpsc::Receiver<Message>,
}

impl Outbox {
    /// A queue holding up to `capacity` frames.
    pub fn new(capacity: usize, stats: Arc<Stats>) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let inner = Inner {
            tx,
            closing: CancellationToken::new(),
            reason: OnceLock::new(),
            stats,
        };
        (
            Outbox {
                inner: Arc::new(inner),
            },
            OutboxReceiver { rx },
        )
    }

    /// Queues a publish frame without waiting. Returns whether it was queued; a full queue
    /// disconnects the client as too slow.
    pub fn try_publish(&self, frame: String) -> bool {
        match self.inner.tx.try_send(Message::Text(frame.into())) {
            Ok(()) => {
                Stats::incr(&self.inner.stats.ws_messages_send_queued);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                Stats::incr(&self.inner.stats.ws_messages_send_error);
                if self.close(SLOW_CLIENT) {
                    Stats::incr(&self.inner.stats.slow_client_disconnects);
                    tracing::info!("outgoing queue full: disconnecting slow client");
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a control frame (a websocket ping) if there is room; dropping it when the queue
    /// is full is harmless, as a full queue already means the client is being dealt with.
    pub fn try_control(&self, message: Message) {
        let _ = self.inner.tx.try_send(message);
    }

    /// Queues an answer to the client's own request, waiting for room: the client that sent
    /// the request is the one slowed down. Returns false once the connection is gone.
    pub async fn reply(&self, text: impl Into<String>) -> bool {
        let message = Message::Text(text.into().into());
        tokio::select! {
            sent = self.inner.tx.send(message) => sent.is_ok(),
            () = self.inner.closing.cancelled() => false,
        }
    }

    /// Asks the connection to close with `reason`. The first reason wins; returns whether this
    /// call was the first.
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = self.inner.reason.set(reason).is_ok();
        self.inner.closing.cancel();
        first
    }

    /// Resolves once a close was asked for.
    pub fn closing(&self) -> WaitForCancellationFuture<'_> {
        self.inner.closing.cancelled()
    }

    pub fn is_closing(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// The reason given to [`Outbox::close`], if any.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.reason.get().copied()
    }
}
