//! Node-wide counters: the status answer (PROTOCOL.md section 5) is read from here.
//!
//! Plain relaxed atomics: every counter is independent, read for reporting only, and bumped on
//! hot paths where a lock would cost more than the count is worth.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::SystemTime;

use crate::protocol::NotRecovered;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::{json, Value};

pub(crate) mod stream;

/// Where a trigger came from; a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerSource {
    Http,
    Amqp,
    Redis,
    /// Published from Rust code through [`crate::Handle::publish`].
    Api,
}

/// The link to one broker (AMQP, Redis): configured or not, and whether it is up now.
#[derive(Debug, Default)]
pub struct SourceStatus {
    state: AtomicU8,
    /// Sessions established since start: more than 1 means the link was lost and came back.
    pub connects: AtomicU64,
}

/// Values of [`SourceStatus::state`].
const SOURCE_OFF: u8 = 0;
const SOURCE_DOWN: u8 = 1;
const SOURCE_UP: u8 = 2;

impl SourceStatus {
    /// Marks the source as configured and not (yet) connected.
    pub fn set_down(&self) {
        self.state.store(SOURCE_DOWN, Ordering::Relaxed);
    }

    /// Marks the source as connected and counts the session.
    pub fn set_up(&self) {
        self.state.store(SOURCE_UP, Ordering::Relaxed);
        Stats::incr(&self.connects);
    }

    /// `None` when the source is not configured, else whether it is connected.
    pub fn connected(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            SOURCE_OFF => None,
            state => Some(state == SOURCE_UP),
        }
    }
}

#[derive(Debug)]
pub struct Stats {
    online_since: SystemTime,
    pub open_connections: AtomicU64,
    /// Authorised websockets opened and closed since start (the summary line's figures).
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub ws_messages_received: AtomicU64,
    pub ws_messages_send: AtomicU64,
    pub ws_messages_send_error: AtomicU64,
    pub ws_messages_send_queued: AtomicU64,
    pub triggers_http: AtomicU64,
    pub triggers_amqp: AtomicU64,
    pub triggers_redis: AtomicU64,
    pub triggers_api: AtomicU64,
    pub triggers_invalid: AtomicU64,
    pub slow_client_disconnects: AtomicU64,
    /// Publishes dropped for subscriptions with positions whose connection fell behind.
    pub gap_drops: AtomicU64,
    /// Gap notices sent (one per subscription per time it fell behind).
    pub gap_notices: AtomicU64,
    /// Resumes with `since` by outcome: replayed, or `recovered:false` by reason.
    pub recovered: AtomicU64,
    pub not_recovered_epoch: AtomicU64,
    pub not_recovered_expired: AtomicU64,
    pub not_recovered_future: AtomicU64,
    pub not_recovered_off: AtomicU64,
    /// Publish frames sent from the history by recoveries.
    pub replayed: AtomicU64,
    pub backend_errors: AtomicU64,
    pub refused_unauthorized: AtomicU64,
    pub refused_backend_unavailable: AtomicU64,
    pub refused_origin: AtomicU64,
    pub refused_node_full: AtomicU64,
    pub refused_ip_full: AtomicU64,
    /// Sockets closed for not sending their request head within `request_head_timeout`.
    pub refused_head_timeout: AtomicU64,
    /// Sockets closed before their request head to make room, the listener being at its bound
    /// of sockets not yet upgraded.
    pub refused_pending_full: AtomicU64,
    /// Connections accepted only to be closed because the process was out of descriptors.
    pub refused_out_of_fds: AtomicU64,
    pub rate_limited: AtomicU64,
    pub subscription_limit_hits: AtomicU64,
    pub frames_too_big: AtomicU64,
    pub ping_timeouts: AtomicU64,
    pub reauth_unsubscribed: AtomicU64,
    /// Backend hooks not called because the node's bound on them was full (`hooks.rs`).
    pub hooks_dropped_connect: AtomicU64,
    pub hooks_dropped_ping: AtomicU64,
    pub hooks_dropped_disconnect: AtomicU64,
    /// Bootstrap call latency, in seconds.
    pub backend_latency: Histogram,
    pub amqp: SourceStatus,
    pub redis: SourceStatus,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            online_since: SystemTime::now(),
            open_connections: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            ws_messages_received: AtomicU64::new(0),
            ws_messages_send: AtomicU64::new(0),
            ws_messages_send_error: AtomicU64::new(0),
            ws_messages_send_queued: AtomicU64::new(0),
            triggers_http: AtomicU64::new(0),
            triggers_amqp: AtomicU64::new(0),
            triggers_redis: AtomicU64::new(0),
            triggers_api: AtomicU64::new(0),
            triggers_invalid: AtomicU64::new(0),
            slow_client_disconnects: AtomicU64::new(0),
            gap_drops: AtomicU64::new(0),
            gap_notices: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            not_recovered_epoch: AtomicU64::new(0),
            not_recovered_expired: AtomicU64::new(0),
            not_recovered_future: AtomicU64::new(0),
            not_recovered_off: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            backend_errors: AtomicU64::new(0),
            refused_unauthorized: AtomicU64::new(0),
            refused_backend_unavailable: AtomicU64::new(0),
            refused_origin: AtomicU64::new(0),
            refused_node_full: AtomicU64::new(0),
            refused_ip_full: AtomicU64::new(0),
            refused_head_timeout: AtomicU64::new(0),
            refused_pending_full: AtomicU64::new(0),
            refused_out_of_fds: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            subscription_limit_hits: AtomicU64::new(0),
            frames_too_big: AtomicU64::new(0),
            ping_timeouts: AtomicU64::new(0),
            reauth_unsubscribed: AtomicU64::new(0),
            hooks_dropped_connect: AtomicU64::new(0),
            hooks_dropped_ping: AtomicU64::new(0),
            hooks_dropped_disconnect: AtomicU64::new(0),
            // 1 ms to ~16 s: a healthy Django answers in 5-50 ms; the top buckets show timeouts.
            backend_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            amqp: SourceStatus::default(),
            redis: SourceStatus::default(),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a resume with `since` by its outcome.
    pub fn count_recovery(&self, outcome: Result<(), NotRecovered>) {
        Self::incr(match outcome {
            Ok(()) => &self.recovered,
            Err(NotRecovered::Epoch) => &self.not_recovered_epoch,
            Err(NotRecovered::Expired) => &self.not_recovered_expired,
            Err(NotRecovered::Future) => &self.not_recovered_future,
            Err(NotRecovered::Off) => &self.not_recovered_off,
        });
    }

    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn trigger_received(&self, source: TriggerSource) {
        Self::incr(match source {
            TriggerSource::Http => &self.triggers_http,
            TriggerSource::Amqp => &self.triggers_amqp,
            TriggerSource::Redis => &self.triggers_redis,
            TriggerSource::Api => &self.triggers_api,
        });
    }

    /// The link status of a broker source; `None` for sources without a broker.
    pub fn source_status(&self, source: TriggerSource) -> Option<&SourceStatus> {
        match source {
            TriggerSource::Amqp => Some(&self.amqp),
            TriggerSource::Redis => Some(&self.redis),
            TriggerSource::Http | TriggerSource::Api => None,
        }
    }

    /// Every refusal counter with its reason, as the status, the metrics and the summary line
    /// name it: a socket that never became an open, authorised websocket.
    pub fn refusals(&self) -> [(&'static str, &AtomicU64); 8] {
        [
            ("unauthorized", &self.refused_unauthorized),
            ("backend_unavailable", &self.refused_backend_unavailable),
            ("origin", &self.refused_origin),
            ("node_full", &self.refused_node_full),
            ("ip_full", &self.refused_ip_full),
            ("head_timeout", &self.refused_head_timeout),
            ("pending_full", &self.refused_pending_full),
            ("out_of_fds", &self.refused_out_of_fds),
        ]
    }

    pub fn triggers_received(&self) -> u64 {
        Self::get(&self.triggers_http)
            + Self::get(&self.triggers_amqp)
            + Self::get(&self.triggers_redis)
            + Self::get(&self.triggers_api)
    }

    /// The status object. The first keys are the original's; `rabbitmq_messages_received`
    /// counts triggers from every source, as the original's only source was RabbitMQ.
    /// `amqp_connected`/`redis_connected` are `null` when that source is not configured.
    pub fn status(&self, num_rooms: usize, num_subscriptions: usize) -> Value {
        let online_since = humantime::format_rfc3339_seconds(self.online_since).to_string();
        let refused: serde_json::Map<String, Value> = self
            .refusals()
            .into_iter()
            .map(|(reason, counter)| (reason.to_string(), Self::get(counter).into()))
            .collect();
        json!({
            "open_connections": Self::get(&self.open_connections),
            "num_rooms": num_rooms,
            "online_since": online_since,
            "rabbitmq_messages_received": self.triggers_received(),
            "ws_messages_received": Self::get(&self.ws_messages_received),
            "ws_messages_send": Self::get(&self.ws_messages_send),
            "ws_messages_send_error": Self::get(&self.ws_messages_send_error),
            "ws_messages_send_queued": Self::get(&self.ws_messages_send_queued),
            "num_subscriptions": num_subscriptions,
            "triggers_received": {
                "http": Self::get(&self.triggers_http),
                "amqp": Self::get(&self.triggers_amqp),
                "redis": Self::get(&self.triggers_redis),
                "api": Self::get(&self.triggers_api),
            },
            "triggers_invalid": Self::get(&self.triggers_invalid),
            "slow_client_disconnects": Self::get(&self.slow_client_disconnects),
            "gap_drops": Self::get(&self.gap_drops),
            "gap_notices": Self::get(&self.gap_notices),
            "recoveries": {
                "recovered": Self::get(&self.recovered),
                "epoch": Self::get(&self.not_recovered_epoch),
                "expired": Self::get(&self.not_recovered_expired),
                "future": Self::get(&self.not_recovered_future),
                "off": Self::get(&self.not_recovered_off),
            },
            "replayed": Self::get(&self.replayed),
            "backend_errors": Self::get(&self.backend_errors),
            "connections_refused": refused,
            "limits_hit": {
                "rate": Self::get(&self.rate_limited),
                "subscriptions": Self::get(&self.subscription_limit_hits),
                "frame_size": Self::get(&self.frames_too_big),
                "ping_timeout": Self::get(&self.ping_timeouts),
            },
            "reauth_unsubscribed": Self::get(&self.reauth_unsubscribed),
            "hooks_dropped": {
                "connect": Self::get(&self.hooks_dropped_connect),
                "ping": Self::get(&self.hooks_dropped_ping),
                "disconnect": Self::get(&self.hooks_dropped_disconnect),
            },
            "amqp_connected": self.amqp.connected(),
            "amqp_connects": Self::get(&self.amqp.connects),
            "redis_connected": self.redis.connected(),
            "redis_connects": Self::get(&self.redis.connects),
        })
    }
}
