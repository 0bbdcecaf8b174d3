//! `GET /ws/`: admission, the request kept for the backend, and the upgrade.

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::Response;

use super::http::error;
use super::AppState;
use crate::backend::ConnectRequest;
use crate::connection;

/// tungstenite's read buffer. Its default (128 KiB) would be allocated per connection; client
/// frames are small, and a larger frame is still read, in several reads.
const READ_BUFFER_SIZE: usize = 1024;
/// Frames are written into this buffer and sent at each flush; a flush is forced when it
/// fills. 16 KiB holds a burst of ~80 publish frames in one syscall.
const WRITE_BUFFER_SIZE: usize = 16 * 1024;
pub(super) async fn ws_handler(
    upgrade: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let ticket = match state.shared.admission.admit(&headers, peer) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            tracing::info!(%peer, reason = refusal.message(), "websocket refused before upgrade");
            return error(refusal.status(), refusal.message());
        }
    };
    let request = ConnectRequest {
        id: uuid::Uuid::new_v4().to_string().into(),
        headers: owned_headers(&headers),
        query: uri.query().map(str::to_string),
        peer,
    };
    let max = state.shared.config.max_message_size;
    let token = state.connections.token();
    upgrade
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|error| tracing::debug!(%error, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            connection::run(socket, request, state.shared).await;
            drop((ticket, token));
        })
}

/// A copy of `headers` that owns its bytes. hyper's header values are slices of the
/// connection's read buffer (8-16 KiB); keeping the originals for the life of the websocket
/// (hooks need them) would keep that whole buffer alive per connection. Measured with
/// `ht-bench connect`: 22.5 KiB -> 6.4 KiB of server RSS per idle connection.
fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut owned = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
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
