//! The order of a node's triggers: every trigger taken in gets the next position, is appended
//! to the history and fanned out, in that order, under one lock (PROTOCOL.md section 7).
//!
//! # Why one lock
//! Offsets on a subscription must strictly increase, and a subscription that joins or finishes
//! its recovery must start live exactly after the last position it was given: no hole, no
//! duplicate. Both hold if taking a position, appending it and fanning it out is one step that
//! subscribes with positions cannot fall between. The lock is a `std::sync::Mutex`, held for
//! one batch's fan-out and never across an `.await`; 3.1 subscriptions (no positions) never
//! take it, and fan-outs from several sources, which ran in parallel before, now take turns
//! (each is already parallel across the connections' own tasks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::history::{History, HistoryLimits};
use crate::hub::{Hub, Subscriber, SubscriptionId};
use crate::protocol::{Since, Trigger};
use crate::room::Room;
use crate::sweeper::now_ms;

/// Why a resume could not be proven complete (`recovered:false`), a bounded metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecovered {
    /// The position is of another epoch (another process run, another log).
    Epoch,
    /// Triggers after it were let go (ttl or memory bound).
    Expired,
    /// The position is newer than anything taken in.
    Future,
    /// History is turned off.
    Off,
}

/// The answer to a subscribe with positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The newest position taken in when the subscription joined.
    pub top: u64,
    /// For a resume: whether what it missed will be replayed.
    pub recovered: Option<Result<(), NotRecovered>>,
}

/// The next step of a recovery.
pub enum Replay {
    /// Missed triggers to send, oldest first; ask again after them.
    Triggers(Vec<Arc<Trigger>>),
    /// Triggers after the cursor were let go before they could be sent: the client is told
    /// (a gap notice) and the replay goes on after `through`.
    Lost { through: u64 },
    /// Nothing more to replay: the subscription is live from here on.
    Live,
}

struct Log {
    top: u64,
    history: History,
}

/// The node's sequence of triggers.
pub struct Sequencer {
    epoch: Arc<str>,
    log: Mutex<Log>,
}

impl Sequencer {
    /// A sequence of its own: a new epoch for every process run.
    pub fn new(limits: HistoryLimits) -> Sequencer {
        Sequencer {
            epoch: format!("n{}", uuid::Uuid::new_v4().simple()).into(),
            log: Mutex::new(Log {
                top: 0,
                history: History::new(limits),
            }),
        }
    }

    // A panic under the lock leaves at worst a trigger half fanned out; the positions and the
    // history stay consistent, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// Takes in `triggers` in order: a position each, the history, the fan-out. Returns the
    /// subscriptions reached.
    pub fn publish(&self, triggers: Vec<Trigger>, hub: &Hub) -> usize {
        let now = now_ms();
        let mut log = self.lock();
        let mut reached = 0;
        for mut trigger in triggers {
            log.top += 1;
            trigger.position = log.top;
            let trigger = Arc::new(trigger);
            reached += hub.publish(&trigger);
            log.history.append(trigger, now);
        }
        reached
    }

    /// Adds a subscription with positions to the hub. With `since`, a subscription whose
    /// missed triggers can be replayed joins the hub still replaying (`replaying` set: live
    /// fan-out skips it until [`Sequencer::replay`] says it is live); otherwise it is live at
    /// once, from the returned top on.
    /// `answer` runs under the lock, after the subscription joined and before any publish
    /// can reach it: the answer goes out first.
    #[allow(clippy::too_many_arguments)] // one step, every part of it named
    pub fn subscribe(
        &self,
        hub: &Hub,
        room: &Room,
        id: SubscriptionId,
        subscriber: Subscriber,
        since: Option<&Since>,
        replaying: &AtomicBool,
        answer: impl FnOnce(&Joined),
    ) -> Joined {
        let mut log = self.lock();
        log.history.expire(now_ms());
        let recovered = since.map(|since| {
            if *since.epoch != *self.epoch {
                Err(NotRecovered::Epoch)
            } else if since.offset > log.top {
                Err(NotRecovered::Future)
            } else if !log.history.enabled() {
                Err(NotRecovered::Off)
            } else if !log.history.holds_after(since.offset) {
                Err(NotRecovered::Expired)
            } else {
                Ok(())
            }
        });
        replaying.store(matches!(recovered, Some(Ok(()))), Ordering::Relaxed);
        hub.subscribe(room, id, subscriber);
        let joined = Joined {
            top: log.top,
            recovered,
        };
        answer(&joined);
        joined
    }

    /// The next triggers after `after` matching `room`, up to `max`; when there are none, the
    /// subscription goes live (`replaying` cleared) in the same step, so that nothing taken
    /// in meanwhile is missed or sent twice.
    pub fn replay(&self, room: &Room, after: u64, max: usize, replaying: &AtomicBool) -> Replay {
        let mut log = self.lock();
        log.history.expire(now_ms());
        if !log.history.holds_after(after) {
            return Replay::Lost {
                through: log.history.lost_through(),
            };
        }
        let triggers = log.history.matching_after(room, after, max);
        if triggers.is_empty() {
            replaying.store(false, Ordering::Relaxed);
            Replay::Live
        } else {
            Replay::Triggers(triggers)
        }
    }

    /// The newest position, and the history's entries and cost.
    pub fn sizes(&self) -> (u64, usize, usize) {
        let log = self.lock();
        (log.top, log.history.len(), log.history.bytes())
    }
}
