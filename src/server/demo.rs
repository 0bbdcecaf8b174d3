//! Demo mode's public routes (`--demo`, [`crate::demo`]): the embedded page at `/`,
//! `GET /demo/status`, and the token-less `POST /trigger/`.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::Value;

use super::{accept_triggers, AppState};
use crate::demo;

/// The demo's public routes; `max_trigger_body` bounds the open trigger path as it does the
/// protected one.
pub(super) fn routes(max_trigger_body: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", demo::INDEX_HTML) }),
        )
        .route(
            "/demo/demo.css",
            get(|| async { asset("text/css; charset=utf-8", demo::DEMO_CSS) }),
        )
        .route(
            "/demo/demo.js",
            get(|| async { asset("text/javascript; charset=utf-8", demo::DEMO_JS) }),
        )
        .route(
            "/demo/client.js",
            get(|| async { asset("text/javascript; charset=utf-8", demo::CLIENT_JS) }),
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
    accept_triggers(&state, &body).await
}
