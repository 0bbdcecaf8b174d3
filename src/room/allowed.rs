//! The rooms a connection may join: read once per distinct list, shared, and indexed.
//!
//! Backends usually give every user of one role the same list, and a list can run to thousands
//! of rooms: parsed per connection, 5,000 allowed rooms cost 1.19 MB of RSS and 9.5 ms of CPU
//! per connection (BENCHMARKS.md, "Large allowed lists"). So a node keeps each distinct list
//! once ([`AllowedLists`]: found by a hash of its JSON text, then compared byte for byte), in
//! the compact form a connection needs: the first frame's text and an index for subscribes.
//! Connections given the same text hold the same [`AllowedRooms`]; when the last of them goes,
//! so does the list.
//!
//! The index answers PROTOCOL.md section 2 without a scan: a requested room can only be allowed
//! by a room of the same key set (its *shape*), so allowed rooms are grouped by shape, then by
//! the keys where they hold `"*"` (a *pattern*); within a pattern, the other values of each
//! room form one row, and the rows are sorted. A check is a hash lookup of the shape and one
//! binary search per pattern of that shape: lists seen in practice have one to three.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_json::Value;

use super::{Room, RoomLimits, WILDCARD};
use bytes::Bytes;

/// What the first frame of an authorised connection holds around its allowed rooms: the text
/// `json!({"is_authorized": true, "allowed_rooms": list})` has always given (keys sorted).
const AUTHORIZED_HEAD: &str = r#"{"allowed_rooms":"#;
const AUTHORIZED_TAIL: &str = r#","is_authorized":true}"#;

/// The first frame of an authorised connection, around `allowed_rooms`: the list's JSON text as
/// `serde_json` writes it. Built once per distinct list ([`AllowedLists`]).
fn authorized(allowed_rooms: &str) -> String {
    [AUTHORIZED_HEAD, allowed_rooms, AUTHORIZED_TAIL].concat()
}

/// The allowed rooms' text inside a frame built by [`authorized`].
fn allowed_rooms_of(first_frame: &str) -> &str {
    first_frame
        .strip_prefix(AUTHORIZED_HEAD)
        .and_then(|rest| rest.strip_suffix(AUTHORIZED_TAIL))
        .unwrap_or(first_frame)
}

/// The rooms a connection may subscribe to, as the backend gave them. Cloning shares them.
#[derive(Clone)]
pub struct AllowedRooms(Arc<List>);

/// A list's first frame, owned by the `Bytes` that hands it to sockets.
struct Text(Arc<str>);

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// One distinct list.
struct List {
    /// The connection's first frame, `{"allowed_rooms":[...],"is_authorized":true}`, written
    /// once for every connection given this list.
    first_frame: Arc<str>,
    /// The same text (the same memory) as the payload a connection's socket splices in: a
    /// 5,000-room list is ~220 KB, and copying it for every connection doubled what a burst of
    /// connects allocated.
    first_payload: Bytes,
    /// The text the list was found under, when it is not the list inside `first_frame` byte
    /// for byte (the backend's own spacing or key order).
    source: Option<Box<str>>,
    /// The patterns of each shape (its keys, each followed by a NUL, as [`Room::write_shape`]).
    shapes: HashMap<Box<str>, Box<[Pattern]>>,
    /// Where this list is kept, and under which hash; `None` for a list built on its own.
    shelf: Option<(Arc<Shelf>, u64)>,
}

/// One shape's rows while a list is read, by where they hold `"*"`.
type RowsByPattern = HashMap<Box<[bool]>, Vec<String>>;

/// The allowed rooms of one shape holding `"*"` at the same keys.
struct Pattern {
    /// Per key of the shape (in key order), whether these rooms hold `"*"` there.
    wildcard: Box<[bool]>,
    /// Each room's other values, each followed by a NUL (which canonical JSON text never
    /// holds unescaped), one row per room; rows sorted, without duplicates, end to end.
    rows: Box<[u8]>,
    /// Where each row ends in `rows`.
    ends: Box<[usize]>,
}

impl AllowedRooms {
    /// A list on its own, not shared with anyone (a node uses [`AllowedLists`]). `None` when
    /// it is not a list of objects, which the protocol treats as a refusal.
    pub fn from_backend(list: Vec<Value>) -> Option<AllowedRooms> {
        List::from_values(&list).map(|list| AllowedRooms(Arc::new(list)))
    }

    /// Subscribe permission (PROTOCOL.md section 2): whether some allowed room has the keys of
    /// `requested`, each value equal to the requested one or `"*"`.
    pub fn allows(&self, requested: &Room) -> bool {
        let mut key = String::new();
        requested.write_shape(&mut key);
        let Some(patterns) = self.0.shapes.get(key.as_str()) else {
            return false;
        };
        patterns.iter().any(|pattern| {
            key.clear();
            let values = requested.pairs().iter().map(|(_, value)| value);
            for (value, wildcard) in values.zip(pattern.wildcard.iter()) {
                if !wildcard {
                    push_value(&mut key, value);
                }
            }
            pattern.contains(key.as_bytes())
        })
    }

    /// The first frame of a connection given this list, as the server has always written it.
    pub fn first_frame(&self) -> &str {
        &self.0.first_frame
    }

    /// [`AllowedRooms::first_frame`] as bytes to splice into a socket's output, not copy.
    pub fn first_payload(&self) -> &Bytes {
        &self.0.first_payload
    }

    /// Whether both are the one shared list.
    pub fn shares_with(&self, other: &AllowedRooms) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for AllowedRooms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowedRooms")
            .field("first_frame_len", &self.0.first_frame.len())
            .field("shapes", &self.0.shapes.len())
            .finish()
    }
}

/// Allowed rooms come from the trusted backend: no size limits beyond memory.
const UNLIMITED: RoomLimits = RoomLimits {
    max_keys: usize::MAX,
    max_len: usize::MAX,
};

impl List {
    /// The list of a backend's JSON text; `None` unless it is a list of objects.
    fn from_json(text: &str) -> Option<List> {
        let mut builder = Builder::default();
        let mut json = serde_json::Deserializer::from_str(text);
        let all_objects = json.deserialize_seq(Members(&mut builder)).ok()?;
        json.end().ok()?;
        all_objects.then(|| builder.finish(Some(text)))?
    }

    /// The list of a backend's parsed values; `None` unless every one is an object.
    fn from_values(values: &[Value]) -> Option<List> {
        let mut builder = Builder::default();
        values
            .iter()
            .all(|value| builder.push(value))
            .then(|| builder.finish(None))?
    }

    /// The text this list is found under.
    fn source(&self) -> &str {
        match &self.source {
            Some(source) => source,
            None => allowed_rooms_of(&self.first_frame),
        }
    }
}

impl Drop for List {
    fn drop(&mut self) {
        if let Some((shelf, hash)) = &self.shelf {
            shelf.forget(*hash);
        }
    }
}

/// A list being read one member at a time into what it keeps: its JSON text as `serde_json`
/// writes it, and the index's rows. Each member is dropped once read: parsed whole first,
/// 5,000 rooms were ~4 MB of values at once, for a list that keeps ~0.3 MB.
#[derive(Default)]
struct Builder {
    text: Vec<u8>,
    /// Shape -> where `"*"` is -> rows.
    groups: HashMap<Box<str>, RowsByPattern>,
    shape: String,
}

impl Builder {
    /// Adds the list's next member; `false` when it is not an object (the list is refused).
    fn push(&mut self, value: &Value) -> bool {
        let Some(map) = value.as_object() else {
            return false;
        };
        self.text
            .push(if self.text.is_empty() { b'[' } else { b',' });
        if serde_json::to_writer(&mut self.text, value).is_err() {
            return false;
        }
        // A room holding a nested value can never allow a requested room (scalars only): it
        // is echoed, and left out of the index.
        let Ok(room) = Room::from_map(map, &UNLIMITED) else {
            return true;
        };
        room.write_shape(&mut self.shape);
        let wildcard: Box<[bool]> = room
            .pairs()
            .iter()
            .map(|(_, value)| value.as_ref() == WILDCARD)
            .collect();
        let mut row = String::new();
        for ((_, value), &wild) in room.pairs().iter().zip(wildcard.iter()) {
            if !wild {
                push_value(&mut row, value);
            }
        }
        self.groups
            .entry(self.shape.as_str().into())
            .or_default()
            .entry(wildcard)
            .or_default()
            .push(row);
        true
    }

    /// The list, found under `source` when that is not its own text byte for byte.
    fn finish(mut self, source: Option<&str>) -> Option<List> {
        if self.text.is_empty() {
            self.text.push(b'[');
        }
        self.text.push(b']');
        let text = String::from_utf8(self.text).ok()?;
        let shapes = self
            .groups
            .into_iter()
            .map(|(shape, patterns)| {
                let patterns = patterns
                    .into_iter()
                    .map(|(wildcard, rows)| Pattern::new(wildcard, rows))
                    .collect();
                (shape, patterns)
            })
            .collect();
        let first_frame: Arc<str> = authorized(&text).into();
        Some(List {
            first_payload: Bytes::from_owner(Text(first_frame.clone())),
            first_frame,
            source: source.filter(|source| *source != text).map(Box::from),
            shapes,
            shelf: None,
        })
    }
}

/// Reads a JSON list's members into a [`Builder`]; `false` at the first that is not an object.
struct Members<'a>(&'a mut Builder);

impl<'de> Visitor<'de> for Members<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of allowed rooms")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut members: A) -> Result<bool, A::Error> {
        while let Some(member) = members.next_element::<Value>()? {
            if !self.0.push(&member) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Pattern {
    fn new(wildcard: Box<[bool]>, mut rows: Vec<String>) -> Pattern {
        rows.sort_unstable();
        rows.dedup();
        let mut text = Vec::with_capacity(rows.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(rows.len());
        for row in rows {
            text.extend_from_slice(row.as_bytes());
            ends.push(text.len());
        }
        Pattern {
            wildcard,
            rows: text.into(),
            ends: ends.into(),
        }
    }

    fn row(&self, index: usize) -> &[u8] {
        let start = index.checked_sub(1).map_or(0, |before| self.ends[before]);
        &self.rows[start..self.ends[index]]
    }

    /// Binary search of the sorted rows.
    fn contains(&self, row: &[u8]) -> bool {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.row(middle).cmp(row) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

/// Appends one value of a row.
fn push_value(row: &mut String, value: &str) {
    row.push_str(value);
    row.push('\u{0}');
}

/// Every distinct allowed-room list a node's connections hold, each once.
#[derive(Default)]
pub struct AllowedLists {
    shelf: Arc<Shelf>,
}

#[derive(Default)]
struct Shelf {
    /// Lists by the hash of their text; more than one under a hash only on a collision. Weak:
    /// the connections own the lists, and a list leaves when its last connection drops it.
    /// A std mutex: a lookup or an insert, never held across an await, nor while a list is
    /// read or a text compared (but for two lists read at once, see `insert`); and never
    /// while an `Arc<List>` is dropped, as its `Drop` takes the lock.
    lists: Mutex<HashMap<u64, Vec<Weak<List>>>>,
    /// Texts being read, by hash. A new list usually comes with many connections at once (a
    /// deploy, a reconnect storm): one reads it, the others wait for that and share it. The
    /// map behind a std mutex (a lookup or a removal); each text's turn an async mutex.
    reading: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl AllowedLists {
    /// The list of a backend's `allowed_rooms` JSON text. `None` when it is not a list of
    /// objects, which the protocol treats as a refusal. A text seen before is not read again.
    pub async fn from_json(&self, text: &str) -> Option<AllowedRooms> {
        self.shelf
            .find_or_read(text, || List::from_json(text))
            .await
    }

    /// The list of a backend's parsed `allowed_rooms` (a custom [`crate::Backend`]); found by
    /// its JSON text, so equal lists are shared whichever way they came.
    pub async fn from_values(&self, values: Vec<Value>) -> Option<AllowedRooms> {
        let text = serde_json::to_string(&values).ok()?;
        self.shelf
            .find_or_read(&text, || List::from_values(&values))
            .await
    }

    /// How many distinct lists are held now.
    pub fn len(&self) -> usize {
        self.shelf.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shelf {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<Weak<List>>>> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reading(&self) -> MutexGuard<'_, HashMap<u64, Arc<tokio::sync::Mutex<()>>>> {
        self.reading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The list held for `text`, else the one `read` makes of it: after whoever is reading
    /// the same text now, whose list is then shared.
    async fn find_or_read(
        self: &Arc<Self>,
        text: &str,
        read: impl FnOnce() -> Option<List>,
    ) -> Option<AllowedRooms> {
        let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        if let Some(found) = self.find(hash, text) {
            return Some(found);
        }
        let turn = Turn::take(self, hash);
        let _reading = turn.lock.lock().await;
        if let Some(found) = self.find(hash, text) {
            return Some(found);
        }
        let list = read()?;
        tracing::debug!(bytes = text.len(), "a new allowed-room list");
        Some(self.insert(hash, list))
    }

    /// The list held under `hash` whose text is `text`.
    fn find(&self, hash: u64, text: &str) -> Option<AllowedRooms> {
        // Taken out under the lock, compared (and the others dropped) after it.
        let candidates: Vec<Arc<List>> = {
            let lists = self.lock();
            lists.get(&hash)?.iter().filter_map(Weak::upgrade).collect()
        };
        candidates
            .into_iter()
            .find(|list| list.source() == text)
            .map(AllowedRooms)
    }

    /// Keeps a list just read, unless the same list is held already (a text on a hash that
    /// another text also had, and the turn went): then that one is shared, and this dropped.
    fn insert(self: &Arc<Self>, hash: u64, mut list: List) -> AllowedRooms {
        list.shelf = Some((self.clone(), hash));
        let list = Arc::new(list);
        // Declared before the guard, so dropped after it.
        let live: Vec<Arc<List>>;
        let mut lists = self.lock();
        let held = lists.entry(hash).or_default();
        held.retain(|weak| weak.strong_count() > 0);
        live = held.iter().filter_map(Weak::upgrade).collect();
        let kept = match live.iter().find(|other| other.source() == list.source()) {
            Some(same) => same.clone(),
            None => {
                held.push(Arc::downgrade(&list));
                list.clone()
            }
        };
        drop(lists);
        AllowedRooms(kept)
    }

    /// Called as a list goes: takes the dead entries under its hash out.
    fn forget(&self, hash: u64) {
        let mut lists = self.lock();
        if let Some(held) = lists.get_mut(&hash) {
            held.retain(|weak| weak.strong_count() > 0);
            if held.is_empty() {
                lists.remove(&hash);
            }
        }
    }
}

/// A turn at reading the texts of one hash; the last one waiting takes it out of the map.
struct Turn<'a> {
    shelf: &'a Shelf,
    hash: u64,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn take(shelf: &'a Shelf, hash: u64) -> Turn<'a> {
        let lock = shelf.reading().entry(hash).or_default().clone();
        Turn { shelf, hash, lock }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut reading = self.shelf.reading();
        // Held by the map and by this turn only: nobody else waits.
        let last = Arc::strong_count(&self.lock) == 2
            && reading
                .get(&self.hash)
                .is_some_and(|lock| Arc::ptr_eq(lock, &self.lock));
        if last {
            reading.remove(&self.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_frame_is_the_text_it_has_always_been() {
        let list = json!([{"target": "message", "customer": "1"}, {"b": 1.5, "a": [null]}]);
        let frame = authorized(&list.to_string());
        assert_eq!(
            frame,
            json!({"is_authorized": true, "allowed_rooms": list}).to_string()
        );
        assert_eq!(allowed_rooms_of(&frame), list.to_string());
    }

    fn room(value: Value) -> Room {
        Room::parse(&value, &RoomLimits::default()).expect("valid room")
    }

    fn list(value: Value) -> AllowedRooms {
        let Value::Array(values) = value else {
            panic!("a list")
        };
        AllowedRooms::from_backend(values).expect("a list of objects")
    }

    #[tokio::test]
    async fn allowed_rooms_must_be_objects() {
        let lists = AllowedLists::default();
        assert!(AllowedRooms::from_backend(vec![json!("foo")]).is_none());
        assert!(lists
            .from_values(vec![json!({"a": 1}), json!(2)])
            .await
            .is_none());
        for text in [
            r#"["foo"]"#,
            "null",
            r#"{"a":1}"#,
            "[1]",
            "[",
            r#"[{"a":"\ud800"}]"#,
        ] {
            assert!(lists.from_json(text).await.is_none(), "{text}");
        }
        assert!(lists.is_empty(), "refusals are not kept");
    }

    #[test]
    fn a_nested_value_is_echoed_but_allows_nothing() {
        let allowed = list(json!([{"a": "*"}, {"n": {"x": 1}}]));
        assert!(allowed.allows(&room(json!({"a": 3}))));
        assert!(!allowed.allows(&room(json!({"n": 1}))));
        assert_eq!(
            allowed.first_frame(),
            r#"{"allowed_rooms":[{"a":"*"},{"n":{"x":1}}],"is_authorized":true}"#
        );
    }

    #[test]
    fn wildcards_at_different_keys_of_one_shape() {
        let allowed = list(json!([
            {"target": "message", "customer": "*"},
            {"target": "*", "customer": "7"},
            {"target": "invoice", "customer": "1"},
            {"target": "invoice", "customer": "2"},
            {}
        ]));
        let allows = |value| allowed.allows(&room(value));
        assert!(allows(json!({"target": "message", "customer": "99"})));
        assert!(allows(json!({"target": "message", "customer": "*"})));
        assert!(allows(json!({"target": "anything", "customer": "7"})));
        assert!(allows(json!({"target": "invoice", "customer": "2"})));
        assert!(allows(json!({})));
        assert!(!allows(json!({"target": "invoice", "customer": "3"})));
        assert!(!allows(json!({"target": "invoice", "customer": "*"})));
        assert!(!allows(json!({"target": "invoice", "customer": 1})));
        assert!(!allows(json!({"target": "invoice"})));
        assert!(!allows(
            json!({"target": "invoice", "customer": "1", "x": 1})
        ));
    }

    #[tokio::test]
    async fn identical_lists_are_held_once_until_the_last_goes() {
        let lists = AllowedLists::default();
        let text = r#"[{"customer":"1","target":"message"}]"#;
        let a = lists.from_json(text).await.expect("allowed");
        let b = lists.from_json(text).await.expect("allowed");
        // The same list from a custom backend's values: found under the same text.
        let c = lists
            .from_values(vec![json!({"target": "message", "customer": "1"})])
            .await
            .expect("allowed");
        assert!(a.shares_with(&b) && a.shares_with(&c));
        assert_eq!(lists.len(), 1);
        // The same rooms in other spacing or key order are another text: kept on their own,
        // with the first frame the parsed values give, as always.
        let spaced = lists
            .from_json(r#"[ {"target": "message", "customer": "1"} ]"#)
            .await
            .expect("allowed");
        assert!(!spaced.shares_with(&a));
        assert_eq!(spaced.first_frame(), a.first_frame());
        assert_eq!(lists.len(), 2);
        drop((a, b, spaced));
        assert_eq!(lists.len(), 1, "c still holds it");
        drop(c);
        assert!(lists.is_empty());
        assert!(
            lists.from_json(text).await.is_some(),
            "read again after it went"
        );
    }

    #[test]
    fn lists_on_one_hash_are_told_apart_by_their_text() {
        let lists = AllowedLists::default();
        let one = List::from_json(r#"[{"a":1}]"#).expect("list");
        let two = List::from_json(r#"[{"a":2}]"#).expect("list");
        let one = lists.shelf.insert(7, one);
        let two = lists.shelf.insert(7, two);
        assert!(!one.shares_with(&two));
        assert_eq!(lists.len(), 2);
        let found = lists.shelf.find(7, r#"[{"a":2}]"#).expect("held");
        assert!(found.shares_with(&two));
        assert!(lists.shelf.find(7, r#"[{"a":3}]"#).is_none());
        drop((one, found));
        assert_eq!(lists.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_bringing_a_new_list_at_once_read_it_once() {
        let lists = Arc::new(AllowedLists::default());
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let text: Arc<str> = r#"[{"customer":"1","target":"message"}]"#.into();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (lists, reads, text) = (lists.clone(), reads.clone(), text.clone());
                tokio::spawn(async move {
                    let read = || {
                        reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // A long read, so that the others arrive meanwhile.
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        List::from_json(&text)
                    };
                    lists
                        .shelf
                        .find_or_read(&text, read)
                        .await
                        .expect("allowed")
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.push(task.await.expect("task"));
        }
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(all.iter().all(|list| list.shares_with(&all[0])));
        assert_eq!(lists.len(), 1);
        assert!(lists.shelf.reading().is_empty(), "turns are given back");
    }
}
