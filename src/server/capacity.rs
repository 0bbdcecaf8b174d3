//! How many websockets this process can hold: every socket is a file descriptor, so the
//! open-files limit, raised at start as far as the hard limit allows, less what the rest of the
//! node needs, is the default `max_connections`. A node that would run out of descriptors
//! before reaching its limit refuses at `accept` instead of at admission, and its backend calls
//! fail with it; one that knows its capacity answers the client after it with a clean 503.

use std::io;

use crate::config::policy::Policy;

/// Descriptors the node holds besides its sockets to clients and the backend: stdio (3), the
/// runtime's epoll instances and waker (3), the signal socket pair (3), two listeners and a
/// spare descriptor each (`listener.rs`), a broker connection for each of AMQP and Redis, the
/// PEM files while TLS starts. An idle node with both listeners and both brokers holds 17
/// (`ls /proc/PID/fd`); 64 leaves room for DNS lookups and whatever an embedding application
/// opens.
pub const FIXED_RESERVE: u64 = 64;

/// Sockets one listener holds before they are websockets (in a TLS handshake, sending a
/// request head, or kept alive between HTTP requests), at most. Real clients pass through this
/// state in a round trip, so even a reconnect storm of thousands fills a fraction of it; a
/// slowloris fills it and no more (`pending.rs`).
pub const MAX_PENDING_SOCKETS: usize = 1024;

/// ...and at most 1/16 of the open-files limit, so that a small limit still goes to websockets
/// first: with 1,024 descriptors, 64 pending sockets per listener.
const PENDING_SHARE: u64 = 16;

/// The least pending sockets per listener, whatever the limit.
const MIN_PENDING_SOCKETS: usize = 16;

/// Below this many websockets, the capacity is logged as a warning with the fix: a node
/// behind a load balancer usually expects tens of thousands.
pub const SMALL_CAPACITY: usize = 10_000;

/// Where the kernel caps `RLIMIT_NOFILE` when the hard limit is "unlimited", and what we
/// assume if it cannot be read (Linux's default `fs.nr_open`).
const NR_OPEN: &str = "/proc/sys/fs/nr_open";
const DEFAULT_NR_OPEN: u64 = 1_048_576;

/// What the node can hold, worked out once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The soft open-files limit the node runs with (after raising it).
    pub open_files: u64,
    /// The soft limit found at start, before raising it.
    pub open_files_at_start: u64,
    /// Descriptors kept for everything but websockets.
    pub reserve: u64,
    /// Sockets each listener holds before they are websockets, at most.
    pub pending_per_listener: usize,
    /// Websockets that fit in the open-files limit after the reserve.
    pub room: usize,
    /// The node-wide limit in force: `max_connections` if set, else `room`.
    pub max_connections: usize,
}

impl Capacity {
    /// Raises the open-files limit and works out what fits in it with `listeners` listening
    /// sockets. `Err` only when no websocket would fit and `max_connections` is not set.
    pub fn plan(policy: &Policy, listeners: usize) -> Result<Capacity, String> {
        let (before, after) = raise_open_files_limit()
            .map_err(|e| format!("cannot read the open-files limit: {e}"))?;
        let capacity = Capacity::within(after, policy, listeners);
        capacity.open_files_at_start_is(before).checked(policy)
    }

    /// The arithmetic: `limit - FIXED_RESERVE - max_concurrent_bootstraps (one backend
    /// socket each) - listeners x pending sockets per listener`.
    fn within(open_files: u64, policy: &Policy, listeners: usize) -> Capacity {
        let pending = usize::try_from(open_files / PENDING_SHARE)
            .unwrap_or(usize::MAX)
            .clamp(MIN_PENDING_SOCKETS, MAX_PENDING_SOCKETS);
        let reserve = FIXED_RESERVE
            .saturating_add(policy.max_concurrent_bootstraps as u64)
            .saturating_add((listeners * pending) as u64);
        let room = usize::try_from(open_files.saturating_sub(reserve)).unwrap_or(usize::MAX);
        Capacity {
            open_files,
            open_files_at_start: open_files,
            reserve,
            pending_per_listener: pending,
            room,
            max_connections: policy.max_connections.unwrap_or(room),
        }
    }

    fn open_files_at_start_is(mut self, before: u64) -> Capacity {
        self.open_files_at_start = before;
        self
    }

    fn checked(self, policy: &Policy) -> Result<Capacity, String> {
        if self.room == 0 && policy.max_connections.is_none() {
            return Err(format!(
                "open files: the limit of {} leaves no room for websockets after the {} \
                 descriptors the node keeps for itself; {FIX}",
                self.open_files, self.reserve
            ));
        }
        Ok(self)
    }

    /// The start-up lines: the capacity at INFO, or a WARN with the fix when it is small or
    /// below the configured `max_connections`.
    pub fn log(&self, configured: Option<usize>) {
        let raised =
            (self.open_files != self.open_files_at_start).then_some(self.open_files_at_start);
        tracing::info!(
            open_files = self.open_files,
            raised_from = raised,
            reserve = self.reserve,
            max_connections = self.max_connections,
            "capacity: {} websockets fit in the open-files limit",
            self.room
        );
        match configured {
            Some(max) if max > self.room => tracing::warn!(
                "max_connections is {max}, but the open-files limit ({}) has room for {} \
                 websockets: past that, clients are refused when descriptors run out and \
                 backend calls fail; {FIX}",
                self.open_files,
                self.room
            ),
            None if self.room < SMALL_CAPACITY => tracing::warn!(
                "the open-files limit ({}) has room for only {} websockets; {FIX}",
                self.open_files,
                self.room
            ),
            _ => {}
        }
    }
}

/// How to give the node more descriptors, said wherever the limit is too small.
const FIX: &str = "raise the hard limit: LimitNOFILE=65536 in the systemd unit \
                   (deploy/high-templar.service), or `ulimit -n 65536` in the shell that \
                   starts high-templar";

/// Sets the soft open-files limit to the hard one (a process may, unprivileged); the limits
/// before and after. Most distributions start processes at 1,024, far below what a websocket
/// server needs, with a hard limit that allows more.
fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    use rlimit::Resource;
    let (before, hard) = rlimit::getrlimit(Resource::NOFILE)?;
    let target = if hard == rlimit::INFINITY {
        std::fs::read_to_string(NR_OPEN)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(DEFAULT_NR_OPEN)
    } else {
        hard
    };
    if target <= before {
        return Ok((before, before));
    }
    if let Err(error) = rlimit::setrlimit(Resource::NOFILE, target, hard) {
        // Some systems cap below the hard limit (macOS: OPEN_MAX); keep what we have.
        tracing::debug!(%error, target, "cannot raise the open-files limit");
        return Ok((before, before));
    }
    Ok((before, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_taken_from_the_limit() {
        let policy = Policy::default();
        let bootstraps = policy.max_concurrent_bootstraps as u64;
        let c = Capacity::within(20_000, &policy, 1);
        assert_eq!(c.pending_per_listener, MAX_PENDING_SOCKETS);
        assert_eq!(c.reserve, FIXED_RESERVE + bootstraps + 1024);
        assert_eq!(c.room as u64, 20_000 - c.reserve);
        assert_eq!(c.max_connections, c.room);
        // Two listeners keep two sets of pending sockets.
        let two = Capacity::within(20_000, &policy, 2);
        assert_eq!(two.room, c.room - 1024);
    }

    #[test]
    fn a_small_limit_keeps_most_of_itself_for_websockets() {
        let c = Capacity::within(1024, &Policy::default(), 1);
        assert_eq!(c.pending_per_listener, 64);
        assert_eq!(c.room, 1024 - 64 - 64 - 64);
        let tiny = Capacity::within(100, &Policy::default(), 1);
        assert_eq!(tiny.pending_per_listener, MIN_PENDING_SOCKETS);
        assert_eq!(tiny.room, 0);
        assert!(tiny.checked(&Policy::default()).is_err());
    }

    #[test]
    fn a_configured_limit_wins() {
        let policy = Policy {
            max_connections: Some(50_000),
            ..Policy::default()
        };
        let c = Capacity::within(1024, &policy, 1);
        assert_eq!(c.max_connections, 50_000);
        assert!(c.checked(&policy).is_ok());
    }
}
