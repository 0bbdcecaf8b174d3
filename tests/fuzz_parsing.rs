//! Property tests for everything a stranger can send us: client text frames, rooms, and trigger
//! bodies. Arbitrary text, bytes and JSON never panic, and what does parse obeys the rules of
//! PROTOCOL.md sections 2 and 4, checked against a naive reference written here.
//!
//! Case count: `DEFAULT_CASES` per property, so the file runs in seconds in a debug build (CI).
//! For a longer run by hand set `PROPTEST_CASES`, e.g.
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz_parsing` (see docs/fuzzing.md).

use high_templar::protocol::{ClientMessage, Positions, Since, Trigger, TriggerError};
use high_templar::room::{AllowedLists, AllowedRooms, Room, RoomError, RoomLimits};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Map, Value};

/// Cases per property when `PROPTEST_CASES` is not set: 512 × the 17 properties below take
/// about two seconds of CPU in a debug build.
const DEFAULT_CASES: u32 = 512;

/// The largest batch `parse_batch` accepts in these tests; small, so that the limit is hit.
const MAX_BATCH: usize = 4;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    // `ProptestConfig::default()` already reads PROPTEST_CASES; only our default differs.
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    // Failing inputs are kept in `tests/fuzz_parsing.proptest-regressions` and replayed first
    // on every run; commit that file when it appears.
    config.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource(
        "proptest-regressions",
    )));
    config
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Short strings from an alphabet with JSON's troublemakers: quotes, escapes, NUL, non-ASCII,
/// the wildcard.
fn small_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c*\"\\\\\u{0}\u{1f}é€😀 ]{0,6}",
        select(vec!["*", "1", "", "type", "room", "requestId", "subscribe"]).prop_map(String::from),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Non-finite floats have no JSON form; serde_json would turn them into null.
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        small_string().prop_map(Value::from),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(small_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object with mostly scalar values: usually a valid room, sometimes not.
fn room_like() -> impl Strategy<Value = Value> {
    let value = prop_oneof![8 => scalar(), 1 => json_value()];
    prop::collection::btree_map(small_string(), value, 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Client frames shaped like the real ones, with every field possibly wrong.
fn client_frame() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        select(vec![
            "subscribe",
            "unsubscribe",
            "status",
            "ping",
            "publish"
        ])
        .prop_map(Value::from),
        json_value(),
    ];
    let request_id = prop_oneof![small_string().prop_map(Value::from), json_value()];
    let room = prop_oneof![room_like(), json_value()];
    let recover = prop_oneof![Just(json!(true)), json_value()];
    let offset = prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        json_value(),
    ];
    let since = prop_oneof![
        3 => (prop::option::of(small_string().prop_map(Value::from)), prop::option::of(offset))
            .prop_map(|(epoch, offset)| {
                let mut map = Map::new();
                map.extend(epoch.map(|e| ("epoch".to_string(), e)));
                map.extend(offset.map(|o| ("offset".to_string(), o)));
                Value::Object(map)
            }),
        1 => json_value(),
    ];
    (
        prop::option::of(kind),
        prop::option::of(request_id),
        prop::option::of(room),
        prop::option::of(recover),
        prop::option::of(since),
    )
        .prop_map(|(kind, request_id, room, recover, since)| {
            let mut map = Map::new();
            let fields = [
                ("type", kind),
                ("requestId", request_id),
                ("room", room),
                ("recover", recover),
                ("since", since),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    map.insert(key.to_string(), value);
                }
            }
            Value::Object(map)
        })
}

/// Trigger objects shaped like the real ones, with every field possibly wrong.
fn trigger_like() -> impl Strategy<Value = Value> {
    let rooms = prop_oneof![
        4 => prop::collection::vec(room_like(), 0..4).prop_map(Value::Array),
        1 => json_value(),
    ];
    (prop::option::of(rooms), prop::option::of(json_value())).prop_map(|(rooms, data)| {
        let mut map = Map::new();
        if let Some(rooms) = rooms {
            map.insert("rooms".into(), rooms);
        }
        if let Some(data) = data {
            map.insert("data".into(), data);
        }
        Value::Object(map)
    })
}

/// A trigger body: one trigger, a batch, or any JSON at all.
fn trigger_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => trigger_like(),
        2 => prop::collection::vec(trigger_like(), 0..(MAX_BATCH + 2)).prop_map(Value::Array),
        1 => json_value(),
    ]
}

/// A few room keys and values, so that random rooms often share a shape and a value.
const KEYS: [&str; 3] = ["a", "b", "c"];

fn small_room() -> impl Strategy<Value = Map<String, Value>> {
    let value = select(vec![
        json!("*"),
        json!("1"),
        json!(1),
        json!("2"),
        json!(true),
        Value::Null,
    ]);
    subsequence(KEYS.to_vec(), 0..=KEYS.len()).prop_flat_map(move |keys| {
        prop::collection::vec(value.clone(), keys.len()).prop_map(move |values| {
            keys.iter()
                .map(|k| k.to_string())
                .zip(values)
                .collect::<Map<String, Value>>()
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The naive reference: PROTOCOL.md sections 2 and 4 read literally
// ---------------------------------------------------------------------------------------------

fn is_star(value: &Value) -> bool {
    value.as_str() == Some("*")
}

/// Section 2: same key set; each allowed value equals the requested one or is `"*"`.
fn reference_allows(allowed: &Map<String, Value>, requested: &Map<String, Value>) -> bool {
    allowed.len() == requested.len()
        && allowed
            .iter()
            .all(|(key, a)| requested.get(key).is_some_and(|r| is_star(a) || a == r))
}

/// Section 4 (Beyond): same key set; values equal or either one is `"*"`.
fn reference_matches(subscribed: &Map<String, Value>, trigger: &Map<String, Value>) -> bool {
    subscribed.len() == trigger.len()
        && subscribed.iter().all(|(key, s)| {
            trigger
                .get(key)
                .is_some_and(|t| is_star(s) || is_star(t) || s == t)
        })
}

fn room(map: &Map<String, Value>) -> Room {
    Room::from_map(map, &RoomLimits::default()).expect("small rooms are valid")
}

/// The object text with its keys in the given order (serde_json's `Map` would sort them).
fn object_text(pairs: &[(String, Value)]) -> String {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// The reading of a client frame through a `serde_json::Value` (the server's first
/// implementation): the server's one-pass parser must give the same answer for every text.
fn reference_client_message(text: &str, limits: &RoomLimits) -> ClientMessage {
    if text == "ping" {
        return ClientMessage::Ping;
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return ClientMessage::NotJson;
    };
    let Value::Object(mut map) = value else {
        return ClientMessage::TypeNotAllowed;
    };
    let request_id = match map.remove("requestId") {
        Some(Value::String(id)) => Some(id),
        _ => None,
    };
    match map.get("type").and_then(Value::as_str) {
        Some("subscribe") => {
            let room = match map.get("room") {
                Some(room) => Room::parse(room, limits),
                None => Err(RoomError::NotAnObject),
            };
            let positions = Positions::from_keys(map.get("recover"), map.get("since"));
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

/// Value texts a generated `Value` never prints: numbers out of range, escapes, lone
/// surrogates, the frame's own words.
fn odd_value_text() -> impl Strategy<Value = String> {
    select(vec![
        "1e400",
        "-1e400",
        "[1e400]",
        r#"{"a":1e400}"#,
        "-0",
        "1.0",
        "123456789012345678901234567890",
        r#""\ud800""#,
        r#""\ud83d\ude00""#,
        r#""sub\u0073cribe""#,
        r#""subscribe""#,
        r#""unsubscribe""#,
        r#""status""#,
        r#"{"a":1,"a":"2"}"#,
        r#"{"target":"x","target":"*"}"#,
        "[]",
        "{}",
        "nul",
        "",
    ])
    .prop_map(String::from)
}

/// Client frames as raw text: keys may repeat or be escaped, values may be odd, and some
/// texts carry trailing bytes or sit in a list.
fn client_frame_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        4 => select(vec![r#""type""#, r#""requestId""#, r#""room""#]).prop_map(String::from),
        1 => select(vec![r#""typ\u0065""#, r#""room ""#, r#""requestid""#]).prop_map(String::from),
        1 => small_string().prop_map(|k| Value::from(k).to_string()),
    ];
    let value = prop_oneof![
        3 => json_value().prop_map(|v| v.to_string()),
        2 => room_like().prop_map(|v| v.to_string()),
        3 => odd_value_text(),
    ];
    let tail = select(vec!["", "", "", " ", "x", ",", "}", "\n"]);
    (
        prop::collection::vec((key, value), 0..6),
        tail,
        any::<bool>(),
    )
        .prop_map(|(fields, tail, in_list)| {
            let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let object = format!("{{{}}}{tail}", fields.join(","));
            if in_list {
                format!("[{object}]")
            } else {
                object
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Client frames
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_a_client_message(text in any::<String>()) {
        let parsed = ClientMessage::parse(&text, &RoomLimits::default());
        if text != "ping" && serde_json::from_str::<Value>(&text).is_err() {
            prop_assert_eq!(parsed, ClientMessage::NotJson);
        }
    }

    #[test]
    fn client_frames_read_as_a_value_reads_them(
        text in prop_oneof![4 => client_frame_text(), 1 => any::<String>()],
        max_keys in 0usize..4,
    ) {
        let limits = RoomLimits { max_keys, max_len: 8 };
        prop_assert_eq!(
            ClientMessage::parse(&text, &limits),
            reference_client_message(&text, &limits)
        );
    }

    #[test]
    fn any_bytes_as_text_are_a_client_message(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        // Frames arrive as UTF-8; lossy decoding reaches the byte patterns a client can send.
        ClientMessage::parse(&String::from_utf8_lossy(&bytes), &RoomLimits::default());
    }

    #[test]
    fn client_frames_parse_by_their_fields(frame in client_frame(), max_keys in 0usize..4) {
        let limits = RoomLimits { max_keys, max_len: 8 };
        let parsed = ClientMessage::parse(&frame.to_string(), &limits);
        let string_id = frame.get("requestId").and_then(Value::as_str).map(String::from);
        match frame.get("type").and_then(Value::as_str) {
            Some("subscribe") => {
                let expected_room = match frame.get("room") {
                    Some(room) => Room::parse(room, &limits),
                    None => Err(RoomError::NotAnObject),
                };
                // PROTOCOL.md section 7 read literally: `since` wins and must be an object with
                // a string epoch and a non-negative integer offset; `recover` opts in when true.
                let expected_positions = match frame.get("since") {
                    Some(since) => {
                        let epoch = since.get("epoch").and_then(Value::as_str);
                        let offset = since.get("offset").and_then(Value::as_u64);
                        match (since.is_object(), epoch, offset) {
                            (true, Some(epoch), Some(offset)) => {
                                Positions::Since(Since { epoch: epoch.to_string(), offset })
                            }
                            _ => Positions::InvalidSince,
                        }
                    }
                    None if frame.get("recover") == Some(&json!(true)) => Positions::Live,
                    None => Positions::None,
                };
                prop_assert_eq!(
                    parsed,
                    ClientMessage::Subscribe {
                        request_id: string_id,
                        room: expected_room,
                        positions: expected_positions,
                    }
                );
            }
            Some("unsubscribe") => {
                prop_assert_eq!(parsed, ClientMessage::Unsubscribe { request_id: string_id });
            }
            Some("status") => prop_assert_eq!(parsed, ClientMessage::Status),
            _ => prop_assert_eq!(parsed, ClientMessage::TypeNotAllowed),
        }
    }

    #[test]
    fn truncated_frames_never_panic(frame in client_frame(), cut in any::<prop::sample::Index>()) {
        let text = frame.to_string();
        let mut end = cut.index(text.len() + 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        ClientMessage::parse(&text[..end], &RoomLimits::default());
    }
}

// ---------------------------------------------------------------------------------------------
// Rooms
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_json_is_a_room_or_a_reason(value in json_value()) {
        if let Ok(room) = Room::parse(&value, &RoomLimits::default()) {
            prop_assert!(value.is_object());
            prop_assert_eq!(room.pairs().len(), value.as_object().map_or(0, Map::len));
        }
    }

    #[test]
    fn parsed_rooms_obey_their_limits(
        value in room_like(),
        max_keys in 0usize..6,
        max_len in 0usize..8,
    ) {
        let limits = RoomLimits { max_keys, max_len };
        match Room::parse(&value, &limits) {
            Ok(room) => {
                prop_assert!(room.pairs().len() <= max_keys);
                for (key, value) in room.pairs() {
                    prop_assert!(key.len() <= max_len);
                    // The value's JSON text may add two quotes around a string.
                    prop_assert!(value.len() <= max_len + 2);
                }
            }
            Err(RoomError::NotScalar(key)) => {
                let bad = value.get(&key).expect("the named key exists");
                prop_assert!(bad.is_array() || bad.is_object());
            }
            Err(RoomError::TooManyKeys(n, max)) => prop_assert!(n > max && max == max_keys),
            Err(RoomError::TooLong(max)) => prop_assert_eq!(max, max_len),
            Err(RoomError::NotAnObject) => prop_assert!(false, "room_like is always an object"),
        }
    }

    #[test]
    fn canonical_text_reparses_to_the_same_room(value in room_like()) {
        let limits = RoomLimits::default();
        // Exact for floats too, thanks to serde_json's `float_roundtrip` (without it a
        // 17-digit float's canonical text re-parsed one ULP off: a different room).
        if let Ok(room) = Room::parse(&value, &limits) {
            let text = room.canonical().to_string();
            let reparsed: Value = serde_json::from_str(&text).expect("canonical text is JSON");
            prop_assert_eq!(&reparsed, &value);
            let again = Room::parse(&reparsed, &limits).expect("canonical room is valid");
            prop_assert_eq!(again.canonical().as_ref(), text.as_str());
            prop_assert_eq!(again, room);
        }
    }

    #[test]
    fn key_order_never_matters(
        value in room_like(),
        shuffled in any::<u64>(),
    ) {
        let pairs: Vec<(String, Value)> = value
            .as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut permuted = pairs.clone();
        permute(&mut permuted, shuffled);
        let limits = RoomLimits::default();
        // Through the client frame text, where the key order really is the sender's.
        let frame = |pairs: &[(String, Value)]| {
            format!(r#"{{"type":"subscribe","requestId":"r","room":{}}}"#, object_text(pairs))
        };
        let a = ClientMessage::parse(&frame(&pairs), &limits);
        let b = ClientMessage::parse(&frame(&permuted), &limits);
        prop_assert_eq!(a, b);
        let trigger = |pairs: &[(String, Value)]| {
            format!(r#"{{"rooms":[{}],"data":1}}"#, object_text(pairs))
        };
        let ta = Trigger::parse(trigger(&pairs).as_bytes(), &limits).map(|t| t.rooms);
        let tb = Trigger::parse(trigger(&permuted).as_bytes(), &limits).map(|t| t.rooms);
        prop_assert_eq!(ta, tb);
    }

    #[test]
    fn a_trigger_room_is_the_room_a_client_subscribes(
        members in prop::collection::vec(
            (small_string(), prop_oneof![8 => scalar(), 1 => json_value()]),
            0..7,
        ),
        max_keys in 0usize..6,
        max_len in 0usize..8,
    ) {
        // The trigger parser builds rooms from the members as they arrive (repeats included);
        // the client path from a parsed `Map`. A subscription matches a trigger by equal
        // rooms, so the two must agree on every object, errors included.
        let limits = RoomLimits { max_keys, max_len };
        let text = object_text(&members);
        let as_map: Value = serde_json::from_str(&text).expect("object text");
        let client = Room::parse(&as_map, &limits);
        let body = format!(r#"{{"rooms":[{text}],"data":1}}"#);
        let trigger = Trigger::parse(body.as_bytes(), &limits).map(|t| t.rooms);
        match (client, trigger) {
            (Ok(room), Ok(rooms)) => prop_assert_eq!(rooms, vec![room]),
            (Err(expected), Err(TriggerError::InvalidRoom { index: 0, source })) => {
                prop_assert_eq!(source, expected);
            }
            (client, trigger) => prop_assert!(false, "client {:?}, trigger {:?}", client, trigger),
        }
    }

    #[test]
    fn allows_agrees_with_the_reference(allowed in small_room(), requested in small_room()) {
        prop_assert_eq!(
            room(&allowed).allows(&room(&requested)),
            reference_allows(&allowed, &requested),
            "allowed {:?} requested {:?}", allowed, requested
        );
    }

    #[test]
    fn matches_trigger_agrees_with_the_reference(sub in small_room(), trig in small_room()) {
        let (s, t) = (room(&sub), room(&trig));
        let expected = reference_matches(&sub, &trig);
        prop_assert_eq!(s.matches_trigger(&t), expected, "sub {:?} trigger {:?}", sub, trig);
        // The rule is symmetric: "*" counts on either side.
        prop_assert_eq!(t.matches_trigger(&s), expected);
    }

    /// The index (by shape, by where `"*"` is, by value) answers what a scan of the list with
    /// the naive rule answers; lists long enough to hold several patterns per shape.
    #[test]
    fn allowed_rooms_agree_with_the_reference(
        allowed in prop::collection::vec(small_room(), 0..40),
        requested in prop::collection::vec(small_room(), 1..8),
    ) {
        let list: Vec<Value> = allowed.iter().cloned().map(Value::Object).collect();
        let rooms = AllowedRooms::from_backend(list.clone()).expect("a list of objects");
        prop_assert_eq!(rooms.first_frame(), first_frame(&list));
        for requested in &requested {
            let expected = allowed.iter().any(|a| reference_allows(a, requested));
            prop_assert_eq!(rooms.allows(&room(requested)), expected, "{:?}", requested);
            let naive = allowed.iter().any(|a| room(a).allows(&room(requested)));
            prop_assert_eq!(naive, expected);
        }
    }

    #[test]
    fn backend_lists_are_read_or_refused(list in prop::collection::vec(json_value(), 0..5)) {
        let all_objects = list.iter().all(Value::is_object);
        match AllowedRooms::from_backend(list.clone()) {
            Some(rooms) => {
                prop_assert!(all_objects);
                prop_assert_eq!(rooms.first_frame(), first_frame(&list));
            }
            None => prop_assert!(!all_objects),
        }
    }

    /// A list given as the backend's text (any key order) is the list given as values: the
    /// same first frame, the same answers, and one shared list for one text.
    #[test]
    fn backend_list_texts_are_read_like_their_values(
        allowed in prop::collection::vec(prop::collection::vec((small_string(), scalar()), 0..4), 0..6),
        requested in small_room(),
    ) {
        let text = format!(
            "[{}]",
            allowed.iter().map(|pairs| object_text(pairs)).collect::<Vec<_>>().join(",")
        );
        let values: Vec<Value> = serde_json::from_str(&text).expect("JSON");
        let lists = AllowedLists::default();
        let from_text = block_on(lists.from_json(&text)).expect("a list of objects");
        let again = block_on(lists.from_json(&text)).expect("a list of objects");
        prop_assert!(from_text.shares_with(&again));
        let from_values = AllowedRooms::from_backend(values.clone()).expect("a list of objects");
        prop_assert_eq!(from_text.first_frame(), first_frame(&values));
        prop_assert_eq!(from_text.first_frame(), from_values.first_frame());
        let requested = room(&requested);
        prop_assert_eq!(from_text.allows(&requested), from_values.allows(&requested));
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// The first frame as the server has always written it.
fn first_frame(list: &[Value]) -> String {
    json!({"is_authorized": true, "allowed_rooms": list}).to_string()
}

/// The case the property above found: a 17-digit float whose text, parsed without
/// `float_roundtrip`, printed a different canonical room than its own canonical text did.
#[test]
fn float_room_canonical_text_is_a_fixed_point() {
    let limits = RoomLimits::default();
    for text in [
        r#"{"a":-1.875205412475139e-308}"#,
        r#"{"a":-3.0164402514088965e+179}"#,
    ] {
        let value: Value = serde_json::from_str(text).expect("JSON");
        let room = Room::parse(&value, &limits).expect("valid");
        let again: Value = serde_json::from_str(room.canonical()).expect("JSON");
        assert_eq!(Room::parse(&again, &limits).expect("valid"), room, "{text}");
    }
}

/// A Fisher-Yates shuffle driven by `seed` (a xorshift), so that proptest can replay it.
fn permute<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

// ---------------------------------------------------------------------------------------------
// Trigger bodies
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_are_a_trigger_or_a_reason(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let limits = RoomLimits::default();
        let _ = Trigger::parse(&bytes, &limits);
        let _ = Trigger::parse_batch(&bytes, &limits, MAX_BATCH);
    }

    #[test]
    fn any_json_is_a_trigger_batch_or_a_reason(body in trigger_body(), max_keys in 0usize..4) {
        let limits = RoomLimits { max_keys, max_len: 8 };
        let text = body.to_string();
        let result = Trigger::parse_batch(text.as_bytes(), &limits, MAX_BATCH);
        // Read back from the text we send: the server sees the text, not our `Value`.
        let sent: Value = serde_json::from_str(&text).expect("JSON");
        let items: Vec<&Value> = match &sent {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        match result {
            Ok(triggers) => {
                prop_assert!(!sent.is_array() || items.len() <= MAX_BATCH);
                prop_assert_eq!(triggers.len(), items.len());
                for (trigger, item) in triggers.iter().zip(items) {
                    let rooms = item["rooms"].as_array().expect("accepted rooms are a list");
                    prop_assert_eq!(trigger.rooms.len(), rooms.len());
                    for (parsed, room) in trigger.rooms.iter().zip(rooms) {
                        prop_assert_eq!(parsed, &Room::parse(room, &limits).expect("valid"));
                    }
                    check_frames(trigger, &item["data"])?;
                }
            }
            Err(TriggerError::BatchTooLarge(max)) => {
                prop_assert!(max == MAX_BATCH && items.len() > MAX_BATCH);
            }
            Err(TriggerError::NotJson(_)) => prop_assert!(false, "{} is JSON", text),
            Err(_) => {
                let all_valid = items.iter().all(|item| is_valid_trigger(item, &limits));
                prop_assert!(!all_valid, "refused a valid body: {}", text);
            }
        }
    }

    #[test]
    fn publish_frames_carry_data_and_request_id(
        rooms in prop::collection::vec(small_room(), 0..3),
        data in json_value(),
        request_id in any::<String>(),
    ) {
        let rooms: Vec<Value> = rooms.into_iter().map(Value::Object).collect();
        let text = json!({"rooms": rooms, "data": data}).to_string();
        let trigger = Trigger::parse(text.as_bytes(), &RoomLimits::default()).expect("valid");
        let sent: Value = serde_json::from_str(&text).expect("JSON");
        check_frames(&trigger, &sent["data"])?;
        let rid = serde_json::to_string(&request_id).expect("string");
        let frame: Value = serde_json::from_str(&frame_for(&trigger, &rid)).expect("frame is JSON");
        prop_assert_eq!(&frame["requestId"], &Value::from(request_id));
    }
}

/// The 3.1 publish frame for one subscription, as the fan-out builds it: the trigger's shared
/// prefix, the subscription's requestId as JSON, `}`.
fn frame_for(trigger: &Trigger, request_id_json: &str) -> String {
    let prefix = std::str::from_utf8(&trigger.frame_prefix).expect("the prefix is UTF-8");
    format!("{prefix}{request_id_json}}}")
}

/// The frame for a few requestIds is JSON with exactly `type`, `data` and `requestId`.
fn check_frames(trigger: &Trigger, data: &Value) -> Result<(), TestCaseError> {
    for request_id in ["r", "", "with \"quotes\" and \\ and \u{0}", "ü😀"] {
        let rid = serde_json::to_string(request_id).expect("string");
        let text = frame_for(trigger, &rid);
        let frame: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("frame {text} is not JSON: {e}")))?;
        prop_assert_eq!(
            frame,
            json!({"type": "publish", "data": data, "requestId": request_id})
        );
    }
    Ok(())
}

/// PROTOCOL.md section 4 read literally: an object with a `rooms` list of valid rooms and a
/// `data` key (any value, `null` included).
fn is_valid_trigger(item: &Value, limits: &RoomLimits) -> bool {
    let Some(object) = item.as_object() else {
        return false;
    };
    let rooms_ok = object
        .get("rooms")
        .and_then(Value::as_array)
        .is_some_and(|rooms| rooms.iter().all(|r| Room::parse(r, limits).is_ok()));
    rooms_ok && object.contains_key("data")
}
