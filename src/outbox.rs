//! The outgoing side of one connection: frames waiting for its socket, and its signals.
//!
//! Frames are queued as the bytes that go on the wire (websocket header included), appended to
//! one buffer. The hub appends a publish frame under a short lock and never waits on a socket;
//! the connection takes the whole buffer in one swap and writes it in as few syscalls as the
//! socket allows — whatever queued up while it was busy leaves in one write. No frame is an
//! allocation of its own, and an idle connection holds no buffer at all.
//!
//! The queue is bounded in frames and in bytes: a client that cannot keep up is disconnected
//! (close 1013, "try again later") and counted, rather than buffered without bound.
//!
//! The outbox is also how anyone reaches the connection's task: a close request, a websocket
//! ping or a due re-authorisation sets a flag here and wakes it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Context;

use bytes::Bytes;

pub use crate::wire::{Wire, SHARE_ABOVE};

use futures_util::task::AtomicWaker;

use crate::protocol::Trigger;
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
    pub const SERVICE_RESTART: u16 = 1012;
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

/// The queue proper, under the outbox's lock. What every publish reads and writes is here and
/// small (the buffer, the frame count and bound, one pointer); what only large payloads and
/// subscriptions with positions need lives behind that pointer, allocated when first used. So
/// a 3.1 publish touches one cache line of the connection's state, see [`Inner`].
#[derive(Default)]
struct Pending {
    /// Encoded frames, oldest first; shared payloads are spliced in from `cold`.
    bytes: Vec<u8>,
    cold: Option<Box<Cold>>,
    frames: u32,
    /// The bound in frames (fixed): kept beside the count it limits.
    max_frames: u32,
}

#[derive(Default)]
struct Cold {
    /// Large payloads shared with other connections, spliced into `bytes` ([`Wire`]'s form).
    shared: Vec<(usize, Bytes)>,
    shared_len: usize,
    /// Where the queued publishes of subscriptions with positions are: when the queue
    /// overflows they are the ones dropped.
    marks: Vec<Mark>,
    /// Subscriptions with positions whose publishes were dropped since the last take: their
    /// requestId (JSON) and the newest position lost. Their gap notices go out with the next
    /// take, and nothing more of theirs is queued before that.
    gaps: Vec<(Arc<str>, u64)>,
}

/// A queued publish of a subscription with positions: `bytes[start..end]`, plus its shared
/// payload when it has one.
struct Mark {
    start: usize,
    end: usize,
    request_id_json: Arc<str>,
    position: u64,
}

impl Pending {
    /// Queued bytes on the wire, shared payloads included.
    fn len(&self) -> usize {
        self.bytes.len() + self.cold.as_ref().map_or(0, |c| c.shared_len)
    }

    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    fn has_gaps(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| !c.gaps.is_empty())
    }

    /// Records that `rid` lost the publish at `position`.
    fn lost(&mut self, rid: &Arc<str>, position: u64) {
        let gaps = &mut self.cold().gaps;
        match gaps.iter_mut().find(|(r, _)| **r == **rid) {
            Some(gap) => gap.1 = gap.1.max(position),
            None => gaps.push((rid.clone(), position)),
        }
    }

    /// Drops every queued publish of a subscription with positions (PROTOCOL.md section 7:
    /// the connection fell behind), recording their gaps; the other frames stay, in order.
    /// Returns how many were dropped.
    fn drop_positional(&mut self) -> usize {
        let Some(cold) = self.cold.as_mut() else {
            return 0;
        };
        let marks = std::mem::take(&mut cold.marks);
        if marks.is_empty() {
            return 0;
        }
        let ranges: Vec<(usize, usize)> = marks.iter().map(|m| (m.start, m.end)).collect();
        let mut wire = Wire::from_parts(
            std::mem::take(&mut self.bytes),
            std::mem::take(&mut cold.shared),
        );
        wire.remove(&ranges);
        (self.bytes, cold.shared, cold.shared_len) = wire.into_parts();
        self.frames -= marks.len() as u32;
        for mark in &marks {
            self.lost(&mark.request_id_json, mark.position);
        }
        marks.len()
    }
}

/// A fan-out touches one `Inner` per subscriber, each in a different place in memory, and the
/// first touch of each is a cache miss: what a publish reads and writes (the closing flag, the
/// lock and the queue, the bounds, the bytes taken and not yet written) fills the first cache
/// line, and nothing else does. A 10k-subscriber burst profile spent 10 % of the server's time
/// on the loads of three lines when these were spread out (the assertion below holds it so).
#[repr(C, align(64))]
struct Inner {
    pending: Mutex<Pending>,
    /// A plain flag, read on every publish: a `CancellationToken` took a mutex to answer
    /// `is_cancelled` (3.6 % of all samples in a 10k-subscriber fan-out profile).
    closing: AtomicBool,
    /// The bound in bytes, at most 4 GiB (fixed).
    max_bytes: u32,
    /// Bytes the connection took and has not finished writing: they count against the byte
    /// bound too, so a stalled client holds at most the bound, not the bound twice.
    unwritten: AtomicUsize,
    // The second line on: what publishes do not read.
    /// The connection's task, woken when the queue goes from empty to non-empty or a flag is
    /// set. An `AtomicWaker`: the task is the only waiter, and a `Notify` took a lock shared by
    /// the publishing thread and the task on every wakeup (rooms: 82k -> 64k msgs/s).
    waker: AtomicWaker,
    reason: OnceLock<CloseReason>,
    reauth_due: AtomicBool,
    /// Set on every frame from the client; cleared by each websocket ping round.
    heard: AtomicBool,
    /// When the client last sent a message ([`crate::clock::now_ms`]); the idle timeout runs
    /// from it. Websocket pongs do not count: an abandoned tab still answers them.
    last_active: AtomicU64,
    stats: Arc<Stats>,
}

// Everything a publish touches is in the first cache line of `Inner`.
const _: () = assert!(std::mem::offset_of!(Inner, unwritten) + 8 <= 64);

/// The first allocation of an empty queue: a burst then appends ~10 publish frames before the
/// buffer grows (and copies) again. An idle connection holds none: the queue's buffer leaves
/// with the frames the connection takes.
const FIRST_ALLOCATION: usize = 1024;

/// How much one connection's queue may hold before its client counts as too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    pub frames: usize,
    /// Wire bytes. A frame always fits into an empty queue, so a payload larger than this
    /// still reaches a client that reads.
    pub bytes: usize,
}

impl QueueBound {
    /// A bound in frames only (tests, tools).
    pub fn frames(frames: usize) -> QueueBound {
        QueueBound {
            frames,
            bytes: usize::MAX,
        }
    }
}

/// One subscription's publish frame: the trigger's shared prefix
/// ([`Trigger::frame_prefix`]), the subscription's
/// requestId, and the trigger's position for a subscription with positions.
pub struct Publish<'a> {
    pub prefix: &'a Bytes,
    pub request_id_json: &'a Arc<str>,
    pub position: Option<u64>,
}

impl<'a> Publish<'a> {
    /// The publish frame of `trigger` for one subscription: the shared prefix, its requestId
    /// already encoded as a JSON string, and the trigger's position when the subscription has
    /// positions.
    pub fn new(trigger: &'a Trigger, request_id_json: &'a Arc<str>, positions: bool) -> Self {
        Publish {
            prefix: &trigger.frame_prefix,
            request_id_json,
            position: positions.then_some(trigger.position),
        }
    }
}

/// The queue had no room.
struct Full;

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
    /// A queue holding up to `bound` (each part at most 2^32 - 1).
    pub fn new(bound: QueueBound, stats: Arc<Stats>) -> Outbox {
        Outbox {
            inner: Arc::new(Inner {
                pending: Mutex::new(Pending {
                    max_frames: bound.frames.clamp(1, u32::MAX as usize) as u32,
                    ..Pending::default()
                }),
                max_bytes: bound.bytes.min(u32::MAX as usize) as u32,
                unwritten: AtomicUsize::new(0),
                waker: AtomicWaker::new(),
                closing: AtomicBool::new(false),
                reason: OnceLock::new(),
                reauth_due: AtomicBool::new(false),
                heard: AtomicBool::new(true),
                last_active: AtomicU64::new(crate::clock::now_ms()),
                stats,
            }),
        }
    }

    /// Whether `pending` can take a frame of `payload` more bytes.
    fn has_room(&self, pending: &Pending, payload: usize) -> bool {
        if pending.frames == 0 {
            return true; // a frame always fits into an empty queue
        }
        let queued = pending.len() + self.inner.unwritten.load(Ordering::Relaxed);
        let size = ws::header_len(payload) + payload;
        pending.frames < pending.max_frames
            && queued.saturating_add(size) <= self.inner.max_bytes as usize
    }

    /// Appends one frame made of `parts`; `bounded` refuses it when the queue is full. The
    /// task is woken by the first frame unless `from_task`: the connection's task queues its
    /// own answers while handling input and writes them out right after, and waking a running
    /// task costs a second poll and, often, a wakeup of an idle worker thread.
    fn push(&self, op: u8, parts: &[&[u8]], bounded: bool, from_task: bool) -> bool {
        let mut pending = lock(&self.inner.pending);
        if bounded && !self.has_room(&pending, parts.iter().map(|p| p.len()).sum()) {
            return false;
        }
        let was_empty = pending.frames == 0;
        let bytes = &mut pending.bytes;
        if bytes.capacity() == 0 {
            bytes.reserve(FIRST_ALLOCATION);
        }
        ws::put_frame(bytes, op, parts);
        pending.frames += 1;
        drop(pending);
        // Only the first frame wakes the task: it takes everything queued when it runs.
        if was_empty && !from_task {
            self.inner.waker.wake();
        }
        true
    }

    /// Appends a publish frame, its prefix shared rather than copied when it is large. A
    /// subscription waiting for its gap notice gets nothing before it.
    fn push_publish(&self, frame: &Publish<'_>, from_task: bool) -> Result<(), Full> {
        let mut digits = itoa::Buffer::new();
        let mut tail_buf = [0u8; 32];
        let tail: &[u8] = match frame.position {
            None => b"}",
            Some(position) => {
                let digits = digits.format(position).as_bytes();
                let head = br#","offset":"#;
                let end = head.len() + digits.len();
                tail_buf[..head.len()].copy_from_slice(head);
                tail_buf[head.len()..end].copy_from_slice(digits);
                tail_buf[end] = b'}';
                &tail_buf[..=end]
            }
        };
        let rid = frame.request_id_json.as_bytes();
        let len = frame.prefix.len() + rid.len() + tail.len();
        let mut pending = lock(&self.inner.pending);
        if let (Some(position), true) = (frame.position, pending.has_gaps()) {
            let rid = frame.request_id_json;
            if pending.cold().gaps.iter().any(|(r, _)| **r == **rid) {
                pending.lost(rid, position);
                return Err(Full);
            }
        }
        if !self.has_room(&pending, len) {
            if let (Some(position), false) = (frame.position, from_task) {
                let dropped = pending.drop_positional();
                Stats::add(&self.inner.stats.gap_drops, dropped as u64);
                pending.lost(frame.request_id_json, position);
            }
            return Err(Full);
        }
        let was_empty = pending.frames == 0;
        let start = pending.bytes.len();
        if frame.prefix.len() > SHARE_ABOVE {
            ws::put_header(&mut pending.bytes, opcode::TEXT, len);
            let at = pending.bytes.len();
            let cold = pending.cold();
            cold.shared_len += frame.prefix.len();
            cold.shared.push((at, frame.prefix.clone()));
            pending.bytes.extend_from_slice(rid);
            pending.bytes.extend_from_slice(tail);
        } else {
            if pending.bytes.capacity() == 0 {
                pending.bytes.reserve(FIRST_ALLOCATION);
            }
            ws::put_frame(&mut pending.bytes, opcode::TEXT, &[frame.prefix, rid, tail]);
        }
        if let Some(position) = frame.position {
            let end = pending.bytes.len();
            pending.cold().marks.push(Mark {
                start,
                end,
                request_id_json: frame.request_id_json.clone(),
                position,
            });
        }
        pending.frames += 1;
        drop(pending);
        if was_empty && !from_task {
            self.inner.waker.wake();
        }
        Ok(())
    }

    /// Queues a publish frame without waiting; returns whether it was queued. When the queue
    /// is full, a subscription without positions disconnects the client as too slow (1013);
    /// for one with positions the queued publishes of every subscription with positions are
    /// dropped, and each that lost any gets a gap notice instead (PROTOCOL.md section 7): the
    /// connection stays open. The caller counts queued
    /// frames in `ws_messages_send_queued`, once per fan-out: one shared counter bumped per
    /// subscriber bounced its cache line between the cores on every frame.
    pub fn try_publish(&self, frame: &Publish<'_>) -> bool {
        if self.is_closing() {
            return false;
        }
        if self.push_publish(frame, false).is_ok() {
            return true;
        }
        let stats = &self.inner.stats;
        match frame.position {
            // Recorded for its gap notice by `push_publish`, with the queued ones it dropped.
            Some(_) => Stats::incr(&stats.gap_drops),
            None => {
                Stats::incr(&stats.ws_messages_send_error);
                if self.close(SLOW_CLIENT) {
                    Stats::incr(&stats.slow_client_disconnects);
                    tracing::info!("outgoing queue full: disconnecting slow client");
                }
            }
        }
        false
    }

    /// Queues a replayed publish from the connection's own task if there is room; a full
    /// queue leaves it for later (the replay goes on as the client reads), never a close.
    pub fn push_replayed(&self, frame: &Publish<'_>) -> bool {
        !self.is_closing() && self.push_publish(frame, true).is_ok()
    }

    /// Queues an answer to the client's own request, from the connection's task (no wakeup:
    /// the task writes it out next). Not bounded here: the connection stops reading the
    /// client while its socket is full, so answers cannot pile up.
    pub fn push_reply(&self, text: &str) {
        self.push(opcode::TEXT, &[text.as_bytes()], false, true);
    }

    /// Queues a notice from outside the connection's task (a gap notice when the shared log
    /// lost triggers), waking the task. Not bounded: at most one per subscription per loss.
    pub fn push_notice(&self, text: &str) {
        self.push(opcode::TEXT, &[text.as_bytes()], false, false);
    }

    /// Queues a control frame (ping, pong) if there is room; dropping one when the queue is
    /// full is harmless, as a full queue already means the client is being dealt with.
    /// `from_task` as for [`Outbox::push_reply`].
    pub fn push_control(&self, op: u8, payload: &[u8], from_task: bool) {
        self.push(op, &[payload], true, from_task);
    }

    /// Moves every queued frame into the empty `into`, gap notices last; returns how many
    /// frames moved. They count against the byte bound until [`Outbox::written`].
    pub fn take(&self, into: &mut Wire) -> usize {
        debug_assert!(into.is_empty());
        let mut pending = lock(&self.inner.pending);
        std::mem::swap(&mut pending.bytes, &mut into.bytes);
        let mut frames = std::mem::take(&mut pending.frames) as usize;
        if let Some(cold) = pending.cold.as_mut() {
            std::mem::swap(&mut cold.shared, &mut into.shared);
            into.set_shared_len(std::mem::take(&mut cold.shared_len));
            cold.marks.clear();
            if !cold.gaps.is_empty() {
                let gaps = std::mem::take(&mut cold.gaps);
                drop(pending);
                Stats::add(&self.inner.stats.gap_notices, gaps.len() as u64);
                for (rid, position) in &gaps {
                    let notice = crate::protocol::gap(rid, *position);
                    ws::put_frame(into.bytes_mut(), opcode::TEXT, &[notice.as_bytes()]);
                }
                frames += gaps.len();
            }
        }
        if !into.is_empty() {
            self.inner.unwritten.store(into.len(), Ordering::Relaxed);
        }
        frames
    }

    /// The bytes of the last [`Outbox::take`] are all written.
    pub fn written(&self) {
        if self.inner.unwritten.load(Ordering::Relaxed) != 0 {
            self.inner.unwritten.store(0, Ordering::Relaxed);
        }
    }

    /// Drops every queued frame (a slow client's backlog).
    pub fn discard(&self) {
        let mut pending = lock(&self.inner.pending);
        *pending = Pending {
            max_frames: pending.max_frames,
            ..Pending::default()
        };
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
    use std::io::IoSlice;

    fn frames(wire: &Wire) -> Vec<(u8, Vec<u8>)> {
        crate::ws::server_frames(&wire.to_vec())
    }

    fn texts(outbox: &Outbox) -> Vec<String> {
        let mut wire = Wire::default();
        outbox.take(&mut wire);
        outbox.written();
        frames(&wire)
            .into_iter()
            .map(|(_, p)| String::from_utf8(p).expect("utf-8"))
            .collect()
    }

    fn publish(outbox: &Outbox, prefix: &str, rid: &str, position: Option<u64>) -> bool {
        let prefix = Bytes::from(prefix.to_string());
        let rid: Arc<str> = format!("{rid:?}").into();
        outbox.try_publish(&Publish {
            prefix: &prefix,
            request_id_json: &rid,
            position,
        })
    }

    #[test]
    fn frames_queue_in_order_and_leave_in_one_take() {
        let outbox = Outbox::new(QueueBound::frames(3), Arc::new(Stats::new()));
        assert!(publish(&outbox, r#"{"a":"#, "r1", None));
        outbox.push_reply("answer");
        outbox.push_control(opcode::PING, b"", false);
        let mut wire = Wire::default();
        assert_eq!(outbox.take(&mut wire), 3);
        assert_eq!(
            frames(&wire),
            vec![
                (opcode::TEXT, br#"{"a":"r1"}"#.to_vec()),
                (opcode::TEXT, b"answer".to_vec()),
                (opcode::PING, Vec::new()),
            ]
        );
        let mut again = Wire::default();
        assert_eq!(outbox.take(&mut again), 0);
        assert!(again.is_empty());
    }

    #[test]
    fn a_full_queue_closes_the_client_as_slow() {
        let stats = Arc::new(Stats::new());
        let outbox = Outbox::new(QueueBound::frames(2), stats.clone());
        assert!(publish(&outbox, "{", "1", None));
        assert!(publish(&outbox, "{", "2", None));
        assert!(!publish(&outbox, "{", "3", None));
        assert_eq!(outbox.close_reason(), Some(SLOW_CLIENT));
        assert!(!publish(&outbox, "{", "4", None));
        assert_eq!(stats.slow_client_disconnects.load(Ordering::Relaxed), 1);
        // The first reason stays.
        assert!(!outbox.close(CloseReason {
            code: 1000,
            reason: "x"
        }));
        assert_eq!(outbox.close_reason(), Some(SLOW_CLIENT));
    }

    #[test]
    fn the_byte_bound_binds_but_one_frame_always_fits() {
        let big = "x".repeat(3000);
        let bound = QueueBound {
            frames: 100,
            bytes: 4096,
        };
        let outbox = Outbox::new(bound, Arc::new(Stats::new()));
        // Larger than the bound, into an empty queue: it goes.
        assert!(publish(&outbox, &"y".repeat(10_000), "r", None));
        assert_eq!(texts(&outbox).len(), 1);
        assert!(publish(&outbox, &big, "r", None));
        assert!(!publish(&outbox, &big, "r", None));
        assert_eq!(outbox.close_reason(), Some(SLOW_CLIENT));
    }

    #[test]
    fn bytes_taken_and_not_yet_written_count_against_the_bound() {
        let big = "x".repeat(3000);
        let bound = QueueBound {
            frames: 100,
            bytes: 8192,
        };
        let outbox = Outbox::new(bound, Arc::new(Stats::new()));
        assert!(publish(&outbox, &big, "r", None));
        assert!(publish(&outbox, &big, "r", None));
        outbox.take(&mut Wire::default());
        assert!(publish(&outbox, &big, "r", None));
        // 6 KB unwritten + 3 KB queued + 3 KB more > 8 KiB.
        assert!(!publish(&outbox, &big, "r", None));
        let again = Outbox::new(bound, Arc::new(Stats::new()));
        assert!(publish(&again, &big, "r", None));
        assert!(publish(&again, &big, "r", None));
        again.take(&mut Wire::default());
        again.written();
        assert!(publish(&again, &big, "r", None));
        assert!(publish(&again, &big, "r", None));
    }

    #[test]
    fn large_payloads_are_shared_not_copied_and_go_out_whole() {
        let outbox = Outbox::new(QueueBound::frames(10), Arc::new(Stats::new()));
        let data = "z".repeat(SHARE_ABOVE + 1);
        let prefix = Bytes::from(format!(r#"{{"data":"{data}","requestId":"#));
        let rid: Arc<str> = r#""r1""#.into();
        for position in [None, Some(7)] {
            let frame = Publish {
                prefix: &prefix,
                request_id_json: &rid,
                position,
            };
            assert!(outbox.try_publish(&frame));
        }
        outbox.push_reply("after");
        let mut wire = Wire::default();
        outbox.take(&mut wire);
        assert_eq!(wire.shared.len(), 2);
        assert!(wire.bytes.len() < 100, "the payload was copied");
        let got: Vec<String> = frames(&wire)
            .into_iter()
            .map(|(_, p)| String::from_utf8(p).expect("utf-8"))
            .collect();
        assert_eq!(
            got,
            vec![
                format!(r#"{{"data":"{data}","requestId":"r1"}}"#),
                format!(r#"{{"data":"{data}","requestId":"r1","offset":7}}"#),
                "after".to_string(),
            ]
        );
        // Written from any position, in pieces.
        let whole = wire.to_vec();
        for from in [0, 1, 4, 5, whole.len() / 2, whole.len() - 1] {
            let mut slices = [IoSlice::new(&[]); 8];
            let n = wire.slices(from, &mut slices);
            let rest: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(rest, whole[from..], "from {from}");
        }
    }

    #[test]
    fn subscriptions_with_positions_get_a_gap_notice_instead_of_a_close() {
        let stats = Arc::new(Stats::new());
        let outbox = Outbox::new(QueueBound::frames(4), stats.clone());
        let big = format!(r#"{{"big":"{}","#, "x".repeat(SHARE_ABOVE));
        assert!(publish(&outbox, r#"{"p":"#, "a", Some(1)));
        assert!(publish(&outbox, r#"{"p":"#, "plain", None));
        assert!(publish(&outbox, &big, "b", Some(2)));
        outbox.push_reply("answer");
        // Full: the queued publishes with positions go, the others stay in order.
        assert!(!publish(&outbox, r#"{"p":"#, "a", Some(3)));
        assert!(!publish(&outbox, r#"{"p":"#, "b", Some(4)));
        assert!(!publish(&outbox, r#"{"p":"#, "a", Some(5)));
        assert!(!outbox.is_closing());
        assert_eq!(
            texts(&outbox),
            vec![
                r#"{"p":"plain"}"#,
                "answer",
                r#"{"type":"gap","requestId":"a","offset":5}"#,
                r#"{"type":"gap","requestId":"b","offset":4}"#,
            ]
        );
        assert_eq!(stats.gap_notices.load(Ordering::Relaxed), 2);
        assert_eq!(stats.gap_drops.load(Ordering::Relaxed), 5);
        // After the notice, publishes flow again.
        assert!(publish(&outbox, r#"{"p":"#, "a", Some(6)));
        assert_eq!(texts(&outbox), vec![r#"{"p":"a","offset":6}"#]);
        // A plain subscription on the same connection still closes it when it loses one.
        for _ in 0..4 {
            assert!(publish(&outbox, "{", "c", None));
        }
        assert!(!publish(&outbox, "{", "c", None));
        assert_eq!(outbox.close_reason(), Some(SLOW_CLIENT));
    }

    #[test]
    fn replayed_publishes_wait_for_room_and_never_close() {
        let outbox = Outbox::new(QueueBound::frames(1), Arc::new(Stats::new()));
        let prefix = Bytes::from_static(br#"{"p":"#);
        let rid: Arc<str> = r#""a""#.into();
        let frame = |position| Publish {
            prefix: &prefix,
            request_id_json: &rid,
            position: Some(position),
        };
        assert!(outbox.push_replayed(&frame(1)));
        assert!(!outbox.push_replayed(&frame(2)));
        assert!(!outbox.is_closing());
        assert_eq!(texts(&outbox), vec![r#"{"p":"a","offset":1}"#]);
        assert!(outbox.push_replayed(&frame(2)));
    }
}
