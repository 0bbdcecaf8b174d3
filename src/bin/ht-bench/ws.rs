//! A minimal websocket client: only what the benchmark needs, and cheap per message.
//!
//! A full client library would allocate a `String` per frame and validate UTF-8; here frames are
//! parsed in place in one reusable buffer, so a delivered message costs a header decode and a
//! byte search. The server is trusted to speak correct websocket: this is a load generator,
//! not a conformance test.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

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

/// One open websocket.
pub struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    mask_seed: u32,
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
        enable_timestamps(&stream)?;
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
            buf,
            start: head_end,
            end,
            mask_seed: 0x9e37_79b9,
            arrived: 0,
        })
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        self.send_frame(OP_TEXT, text).await
    }

    async fn send_frame(&mut self, opcode: u8, text: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(text.len() + 14);
        frame.push(0x80 | opcode);
        match text.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // Clients must mask (RFC 6455 5.3); the key needs no cryptographic quality here.
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mask = self.mask_seed.to_be_bytes();
        frame.extend_from_slice(&mask);
        frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await
    }

    /// Reads the next text or close frame; a server ping is answered (the server closes
    /// clients that stay silent past its ping timeout), pongs are skipped.
    pub async fn next_frame(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(frame) = self.parse()? {
                match frame.opcode {
                    OP_PING => {
                        let payload = self.payload(&frame).to_vec();
                        self.send_frame(OP_PONG, &payload).await?;
                        continue;
                    }
                    OP_PONG => continue,
                    _ => return Ok(frame),
                }
            }
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
            let n = self.read_stamped().await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
    }

    /// Reads the next frame and requires text; returns its payload.
    pub async fn next_text(&mut self) -> io::Result<&[u8]> {
        let frame = self.next_frame().await?;
        if frame.opcode != OP_TEXT {
            return Err(invalid(format!(
                "expected text, got opcode {}",
                frame.opcode
            )));
        }
        Ok(self.payload(&frame))
    }

    /// When the last read's bytes reached the socket, in µs since the epoch (0 if the kernel
    /// gave no timestamp).
    pub fn arrived(&self) -> u64 {
        self.arrived
    }

    /// Reads into the free end of the buffer with recvmsg, keeping the kernel's arrival time.
    async fn read_stamped(&mut self) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            self.stream.readable().await?;
            let fd = self.stream.as_raw_fd();
            let free = &mut self.buf[self.end..];
            match self
                .stream
                .try_io(tokio::io::Interest::READABLE, || recv_stamped(fd, free))
            {
                Ok((n, arrived)) => {
                    if let Some(arrived) = arrived {
                        self.arrived = arrived;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn payload(&self, frame: &Frame) -> &[u8] {
        &self.buf[frame.payload.clone()]
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

/// Asks the kernel to stamp received data with its arrival time (SO_TIMESTAMP).
fn enable_timestamps(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    setsockopt_int(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMP)
}

fn setsockopt_int(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `on` for its stated size; the fd is open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
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
    use std::os::fd::AsRawFd;
    setsockopt_int(
        socket.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
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
}
