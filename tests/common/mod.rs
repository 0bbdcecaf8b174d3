//! Shared test helpers: a real HTTP backend that records what it receives, the real server on
//! a free port, and a real websocket client.
#![allow(dead_code)] // each test binary uses a different subset

pub mod brokers;
pub mod process;
pub mod raw;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use high_templar::{Config, Handle, Server};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `check` succeeds, looking every 20 ms for up to `within`, and returns what it
/// gave; panics with its last error (which should show the state it saw) after that. For what
/// happens asynchronously and has no frame or request to wait on.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if tokio::time::Instant::now() >= deadline => {
                panic!("not so after {within:?}: {state}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Lifts this process's soft open-files limit to the hard one, asserting the hard one allows
/// `needed`: the default soft limit (often 1024) is far below what a test holding thousands of
/// sockets needs (scripts/test.sh checks the hard limit).
pub fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
    assert!(
        limit.rlim_max >= needed,
        "the hard open-files limit {} is below the {needed} this test needs",
        limit.rlim_max
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(set, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Client-side websocket buffers for tests holding thousands of clients: tungstenite's
/// 128 KiB default read buffer times 3,000 clients would be 384 MiB; the frames are small.
pub const SMALL_CLIENT_BUFFER: usize = 4 * 1024;

/// How one connection attempt ended, for tests that open many and count.
#[derive(Debug)]
pub enum Attempt {
    /// Upgraded (the first frame is not read yet).
    Open(Box<Client>),
    /// Refused with this HTTP status before the upgrade.
    Refused(u16),
    /// Reset, closed, or not answered within `WAIT`.
    Failed(String),
}

/// What the test backend answers, per path suffix (`bootstrap/`, hooks).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: Value) -> Reply {
        Reply {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: "{}".into(),
            delay: Duration::ZERO,
        }
    }
    pub fn raw(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// One request the backend received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct BackendState {
    bootstrap: Mutex<Option<Reply>>,
    /// The answer to every other path (the hooks); `None`: `200 {}` at once.
    hooks: Mutex<Option<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    /// Paths of the requests answered, in the order their answers were sent.
    answered: Mutex<Vec<String>>,
    /// Requests being answered now, and the most ever at once: in all, and by path.
    in_flight: Mutex<InFlight>,
}

#[derive(Default)]
struct InFlight {
    now: usize,
    max: usize,
    by_path: HashMap<String, (usize, usize)>,
}

/// Counts one request as in flight while it lives (also when its connection drops it).
struct InFlightGuard {
    state: Arc<BackendState>,
    path: String,
}

impl InFlightGuard {
    fn new(state: &Arc<BackendState>, path: &str) -> InFlightGuard {
        let mut in_flight = state.in_flight.lock().expect("lock");
        in_flight.now += 1;
        in_flight.max = in_flight.max.max(in_flight.now);
        let (now, max) = in_flight.by_path.entry(path.to_string()).or_default();
        *now += 1;
        *max = (*max).max(*now);
        drop(in_flight);
        InFlightGuard {
            state: state.clone(),
            path: path.to_string(),
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut in_flight = self.state.in_flight.lock().expect("lock");
        in_flight.now -= 1;
        if let Some((now, _)) = in_flight.by_path.get_mut(&self.path) {
            *now -= 1;
        }
    }
}

/// A small real HTTP backend, as Django would be.
#[derive(Clone)]
pub struct TestBackend {
    state: Arc<BackendState>,
    pub addr: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
}

impl TestBackend {
    fn router(state: Arc<BackendState>) -> Router {
        Router::new().fallback(handle).with_state(state)
    }

    /// Starts on a free TCP port, answering `bootstrap/` with `reply`.
    pub async fn start(reply: Reply) -> TestBackend {
        let state = Arc::new(BackendState::default());
        *state.bootstrap.lock().expect("lock") = Some(reply);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let router = Self::router(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        TestBackend {
            state,
            addr: Some(addr),
            socket: None,
        }
    }

    /// Starts on a unix socket.
    pub async fn start_unix(reply: Reply) -> TestBackend {
        let state = Arc::new(BackendState::default());
        *state.bootstrap.lock().expect("lock") = Some(reply);
        let path = std::env::temp_dir().join(format!("ht-test-{}.sock", uuid_like()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind unix backend");
        let router = Self::router(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        TestBackend {
            state,
            addr: None,
            socket: Some(path),
        }
    }

    /// The base URL to configure as `api_url`.
    pub fn api_url(&self) -> String {
        match self.addr {
            Some(addr) => format!("http://{addr}/api/"),
            None => "http://django.internal/api/".to_string(),
        }
    }

    pub fn set_bootstrap(&self, reply: Reply) {
        *self.state.bootstrap.lock().expect("lock") = Some(reply);
    }

    /// Answers every path but `bootstrap/` (the hooks) with `reply`.
    pub fn set_hooks(&self, reply: Reply) {
        *self.state.hooks.lock().expect("lock") = Some(reply);
    }

    /// The most requests the backend was ever answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.in_flight.lock().expect("lock").max
    }

    /// The most requests to paths ending in `suffix` the backend was ever answering at once
    /// (per path: the maximum over the matching paths).
    pub fn max_in_flight_at(&self, suffix: &str) -> usize {
        let in_flight = self.state.in_flight.lock().expect("lock");
        in_flight
            .by_path
            .iter()
            .filter(|(path, _)| path.ends_with(suffix))
            .map(|(_, (_, max))| *max)
            .max()
            .unwrap_or(0)
    }

    /// How many requests to a path ending in `suffix` were answered (their answer sent).
    pub fn answered(&self, suffix: &str) -> usize {
        let answered = self.state.answered.lock().expect("lock");
        answered.iter().filter(|p| p.ends_with(suffix)).count()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Waits until a request to a path ending in `suffix` arrived, and returns it.
    pub async fn wait_for(&self, suffix: &str) -> Recorded {
        eventually(WAIT, || async {
            let requests = self.requests().into_iter();
            let mut matching = requests.filter(|r| r.path.ends_with(suffix));
            matching.next().ok_or(format!("no request to {suffix}"))
        })
        .await
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn handle(
    State(state): State<Arc<BackendState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    _body: Bytes,
) -> impl IntoResponse {
    let path = uri.path().to_string();
    let in_flight = InFlightGuard::new(&state, &path);
    state.requests.lock().expect("lock").push(Recorded {
        method,
        path: path.clone(),
        headers,
    });
    let reply = if path.ends_with("/bootstrap/") {
        state
            .bootstrap
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_else(|| Reply::status(404))
    } else {
        state
            .hooks
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_else(|| Reply::ok(json!({})))
    };
    tokio::time::sleep(reply.delay).await;
    state.answered.lock().expect("lock").push(path);
    drop(in_flight);
    (
        StatusCode::from_u16(reply.status).expect("status"),
        reply.body,
    )
}

/// A config pointing at `backend`, listening on a free loopback port.
pub fn config_for(backend: &TestBackend) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        trigger_token: Some(TOKEN.to_string()),
        ..Config::default()
    };
    config.backend.api_url = Some(backend.api_url().parse().expect("api url"));
    config.backend.api_socket = backend.socket.clone();
    config
}

/// The trigger token of test servers.
pub const TOKEN: &str = "test-trigger-token";

pub async fn start(config: Config) -> Handle {
    Server::new(config).start().await.expect("server starts")
}

/// A backend allowing `rooms`, and a server in front of it.
pub async fn server_allowing(rooms: Value) -> (TestBackend, Handle) {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": rooms}))).await;
    let handle = start(config_for(&backend)).await;
    (backend, handle)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A websocket client speaking to the server.
#[derive(Debug)]
pub struct Client {
    pub ws: Ws,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_with(addr, "", &[]).await
    }

    /// Tries the websocket handshake on `/ws/{query}`; the HTTP status of a refusal before
    /// the upgrade.
    pub async fn try_connect_with(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        let mut request = format!("ws://{addr}/ws/{query}")
            .into_client_request()
            .expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake in time")
        {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("handshake failed: {other}"),
        }
    }

    pub async fn try_connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Client, u16> {
        Self::try_connect_with(addr, "", headers).await
    }

    /// Connects to `/ws/{query}` with extra request headers.
    pub async fn connect_with(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Client {
        match Self::try_connect_with(addr, query, headers).await {
            Ok(client) => client,
            Err(status) => panic!("websocket refused with HTTP {status}"),
        }
    }

    /// Opens `/ws/` from `local` (an address of this host such as 127.0.0.2; `None`: the
    /// system's choice) with extra request headers and small client buffers.
    pub async fn attempt(
        addr: SocketAddr,
        local: Option<IpAddr>,
        headers: &[(&str, &str)],
    ) -> Attempt {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(ip) = local {
            socket
                .bind(SocketAddr::new(ip, 0))
                .expect("bind the client");
        }
        let stream = match tokio::time::timeout(WAIT, socket.connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Attempt::Failed(format!("connect: {e}")),
            Err(_) => return Attempt::Failed("connect: no answer in time".into()),
        };
        let mut request = format!("ws://{addr}/ws/")
            .into_client_request()
            .expect("request");
        for (name, value) in headers {
            request.headers_mut().append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(SMALL_CLIENT_BUFFER)
            .write_buffer_size(0);
        let handshake = tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(config),
        );
        match tokio::time::timeout(WAIT, handshake).await {
            Ok(Ok((ws, _))) => Attempt::Open(Box::new(Client { ws })),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                Attempt::Refused(response.status().as_u16())
            }
            Ok(Err(e)) => Attempt::Failed(format!("handshake: {e}")),
            Err(_) => Attempt::Failed("handshake: no answer in time".into()),
        }
    }

    /// Sends `ping` and waits for `pong`: the connection is served.
    pub async fn ping(&mut self) {
        self.send("ping").await;
        assert_eq!(self.recv_text().await, "pong");
    }

    /// Connects with a tiny receive buffer, so that a client that stops reading stalls the
    /// server's writes at once instead of after megabytes of kernel buffers.
    pub async fn connect_small_buffer(addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/"), stream)
            .await
            .expect("handshake");
        let ws = WebSocketStream::from_raw_socket(
            MaybeTlsStream::Plain(ws.into_inner()),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let mut client = Client { ws };
        let first = client.recv_json().await;
        assert_eq!(first["is_authorized"], json!(true), "first frame: {first}");
        client
    }

    /// Connects and reads the first frame, asserting it authorised the connection.
    pub async fn authorized(addr: SocketAddr) -> Client {
        let mut client = Self::connect(addr).await;
        let first = client.recv_json().await;
        assert_eq!(first["is_authorized"], json!(true), "first frame: {first}");
        client
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(&value.to_string()).await;
    }

    /// The next text frame (skipping websocket pings).
    pub async fn recv_text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("valid frame");
            match message {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Asserts no text, binary or close frame arrives within `within` (websocket pings are
    /// answered and skipped).
    pub async fn expect_silence(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match message {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until the close frame, returning its code and reason (other frames skipped).
    pub async fn closed(&mut self) -> Closed {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    }
                }
                Some(Ok(Message::Close(None))) => {
                    return Closed {
                        code: u16::from(CloseCode::Status),
                        reason: String::new(),
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Subscribes and asserts success.
    pub async fn subscribe(&mut self, room: Value, request_id: &str) {
        self.send_json(json!({"type": "subscribe", "room": room, "requestId": request_id}))
            .await;
        assert_eq!(self.recv_json().await, json!({"code": "success"}));
    }

    pub async fn status(&mut self) -> Value {
        self.send_json(json!({"type": "status"})).await;
        self.recv_json().await
    }
}

/// POSTs a trigger body to `/trigger/` with the test token.
pub async fn post_trigger(addr: SocketAddr, body: &str) -> (u16, Value) {
    post_trigger_with(addr, body, Some(TOKEN)).await
}

pub async fn post_trigger_with(addr: SocketAddr, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/trigger/"))
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("trigger request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// A trigger object.
pub fn trigger(rooms: Value, data: Value) -> String {
    json!({"rooms": rooms, "data": data}).to_string()
}

/// Reads `n` publish frames and returns `requestId → count`.
pub async fn collect_publishes(client: &mut Client, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let frame = client.recv_json().await;
        assert_eq!(frame["type"], "publish", "{frame}");
        *counts
            .entry(frame["requestId"].as_str().expect("rid").to_string())
            .or_insert(0) += 1;
    }
    counts
}
