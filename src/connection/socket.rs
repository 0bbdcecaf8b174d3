//! A websocket over the upgraded connection: frames in, bytes out, the closing handshake.
//!
//! Input is read into a buffer on the stack of the poll that reads it; only the start of a
//! frame whose rest has not arrived is kept, and only until it has. Output is the outbox's
//! bytes, taken whole and written until the socket takes no more. An idle connection thus
//! holds no buffer of either kind.
//!
//! Closing takes one of three ways (RFC 6455 section 7): the client's close is answered and
//! the stream ends; a close of ours waits for the client's (which may already be in what was
//! read); and a connection failed for a frame the client may not send ends the stream right
//! after our close frame, reading nothing more from the client, not even its close.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::budget::{Budget, Verdict};
use crate::outbox::{close_code, CloseReason, Outbox, Wire, SHARE_ABOVE};
use crate::stats::Stats;
use crate::ws::{self, opcode, FrameError, Head};

/// A client over its message budget, with `close_flooders` set.
const RATE_LIMITED: CloseReason = CloseReason {
    code: close_code::POLICY,
    reason: "rate-limited",
};

/// Pieces handed to one vectored write: a queue with large shared payloads is written up to
/// this many pieces (half of them payloads) per call.
const MAX_SLICES: usize = 16;

/// Bytes read from the socket per read call. Client frames are small (a subscribe is ~60
/// bytes): one read usually holds several whole frames.
const READ_CHUNK: usize = 4096;

pub(crate) type Io = TokioIo<Upgraded>;

/// A whole message the client sent (fragments joined, text checked to be UTF-8).
pub(super) enum Incoming<'a> {
    Text(&'a str),
    #[allow(
        dead_code,
        reason = "the server refuses binary unread; the Autobahn echo server reads it"
    )]
    Binary(&'a [u8]),
}

/// How reading stopped.
pub(super) enum ReadEnd {
    /// The client sent a close frame with this code.
    ClientClosed(u16),
    /// The stream ended or failed without a close frame.
    Gone,
    /// The session or a bad frame asked the connection to close (see the outbox).
    Closing,
}

pub(super) struct Socket {
    io: Io,
    /// Bytes being written; `written` of them are out.
    out: Wire,
    out_frames: usize,
    written: usize,
    /// The start of a frame whose rest has not arrived yet.
    partial: Vec<u8>,
    /// A fragmented message being collected: its opcode and payload so far.
    fragments: Option<(u8, Vec<u8>)>,
    max_message: usize,
    /// Frames the client may send; over it, the rest of the input waits in `partial` and
    /// the socket is not read.
    budget: Budget,
    /// The client sent what fails the connection (section 7.1.7): after our close frame,
    /// nothing more of its input is processed.
    failed: bool,
}

impl Socket {
    pub fn new(io: Io, max_message: usize, budget: Budget) -> Socket {
        Socket {
            io,
            out: Wire::default(),
            out_frames: 0,
            written: 0,
            partial: Vec::new(),
            fragments: None,
            max_message,
            budget,
            failed: false,
        }
    }

    /// Queues a text frame to go before anything from the outbox (the first answer).
    pub fn queue_text(&mut self, text: &str) {
        ws::put_frame(self.out.bytes_mut(), opcode::TEXT, &[text.as_bytes()]);
    }

    /// Queues a text frame of `payload`, spliced in by reference when it is large (a shared
    /// first frame with thousands of allowed rooms), copied otherwise.
    pub fn queue_shared_text(&mut self, payload: &Bytes) {
        if payload.len() > SHARE_ABOVE {
            ws::put_header(self.out.bytes_mut(), opcode::TEXT, payload.len());
            self.out.push_shared(payload.clone());
        } else {
            ws::put_frame(self.out.bytes_mut(), opcode::TEXT, &[payload]);
        }
    }

    fn queue_close(&mut self, code: u16, reason: &str) {
        ws::put_close(self.out.bytes_mut(), code, reason);
    }

    /// Writes what is queued here, then whatever the outbox holds, until both are empty
    /// (`Ready(Ok)`) or the socket is full (`Pending`).
    pub fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        outbox: Option<&Outbox>,
        stats: &Stats,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.written == self.out.len() {
                if !self.out.is_empty() {
                    if let Some(outbox) = outbox {
                        outbox.written();
                    }
                    Stats::add(&stats.ws_messages_send, self.out_frames as u64);
                    // Given back rather than kept: most connections are idle most of the time.
                    self.out = Wire::default();
                    self.written = 0;
                    self.out_frames = 0;
                }
                self.out_frames = match outbox {
                    Some(outbox) => outbox.take(&mut self.out),
                    None => 0,
                };
                if self.out.is_empty() {
                    return Pin::new(&mut self.io).poll_flush(cx);
                }
            }
            // Large payloads are shared with other connections and sit between our bytes.
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let filled = self.out.slices(self.written, &mut slices);
            let io = Pin::new(&mut self.io);
            let n = if filled == 1 {
                ready!(io.poll_write(cx, &slices[0]))?
            } else {
                ready!(io.poll_write_vectored(cx, &slices[..filled]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
    }

    /// Reads what the socket has and handles every whole frame in it: messages go to
    /// `on_message`, pings are answered through `outbox`. `Ready(None)` after a read that
    /// ended no frame stream; `Pending` when nothing more can be read now.
    /// While over its message budget the client is not read: `Pending` until the budget
    /// refills, then the input left waiting is handled first.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        stats: &Stats,
        on_message: &mut dyn FnMut(Incoming<'_>),
    ) -> Poll<Option<ReadEnd>> {
        if self.budget.is_waiting() {
            ready!(self.budget.poll_refilled(cx));
            if !self.partial.is_empty() {
                let buf = std::mem::take(&mut self.partial);
                return Poll::Ready(self.consume_kept(buf, &[], outbox, stats, on_message));
            }
        }
        // Not zeroed first: 4 KiB of memset on every read showed in the profiles.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
            Ok(()) if buf.filled().is_empty() => return Poll::Ready(Some(ReadEnd::Gone)),
            Ok(()) => {}
            Err(error) => {
                tracing::debug!(%error, "websocket read failed");
                return Poll::Ready(Some(ReadEnd::Gone));
            }
        }
        let input = buf.filled_mut();
        outbox.heard();
        // What follows the last frame handled is kept even when reading ends: once we close,
        // the client's close may already be in it; and over budget, it waits there.
        let end = if self.partial.is_empty() {
            let (used, end) = self.consume(input, outbox, stats, on_message);
            self.partial.extend_from_slice(&input[used..]);
            end
        } else {
            let buf = std::mem::take(&mut self.partial);
            self.consume_kept(buf, input, outbox, stats, on_message)
        };
        Poll::Ready(end)
    }

    /// Handles `buf` (input kept from before) followed by `input`; keeps what is left.
    fn consume_kept(
        &mut self,
        mut buf: Vec<u8>,
        input: &[u8],
        outbox: &Outbox,
        stats: &Stats,
        on_message: &mut dyn FnMut(Incoming<'_>),
    ) -> Option<ReadEnd> {
        buf.extend_from_slice(input);
        let (used, end) = self.consume(&mut buf, outbox, stats, on_message);
        if used < buf.len() {
            buf.drain(..used);
            self.partial = buf;
        }
        end
    }

    /// Handles the whole frames at the start of `buf` until one ends the reading; returns
    /// the bytes handled, and the end if there was one. Every frame but a close spends
    /// budget; over budget, the frames from there on are left unhandled until it refills.
    fn consume(
        &mut self,
        buf: &mut [u8],
        outbox: &Outbox,
        stats: &Stats,
        on_message: &mut dyn FnMut(Incoming<'_>),
    ) -> (usize, Option<ReadEnd>) {
        let mut at = 0;
        loop {
            if outbox.is_closing() {
                return (at, Some(ReadEnd::Closing));
            }
            let head = match ws::parse_head(&buf[at..], self.max_message) {
                Ok(Some(head)) if buf.len() - at >= head.frame_len() => head,
                Ok(_) => return (at, None),
                Err(error) => return (at, Some(self.refuse(outbox, error))),
            };
            if head.opcode != opcode::CLOSE {
                match self.budget.spend() {
                    Verdict::Take => {}
                    Verdict::Wait => {
                        Stats::incr(&stats.rate_limited);
                        return (at, None);
                    }
                    Verdict::Close => {
                        Stats::incr(&stats.rate_limited);
                        outbox.close(RATE_LIMITED);
                        return (at, Some(ReadEnd::Closing));
                    }
                }
            }
            let payload = &mut buf[at + head.header_len..at + head.frame_len()];
            at += head.frame_len();
            ws::unmask(payload, head.mask);
            if let Some(end) = self.on_frame(head, payload, outbox, on_message) {
                return (at, Some(end));
            }
        }
    }

    fn on_frame(
        &mut self,
        head: Head,
        payload: &mut [u8],
        outbox: &Outbox,
        on_message: &mut dyn FnMut(Incoming<'_>),
    ) -> Option<ReadEnd> {
        if head.is_control() {
            return match head.opcode {
                opcode::CLOSE => Some(ReadEnd::ClientClosed(ws::close_code_of(payload))),
                opcode::PING => {
                    outbox.push_control(opcode::PONG, payload, true);
                    None
                }
                _ => None, // a pong: `heard` is all it tells
            };
        }
        let whole = match (head.opcode, self.fragments.as_mut(), head.fin) {
            (opcode::CONTINUATION, None, _) => {
                return Some(self.refuse(outbox, FrameError::Protocol("stray continuation")));
            }
            (opcode::CONTINUATION, Some((_, collected)), fin) => {
                if collected.len() + payload.len() > self.max_message {
                    return Some(self.refuse(outbox, FrameError::TooBig));
                }
                collected.extend_from_slice(payload);
                if !fin {
                    return None;
                }
                self.fragments.take()
            }
            (_, Some(_), _) => {
                return Some(self.refuse(outbox, FrameError::Protocol("unfinished message")));
            }
            (op, None, false) => {
                self.fragments = Some((op, payload.to_vec()));
                return None;
            }
            (_, None, true) => None,
        };
        let (op, data): (u8, &[u8]) = match &whole {
            Some((op, data)) => (*op, data),
            None => (head.opcode, payload),
        };
        if op == opcode::BINARY {
            on_message(Incoming::Binary(data));
            return None;
        }
        match std::str::from_utf8(data) {
            Ok(text) => {
                on_message(Incoming::Text(text));
                None
            }
            Err(_) => {
                // Section 8.1: text that is not UTF-8 fails the connection.
                self.failed = true;
                outbox.close(CloseReason {
                    code: close_code::INVALID_DATA,
                    reason: "invalid-utf8",
                });
                Some(ReadEnd::Closing)
            }
        }
    }

    /// Fails the connection for a frame the client may not send; the end to report.
    fn refuse(&mut self, outbox: &Outbox, error: FrameError) -> ReadEnd {
        let reason = match error {
            FrameError::TooBig => CloseReason {
                code: close_code::TOO_BIG,
                reason: "message-too-big",
            },
            FrameError::Protocol(what) => {
                tracing::debug!(what, "websocket protocol error");
                CloseReason {
                    code: close_code::PROTOCOL_ERROR,
                    reason: "protocol-error",
                }
            }
        };
        self.failed = true;
        outbox.close(reason);
        ReadEnd::Closing
    }

    /// Writes everything queued, `close` last when given, then waits for the client's close
    /// frame (or the end of the stream), all within `grace`. Reading until the client's close
    /// keeps the TCP connection from being reset while our last frames are in flight. A
    /// failed connection does not wait for that close: it ends the stream at once.
    pub async fn finish(
        &mut self,
        outbox: Option<&Outbox>,
        close: Option<CloseReason>,
        stats: &Stats,
        grace: Duration,
    ) {
        if let Some(reason) = close {
            // The outbox's frames first (a last answer, say); the close frame goes after them.
            if let Some(outbox) = outbox {
                let mut rest = Wire::default();
                self.out_frames += outbox.take(&mut rest);
                self.out.append(rest);
            }
            self.queue_close(reason.code, reason.reason);
        }
        let closing = async {
            if poll_fn(|cx| self.poll_write_out(cx, None, stats))
                .await
                .is_err()
            {
                return;
            }
            if self.failed {
                self.end_stream().await;
            } else if close.is_some() {
                self.discard_until_close().await;
            }
        };
        let _ = tokio::time::timeout(grace, closing).await;
    }

    /// Answers a client's close frame with `code` (after anything queued).
    pub async fn answer_close(&mut self, code: u16, stats: &Stats, grace: Duration) {
        self.queue_close(code, "");
        let _ =
            tokio::time::timeout(grace, poll_fn(|cx| self.poll_write_out(cx, None, stats))).await;
    }

    /// Reads and drops frames until the client's close frame or the end of the stream.
    async fn discard_until_close(&mut self) {
        let mut buf = std::mem::take(&mut self.partial);
        loop {
            loop {
                match ws::parse_head(&buf, self.max_message) {
                    Ok(Some(head)) if buf.len() >= head.frame_len() => {
                        if head.opcode == opcode::CLOSE {
                            return;
                        }
                        buf.drain(..head.frame_len());
                    }
                    Ok(_) => break,
                    Err(_) => return,
                }
            }
            // On the heap: a buffer held across this await would sit in every connection's
            // task for the connection's whole life.
            let filled = buf.len();
            buf.resize(filled + READ_CHUNK, 0);
            let mut read = ReadBuf::new(&mut buf[filled..]);
            let n = match poll_fn(|cx| Pin::new(&mut self.io).poll_read(cx, &mut read)).await {
                Ok(()) => read.filled().len(),
                Err(_) => 0,
            };
            buf.truncate(filled + n);
            if n == 0 {
                return;
            }
        }
    }

    /// Ends our side of the TCP stream, so the client sees the end right after our close
    /// frame, then drops what it still sends until it ends its side: closing the socket
    /// with input unread would reset the connection, and a reset can destroy our close
    /// frame before the client reads it.
    async fn end_stream(&mut self) {
        if poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx))
            .await
            .is_err()
        {
            return;
        }
        // On the heap, as in `discard_until_close`.
        let mut buf = std::mem::take(&mut self.partial);
        buf.resize(READ_CHUNK, 0);
        loop {
            let mut read = ReadBuf::new(&mut buf);
            match poll_fn(|cx| Pin::new(&mut self.io).poll_read(cx, &mut read)).await {
                Ok(()) if !read.filled().is_empty() => {}
                _ => return,
            }
        }
    }
}
