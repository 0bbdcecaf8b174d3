//! The shared stream (`amqp_stream`): one durable RabbitMQ stream that every node reads, so a
//! trigger has the same position on every node and a client resumes on any of them
//! (PROTOCOL.md section 7, docs/scale-out.md).
//!
//! # One session (one broker connection)
//! 1. Declare the stream (durable, `x-queue-type: stream`, retention by age and size) and bind
//!    it to the exchange with routing key `*`: it receives exactly what 3.1's backends publish.
//! 2. Find the stream's epoch in the stream itself ([`epoch`]).
//! 3. Start reading: right after the last offset taken in, if the node already holds this
//!    epoch (a reconnect: nothing between is skipped); otherwise from "now − history ttl" (a
//!    start, or a stream recreated meanwhile), **warming** the history without delivering
//!    anything live, up to a probe published at the start of the session: that was the tail.
//!    Then the history is swapped in under the sequencer's lock ([`Sequencer::adopt`]) and
//!    the node is ready (`/readyz`).
//! 4. Follow the tail: each trigger goes in at its position ([`Sequencer::publish_at`]).
//!    Every [`MARK_INTERVAL`] the node publishes a mark (keeping the epoch alive in the
//!    stream) and measures, by reading it back, how far behind the tail it reads.
//!
//! # Positions
//! A trigger's position is its stream offset **plus one**, so that 0 keeps meaning "before
//! anything" (an offset-0 trigger would otherwise be indistinguishable from "nothing taken
//! in"). Markers and bad messages take offsets too: positions increase, with holes.
//!
//! # One trigger per message
//! A message body that is a list of several triggers is refused (counted and logged like any
//! bad message): its triggers would share one offset, and the protocol's positions are
//! integers that strictly increase per subscription. 3.1's backends, our Python publisher and
//! our own `/trigger/` publish-through all send one trigger per message.
//!
//! # Losses
//! A node that comes back after the stream dropped what it had not read yet (it was away
//! longer than the retention) declares those positions lost ([`Sequencer::lose_through`]):
//! resumes from before them get `recovered:false`, live subscriptions with positions a gap
//! notice. A node that finds another epoch (the stream was deleted and recreated) warms again
//! and closes its subscriptions with positions ([`crate::sequencer::EPOCH_CHANGED`]): they
//! resume, and are told to refetch.
//!
//! The session needs the `amqp` feature; [`StreamStatus`] and the retention constants are in
//! every build (status, `/metrics` and the config checks read them).
#![cfg_attr(
    not(feature = "amqp"),
    allow(dead_code, reason = "without `amqp` no session sets the status")
)]

#[cfg(feature = "amqp")]
mod epoch;
#[cfg(feature = "amqp")]
mod marker;
#[cfg(feature = "amqp")]
mod session;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

#[cfg(feature = "amqp")]
pub(crate) use self::session::Session;
use crate::sweeper::now_ms;

/// The stream's segment size (`x-stream-max-segment-size-bytes`). Retention drops whole
/// segments, oldest first, and never the one being written: the stream holds its size bound
/// plus up to one segment, and its age bound plus the time one segment takes to fill.
/// RabbitMQ's default (500 MB) would make retention that coarse; 64 MiB fills in ~3 minutes at
/// 1,000 triggers/s of ~300 bytes, hours at a few per second (then the stream keeps more than
/// `amqp_stream_max_age`, which only costs disk up to the size bound).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How often a node publishes a mark: the epoch stays in the stream while any node runs
/// (retention needs `amqp_stream_max_age` without one to drop them all), finding the epoch
/// reads at most this long of triggers, and the lag is measured this often. Three nodes add
/// 0.6 messages/s of ~200 bytes to the stream.
pub const MARK_INTERVAL: Duration = Duration::from_secs(5);
/// How much further back than "now − history ttl" a warm-up starts reading: the start is a
/// timestamp on the broker's clock, computed on the node's, and the warm-up must not start
/// after its own probe; so node and broker clocks may differ by this much. 30 s of extra
/// reading is cheap, and what it reads is older than the ttl (let go of at once).
const WARM_START_MARGIN: Duration = Duration::from_secs(30);
/// Marks published but not read back that the lag measurement remembers (12 minutes of
/// them): beyond that the node is so far behind that the oldest one says enough.
const MAX_UNREAD_MARKS: usize = 144;

/// Values of [`StreamStatus::state`].
const COLD: u8 = 0;
const WARMING: u8 = 1;
const WARM: u8 = 2;

/// A random id: `s…` an epoch, `p…` a probe, `n…` a node.
fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Where the node stands in the stream: what it resumes from, and what status, `/readyz` and
/// `/metrics` show. Plain atomics, and one short lock for the cursor (never across `.await`).
#[derive(Debug)]
pub struct StreamStatus {
    pub name: String,
    /// Names this node's marks, so it recognises its own when it reads them back.
    node_id: String,
    /// The epoch the node holds, and the last stream offset it took in within it.
    cursor: Mutex<Option<(Arc<str>, Option<u64>)>>,
    state: AtomicU8,
    /// The last (or running) warm-up: messages read, and how long it took (ms).
    warm_read: AtomicU64,
    warm_ms: AtomicU64,
    /// Messages read to find the epoch, at the last connection.
    epoch_read: AtomicU64,
    /// When the oldest of the node's marks not yet read back was published (ms); 0: none.
    oldest_unread_mark: AtomicU64,
    pub epoch_changes: AtomicU64,
    /// Times the stream no longer held what the node had not read yet.
    pub losses: AtomicU64,
}

impl StreamStatus {
    pub fn new(name: &str) -> StreamStatus {
        StreamStatus {
            name: name.to_string(),
            node_id: new_id("n"),
            cursor: Mutex::new(None),
            state: AtomicU8::new(COLD),
            warm_read: AtomicU64::new(0),
            warm_ms: AtomicU64::new(0),
            epoch_read: AtomicU64::new(0),
            oldest_unread_mark: AtomicU64::new(0),
            epoch_changes: AtomicU64::new(0),
            losses: AtomicU64::new(0),
        }
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Option<(Arc<str>, Option<u64>)>> {
        self.cursor.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the node's history is warm: it holds the stream's last ttl (`/readyz`).
    pub fn is_warm(&self) -> bool {
        self.state.load(Ordering::Relaxed) == WARM
    }

    /// The stream offset the node last took in, when it holds `epoch`.
    fn resume_point(&self, epoch: &str) -> Option<u64> {
        match &*self.cursor() {
            Some((held, offset)) if **held == *epoch => *offset,
            _ => None,
        }
    }

    /// How far behind the tail the node reads, in ms: the age of its oldest mark not yet read
    /// back (0 when it has read them all).
    pub fn lag_ms(&self) -> u64 {
        match self.oldest_unread_mark.load(Ordering::Relaxed) {
            0 => 0,
            sent => now_ms().saturating_sub(sent),
        }
    }

    /// The last stream offset taken in, if any.
    pub fn offset(&self) -> Option<u64> {
        self.cursor().as_ref().and_then(|(_, offset)| *offset)
    }

    /// The status object's `stream` entry.
    pub fn status(&self, connected: bool) -> Value {
        let (epoch, offset) = match &*self.cursor() {
            Some((epoch, offset)) => (Some(epoch.to_string()), *offset),
            None => (None, None),
        };
        let state = match self.state.load(Ordering::Relaxed) {
            COLD => "cold",
            WARMING => "warming",
            _ => "warm",
        };
        json!({
            "name": self.name,
            "epoch": epoch,
            "offset": offset,
            "lag_ms": connected.then(|| self.lag_ms()),
            "warm_up": {
                "state": state,
                "read": self.warm_read.load(Ordering::Relaxed),
                "ms": self.warm_ms.load(Ordering::Relaxed),
            },
            "epoch_read": self.epoch_read.load(Ordering::Relaxed),
            "epoch_changes": self.epoch_changes.load(Ordering::Relaxed),
            "losses": self.losses.load(Ordering::Relaxed),
        })
    }
}
