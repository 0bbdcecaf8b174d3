//! A listener that can be closed from outside at once: on shutdown the listening socket is
//! gone before the first websocket is told to close, so a client reconnecting during the
//! shutdown is refused by the kernel instead of accepted and then dropped.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Shared by the accept loop and [`Handle::shutdown`](super::Handle::shutdown).
#[derive(Clone)]
pub(super) struct ClosableListener {
    inner: Arc<Mutex<Option<TcpListener>>>,
    addr: SocketAddr,
}

impl ClosableListener {
    pub fn new(listener: TcpListener, addr: SocketAddr) -> ClosableListener {
        ClosableListener {
            inner: Arc::new(Mutex::new(Some(listener))),
            addr,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<TcpListener>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the listening socket; a pending accept never completes.
    pub fn close(&self) {
        self.lock().take();
    }
}

impl axum::serve::Listener for ClosableListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let accepted = poll_fn(|cx| match self.lock().as_ref() {
                Some(listener) => listener.poll_accept(cx),
                None => Poll::Pending,
            })
            .await;
            match accepted {
                Ok(connection) => return connection,
                // The peer gave up before we accepted: nothing to do.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                // Out of file descriptors, most likely: wait for some to be freed (as axum's
                // own listener does).
                Err(error) => {
                    tracing::error!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
