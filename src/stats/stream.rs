//! Where the node stands in the shared stream (`amqp_stream`): written by the stream source
//! (`sources::stream`), read by the status answer, `/readyz` and `/metrics`. Here, below the
//! node, so the node can hold it without knowing the source.
#![cfg_attr(
    not(feature = "amqp"),
    allow(
        dead_code,
        reason = "without `amqp` no stream session writes or resumes from it"
    )
)]

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Value};

use crate::clock::now_ms;

/// Values of [`StreamStatus::state`].
pub(crate) const COLD: u8 = 0;
pub(crate) const WARMING: u8 = 1;
pub(crate) const WARM: u8 = 2;

/// Where the node stands in the stream: what it resumes from, and what status, `/readyz` and
/// `/metrics` show. Plain atomics, and one short lock for the cursor (never across `.await`).
#[derive(Debug)]
pub struct StreamStatus {
    pub name: String,
    /// Names this node's marks, so it recognises its own when it reads them back.
    pub(crate) node_id: String,
    /// The epoch the node holds, and the last stream offset it took in within it.
    pub(crate) cursor: Mutex<Option<(Arc<str>, Option<u64>)>>,
    pub(crate) state: AtomicU8,
    /// The last (or running) warm-up: messages read, and how long it took (ms).
    pub(crate) warm_read: AtomicU64,
    pub(crate) warm_ms: AtomicU64,
    /// Messages read to find the epoch, at the last connection.
    pub(crate) epoch_read: AtomicU64,
    /// When the oldest of the node's marks not yet read back was published (ms); 0: none.
    pub(crate) oldest_unread_mark: AtomicU64,
    pub epoch_changes: AtomicU64,
    /// Times the stream no longer held what the node had not read yet.
    pub losses: AtomicU64,
}

impl StreamStatus {
    pub fn new(name: &str, node_id: String) -> StreamStatus {
        StreamStatus {
            name: name.to_string(),
            node_id,
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

    pub(crate) fn cursor(&self) -> std::sync::MutexGuard<'_, Option<(Arc<str>, Option<u64>)>> {
        self.cursor.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the node's history is warm: it holds the stream's last ttl (`/readyz`).
    pub fn is_warm(&self) -> bool {
        self.state.load(Ordering::Relaxed) == WARM
    }

    /// The stream offset the node last took in, when it holds `epoch`.
    pub(crate) fn resume_point(&self, epoch: &str) -> Option<u64> {
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
