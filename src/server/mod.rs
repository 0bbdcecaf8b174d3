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
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

mod capacity;
mod conn;
mod demo;
mod http;
mod intake;
mod listener;
mod pending;
mod websocket;

pub use capacity::{Capacity, FIXED_RESERVE, MAX_PENDING_SOCKETS};
use http::accept_triggers;
use http::{metrics_handler, ready_handler, status_handler, trigger_handler};
use intake::Intake;
use listener::ClosableListener;
use pending::Pending;
pub use pending::EVICT_AFTER;
use websocket::ws_handler;

use crate::backend::{Backend, HttpBackend};
use crate::config::Config;
use crate::demo::DemoBackend;
use crate::node::Node;
use crate::protocol::{Trigger, TriggerError};
#[cfg(feature = "amqp")]
use crate::sources::amqp::{AmqpEngine, Publisher};
#[cfg(feature = "redis")]
use crate::sources::redis::RedisEngine;
use crate::stats::stream::StreamStatus;
use crate::stats::TriggerSource;

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
    #[error("cannot start the trigger intake thread: {0}")]
    Intake(std::io::Error),
    /// A broker is configured that this build has no engine for (`Config::missing_features`).
    #[error("{0}")]
    MissingFeature(String),
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
        let Server { config, backend } = self;
        if let Some(missing) = config.missing_features().into_iter().next() {
            return Err(StartError::MissingFeature(missing));
        }
        let backend = backend_or_default(backend, &config)?;
        let listeners = 1 + usize::from(config.internal_listen.is_some());
        let capacity = Capacity::plan(&config.policy, listeners).map_err(StartError::OpenFiles)?;
        capacity.log(config.policy.max_connections);
        let tls = match &config.policy.tls {
            Some(files) => Some(crate::tls::acceptor(files).map_err(StartError::Tls)?),
            None => None,
        };
        // Triggers are taken in there (see `intake`); it ends with the handle, or here when
        // the start fails.
        let intake = Intake::start().map_err(StartError::Intake)?;
        // Bound before anything is spawned: a node that cannot listen leaves nothing running.
        // The internal listener is driven by the intake thread.
        let (public_listener, local_addr) = bind(config.listen)?;
        let internal_listener = match config.internal_listen {
            Some(addr) => Some(intake.enter(|| bind(addr))?),
            None => None,
        };
        let internal_addr = internal_listener.as_ref().map(|(_, addr)| *addr);
        let shared = new_node(config, backend, &capacity);
        spawn_timers(&shared);

        let config = shared.config();
        if config.demo {
            announce_demo(local_addr);
        }

        let (public, internal) = routes(config, internal_listener.is_some());
        let connections = TaskTracker::new();
        #[cfg(feature = "amqp")]
        let amqp_publisher = http_trigger_publisher(config);
        let state = AppState {
            shared: shared.clone(),
            connections: connections.clone(),
            #[cfg(feature = "amqp")]
            amqp_publisher: amqp_publisher.clone(),
        };
        let public = public.with_state(state.clone());
        let mut serving = vec![serve(
            &shared,
            &capacity,
            public_listener,
            public,
            tls,
            None,
        )];
        if let (Some((listener, _)), Some(internal)) = (internal_listener, internal) {
            serving.push(serve(
                &shared,
                &capacity,
                listener,
                internal.with_state(state),
                None,
                Some(&intake),
            ));
        }
        let (listeners, servers) = serving.into_iter().unzip();
        let sources = start_sources(
            &shared,
            local_addr,
            #[cfg(feature = "amqp")]
            amqp_publisher,
            &intake,
        );
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
            intake,
        })
    }
}

/// The backend given to [`Server::backend`]; else the demo's with `demo`, else the default
/// HTTP backend, which needs `api_url`.
fn backend_or_default(
    backend: Option<Arc<dyn Backend>>,
    config: &Config,
) -> Result<Arc<dyn Backend>, StartError> {
    Ok(match backend {
        Some(backend) => backend,
        None if config.demo => Arc::new(DemoBackend),
        None => {
            let settings = config.http_backend().ok_or(StartError::NoBackend)?;
            Arc::new(HttpBackend::new(settings).map_err(StartError::BackendClient)?)
        }
    })
}

/// The AMQP publisher `POST /trigger/` publishes through, when triggers go through the exchange.
#[cfg(feature = "amqp")]
fn http_trigger_publisher(config: &Config) -> Option<Publisher> {
    match &config.amqp {
        // With a stream, HTTP triggers must go through the exchange to get a position,
        // whatever a hand-built config says.
        Some(amqp) if amqp.publish_http_triggers || amqp.stream.is_some() => {
            Some(Publisher::new(&amqp.exchange))
        }
        _ => None,
    }
}

/// The node's shared state, sized by `capacity`.
fn new_node(config: Config, backend: Arc<dyn Backend>, capacity: &Capacity) -> Arc<Node> {
    let stream = config
        .amqp
        .as_ref()
        .and_then(|amqp| amqp.stream.as_ref())
        .map(|stream| {
            Arc::new(StreamStatus::new(
                &stream.name,
                crate::sources::stream::new_id("n"),
            ))
        });
    Arc::new(Node::new(config, backend, stream, capacity.max_connections))
}

/// The node-wide timers: the sweeper over every connection, and the periodic summary line.
/// Both stop on `shared.shutdown`.
fn spawn_timers(shared: &Arc<Node>) {
    let sweeper = shared.clone();
    tokio::spawn(async move {
        let shutdown = sweeper.shutdown().clone();
        sweeper.registry().run(sweeper.stats(), shutdown).await;
    });
    if let Some(every) = shared.config().log_summary_interval {
        let (stats, shutdown) = (shared.stats().clone(), shared.shutdown().clone());
        tokio::spawn(crate::summary::run(stats, every, shutdown));
    }
}

/// The public listener's routes, and the internal listener's when there is one. `/ws/` is
/// public; `POST /trigger/` and the ops endpoints move to the internal listener when it is
/// configured; without it `/trigger/` is public only with a token (or the demo's own, open).
fn routes(config: &Config, internal: bool) -> (Router<AppState>, Option<Router<AppState>>) {
    let mut public = Router::new()
        .route("/ws/", get(ws_handler))
        .route("/ws", get(ws_handler));
    let triggers = Router::new()
        .route("/trigger/", post(trigger_handler))
        .route("/trigger", post(trigger_handler))
        .layer(DefaultBodyLimit::max(config.max_trigger_body));
    let ops = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler));
    if config.demo {
        // The demo's own open trigger path replaces the token-protected one here; the
        // loopback-only rule in `Config::problems` is what makes that safe.
        public = public.merge(demo::routes(config.max_trigger_body));
    } else if !internal {
        match &config.trigger_token {
            Some(_) => public = public.merge(triggers.clone()),
            None => tracing::warn!(
                "no trigger_token and no internal_listen: POST /trigger/ is disabled"
            ),
        }
    }
    if internal {
        let internal = triggers.merge(ops).route("/status", get(status_handler));
        (public, Some(internal))
    } else {
        (public.merge(ops), None)
    }
}

/// Says where the demo page is, and warns loudly when anyone may publish to it.
fn announce_demo(local_addr: SocketAddr) {
    if !local_addr.ip().is_loopback() {
        tracing::warn!(
            %local_addr,
            "DEMO MODE ON A PUBLIC ADDRESS (--demo-allow-public): anyone who can reach \
             it can publish to every demo room without a token"
        );
    }
    tracing::info!("demo mode: open http://{local_addr}/ in a browser");
}

/// Serves `router` on `listener` in the background (on the workers, or on `intake`, where the
/// listener must be registered): the accept loop, with its bound on the sockets not yet
/// upgraded; the listener is returned to be closed on shutdown.
fn serve(
    shared: &Node,
    capacity: &Capacity,
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    intake: Option<&Intake>,
) -> (ClosableListener, JoinHandle<()>) {
    let listener = ClosableListener::new(listener);
    let policy = &shared.config().policy;
    let pending = Pending::new(
        capacity.pending_per_listener,
        EVICT_AFTER.min(policy.request_head_timeout),
    );
    let settings = Arc::new(conn::Settings {
        router,
        tls,
        head_timeout: policy.request_head_timeout,
        stats: shared.stats().clone(),
        shutdown: shared.shutdown().clone(),
    });
    let serve = listener::serve(listener.clone(), pending, settings);
    let server = match intake {
        Some(intake) => intake.spawn(serve),
        None => tokio::spawn(serve),
    };
    (listener, server)
}

/// Spawns the configured broker sources on the intake thread; they stop on `shared.shutdown`.
/// The AMQP source feeds `amqp_publisher` (the one `POST /trigger/` publishes through) when
/// there is one.
#[cfg_attr(
    not(all(feature = "amqp", feature = "redis")),
    allow(
        unused_mut,
        unused_variables,
        reason = "an engine left out of the build starts nothing"
    )
)]
fn start_sources(
    shared: &Arc<Node>,
    local_addr: SocketAddr,
    #[cfg(feature = "amqp")] amqp_publisher: Option<Publisher>,
    intake: &Intake,
) -> Vec<JoinHandle<()>> {
    let mut sources = Vec::new();
    #[cfg(feature = "amqp")]
    if let Some(amqp) = &shared.config().amqp {
        let publisher = amqp_publisher.unwrap_or_else(|| Publisher::new(&amqp.exchange));
        // Names this node in the broker's connection list.
        let name = format!("high-templar {} on {local_addr}", env!("CARGO_PKG_VERSION"));
        let mut engine = AmqpEngine::new(amqp.clone(), name, publisher);
        if let Some(stream) = shared.stream() {
            engine = engine.with_stream(shared.clone(), stream.clone());
        }
        sources.push(intake.spawn(crate::sources::run(engine, shared.clone())));
    }
    #[cfg(feature = "redis")]
    if let Some(redis) = &shared.config().redis {
        let engine = RedisEngine::new(redis.clone());
        sources.push(intake.spawn(crate::sources::run(engine, shared.clone())));
    }
    sources
}

/// A listening socket on `addr`, and the address it got (its port, when `addr` asks for 0).
fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let bound = listener.local_addr()?;
        Ok((listener, bound))
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
    /// Ends (with its tasks) when the handle goes, after a shutdown's waits.
    intake: Intake,
}

impl Handle {
    /// Publishes a trigger from Rust code, as if it came over `/trigger/`. A node reading a
    /// shared stream (`amqp_stream`) refuses it ([`TriggerError::StreamOnly`]): a trigger
    /// taken in here would have no stream position; publish it into the exchange instead.
    pub fn publish(&self, trigger_json: &[u8]) -> Result<usize, TriggerError> {
        if self.shared.stream().is_some() {
            return Err(TriggerError::StreamOnly);
        }
        let config = self.shared.config();
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
        self.shared.shutdown().cancel();
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
        self.shared.hooks().drain(left).await;
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
        // Last: the internal listener's connections and the sources ran there.
        drop(self.intake);
    }
}

/// What every route handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    pub shared: Arc<Node>,
    connections: TaskTracker,
    /// Set when `POST /trigger/` publishes into the AMQP exchange instead of delivering here.
    #[cfg(feature = "amqp")]
    amqp_publisher: Option<Publisher>,
}
