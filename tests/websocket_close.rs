//! The closing handshake byte by byte (RFC 6455 sections 5.5.1, 7 and 7.4): which close
//! codes are echoed, which fail the connection, and that the server ends the TCP stream as
//! soon as the handshake is over instead of waiting for a close it already has.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn close_codes_a_peer_may_send_are_echoed_and_the_stream_ends() {
    let (_backend, server) = server_allowing(json!([])).await;
    // Section 7.4.1, the IANA registry (1012-1014), and the ranges for libraries (3000-3999)
    // and applications (4000-4999).
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ] {
        let mut raw = Raw::open(server.local_addr).await;
        raw.send(&close_frame(code, b"bye")).await;
        raw.closes_promptly_with(code).await;
    }
}

#[tokio::test]
async fn close_codes_a_peer_may_not_send_fail_with_1002() {
    let (_backend, server) = server_allowing(json!([])).await;
    // Below 1000 unused; 1004 reserved; 1005, 1006 and 1015 only ever reported locally;
    // 1016-2999 reserved for the protocol; 5000 and up not defined (section 7.4.2).
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut raw = Raw::open(server.local_addr).await;
        raw.send(&close_frame(code, b"")).await;
        assert_eq!(raw.close_code().await, 1002, "code {code}");
        raw.ends_promptly().await;
    }
}

#[tokio::test]
async fn an_empty_close_is_answered_with_1000() {
    let (_backend, server) = server_allowing(json!([])).await;
    let mut raw = Raw::open(server.local_addr).await;
    raw.send(&frame(FIN | CLOSE, b"")).await;
    raw.closes_promptly_with(1000).await;
}

#[tokio::test]
async fn a_close_with_a_one_byte_payload_fails_with_1002() {
    let (_backend, server) = server_allowing(json!([])).await;
    let mut raw = Raw::open(server.local_addr).await;
    raw.send(&frame(FIN | CLOSE, &[0x03])).await;
    raw.closes_promptly_with(1002).await;
}

#[tokio::test]
async fn a_close_reason_that_is_not_utf8_fails_with_1007() {
    let (_backend, server) = server_allowing(json!([])).await;
    let mut raw = Raw::open(server.local_addr).await;
    // Autobahn case 7.5.1: a valid code, then a reason with an invalid sequence.
    raw.send(&close_frame(
        1000,
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
    ))
    .await;
    raw.closes_promptly_with(1007).await;
}

#[tokio::test]
async fn an_oversized_close_fails_with_1002_without_waiting_for_another() {
    let (_backend, server) = server_allowing(json!([])).await;
    let mut raw = Raw::open(server.local_addr).await;
    // Autobahn case 7.3.6: a code and a 124-byte reason, 126 bytes of control payload.
    raw.send(&close_frame(1000, &[b'a'; 124])).await;
    raw.closes_promptly_with(1002).await;
}

#[tokio::test]
async fn a_close_sent_with_the_frame_that_closes_the_connection_ends_it_at_once() {
    let (_backend, server) = server_allowing(json!([])).await;
    let cases: [(Vec<u8>, u16); 3] = [
        (frame(FIN | BINARY, b"x"), 1003),
        (frame(FIN | TEXT, &[0xC3, 0x28]), 1007),
        (frame(FIN | CONTINUATION, b"x"), 1002),
    ];
    for (first, code) in cases {
        let mut raw = Raw::open(server.local_addr).await;
        // One write: both frames reach the server in the same read.
        raw.send(&[first, close_frame(1000, b"")].concat()).await;
        raw.closes_promptly_with(code).await;
    }
}

#[tokio::test]
async fn after_closing_for_binary_the_server_waits_for_the_client_close() {
    let (_backend, server) = server_allowing(json!([])).await;
    let mut raw = Raw::open(server.local_addr).await;
    raw.send(&frame(FIN | BINARY, b"x")).await;
    assert_eq!(raw.close_code().await, 1003);
    // Not a failure: the server gives the client time to answer (section 7.1.2)...
    raw.stays_open_for(Duration::from_millis(300)).await;
    // ...and ends the stream once it has.
    raw.send(&close_frame(1003, b"")).await;
    raw.ends_promptly().await;
}
