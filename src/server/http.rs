//! The HTTP endpoints beside the websocket: `POST /trigger/` and the ops endpoints
//! (`/metrics`, `/healthz`, `/readyz`, `/status`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::protocol::Trigger;
use crate::stats::{Stats, TriggerSource};

pub(super) async fn trigger_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = &state.shared.config().trigger_token {
        if !bearer_matches(&headers, token) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong trigger token (Authorization: Bearer <token>)",
            );
        }
    }
    accept_triggers(&state, &body).await
}

/// Parses a `/trigger/` body (one trigger or a list) and publishes it: the part shared by the
/// token-protected route and the demo's open one.
pub(crate) async fn accept_triggers(state: &AppState, body: &[u8]) -> Response {
    let shared = &state.shared;
    let config = shared.config();
    match Trigger::parse_batch(body, &config.policy.room_limits, config.max_batch) {
        Ok(triggers) => {
            #[cfg(feature = "amqp")]
            if let Some(publisher) = &state.amqp_publisher {
                return publish_through(publisher, body).await;
            }
            let count = triggers.len();
            let delivered = shared.publish_batch(triggers, TriggerSource::Http).await;
            Json(json!({"delivered": delivered, "triggers": count})).into_response()
        }
        Err(problem) => {
            Stats::incr(&shared.stats().triggers_invalid);
            tracing::info!(error = %problem, "refused HTTP trigger");
            error(StatusCode::BAD_REQUEST, &problem.to_string())
        }
    }
}

/// Publishes a checked `/trigger/` body into the AMQP exchange (`amqp_publish_http_triggers`):
/// every node, this one included, takes it in from there.
#[cfg(feature = "amqp")]
async fn publish_through(publisher: &crate::sources::amqp::Publisher, body: &[u8]) -> Response {
    match publisher.publish(body).await {
        Ok(published) => Json(json!({"published": published})).into_response(),
        Err(problem) => {
            tracing::warn!(error = %problem, "could not publish an HTTP trigger to AMQP");
            error(StatusCode::SERVICE_UNAVAILABLE, &problem.to_string())
        }
    }
}

pub(super) async fn metrics_handler(State(state): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        crate::metrics::render(&state.shared),
    )
        .into_response()
}

/// Ready when the backend is not failing (its circuit breaker is closed) and, reading a
/// shared stream, once the history is warm (a node that lost its broker stays ready: it
/// keeps its history and resumes where it stopped).
pub(super) async fn ready_handler(State(state): State<AppState>) -> Response {
    let backend_ok = state.shared.gate().is_closed();
    let warm = state.shared.stream().is_none_or(|s| s.is_warm());
    let ready = backend_ok && warm;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Broker links are reported, not required: a node without its broker still serves
    // websockets and HTTP triggers (null: that source is not configured).
    let status_json = state.shared.status();
    (
        status,
        Json(json!({
            "ready": ready,
            "backend": backend_ok,
            "amqp": status_json["amqp_connected"],
            "redis": status_json["redis_connected"],
            "stream": status_json.get("stream"),
        })),
    )
        .into_response()
}

pub(super) async fn status_handler(State(state): State<AppState>) -> Json<Value> {
    Json(state.shared.status())
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// Constant-time comparison, so response timing does not reveal how much of a guess matched.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.as_bytes().ct_eq(token.as_bytes()).into()
}
