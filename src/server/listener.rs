//! The accept loop of one listening socket: a place among the listener's pending sockets
//! (`pending.rs`) before each accept, then a task per socket (`conn.rs`).
//!
//! The listening socket can be closed from outside at once: on shutdown it is gone before the
//! first websocket is told to close, so a client reconnecting during the shutdown is refused by
//! the kernel instead of accepted and then dropped.
//!
//! Out of file descriptors (EMFILE, ENFILE), `accept` fails and leaves the connection in the
//! kernel's queue, where the client waits and the listener would spin on it. A spare
//! descriptor is kept open for that moment: it is closed, the waiting connection accepted with
//! it, answered 503 and closed, and the spare reopened. New clients get a prompt refusal and
//! the open connections keep their descriptors. The default `max_connections` leaves this for
//! the unexpected (`capacity.rs`).

use std::fs::File;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use super::conn::{self, Settings};
use super::pending::Pending;
use crate::stats::Stats;

/// A pause before accepting again after an error that a retry will not fix at once: out of
/// descriptors without a spare, or out of kernel memory. Short, so the backlog does not grow
/// much; it costs nothing to the connections already open.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often running out of descriptors is said at WARN; the summary line counts the refusals.
const OUT_OF_FDS_LOG_EVERY: Duration = Duration::from_secs(10);

/// The answer to a client refused for want of descriptors.
const UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Shared by the accept loop and [`Handle::shutdown`](super::Handle::shutdown).
#[derive(Clone)]
pub(super) struct ClosableListener {
    inner: Arc<Mutex<Option<TcpListener>>>,
}

impl ClosableListener {
    pub fn new(listener: TcpListener) -> ClosableListener {
        ClosableListener {
            inner: Arc::new(Mutex::new(Some(listener))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<TcpListener>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the listening socket; a pending accept never completes.
    pub fn close(&self) {
        self.lock().take();
    }

    async fn accept_once(&self) -> io::Result<(TcpStream, SocketAddr)> {
        poll_fn(|cx| match self.lock().as_ref() {
            Some(listener) => listener.poll_accept(cx),
            None => Poll::Pending,
        })
        .await
    }

    /// A connection if one is waiting now.
    fn try_accept(&self) -> Option<TcpStream> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match self.lock().as_ref()?.poll_accept(&mut cx) {
            Poll::Ready(Ok((stream, _))) => Some(stream),
            _ => None,
        }
    }
}

/// Accepts on `listener` until the node shuts down.
pub(super) async fn serve(
    listener: ClosableListener,
    pending: Arc<Pending>,
    settings: Arc<Settings>,
) {
    let mut spare = Spare::open();
    let shutdown = settings.shutdown.clone();
    loop {
        let accepted = async {
            pending.room().await;
            accept(&listener, &mut spare, &settings.stats).await
        };
        let (stream, peer) = tokio::select! {
            accepted = accepted => accepted,
            _ = shutdown.cancelled() => return,
        };
        // Without TCP_NODELAY, a small frame written while the previous one is unacknowledged
        // waits for the peer's delayed ACK: up to 40 ms of latency on loopback.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let slot = pending.enter();
        tokio::spawn(conn::serve(stream, peer, slot, settings.clone()));
    }
}

async fn accept(
    listener: &ClosableListener,
    spare: &mut Spare,
    stats: &Stats,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept_once().await {
            Ok(accepted) => return accepted,
            // The peer gave up before we accepted: nothing to do.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) => {}
            Err(error) if out_of_fds(&error) => spare.refuse_one(listener, stats).await,
            Err(error) => {
                tracing::error!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn out_of_fds(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The descriptor kept for refusing a client when there are none left.
struct Spare {
    file: Option<File>,
    last_warning: Option<Instant>,
}

impl Spare {
    fn open() -> Spare {
        Spare {
            file: File::open("/dev/null").ok(),
            last_warning: None,
        }
    }

    /// Refuses the connection that could not be accepted, through the spare descriptor.
    async fn refuse_one(&mut self, listener: &ClosableListener, stats: &Stats) {
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= OUT_OF_FDS_LOG_EVERY)
        {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                "out of file descriptors: refusing new connections with 503 while the open \
                 ones go on; lower max_connections or raise the open-files limit \
                 (LimitNOFILE= in the systemd unit, ulimit -n)"
            );
        }
        if let Some(file) = self.file.take() {
            drop(file);
            if let Some(stream) = listener.try_accept() {
                Stats::incr(&stats.refused_out_of_fds);
                // Best effort: the socket buffer takes it at once or the client sees a close.
                let _ = stream.try_write(UNAVAILABLE);
            }
            self.file = File::open("/dev/null").ok();
        }
        if self.file.is_none() {
            // Another task took the descriptor: wait for some to be freed, then try again.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            self.file = File::open("/dev/null").ok();
        }
        // The backlog may hold thousands: let the connections run between two refusals.
        tokio::task::yield_now().await;
    }
}
