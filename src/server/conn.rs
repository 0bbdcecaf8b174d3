//! One accepted socket until it is a websocket or gone: the TLS handshake (when the listener
//! has TLS), the request-head deadline, and hyper's HTTP/1 until the upgrade hands the socket
//! to `connection::run`, or the HTTP requests on it end.
//!
//! The deadline runs from the accept to the first request head, TLS handshake included; hyper's
//! `header_read_timeout` then bounds each later head on a kept-alive connection, and the wait
//! for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::pending::Slot;
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
    let head_seen = Arc::new(AtomicBool::new(false));
    let end = match &settings.tls {
        None => serve_http(stream, peer, deadline, &head_seen, &slot, &settings).await,
        Some(acceptor) => {
            tokio::select! {
                handshake = acceptor.accept(stream) => match handshake {
                    Ok(tls) => serve_http(tls, peer, deadline, &head_seen, &slot, &settings).await,
                    Err(error) => End::Failed(format!("TLS handshake: {error}")),
                },
                _ = tokio::time::sleep_until(deadline) => End::HeadTimeout,
                _ = slot.evicted().cancelled() => End::Evicted,
                _ = settings.shutdown.cancelled() => End::Done,
            }
        }
    };
    let stats = &settings.stats;
    let before_head = !head_seen.load(Ordering::Relaxed);
    match end {
        End::Done => {}
        End::HeadTimeout => Stats::incr(&stats.refused_head_timeout),
        // A kept-alive connection that served its requests is not refused by closing it.
        End::Evicted if before_head => Stats::incr(&stats.refused_pending_full),
        End::Evicted => {}
        End::Failed(error) => tracing::debug!(%peer, %error, "HTTP connection failed"),
    }
}

async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    deadline: Instant,
    head_seen: &Arc<AtomicBool>,
    slot: &Slot,
    settings: &Settings,
) -> End
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = settings.router.clone();
    let seen = head_seen.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
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
        let waiting_for_head = !head_seen.load(Ordering::Relaxed);
        tokio::select! {
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => End::Done,
                    // hyper's own header timer, started on the first poll, may ring in the
                    // same instant as ours for the first head: the same refusal.
                    Err(error) if error.is_timeout() && !head_seen.load(Ordering::Relaxed) => {
                        End::HeadTimeout
                    }
                    // A kept-alive connection idle for as long: an ordinary end.
                    Err(error) if error.is_timeout() => End::Done,
                    Err(error) => End::Failed(error.to_string()),
                };
            }
            _ = &mut first_head, if waiting_for_head => {
                // The head may have come in while this select was waiting.
                if !head_seen.load(Ordering::Relaxed) {
                    return End::HeadTimeout;
                }
            }
            _ = slot.evicted().cancelled() => return End::Evicted,
            _ = settings.shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
