//! The outgoing side of one connection: a bounded queue of frames and a close signal.
//!
//! The hub holds an [`Outbox`] per subscription and only ever `try_send`s into it, so a trigger
//! never waits on a socket. A full queue means the client cannot keep up: it is disconnected
//! (close 1013, "try again later") and counted, rather than buffered without bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Poll;

use axum::extract::ws::Message;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
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

/// A queue that has drained keeps no buffer: most connections are idle most of the time, and
/// tens of thousands of empty per-connection buffers would dominate their memory (tokio's
/// `mpsc` allocated a block of 32 slots, ~1.5 KiB, per channel up front).
struct Inner {
    queue: Mutex<VecDeque<Message>>,
    capacity: usize,
    /// Wakes the writer when the queue goes from empty to non-empty. An `AtomicWaker` rather
    /// than a `Notify`: the writer is the only waiter, and `Notify` takes a lock shared by
    /// the publishing thread and the writer on every wakeup (rooms: 82k -> 64k msgs/s).
    ready: AtomicWaker,
    /// Wakes a waiting [`Outbox::reply`] when the writer takes a frame from a full queue.
    space: Notify,
    closing: CancellationToken,
    reason: OnceLock<CloseReason>,
    stats: Arc<Stats>,
}

impl Inner {
    /// Appends `message` unless the queue is full; returns it back when full.
    fn push(&self, message: Message) -> Result<(), Message> {
        let mut queue = lock(&self.queue);
        if queue.len() >= self.capacity {
            return Err(message);
        }
        let was_empty = queue.is_empty();
        queue.push_back(message);
        drop(queue);
        // Only the first frame wakes the writer: it drains everything queued before it sleeps
        // again, so later frames need no wakeup of their own.
        if was_empty {
            self.ready.wake();
        }
        Ok(())
    }
}

/// The queue's mutex is never held across a panic-prone call, but a poisoned lock would only
/// mean a panicked holder; the queue itself is still consistent.
fn lock(queue: &Mutex<VecDeque<Message>>) -> MutexGuard<'_, VecDeque<Message>> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Cheap to clone; every clone feeds the same connection.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// The connection's writer end of the queue.
pub struct OutboxReceiver {
    inner: Arc<Inner>,
}

impl OutboxReceiver {
    /// Takes the oldest queued frame, if any. The drained queue gives its buffer back.
    pub fn try_recv(&mut self) -> Option<Message> {
        let inner = &*self.inner;
        let mut queue = lock(&inner.queue);
        let was_full = queue.len() >= inner.capacity;
        let message = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            // After a burst the buffer can hold `capacity` frames' worth of slots.
            *queue = VecDeque::new();
        }
        drop(queue);
        if was_full {
            inner.space.notify_one();
        }
        message
    }

    /// Waits for the next frame. Never ends by itself: the writer stops on the close signal.
    pub async fn recv(&mut self) -> Message {
        std::future::poll_fn(|cx| {
            if let Some(message) = self.try_recv() {
                return Poll::Ready(message);
            }
            self.inner.ready.register(cx.waker());
            // A push between the first look and the registration did not see our waker: look
            // again now that it is registered.
            match self.try_recv() {
                Some(message) => Poll::Ready(message),
                None => Poll::Pending,
            }
        })
        .await
    }
}

impl Outbox {
    /// A queue holding up to `capacity` frames.
    pub fn new(capacity: usize, stats: Arc<Stats>) -> (Outbox, OutboxReceiver) {
        let inner = Arc::new(Inner {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: AtomicWaker::new(),
            space: Notify::new(),
            closing: CancellationToken::new(),
            reason: OnceLock::new(),
            stats,
        });
        (
            Outbox {
                inner: inner.clone(),
            },
            OutboxReceiver { inner },
        )
    }

    /// Queues a publish frame without waiting. Returns whether it was queued; a full queue
    /// disconnects the client as too slow. The caller counts queued frames in
    /// `ws_messages_send_queued`, once per fan-out: one shared counter bumped per subscriber
    /// bounced its cache line between the cores on every frame.
    pub fn try_publish(&self, frame: String) -> bool {
        if self.is_closing() {
            return false;
        }
        match self.inner.push(Message::Text(frame.into())) {
            Ok(()) => true,
            Err(_) => {
                Stats::incr(&self.inner.stats.ws_messages_send_error);
                if self.close(SLOW_CLIENT) {
                    Stats::incr(&self.inner.stats.slow_client_disconnects);
                    tracing::info!("outgoing queue full: disconnecting slow client");
                }
                false
            }
        }
    }

    /// Queues a control frame (a websocket ping) if there is room; dropping it when the queue
    /// is full is harmless, as a full queue already means the client is being dealt with.
    pub fn try_control(&self, message: Message) {
        let _ = self.inner.push(message);
    }

    /// Queues an answer to the client's own request, waiting for room: the client that sent
    /// the request is the one slowed down. Returns false once the connection is gone.
    pub async fn reply(&self, text: impl Into<String>) -> bool {
        let mut message = Message::Text(text.into().into());
        loop {
            if self.is_closing() {
                return false;
            }
            match self.inner.push(message) {
                Ok(()) => return true,
                Err(back) => message = back,
            }
            // A frame taken after the push above stores a permit, so this cannot miss it.
            tokio::select! {
                () = self.inner.space.notified() => {}
                () = self.inner.closing.cancelled() => return false,
            }
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
