//! Trigger sources: message brokers that deliver trigger bodies into the hub.
//!
//! A broker engine implements [`Engine`]: one *session* connects, subscribes, and hands every
//! message body to the [`Inbox`] until the link breaks. [`run`] owns everything around it, the
//! same for every engine: reconnecting forever with capped, jittered exponential backoff,
//! logging each state change once, the connected/disconnected state in the status answer, and
//! stopping on shutdown. A new engine (NATS, ...) is one file with one `Engine` impl.
//!
//! Bad messages (not JSON, no rooms, ...) are counted in `triggers_invalid` and logged at most
//! once per kind per [`INVALID_LOG_INTERVAL`]: a misbehaving publisher cannot flood the logs,
//! and is never fatal.
//!
//! Each engine is a cargo feature (`amqp`, `redis`); the stream's status (`stream`) is in
//! every build, as status and `/metrics` read it.
#![cfg_attr(
    not(any(feature = "amqp", feature = "redis")),
    allow(dead_code, reason = "a build without brokers has no engine to run")
)]

#[cfg(feature = "amqp")]
pub(crate) mod amqp;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub mod stream;

use std::collections::HashMap;
use std::mem::Discriminant;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::protocol::{Trigger, TriggerError};
use crate::stats::{SourceStatus, Stats, TriggerSource};

/// First wait after a failed connection: short, as most outages are a broker restart.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between two attempts: a recovered broker is found within 30 s, and a dead one
/// costs one connection attempt per 30 s per node.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often one kind of bad message is logged; the rest are only counted.
pub const INVALID_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Why a session ended. The text goes to the log as it is: it never holds a URL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[cfg(feature = "amqp")]
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[cfg(feature = "redis")]
    #[error("{0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("{0}")]
    Lost(&'static str),
}

/// A broker engine: one connected session at a time, restarted by [`run`].
#[async_trait]
pub(crate) trait Engine: Send + Sync + 'static {
    /// Which counter and status entry the engine's triggers go to.
    fn source(&self) -> TriggerSource;

    /// A name for the logs, e.g. `amqp exchange "hightemplar"` (never the URL: it may hold a
    /// password).
    fn describe(&self) -> String;

    /// Connects, subscribes, calls [`Link::connected`], then delivers every message into
    /// `link.inbox` until the connection is lost (`Err`) or `link.stop` is cancelled (`Ok`,
    /// after closing the connection politely).
    async fn session(&self, link: &Link<'_>) -> Result<(), SourceError>;
}

/// What a session gets from the reconnect loop.
pub(crate) struct Link<'a> {
    pub inbox: &'a Inbox,
    pub stop: &'a CancellationToken,
    status: &'a SourceStatus,
    name: &'a str,
    up: std::sync::atomic::AtomicBool,
}

impl Link<'_> {
    /// The session is subscribed: from now on it receives triggers.
    pub fn connected(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Relaxed);
        self.status.set_up();
        tracing::info!(source = %self.name, "trigger source connected");
    }

    fn was_connected(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs `engine` until `shared.shutdown`: connects, reconnects after any loss, forever.
pub(crate) async fn run(engine: impl Engine, shared: Arc<Node>) {
    let source = engine.source();
    let name = engine.describe();
    let Some(status) = shared.stats().source_status(source) else {
        tracing::error!(source = %name, "not a broker source; not started");
        return;
    };
    status.set_down();
    let stop = shared.shutdown().clone();
    let inbox = Inbox::new(shared.clone(), source);
    let mut backoff = Backoff::default();
    // Repeated failures are logged once, until the next successful connection.
    let mut failure_logged = false;
    loop {
        let link = Link {
            inbox: &inbox,
            stop: &stop,
            status,
            name: &name,
            up: false.into(),
        };
        let result = engine.session(&link).await;
        status.set_down();
        let error = match result {
            Ok(()) => break,
            Err(_) if stop.is_cancelled() => break,
            Err(error) => error,
        };
        if link.was_connected() {
            backoff = Backoff::default();
            failure_logged = false;
            tracing::warn!(source = %name, %error, "trigger source lost; reconnecting");
        } else if !failure_logged {
            failure_logged = true;
            tracing::warn!(
                source = %name, %error,
                "trigger source cannot connect; retrying every {}s at most (logged once)",
                BACKOFF_MAX.as_secs()
            );
        } else {
            tracing::debug!(source = %name, %error, "trigger source still cannot connect");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => break,
        }
    }
    tracing::info!(source = %name, "trigger source stopped");
}

/// Exponential backoff with "equal jitter": half the delay is fixed, half random, so nodes that
/// lost the same broker at the same moment do not reconnect in lockstep.
#[derive(Debug)]
struct Backoff {
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            current: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(BACKOFF_MAX);
        let half = base / 2;
        // fastrand: a thread-local generator seeded randomly, so nodes draw differently.
        half + half.mul_f64(fastrand::f64())
    }
}

/// Parses message bodies and publishes them to the hub; counts and logs the bad ones.
pub(crate) struct Inbox {
    shared: Arc<Node>,
    source: TriggerSource,
    /// Per kind of bad message, its log state. A std mutex: held for a map lookup, never across an `.await`; at most one entry per
    /// [`TriggerError`] variant.
    invalid_log: Mutex<HashMap<Discriminant<TriggerError>, LogState>>,
}

/// When one kind of bad message was last logged, and how many went unlogged since.
#[derive(Default)]
struct LogState {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Inbox {
    fn new(shared: Arc<Node>, source: TriggerSource) -> Inbox {
        Inbox {
            shared,
            source,
            invalid_log: Mutex::new(HashMap::new()),
        }
    }

    /// Delivers one message body: a trigger object, or a list of them (a batch).
    pub async fn deliver(&self, body: &[u8]) {
        let config = self.shared.config();
        match Trigger::parse_batch(body, &config.policy.room_limits, config.max_batch) {
            Ok(triggers) => {
                self.shared.publish_batch(triggers, self.source).await;
            }
            Err(error) => {
                Stats::incr(&self.shared.stats().triggers_invalid);
                self.log_invalid(&error);
            }
        }
    }

    /// Parses a message body that must hold one trigger, as a stream message has one
    /// position: a trigger object, or a list of exactly one. A longer list is refused like
    /// any bad message (counted, logged), since its triggers would share one position.
    #[cfg(feature = "amqp")]
    pub fn parse_one(&self, body: &[u8]) -> Option<Trigger> {
        let config = self.shared.config();
        match Trigger::parse_batch(body, &config.policy.room_limits, 1) {
            Ok(mut triggers) => triggers.pop(),
            Err(error) => {
                Stats::incr(&self.shared.stats().triggers_invalid);
                self.log_invalid(&error);
                None
            }
        }
    }

    fn log_invalid(&self, error: &TriggerError) {
        let now = Instant::now();
        let mut log = self
            .invalid_log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = log.entry(std::mem::discriminant(error)).or_default();
        if state
            .last_logged
            .is_some_and(|at| now.duration_since(at) < INVALID_LOG_INTERVAL)
        {
            state.unlogged += 1;
            return;
        }
        state.last_logged = Some(now);
        let suppressed = std::mem::take(&mut state.unlogged);
        drop(log);
        tracing::warn!(
            source = ?self.source, %error, suppressed,
            "ignored a bad trigger message (each kind is logged at most once a minute)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::default();
        let mut ceiling = BACKOFF_INITIAL;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        assert!(backoff.next_delay() >= BACKOFF_MAX / 2);
    }

    #[test]
    fn jitter_varies() {
        // Eight sources losing their broker at once do not all wait the same time.
        let first: Vec<Duration> = (0..8).map(|_| Backoff::default().next_delay()).collect();
        assert!(first
            .iter()
            .all(|d| *d >= BACKOFF_INITIAL / 2 && *d <= BACKOFF_INITIAL));
        assert!(first.windows(2).any(|w| w[0] != w[1]), "{first:?}");
    }
}
