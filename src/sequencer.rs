//! The order of a node's triggers: every trigger taken in gets the next position, is appended
//! to the history and fanned out, in that order, under one lock (PROTOCOL.md section 7).
//!
//! # Why one lock
//! Offsets on a subscription must strictly increase, and a subscription that joins or finishes
//! its recovery must start live exactly after the last position it was given: no hole, no
//! duplicate. Both hold if taking a position, appending it and fanning it out is one step that
//! subscribes with positions cannot fall between. The lock is a `std::sync::Mutex`, held for
//! one step of a batch's fan-out ([`PUBLISH_STEP`]) and never across an `.await`; 3.1 subscriptions (no positions) never
//! take it, and fan-outs from several sources, which ran in parallel before, now take turns
//! (each is already parallel across the connections' own tasks).
//!
//! # Two kinds of sequence
//! A node alone numbers its triggers itself ([`Sequencer::publish`]) in an epoch of its own.
//! With a shared stream (`amqp_stream`, read by `sources::stream`) the stream numbers them:
//! the consumer hands each trigger in with its position ([`Sequencer::publish_at`]), the
//! epoch is the stream's ([`Sequencer::adopt`]), and positions the stream no longer holds are
//! declared lost ([`Sequencer::lose_through`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::clock::now_ms;
use crate::history::{History, HistoryLimits};
use crate::hub::{Hub, Subscriber, SubscriptionId};
use crate::outbox::{close_code, CloseReason};
use crate::protocol::{Joined, NotRecovered, Since, Trigger};
use crate::room::Room;

/// The work a batch does between two yields to the runtime ([`Sequencer::publish_yielding`]):
/// one unit per trigger (position, history entry, room lookup) and one per subscription it
/// reaches (a frame queued). Counting frames too keeps a step short when each trigger reaches
/// many subscribers. With 1,024, a client's round trip during 10,000-trigger batches went from
/// 64 to 17 ms at p99 without lowering the triggers/s (BENCHMARKS.md, "Batches"); other step
/// sizes were not measured.
pub const PUBLISH_STEP: usize = 1_024;

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

/// Why subscriptions with positions are closed when the epoch changes under them (the shared
/// stream was recreated, or its epoch became known after they joined): their next publishes
/// would carry positions of another sequence. 1012 (service restart): the client reconnects
/// and resumes, and learns from `recovered:false` that it must refetch.
pub const EPOCH_CHANGED: CloseReason = CloseReason {
    code: close_code::SERVICE_RESTART,
    reason: "epoch-changed",
};

struct Log {
    epoch: Arc<str>,
    top: u64,
    history: History,
}

/// The node's sequence of triggers.
pub struct Sequencer {
    log: Mutex<Log>,
}

impl Sequencer {
    /// A sequence of its own: a new epoch for every process run.
    pub fn new(limits: HistoryLimits) -> Sequencer {
        Sequencer {
            log: Mutex::new(Log {
                epoch: format!("n{}", uuid::Uuid::new_v4().simple()).into(),
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

    /// The epoch now (it changes when the node adopts a shared stream's).
    pub fn epoch(&self) -> Arc<str> {
        self.lock().epoch.clone()
    }

    /// Takes in `triggers` in order: a position each, the history, the fan-out, all under one
    /// hold of the lock. Returns the subscriptions reached.
    pub fn publish(&self, triggers: Vec<Trigger>, hub: &Hub) -> usize {
        self.publish_step(&mut triggers.into_iter(), hub, usize::MAX)
    }

    /// Takes in `triggers` in order as [`Sequencer::publish`] does, but a step of
    /// [`PUBLISH_STEP`] work at a time, yielding to the runtime between steps: a batch of
    /// 10,000 triggers does not hold a worker (and the lock) until it is done, so the
    /// connections on that worker, and subscribes waiting for the lock, take their turn.
    /// Each trigger still takes its position, history entry and fan-out in one step; another
    /// batch may take positions between two steps of this one.
    pub async fn publish_yielding(&self, triggers: Vec<Trigger>, hub: &Hub) -> usize {
        let mut triggers = triggers.into_iter();
        let mut reached = self.publish_step(&mut triggers, hub, PUBLISH_STEP);
        while triggers.len() > 0 {
            tokio::task::yield_now().await;
            reached += self.publish_step(&mut triggers, hub, PUBLISH_STEP);
        }
        reached
    }

    /// Takes in triggers from `triggers` in order under one hold of the lock, until they run
    /// out or `budget` work was done (one unit per trigger and one per subscription reached).
    fn publish_step(
        &self,
        triggers: &mut std::vec::IntoIter<Trigger>,
        hub: &Hub,
        budget: usize,
    ) -> usize {
        let now = now_ms();
        let mut log = self.lock();
        let (mut reached, mut work) = (0, 0);
        while work < budget {
            let Some(mut trigger) = triggers.next() else {
                break;
            };
            log.top += 1;
            trigger.position = log.top;
            let trigger = Arc::new(trigger);
            let n = hub.publish(&trigger);
            log.history.append(trigger, now);
            reached += n;
            work += 1 + n;
        }
        reached
    }

    /// Takes in `trigger` at `position`, given by a shared log, taken in at `now_ms`: the
    /// history, then the fan-out. A position at or below the newest one is a trigger already
    /// taken in (a log read again from before where it stopped): skipped, so positions never
    /// go backwards. Returns the subscriptions reached, `None` when skipped.
    pub fn publish_at(&self, mut trigger: Trigger, position: u64, hub: &Hub) -> Option<usize> {
        let mut log = self.lock();
        if position <= log.top {
            return None;
        }
        log.top = position;
        trigger.position = position;
        let trigger = Arc::new(trigger);
        let reached = hub.publish(&trigger);
        log.history.append(trigger, now_ms());
        Some(reached)
    }

    /// Takes on the shared log's `epoch`, with the `history` warmed from it and its newest
    /// position `top`. When the epoch is another than the one in force, every subscription
    /// with positions is closed ([`EPOCH_CHANGED`]) in the same step, before any publish of
    /// the new epoch can reach it. Returns whether the epoch changed.
    pub fn adopt(&self, epoch: Arc<str>, history: History, top: u64, hub: &Hub) -> bool {
        let mut log = self.lock();
        let changed = log.epoch != epoch;
        if changed {
            hub.for_each_positioned(|subscriber| {
                subscriber.outbox.close(EPOCH_CHANGED);
            });
            log.epoch = epoch;
        }
        log.history = history;
        log.top = top;
        changed
    }

    /// The shared log no longer holds the positions up to `through` that the node had not
    /// taken in yet (it was away longer than the log's retention): they are lost. A resume
    /// from before them gets `recovered:false`, and every live subscription with positions
    /// gets a gap notice, as it may have lost publishes. Nothing happens when `through` is not
    /// above the newest position.
    pub fn lose_through(&self, through: u64, hub: &Hub) {
        let mut log = self.lock();
        if through <= log.top {
            return;
        }
        log.top = through;
        log.history.lose_through(through);
        hub.for_each_positioned(|subscriber| {
            let replaying = subscriber.positions.as_ref();
            // A replaying subscription finds the loss in the history and says so itself.
            if !replaying.is_some_and(|r| r.load(Ordering::Relaxed)) {
                subscriber
                    .outbox
                    .push_notice(&crate::protocol::gap(&subscriber.request_id_json, through));
            }
        });
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
            if *since.epoch != *log.epoch {
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
            epoch: log.epoch.clone(),
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

    /// The history's limits, for a history warmed outside the lock.
    pub fn limits(&self) -> HistoryLimits {
        self.lock().history.limits()
    }

    /// The newest position, and the history's entries and cost.
    pub fn sizes(&self) -> (u64, usize, usize) {
        let log = self.lock();
        (log.top, log.history.len(), log.history.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbox, QueueBound, Wire};
    use crate::room::RoomLimits;
    use crate::stats::Stats;
    use serde_json::json;
    use std::time::Duration;

    const LIMITS: HistoryLimits = HistoryLimits {
        ttl: Duration::from_secs(60),
        memory: 1 << 20,
    };

    fn room() -> Room {
        Room::parse(&json!({"chat": "1"}), &RoomLimits::default()).expect("room")
    }

    fn trigger(n: u64) -> Trigger {
        let body = json!({"rooms": [{"chat": "1"}], "data": n}).to_string();
        Trigger::parse(body.as_bytes(), &RoomLimits::default()).expect("trigger")
    }

    /// A subscription with positions, live, and its outbox.
    fn positioned(sequencer: &Sequencer, hub: &Hub) -> Outbox {
        let outbox = Outbox::new(QueueBound::frames(64), Arc::new(Stats::new()));
        let subscriber = Subscriber {
            outbox: outbox.clone(),
            request_id_json: "\"r\"".into(),
            positions: Some(Arc::new(AtomicBool::new(false))),
        };
        let replaying = AtomicBool::new(false);
        sequencer.subscribe(hub, &room(), 1, subscriber, None, &replaying, |_| {});
        outbox
    }

    fn queued(outbox: &Outbox) -> String {
        let mut wire = Wire::default();
        outbox.take(&mut wire);
        String::from_utf8_lossy(&wire.to_vec()).into_owned()
    }

    #[test]
    fn positions_from_a_shared_log_never_go_backwards() {
        let (sequencer, hub) = (Sequencer::new(LIMITS), Hub::new());
        let outbox = positioned(&sequencer, &hub);
        assert_eq!(sequencer.publish_at(trigger(1), 10, &hub), Some(1));
        assert_eq!(sequencer.publish_at(trigger(1), 10, &hub), None, "again");
        assert_eq!(sequencer.publish_at(trigger(0), 7, &hub), None, "older");
        assert_eq!(sequencer.publish_at(trigger(2), 12, &hub), Some(1));
        let text = queued(&outbox);
        assert!(
            text.contains(r#""data":1,"requestId":"r","offset":10}"#),
            "{text}"
        );
        assert!(text.contains(r#""offset":12}"#) && !text.contains(r#""offset":7}"#));
        assert_eq!(sequencer.sizes().0, 12);
    }

    #[test]
    fn a_loss_in_the_log_is_a_gap_notice_and_not_recovered() {
        let (sequencer, hub) = (Sequencer::new(LIMITS), Hub::new());
        let outbox = positioned(&sequencer, &hub);
        sequencer.publish_at(trigger(1), 3, &hub);
        queued(&outbox);
        sequencer.lose_through(9, &hub);
        let text = queued(&outbox);
        assert!(
            text.ends_with(r#"{"type":"gap","requestId":"r","offset":9}"#),
            "{text}"
        );
        sequencer.lose_through(5, &hub);
        assert_eq!(queued(&outbox), "", "nothing new was lost");
        let epoch = sequencer.epoch().to_string();
        let since = Since { epoch, offset: 3 };
        let replaying = AtomicBool::new(false);
        let subscriber = Subscriber {
            outbox: outbox.clone(),
            request_id_json: "\"s\"".into(),
            positions: Some(Arc::new(AtomicBool::new(false))),
        };
        let joined = sequencer.subscribe(
            &hub,
            &room(),
            2,
            subscriber,
            Some(&since),
            &replaying,
            |_| {},
        );
        assert_eq!(joined.recovered, Some(Err(NotRecovered::Expired)));
        assert_eq!(joined.top, 9);
    }

    #[test]
    fn adopting_another_epoch_closes_subscriptions_with_positions() {
        let (sequencer, hub) = (Sequencer::new(LIMITS), Hub::new());
        let outbox = positioned(&sequencer, &hub);
        let epoch = sequencer.epoch();
        assert!(!sequencer.adopt(epoch.clone(), History::new(LIMITS), 0, &hub));
        assert!(!outbox.is_closing(), "the same epoch changes nothing");
        assert!(sequencer.adopt("s-new".into(), History::new(LIMITS), 40, &hub));
        assert_eq!(outbox.close_reason(), Some(EPOCH_CHANGED));
        assert_eq!(&*sequencer.epoch(), "s-new");
        assert_eq!(sequencer.sizes().0, 40);
    }
}
