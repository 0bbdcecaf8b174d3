//! `GET /ws/`: admission, the request kept for the backend, and the upgrade.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;

use super::http::error;
use super::AppState;
use crate::backend::ConnectRequest;
use crate::connection;
use crate::ws;

pub(super) async fn ws_handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let key = match handshake_key(request.method(), headers) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let policy = &state.shared.config().policy;
    let client_ip = policy.trusted_proxies.client_ip(peer.ip(), headers);
    let ticket = match state.shared.admission().admit(headers, client_ip) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            // Counted, and in the summary line: one line per refused client is for debugging.
            tracing::debug!(client = %client_ip, reason = refusal.message(), "websocket refused before upgrade");
            return error(refusal.status(), refusal.message());
        }
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "the connection cannot be upgraded",
        );
    };
    let connect = Arc::new(ConnectRequest {
        id: uuid::Uuid::new_v4().to_string().into(),
        headers: owned_headers(request.headers()),
        query: request.uri().query().map(str::to_string),
        peer,
        client_ip,
    });
    let guard = (ticket, state.connections.token());
    tokio::spawn(connection::run(on_upgrade, connect, state.shared, guard));
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::SEC_WEBSOCKET_ACCEPT, key),
        ],
    )
        .into_response()
}

/// Why a request to `/ws/` is not a websocket handshake we accept.
enum BadHandshake {
    NotAnUpgrade,
    Version,
    Key,
}

impl BadHandshake {
    fn into_response(self) -> Response {
        let (status, message, extra) = match self {
            BadHandshake::NotAnUpgrade => (
                StatusCode::UPGRADE_REQUIRED,
                "expected a websocket upgrade",
                Some((header::UPGRADE, "websocket")),
            ),
            BadHandshake::Version => (
                StatusCode::UPGRADE_REQUIRED,
                "unsupported websocket version",
                Some((header::SEC_WEBSOCKET_VERSION, "13")),
            ),
            BadHandshake::Key => (
                StatusCode::BAD_REQUEST,
                "missing or bad Sec-WebSocket-Key",
                None,
            ),
        };
        let mut response = error(status, message);
        if let Some((name, value)) = extra {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// Checks that the request asks for a websocket (RFC 6455 section 4.2.1); the accept key to
/// answer with.
fn handshake_key(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, BadHandshake> {
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if method != Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
    {
        return Err(BadHandshake::NotAnUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(BadHandshake::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| ws::is_valid_key(key.as_bytes()))
        .ok_or(BadHandshake::Key)?;
    HeaderValue::from_str(&ws::accept_key(key.as_bytes())).map_err(|_| BadHandshake::Key)
}

/// Headers that only served the handshake: a backend has no use for them, and each kept one
/// is ~100 bytes of every connection's memory.
const HANDSHAKE_HEADERS: [HeaderName; 5] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// A copy of `headers` that owns its bytes, without the handshake's own. hyper's header
/// values are slices of the connection's read buffer (8-16 KiB); keeping the originals for
/// the life of the websocket (hooks need them) would keep that whole buffer alive per
/// connection. Measured with `ht-bench connect`: 22.5 KiB -> 6.4 KiB of server RSS per idle
/// connection.
fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let kept = headers
        .keys()
        .filter(|name| !HANDSHAKE_HEADERS.contains(name))
        .count();
    let mut owned = HeaderMap::with_capacity(kept);
    for (name, value) in headers {
        if HANDSHAKE_HEADERS.contains(name) {
            continue;
        }
        let (Ok(name), Ok(mut copy)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            continue;
        };
        copy.set_sensitive(value.is_sensitive());
        owned.append(name, copy);
    }
    owned
}
