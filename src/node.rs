//! The node's shared state: what every connection, handler and trigger source of one running
//! server reads and changes. `server/` builds it and hands an `Arc<Node>` to the rest; nothing
//! here knows about listeners or routes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::backend::{Backend, BackendError, BackendGate, ConnectRequest};
use crate::config::Config;
use crate::hooks::Hooks;
use crate::hub::{Hub, SubscriptionId};
use crate::protocol::Trigger;
use crate::room::AllowedRooms;
use crate::sequencer::Sequencer;
use crate::stats::stream::StreamStatus;
use crate::stats::{Stats, TriggerSource};
use crate::sweeper::{Registry, Timers};

/// State shared by every connection and handler of a node.
pub(crate) struct Node {
    config: Config,
    hub: Hub,
    /// Positions, history and the order of fan-outs.
    sequencer: Sequencer,
    stats: Arc<Stats>,
    backend: Arc<dyn Backend>,
    /// Concurrency limit and circuit breaker in front of the backend.
    gate: BackendGate,
    /// The backend hooks in flight: bounded, and waited for on shutdown.
    hooks: Hooks,
    /// Origin check and connection counts.
    admission: Arc<Admission>,
    /// Cancelled on shutdown: every connection closes with 1001, every trigger source stops.
    shutdown: CancellationToken,
    /// With `amqp_stream`: where the node stands in the shared stream.
    stream: Option<Arc<StreamStatus>>,
    /// Every open connection, with the node-wide timer that keeps their deadlines.
    registry: Registry,
    next_subscription: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Node")
    }
}

impl Node {
    /// A node for `config`, asking `backend`; `stream` is its place in the shared stream (with
    /// `amqp_stream`), `max_connections` the admission's bound.
    pub fn new(
        config: Config,
        backend: Arc<dyn Backend>,
        stream: Option<Arc<StreamStatus>>,
        max_connections: usize,
    ) -> Self {
        let stats = Arc::new(Stats::new());
        let policy = &config.policy;
        Node {
            stream,
            hub: Hub::new(),
            sequencer: Sequencer::new(config.history),
            gate: BackendGate::new(policy.max_concurrent_bootstraps, config.backend.timeout),
            admission: Arc::new(Admission::new(
                policy.clone(),
                max_connections,
                stats.clone(),
            )),
            hooks: Hooks::new(backend.clone(), stats.clone()),
            stats,
            backend,
            shutdown: CancellationToken::new(),
            registry: Registry::new(Timers {
                idle_timeout: config.idle_timeout,
                ping_interval: policy.ws_ping_interval,
                reauth_interval: policy.reauth_interval,
            }),
            next_subscription: AtomicU64::new(0),
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Positions, history and the order of fan-outs.
    pub fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Concurrency limit and circuit breaker in front of the backend.
    pub fn gate(&self) -> &BackendGate {
        &self.gate
    }

    /// The backend hooks in flight: bounded, and waited for on shutdown.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Origin check and connection counts.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Cancelled on shutdown: every connection closes with 1001, every trigger source stops.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// With `amqp_stream`: where the node stands in the shared stream.
    pub fn stream(&self) -> Option<&Arc<StreamStatus>> {
        self.stream.as_ref()
    }

    /// Every open connection, with the node-wide timer that keeps their deadlines.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn next_subscription_id(&self) -> SubscriptionId {
        self.next_subscription.fetch_add(1, Ordering::Relaxed)
    }

    /// The status object (PROTOCOL.md section 5, and ours beside it).
    pub fn status(&self) -> Value {
        let mut status = self
            .stats
            .status(self.hub.num_rooms(), self.hub.num_subscriptions());
        let (top, entries, bytes) = self.sequencer.sizes();
        status["history"] = serde_json::json!({
            "epoch": &*self.sequencer.epoch(),
            "offset": top,
            "entries": entries,
            "bytes": bytes,
        });
        if let Some(stream) = &self.stream {
            let connected = self.stats.amqp.connected() == Some(true);
            status["stream"] = stream.status(connected);
        }
        status
    }

    /// Asks the backend who `request` is (through the gate: bounded, circuit-broken) and which
    /// rooms it may join (the node's shared list for that answer); `None` is a refusal.
    pub async fn bootstrap(
        &self,
        request: &ConnectRequest,
    ) -> Result<Option<AllowedRooms>, BackendError> {
        self.gate
            .bootstrap(&*self.backend, request, &self.stats)
            .await
    }

    /// Takes in a batch of triggers from `source`; returns the subscriptions reached.
    /// A node reading a shared stream takes triggers from it only: one taken in here would
    /// have no stream position, so it is refused (counted as invalid) — the configuration
    /// forbids the sources that would do it, this guards hand-built ones.
    /// The whole batch in one step: for callers that cannot wait ([`crate::Handle::publish`]).
    pub(crate) fn publish(&self, triggers: Vec<Trigger>, source: TriggerSource) -> usize {
        if !self.take_in(triggers.len(), source) {
            return 0;
        }
        let queued = self.sequencer.publish(triggers, &self.hub);
        Stats::add(&self.stats.ws_messages_send_queued, queued as u64);
        queued
    }

    /// As [`Node::publish`], yielding to the runtime between steps of a large batch.
    pub(crate) async fn publish_batch(
        &self,
        triggers: Vec<Trigger>,
        source: TriggerSource,
    ) -> usize {
        if !self.take_in(triggers.len(), source) {
            return 0;
        }
        let queued = self.sequencer.publish_yielding(triggers, &self.hub).await;
        Stats::add(&self.stats.ws_messages_send_queued, queued as u64);
        queued
    }

    /// Counts `count` triggers from `source`; `false` when they are refused.
    fn take_in(&self, count: usize, source: TriggerSource) -> bool {
        if self.stream.is_some() {
            Stats::add(&self.stats.triggers_invalid, count as u64);
            tracing::warn!(?source, "a trigger outside the shared stream refused");
            return false;
        }
        for _ in 0..count {
            self.stats.trigger_received(source);
        }
        true
    }

    /// Takes in a trigger from the shared stream at `position` (the same on every node).
    #[cfg(feature = "amqp")]
    pub(crate) fn publish_at(&self, trigger: Trigger, position: u64) {
        self.stats.trigger_received(TriggerSource::Amqp);
        if let Some(queued) = self.sequencer.publish_at(trigger, position, &self.hub) {
            Stats::add(&self.stats.ws_messages_send_queued, queued as u64);
        }
    }
}
