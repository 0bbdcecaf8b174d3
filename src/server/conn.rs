//! One accepted socket until it is a websocket or gone: the TLS handshake (when the listener
//! has TLS), the request-head deadline, and hyper's HTTP/1 until the upgrade hands the socket
//! to `connection::run`, or the HTTP requests on it end.
//!
//! The deadline runs from the accept to the first request head, TLS handshake included; hyper's
//! `header_read_timeout` then bounds each later head on a kept-alive connection, and the wait
//! for it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::pending::{Place, Slot};
use crate::stats::Stats;

/// What every connection of one listener shares.
pub(super) struct Settings {
    pub router: Router,
    pub tls: Option<TlsAcceptor>,
    pub head_timeout: Duration,
    pub stats: Arc<Stats>,
    /// The node's shutdown: HTTP connections finish their request in flight and close.
    pub shutdown: CancellationToken,
}

/// How a socket's HTTP life ended.
enum End {
    /// Upgraded to a websocket, or closed after its requests.
    Done,
    /// No request head within the deadline.
    HeadTimeout,
    /// Closed to make room at the listener's bound.
    Evicted,
    Failed(String),
}

/// Serves `stream` from `peer`; `slot` holds its place among the listener's pending sockets
/// until it is upgraded or closed.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    settings: Arc<Settings>,
) {
    let deadline = Instant::now() + settings.head_timeout;
    let place = slot.place();
    let stream = FirstBytes {
        inner: stream,
        place: Some(place.clone()),
    };
    let end = match &settings.tls {
        None => serve_http(stream, peer, deadline, place, &settings).await,
        Some(acceptor) => {
            tokio::select! {
                handshake = acceptor.accept(stream) => match handshake {
                    Ok(tls) => serve_http(tls, peer, deadline, place, &settings).await,
                    Err(error) => End::Failed(format!("TLS handshake: {error}")),
                },
                _ = tokio::time::sleep_until(deadline) => End::HeadTimeout,
                _ = place.evicted().cancelled() => End::Evicted,
                _ = settings.shutdown.cancelled() => End::Done,
            }
        }
    };
    let stats = &settings.stats;
    let before_head = !place.served();
    match end {
        End::Done => {}
        End::HeadTimeout => Stats::incr(&stats.refused_head_timeout),
        // A kept-alive connection that served its requests is not refused by closing it.
        End::Evicted if before_head => Stats::incr(&stats.refused_pending_full),
        End::Evicted => {}
        End::Failed(error) => tracing::debug!(%peer, %error, "HTTP connection failed"),
    }
}

/// The socket, telling its place when its first bytes come in (the clock of a trickled head
/// starts then); after that, one branch per read.
struct FirstBytes {
    inner: TcpStream,
    place: Option<Arc<Place>>,
}

impl AsyncRead for FirstBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(place) = self.place.take() {
                place.begin();
            }
        }
        read
    }
}

impl AsyncWrite for FirstBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    deadline: Instant,
    place: &Arc<Place>,
    settings: &Settings,
) -> End
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = settings.router.clone();
    let seen = place.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        seen.serve();
        // What `ConnectInfo<SocketAddr>` extracts in the handlers.
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.head_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let first_head = tokio::time::sleep_until(deadline);
    tokio::pin!(first_head);
    let mut closing = false;
    loop {
        let waiting_for_head = !place.served();
        tokio::select! {
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => End::Done,
                    // hyper's own header timer, started on the first poll, may ring in the
                    // same instant as ours for the first head: the same refusal.
                    Err(error) if error.is_timeout() && !place.served() => {
                        End::HeadTimeout
                    }
                    // A kept-alive connection idle for as long: an ordinary end.
                    Err(error) if error.is_timeout() => End::Done,
                    Err(error) => End::Failed(error.to_string()),
                };
            }
            _ = &mut first_head, if waiting_for_head => {
                // The head may have come in while this select was waiting.
                if !place.served() {
                    return End::HeadTimeout;
                }
            }
            _ = place.evicted().cancelled() => return End::Evicted,
            _ = settings.shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
