//! Backends: who a connecting client is and which rooms it may join.
//!
//! [`Backend`] is the adapter trait (high-templar 3.1's `backend_adapter`): the server asks it
//! once per connection, and tells it about connects, pings and disconnects. [`HttpBackend`] is
//! the default, calling `{api_url}bootstrap/` the way the original did.

mod gate;
mod headers;
mod http;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::value::RawValue;
use serde_json::Value;

pub(crate) use gate::BackendGate;
pub(crate) use headers::HeaderRuleToml;
pub use headers::{HeaderRule, HeaderRuleError, HeaderSource};
pub use http::{ApiUrl, HttpBackend, HttpBackendConfig};

/// The websocket request a connection was opened with, as the backend adapter sees it.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// This connection's id: in logs, and in the two errors that carry it.
    pub id: Arc<str>,
    pub headers: HeaderMap,
    /// The raw query string, without the `?`.
    pub query: Option<String>,
    /// The TCP peer: the client, or the proxy in front of it.
    pub peer: SocketAddr,
    /// The client's address: the peer, or behind a trusted proxy the address it forwarded
    /// (see [`crate::proxy`]). What per-IP limits count and logs show.
    pub client_ip: IpAddr,
}

impl ConnectRequest {
    /// A request header as text; absent when missing, empty or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    }

    /// The value of a cookie from the `Cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| c.value().to_string())
            .filter(|v| !v.is_empty())
    }
}

/// The backend's answer to a bootstrap.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// The user may connect; `allowed_rooms` as the backend listed them (JSON objects).
    Authorized { allowed_rooms: Vec<Value> },
    /// The same with the list as the backend's JSON text, not parsed: a node parses each
    /// distinct text once and shares it between the connections given it (`HttpBackend`
    /// answers this). A text that is not a list of objects is a refusal.
    AuthorizedJson { allowed_rooms: Box<RawValue> },
    /// Not logged in, or a malformed answer: `{"is_authorized": false}`, close 1000.
    Refused,
}

/// Lists given as text are equal when their texts are.
impl PartialEq for Bootstrap {
    fn eq(&self, other: &Bootstrap) -> bool {
        match (self, other) {
            (
                Bootstrap::Authorized { allowed_rooms: a },
                Bootstrap::Authorized { allowed_rooms: b },
            ) => a == b,
            (
                Bootstrap::AuthorizedJson { allowed_rooms: a },
                Bootstrap::AuthorizedJson { allowed_rooms: b },
            ) => a.get() == b.get(),
            (Bootstrap::Refused, Bootstrap::Refused) => true,
            _ => false,
        }
    }
}

/// The backend could not answer: down, timing out, or a 5xx. Clients are told to retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    #[error("backend timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("backend answered {0}")]
    ServerError(u16),
    #[error("backend circuit breaker open after repeated failures")]
    CircuitOpen,
    #[error("too many bootstrap calls waiting")]
    Overloaded,
}

/// What the server needs of a backend. Implement it to authenticate connections your own way
/// (see `examples/custom_backend.rs`); the hooks default to doing nothing.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Who is this, and which rooms may they join?
    async fn bootstrap(&self, request: &ConnectRequest) -> Result<Bootstrap, BackendError>;

    /// After an authorised connection's first frame was queued.
    async fn on_connect(&self, _request: &ConnectRequest) {}

    /// On each `ping` text frame from the client.
    async fn on_ping(&self, _request: &ConnectRequest) {}

    /// After an authorised connection closed, for any reason.
    async fn on_disconnect(&self, _request: &ConnectRequest) {}
}
