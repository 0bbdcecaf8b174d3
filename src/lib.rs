//! high-templar: a realtime websocket server beside an HTTP-only API, wire-compatible with
//! high-templar 3.1 (see `PROTOCOL.md`).
//!
//! # Layout
//! Where a frame enters and where a trigger goes, in data-flow order:
//! - [`protocol`]: what crosses the wire — client frames, answers, trigger bodies.
//! - [`room`]: rooms in canonical form; the permission and trigger matching rules.
//! - `ws` (private): the websocket wire format, hand-written for the hot path.
//! - `connection` (private): one websocket, one task, one loop — bootstrap, then output and
//!   input in turn, then the closing handshake.
//! - [`outbox`]: a connection's outgoing frames as wire bytes, and the flags that reach its
//!   task; the overflow policy.
//! - `sweeper` (private): every open connection, and one timer for all of them (idle, pings,
//!   re-authorisation, shutdown).
//! - [`hub`]: the single owner of rooms and subscriptions; fans triggers out.
//! - [`sequencer`]: positions — every trigger's place in the node's order, taken, appended
//!   to the [`history`] and fanned out in one step; recovery reads the history back.
//! - `node` (private): the node's shared state, handed to connections, handlers and sources.
//! - `sources` (private): broker trigger sources (RabbitMQ, Redis pub/sub) behind one small
//!   `Engine` trait, with the shared reconnect loop.
//! - [`backend`]: the adapter trait ("who is this, which rooms may they join") and the default
//!   HTTP backend with forwarded headers and hooks; [`hooks`]: the hook calls, bounded
//!   node-wide and waited for on shutdown.
//! - [`stats`]: node-wide counters behind the `status` answer, and where the node stands in a
//!   shared stream; `summary` (private): the periodic one-line summary of them at INFO.
//! - `clock` (private): the node's monotonic clock in milliseconds.
//! - [`config`]: the typed configuration (file, environment, flags); [`config::policy`]: its
//!   limits and security part.
//! - [`demo`]: `--demo`: a built-in backend letting everyone in, and the demo page (served at
//!   `/` by the server).
//! - [`proxy`]: who the client is behind a trusted proxy (per-IP limits, logs);
//!   `admission` (private): origin check and connection limits before the upgrade.
//! - [`server`]: listeners and their accept loop (open-files capacity, request-head deadline,
//!   the bound on sockets not yet upgraded), routes (`/ws/`, `/trigger/`), start and shutdown.
//!
//! The modules form layers, each using only those below it (ARCHITECTURE.md, "Module graph";
//! `scripts/module-graph.py` checks there is no cycle): leaves (`clock`, `ws`, `room`) →
//! `protocol` → `stats` → `outbox` → `hub`, `history`, `sweeper` → `sequencer` → `backend` →
//! `config` → `admission` → `node` → `connection`, `sources`, `metrics` → `server`.
//!
//! `main.rs` only parses the configuration and runs a [`Server`].

#![forbid(unsafe_code)]

mod admission;
pub mod backend;
mod clock;
pub mod config;
mod connection;
pub mod demo;
pub mod history;
pub mod hooks;
pub mod hub;
mod metrics;
mod node;
pub mod outbox;
pub mod protocol;
pub mod proxy;
pub mod room;
pub mod sequencer;
pub mod server;
mod sources;
pub mod stats;
mod summary;
mod sweeper;
mod tls;
mod wire;
mod ws;

pub use backend::{Backend, BackendError, Bootstrap, ConnectRequest, HttpBackend};
pub use config::Config;
pub use server::{Handle, Server, StartError};
