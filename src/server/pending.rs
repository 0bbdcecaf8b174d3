//! The bound on one listener's sockets that are not websockets (yet): accepted, maybe in a TLS
//! handshake, sending a request head, or kept alive between HTTP requests. Until its head is
//! read nobody knows who a socket is, so no per-IP or per-node websocket limit counts it; this
//! bound is what keeps a slowloris (thousands of sockets trickling header bytes) from taking
//! every descriptor.
//!
//! At the bound the listener stops accepting, so newcomers wait in the kernel's backlog, and
//! the oldest socket that began its request head and has not finished it within
//! [`EVICT_AFTER`] is closed to make room: a real client writes its head at once, in one
//! segment, so a head begun and unfinished a second later is trickled (slowloris), and a real
//! client gets in within about that long per bound-ful of tricklers ahead of it. A socket that
//! has sent nothing yet is left to the request-head deadline: in a reconnect storm the clients
//! (or the network) may be seconds late to write, and such a client is only paced, never cut;
//! a socket whose head came in is never taken.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a socket that began its request head (or TLS handshake) keeps its place when the
/// listener is at its bound: far more than a real client needs to finish it (it is written at
/// once; a few round trips with TLS), short enough that a client queued behind a slowloris
/// waits about this long.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// One listener's pending sockets, oldest first.
pub(super) struct Pending {
    bound: usize,
    evict_after: Duration,
    // A std mutex: a map insert or removal per accepted socket, and a walk of the map when at
    // the bound; never held across an await.
    state: Mutex<State>,
    /// Signalled whenever a place frees.
    freed: Notify,
}

#[derive(Default)]
struct State {
    next: u64,
    /// By accept order: the first entry is the oldest.
    open: BTreeMap<u64, Arc<Place>>,
}

/// What the listener knows of one pending socket, shared with the socket's task.
#[derive(Default)]
pub(super) struct Place {
    /// When the socket's first bytes came in.
    begun: OnceLock<Instant>,
    /// A request head came in: the socket is being served, not trickling.
    served: AtomicBool,
    evict: CancellationToken,
}

impl Place {
    /// The socket's first bytes came in: its time starts.
    pub fn begin(&self) {
        let _ = self.begun.set(Instant::now());
    }

    /// A request head came in on the socket.
    pub fn serve(&self) {
        self.served.store(true, Ordering::Relaxed);
    }

    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Cancelled when the socket is to close to make room for a newer one.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }

    /// When it may be closed to make room; `None` while it may not.
    fn due(&self, evict_after: Duration) -> Option<Instant> {
        if self.served() {
            return None;
        }
        Some(*self.begun.get()? + evict_after)
    }
}

/// One pending socket's place; dropping it frees the place.
pub(super) struct Slot {
    pending: Arc<Pending>,
    id: u64,
    place: Arc<Place>,
}

impl Slot {
    pub fn place(&self) -> &Arc<Place> {
        &self.place
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
    /// socket waiting for its head has had its time and is told to close (its place is freed
    /// at once).
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so that a place freed in between is not missed.
            freed.as_mut().enable();
            let next_due = {
                let mut state = self.lock();
                if state.open.len() < self.bound {
                    return;
                }
                let now = Instant::now();
                let mut next_due: Option<Instant> = None;
                let mut victim = None;
                for (&id, place) in &state.open {
                    match place.due(self.evict_after) {
                        Some(due) if due <= now => {
                            victim = Some(id);
                            break;
                        }
                        Some(due) => next_due = Some(next_due.map_or(due, |d| d.min(due))),
                        None => {}
                    }
                }
                if let Some(place) = victim.and_then(|id| state.open.remove(&id)) {
                    place.evict.cancel();
                    return;
                }
                next_due
            };
            // Sockets that have sent nothing yet get their time when they do: look again
            // after as long.
            let wake = next_due.unwrap_or_else(|| Instant::now() + self.evict_after);
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Takes a place for a socket just accepted (after [`Pending::room`]).
    pub fn enter(self: &Arc<Self>) -> Slot {
        let place = Arc::new(Place::default());
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.open.insert(id, place.clone());
        drop(state);
        Slot {
            pending: self.clone(),
            id,
            place,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begun(pending: &Arc<Pending>) -> Slot {
        let slot = pending.enter();
        slot.place().begin();
        slot
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_bound_there_is_room_at_once() {
        let pending = Pending::new(2, EVICT_AFTER);
        pending.room().await;
        let _a = begun(&pending);
        pending.room().await;
        let _b = begun(&pending);
        assert_eq!(pending.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_place_lets_the_next_one_in() {
        let pending = Pending::new(1, EVICT_AFTER);
        let first = begun(&pending);
        first.place().serve();
        let waiting = tokio::spawn({
            let pending = pending.clone();
            async move { pending.room().await }
        });
        tokio::time::sleep(3 * EVICT_AFTER).await;
        // Being served, it keeps its place however long it takes.
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.expect("room");
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_bound_the_oldest_waiting_for_its_head_goes_once_it_had_its_time() {
        let pending = Pending::new(3, EVICT_AFTER);
        let served = begun(&pending);
        served.place().serve();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let oldest = begun(&pending);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let younger = pending.enter();
        let begun = Instant::now();
        pending.room().await;
        // The oldest waiting one had 300 ms already: it is told to go when its second is up.
        assert_eq!(begun.elapsed(), Duration::from_millis(700));
        assert!(oldest.place().evicted().is_cancelled());
        assert!(!served.place().evicted().is_cancelled());
        assert!(!younger.place().evicted().is_cancelled());
        assert_eq!(pending.len(), 2);
        // Its place was freed at eviction; dropping it later changes nothing.
        drop(oldest);
        assert_eq!(pending.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_sent_nothing_yet_is_not_taken_for_a_trickler() {
        let pending = Pending::new(1, EVICT_AFTER);
        let waiting_for_a_cpu = pending.enter();
        tokio::time::sleep(5 * EVICT_AFTER).await;
        let begun = Instant::now();
        let room = tokio::spawn({
            let pending = pending.clone();
            async move { pending.room().await }
        });
        tokio::time::sleep(EVICT_AFTER / 2).await;
        waiting_for_a_cpu.place().begin();
        room.await.expect("room");
        // Its second counted from its first bytes, found at the next look.
        assert!(waiting_for_a_cpu.place().evicted().is_cancelled());
        assert!(begun.elapsed() >= EVICT_AFTER + EVICT_AFTER / 2);
        assert!(begun.elapsed() <= 2 * EVICT_AFTER);
    }
}
