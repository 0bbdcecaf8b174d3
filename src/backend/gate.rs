//! Every bootstrap call goes through here: a limit on calls in flight, a circuit breaker, and
//! the node's allowed-room lists the answers are read into.
//!
//! After a deploy every client reconnects at once. Without a gate that is thousands of
//! simultaneous `bootstrap/` calls; with it, at most `max_concurrent_bootstraps` run, the rest
//! wait their turn (up to the backend timeout), and when the backend keeps failing the breaker
//! opens: clients get the backend-unavailable answer (close 1013) at once, and the backend gets
//! a few seconds to recover. Those clients mostly get the same few lists of allowed rooms,
//! which [`AllowedLists`] keeps once each.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{Backend, BackendError, Bootstrap, ConnectRequest};
use crate::room::{AllowedLists, AllowedRooms};
use crate::stats::Stats;

/// Consecutive failed bootstraps that open the breaker. High enough that a few unlucky calls
/// do not refuse everyone; low enough to trip within the first second of an outage under load.
const BREAKER_THRESHOLD: u32 = 20;
/// How long the breaker stays open before letting calls probe the backend again.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// Wraps every bootstrap call of a node.
pub(crate) struct BackendGate {
    permits: Semaphore,
    timeout: Duration,
    // A std mutex: two field updates per call, never held across an await.
    breaker: Mutex<Breaker>,
    lists: AllowedLists,
}

impl BackendGate {
    pub fn new(max_in_flight: usize, timeout: Duration) -> BackendGate {
        BackendGate {
            permits: Semaphore::new(max_in_flight.max(1)),
            timeout,
            breaker: Mutex::new(Breaker::default()),
            lists: AllowedLists::default(),
        }
    }

    /// The distinct allowed-room lists the node's connections hold.
    pub fn allowed_lists(&self) -> &AllowedLists {
        &self.lists
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the breaker lets calls through now.
    pub fn is_closed(&self) -> bool {
        self.breaker()
            .open_until
            .is_none_or(|until| Instant::now() >= until)
    }

    /// One bootstrap through the gate: breaker check, a permit (waiting at most the backend
    /// timeout), the call within the timeout, the outcome recorded, and the answer read into
    /// the node's lists. `Ok(None)` is a refusal.
    pub async fn bootstrap(
        &self,
        backend: &dyn Backend,
        request: &ConnectRequest,
        stats: &Stats,
    ) -> Result<Option<AllowedRooms>, BackendError> {
        let answer = self.call(backend, request, stats).await?;
        // After the permit is given back: reading a new list is the node's work, not the
        // backend's.
        Ok(match answer {
            Bootstrap::Authorized { allowed_rooms } => self.lists.from_values(allowed_rooms).await,
            Bootstrap::AuthorizedJson { allowed_rooms } => {
                self.lists.from_json(allowed_rooms.get()).await
            }
            Bootstrap::Refused => None,
        })
    }

    async fn call(
        &self,
        backend: &dyn Backend,
        request: &ConnectRequest,
        stats: &Stats,
    ) -> Result<Bootstrap, BackendError> {
        if !self.is_closed() {
            return Err(BackendError::CircuitOpen);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let _permit = tokio::time::timeout_at(deadline, self.permits.acquire())
            .await
            .map_err(|_| BackendError::Overloaded)?
            .map_err(|_| BackendError::Overloaded)?;
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline, backend.bootstrap(request))
            .await
            .unwrap_or(Err(BackendError::Timeout(self.timeout)));
        stats
            .backend_latency
            .observe(started.elapsed().as_secs_f64());
        self.record(result.is_ok());
        result
    }

    fn record(&self, success: bool) {
        let mut breaker = self.breaker();
        if success {
            if breaker.open_until.take().is_some() {
                tracing::info!("backend answers again: circuit breaker closed");
            }
            breaker.consecutive_failures = 0;
            return;
        }
        breaker.consecutive_failures = breaker.consecutive_failures.saturating_add(1);
        if breaker.consecutive_failures >= BREAKER_THRESHOLD {
            let was_open = breaker
                .open_until
                .is_some_and(|until| Instant::now() < until);
            breaker.open_until = Some(Instant::now() + BREAKER_COOLDOWN);
            if !was_open {
                tracing::warn!(
                    failures = breaker.consecutive_failures,
                    cooldown = ?BREAKER_COOLDOWN,
                    "backend keeps failing: circuit breaker open"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Down;

    #[async_trait::async_trait]
    impl Backend for Down {
        async fn bootstrap(&self, _: &ConnectRequest) -> Result<Bootstrap, BackendError> {
            Err(BackendError::ServerError(500))
        }
    }

    fn request() -> ConnectRequest {
        ConnectRequest {
            id: "c".into(),
            headers: Default::default(),
            query: None,
            peer: "127.0.0.1:1".parse().expect("addr"),
            client_ip: "127.0.0.1".parse().expect("ip"),
        }
    }

    #[tokio::test]
    async fn breaker_opens_after_repeated_failures() {
        let gate = BackendGate::new(4, Duration::from_secs(1));
        let stats = Stats::new();
        for _ in 0..BREAKER_THRESHOLD {
            assert!(matches!(
                gate.bootstrap(&Down, &request(), &stats).await,
                Err(BackendError::ServerError(500))
            ));
        }
        assert!(!gate.is_closed());
        assert!(matches!(
            gate.bootstrap(&Down, &request(), &stats).await,
            Err(BackendError::CircuitOpen)
        ));
    }
}
