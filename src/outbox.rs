//! The outgoing side of one connection: frames waiting for its socket, and its signals.
//!
//! Frames are queued as the bytes that go on the wire (websocket header included), appended to
//! one buffer. The hub appends a publish frame under a short lock and never waits on a socket;
//! the connection takes the whole buffer in one swap and writes it in as few syscalls as the
//! socket allows — whatever queued up while it was busy leaves in one write. No frame is an
//! allocation of its own, and an idle connection holds no buffer at all.
//!
//! The queue is bounded in frames: a client that cannot keep up is disconnected (close 1013,
//! "try again later") and counted, rather than buffered without bound.
//!
//! The outbox is also how anyone reaches the connection's task: a close request, a websocket
//! ping or a due re-authorisation sets a flag here and wakes it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Context;

use futures_util::task::AtomicWaker;

use crate::stats::Stats;
use crate::ws::{self, opcode};

/// Close codes this server sends (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
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

#[derive(Default)]
struct Pending {
    /// Encoded frames, oldest first.
    bytes: Vec<u8>,
    frames: usize,
}

/// A fan-out touches one `Inner` per subscriber, each in a different place in memory: the
/// fields a publish reads and writes come first and share one cache line (a 10k-subscriber
/// fan-out profile spent 7 % of its samples on the first load of `closing`, a cache miss).
#[repr(C, align(64))]
struct Inner {
    /// A plain flag, read on every publish: a `CancellationToken` took a mutex to answer
    /// `is_cancelled` (3.6 % of all samples in a 10k-subscriber fan-out profile).
    closing: AtomicBool,
    pending: Mutex<Pending>,
    capacity: usize,
    /// The connection's task, woken when the queue goes from empty to non-empty or a flag is
    /// set. An `AtomicWaker`: the task is the only waiter, and a `Notify` took a lock shared by
    /// the publishing thread and the task on every wakeup (rooms: 82k -> 64k msgs/s).
    waker: AtomicWaker,
    reason: OnceLock<CloseReason>,
    reauth_due: AtomicBool,
    /// Set on every frame from the client; cleared by each websocket ping round.
    heard: AtomicBool,
    /// When the client last sent a message ([`crate::sweeper::now_ms`]); the idle timeout runs
    /// from it. Websocket pongs do not count: an abandoned tab still answers them.
    last_active: AtomicU64,
    stats: Arc<Stats>,
}

/// The first allocation of an empty queue: a burst then appends ~10 publish frames before the
/// buffer grows (and copies) again. An idle connection holds none: the queue's buffer leaves
/// with the frames the connection takes.
const FIRST_ALLOCATION: usize = 1024;

/// Cheap to clone; every clone feeds the same connection.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// A poisoned lock only means a panicked holder; the bytes before it are whole frames, as a
/// frame is appended in one call that does not panic midway.
fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbox {
    /// A queue holding up to `capacity` frames.
    pub fn new(capacity: usize, stats: Arc<Stats>) -> Outbox {
        Outbox {
            inner: Arc::new(Inner {
                pending: Mutex::new(Pending::default()),
                capacity: capacity.max(1),
                waker: AtomicWaker::new(),
                closing: AtomicBool::new(false),
                reason: OnceLock::new(),
                reauth_due: AtomicBool::new(false),
                heard: AtomicBool::new(true),
                last_active: AtomicU64::new(crate::sweeper::now_ms()),
                stats,
            }),
        }
    }

    /// Appends one frame made of `parts`; `bounded` refuses it when the queue is full. The
    /// task is woken by the first frame unless `from_task`: the connection's task queues its
    /// own answers while handling input and writes them out right after, and waking a running
    /// task costs a second poll and, often, a wakeup of an idle worker thread.
    fn push(&self, op: u8, parts: &[&[u8]], bounded: bool, from_task: bool) -> bool {
        let mut pending = lock(&self.inner.pending);
        if bounded && pending.frames >= self.inner.capacity {
            return false;
        }
        let was_empty = pending.frames == 0;
        if pending.bytes.capacity() == 0 {
            pending.bytes.reserve(FIRST_ALLOCATION);
        }
        ws::put_frame(&mut pending.bytes, op, parts);
        pending.frames += 1;
        drop(pending);
        // Only the first frame wakes the task: it takes everything queued when it runs.
        if was_empty && !from_task {
            self.inner.waker.wake();
        }
        true
    }

    /// Queues a publish frame made of `parts` ([`Trigger::frame_parts`]) without waiting.
    /// Returns whether it was queued; a full queue disconnects the client as too slow. The
    /// caller counts queued frames in `ws_messages_send_queued`, once per fan-out: one shared
    /// counter bumped per subscriber bounced its cache line between the cores on every frame.
    ///
    /// [`Trigger::frame_parts`]: crate::protocol::Trigger::frame_parts
    pub fn try_publish(&self, parts: [&str; 3]) -> bool {
        if self.is_closing() {
            return false;
        }
        if self.push(opcode::TEXT, &parts.map(str::as_bytes), true, false) {
            return true;
        }
        Stats::incr(&self.inner.stats.ws_messages_send_error);
        if self.close(SLOW_CLIENT) {
            Stats::incr(&self.inner.stats.slow_client_disconnects);
            tracing::info!("outgoing queue full: disconnecting slow client");
        }
        false
    }

    /// Queues an answer to the client's own request, from the connection's task (no wakeup:
    /// the task writes it out next). Not bounded here: the connection stops reading the
    /// client while its socket is full, so answers cannot pile up.
    pub fn push_reply(&self, text: &str) {
        self.push(opcode::TEXT, &[text.as_bytes()], false, true);
    }

    /// Queues a control frame (ping, pong) if there is room; dropping one when the queue is
    /// full is harmless, as a full queue already means the client is being dealt with.
    /// `from_task` as for [`Outbox::push_reply`].
    pub fn push_control(&self, op: u8, payload: &[u8], from_task: bool) {
        self.push(op, &[payload], true, from_task);
    }

    /// Moves every queued frame into the empty `into`; returns how many frames moved.
    pub fn take(&self, into: &mut Vec<u8>) -> usize {
        debug_assert!(into.is_empty());
        let mut pending = lock(&self.inner.pending);
        std::mem::swap(&mut pending.bytes, into);
        std::mem::take(&mut pending.frames)
    }

    /// Drops every queued frame (a slow client's backlog).
    pub fn discard(&self) {
        *lock(&self.inner.pending) = Pending::default();
    }

    /// Registers the connection's task to be woken by the next frame or flag.
    pub fn register(&self, cx: &Context<'_>) {
        self.inner.waker.register(cx.waker());
    }

    /// Asks the connection to close with `reason`. The first reason wins; returns whether this
    /// call was the first.
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = self.inner.reason.set(reason).is_ok();
        self.inner.closing.store(true, Ordering::Release);
        self.inner.waker.wake();
        first
    }

    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// The reason given to [`Outbox::close`], if any.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.reason.get().copied()
    }

    /// Marks a re-authorisation due and wakes the connection.
    pub fn request_reauth(&self) {
        self.inner.reauth_due.store(true, Ordering::Release);
        self.inner.waker.wake();
    }

    /// Whether a re-authorisation was asked for since the last call.
    pub fn take_reauth(&self) -> bool {
        // A load first: this runs on every poll, and a swap would write the line each time.
        self.inner.reauth_due.load(Ordering::Acquire)
            && self.inner.reauth_due.swap(false, Ordering::AcqRel)
    }

    /// Records a frame from the client (any frame: the websocket ping round's evidence).
    pub fn heard(&self) {
        if !self.inner.heard.load(Ordering::Relaxed) {
            self.inner.heard.store(true, Ordering::Relaxed);
        }
    }

    /// Whether anything was heard since the last call; clears the record.
    pub fn take_heard(&self) -> bool {
        self.inner.heard.swap(false, Ordering::Relaxed)
    }

    /// Records a client message (activity for the idle timeout) at `now_ms`.
    pub fn active(&self, now_ms: u64) {
        self.inner.last_active.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_active(&self) -> u64 {
        self.inner.last_active.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        crate::ws::server_frames(bytes)
    }

    #[test]
    fn frames_queue_in_order_and_leave_in_one_take() {
        let outbox = Outbox::new(3, Arc::new(Stats::new()));
        assert!(outbox.try_publish([r#"{"a":"#, r#""r1""#, "}"]));
        outbox.push_reply("answer");
        outbox.push_control(opcode::PING, b"", false);
        let mut bytes = Vec::new();
        assert_eq!(outbox.take(&mut bytes), 3);
        assert_eq!(
            frames(&bytes),
            vec![
                (opcode::TEXT, br#"{"a":"r1"}"#.to_vec()),
                (opcode::TEXT, b"answer".to_vec()),
                (opcode::PING, Vec::new()),
            ]
        );
        let mut again = Vec::new();
        assert_eq!(outbox.take(&mut again), 0);
        assert!(again.is_empty());
    }

    #[test]
    fn a_full_queue_closes_the_client_as_slow() {
        let stats = Arc::new(Stats::new());
        let outbox = Outbox::new(2, stats.clone());
        assert!(outbox.try_publish(["{", "1", "}"]));
        assert!(outbox.try_publish(["{", "2", "}"]));
        assert!(!outbox.try_publish(["{", "3", "}"]));
        assert_eq!(outbox.close_reason(), Some(SLOW_CLIENT));
        assert!(!outbox.try_publish(["{", "4", "}"]));
        assert_eq!(stats.slow_client_disconnects.load(Ordering::Relaxed), 1);
        // The first reason stays.
        assert!(!outbox.close(CloseReason {
            code: 1000,
            reason: "x"
        }));
        assert_eq!(outbox.close_reason(), Some(SLOW_CLIENT));
    }
}
