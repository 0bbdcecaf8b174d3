//! A minimal websocket client: only what the benchmark needs, and cheap per message.
//!
//! A full client library would allocate a `String` per frame and validate UTF-8; here frames are
//! parsed in place in one reusable buffer, so a delivered message costs a header decode and a
//! byte search. The server is trusted to speak correct websocket: this is a load generator,
//! not a conformance test.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Initial read buffer per client. An idle client of the `connect` scenario keeps this much;
/// a burst grows it to hold what the server coalesced into one write (~5 KiB for 64 frames).
const INITIAL_BUFFER: usize = 1024;
/// Largest frame accepted from the server; the benchmark's frames are a few hundred bytes.
const MAX_FRAME: usize = 1 << 20;
/// Largest handshake response accepted.
const MAX_HANDSHAKE: usize = 16 * 1024;

/// Websocket opcodes (RFC 6455 section 5.2).
pub const OP_TEXT: u8 = 0x1;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The framing both clients share: the read buffer (unparsed bytes at `start..end`), the frame
/// parser, and one reusable buffer that outgoing frames are built (masked) into.
struct Framing {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    mask_seed: u32,
}

/// What a client does next to obtain a frame (see `Framing::next`).
enum Step {
    /// A text or close frame, valid until the next read.
    Frame(Frame),
    /// A pong answering the server's ping is in `Framing::out`: write it, then ask again.
    Reply,
    /// No complete frame is buffered: read into `Framing::spare`, then call `Framing::filled`.
    Read,
}

impl Framing {
    /// A framing whose read buffer already holds `buf[start..end]` (what followed the handshake).
    fn new(buf: Vec<u8>, start: usize, end: usize) -> Framing {
        Framing {
            buf,
            start,
            end,
            out: Vec::with_capacity(256),
            mask_seed: 0x9e37_79b9,
        }
    }

    /// The next text or close frame if one is buffered; a server ping becomes a pong to write
    /// (the server closes clients that stay silent past its ping timeout), pongs are skipped.
    fn next(&mut self) -> io::Result<Step> {
        loop {
            let Some(frame) = self.parse()? else {
                return Ok(Step::Read);
            };
            match frame.opcode {
                OP_PING => {
                    let payload = &self.buf[frame.payload];
                    encode(&mut self.out, &mut self.mask_seed, OP_PONG, payload);
                    return Ok(Step::Reply);
                }
                OP_PONG => continue,
                _ => return Ok(Step::Frame(frame)),
            }
        }
    }

    /// The free end of the read buffer, never empty: consumed bytes are dropped first, and the
    /// buffer grows when a frame does not fit.
    fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that a read put `n` bytes into `spare()`.
    fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Builds one masked frame into the reused output buffer and returns it.
    fn frame(&mut self, opcode: u8, payload: &[u8]) -> &[u8] {
        encode(&mut self.out, &mut self.mask_seed, opcode, payload);
        &self.out
    }

    /// The frame last built (a pong after `Step::Reply`).
    fn out(&self) -> &[u8] {
        &self.out
    }

    fn payload(&self, frame: &Frame) -> &[u8] {
        &self.buf[frame.payload.clone()]
    }

    /// The payload of `frame`, which must be text.
    fn text(&self, frame: Frame) -> io::Result<&[u8]> {
        if frame.opcode != OP_TEXT {
            return Err(invalid(format!(
                "expected text, got opcode {}",
                frame.opcode
            )));
        }
        Ok(self.payload(&frame))
    }

    /// Decodes a complete frame at the buffer's start, if one is there.
    fn parse(&mut self) -> io::Result<Option<Frame>> {
        let data = &self.buf[self.start..self.end];
        if data.len() < 2 {
            return Ok(None);
        }
        let opcode = data[0] & 0x0f;
        if data[0] & 0x80 == 0 {
            return Err(invalid(
                "fragmented frames are not expected from the server",
            ));
        }
        let (header, len) = match data[1] & 0x7f {
            126 if data.len() >= 4 => (4, u16::from_be_bytes([data[2], data[3]]) as usize),
            127 if data.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&data[2..10]);
                (10, u64::from_be_bytes(n) as usize)
            }
            126 | 127 => return Ok(None),
            n => (2, n as usize),
        };
        if len > MAX_FRAME {
            return Err(invalid(format!("frame of {len} bytes")));
        }
        if data.len() < header + len {
            return Ok(None);
        }
        let payload = self.start + header..self.start + header + len;
        self.start += header + len;
        Ok(Some(Frame { opcode, payload }))
    }
}

/// Writes one masked frame into `out` (cleared first).
fn encode(out: &mut Vec<u8>, mask_seed: &mut u32, opcode: u8, payload: &[u8]) {
    out.clear();
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    // Clients must mask (RFC 6455 5.3); the key needs no cryptographic quality here.
    *mask_seed = mask_seed
        .wrapping_mul(1_664_525)
        .wrapping_add(1_013_904_223);
    let mask = mask_seed.to_be_bytes();
    out.extend_from_slice(&mask);
    let at = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[at..].iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// One open websocket.
pub struct WsClient {
    stream: TcpStream,
    framing: Framing,
    /// When the kernel received the bytes of the last read (µs since the epoch, from
    /// SO_TIMESTAMP): latency is measured to the socket, not to this process's turn to run.
    arrived: u64,
}

/// A frame in the client's buffer, valid until the next read.
pub struct Frame {
    pub opcode: u8,
    payload: Range<usize>,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl WsClient {
    /// Opens TCP (from `source`, if given) and performs the websocket handshake on `path`.
    pub async fn connect(
        server: SocketAddr,
        source: Option<IpAddr>,
        path: &str,
    ) -> io::Result<WsClient> {
        let socket = TcpSocket::new_v4()?;
        // Closing with a reset leaves no TIME_WAIT behind: 19,000 of those would hold a third
        // of the ephemeral ports for a minute and make the next run's connect() slow.
        socket.set_zero_linger()?;
        if let Some(ip) = source {
            bind_no_port(&socket)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        set_timestamps(stream.as_raw_fd(), true)?;
        // The key is fixed: the server's accept hash is not checked, so a random one buys nothing.
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; INITIAL_BUFFER];
        let mut end = 0;
        let head_end = loop {
            if let Some(at) = find(&buf[..end], b"\r\n\r\n") {
                break at + 4;
            }
            if end == buf.len() {
                if buf.len() >= MAX_HANDSHAKE {
                    return Err(invalid("handshake response too large"));
                }
                buf.resize(buf.len() * 2, 0);
            }
            let n = stream.read(&mut buf[end..]).await?;
            if n == 0 {
                return Err(invalid("connection closed during the handshake"));
            }
            end += n;
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let line = buf[..head_end]
                .split(|&b| b == b'\r')
                .next()
                .unwrap_or_default();
            return Err(invalid(format!(
                "handshake refused: {}",
                String::from_utf8_lossy(line)
            )));
        }
        Ok(WsClient {
            stream,
            framing: Framing::new(buf, head_end, end),
            arrived: 0,
        })
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        let frame = self.framing.frame(OP_TEXT, text);
        self.stream.write_all(frame).await
    }

    /// Reads the next text or close frame; a server ping is answered, pongs are skipped.
    pub async fn next_frame(&mut self) -> io::Result<Frame> {
        loop {
            match self.framing.next()? {
                Step::Frame(frame) => return Ok(frame),
                Step::Reply => self.stream.write_all(self.framing.out()).await?,
                Step::Read => {
                    let (n, arrived) = read_stamped(&self.stream, self.framing.spare()).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    if let Some(arrived) = arrived {
                        self.arrived = arrived;
                    }
                    self.framing.filled(n);
                }
            }
        }
    }

    /// Reads the next frame and requires text; returns its payload.
    pub async fn next_text(&mut self) -> io::Result<&[u8]> {
        let frame = self.next_frame().await?;
        self.framing.text(frame)
    }

    /// When the last read's bytes reached the socket, in µs since the epoch (0 if the kernel
    /// gave no timestamp).
    pub fn arrived(&self) -> u64 {
        self.arrived
    }

    pub fn payload(&self, frame: &Frame) -> &[u8] {
        self.framing.payload(frame)
    }

    /// The same connection as a blocking socket, for a loop that is one round trip after
    /// another: a plain `read` and `write` per message, no event loop wake-up, and the bound on
    /// waiting set once (`SO_RCVTIMEO`, `SO_SNDTIMEO`) instead of a timer per answer. Bytes
    /// already read stay buffered; arrival timestamps are switched off.
    pub fn into_blocking(self, timeout: Duration) -> io::Result<BlockingWs> {
        let stream = self.stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        set_timestamps(stream.as_raw_fd(), false)?;
        Ok(BlockingWs {
            stream,
            framing: self.framing,
            timeout,
        })
    }
}

/// A websocket on a blocking socket (from `WsClient::into_blocking`).
pub struct BlockingWs {
    stream: std::net::TcpStream,
    framing: Framing,
    timeout: Duration,
}

impl BlockingWs {
    /// Sends one masked text frame: built into a reused buffer, one `write_all`.
    pub fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        let frame = self.framing.frame(OP_TEXT, text);
        self.stream.write_all(frame).map_err(|e| self.timed_out(e))
    }

    /// Reads the next frame and requires text; returns its payload. A server ping is answered,
    /// pongs are skipped; waiting longer than the timeout is an error.
    pub fn next_text(&mut self) -> io::Result<&[u8]> {
        loop {
            match self.framing.next()? {
                Step::Frame(frame) => return self.framing.text(frame),
                Step::Reply => self
                    .stream
                    .write_all(self.framing.out())
                    .map_err(|e| self.timed_out(e))?,
                Step::Read => match self.stream.read(self.framing.spare()) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => self.framing.filled(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.timed_out(e)),
                },
            }
        }
    }

    /// A socket timeout shows as EAGAIN; name it.
    fn timed_out(&self, error: io::Error) -> io::Error {
        if error.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no progress within {:?}", self.timeout),
            )
        } else {
            error
        }
    }
}

/// Reads into `buf` with recvmsg once the socket is readable, keeping the kernel's arrival time.
async fn read_stamped(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let fd = stream.as_raw_fd();
    loop {
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || recv_stamped(fd, buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

/// Whether the kernel stamps received data with its arrival time (SO_TIMESTAMP).
fn set_timestamps(fd: libc::c_int, on: bool) -> io::Result<()> {
    setsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMP,
        libc::c_int::from(on),
    )
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads `value` for its stated size; the fd is open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One recvmsg into `buf`: the byte count and the SCM_TIMESTAMP arrival time in µs, if any.
fn recv_stamped(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // Room for one cmsg carrying a timeval, 8-byte aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer in it refers to live locals of the right
    // size for the duration of the call, and the cmsg walk stays inside `control` as the
    // CMSG_* macros guarantee given msg_controllen as returned by the kernel.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut arrived = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMP {
                let tv: libc::timeval = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                arrived = Some(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, arrived))
    }
}

/// Lets the kernel pick the source port at connect time, per (source, destination) pair,
/// instead of at bind time among every port of the source address (IP_BIND_ADDRESS_NO_PORT).
fn bind_no_port(socket: &TcpSocket) -> io::Result<()> {
    setsockopt_int(
        socket.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
    )
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer right after `key` (e.g. `"ts":`), skipping spaces (Python's
/// `json.dumps` writes `"ts": 1`).
pub fn number_after(haystack: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(haystack, key)? + key.len();
    let digits = haystack[at..].iter().skip_while(|&&b| b == b' ');
    let mut value: u64 = 0;
    let mut any = false;
    for &b in digits.take_while(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_with_or_without_spaces() {
        assert_eq!(
            number_after(br#"{"ts":123,"seq":4}"#, b"\"ts\":"),
            Some(123)
        );
        assert_eq!(
            number_after(br#"{"ts": 123, "seq": 4}"#, b"\"seq\":"),
            Some(4)
        );
        assert_eq!(number_after(br#"{"ts":"x"}"#, b"\"ts\":"), None);
    }

    /// A server frame (unmasked) with a short payload.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x80 | opcode, payload.len() as u8];
        frame.extend_from_slice(payload);
        frame
    }

    /// The payload of a client frame built by `encode`, unmasked.
    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, at) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let mask = &frame[at..at + 4];
        let payload = &frame[at + 4..];
        assert_eq!(payload.len(), len);
        let plain = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]);
        (frame[0] & 0x0f, plain.collect())
    }

    #[test]
    fn frames_are_masked_with_the_right_length_header() {
        let mut framing = Framing::new(vec![0; 16], 0, 0);
        for len in [0, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (opcode, plain) = unmask(framing.frame(OP_TEXT, &payload));
            assert_eq!((opcode, plain), (OP_TEXT, payload), "length {len}");
        }
    }

    #[test]
    fn pings_become_pongs_and_partial_frames_wait_for_a_read() {
        let mut bytes = server_frame(OP_PING, b"keepalive");
        bytes.extend(server_frame(OP_PONG, b""));
        bytes.extend(server_frame(OP_TEXT, b"hello"));
        bytes.extend(&server_frame(OP_TEXT, b"world")[..4]);
        let end = bytes.len();
        let mut framing = Framing::new(bytes, 0, end);
        assert!(matches!(framing.next(), Ok(Step::Reply)));
        assert_eq!(unmask(framing.out()), (OP_PONG, b"keepalive".to_vec()));
        let Ok(Step::Frame(frame)) = framing.next() else {
            panic!("expected the text frame");
        };
        assert_eq!(framing.text(frame).ok(), Some(&b"hello"[..]));
        assert!(matches!(framing.next(), Ok(Step::Read)));
        // The partial frame moves to the front and the rest arrives behind it.
        let spare = framing.spare();
        spare[..3].copy_from_slice(b"rld");
        framing.filled(3);
        let Ok(Step::Frame(frame)) = framing.next() else {
            panic!("expected the completed frame");
        };
        assert_eq!(framing.text(frame).ok(), Some(&b"world"[..]));
    }

    /// A one-connection websocket server on a thread: answers the handshake with `first`
    /// appended, then, after reading `await_bytes` bytes from the client, writes `then`.
    fn fake_server(
        first: Vec<u8>,
        await_bytes: usize,
        then: Vec<u8>,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).expect("request");
                request.push(byte[0]);
            }
            let mut response = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
            response.extend(first);
            stream.write_all(&response).expect("response");
            let mut received = vec![0u8; await_bytes];
            stream.read_exact(&mut received).expect("client bytes");
            stream.write_all(&then).expect("then");
            // Hold the connection open until the client has had its timeout.
            std::thread::sleep(Duration::from_millis(300));
            received
        });
        (addr, thread)
    }

    #[tokio::test]
    async fn the_blocking_client_keeps_buffered_frames_and_answers_pings() {
        let mut first = server_frame(OP_TEXT, b"hello");
        first.extend(server_frame(OP_PING, b"p"));
        first.extend(server_frame(OP_TEXT, b"world"));
        // The client's pong (2 + 4 + 1 bytes), then its text frame "ok" (2 + 4 + 2).
        let (addr, server) = fake_server(first, 7 + 8, server_frame(OP_TEXT, b"later"));
        let mut client = WsClient::connect(addr, None, "/ws/")
            .await
            .expect("connect");
        assert_eq!(client.next_text().await.expect("first"), b"hello");
        let mut client = client
            .into_blocking(Duration::from_millis(100))
            .expect("blocking");
        assert_eq!(client.next_text().expect("buffered"), b"world");
        client.send_text(b"ok").expect("send");
        assert_eq!(client.next_text().expect("read"), b"later");
        let error = client.next_text().expect_err("nothing more is sent");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let received = server.join().expect("server thread");
        assert_eq!(unmask(&received[..7]), (OP_PONG, b"p".to_vec()));
        assert_eq!(unmask(&received[7..]), (OP_TEXT, b"ok".to_vec()));
    }
}
