//! The backend hooks (`on_connect`, `on_ping`, `on_disconnect`): run beside the connections,
//! so that a slow backend never delays a client, but bounded node-wide and tracked, so that a
//! slow backend cannot pile up requests without end and a shutdown does not lose them.
//!
//! - At most [`MAX_HOOKS_IN_FLIGHT`] hook calls run at once.
//! - A ping hook that finds them all taken is dropped and counted (`hooks_dropped`): a client
//!   decides how often it pings, so waiting would let one client queue work without bound.
//! - A connect or disconnect hook waits for its turn (one of each per connection, so the
//!   connections bound them), up to [`MAX_HOOKS_WAITING`] at once; past that it is dropped
//!   and counted too. Waiting hooks go first when a call ends (the semaphore is fair), before
//!   any new ping hook.
//! - Every hook is a task of one [`TaskTracker`]: on shutdown, after the connections have
//!   closed (and so spawned their disconnect hooks), [`Hooks::drain`] waits for them within
//!   what is left of the shutdown grace.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, ConnectRequest};
use crate::stats::Stats;

/// Hook calls in flight at once, node-wide. Each holds a backend connection (a descriptor)
/// and a backend worker: a Django behind gunicorn serves a few dozen requests at once, and
/// more in flight only queue there. The same figure as the bootstraps in flight
/// (`DEFAULT_MAX_CONCURRENT_BOOTSTRAPS`), which share the backend with the hooks.
pub const MAX_HOOKS_IN_FLIGHT: usize = 64;

/// Connect and disconnect hooks waiting for a call slot, at most. A waiting hook holds its
/// task (~0.3 KB) and its connection's request (~1 KB with a browser's headers): ~13 MiB at
/// the bound. A node shutting down closes all its connections at once; at 64 calls in flight
/// and ~20 ms a call, 10,000 disconnect hooks take ~3 s, within the default 10 s grace. Past
/// the bound (a bigger node, a backend down) the excess is dropped and counted.
pub const MAX_HOOKS_WAITING: usize = 10_000;

/// Which hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    Connect,
    Ping,
    Disconnect,
}

/// The node's hook calls: their bound and their tasks.
pub(crate) struct Hooks {
    backend: Arc<dyn Backend>,
    stats: Arc<Stats>,
    in_flight: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    tasks: TaskTracker,
}

impl Hooks {
    pub fn new(backend: Arc<dyn Backend>, stats: Arc<Stats>) -> Hooks {
        Hooks {
            backend,
            stats,
            in_flight: Arc::new(Semaphore::new(MAX_HOOKS_IN_FLIGHT)),
            waiting: Arc::new(Semaphore::new(MAX_HOOKS_WAITING)),
            tasks: TaskTracker::new(),
        }
    }

    /// Calls `hook` for `request` in the background, or drops it (counted) when the bound is
    /// full.
    pub fn spawn(&self, request: &Arc<ConnectRequest>, hook: Hook) {
        let backend = self.backend.clone();
        let request = request.clone();
        if hook == Hook::Ping {
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                return self.dropped(hook);
            };
            self.tasks.spawn(async move {
                call(&*backend, &request, hook).await;
                drop(permit);
            });
            return;
        }
        let Ok(waiting) = self.waiting.clone().try_acquire_owned() else {
            return self.dropped(hook);
        };
        let in_flight = self.in_flight.clone();
        self.tasks.spawn(async move {
            // Never closed, so the acquire only ends with a permit.
            let Ok(permit) = in_flight.acquire_owned().await else {
                return;
            };
            drop(waiting);
            call(&*backend, &request, hook).await;
            drop(permit);
        });
    }

    fn dropped(&self, hook: Hook) {
        Stats::incr(match hook {
            Hook::Connect => &self.stats.hooks_dropped_connect,
            Hook::Ping => &self.stats.hooks_dropped_ping,
            Hook::Disconnect => &self.stats.hooks_dropped_disconnect,
        });
    }

    /// Waits up to `within` for every hook spawned so far, and those spawned meanwhile, to
    /// end; `false` if some were still running then (they are logged).
    pub async fn drain(&self, within: Duration) -> bool {
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
        {
            return true;
        }
        tracing::warn!(
            left = self.tasks.len(),
            "shutdown grace over with backend hooks still running"
        );
        false
    }
}

async fn call(backend: &dyn Backend, request: &ConnectRequest, hook: Hook) {
    match hook {
        Hook::Connect => backend.on_connect(request).await,
        Hook::Ping => backend.on_ping(request).await,
        Hook::Disconnect => backend.on_disconnect(request).await,
    }
}
