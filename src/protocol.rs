//! What crosses the wire: client frames in, answers out, and trigger bodies.
//!
//! Every JSON text here is the exact one of PROTOCOL.md; tests compare them as JSON values.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::room::{Room, RoomError, RoomLimits};

/// Answers that never vary: built once, sent as they are.
pub mod answer {
    pub const PONG: &str = "pong";
    pub const SUCCESS: &str = r#"{"code":"success"}"#;
    pub const ROOM_NOT_FOUND: &str = r#"{"code":"error","message":"room-not-found"}"#;
    pub const NO_REQUEST_ID: &str = r#"{"code":"error","message":"no-request-id"}"#;
    pub const NOT_SUBSCRIBED: &str = r#"{"code":"error","message":"not-subscribed"}"#;
    pub const INVALID_ROOM: &str = r#"{"code":"error","message":"invalid-room"}"#;
    pub const TOO_MANY_SUBSCRIPTIONS: &str =
        r#"{"code":"error","message":"too-many-subscriptions"}"#;
    pub const INVALID_SINCE: &str = r#"{"code":"error","message":"invalid-since"}"#;
    pub const STATUS_DISABLED: &str = r#"{"code":"error","message":"status-disabled"}"#;
    pub const NOT_AUTHORIZED: &str = r#"{"is_authorized":false}"#;
    pub const BACKEND_UNAVAILABLE: &str =
        r#"{"is_authorized":false,"error":"backend-unavailable"}"#;
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The epoch the positions are in.
    pub epoch: Arc<str>,
    /// The newest position taken in when the subscription joined.
    pub top: u64,
    /// For a resume: whether what it missed will be replayed.
    pub recovered: Option<Result<(), NotRecovered>>,
}

/// The two errors that carry the connection's own id as `requestId`.
pub fn connection_error(connection_id: &str, message: &str) -> String {
    json!({"requestId": connection_id, "code": "error", "message": message}).to_string()
}

/// The answer to a subscribe with positions (PROTOCOL.md section 7).
pub fn subscribed(epoch: &str, joined: &Joined) -> String {
    let mut answer = json!({"code": "success"});
    if let Some(recovered) = joined.recovered {
        answer["recovered"] = Value::Bool(recovered.is_ok());
    }
    answer["epoch"] = Value::from(epoch);
    answer["offset"] = Value::from(joined.top);
    answer.to_string()
}

/// A gap notice (PROTOCOL.md section 7): the subscription `request_id_json` (already a JSON
/// string) lost publishes up to `position` because its connection fell behind.
pub fn gap(request_id_json: &str, position: u64) -> String {
    format!(r#"{{"type":"gap","requestId":{request_id_json},"offset":{position}}}"#)
}

/// Beyond: a subscription dropped by the server (re-authorisation).
pub fn unsubscribed(request_id: &str) -> String {
    json!({"type": "unsubscribed", "requestId": request_id}).to_string()
}

/// The `Visitor` methods for JSON's scalars (and, with `str`, strings), each answering
/// `$value`: for visitors that care about one kind of value and read every other as one thing.
macro_rules! scalars_read_as {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    ($value:expr, str) => {
        scalars_read_as!($value);

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// One parsed client text frame.
#[derive(Debug, PartialEq)]
pub enum ClientMessage {
    Ping,
    Subscribe {
        request_id: Option<String>,
        room: Result<Room, RoomError>,
        /// Whether the subscription has positions (PROTOCOL.md section 7).
        positions: Positions,
    },
    Unsubscribe {
        request_id: Option<String>,
    },
    Status,
    /// Text that is not JSON.
    NotJson,
    /// JSON that is not an object, or with an unknown or missing `type`.
    TypeNotAllowed,
}

/// What a subscribe asks for in positions (PROTOCOL.md section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    /// Neither `recover` nor `since`: a 3.1 subscription, frames exactly as 3.1 sends them.
    None,
    /// `"recover": true`: positions on its publishes from now on.
    Live,
    /// `"since": {"epoch", "offset"}`: resume after that position.
    Since(Since),
    /// A `since` that is not an object with a string `epoch` and a non-negative integer
    /// `offset`.
    InvalidSince,
}

/// A position to resume after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

impl Positions {
    /// Reads the `recover` and `since` keys of a subscribe (`since` wins; `recover` opts in
    /// only when it is `true`).
    pub fn from_keys(recover: Option<&Value>, since: Option<&Value>) -> Positions {
        match since {
            Some(since) => match (since.get("epoch"), since.get("offset")) {
                (Some(Value::String(epoch)), Some(offset)) if since.is_object() => {
                    match offset.as_u64() {
                        Some(offset) => Positions::Since(Since {
                            epoch: epoch.clone(),
                            offset,
                        }),
                        None => Positions::InvalidSince,
                    }
                }
                _ => Positions::InvalidSince,
            },
            None if recover == Some(&Value::Bool(true)) => Positions::Live,
            None => Positions::None,
        }
    }
}

impl ClientMessage {
    /// Reads one client text frame. Accepts exactly the texts `serde_json::Value` accepts
    /// and reads them as a `Value` would (a repeated key keeps its last value), in one pass
    /// without building the tree: parsing was 8 % of the server's CPU when one client
    /// subscribes as fast as it can, most of it allocating the tree.
    pub fn parse(text: &str, limits: &RoomLimits) -> ClientMessage {
        if text == "ping" {
            return ClientMessage::Ping;
        }
        let Ok(frame) = serde_json::from_str::<FrameInput<'_>>(text) else {
            return ClientMessage::NotJson;
        };
        let FrameInput::Object {
            kind,
            request_id,
            room,
            recover,
            since,
        } = frame
        else {
            return ClientMessage::TypeNotAllowed;
        };
        // A requestId names a subscription; the original only ever receives strings, so a
        // number or null is no request id at all.
        let request_id = request_id.map(Cow::into_owned);
        match kind.as_deref() {
            Some("subscribe") => {
                let room = match room {
                    Some(RoomInput::Members(members)) => Room::from_members(members, limits),
                    Some(RoomInput::NotAnObject) | None => Err(RoomError::NotAnObject),
                };
                let positions = Positions::from_keys(recover.as_ref(), since.as_ref());
                ClientMessage::Subscribe {
                    request_id,
                    room,
                    positions,
                }
            }
            Some("unsubscribe") => ClientMessage::Unsubscribe { request_id },
            Some("status") => ClientMessage::Status,
            _ => ClientMessage::TypeNotAllowed,
        }
    }
}

/// A client frame as the parser delivers it: the three fields that matter, each as its last
/// occurrence, or a JSON text that is not an object.
enum FrameInput<'a> {
    Object {
        /// `type`, when it is a string.
        kind: Option<Cow<'a, str>>,
        /// `requestId`, when it is a string.
        request_id: Option<Cow<'a, str>>,
        room: Option<RoomInput>,
        /// `recover` and `since` (section 7): rare, so read as values.
        recover: Option<Value>,
        since: Option<Value>,
    },
    NotAnObject,
}

impl<'de> Deserialize<'de> for FrameInput<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FrameInput<'de>, D::Error> {
        d.deserialize_any(FrameVisitor)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = FrameInput<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a client frame")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FrameInput<'de>, A::Error> {
        let (mut kind, mut request_id, mut room) = (None, None, None);
        let (mut recover, mut since) = (None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Type => kind = map.next_value::<MaybeStr<'de>>()?.0,
                Field::RequestId => request_id = map.next_value::<MaybeStr<'de>>()?.0,
                Field::Room => room = Some(map.next_value::<RoomInput>()?),
                Field::Recover => recover = Some(map.next_value::<Value>()?),
                Field::Since => since = Some(map.next_value::<Value>()?),
                Field::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(FrameInput::Object {
            kind,
            request_id,
            room,
            recover,
            since,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<FrameInput<'de>, A::Error> {
        SkipVisitor.visit_seq(seq).map(|_| FrameInput::NotAnObject)
    }

    scalars_read_as!(FrameInput::NotAnObject, str);
}

/// The keys of a client frame that mean something.
enum Field {
    Type,
    RequestId,
    Room,
    Recover,
    Since,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "type" => Field::Type,
                    "requestId" => Field::RequestId,
                    "room" => Field::Room,
                    "recover" => Field::Recover,
                    "since" => Field::Since,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_str(FieldVisitor)
    }
}

/// Any JSON value, kept only when it is a string (borrowed from the frame when it holds no
/// escapes).
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MaybeStr<'de>, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = MaybeStr<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }

            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(s))))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(Some(Cow::Owned(s.to_string()))))
            }

            scalars_read_as!(MaybeStr(None));

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MaybeStr<'de>, A::Error> {
                SkipVisitor.visit_seq(seq).map(|_| MaybeStr(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MaybeStr<'de>, A::Error> {
                SkipVisitor.visit_map(map).map(|_| MaybeStr(None))
            }
        }
        d.deserialize_any(StrVisitor)
    }
}

/// Any JSON value, read and dropped. Unlike `IgnoredAny`, it checks what a `Value` checks
/// (numbers in range), so that a frame is JSON here exactly when it is JSON to a `Value`.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    scalars_read_as!(Skip, str);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// Why a trigger body was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TriggerError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("trigger must be a JSON object with \"rooms\" and \"data\"")]
    NotAnObject,
    #[error("trigger has no \"rooms\" list")]
    NoRooms,
    #[error("trigger has no \"data\"")]
    NoData,
    #[error("room {index} of the trigger is invalid: {source}")]
    InvalidRoom { index: usize, source: RoomError },
    #[error("trigger is malformed: {0}")]
    Malformed(String),
    #[error("a batch must hold at most {0} triggers")]
    BatchTooLarge(usize),
    #[error("this node reads a shared stream (amqp_stream): publish into the exchange")]
    StreamOnly,
}

/// A parsed trigger: its rooms, and the publish frame's bytes up to the requestId.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub rooms: Vec<Room>,
    /// `{"type":"publish","data":<data>,"requestId":` — the data is serialized once here and
    /// shared by every subscriber, who only adds its own requestId and the closing brace.
    pub frame_prefix: Bytes,
    /// Where the node's sequence put it (PROTOCOL.md section 7); 0 until it is taken in.
    pub position: u64,
}

#[derive(Deserialize)]
struct TriggerBody<'a> {
    rooms: Option<Vec<RoomInput>>,
    // `null` is valid data: present-but-null must not read as missing.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// A trigger's room as the parser delivers it: an object's members in arrival order, without
/// a `serde_json::Map` built first (a tree node and a copy of every key per room: parsing was
/// 14 % of the server's CPU in the `rooms` benchmark).
enum RoomInput {
    Members(Vec<(String, Value)>),
    NotAnObject,
}

impl<'de> Deserialize<'de> for RoomInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RoomInput, D::Error> {
        d.deserialize_any(RoomInputVisitor)
    }
}

struct RoomInputVisitor;

impl<'de> Visitor<'de> for RoomInputVisitor {
    type Value = RoomInput;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a room")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RoomInput, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
        while let Some(member) = map.next_entry::<String, Value>()? {
            members.push(member);
        }
        Ok(RoomInput::Members(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RoomInput, A::Error> {
        SkipVisitor.visit_seq(seq).map(|_| RoomInput::NotAnObject)
    }

    scalars_read_as!(RoomInput::NotAnObject, str);
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as Deserialize>::deserialize(d).map(Some)
}

impl Trigger {
    /// Parses one trigger object.
    pub fn parse(body: &[u8], limits: &RoomLimits) -> Result<Trigger, TriggerError> {
        let raw: &RawValue =
            serde_json::from_slice(body).map_err(|e| TriggerError::NotJson(e.to_string()))?;
        Self::from_raw(raw, limits)
    }

    fn from_raw(raw: &RawValue, limits: &RoomLimits) -> Result<Trigger, TriggerError> {
        if !raw.get().starts_with('{') {
            return Err(TriggerError::NotAnObject);
        }
        let body: TriggerBody<'_> =
            serde_json::from_str(raw.get()).map_err(|e| TriggerError::Malformed(e.to_string()))?;
        let room_values = body.rooms.ok_or(TriggerError::NoRooms)?;
        let data = body.data.ok_or(TriggerError::NoData)?;
        let rooms = room_values
            .into_iter()
            .enumerate()
            .map(|(index, input)| {
                let room = match input {
                    RoomInput::Members(members) => Room::from_members(members, limits),
                    RoomInput::NotAnObject => Err(RoomError::NotAnObject),
                };
                room.map_err(|source| TriggerError::InvalidRoom { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut frame_prefix = String::with_capacity(data.get().len() + 48);
        frame_prefix.push_str(r#"{"type":"publish","data":"#);
        frame_prefix.push_str(data.get());
        frame_prefix.push_str(r#","requestId":"#);
        Ok(Trigger {
            rooms,
            frame_prefix: Bytes::from(frame_prefix),
            position: 0,
        })
    }

    /// Parses a trigger object or a JSON list of them (a batch).
    pub fn parse_batch(
        body: &[u8],
        limits: &RoomLimits,
        max_batch: usize,
    ) -> Result<Vec<Trigger>, TriggerError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            // One pass over a batch: the list of raw items validates the JSON as it goes.
            let items: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| TriggerError::NotJson(e.to_string()))?;
            if items.len() > max_batch {
                return Err(TriggerError::BatchTooLarge(max_batch));
            }
            items
                .into_iter()
                .map(|item| Self::from_raw(item, limits))
                .collect()
        } else {
            Ok(vec![Self::parse(body, limits)?])
        }
    }

    /// The 3.1 publish frame for one subscription as one string.
    #[cfg(test)]
    fn frame_for(&self, request_id_json: &str) -> String {
        let prefix = std::str::from_utf8(&self.frame_prefix).unwrap_or_default();
        format!("{prefix}{request_id_json}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> ClientMessage {
        ClientMessage::parse(text, &RoomLimits::default())
    }

    #[test]
    fn client_frames_parse() {
        assert_eq!(parse("ping"), ClientMessage::Ping);
        assert_eq!(parse("pong"), ClientMessage::NotJson);
        assert_eq!(parse("[1]"), ClientMessage::TypeNotAllowed);
        assert_eq!(parse(r#"{"type":"nope"}"#), ClientMessage::TypeNotAllowed);
        assert_eq!(parse(r#"{"requestId":"x"}"#), ClientMessage::TypeNotAllowed);
        assert_eq!(parse(r#"{"type":"status"}"#), ClientMessage::Status);
        assert_eq!(
            parse(r#"{"type":"unsubscribe","room":{"a":1}}"#),
            ClientMessage::Unsubscribe { request_id: None }
        );
        match parse(r#"{"type":"subscribe","room":{"a":1},"requestId":"r"}"#) {
            ClientMessage::Subscribe {
                request_id,
                room,
                positions,
            } => {
                assert_eq!(request_id.as_deref(), Some("r"));
                assert!(room.is_ok());
                assert_eq!(positions, Positions::None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let with = |keys: &str| match parse(&format!(
            r#"{{"type":"subscribe","room":{{"a":1}},"requestId":"r",{keys}}}"#
        )) {
            ClientMessage::Subscribe { positions, .. } => positions,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(with(r#""recover":true"#), Positions::Live);
        assert_eq!(with(r#""recover":1"#), Positions::None);
        assert_eq!(
            with(r#""recover":true,"since":{"epoch":"e","offset":7}"#),
            Positions::Since(Since {
                epoch: "e".into(),
                offset: 7
            })
        );
        assert_eq!(with(r#""since":{"epoch":"e"}"#), Positions::InvalidSince);
        match parse(r#"{"type":"subscribe","requestId":"r"}"#) {
            ClientMessage::Subscribe { room, .. } => assert!(room.is_err()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn trigger_frame_splices_request_id() {
        let t = Trigger::parse(
            br#"{"rooms":[{"a":1}],"data":{"x":[1, 2]}}"#,
            &RoomLimits::default(),
        )
        .expect("valid");
        let frame = t.frame_for(r#""req-1""#);
        let v: Value = serde_json::from_str(&frame).expect("json");
        assert_eq!(
            v,
            json!({"type":"publish","data":{"x":[1,2]},"requestId":"req-1"})
        );
    }

    #[test]
    fn bad_triggers_are_refused_with_reasons() {
        let l = RoomLimits::default();
        assert!(matches!(
            Trigger::parse(b"nope", &l),
            Err(TriggerError::NotJson(_))
        ));
        assert_eq!(
            Trigger::parse(b"[]", &l).err(),
            Some(TriggerError::NotAnObject)
        );
        assert_eq!(
            Trigger::parse(br#"{"data":1}"#, &l).err(),
            Some(TriggerError::NoRooms)
        );
        assert_eq!(
            Trigger::parse(br#"{"rooms":[]}"#, &l).err(),
            Some(TriggerError::NoData)
        );
        assert!(matches!(
            Trigger::parse(br#"{"rooms":[{"a":1},"x"],"data":1}"#, &l),
            Err(TriggerError::InvalidRoom { index: 1, .. })
        ));
        assert!(matches!(
            Trigger::parse(br#"{"rooms":"x","data":1}"#, &l),
            Err(TriggerError::Malformed(_))
        ));
    }

    #[test]
    fn batches_parse() {
        let l = RoomLimits::default();
        let batch = Trigger::parse_batch(
            br#"[{"rooms":[{"a":1}],"data":1},{"rooms":[],"data":null}]"#,
            &l,
            10,
        )
        .expect("valid");
        assert_eq!(batch.len(), 2);
        assert_eq!(
            Trigger::parse_batch(br#"[{"rooms":[],"data":1}]"#, &l, 0).err(),
            Some(TriggerError::BatchTooLarge(0))
        );
    }
}
