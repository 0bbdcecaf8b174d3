//! The websocket layer byte by byte (RFC 6455): the handshake, fragments, control frames,
//! partial reads and the frames a client may not send. A raw TCP client writes exactly the
//! bytes each case needs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xFA, 0x21, 0x3D];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

impl Raw {
    /// Opens `/ws/` with a hand-written handshake and reads the `is_authorized` frame.
    async fn open(addr: std::net::SocketAddr) -> Raw {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /ws/ HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let head = raw.read_until_blank_line().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The RFC's own example key and answer.
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let (op, payload) = raw.next_frame().await;
        assert_eq!(op, TEXT);
        let first: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(first["is_authorized"], true);
        raw
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("data in time")
            .expect("read");
        assert!(n > 0, "connection ended");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn read_until_blank_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                self.buf.drain(..end + 4);
                return head;
            }
            self.fill().await;
        }
    }

    /// The next server frame: opcode and payload (server frames are unmasked and whole).
    async fn next_frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                assert_eq!(self.buf[0] & 0x80, 0x80, "server frames are final");
                let (skip, len) = match self.buf[1] {
                    126 if self.buf.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, usize::from(n)),
                };
                if skip != usize::MAX && self.buf.len() >= skip + len {
                    let op = self.buf[0] & 0x0F;
                    let payload = self.buf[skip..skip + len].to_vec();
                    self.buf.drain(..skip + len);
                    return (op, payload);
                }
            }
            self.fill().await;
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The close frame's code, skipping other frames.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (op, payload) = self.next_frame().await;
            if op == CLOSE {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

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
    let cases: [(Vec<u8>, u16); 5] = [
        (frame(0x80 | TEXT, &[0xC3, 0x28]), 1007), // not UTF-8
        (frame(0x80 | BINARY, b"x"), 1003),
        (vec![0x81, 0x01, b'x'], 1002),  // unmasked
        (frame(0x80, b"x"), 1002),       // continuation of nothing
        (frame(0x80 | 0x3, b"x"), 1002), // reserved opcode
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
