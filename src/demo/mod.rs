//! Demo mode (`--demo`): try high-templar with nothing else running.
//!
//! - [`DemoBackend`] stands in for the HTTP backend and lets every visitor into
//!   [`demo_rooms`]: `{"target": "demo", "room": "*"}`.
//! - [`routes`] adds, on the public listener: the demo page at `/` (HTML, CSS and JS embedded in
//!   the binary, built on the TypeScript client of `clients/js`), `GET /demo/status` (the status
//!   object, for the page), and `POST /trigger/` **without a token**, so the page can publish.
//!
//! That open trigger path is why demo mode refuses non-loopback addresses unless
//! `--demo-allow-public` is given (see `Config::problems`).

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::backend::{Backend, BackendError, Bootstrap, ConnectRequest};
use crate::server::{accept_triggers, AppState};

/// The rooms every demo visitor may join: any `room` value under the `demo` target.
pub fn demo_rooms() -> Vec<Value> {
    vec![json!({"target": "demo", "room": "*"})]
}

/// A backend that authorises everyone for [`demo_rooms`]. No network, no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoBackend;

#[async_trait::async_trait]
impl Backend for DemoBackend {
    async fn bootstrap(&self, _request: &ConnectRequest) -> Result<Bootstrap, BackendError> {
        Ok(Bootstrap::Authorized {
            allowed_rooms: demo_rooms(),
        })
    }
}

/// The page's files, compiled into the binary so `--demo` works from a bare executable.
const INDEX_HTML: &str = include_str!("page/index.html");
const DEMO_CSS: &str = include_str!("page/demo.css");
const DEMO_JS: &str = include_str!("page/demo.js");
/// The TypeScript client's browser build (`npm run build` in `clients/js` regenerates it), so
/// `cargo build` needs no npm.
const CLIENT_JS: &str = include_str!("page/client.js");

/// The demo's public routes; `max_trigger_body` bounds the open trigger path as it does the
/// protected one.
pub(crate) fn routes(max_trigger_body: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/demo/demo.css",
            get(|| async { asset("text/css; charset=utf-8", DEMO_CSS) }),
        )
        .route(
            "/demo/demo.js",
            get(|| async { asset("text/javascript; charset=utf-8", DEMO_JS) }),
        )
        .route(
            "/demo/client.js",
            get(|| async { asset("text/javascript; charset=utf-8", CLIENT_JS) }),
        )
        .route("/demo/status", get(status))
        .route(
            "/trigger/",
            post(open_trigger).layer(DefaultBodyLimit::max(max_trigger_body)),
        )
        .route(
            "/trigger",
            post(open_trigger).layer(DefaultBodyLimit::max(max_trigger_body)),
        )
}

/// Embedded files are served uncached: a rebuilt binary must not show yesterday's page.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

async fn status(State(state): State<AppState>) -> Json<Value> {
    Json(state.shared.status())
}

/// `POST /trigger/` without a token: only reachable in demo mode.
async fn open_trigger(State(state): State<AppState>, body: Bytes) -> Response {
    accept_triggers(&state.shared, &body).await
}
