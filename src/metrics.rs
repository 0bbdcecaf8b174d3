//! Prometheus exposition (`GET /metrics`) of the node's counters.
//!
//! The counters live in [`Stats`] (one source of truth, also behind the `status` answer); each
//! scrape reads them through a collector. Labels are bounded sets (trigger source, refusal
//! reason, limit), never a room or a user.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::node::Node;
use crate::stats::Stats;

/// Every family of the exposition, in its order: its name (after `high_templar_`), its help
/// text, and how a scrape reads it — `None` leaves the family out (a broker source or the
/// shared stream that is not configured).
const FAMILIES: &[(&str, &str, Read)] = &[
    (
        "connections",
        "Open, authorised websocket connections",
        |n| gauge(Stats::get(&n.stats().open_connections)),
    ),
    ("rooms", "Rooms with at least one subscription", |n| {
        gauge(n.hub().num_rooms())
    }),
    ("subscriptions", "Subscriptions on this node", |n| {
        gauge(n.hub().num_subscriptions())
    }),
    (
        "allowed_room_lists",
        "Distinct allowed-room lists held; connections given the same list share one",
        |n| gauge(n.gate().allowed_lists().len()),
    ),
    (
        "backend_circuit_closed",
        "1 while the backend circuit breaker lets calls through",
        |n| gauge(n.gate().is_closed()),
    ),
    ("triggers_received", "Triggers received, by source", |n| {
        let s = n.stats();
        counter_by(
            "source",
            [
                ("http", &s.triggers_http),
                ("amqp", &s.triggers_amqp),
                ("redis", &s.triggers_redis),
                ("api", &s.triggers_api),
            ],
        )
    }),
    (
        "amqp_connected",
        "1 while connected to the AMQP broker (only when configured)",
        |n| n.stats().amqp.connected().and_then(gauge),
    ),
    (
        "redis_connected",
        "1 while subscribed on Redis (only when configured)",
        |n| n.stats().redis.connected().and_then(gauge),
    ),
    (
        "trigger_source_connects",
        "Broker sessions established, by source (more than 1: it reconnected)",
        |n| {
            let s = n.stats();
            counter_by(
                "source",
                [("amqp", &s.amqp.connects), ("redis", &s.redis.connects)],
            )
        },
    ),
    ("triggers_invalid", "Triggers refused as malformed", |n| {
        counter(&n.stats().triggers_invalid)
    }),
    (
        "client_messages_received",
        "Text frames received from clients",
        |n| counter(&n.stats().ws_messages_received),
    ),
    ("messages_sent", "Frames written to websockets", |n| {
        counter(&n.stats().ws_messages_send)
    }),
    (
        "messages_queued",
        "Publish frames queued for websockets",
        |n| counter(&n.stats().ws_messages_send_queued),
    ),
    (
        "send_errors",
        "Frames that could not be queued or written",
        |n| counter(&n.stats().ws_messages_send_error),
    ),
    (
        "slow_client_disconnects",
        "Clients disconnected for not keeping up",
        |n| counter(&n.stats().slow_client_disconnects),
    ),
    ("connections_opened", "Authorised websockets opened", |n| {
        counter(&n.stats().connections_opened)
    }),
    ("connections_closed", "Authorised websockets closed", |n| {
        counter(&n.stats().connections_closed)
    }),
    (
        "connections_refused",
        "Sockets refused or closed before becoming open websockets, by reason",
        |n| counter_by("reason", n.stats().refusals()),
    ),
    ("limits_hit", "Client limits enforced, by limit", |n| {
        let s = n.stats();
        counter_by(
            "limit",
            [
                ("rate", &s.rate_limited),
                ("subscriptions", &s.subscription_limit_hits),
                ("frame_size", &s.frames_too_big),
                ("ping_timeout", &s.ping_timeouts),
            ],
        )
    }),
    (
        "hooks_dropped",
        "Backend hooks not called because the node's bound on them was full, by hook",
        |n| {
            let s = n.stats();
            counter_by(
                "hook",
                [
                    ("connect", &s.hooks_dropped_connect),
                    ("ping", &s.hooks_dropped_ping),
                    ("disconnect", &s.hooks_dropped_disconnect),
                ],
            )
        },
    ),
    (
        "backend_errors",
        "Bootstrap calls that failed (down, 5xx, timeout, breaker)",
        |n| counter(&n.stats().backend_errors),
    ),
    ("history_entries", "Triggers held for recovery", |n| {
        gauge(n.sequencer().sizes().1)
    }),
    (
        "history_bytes",
        "What the held triggers cost (payloads and index), against history_memory",
        |n| gauge(n.sequencer().sizes().2),
    ),
    (
        "recoveries",
        "Resumes with since, by result (recovered, or why not)",
        |n| {
            let s = n.stats();
            counter_by(
                "result",
                [
                    ("recovered", &s.recovered),
                    ("epoch", &s.not_recovered_epoch),
                    ("expired", &s.not_recovered_expired),
                    ("future", &s.not_recovered_future),
                    ("off", &s.not_recovered_off),
                ],
            )
        },
    ),
    (
        "replayed",
        "Publish frames sent from the history by recoveries",
        |n| counter(&n.stats().replayed),
    ),
    (
        "gap_notices",
        "Gap notices sent to subscriptions with positions that lost publishes",
        |n| counter(&n.stats().gap_notices),
    ),
    (
        "gap_drops",
        "Publishes dropped for subscriptions with positions whose connection fell behind",
        |n| counter(&n.stats().gap_drops),
    ),
    (
        "stream_warm",
        "1 once the history is warmed from the shared stream (amqp_stream)",
        |n| gauge(n.stream()?.is_warm()),
    ),
    (
        "stream_offset",
        "Last shared-stream offset taken in (-1: none yet)",
        |n| match n.stream()?.offset() {
            Some(offset) => gauge(offset),
            None => gauge(-1),
        },
    ),
    (
        "stream_lag_seconds",
        "How far behind the shared stream's tail the node reads (age of its oldest unread mark)",
        |n| Some(Reading::Seconds(n.stream()?.lag_ms() as f64 / 1000.0)),
    ),
    (
        "stream_epoch_changes",
        "Times the shared stream was found with another epoch (recreated)",
        |n| counter(&n.stream()?.epoch_changes),
    ),
    (
        "stream_losses",
        "Times the shared stream no longer held what the node had not read",
        |n| counter(&n.stream()?.losses),
    ),
    (
        "reauth_unsubscribed",
        "Subscriptions dropped by re-authorisation",
        |n| counter(&n.stats().reauth_unsubscribed),
    ),
];

/// How a scrape reads one family from the node; `None`: not shown on this node.
type Read = fn(&Node) -> Option<Reading>;

/// A family's value(s) at one scrape.
enum Reading {
    Gauge(i64),
    /// A gauge in seconds, with its fraction.
    Seconds(f64),
    /// One counter, without labels.
    Counter(u64),
    /// One counter per value of the label `key` (a fixed set).
    CounterBy(&'static str, Vec<(&'static str, u64)>),
}

/// A count or a flag as a gauge; a count past `i64::MAX` (never, in practice) stays there.
fn gauge(value: impl TryInto<i64>) -> Option<Reading> {
    Some(Reading::Gauge(value.try_into().unwrap_or(i64::MAX)))
}

fn counter(value: &AtomicU64) -> Option<Reading> {
    Some(Reading::Counter(Stats::get(value)))
}

fn counter_by<const N: usize>(
    key: &'static str,
    values: [(&'static str, &AtomicU64); N],
) -> Option<Reading> {
    let values = values
        .into_iter()
        .map(|(label, value)| (label, Stats::get(value)))
        .collect();
    Some(Reading::CounterBy(key, values))
}

#[derive(Debug)]
struct NodeCollector(Arc<Node>);

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, read) in FAMILIES {
            if let Some(reading) = read(&self.0) {
                reading.encode(name, help, &mut encoder)?;
            }
        }
        Ok(())
    }
}

impl Reading {
    fn encode(&self, name: &str, help: &str, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        match self {
            Reading::Gauge(value) => {
                let gauge = ConstGauge::new(*value);
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
            }
            Reading::Seconds(value) => {
                let gauge = ConstGauge::new(*value);
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
            }
            Reading::Counter(value) => {
                let counter = ConstCounter::new(*value);
                let mut family =
                    encoder.encode_descriptor(name, help, None, counter.metric_type())?;
                counter.encode(family.encode_family(&Vec::<(String, String)>::new())?)
            }
            Reading::CounterBy(key, values) => {
                let kind = ConstCounter::new(0u64).metric_type();
                let mut family = encoder.encode_descriptor(name, help, None, kind)?;
                for (label, value) in values {
                    let counter = ConstCounter::new(*value);
                    counter.encode(family.encode_family(&[(*key, *label)])?)?;
                }
                Ok(())
            }
        }
    }
}

/// The Prometheus text exposition of the node.
pub(crate) fn render(shared: &Arc<Node>) -> String {
    let mut registry = Registry::with_prefix("high_templar");
    registry.register(
        "backend_request_duration_seconds",
        "Bootstrap call latency",
        shared.stats().backend_latency.clone(),
    );
    registry.register_collector(Box::new(NodeCollector(shared.clone())));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}
