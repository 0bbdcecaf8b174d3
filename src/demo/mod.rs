//! Demo mode (`--demo`): try high-templar with nothing else running.
//!
//! - [`DemoBackend`] stands in for the HTTP backend and lets every visitor into
//!   [`demo_rooms`]: `{"target": "demo", "room": "*"}`.
//! - The demo page (HTML, CSS and JS embedded in the binary, built on the TypeScript client of
//!   `clients/js`), which the server's demo routes (`server/demo.rs`) serve at `/` beside
//!   `GET /demo/status` (the status object, for the page) and `POST /trigger/` **without a
//!   token**, so the page can publish.
//!
//! That open trigger path is why demo mode refuses non-loopback addresses unless
//! `--demo-allow-public` is given (see `Config::problems`).

use serde_json::{json, Value};

use crate::backend::{Backend, BackendError, Bootstrap, ConnectRequest};

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
pub(crate) const INDEX_HTML: &str = include_str!("page/index.html");
pub(crate) const DEMO_CSS: &str = include_str!("page/demo.css");
pub(crate) const DEMO_JS: &str = include_str!("page/demo.js");
/// The TypeScript client's browser build (`npm run build` in `clients/js` regenerates it), so
/// `cargo build` needs no npm.
pub(crate) const CLIENT_JS: &str = include_str!("page/client.js");
