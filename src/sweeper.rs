//! Every open connection, and one node-wide timer for all of them: idle timeouts, websocket
//! pings, re-authorisation, and the close on shutdown.
//!
//! A timer per connection (a `Sleep` for the idle timeout, an `Interval` for pings) cost each
//! idle connection its timer entries and a wakeup of its task per tick. Here a connection is a
//! slab entry (its outbox and two deadlines), and one task walks the slab a few times per the
//! shortest period, acting through the outbox: a close, a ping frame, a re-authorisation flag.
//! Deadlines are thus kept to within one tick (an eighth of the shortest period, at most 1 s).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use slab::Slab;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::outbox::{close_code, CloseReason, Outbox};
use crate::stats::Stats;
use crate::ws::opcode;

/// The close every connection gets on shutdown.
pub const SERVER_SHUTDOWN: CloseReason = CloseReason {
    code: close_code::GOING_AWAY,
    reason: "server-shutdown",
};
const IDLE_TIMEOUT: CloseReason = CloseReason {
    code: close_code::NORMAL,
    reason: "idle-timeout",
};
const PING_TIMEOUT: CloseReason = CloseReason {
    code: close_code::GOING_AWAY,
    reason: "ping-timeout",
};

const MIN_TICK: Duration = Duration::from_millis(5);
const MAX_TICK: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The periods the sweeper keeps.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub idle_timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub reauth_interval: Option<Duration>,
}

impl Timers {
    /// An eighth of the shortest period, within [5 ms, 1 s].
    fn tick(&self) -> Duration {
        let shortest = [
            Some(self.idle_timeout),
            self.ping_interval,
            self.reauth_interval,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(MAX_TICK);
        (shortest / 8).clamp(MIN_TICK, MAX_TICK)
    }
}

struct Entry {
    outbox: Outbox,
    next_ping: u64,
    next_reauth: u64,
}

struct State {
    entries: Slab<Entry>,
    shut: bool,
}

/// The open connections of a node.
pub struct Registry {
    state: Mutex<State>,
    timers: Timers,
}

impl Registry {
    pub fn new(timers: Timers) -> Registry {
        Registry {
            state: Mutex::new(State {
                entries: Slab::new(),
                shut: false,
            }),
            timers,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection; `None` once the node is shutting down. The entry goes when the
    /// returned registration is dropped.
    pub fn register(&self, outbox: &Outbox) -> Option<Registration<'_>> {
        let now = now_ms();
        let mut state = self.lock();
        if state.shut {
            return None;
        }
        let after = |period: Option<Duration>| period.map_or(u64::MAX, |p| now + ms(p));
        let key = state.entries.insert(Entry {
            outbox: outbox.clone(),
            next_ping: after(self.timers.ping_interval),
            next_reauth: after(self.timers.reauth_interval),
        });
        Some(Registration {
            registry: self,
            key,
        })
    }

    /// Closes every connection with `reason`; later registrations are refused.
    pub fn close_all(&self, reason: CloseReason) {
        let mut state = self.lock();
        state.shut = true;
        for (_, entry) in &state.entries {
            entry.outbox.close(reason);
        }
    }

    /// One walk over the connections at `now` (ms).
    fn sweep(&self, now: u64, stats: &Stats) {
        let idle = ms(self.timers.idle_timeout);
        let ping = self.timers.ping_interval.map(ms);
        let reauth = self.timers.reauth_interval.map(ms);
        let mut state = self.lock();
        for (_, entry) in &mut state.entries {
            let outbox = &entry.outbox;
            if outbox.is_closing() {
                continue;
            }
            if now.saturating_sub(outbox.last_active()) >= idle {
                outbox.close(IDLE_TIMEOUT);
                continue;
            }
            if let Some(period) = ping {
                if now >= entry.next_ping {
                    // Two periods without a frame from the client: a half-open connection.
                    if !outbox.take_heard() {
                        Stats::incr(&stats.ping_timeouts);
                        outbox.close(PING_TIMEOUT);
                        continue;
                    }
                    outbox.push_control(opcode::PING, b"", false);
                    entry.next_ping = now + period;
                }
            }
            if let Some(period) = reauth {
                if now >= entry.next_reauth {
                    outbox.request_reauth();
                    entry.next_reauth = now + period;
                }
            }
        }
    }

    /// Sweeps every tick until `shutdown`, then closes every connection as going away.
    pub async fn run(&self, stats: &Stats, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.timers.tick());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => self.sweep(now_ms(), stats),
            }
        }
        self.close_all(SERVER_SHUTDOWN);
    }
}

/// A connection's place in the registry, given back on drop.
pub struct Registration<'a> {
    registry: &'a Registry,
    key: usize,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().entries.try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn timers() -> Timers {
        Timers {
            idle_timeout: Duration::from_millis(1000),
            ping_interval: Some(Duration::from_millis(100)),
            reauth_interval: Some(Duration::from_millis(300)),
        }
    }

    #[test]
    fn ticks_follow_the_shortest_period() {
        assert_eq!(timers().tick(), Duration::from_micros(12_500));
        let slow = Timers {
            idle_timeout: Duration::from_secs(300),
            ping_interval: None,
            reauth_interval: None,
        };
        assert_eq!(slow.tick(), MAX_TICK);
    }

    #[test]
    fn silence_gets_a_ping_then_a_close_and_idleness_a_close() {
        let stats = Stats::new();
        let registry = Registry::new(timers());
        let quiet = Outbox::new(crate::outbox::QueueBound::frames(8), Arc::new(Stats::new()));
        let talking = Outbox::new(crate::outbox::QueueBound::frames(8), Arc::new(Stats::new()));
        let _a = registry.register(&quiet).expect("open");
        let _b = registry.register(&talking).expect("open");
        let start = now_ms();
        registry.sweep(start + 100, &stats);
        let mut wire = crate::outbox::Wire::default();
        assert_eq!(quiet.take(&mut wire), 1, "a ping");
        talking.heard();
        talking.active(start + 150);
        registry.sweep(start + 200, &stats);
        assert_eq!(quiet.close_reason(), Some(PING_TIMEOUT));
        assert_eq!(talking.close_reason(), None);
        assert!(!talking.take_reauth(), "not due yet");
        talking.heard();
        registry.sweep(start + 300, &stats);
        assert!(talking.take_reauth(), "due after its interval");
        registry.sweep(start + 1200, &stats);
        assert_eq!(talking.close_reason(), Some(IDLE_TIMEOUT));
    }

    #[test]
    fn shutdown_closes_everyone_and_refuses_newcomers() {
        let registry = Registry::new(timers());
        let outbox = Outbox::new(crate::outbox::QueueBound::frames(8), Arc::new(Stats::new()));
        let registration = registry.register(&outbox).expect("open");
        registry.close_all(SERVER_SHUTDOWN);
        assert_eq!(outbox.close_reason(), Some(SERVER_SHUTDOWN));
        assert!(registry.register(&outbox).is_none());
        drop(registration);
        assert!(registry.lock().entries.is_empty());
    }
}
