//! Server wiring: listeners, routes, shared state, start and shutdown.
//!
//! `Server::new(config).backend(adapter).start()` is the framework entry point (the original's
//! `create_app(settings, backend_adapter=...)`); the binary is this with the default
//! [`HttpBackend`].
//!
//! A socket's way in: `capacity.rs` sizes the node from the open-files limit at start;
//! `listener.rs` accepts (a place among the listener's pending sockets first, `pending.rs`);
//! `conn.rs` serves the socket's HTTP (TLS, the request-head deadline) until `websocket.rs`
//! upgrades it or `http.rs` answers it.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod capacity;
mod conn;
mod http;
mod listener;
mod pending;
mod websocket;

pub use capacity::{Capacity, FIXED_RESERVE, MAX_PENDING_SOCKETS};
pub(crate) use http::accept_triggers;
use http::{metrics_handler, ready_handler, status_handler, trigger_handler};
use listener::ClosableListener;
use pending::Pending;
pub use pending::EVICT_AFTER;
use websocket::ws_handler;

use crate::admission::Admission;
use crate::backend::{Backend, BackendGate, HttpBackend};
use crate::config::Config;
use crate::demo::{self, DemoBackend};
use crate::hooks::Hooks;
use crate::hub::Hub;
use crate::node::Node;
use crate::protocol::{Trigger, TriggerError};
use crate::sequencer::Sequencer;
use crate::sources;
use crate::sources::amqp::{AmqpEngine, Publisher};
use crate::sources::redis::RedisEngine;
use crate::sources::stream::StreamStatus;
use crate::stats::{Stats, TriggerSource};
use crate::sweeper::{Registry, Timers};

/// How long a trigger source gets to close its broker connection on shutdown.
const SOURCE_STOP_GRACE: Duration = Duration::from_secs(2);

/// Connections the kernel queues before we accept them. tokio's default (128, as std) overflows
/// when a few hundred clients connect at once, e.g. reconnecting after a restart: each
/// overflow costs that client a 1 s SYN retransmit. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("api_url: required for the default HTTP backend (--api-url or HT_API_URL)")]
    NoBackend,
    #[error("cannot set up the backend client: {0}")]
    BackendClient(std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    OpenFiles(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A configured, not yet started server.
pub struct Server {
    config: Config,
    backend: Option<Arc<dyn Backend>>,
}

impl Server {
    pub fn new(config: Config) -> Server {
        Server {
            config,
            backend: None,
        }
    }

    /// Uses `backend` instead of the default HTTP backend (`api_url` is then not needed).
    pub fn backend(mut self, backend: impl Backend) -> Server {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// Raises the process's soft open-files limit to the hard one (a process-wide setting:
    /// every socket is a descriptor, and most systems start processes at 1,024), binds the
    /// listeners and starts serving in the background.
    pub async fn start(self) -> Result<Handle, StartError> {
        let backend: Arc<dyn Backend> = match self.backend {
            Some(backend) => backend,
            None if self.config.demo => Arc::new(DemoBackend),
            None => {
                let settings = self.config.http_backend().ok_or(StartError::NoBackend)?;
                Arc::new(HttpBackend::new(settings).map_err(StartError::BackendClient)?)
            }
        };
        let stats = Arc::new(Stats::new());
        let policy = &self.config.policy;
        let listeners = 1 + usize::from(self.config.internal_listen.is_some());
        let capacity = Capacity::plan(policy, listeners).map_err(StartError::OpenFiles)?;
        capacity.log(policy.max_connections);
        let tls = match &policy.tls {
            Some(files) => Some(crate::tls::acceptor(files).map_err(StartError::Tls)?),
            None => None,
        };
        let amqp_publisher = match &self.config.amqp {
            // With a stream, HTTP triggers must go through the exchange to get a position,
            // whatever a hand-built config says.
            Some(amqp) if amqp.publish_http_triggers || amqp.stream.is_some() => {
                Some(Publisher::new(&amqp.exchange))
            }
            _ => None,
        };
        let stream = self
            .config
            .amqp
            .as_ref()
            .and_then(|amqp| amqp.stream.as_ref())
            .map(|stream| Arc::new(StreamStatus::new(&stream.name)));
        let shared = Arc::new(Node {
            stream,
            hub: Hub::new(),
            sequencer: Sequencer::new(self.config.history),
            gate: BackendGate::new(
                policy.max_concurrent_bootstraps,
                self.config.backend.timeout,
            ),
            admission: Arc::new(Admission::new(
                policy.clone(),
                capacity.max_connections,
                stats.clone(),
            )),
            hooks: Hooks::new(backend.clone(), stats.clone()),
            stats,
            backend,
            shutdown: CancellationToken::new(),
            amqp_publisher,
            registry: Registry::new(Timers {
                idle_timeout: self.config.idle_timeout,
                ping_interval: policy.ws_ping_interval,
                reauth_interval: policy.reauth_interval,
            }),
            next_subscription: AtomicU64::new(0),
            config: self.config,
        });
        let sweeper = shared.clone();
        tokio::spawn(async move {
            let shutdown = sweeper.shutdown.clone();
            sweeper.registry.run(&sweeper.stats, shutdown).await;
        });
        if let Some(every) = shared.config.log_summary_interval {
            let (stats, shutdown) = (shared.stats.clone(), shared.shutdown.clone());
            tokio::spawn(crate::summary::run(stats, every, shutdown));
        }
        let connections = TaskTracker::new();
        let config = &shared.config;

        let public_listener = bind(config.listen).await?;
        let local_addr = public_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let internal_listener = match config.internal_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let internal_addr = internal_listener.as_ref().and_then(|l| l.local_addr().ok());

        let mut public = Router::new()
            .route("/ws/", get(ws_handler))
            .route("/ws", get(ws_handler));
        let trigger_routes = Router::new()
            .route("/trigger/", post(trigger_handler))
            .route("/trigger", post(trigger_handler))
            .layer(DefaultBodyLimit::max(config.max_trigger_body));
        let ops_routes = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready_handler));
        if internal_listener.is_none() {
            public = public.merge(ops_routes.clone());
        }
        if config.demo {
            // The demo's own open trigger path replaces the token-protected one here; the
            // loopback-only rule in `Config::problems` is what makes that safe.
            public = public.merge(demo::routes(config.max_trigger_body));
            if !local_addr.ip().is_loopback() {
                tracing::warn!(
                    %local_addr,
                    "DEMO MODE ON A PUBLIC ADDRESS (--demo-allow-public): anyone who can reach \
                     it can publish to every demo room without a token"
                );
            }
            tracing::info!("demo mode: open http://{local_addr}/ in a browser");
        } else {
            match (&internal_listener, &config.trigger_token) {
                (Some(_), _) => {}
                (None, Some(_)) => public = public.merge(trigger_routes.clone()),
                (None, None) => tracing::warn!(
                    "no trigger_token and no internal_listen: POST /trigger/ is disabled"
                ),
            }
        }
        let state = AppState {
            shared: shared.clone(),
            connections: connections.clone(),
        };
        let mut servers = Vec::new();
        let mut listeners = Vec::new();
        let mut listen = |listener, router, tls| {
            let listener = ClosableListener::new(listener);
            listeners.push(listener.clone());
            let policy = &shared.config.policy;
            let pending = Pending::new(
                capacity.pending_per_listener,
                EVICT_AFTER.min(policy.request_head_timeout),
            );
            let settings = Arc::new(conn::Settings {
                router,
                tls,
                head_timeout: policy.request_head_timeout,
                stats: shared.stats.clone(),
                shutdown: shared.shutdown.clone(),
            });
            servers.push(tokio::spawn(listener::serve(listener, pending, settings)));
        };
        listen(public_listener, public.with_state(state.clone()), tls);
        if let Some(listener) = internal_listener {
            let internal = trigger_routes
                .merge(ops_routes)
                .route("/status", get(status_handler))
                .with_state(state);
            listen(listener, internal, None);
        }
        let sources = start_sources(&shared, local_addr);
        tracing::info!(%local_addr, internal = ?internal_addr, "high-templar listening");
        Ok(Handle {
            local_addr,
            internal_addr,
            capacity,
            shared,
            connections,
            listeners,
            servers,
            sources,
        })
    }
}

/// Spawns the configured broker sources; they stop on `shared.shutdown`.
fn start_sources(shared: &Arc<Node>, local_addr: SocketAddr) -> Vec<JoinHandle<()>> {
    let mut sources = Vec::new();
    if let Some(amqp) = &shared.config.amqp {
        let publisher = shared
            .amqp_publisher
            .clone()
            .unwrap_or_else(|| Publisher::new(&amqp.exchange));
        // Names this node in the broker's connection list.
        let name = format!("high-templar {} on {local_addr}", env!("CARGO_PKG_VERSION"));
        let mut engine = AmqpEngine::new(amqp.clone(), name, publisher);
        if let Some(stream) = &shared.stream {
            engine = engine.with_stream(shared.clone(), stream.clone());
        }
        sources.push(tokio::spawn(sources::run(engine, shared.clone())));
    }
    if let Some(redis) = &shared.config.redis {
        let engine = RedisEngine::new(redis.clone());
        sources.push(tokio::spawn(sources::run(engine, shared.clone())));
    }
    sources
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| StartError::Bind { addr, source })
}

/// A running server.
pub struct Handle {
    /// The bound public address (useful with port 0).
    pub local_addr: SocketAddr,
    /// The bound internal address, when configured.
    pub internal_addr: Option<SocketAddr>,
    /// The open-files limit and what fits in it.
    pub capacity: Capacity,
    shared: Arc<Node>,
    connections: TaskTracker,
    listeners: Vec<ClosableListener>,
    servers: Vec<JoinHandle<()>>,
    sources: Vec<JoinHandle<()>>,
}

impl Handle {
    /// Publishes a trigger from Rust code, as if it came over `/trigger/`. A node reading a
    /// shared stream (`amqp_stream`) refuses it ([`TriggerError::StreamOnly`]): a trigger
    /// taken in here would have no stream position; publish it into the exchange instead.
    pub fn publish(&self, trigger_json: &[u8]) -> Result<usize, TriggerError> {
        if self.shared.stream.is_some() {
            return Err(TriggerError::StreamOnly);
        }
        let config = &self.shared.config;
        let triggers =
            Trigger::parse_batch(trigger_json, &config.policy.room_limits, config.max_batch)?;
        Ok(self.shared.publish(triggers, TriggerSource::Api))
    }

    /// The status object of PROTOCOL.md section 5.
    pub fn status(&self) -> Value {
        self.shared.status()
    }

    /// Stops accepting, closes every websocket with 1001 (going away), and waits up to
    /// `grace` in all for the connections to finish and then for the backend hooks (their
    /// disconnect hooks among them) to be delivered.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        // Listening sockets first, so that nobody connects while the others are told to go.
        for listener in &self.listeners {
            listener.close();
        }
        self.shared.shutdown.cancel();
        self.connections.close();
        if tokio::time::timeout_at(deadline, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.connections.len(),
                "grace period over with connections open"
            );
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.shared.hooks.drain(left).await;
        for server in self.servers {
            server.abort();
        }
        // Sources close their broker connections politely; a broker that does not answer
        // must not hold up the shutdown.
        for mut source in self.sources {
            if tokio::time::timeout(SOURCE_STOP_GRACE, &mut source)
                .await
                .is_err()
            {
                source.abort();
            }
        }
    }
}

/// What every route handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    pub shared: Arc<Node>,
    connections: TaskTracker,
}
