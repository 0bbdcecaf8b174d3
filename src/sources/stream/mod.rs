//! The shared stream (`amqp_stream`): one durable RabbitMQ stream that every node reads, so a
//! trigger has the same position on every node and a client resumes on any of them
//! (PROTOCOL.md section 7, docs/scale-out.md).
//!
//! # One session (one broker connection)
//! 1. Declare the stream (durable, `x-queue-type: stream`, retention by age and size) and bind
//!    it to the exchange with routing key `*`: it receives exactly what 3.1's backends publish.
//! 2. Find the stream's epoch in the stream itself ([`epoch`]).
//! 3. Start reading: right after the last offset taken in, if the node already holds this
//!    epoch (a reconnect: nothing between is skipped); otherwise from "now − history ttl" (a
//!    start, or a stream recreated meanwhile), **warming** the history without delivering
//!    anything live, up to a probe published at the start of the session: that was the tail.
//!    Then the history is swapped in under the sequencer's lock ([`Sequencer::adopt`]) and
//!    the node is ready (`/readyz`).
//! 4. Follow the tail: each trigger goes in at its position ([`Sequencer::publish_at`]).
//!    Every [`MARK_INTERVAL`] the node publishes a mark (keeping the epoch alive in the
//!    stream) and measures, by reading it back, how far behind the tail it reads.
//!
//! # Positions
//! A trigger's position is its stream offset **plus one**, so that 0 keeps meaning "before
//! anything" (an offset-0 trigger would otherwise be indistinguishable from "nothing taken
//! in"). Markers and bad messages take offsets too: positions increase, with holes.
//!
//! # One trigger per message
//! A message body that is a list of several triggers is refused (counted and logged like any
//! bad message): its triggers would share one offset, and the protocol's positions are
//! integers that strictly increase per subscription. 3.1's backends, our Python publisher and
//! our own `/trigger/` publish-through all send one trigger per message.
//!
//! # Losses
//! A node that comes back after the stream dropped what it had not read yet (it was away
//! longer than the retention) declares those positions lost ([`Sequencer::lose_through`]):
//! resumes from before them get `recovered:false`, live subscriptions with positions a gap
//! notice. A node that finds another epoch (the stream was deleted and recreated) warms again
//! and closes its subscriptions with positions ([`crate::sequencer::EPOCH_CHANGED`]): they
//! resume, and are told to refetch.
//!
//! The session needs the `amqp` feature; the node's place in the stream
//! ([`crate::stats::stream::StreamStatus`]) and the retention constants are in every build
//! (status, `/metrics` and the config checks read them).
#![cfg_attr(
    not(feature = "amqp"),
    allow(dead_code, reason = "without `amqp` no session sets the status")
)]

#[cfg(feature = "amqp")]
mod epoch;
#[cfg(feature = "amqp")]
mod marker;
#[cfg(feature = "amqp")]
mod session;

use std::time::Duration;

#[cfg(feature = "amqp")]
pub(crate) use self::session::Session;

/// How often a node publishes a mark: the epoch stays in the stream while any node runs
/// (retention needs `amqp_stream_max_age` without one to drop them all), finding the epoch
/// reads at most this long of triggers, and the lag is measured this often. Three nodes add
/// 0.6 messages/s of ~200 bytes to the stream.
pub const MARK_INTERVAL: Duration = Duration::from_secs(5);
/// How much further back than "now − history ttl" a warm-up starts reading: the start is a
/// timestamp on the broker's clock, computed on the node's, and the warm-up must not start
/// after its own probe; so node and broker clocks may differ by this much. 30 s of extra
/// reading is cheap, and what it reads is older than the ttl (let go of at once).
const WARM_START_MARGIN: Duration = Duration::from_secs(30);
/// Marks published but not read back that the lag measurement remembers (12 minutes of
/// them): beyond that the node is so far behind that the oldest one says enough.
const MAX_UNREAD_MARKS: usize = 144;

/// A random id: `s…` an epoch, `p…` a probe, `n…` a node.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}
