//! The hub: every room with its subscriptions, and the fan-out of triggers to them.
//!
//! # Ownership
//! The hub is the single owner of subscription state, behind one `std::sync::RwLock`. Sections
//! are short and never cross an `.await`: a subscribe is a few map inserts, a fan-out walks the
//! matching subscriptions and `try_publish`es into their bounded outboxes. An async lock would only
//! add cost, since nothing here waits. Fan-outs take the read lock, so triggers from several
//! sources fan out in parallel.
//!
//! # Index
//! Rooms only match rooms with the same key set ("shape"), so rooms are grouped by shape. Within
//! a shape:
//! - an exact trigger room (no `"*"`) is looked up directly, plus once per combination of the
//!   keys where some subscribed room holds `"*"` (usually none, so one lookup);
//! - a trigger room with `"*"` walks the postings of its most selective concrete key (rooms with
//!   that value or `"*"` there), or every room of the shape when it has no concrete key.
//!
//! A trigger thus costs about the number of matching rooms, not the number of rooms on the node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::outbox::{Outbox, Publish};
use crate::protocol::Trigger;
use crate::room::{Room, WILDCARD};

/// Above this many wildcard-holding keys in one shape, an exact trigger room uses the postings
/// walk instead of enumerating 2^k lookups.
const MAX_ENUMERATED_STAR_KEYS: usize = 6;

/// Identifies one subscription node-wide.
pub type SubscriptionId = u64;

/// One subscription as the hub sees it: where to send, and the requestId to splice in.
#[derive(Clone)]
pub struct Subscriber {
    pub outbox: Outbox,
    /// The requestId encoded as a JSON string (quotes and escapes included), ready to splice.
    pub request_id_json: Arc<str>,
    /// `None` for a 3.1 subscription. For one with positions (PROTOCOL.md section 7): set
    /// while it is being recovered, when live publishes skip it (the replay sends them, in
    /// order, from the history). Written and read under the sequencer's lock.
    pub positions: Option<Arc<AtomicBool>>,
}

struct RoomEntry {
    room: Room,
    subscribers: HashMap<SubscriptionId, Subscriber>,
}

#[derive(Default)]
struct Shape {
    rooms: HashMap<Arc<str>, RoomEntry>,
    /// Per key position: how many rooms hold `"*"` there.
    star_counts: Vec<usize>,
    /// Per key position: value text → canonical texts of the rooms holding it there.
    postings: Vec<HashMap<Box<str>, HashSet<Arc<str>>>>,
}

impl Shape {
    fn new(keys: usize) -> Shape {
        Shape {
            rooms: HashMap::new(),
            star_counts: vec![0; keys],
            postings: (0..keys).map(|_| HashMap::new()).collect(),
        }
    }

    fn index(&mut self, room: &Room) {
        for (i, (_, value)) in room.pairs().iter().enumerate() {
            if value.as_ref() == WILDCARD {
                self.star_counts[i] += 1;
            }
            self.postings[i]
                .entry(value.clone())
                .or_default()
                .insert(room.canonical().clone());
        }
    }

    fn unindex(&mut self, room: &Room) {
        for (i, (_, value)) in room.pairs().iter().enumerate() {
            if value.as_ref() == WILDCARD {
                self.star_counts[i] -= 1;
            }
            if let Some(set) = self.postings[i].get_mut(value) {
                set.remove(room.canonical());
                if set.is_empty() {
                    self.postings[i].remove(value);
                }
            }
        }
    }

    /// Calls `f` for every room of this shape matching the trigger room `t`, once each.
    fn for_each_match(&self, t: &Room, mut f: impl FnMut(&Arc<str>, &RoomEntry)) {
        if !t.has_wildcard() && self.star_counts.iter().all(|&n| n == 0) {
            // The common case: no wildcards on either side, one lookup.
            if let Some((key, entry)) = self.rooms.get_key_value(t.canonical()) {
                f(key, entry);
            }
            return;
        }
        let star_keys: Vec<usize> = (0..self.star_counts.len())
            .filter(|&i| self.star_counts[i] > 0)
            .collect();
        if !t.has_wildcard() && star_keys.len() <= MAX_ENUMERATED_STAR_KEYS {
            // Every subset of the star keys, as a mask over key positions.
            for subset in 0u64..(1 << star_keys.len()) {
                let mask = star_keys
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| subset & (1 << bit) != 0)
                    .fold(0u64, |m, (_, &i)| m | (1 << i));
                let candidate = if mask == 0 {
                    t.clone()
                } else {
                    t.with_wildcards(mask)
                };
                if let Some((key, entry)) = self.rooms.get_key_value(candidate.canonical()) {
                    f(key, entry);
                }
            }
            return;
        }
        // Most selective concrete key of the trigger room.
        let best = t
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
            None => {
                for (key, entry) in &self.rooms {
                    f(key, entry);
                }
            }
            Some((_, exact, star)) => {
                for key in exact.into_iter().chain(star).flatten() {
                    if let Some((key, entry)) = self.rooms.get_key_value(key) {
                        if entry.room.matches_trigger(t) {
                            f(key, entry);
                        }
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct State {
    shapes: HashMap<String, Shape>,
    num_rooms: usize,
    num_subscriptions: usize,
}

/// All rooms and subscriptions of this node.
#[derive(Default)]
pub struct Hub {
    state: RwLock<State>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    // A panic while holding the lock cannot leave the maps half-updated in a way that matters
    // more than stopping the node, so a poisoned lock is used as it is.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscription to `room`, creating the room if needed.
    pub fn subscribe(&self, room: &Room, id: SubscriptionId, subscriber: Subscriber) {
        let mut state = self.write();
        let state = &mut *state;
        let shape = state
            .shapes
            .entry(room.shape())
            .or_insert_with(|| Shape::new(room.pairs().len()));
        let entry = match shape.rooms.get_mut(room.canonical()) {
            Some(entry) => entry,
            None => {
                shape.index(room);
                state.num_rooms += 1;
                shape
                    .rooms
                    .entry(room.canonical().clone())
                    .or_insert_with(|| RoomEntry {
                        room: room.clone(),
                        subscribers: HashMap::new(),
                    })
            }
        };
        if entry.subscribers.insert(id, subscriber).is_none() {
            state.num_subscriptions += 1;
        }
    }

    /// Removes a subscription; the room goes with its last subscription.
    pub fn unsubscribe(&self, room: &Room, id: SubscriptionId) {
        let mut state = self.write();
        Self::remove(&mut state, room, id);
    }

    /// Removes many subscriptions under one lock (a disconnect).
    pub fn unsubscribe_all<'a>(
        &self,
        subscriptions: impl IntoIterator<Item = (&'a Room, SubscriptionId)>,
    ) {
        let mut state = self.write();
        for (room, id) in subscriptions {
            Self::remove(&mut state, room, id);
        }
    }

    fn remove(state: &mut State, room: &Room, id: SubscriptionId) {
        let shape_key = room.shape();
        let Some(shape) = state.shapes.get_mut(&shape_key) else {
            return;
        };
        let Some(entry) = shape.rooms.get_mut(room.canonical()) else {
            return;
        };
        if entry.subscribers.remove(&id).is_some() {
            state.num_subscriptions -= 1;
        }
        if entry.subscribers.is_empty() {
            shape.rooms.remove(room.canonical());
            shape.unindex(room);
            state.num_rooms -= 1;
            if shape.rooms.is_empty() {
                state.shapes.remove(&shape_key);
            }
        }
    }

    /// Fans a trigger out: each matching subscription gets the publish frame at most once.
    /// Returns how many subscriptions it was queued for.
    pub fn publish(&self, trigger: &Trigger) -> usize {
        let state = self.read();
        let mut delivered = 0;
        let mut deliver = |entry: &RoomEntry| {
            for subscriber in entry.subscribers.values() {
                let positions = match &subscriber.positions {
                    None => false,
                    Some(replaying) if replaying.load(Ordering::Relaxed) => continue,
                    Some(_) => true,
                };
                let frame = Publish::new(trigger, &subscriber.request_id_json, positions);
                if subscriber.outbox.try_publish(&frame) {
                    delivered += 1;
                }
            }
        };
        let mut shape_key = String::new();
        if let [room] = trigger.rooms.as_slice() {
            // One trigger room visits each matching room once by construction.
            room.write_shape(&mut shape_key);
            if let Some(shape) = state.shapes.get(&shape_key) {
                shape.for_each_match(room, |_, entry| deliver(entry));
            }
        } else {
            // Several trigger rooms may match one room (wildcards, repeats): visit it once.
            let mut seen: HashSet<*const str> = HashSet::new();
            for room in &trigger.rooms {
                room.write_shape(&mut shape_key);
                if let Some(shape) = state.shapes.get(&shape_key) {
                    shape.for_each_match(room, |key, entry| {
                        if seen.insert(Arc::as_ptr(key)) {
                            deliver(entry);
                        }
                    });
                }
            }
        }
        delivered
    }

    /// Calls `f` with every subscription with positions (an epoch change closes them, a loss
    /// in the shared log notifies them). Walks every room: rare events only.
    pub fn for_each_positioned(&self, mut f: impl FnMut(&Subscriber)) {
        let state = self.read();
        for shape in state.shapes.values() {
            for entry in shape.rooms.values() {
                entry
                    .subscribers
                    .values()
                    .filter(|s| s.positions.is_some())
                    .for_each(&mut f);
            }
        }
    }

    /// Rooms with at least one subscription.
    pub fn num_rooms(&self) -> usize {
        self.read().num_rooms
    }

    pub fn num_subscriptions(&self) -> usize {
        self.read().num_subscriptions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomLimits;
    use crate::stats::Stats;
    use serde_json::{json, Value};

    fn room(v: Value) -> Room {
        Room::parse(&v, &RoomLimits::default()).expect("room")
    }

    fn trigger(rooms: Value) -> Trigger {
        let body = json!({"rooms": rooms, "data": 1}).to_string();
        Trigger::parse(body.as_bytes(), &RoomLimits::default()).expect("trigger")
    }

    struct Client {
        outbox: Outbox,
    }

    fn client() -> Client {
        let outbox = Outbox::new(
            crate::outbox::QueueBound::frames(16),
            Arc::new(Stats::new()),
        );
        Client { outbox }
    }

    impl Client {
        fn sub(&self, id: &str) -> Subscriber {
            Subscriber {
                outbox: self.outbox.clone(),
                request_id_json: Value::from(id).to_string().into(),
                positions: None,
            }
        }
        fn received(&mut self) -> Vec<String> {
            let mut wire = crate::outbox::Wire::default();
            self.outbox.take(&mut wire);
            self.outbox.written();
            let mut out = Vec::new();
            for (_, payload) in crate::ws::server_frames(&wire.to_vec()) {
                let v: Value = serde_json::from_slice(&payload).expect("json");
                out.push(v["requestId"].as_str().expect("rid").to_string());
            }
            out.sort();
            out
        }
    }

    #[test]
    fn exact_and_wildcard_subscriptions_get_one_copy_each() {
        let hub = Hub::new();
        let mut c = client();
        hub.subscribe(&room(json!({"t": "m", "c": "1"})), 1, c.sub("exact"));
        hub.subscribe(&room(json!({"t": "m", "c": "*"})), 2, c.sub("star"));
        hub.subscribe(&room(json!({"t": "m", "c": "2"})), 3, c.sub("other"));
        let t = trigger(json!([{"t": "m", "c": "1"}, {"c": "1", "t": "m"}, {"t": "m", "c": "*"}]));
        assert_eq!(hub.publish(&t), 3);
        assert_eq!(c.received(), vec!["exact", "other", "star"]);
        assert_eq!(hub.publish(&trigger(json!([{"t": "m", "c": "1"}]))), 2);
        assert_eq!(c.received(), vec!["exact", "star"]);
        assert_eq!(hub.publish(&trigger(json!([{"t": "*", "c": "9"}]))), 1);
        assert_eq!(c.received(), vec!["star"]);
        assert_eq!(hub.publish(&trigger(json!([{"t": "m"}]))), 0);
    }

    #[test]
    fn rooms_disappear_with_their_last_subscription() {
        let hub = Hub::new();
        let c = client();
        let r = room(json!({"a": 1}));
        hub.subscribe(&r, 1, c.sub("x"));
        hub.subscribe(&r, 2, c.sub("y"));
        assert_eq!((hub.num_rooms(), hub.num_subscriptions()), (1, 2));
        hub.unsubscribe(&r, 1);
        assert_eq!(hub.num_rooms(), 1);
        hub.unsubscribe_all([(&r, 2)]);
        assert_eq!((hub.num_rooms(), hub.num_subscriptions()), (0, 0));
        assert_eq!(hub.publish(&trigger(json!([{"a": 1}]))), 0);
    }

    #[test]
    fn many_star_keys_fall_back_to_postings() {
        let hub = Hub::new();
        let mut c = client();
        let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
        for (n, star) in keys.iter().enumerate() {
            let mut m = serde_json::Map::new();
            for k in &keys {
                m.insert(k.clone(), if k == star { json!("*") } else { json!(1) });
            }
            hub.subscribe(&room(Value::Object(m)), n as u64, c.sub(star));
        }
        let exact: serde_json::Map<String, Value> =
            keys.iter().map(|k| (k.clone(), json!(1))).collect();
        assert_eq!(hub.publish(&trigger(json!([exact]))), 8);
        assert_eq!(c.received().len(), 8);
    }

    #[test]
    fn a_wildcard_on_the_64th_key_matches() {
        let limits = RoomLimits {
            max_keys: 64,
            max_len: 8,
        };
        let keys: Vec<String> = (0..64).map(|i| format!("k{i:02}")).collect();
        let build = |star: Option<&str>| {
            let map: serde_json::Map<String, Value> = keys
                .iter()
                .map(|k| {
                    (
                        k.clone(),
                        if Some(k.as_str()) == star {
                            json!("*")
                        } else {
                            json!(1)
                        },
                    )
                })
                .collect();
            Room::from_map(&map, &limits).expect("64 keys")
        };
        let hub = Hub::new();
        let mut c = client();
        hub.subscribe(&build(Some("k63")), 1, c.sub("last-star"));
        hub.subscribe(&build(Some("k00")), 2, c.sub("first-star"));
        let body = json!({"rooms": [Value::Object(keys.iter().map(|k| (k.clone(), json!(1))).collect())], "data": 1});
        let t = Trigger::parse(body.to_string().as_bytes(), &limits).expect("trigger");
        assert_eq!(hub.publish(&t), 2);
        assert_eq!(c.received(), vec!["first-star", "last-star"]);
    }
}
