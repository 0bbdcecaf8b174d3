//! The bound on one listener's sockets that are not websockets (yet): accepted, maybe in a TLS
//! handshake, sending a request head, or kept alive between HTTP requests. Until its head is
//! read nobody knows who a socket is, so no per-IP or per-node websocket limit counts it; this
//! bound is what keeps a slowloris (thousands of sockets trickling header bytes) from taking
//! every descriptor.
//!
//! At the bound the listener stops accepting, so newcomers wait in the kernel's backlog, and
//! the oldest pending socket is closed to make room as soon as it has had [`EVICT_AFTER`]: a
//! real client's head arrives a round trip after it connects, so at the bound the old ones are
//! the tricklers, and a real client gets in within about that long however many there are. A
//! burst of real clients (a reconnect storm) is only paced, never cut.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a pending socket keeps its place when the listener is at its bound: far more than
/// any real client needs to send a request head (one round trip, a few TLS ones with TLS),
/// short enough that a client queued behind a slowloris waits about this long.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// One listener's pending sockets, oldest first.
pub(super) struct Pending {
    bound: usize,
    evict_after: Duration,
    // A std mutex: a map insert or removal per accepted socket, never held across an await.
    state: Mutex<State>,
    /// Signalled whenever a place frees.
    freed: Notify,
}

#[derive(Default)]
struct State {
    next: u64,
    /// By accept order: the first entry is the oldest.
    open: BTreeMap<u64, Entry>,
}

struct Entry {
    since: Instant,
    evict: CancellationToken,
}

/// One pending socket's place; dropping it frees the place.
pub(super) struct Slot {
    pending: Arc<Pending>,
    id: u64,
    evict: CancellationToken,
}

impl Slot {
    /// Cancelled when the socket is to close to make room for a newer one.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.pending.lock().open.remove(&self.id).is_some() {
            self.pending.freed.notify_one();
        }
    }
}

impl Pending {
    /// A listener's bound (at least 1) and how long a socket keeps its place at the bound.
    pub fn new(bound: usize, evict_after: Duration) -> Arc<Pending> {
        Arc::new(Pending {
            bound: bound.max(1),
            evict_after,
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sockets pending now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Waits until the listener may take one more socket: a place is free, or the oldest
    /// socket has had its time and is told to close (its place is freed at once).
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so that a place freed in between is not missed.
            freed.as_mut().enable();
            let due = {
                let mut state = self.lock();
                if state.open.len() < self.bound {
                    return;
                }
                let Some(oldest) = state.open.first_entry() else {
                    return;
                };
                let due = oldest.get().since + self.evict_after;
                if Instant::now() >= due {
                    oldest.remove().evict.cancel();
                    return;
                }
                due
            };
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(due) => {}
            }
        }
    }

    /// Takes a place for a socket just accepted (after [`Pending::room`]).
    pub fn enter(self: &Arc<Self>) -> Slot {
        let evict = CancellationToken::new();
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.open.insert(
            id,
            Entry {
                since: Instant::now(),
                evict: evict.clone(),
            },
        );
        drop(state);
        Slot {
            pending: self.clone(),
            id,
            evict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn below_the_bound_there_is_room_at_once() {
        let pending = Pending::new(2, EVICT_AFTER);
        pending.room().await;
        let _a = pending.enter();
        pending.room().await;
        let _b = pending.enter();
        assert_eq!(pending.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_place_lets_the_next_one_in() {
        let pending = Pending::new(1, EVICT_AFTER);
        let first = pending.enter();
        let waiting = tokio::spawn({
            let pending = pending.clone();
            async move { pending.room().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.expect("room");
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_bound_the_oldest_goes_once_it_had_its_time() {
        let pending = Pending::new(2, EVICT_AFTER);
        let oldest = pending.enter();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let younger = pending.enter();
        let started = Instant::now();
        pending.room().await;
        // The oldest had 300 ms already: it is told to go when its second is up.
        assert_eq!(started.elapsed(), Duration::from_millis(700));
        assert!(oldest.evicted().is_cancelled());
        assert!(!younger.evicted().is_cancelled());
        assert_eq!(pending.len(), 1);
        // Its place was freed at eviction; dropping it later changes nothing.
        drop(oldest);
        assert_eq!(pending.len(), 1);
    }
}
