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

#[derive(Debug)]
struct NodeCollector(Arc<Node>);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labelled: &[(&str, &str, &AtomicU64)],
) -> std::fmt::Result {
    let c = ConstCounter::new(0u64);
    let mut metric = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    for (key, value, atomic) in labelled {
        let counter = ConstCounter::new(Stats::get(atomic));
        if key.is_empty() {
            counter.encode(metric.encode_family(&Vec::<(String, String)>::new())?)?;
        } else {
            counter.encode(metric.encode_family(&[(*key, *value)])?)?;
        }
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let shared = &self.0;
        let s = &shared.stats;
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let to_i64_usize = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut e,
            "connections",
            "Open, authorised websocket connections",
            to_i64(Stats::get(&s.open_connections)),
        )?;
        gauge(
            &mut e,
            "rooms",
            "Rooms with at least one subscription",
            to_i64_usize(shared.hub.num_rooms()),
        )?;
        gauge(
            &mut e,
            "subscriptions",
            "Subscriptions on this node",
            to_i64_usize(shared.hub.num_subscriptions()),
        )?;
        gauge(
            &mut e,
            "allowed_room_lists",
            "Distinct allowed-room lists held; connections given the same list share one",
            to_i64_usize(shared.gate.allowed_lists().len()),
        )?;
        gauge(
            &mut e,
            "backend_circuit_closed",
            "1 while the backend circuit breaker lets calls through",
            i64::from(shared.gate.is_closed()),
        )?;
        counter(
            &mut e,
            "triggers_received",
            "Triggers received, by source",
            &[
                ("source", "http", &s.triggers_http),
                ("source", "amqp", &s.triggers_amqp),
                ("source", "redis", &s.triggers_redis),
                ("source", "api", &s.triggers_api),
            ],
        )?;
        for (name, help, source) in [
            (
                "amqp_connected",
                "1 while connected to the AMQP broker (only when configured)",
                &s.amqp,
            ),
            (
                "redis_connected",
                "1 while subscribed on Redis (only when configured)",
                &s.redis,
            ),
        ] {
            if let Some(connected) = source.connected() {
                gauge(&mut e, name, help, i64::from(connected))?;
            }
        }
        counter(
            &mut e,
            "trigger_source_connects",
            "Broker sessions established, by source (more than 1: it reconnected)",
            &[
                ("source", "amqp", &s.amqp.connects),
                ("source", "redis", &s.redis.connects),
            ],
        )?;
        counter(
            &mut e,
            "triggers_invalid",
            "Triggers refused as malformed",
            &[("", "", &s.triggers_invalid)],
        )?;
        counter(
            &mut e,
            "client_messages_received",
            "Text frames received from clients",
            &[("", "", &s.ws_messages_received)],
        )?;
        counter(
            &mut e,
            "messages_sent",
            "Frames written to websockets",
            &[("", "", &s.ws_messages_send)],
        )?;
        counter(
            &mut e,
            "messages_queued",
            "Publish frames queued for websockets",
            &[("", "", &s.ws_messages_send_queued)],
        )?;
        counter(
            &mut e,
            "send_errors",
            "Frames that could not be queued or written",
            &[("", "", &s.ws_messages_send_error)],
        )?;
        counter(
            &mut e,
            "slow_client_disconnects",
            "Clients disconnected for not keeping up",
            &[("", "", &s.slow_client_disconnects)],
        )?;
        counter(
            &mut e,
            "connections_opened",
            "Authorised websockets opened",
            &[("", "", &s.connections_opened)],
        )?;
        counter(
            &mut e,
            "connections_closed",
            "Authorised websockets closed",
            &[("", "", &s.connections_closed)],
        )?;
        let refusals = s
            .refusals()
            .map(|(reason, counter)| ("reason", reason, counter));
        counter(
            &mut e,
            "connections_refused",
            "Sockets refused or closed before becoming open websockets, by reason",
            &refusals,
        )?;
        counter(
            &mut e,
            "limits_hit",
            "Client limits enforced, by limit",
            &[
                ("limit", "rate", &s.rate_limited),
                ("limit", "subscriptions", &s.subscription_limit_hits),
                ("limit", "frame_size", &s.frames_too_big),
                ("limit", "ping_timeout", &s.ping_timeouts),
            ],
        )?;
        counter(
            &mut e,
            "hooks_dropped",
            "Backend hooks not called because the node's bound on them was full, by hook",
            &[
                ("hook", "connect", &s.hooks_dropped_connect),
                ("hook", "ping", &s.hooks_dropped_ping),
                ("hook", "disconnect", &s.hooks_dropped_disconnect),
            ],
        )?;
        counter(
            &mut e,
            "backend_errors",
            "Bootstrap calls that failed (down, 5xx, timeout, breaker)",
            &[("", "", &s.backend_errors)],
        )?;
        let (_, entries, bytes) = shared.sequencer.sizes();
        gauge(
            &mut e,
            "history_entries",
            "Triggers held for recovery",
            to_i64_usize(entries),
        )?;
        gauge(
            &mut e,
            "history_bytes",
            "What the held triggers cost (payloads and index), against history_memory",
            to_i64_usize(bytes),
        )?;
        counter(
            &mut e,
            "recoveries",
            "Resumes with since, by result (recovered, or why not)",
            &[
                ("result", "recovered", &s.recovered),
                ("result", "epoch", &s.not_recovered_epoch),
                ("result", "expired", &s.not_recovered_expired),
                ("result", "future", &s.not_recovered_future),
                ("result", "off", &s.not_recovered_off),
            ],
        )?;
        counter(
            &mut e,
            "replayed",
            "Publish frames sent from the history by recoveries",
            &[("", "", &s.replayed)],
        )?;
        counter(
            &mut e,
            "gap_notices",
            "Gap notices sent to subscriptions with positions that lost publishes",
            &[("", "", &s.gap_notices)],
        )?;
        counter(
            &mut e,
            "gap_drops",
            "Publishes dropped for subscriptions with positions whose connection fell behind",
            &[("", "", &s.gap_drops)],
        )?;
        if let Some(stream) = &shared.stream {
            gauge(
                &mut e,
                "stream_warm",
                "1 once the history is warmed from the shared stream (amqp_stream)",
                i64::from(stream.is_warm()),
            )?;
            gauge(
                &mut e,
                "stream_offset",
                "Last shared-stream offset taken in (-1: none yet)",
                stream.offset().map_or(-1, to_i64),
            )?;
            let lag = ConstGauge::new(stream.lag_ms() as f64 / 1000.0);
            lag.encode(e.encode_descriptor(
                "stream_lag_seconds",
                "How far behind the shared stream's tail the node reads (age of its oldest \
                 unread mark)",
                None,
                lag.metric_type(),
            )?)?;
            counter(
                &mut e,
                "stream_epoch_changes",
                "Times the shared stream was found with another epoch (recreated)",
                &[("", "", &stream.epoch_changes)],
            )?;
            counter(
                &mut e,
                "stream_losses",
                "Times the shared stream no longer held what the node had not read",
                &[("", "", &stream.losses)],
            )?;
        }
        counter(
            &mut e,
            "reauth_unsubscribed",
            "Subscriptions dropped by re-authorisation",
            &[("", "", &s.reauth_unsubscribed)],
        )?;
        Ok(())
    }
}

/// The Prometheus text exposition of the node.
pub(crate) fn render(shared: &Arc<Node>) -> String {
    let mut registry = Registry::with_prefix("high_templar");
    registry.register(
        "backend_request_duration_seconds",
        "Bootstrap call latency",
        shared.stats.backend_latency.clone(),
    );
    registry.register_collector(Box::new(NodeCollector(shared.clone())));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}
