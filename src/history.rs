//! History: the triggers a node took in lately, by the rooms they were published to, so that a
//! client coming back can be sent what it missed (PROTOCOL.md section 7).
//!
//! # What it holds
//! Every trigger taken in, in position order, as the same `Arc<Trigger>` the live fan-out used:
//! appending is one entry and one position per trigger room, whatever the number of
//! subscribers, and the trigger's bytes are not copied. A room nobody is subscribed to is
//! logged like any other: its subscriber is the one who is away.
//!
//! # Bounds
//! Entries older than the ttl, and the oldest entries while the whole exceeds the memory bound,
//! are evicted. `lost_through` remembers the newest position evicted: a client resuming after
//! an older position cannot be told it missed nothing, so it gets `recovered:false`.
//!
//! # Index
//! Per room shape (key set), each trigger room keeps the positions of its triggers, and per
//! key position the rooms holding each value (as in the hub). Finding what a subscription
//! missed looks at the rooms that can match it, not at the whole history:
//! - a concrete subscription with no wildcard trigger rooms of its shape is one lookup;
//! - otherwise the rooms holding the subscription's value (or `"*"`) at its most selective
//!   concrete key are checked with the live matching rule; a subscription with no concrete
//!   key looks at every room of its shape.
//!
//! The positions of the candidate rooms are merged in order, each trigger at most once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::Trigger;
use crate::room::{Room, WILDCARD};

/// What the index costs per trigger room beyond the room's text: a position in the room's
/// log, and the room's share of its map entry and postings (an estimate, so the memory bound
/// counts the index too and not only the payloads).
const ROOM_OVERHEAD: usize = 48;
/// What an entry costs beyond its payload and rooms: the entry, the `Trigger` and its `Arc`.
const ENTRY_OVERHEAD: usize = 96;

/// How much history a node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Entries older than this go; zero turns history off.
    pub ttl: Duration,
    /// Entries go, oldest first, while the history costs more than this; zero turns it off.
    pub memory: usize,
}

impl HistoryLimits {
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.memory > 0
    }
}

struct Entry {
    trigger: Arc<Trigger>,
    at_ms: u64,
    cost: usize,
}

/// One trigger room's triggers.
struct RoomLog {
    room: Room,
    positions: VecDeque<u64>,
}

/// Every logged trigger room of one shape.
struct ShapeLog {
    rooms: HashMap<Arc<str>, RoomLog>,
    /// Per key position: value text → the rooms holding it there.
    postings: Vec<HashMap<Box<str>, HashSet<Arc<str>>>>,
    /// Rooms holding `"*"` somewhere.
    wildcard_rooms: usize,
}

impl ShapeLog {
    fn new(keys: usize) -> ShapeLog {
        ShapeLog {
            rooms: HashMap::new(),
            postings: (0..keys).map(|_| HashMap::new()).collect(),
            wildcard_rooms: 0,
        }
    }

    fn add(&mut self, room: &Room, position: u64) {
        if let Some(log) = self.rooms.get_mut(room.canonical()) {
            // A room repeated within one trigger is logged once.
            if log.positions.back() != Some(&position) {
                log.positions.push_back(position);
            }
            return;
        }
        for (i, (_, value)) in room.pairs().iter().enumerate() {
            self.postings[i]
                .entry(value.clone())
                .or_default()
                .insert(room.canonical().clone());
        }
        if room.has_wildcard() {
            self.wildcard_rooms += 1;
        }
        self.rooms.insert(
            room.canonical().clone(),
            RoomLog {
                room: room.clone(),
                positions: VecDeque::from([position]),
            },
        );
    }

    fn remove(&mut self, room: &Room, position: u64) {
        let Some(log) = self.rooms.get_mut(room.canonical()) else {
            return;
        };
        if log.positions.front() == Some(&position) {
            log.positions.pop_front();
        }
        if !log.positions.is_empty() {
            return;
        }
        self.rooms.remove(room.canonical());
        for (i, (_, value)) in room.pairs().iter().enumerate() {
            if let Some(set) = self.postings[i].get_mut(value) {
                set.remove(room.canonical());
                if set.is_empty() {
                    self.postings[i].remove(value);
                }
            }
        }
        if room.has_wildcard() {
            self.wildcard_rooms -= 1;
        }
    }

    /// Calls `f` with the log of every room that can match the subscription `room`.
    fn for_each_candidate<'a>(&'a self, room: &Room, mut f: impl FnMut(&'a RoomLog)) {
        if self.wildcard_rooms == 0 && !room.has_wildcard() {
            if let Some(log) = self.rooms.get(room.canonical()) {
                f(log);
            }
            return;
        }
        let best = room
            .pairs()
            .iter()
            .enumerate()
            .filter(|(_, (_, v))| v.as_ref() != WILDCARD)
            .map(|(i, (_, v))| {
                let exact = self.postings[i].get(v);
                let star = self.postings[i].get(WILDCARD);
                let cost = exact.map_or(0, HashSet::len) + star.map_or(0, HashSet::len);
                (cost, exact, star)
            })
            .min_by_key(|(cost, _, _)| *cost);
        match best {
            None => self.rooms.values().for_each(f),
            Some((_, exact, star)) => {
                for key in exact.into_iter().chain(star).flatten() {
                    if let Some(log) = self.rooms.get(key) {
                        if room.matches_trigger(&log.room) {
                            f(log);
                        }
                    }
                }
            }
        }
    }
}

/// The node's recent triggers. Not synchronised: its owner keeps it behind the lock that
/// orders the node's triggers (the sequencer, a layer above).
pub struct History {
    limits: HistoryLimits,
    entries: VecDeque<Entry>,
    bytes: usize,
    shapes: HashMap<String, ShapeLog>,
    /// The newest position no longer (or never) held; 0 when nothing was ever let go.
    lost_through: u64,
}

impl History {
    pub fn new(limits: HistoryLimits) -> History {
        History {
            limits,
            entries: VecDeque::new(),
            bytes: 0,
            shapes: HashMap::new(),
            lost_through: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.limits.enabled()
    }

    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Triggers held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the held triggers cost, as counted against the memory bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every trigger after `position` is still held, so a client that received everything up
    /// to `position` can be sent all it missed.
    pub fn holds_after(&self, position: u64) -> bool {
        self.enabled() && position >= self.lost_through
    }

    /// The newest position no longer held.
    pub fn lost_through(&self) -> u64 {
        self.lost_through
    }

    /// Takes in `trigger` (its position above every position held) at `now_ms`, then lets go
    /// of what the bounds no longer allow.
    pub fn append(&mut self, trigger: Arc<Trigger>, now_ms: u64) {
        let position = trigger.position;
        if !self.enabled() {
            self.lost_through = position;
            return;
        }
        let mut cost = ENTRY_OVERHEAD + trigger.frame_prefix.len();
        let mut shape = String::new();
        for room in &trigger.rooms {
            cost += ROOM_OVERHEAD + room.canonical().len();
            room.write_shape(&mut shape);
            match self.shapes.get_mut(&shape) {
                Some(log) => log.add(room, position),
                None => {
                    let mut log = ShapeLog::new(room.pairs().len());
                    log.add(room, position);
                    self.shapes.insert(shape.clone(), log);
                }
            }
        }
        self.bytes += cost;
        self.entries.push_back(Entry {
            trigger,
            at_ms: now_ms,
            cost,
        });
        self.expire(now_ms);
    }

    /// Declares every position up to `through` not held: never taken in (a shared log read
    /// from after them, or that lost them) or let go of now.
    pub fn lose_through(&mut self, through: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.trigger.position <= through)
        {
            self.evict_front();
        }
        self.lost_through = self.lost_through.max(through);
    }

    /// Lets go of entries older than the ttl, and of the oldest while over the memory bound.
    pub fn expire(&mut self, now_ms: u64) {
        let ttl_ms = u64::try_from(self.limits.ttl.as_millis()).unwrap_or(u64::MAX);
        while let Some(front) = self.entries.front() {
            let expired = now_ms.saturating_sub(front.at_ms) >= ttl_ms;
            if !expired && self.bytes <= self.limits.memory {
                break;
            }
            self.evict_front();
        }
    }

    fn evict_front(&mut self) {
        let Some(entry) = self.entries.pop_front() else {
            return;
        };
        let position = entry.trigger.position;
        let mut shape = String::new();
        for room in &entry.trigger.rooms {
            room.write_shape(&mut shape);
            if let Some(log) = self.shapes.get_mut(&shape) {
                log.remove(room, position);
                if log.rooms.is_empty() {
                    self.shapes.remove(&shape);
                }
            }
        }
        self.bytes -= entry.cost;
        self.lost_through = position;
    }

    /// Up to `max` held triggers after `after` that match the subscription `room` (the live
    /// rule, wildcards both ways), oldest first, each once.
    pub fn matching_after(&self, room: &Room, after: u64, max: usize) -> Vec<Arc<Trigger>> {
        let Some(shape) = self.shapes.get(&room.shape()) else {
            return Vec::new();
        };
        // One cursor per candidate room, at its first position after `after`.
        let mut heads: BinaryHeap<Reverse<(u64, usize, usize)>> = BinaryHeap::new();
        let mut logs: Vec<&VecDeque<u64>> = Vec::new();
        shape.for_each_candidate(room, |log| {
            let at = log.positions.partition_point(|&p| p <= after);
            if let Some(&position) = log.positions.get(at) {
                heads.push(Reverse((position, logs.len(), at)));
            }
            logs.push(&log.positions);
        });
        let mut out: Vec<Arc<Trigger>> = Vec::new();
        let mut last = after;
        while let Some(Reverse((position, log, at))) = heads.pop() {
            if position > last {
                if out.len() == max {
                    break;
                }
                if let Some(trigger) = self.get(position) {
                    out.push(trigger.clone());
                }
                last = position;
            }
            if let Some(&next) = logs[log].get(at + 1) {
                heads.push(Reverse((next, log, at + 1)));
            }
        }
        out
    }

    fn get(&self, position: u64) -> Option<&Arc<Trigger>> {
        let at = self
            .entries
            .binary_search_by_key(&position, |e| e.trigger.position)
            .ok()?;
        Some(&self.entries[at].trigger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomLimits;
    use serde_json::{json, Value};

    const LIMITS: HistoryLimits = HistoryLimits {
        ttl: Duration::from_secs(60),
        memory: 1 << 20,
    };

    fn room(v: Value) -> Room {
        Room::parse(&v, &RoomLimits::default()).expect("room")
    }

    fn trigger(position: u64, rooms: Value) -> Arc<Trigger> {
        let body = json!({"rooms": rooms, "data": position}).to_string();
        let mut trigger = Trigger::parse(body.as_bytes(), &RoomLimits::default()).expect("trigger");
        trigger.position = position;
        Arc::new(trigger)
    }

    fn positions(history: &History, sub: Value, after: u64) -> Vec<u64> {
        history
            .matching_after(&room(sub), after, usize::MAX)
            .iter()
            .map(|t| t.position)
            .collect()
    }

    #[test]
    fn replays_what_matches_in_order_once_each() {
        let mut h = History::new(LIMITS);
        h.append(trigger(1, json!([{"c": "1"}])), 0);
        h.append(trigger(2, json!([{"c": "2"}])), 0);
        h.append(trigger(3, json!([{"c": "1"}, {"c": "1"}, {"c": "*"}])), 0);
        h.append(trigger(4, json!([{"c": "*"}])), 0);
        h.append(trigger(5, json!([{"c": "1", "d": 1}])), 0);
        h.append(trigger(6, json!([{"c": 1}])), 0);
        assert_eq!(positions(&h, json!({"c": "1"}), 0), vec![1, 3, 4]);
        assert_eq!(positions(&h, json!({"c": "1"}), 1), vec![3, 4]);
        assert_eq!(positions(&h, json!({"c": "2"}), 0), vec![2, 3, 4]);
        assert_eq!(positions(&h, json!({"c": "*"}), 0), vec![1, 2, 3, 4, 6]);
        assert_eq!(positions(&h, json!({"c": "*"}), 4), vec![6]);
        assert_eq!(positions(&h, json!({"x": "1"}), 0), Vec::<u64>::new());
        let first_two = h.matching_after(&room(json!({"c": "*"})), 0, 2);
        assert_eq!(first_two.len(), 2);
        assert_eq!(first_two[1].position, 2);
    }

    #[test]
    fn the_memory_bound_evicts_the_oldest_and_says_what_is_lost() {
        let mut h = History::new(HistoryLimits {
            memory: 2_000,
            ..LIMITS
        });
        for p in 1..=100 {
            h.append(trigger(p, json!([{"c": p % 3}])), 0);
        }
        assert!(h.bytes() <= 2_000);
        assert!(h.len() < 100 && !h.is_empty());
        let oldest = 100 - h.len() as u64;
        assert_eq!(h.lost_through(), oldest);
        assert!(h.holds_after(oldest) && !h.holds_after(oldest - 1));
        let kept = positions(&h, json!({"c": "*"}), 0);
        assert_eq!(kept, ((oldest + 1)..=100).collect::<Vec<_>>());
    }

    #[test]
    fn the_ttl_evicts_even_without_new_triggers() {
        let mut h = History::new(LIMITS);
        h.append(trigger(1, json!([{"c": 1}])), 1_000);
        h.append(trigger(2, json!([{"c": 1}])), 30_000);
        h.expire(61_000);
        assert_eq!(h.len(), 1);
        assert!(h.holds_after(1) && !h.holds_after(0));
        h.expire(90_000);
        assert!(h.is_empty());
        assert_eq!(h.lost_through(), 2);
        assert_eq!(h.shapes.len(), 0, "the index empties with the entries");
    }

    #[test]
    fn positions_declared_lost_are_not_recovered() {
        let mut h = History::new(LIMITS);
        h.lose_through(41);
        assert!(!h.holds_after(40) && h.holds_after(41));
        h.append(trigger(45, json!([{"c": "1"}])), 0);
        h.append(trigger(50, json!([{"c": "1"}])), 0);
        assert_eq!(positions(&h, json!({"c": "1"}), 41), vec![45, 50]);
        h.lose_through(47);
        assert_eq!(h.lost_through(), 47);
        assert_eq!(positions(&h, json!({"c": "1"}), 47), vec![50]);
        h.lose_through(10);
        assert_eq!(h.lost_through(), 47, "never goes back");
    }

    #[test]
    fn off_holds_nothing() {
        let mut h = History::new(HistoryLimits {
            ttl: Duration::ZERO,
            ..LIMITS
        });
        h.append(trigger(1, json!([{"c": 1}])), 0);
        assert!(h.is_empty());
        assert!(!h.holds_after(1));
    }
}
