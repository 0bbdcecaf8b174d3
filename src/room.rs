//! Rooms: parsing, canonical form, and the two matching rules of PROTOCOL.md section 2 and 4.
//!
//! A room is a JSON object of scalar values. We keep it as its key/value pairs sorted by key,
//! each value as its canonical JSON text, so that key order never matters, `1` and `"1"` stay
//! different values, and the whole room has one canonical string usable as a map key.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// The canonical JSON text of the wildcard value `"*"`.
pub const WILDCARD: &str = "\"*\"";

/// Why a JSON value is not a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("a room must be a JSON object")]
    NotAnObject,
    #[error("room value of key {0:?} must be a string, number, boolean or null")]
    NotScalar(String),
    #[error("room has {0} keys, more than the limit of {1}")]
    TooManyKeys(usize, usize),
    #[error("room key or value longer than the limit of {0} bytes")]
    TooLong(usize),
}

/// Bounds on what a room may contain; rooms are hashed and stored per subscription, so an
/// attacker-sized room would cost memory and CPU on every trigger.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    pub max_keys: usize,
    pub max_len: usize,
}

/// The most keys a room may have: wildcard positions are a bit mask in a `u64` (the hub's
/// index, [`Room::with_wildcards`]), so a 65th key could not be told apart.
pub const MAX_ROOM_KEYS: usize = 64;

impl Default for RoomLimits {
    fn default() -> Self {
        // 16 keys covers every real room we have seen (2-4 keys); 256 bytes per key or value
        // bounds one room's canonical text to about 8 KiB.
        Self {
            max_keys: 16,
            max_len: 256,
        }
    }
}

/// One room in canonical form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Room {
    /// Key/value pairs sorted by key; values are canonical JSON text.
    pairs: Arc<[(Box<str>, Box<str>)]>,
    /// The canonical JSON object text, e.g. `{"customer":"1","target":"message"}`.
    canonical: Arc<str>,
}

impl Room {
    /// Parses a client- or trigger-supplied room.
    pub fn parse(value: &Value, limits: &RoomLimits) -> Result<Room, RoomError> {
        let map = value.as_object().ok_or(RoomError::NotAnObject)?;
        Self::from_map(map, limits)
    }

    pub fn from_map(map: &Map<String, Value>, limits: &RoomLimits) -> Result<Room, RoomError> {
        if map.len() > limits.max_keys {
            return Err(RoomError::TooManyKeys(map.len(), limits.max_keys));
        }
        let mut pairs: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(map.len());
        for (key, value) in map {
            let text = value_text(key, value, limits)?;
            pairs.push((key.as_str().into(), text));
        }
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Self::from_sorted_pairs(pairs))
    }

    /// A room from an object's members in arrival order, as a trigger's parser delivers them
    /// (no `Map` built first); a repeated key keeps its last value, as in a `Map`. Equal to
    /// [`Room::from_map`] of the same object, errors included.
    pub fn from_members(
        mut members: Vec<(String, Value)>,
        limits: &RoomLimits,
    ) -> Result<Room, RoomError> {
        // Stable: of equal keys the last to arrive ends up last, and is the one kept.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        if members.len() > limits.max_keys {
            return Err(RoomError::TooManyKeys(members.len(), limits.max_keys));
        }
        let mut pairs: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(members.len());
        for (key, value) in members {
            let text = value_text(&key, &value, limits)?;
            pairs.push((key.into_boxed_str(), text));
        }
        Ok(Self::from_sorted_pairs(pairs))
    }

    fn from_sorted_pairs(pairs: Vec<(Box<str>, Box<str>)>) -> Room {
        let len = pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + 2;
        let mut canonical = String::with_capacity(len);
        canonical.push('{');
        for (i, (key, value)) in pairs.iter().enumerate() {
            if i > 0 {
                canonical.push(',');
            }
            push_json_string(&mut canonical, key);
            canonical.push(':');
            canonical.push_str(value);
        }
        canonical.push('}');
        Room {
            pairs: pairs.into(),
            canonical: canonical.into(),
        }
    }

    /// The room's pairs, sorted by key, values as canonical JSON text.
    pub fn pairs(&self) -> &[(Box<str>, Box<str>)] {
        &self.pairs
    }

    /// The canonical JSON text; equal rooms have equal canonical text.
    pub fn canonical(&self) -> &Arc<str> {
        &self.canonical
    }

    /// The sorted key set, as one string: rooms only ever match rooms of the same shape.
    pub fn shape(&self) -> String {
        let mut shape = String::new();
        self.write_shape(&mut shape);
        shape
    }

    /// Writes [`Room::shape`] into `out`, a buffer reused across a trigger's rooms.
    pub fn write_shape(&self, out: &mut String) {
        out.clear();
        for (key, _) in self.pairs.iter() {
            // Keys are joined with a byte JSON text can never contain unescaped.
            out.push_str(key);
            out.push('\u{0}');
        }
    }

    /// This room with the value at `index` replaced by the wildcard.
    pub(crate) fn with_wildcards(&self, mask: u64) -> Room {
        let pairs = self
            .pairs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let value = if mask & (1 << i) != 0 {
                    WILDCARD.into()
                } else {
                    v.clone()
                };
                (k.clone(), value)
            })
            .collect();
        Self::from_sorted_pairs(pairs)
    }

    /// Subscribe permission (section 2): `self` is an allowed room, `requested` what the
    /// client asks for. `"*"` is a wildcard on the allowed side only.
    pub fn allows(&self, requested: &Room) -> bool {
        self.pairs.len() == requested.pairs.len()
            && self
                .pairs
                .iter()
                .zip(requested.pairs.iter())
                .all(|((ak, av), (rk, rv))| ak == rk && (av == rv || av.as_ref() == WILDCARD))
    }

    /// Trigger matching (section 4, Beyond): `"*"` on either side matches any value.
    pub fn matches_trigger(&self, trigger: &Room) -> bool {
        self.pairs.len() == trigger.pairs.len()
            && self
                .pairs
                .iter()
                .zip(trigger.pairs.iter())
                .all(|((sk, sv), (tk, tv))| {
                    sk == tk && (sv == tv || sv.as_ref() == WILDCARD || tv.as_ref() == WILDCARD)
                })
    }

    /// Whether any value is the wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.pairs.iter().any(|(_, v)| v.as_ref() == WILDCARD)
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// A room value's canonical JSON text, after the checks every room member passes.
fn value_text(key: &str, value: &Value, limits: &RoomLimits) -> Result<Box<str>, RoomError> {
    // As `value.to_string()` writes it, without the formatter's small writes into a string
    // that grows as it goes.
    let text = match value {
        Value::String(s) => {
            let mut text = String::with_capacity(s.len() + 2);
            push_json_string(&mut text, s);
            text
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(true) => "true".to_string(),
        Value::Bool(false) => "false".to_string(),
        Value::Null => "null".to_string(),
        Value::Array(_) | Value::Object(_) => return Err(RoomError::NotScalar(key.to_string())),
    };
    if key.len() > limits.max_len || text.len() > limits.max_len.saturating_add(2) {
        return Err(RoomError::TooLong(limits.max_len));
    }
    Ok(text.into_boxed_str())
}

/// Appends `text` as a JSON string, as `serde_json` writes it.
fn push_json_string(out: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&Value::from(text).to_string());
    }
}

/// The rooms a connection may subscribe to, as the backend gave them.
#[derive(Debug, Clone, Default)]
pub struct AllowedRooms {
    /// Exactly what the backend sent, echoed in the first frame (and then dropped).
    pub raw: Vec<Value>,
    /// The scalar-valued ones in canonical form; an allowed room holding a nested value can
    /// never allow a (scalar-only) requested room, so it is left out of matching.
    rooms: Vec<Room>,
}

impl AllowedRooms {
    /// Reads the backend's `allowed_rooms`. `None` when it is not a list of objects, which the
    /// protocol treats as a refusal.
    pub fn from_backend(list: Vec<Value>) -> Option<AllowedRooms> {
        // Allowed rooms come from the trusted backend: no size limits beyond memory.
        let limits = RoomLimits {
            max_keys: usize::MAX,
            max_len: usize::MAX,
        };
        let mut rooms = Vec::with_capacity(list.len());
        for value in &list {
            let map = value.as_object()?;
            if let Ok(room) = Room::from_map(map, &limits) {
                rooms.push(room);
            }
        }
        Some(AllowedRooms { raw: list, rooms })
    }

    pub fn allows(&self, requested: &Room) -> bool {
        self.rooms.iter().any(|allowed| allowed.allows(requested))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn room(v: Value) -> Room {
        Room::parse(&v, &RoomLimits::default()).expect("valid room")
    }

    #[test]
    fn key_order_does_not_matter() {
        assert_eq!(room(json!({"a": 1, "b": 2})), room(json!({"b": 2, "a": 1})));
        assert_eq!(
            room(json!({"b": 2, "a": 1})).canonical().as_ref(),
            r#"{"a":1,"b":2}"#
        );
    }

    #[test]
    fn number_and_string_values_differ() {
        assert_ne!(room(json!({"a": 1})), room(json!({"a": "1"})));
        assert!(!room(json!({"a": 1})).allows(&room(json!({"a": "1"}))));
    }

    #[test]
    fn wildcard_in_allowed_room_allows_any_value() {
        let allowed = room(json!({"customer": "*"}));
        assert!(allowed.allows(&room(json!({"customer": "1"}))));
        assert!(allowed.allows(&room(json!({"customer": 7}))));
        assert!(allowed.allows(&room(json!({"customer": "*"}))));
    }

    #[test]
    fn concrete_allowed_room_never_allows_wildcard() {
        assert!(!room(json!({"customer": "1"})).allows(&room(json!({"customer": "*"}))));
    }

    #[test]
    fn key_sets_must_be_equal() {
        let allowed = room(json!({"customer": "*"}));
        assert!(!allowed.allows(&room(json!({"customer": "1", "target": "x"}))));
        assert!(!allowed.allows(&room(json!({}))));
        assert!(!room(json!({"a": "*", "b": "*"})).allows(&room(json!({"a": 1}))));
    }

    #[test]
    fn trigger_wildcards_match_both_ways() {
        let sub = room(json!({"target": "message", "customer": "1"}));
        assert!(sub.matches_trigger(&room(json!({"target": "message", "customer": "*"}))));
        assert!(sub.matches_trigger(&room(json!({"customer": "1", "target": "message"}))));
        assert!(!sub.matches_trigger(&room(json!({"target": "message", "customer": "2"}))));
        let star_sub = room(json!({"target": "message", "customer": "*"}));
        assert!(star_sub.matches_trigger(&room(json!({"target": "message", "customer": "2"}))));
        assert!(!star_sub.matches_trigger(&room(json!({"target": "other", "customer": "2"}))));
        assert!(!star_sub.matches_trigger(&room(json!({"target": "message"}))));
    }

    #[test]
    fn non_scalar_values_are_refused() {
        let limits = RoomLimits::default();
        assert_eq!(
            Room::parse(&json!(["a"]), &limits),
            Err(RoomError::NotAnObject)
        );
        assert_eq!(
            Room::parse(&json!({"a": {"b": 1}}), &limits),
            Err(RoomError::NotScalar("a".into()))
        );
        assert!(Room::parse(&json!({"a": [1]}), &limits).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let limits = RoomLimits {
            max_keys: 2,
            max_len: 4,
        };
        assert!(matches!(
            Room::parse(&json!({"a": 1, "b": 2, "c": 3}), &limits),
            Err(RoomError::TooManyKeys(3, 2))
        ));
        assert!(matches!(
            Room::parse(&json!({"a": "12345"}), &limits),
            Err(RoomError::TooLong(4))
        ));
        assert!(Room::parse(&json!({"abcd": "1234"}), &limits).is_ok());
    }

    #[test]
    fn allowed_rooms_must_be_objects() {
        assert!(AllowedRooms::from_backend(vec![json!("foo")]).is_none());
        let allowed = AllowedRooms::from_backend(vec![json!({"a": "*"}), json!({"n": {"x": 1}})])
            .expect("list of objects");
        assert!(allowed.allows(&room(json!({"a": 3}))));
        assert_eq!(allowed.raw.len(), 2);
    }

    #[test]
    fn wildcard_masks_replace_values() {
        let r = room(json!({"a": 1, "b": 2}));
        assert_eq!(
            r.with_wildcards(0b10).canonical().as_ref(),
            r#"{"a":1,"b":"*"}"#
        );
    }
}
