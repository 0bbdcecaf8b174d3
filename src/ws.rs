//! The websocket wire format (RFC 6455), server side: the opening handshake's accept key,
//! client frame headers in, server frames out.
//!
//! Hand-written because it is the hot path. With tungstenite (through axum) every delivered
//! message went through a `Message`, a sink, a split lock and a per-connection buffer of its
//! own; here a publish frame is a header and three slices appended to bytes that the socket
//! writes as they are. Measured with `ht-bench` (BENCHMARKS.md, "What changed").
//!
//! Only what a server needs: client frames must be masked; no extensions (permessage-deflate
//! is not offered in the handshake, so no RSV bit may be set).

/// Frame opcodes (section 5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Control frames carry at most this many payload bytes (section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Whether a client's `Sec-WebSocket-Key` is what section 4.2.1 asks for: base64 that
/// decodes to exactly 16 bytes.
pub fn is_valid_key(key: &[u8]) -> bool {
    use base64::Engine;
    // 16 bytes are 24 base64 characters; anything longer is refused before decoding it.
    let mut decoded = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key, &mut decoded)
            .is_ok_and(|n| n == 16)
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Bytes a frame header takes for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Appends the header of a final, unmasked frame carrying `len` payload bytes.
pub fn put_header(buf: &mut Vec<u8>, opcode: u8, len: usize) {
    let first = 0x80 | opcode;
    match len {
        0..=125 => buf.extend_from_slice(&[first, len as u8]),
        126..=0xFFFF => {
            buf.extend_from_slice(&[first, 126]);
            buf.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            buf.push(first);
            buf.push(127);
            buf.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends a whole frame made of `parts` laid end to end.
pub fn put_frame(buf: &mut Vec<u8>, opcode: u8, parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum();
    buf.reserve(header_len(len) + len);
    put_header(buf, opcode, len);
    for part in parts {
        buf.extend_from_slice(part);
    }
}

/// Appends a close frame with `code` and `reason` (cut to fit a control frame).
pub fn put_close(buf: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    put_frame(
        buf,
        opcode::CLOSE,
        &[&code.to_be_bytes(), &reason.as_bytes()[..end]],
    );
}

/// A client frame's header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: u8,
    /// Bytes of the header, masking key included.
    pub header_len: usize,
    pub payload_len: usize,
    pub mask: [u8; 4],
}

impl Head {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }

    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Why a client's frame was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Not a frame a client may send (section 5): close 1002.
    Protocol(&'static str),
    /// Over the configured size: close 1009.
    TooBig,
}

/// Parses the header at the start of `buf`; `None` while the header is incomplete. Payloads
/// over `max_payload` are refused from the header alone, before any of them is buffered.
pub fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<Head>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let opcode = first & 0x0F;
    let control = match opcode {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => false,
        opcode::CLOSE | opcode::PING | opcode::PONG => true,
        _ => return Err(FrameError::Protocol("unknown opcode")),
    };
    let fin = first & 0x80 != 0;
    if second & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked client frame"));
    }
    let (len_bytes, short) = match second & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(usize::from(n))),
    };
    let header_len = 2 + len_bytes + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let payload_len = match short {
        Some(n) => n,
        None => {
            let mut be = [0u8; 8];
            be[8 - len_bytes..].copy_from_slice(&buf[2..2 + len_bytes]);
            let len = u64::from_be_bytes(be);
            // Section 5.2: the most significant bit of a 64-bit length is 0, and a length is
            // written in the fewest bytes that hold it. Such a frame is malformed, whatever
            // its size.
            if len >> 63 != 0 {
                return Err(FrameError::Protocol("64-bit length with the top bit set"));
            }
            let shortest = if len_bytes == 2 { 126 } else { 0x1_0000 };
            if len < shortest {
                return Err(FrameError::Protocol("length not in its shortest form"));
            }
            usize::try_from(len).unwrap_or(usize::MAX)
        }
    };
    if control && (!fin || payload_len > MAX_CONTROL_PAYLOAD) {
        return Err(FrameError::Protocol(
            "fragmented or oversized control frame",
        ));
    }
    if payload_len > max_payload {
        return Err(FrameError::TooBig);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[2 + len_bytes..header_len]);
    Ok(Some(Head {
        fin,
        opcode,
        header_len,
        payload_len,
        mask,
    }))
}

/// Removes the client's masking from `payload` in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

/// The code to answer a client's close frame with, given its payload: the client's own code
/// echoed (none given reads as 1000); 1002 for a code a peer may not send (section 7.4) or a
/// payload too short to hold one; 1007 for a reason that is not UTF-8 (section 5.5.1).
pub fn close_code_of(payload: &[u8]) -> u16 {
    match payload {
        [] => 1000,
        [a, b, reason @ ..] => match u16::from_be_bytes([*a, *b]) {
            code @ (1000..=1003 | 1007..=1014 | 3000..=4999) => {
                if std::str::from_utf8(reason).is_ok() {
                    code
                } else {
                    1007
                }
            }
            _ => 1002,
        },
        [_] => 1002,
    }
}

/// Splits server frames (unmasked, unfragmented) into opcode and payload, for tests.
#[cfg(test)]
pub fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let [first, second, ..] = *bytes {
        let (skip, len) = match second {
            126 => (4, usize::from(u16::from_be_bytes([bytes[2], bytes[3]]))),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&bytes[2..10]);
                (10, u64::from_be_bytes(be) as usize)
            }
            n => (2, usize::from(n)),
        };
        out.push((first & 0x0F, bytes[skip..skip + len].to_vec()));
        bytes = &bytes[skip + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, 0, payload.len());
        out[0] = first;
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        for (len, expected) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut buf = Vec::new();
            put_header(&mut buf, opcode::TEXT, len);
            assert_eq!(buf.len(), expected, "len {len}");
            assert_eq!(buf.len(), header_len(len));
            assert_eq!(buf[0], 0x81);
        }
        let mut buf = Vec::new();
        put_header(&mut buf, opcode::TEXT, 300);
        assert_eq!(buf, [0x81, 126, 1, 44]);
    }

    #[test]
    fn client_frames_parse_at_every_length_form() {
        let mask = [1, 2, 3, 4];
        for len in [0, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut frame = client_frame(0x81, &payload, mask);
            // Every proper prefix of the header is incomplete, not an error.
            let head_len = parse_head(&frame, usize::MAX).unwrap().unwrap().header_len;
            for cut in 0..head_len {
                assert_eq!(parse_head(&frame[..cut], usize::MAX), Ok(None));
            }
            let head = parse_head(&frame, usize::MAX).unwrap().unwrap();
            assert!(head.fin);
            assert_eq!(head.opcode, opcode::TEXT);
            assert_eq!(head.payload_len, len);
            assert_eq!(head.frame_len(), frame.len());
            let body = &mut frame[head.header_len..];
            unmask(body, head.mask);
            assert_eq!(body, &payload[..]);
        }
    }

    #[test]
    fn frames_a_client_may_not_send_are_refused() {
        let mask = [9, 9, 9, 9];
        let unmasked = [0x81, 0x01, b'x'];
        assert!(matches!(
            parse_head(&unmasked, 100),
            Err(FrameError::Protocol(_))
        ));
        let rsv = client_frame(0xC1, b"x", mask);
        assert!(matches!(
            parse_head(&rsv, 100),
            Err(FrameError::Protocol(_))
        ));
        let opcode3 = client_frame(0x83, b"x", mask);
        assert!(matches!(
            parse_head(&opcode3, 100),
            Err(FrameError::Protocol(_))
        ));
        let fragmented_ping = client_frame(0x09, b"x", mask);
        assert!(matches!(
            parse_head(&fragmented_ping, 100),
            Err(FrameError::Protocol(_))
        ));
        let big_ping = client_frame(0x89, &[0; 126], mask);
        assert!(matches!(
            parse_head(&big_ping, 1000),
            Err(FrameError::Protocol(_))
        ));
        let big = client_frame(0x81, &[b'a'; 101], mask);
        assert_eq!(parse_head(&big, 100), Err(FrameError::TooBig));
        // The size is refused from the header alone.
        assert_eq!(parse_head(&big[..8], 100), Err(FrameError::TooBig));
    }

    #[test]
    fn lengths_must_be_in_their_shortest_form_and_the_top_bit_clear() {
        let head = |length: &[u8]| [&[0x81, 0x80 | length[0]], &length[1..], &[0; 4]].concat();
        let malformed = [
            head(&[126, 0, 125]),
            head(&[127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
            head(&[127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            head(&[127, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
        ];
        for bytes in malformed {
            assert!(
                matches!(parse_head(&bytes, usize::MAX), Err(FrameError::Protocol(_))),
                "{bytes:?}"
            );
        }
        let shortest = [
            (head(&[126, 0, 126]), 126),
            (head(&[127, 0, 0, 0, 0, 0, 1, 0, 0]), 0x1_0000),
            (
                head(&[127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
                i64::MAX as usize,
            ),
        ];
        for (bytes, len) in shortest {
            let head = parse_head(&bytes, usize::MAX).unwrap().unwrap();
            assert_eq!(head.payload_len, len);
        }
    }

    #[test]
    fn close_frames_carry_code_and_a_cut_reason() {
        let mut buf = Vec::new();
        put_close(&mut buf, 1013, "slow-client");
        assert_eq!(&buf[..4], &[0x88, 13, 0x03, 0xF5]);
        assert_eq!(&buf[4..], b"slow-client");
        let mut long = Vec::new();
        put_close(&mut long, 1000, &"é".repeat(100));
        assert_eq!(long[1] as usize, long.len() - 2);
        assert!(long.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }

    #[test]
    fn close_codes_are_echoed_when_valid() {
        assert_eq!(close_code_of(&[]), 1000);
        assert_eq!(close_code_of(&[0x03, 0xE9, b'x']), 1001);
        assert_eq!(close_code_of(&[0x0F, 0xA0]), 4000);
        assert_eq!(close_code_of(&[0x03, 0xED]), 1002); // 1005 may not be sent
        assert_eq!(close_code_of(&[0x03]), 1002);
        assert_eq!(close_code_of(&[0x03, 0xE8, 0xC3, 0x28]), 1007); // reason not UTF-8
        assert_eq!(close_code_of(&[0x03, 0xE7, 0xC3, 0x28]), 1002); // 999: the code first
    }

    #[test]
    fn handshake_keys_are_16_bytes_of_base64() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for key in [
            &b""[..],
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"AAAAAAAAAAAAAAAAAAAAAAA=",
            b"AAAAAAAAAAAAAAAAAAAAAAAA",
            b"dGhlIHNhbXBsZSBub25jZQ==AAAA",
            b"dGhlIHNhbXBsZSBub25jZQ=!",
        ] {
            assert!(!is_valid_key(key), "{key:?}");
        }
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
