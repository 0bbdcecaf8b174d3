//! The default backend: `GET {api_url}bootstrap/` over HTTP(S) or a unix socket, and the
//! optional connect / disconnect / ping hooks as `POST {api_url}{path}`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::headers::{forwarded_headers, HeaderRule};
use super::{Backend, BackendError, Bootstrap, ConnectRequest};

/// The largest bootstrap answer read. A user's allowed rooms are a few KiB at most; this bound
/// keeps a misbehaving backend from costing the node memory per connecting client.
const MAX_BACKEND_BODY: usize = 1024 * 1024;

/// The read buffer of a connection to the backend. hyper's default grows with the answers read
/// (up to ~400 KiB) and a pooled connection keeps what it grew to: with 5,000 allowed rooms
/// (a 220 KB answer) that was up to ~256 KiB for each of up to `max_concurrent_bootstraps`
/// pooled connections, and 2,000 websockets measured 26.5 KiB of RSS each instead of ~11
/// (BENCHMARKS.md, "Large allowed lists"). A usual answer (a few KiB) still arrives in one
/// read; a large one in reads of this size.
const BACKEND_READ_BUFFER: usize = 16 * 1024;

/// How long an idle pooled connection to the backend is kept: long enough to reuse between
/// bursts of connecting clients, short enough not to outlive a backend's own keep-alive.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The backend's base URL, e.g. `http://127.0.0.1:8000/api/`. Always ends in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl {
    uri: Uri,
}

impl ApiUrl {
    /// `scheme://authority` of the URL.
    fn origin(&self) -> String {
        let scheme = self.uri.scheme_str().unwrap_or("http");
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        format!("{scheme}://{authority}")
    }

    /// The path of `relative` under this URL.
    fn path_of(&self, relative: &str) -> String {
        format!("{}{}", self.uri.path(), relative.trim_start_matches('/'))
    }

    fn host(&self) -> &str {
        self.uri.authority().map(|a| a.as_str()).unwrap_or_default()
    }

    fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }
}

impl FromStr for ApiUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("{s:?} must start with http:// or https://")),
        }
        if uri.authority().is_none() {
            return Err(format!("{s:?} has no host"));
        }
        if !uri.path().ends_with('/') {
            return Err(format!(
                "{s:?} must end with / (e.g. http://127.0.0.1:8000/api/)"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("{s:?} must not have a query string"));
        }
        Ok(ApiUrl { uri })
    }
}

impl fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

/// Settings of the default backend.
#[derive(Debug, Clone)]
pub struct HttpBackendConfig {
    pub api_url: ApiUrl,
    /// Connect to this unix socket instead of the URL's host; the URL's path and host (as
    /// `Host`) are still used.
    pub api_socket: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM) for https, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// Whole-call timeout: connect, request, and reading the body.
    pub timeout: Duration,
    /// Extra or overriding forwarded headers.
    pub forward_headers: Vec<HeaderRule>,
    pub on_connect: Option<String>,
    pub on_disconnect: Option<String>,
    pub on_ping: Option<String>,
}

enum Transport {
    Http(Client<HttpConnector, Full<Bytes>>),
    Https(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
    Unix(Client<hyperlocal::UnixConnector, Full<Bytes>>, PathBuf),
}

/// The default [`Backend`]: the protocol's HTTP calls.
pub struct HttpBackend {
    config: HttpBackendConfig,
    transport: Transport,
}

impl HttpBackend {
    pub fn new(config: HttpBackendConfig) -> std::io::Result<HttpBackend> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(POOL_IDLE_TIMEOUT);
        builder.http1_read_buf_exact_size(BACKEND_READ_BUFFER);
        let transport = match &config.api_socket {
            Some(path) => Transport::Unix(builder.build(hyperlocal::UnixConnector), path.clone()),
            None => {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                if config.api_url.is_https() {
                    let connector = hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(tls_client_config(config.ca_file.as_deref())?)
                        .https_only()
                        .enable_http1()
                        .wrap_connector(http);
                    Transport::Https(builder.build(connector))
                } else {
                    Transport::Http(builder.build(http))
                }
            }
        };
        Ok(HttpBackend { config, transport })
    }

    /// One call to the backend: status and body, within the timeout.
    async fn call(
        &self,
        method: Method,
        relative: &str,
        request: &ConnectRequest,
    ) -> Result<(StatusCode, Bytes), BackendError> {
        let path = self.config.api_url.path_of(relative);
        let mut builder = Request::builder().method(method);
        let uri: Uri = match &self.transport {
            Transport::Http(_) | Transport::Https(_) => {
                format!("{}{}", self.config.api_url.origin(), path)
                    .parse()
                    .map_err(|e| BackendError::Unreachable(format!("bad backend URL: {e}")))?
            }
            Transport::Unix(_, socket) => hyperlocal::Uri::new(socket, &path).into(),
        };
        builder = builder.uri(uri);
        if let Ok(host) = HeaderValue::from_str(self.config.api_url.host()) {
            builder = builder.header(header::HOST, host);
        }
        for (name, value) in forwarded_headers(request, &self.config.forward_headers) {
            builder = builder.header(name, value);
        }
        let http_request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| BackendError::Unreachable(format!("bad backend request: {e}")))?;
        let call = async {
            let response = match &self.transport {
                Transport::Http(client) => client.request(http_request).await,
                Transport::Https(client) => client.request(http_request).await,
                Transport::Unix(client, _) => client.request(http_request).await,
            }
            .map_err(|e| BackendError::Unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BACKEND_BODY)
                .collect()
                .await
                .map_err(|e| BackendError::Unreachable(format!("reading body: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.config.timeout, call)
            .await
            .map_err(|_| BackendError::Timeout(self.config.timeout))?
    }

    async fn hook(&self, path: &Option<String>, request: &ConnectRequest) {
        let Some(path) = path else { return };
        match self.call(Method::POST, path, request).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, _)) => {
                tracing::warn!(conn = %request.id, %path, %status, "backend hook refused")
            }
            Err(error) => tracing::warn!(conn = %request.id, %path, %error, "backend hook failed"),
        }
    }
}

/// The system's trusted roots plus those of `ca_file`.
fn tls_client_config(ca_file: Option<&std::path::Path>) -> std::io::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the CA file may be all that is needed.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| std::io::Error::other(format!("api_ca_file {}: {e}", path.display())))?;
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(std::io::Error::other(
            "no trusted CA certificates for an https api_url",
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The error and its sources on one line: hyper's top-level error alone says little.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads a 200 bootstrap answer. Anything but an object whose `allowed_rooms` (if present) is
/// a list of objects is a refusal (PROTOCOL.md section 1, including its Beyond part). The list
/// is kept as text: whether its members are objects is checked when it is first parsed, once
/// per distinct list on a node (`room::AllowedLists`), so a list seen before costs a scan of
/// its text here, not a parse into values.
pub(crate) fn parse_bootstrap(body: &[u8]) -> Bootstrap {
    let Ok(BootstrapBody(rooms)) = serde_json::from_slice::<BootstrapBody>(body) else {
        return Bootstrap::Refused;
    };
    match rooms {
        None => Bootstrap::Authorized {
            allowed_rooms: Vec::new(),
        },
        Some(rooms) if rooms.get().starts_with('[') => Bootstrap::AuthorizedJson {
            allowed_rooms: rooms,
        },
        Some(_) => Bootstrap::Refused,
    }
}

/// A bootstrap answer's object, of which only `allowed_rooms` is kept, as text. The other
/// members are checked for JSON syntax and skipped; of a repeated key the last counts, as in a
/// parsed object.
struct BootstrapBody(Option<Box<RawValue>>);

impl<'de> Deserialize<'de> for BootstrapBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = BootstrapBody;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BootstrapBody, A::Error> {
        let mut rooms = None;
        while let Some(key) = map.next_key::<BodyKey>()? {
            match key {
                BodyKey::AllowedRooms => rooms = Some(map.next_value()?),
                BodyKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(BootstrapBody(rooms))
    }
}

#[derive(Deserialize)]
enum BodyKey {
    #[serde(rename = "allowed_rooms")]
    AllowedRooms,
    #[serde(other)]
    Other,
}

#[async_trait::async_trait]
impl Backend for HttpBackend {
    async fn bootstrap(&self, request: &ConnectRequest) -> Result<Bootstrap, BackendError> {
        let (status, body) = self.call(Method::GET, "bootstrap/", request).await?;
        if status.is_server_error() {
            return Err(BackendError::ServerError(status.as_u16()));
        }
        if status != StatusCode::OK {
            return Ok(Bootstrap::Refused);
        }
        Ok(parse_bootstrap(&body))
    }

    async fn on_connect(&self, request: &ConnectRequest) {
        self.hook(&self.config.on_connect, request).await;
    }

    async fn on_ping(&self, request: &ConnectRequest) {
        self.hook(&self.config.on_ping, request).await;
    }

    async fn on_disconnect(&self, request: &ConnectRequest) {
        self.hook(&self.config.on_disconnect, request).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::AllowedLists;
    use serde_json::{json, Value};

    #[test]
    fn api_url_must_be_a_base_url() {
        assert!("http://127.0.0.1:8000/api/".parse::<ApiUrl>().is_ok());
        assert!("http://127.0.0.1:8000/api".parse::<ApiUrl>().is_err());
        assert!("ftp://x/".parse::<ApiUrl>().is_err());
        assert!("/api/".parse::<ApiUrl>().is_err());
        let url: ApiUrl = "https://example.com/api/".parse().expect("url");
        assert_eq!(url.path_of("bootstrap/"), "/api/bootstrap/");
        assert_eq!(
            url.path_of("/user/notify_online/"),
            "/api/user/notify_online/"
        );
        assert_eq!(url.host(), "example.com");
    }

    /// The first frame a body gives, `None` for a refusal: what a connection sees.
    async fn read(body: &str) -> Option<String> {
        let lists = AllowedLists::default();
        match parse_bootstrap(body.as_bytes()) {
            Bootstrap::Authorized { allowed_rooms } => lists.from_values(allowed_rooms).await,
            Bootstrap::AuthorizedJson { allowed_rooms } => {
                lists.from_json(allowed_rooms.get()).await
            }
            Bootstrap::Refused => None,
        }
        .map(|allowed| allowed.first_frame().to_string())
    }

    fn frame(list: Value) -> Option<String> {
        Some(json!({"is_authorized": true, "allowed_rooms": list}).to_string())
    }

    #[tokio::test]
    async fn bootstrap_answers_are_read_like_the_original() {
        assert_eq!(
            read(r#"{"allowed_rooms":[{"a":1}]}"#).await,
            frame(json!([{"a": 1}]))
        );
        assert_eq!(read(r#"{"user":1}"#).await, frame(json!([])));
        assert_eq!(read(r#"{"allowed_rooms":["foo"]}"#).await, None);
        assert_eq!(read(r#"{"allowed_rooms":[{"a":1},2]}"#).await, None);
        assert_eq!(read(r#"{"allowed_rooms":{"a":1}}"#).await, None);
        assert_eq!(read(r#"{"allowed_rooms":null}"#).await, None);
        assert_eq!(read("<html>").await, None);
        assert_eq!(read("[]").await, None);
        assert_eq!(read(r#"[{"allowed_rooms":[]}]"#).await, None);
        assert_eq!(read(r#"{"allowed_rooms":[]} x"#).await, None);
        assert_eq!(read(r#"{"allowed_rooms":[],"user":[1,}"#).await, None);
    }

    #[tokio::test]
    async fn the_list_is_echoed_as_parsed_values_print_and_other_members_are_skipped() {
        assert_eq!(
            read(
                r#" { "user" : {"x":[1,{"y":null}]}, "allowed_rooms" : [ {"t":"m", "c" : 1.50} ] } "#
            )
            .await,
            frame(json!([{"c": 1.5, "t": "m"}]))
        );
        // A repeated key: the last one counts, as in a parsed object.
        assert_eq!(
            read(r#"{"allowed_rooms":["x"],"allowed_rooms":[{"a":"\u00e9"}]}"#).await,
            frame(json!([{"a": "é"}]))
        );
        assert_eq!(
            parse_bootstrap(br#"{"allowed_rooms":[{"a":1}]}"#),
            Bootstrap::AuthorizedJson {
                allowed_rooms: RawValue::from_string(r#"[{"a":1}]"#.into()).expect("JSON")
            }
        );
    }
}
