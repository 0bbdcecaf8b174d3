//! The periodic one-line summary at INFO, so that an operator can keep INFO on: connections
//! come and go at DEBUG (a reconnect storm of 10,000 clients would be 20,000 lines), and this
//! line says what they added up to since the last one. Nothing happened, nothing is written.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// The counters the line reports, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    opened: u64,
    closed: u64,
    /// In the order of [`Stats::refusals`].
    refused: [u64; 8],
    triggers_in: u64,
    messages_out: u64,
}

impl Counts {
    fn read(stats: &Stats) -> Counts {
        Counts {
            opened: Stats::get(&stats.connections_opened),
            closed: Stats::get(&stats.connections_closed),
            refused: stats.refusals().map(|(_, counter)| Stats::get(counter)),
            triggers_in: stats.triggers_received(),
            messages_out: Stats::get(&stats.ws_messages_send),
        }
    }

    fn since(&self, earlier: &Counts) -> Counts {
        let mut refused = [0; 8];
        for (i, count) in refused.iter_mut().enumerate() {
            *count = self.refused[i].saturating_sub(earlier.refused[i]);
        }
        Counts {
            opened: self.opened.saturating_sub(earlier.opened),
            closed: self.closed.saturating_sub(earlier.closed),
            refused,
            triggers_in: self.triggers_in.saturating_sub(earlier.triggers_in),
            messages_out: self.messages_out.saturating_sub(earlier.messages_out),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Counts::default()
    }
}

/// The refusals by reason, only those that happened: `ip_full=3 origin=1`, or `0`.
struct Refused<'a>(&'a [(&'static str, u64)]);

impl fmt::Display for Refused<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (reason, count) in self.0.iter().filter(|(_, count)| *count > 0) {
            if any {
                f.write_str(" ")?;
            }
            write!(f, "{reason}={count}")?;
            any = true;
        }
        if !any {
            f.write_str("0")?;
        }
        Ok(())
    }
}

/// Writes the line every `every` until `shutdown`.
pub(crate) async fn run(stats: Arc<Stats>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Counts::read(&stats);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = Counts::read(&stats);
        let delta = now.since(&last);
        last = now;
        if delta.is_empty() {
            continue;
        }
        let reasons = stats.refusals().map(|(reason, _)| reason);
        let refused: Vec<(&'static str, u64)> = reasons.into_iter().zip(delta.refused).collect();
        tracing::info!(
            open = Stats::get(&stats.open_connections),
            opened = delta.opened,
            closed = delta.closed,
            refused = %Refused(&refused),
            triggers_in = delta.triggers_in,
            messages_out = delta.messages_out,
            "summary of the last {}",
            humantime::format_duration(every)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_changed_is_reported() {
        let stats = Stats::new();
        let before = Counts::read(&stats);
        assert!(Counts::read(&stats).since(&before).is_empty());
        Stats::incr(&stats.connections_opened);
        Stats::add(&stats.refused_ip_full, 3);
        Stats::incr(&stats.refused_head_timeout);
        let delta = Counts::read(&stats).since(&before);
        assert_eq!(delta.opened, 1);
        let reasons = stats.refusals().map(|(reason, _)| reason);
        let refused: Vec<_> = reasons.into_iter().zip(delta.refused).collect();
        assert_eq!(Refused(&refused).to_string(), "ip_full=3 head_timeout=1");
        assert_eq!(Refused(&[("origin", 0)]).to_string(), "0");
    }
}
