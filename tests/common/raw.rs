//! A raw websocket client over TCP: it writes exactly the bytes a case needs, including the
//! ones a well-behaved client library refuses to send, and reads the server's frames as bytes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;
/// The FIN bit of a frame's first byte.
pub const FIN: u8 = 0x80;

/// The masking key of every frame built here.
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// How soon the server must end the TCP stream once the closing handshake is over or the
/// connection failed: well under its 2 s grace for a close it still awaits, so a server that
/// waits for a close it already has (or must not wait for) is caught.
pub const PROMPTLY: Duration = Duration::from_millis(1500);

/// The RFC's example `Sec-WebSocket-Key` (section 1.3).
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A masked client frame, its length in the shortest form.
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let length = match payload.len() {
        n @ 0..=125 => vec![n as u8],
        n @ 126..=0xFFFF => [&[126], &(n as u16).to_be_bytes()[..]].concat(),
        n => [&[127], &(n as u64).to_be_bytes()[..]].concat(),
    };
    frame_with_length(first, &length, payload)
}

/// A masked frame whose length is written as `length` (the 7-bit field, then any extended
/// bytes) whatever the payload's: for the length encodings the RFC forbids.
pub fn frame_with_length(first: u8, length: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first, 0x80 | length[0]];
    out.extend_from_slice(&length[1..]);
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A masked close frame with `code` and `reason` bytes (which need not be UTF-8).
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(FIN | CLOSE, &payload)
}

pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Sends a handshake for `/ws/` with `key` and returns the response head (status line and
    /// headers).
    pub async fn handshake(addr: SocketAddr, key: &str) -> (Raw, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /ws/ HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let head = raw.read_until_blank_line().await;
        (raw, head)
    }

    /// Opens `/ws/` with a hand-written handshake and reads the `is_authorized` frame.
    pub async fn open(addr: SocketAddr) -> Raw {
        let (mut raw, head) = Raw::handshake(addr, RFC_KEY).await;
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
    pub async fn next_frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                assert_eq!(self.buf[0] & FIN, FIN, "server frames are final");
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

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The close frame's code, skipping other frames.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let (op, payload) = self.next_frame().await;
            if op == CLOSE {
                assert!(payload.len() >= 2, "a close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    /// Asserts the server ends the TCP stream (a clean end, not a reset) within `PROMPTLY`,
    /// sending nothing more.
    pub async fn ends_promptly(&mut self) {
        assert!(self.buf.is_empty(), "bytes after the close frame");
        let mut chunk = [0u8; 64];
        let read = tokio::time::timeout(PROMPTLY, self.stream.read(&mut chunk))
            .await
            .expect("the server ends the TCP stream promptly");
        assert_eq!(
            read.expect("a clean end, not a reset"),
            0,
            "bytes after close"
        );
    }

    /// Asserts a close frame with `code`, then the end of the TCP stream within `PROMPTLY`
    /// without the client answering the close: what a server does that failed the
    /// connection or has already received the client's close.
    pub async fn closes_promptly_with(&mut self, code: u16) {
        assert_eq!(self.close_code().await, code);
        self.ends_promptly().await;
    }

    /// Asserts the server neither sends anything nor ends the stream for `time`.
    pub async fn stays_open_for(&mut self, time: Duration) {
        let mut chunk = [0u8; 64];
        if let Ok(read) = tokio::time::timeout(time, self.stream.read(&mut chunk)).await {
            panic!("expected nothing for {time:?}, read {read:?}");
        }
    }
}
