//! The websocket layer byte by byte (RFC 6455): the handshake, fragments, control frames,
//! partial reads and the frames a client may not send. A raw TCP client writes exactly the
//! bytes each case needs.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn a_plain_get_is_told_to_upgrade() {
    let (_backend, server) = server_allowing(json!([])).await;
    let response = reqwest::get(format!("http://{}/ws/", server.local_addr))
        .await
        .expect("get");
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");
}

#[tokio::test]
async fn fragments_are_joined_and_control_frames_between_them_answered() {
    let (_backend, server) = server_allowing(json!([])).await;
    let mut raw = Raw::open(server.local_addr).await;
    let mut bytes = frame(TEXT, b"pi"); // FIN clear: first fragment
    bytes.extend(frame(0x80 | PING, b"hello"));
    bytes.extend(frame(0x00, b"n")); // continuation
    bytes.extend(frame(0x80, b"g")); // final continuation
    raw.send(&bytes).await;
    assert_eq!(raw.next_frame().await, (PONG, b"hello".to_vec()));
    assert_eq!(raw.next_frame().await, (TEXT, b"pong".to_vec()));
}

#[tokio::test]
async fn frames_split_across_reads_are_reassembled() {
    let (_backend, server) = server_allowing(json!([{"x": "*"}])).await;
    let mut raw = Raw::open(server.local_addr).await;
    let rid = "r".repeat(300);
    let long = format!(r#"{{"type":"subscribe","requestId":"{rid}","room":{{"x":1}}}}"#);
    let mut bytes = frame(0x80 | TEXT, b"ping");
    bytes.extend(frame(0x80 | TEXT, long.as_bytes()));
    for byte in bytes {
        raw.send(&[byte]).await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(raw.next_frame().await, (TEXT, b"pong".to_vec()));
    assert_eq!(
        raw.next_frame().await,
        (TEXT, br#"{"code":"success"}"#.to_vec())
    );
    let (status, _) =
        post_trigger(server.local_addr, &trigger(json!([{"x": 1}]), json!("hi"))).await;
    assert_eq!(status, 200);
    let (op, publish) = raw.next_frame().await;
    assert_eq!(op, TEXT);
    let publish: serde_json::Value = serde_json::from_slice(&publish).expect("json");
    assert_eq!(
        publish,
        json!({"type": "publish", "data": "hi", "requestId": rid})
    );
}

#[tokio::test]
async fn a_client_close_is_echoed() {
    let (_backend, server) = server_allowing(json!([])).await;
    let mut raw = Raw::open(server.local_addr).await;
    raw.send(&frame(0x80 | CLOSE, &4001u16.to_be_bytes())).await;
    assert_eq!(raw.close_code().await, 4001);
}

#[tokio::test]
async fn frames_a_client_may_not_send_close_the_connection() {
    let (_backend, server) = server_allowing(json!([])).await;
    let cases: [(Vec<u8>, u16); 2] = [
        (frame(FIN | TEXT, &[0xC3, 0x28]), 1007), // not UTF-8 (section 8.1)
        (frame(FIN | BINARY, b"x"), 1003),
    ];
    for (bytes, code) in cases {
        let mut raw = Raw::open(server.local_addr).await;
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, code, "{bytes:?}");
    }
    // Nobody else noticed.
    let mut client = Client::authorized(server.local_addr).await;
    client.send("ping").await;
    assert_eq!(client.recv_text().await, "pong");
}

#[tokio::test]
async fn frames_breaking_the_framing_rules_fail_the_connection_with_1002() {
    let (_backend, server) = server_allowing(json!([])).await;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", vec![FIN | TEXT, 0x01, b'x']),
        ("continuation of nothing", frame(FIN | CONTINUATION, b"x")),
        (
            "a new message before the last one ended",
            [frame(TEXT, b"a"), frame(FIN | TEXT, b"b")].concat(),
        ),
        ("RSV1 without an extension", frame(FIN | 0x40 | TEXT, b"x")),
        ("RSV2", frame(FIN | 0x20 | TEXT, b"x")),
        ("RSV3", frame(FIN | 0x10 | PING, b"x")),
        ("fragmented ping", frame(PING, b"x")),
        ("fragmented close", frame(CLOSE, &1000u16.to_be_bytes())),
        ("ping over 125 bytes", frame(FIN | PING, &[b'x'; 126])),
        // Section 5.2: "the minimal number of bytes MUST be used to encode the length".
        (
            "5 bytes in a 16-bit length",
            frame_with_length(FIN | TEXT, &[126, 0, 5], b"abcde"),
        ),
        (
            "125 bytes in a 16-bit length",
            frame_with_length(FIN | TEXT, &[126, 0, 125], &[b'a'; 125]),
        ),
        (
            "200 bytes in a 64-bit length",
            frame_with_length(FIN | TEXT, &[127, 0, 0, 0, 0, 0, 0, 0, 200], &[b'a'; 200]),
        ),
        (
            "65535 bytes in a 64-bit length",
            frame_with_length(FIN | TEXT, &[127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], &[]),
        ),
        // Section 5.2: "the most significant bit MUST be 0" - malformed, not merely too big.
        (
            "64-bit length with the top bit set",
            frame_with_length(FIN | TEXT, &[127, 0x80, 0, 0, 0, 0, 0, 0, 1], &[]),
        ),
    ];
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push(("reserved opcode", frame(FIN | op, b"x")));
    }
    for (what, bytes) in cases {
        let mut raw = Raw::open(server.local_addr).await;
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, 1002, "{what}");
        // Failed, not closed: the server ends the stream without waiting for a close.
        raw.ends_promptly().await;
    }
}

#[tokio::test]
async fn a_handshake_key_that_is_not_16_bytes_of_base64_is_refused() {
    let (_backend, server) = server_allowing(json!([])).await;
    for key in [
        "",
        "not base64 at all",
        "AAAAAAAAAAAAAAAAAAAA",         // 15 bytes
        "AAAAAAAAAAAAAAAAAAAAAAA=",     // 17 bytes
        "dGhlIHNhbXBsZSBub25jZQ",       // 16 bytes, padding missing
        "dGhlIHNhbXBsZSBub25jZQ==AAAA", // 19 bytes
    ] {
        let (_raw, head) = Raw::handshake(server.local_addr, key).await;
        assert!(head.starts_with("HTTP/1.1 400"), "key {key:?}: {head}");
    }
    Raw::open(server.local_addr).await;
}

#[tokio::test]
async fn fragments_adding_up_past_the_limit_close_with_1009() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.max_message_size = 1024;
    let server = start(config).await;
    let mut raw = Raw::open(server.local_addr).await;
    let part = vec![b'a'; 600];
    let mut bytes = frame(TEXT, &part);
    bytes.extend(frame(0x00, &part));
    raw.send(&bytes).await;
    assert_eq!(raw.close_code().await, 1009);
}
