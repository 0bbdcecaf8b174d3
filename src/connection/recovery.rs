//! Recoveries in progress on one connection: subscriptions that resumed with `since` and are
//! being sent what they missed, from the history, as the client reads (PROTOCOL.md section 7).
//!
//! A recovering subscription is in the hub but skipped by live fan-out; its task sends the
//! history's matching triggers in order, a chunk at a time and only while the outbox has room,
//! so a replay larger than the outgoing queue is streamed, never dropped and never a close.
//! When the history has nothing more for it, the sequencer turns it live in the same step, so
//! nothing published meanwhile is missed or sent twice.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::node::Node;
use crate::outbox::{Outbox, Publish};
use crate::protocol::{self, Trigger};
use crate::room::Room;
use crate::sequencer::Replay;
use crate::stats::Stats;

/// Triggers read from the history per look: enough to fill an outgoing queue's worth of
/// frames in a few looks, few enough that one look holds the sequencer's lock briefly
/// (~256 x a heap step).
const REPLAY_CHUNK: usize = 256;

struct Recovery {
    request_id: String,
    request_id_json: Arc<str>,
    room: Room,
    /// The newest position sent (or given up as lost).
    cursor: u64,
    /// Read from the history, not yet queued.
    pending: VecDeque<Arc<Trigger>>,
    /// Shared with the hub's subscriber: set while live fan-out must skip it.
    replaying: Arc<AtomicBool>,
}

/// The connection's recoveries in progress.
#[derive(Default)]
pub(super) struct Recoveries {
    active: Vec<Recovery>,
}

impl Recoveries {
    /// Starts sending `request_id`'s missed triggers after `since`.
    pub fn start(
        &mut self,
        request_id: &str,
        request_id_json: Arc<str>,
        room: Room,
        since: u64,
        replaying: Arc<AtomicBool>,
    ) {
        self.cancel(request_id);
        self.active.push(Recovery {
            request_id: request_id.to_string(),
            request_id_json,
            room,
            cursor: since,
            pending: VecDeque::new(),
            replaying,
        });
    }

    /// Stops the recovery of `request_id` (unsubscribed, replaced, revoked).
    pub fn cancel(&mut self, request_id: &str) {
        self.active.retain(|r| r.request_id != request_id);
    }

    pub fn clear(&mut self) {
        self.active.clear();
    }

    /// Queues replayed publishes while the outbox has room; whether it queued anything.
    pub fn pump(&mut self, node: &Node, outbox: &Outbox) -> bool {
        let mut queued = false;
        while let Some(recovery) = self.active.last_mut() {
            loop {
                while let Some(trigger) = recovery.pending.front() {
                    if !outbox.push_replayed(&Publish::new(
                        trigger,
                        &recovery.request_id_json,
                        true,
                    )) {
                        return queued;
                    }
                    recovery.cursor = trigger.position;
                    recovery.pending.pop_front();
                    Stats::incr(&node.stats().replayed);
                    queued = true;
                }
                let next = node.sequencer().replay(
                    &recovery.room,
                    recovery.cursor,
                    REPLAY_CHUNK,
                    &recovery.replaying,
                );
                match next {
                    Replay::Triggers(triggers) => recovery.pending.extend(triggers),
                    Replay::Lost { through } => {
                        // Let go of before the client read it: it learns what it lost, as a
                        // connection that fell behind does, and the replay goes on after.
                        Stats::incr(&node.stats().gap_notices);
                        outbox.push_reply(&protocol::gap(&recovery.request_id_json, through));
                        recovery.cursor = through;
                        queued = true;
                    }
                    Replay::Live => break,
                }
            }
            self.active.pop();
        }
        queued
    }
}
