//! A recovery storm: every client of a node drops at once (a deploy, a network blip), triggers
//! keep coming, and every client comes back at once and resumes with `since`.
//!
//! ```sh
//! cargo build --release --bin high-templar
//! cargo run --release --example recovery_storm -- [CLIENTS] [ROOMS] [MISSED]
//! ```
//!
//! Defaults: 10,000 clients over 100 rooms, 100 triggers missed per room. It starts the release
//! binary (`target/release/high-templar`, or `HT_BINARY`) in front of a small bootstrap backend,
//! subscribes every client with `recover: true`, drops them all, publishes MISSED triggers to
//! every room, then reconnects them all at once and measures: how many were `recovered:true`,
//! replayed publishes per second, the time until the last client had everything (connect and
//! bootstrap included), and the backend calls a refetch-on-reconnect frontend would have made
//! instead.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

const TOKEN: &str = "storm-token";
/// Connections being opened at once: the kernel's accept queue and the generator's own CPU,
/// not the server, are what this bounds.
const CONNECTING: usize = 1000;
/// Every wait for one frame.
const WAIT: Duration = Duration::from_secs(60);
/// Triggers per `POST /trigger/`.
const BATCH: usize = 1000;

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("a number"))
        .unwrap_or(default)
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("json");
        }
    }
}

async fn open(addr: SocketAddr, source: u8) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, source], 0)))
        .expect("bind");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/"), stream)
        .await
        .expect("handshake");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["is_authorized"], true, "{hello}");
    ws
}

async fn subscribe(ws: &mut Ws, room: usize, extra: Value) -> Value {
    let mut message = json!({"type": "subscribe", "room": {"room": room}, "requestId": "r"});
    for (k, v) in extra.as_object().expect("object") {
        message[k] = v.clone();
    }
    ws.send(Message::Text(message.to_string().into()))
        .await
        .expect("send");
    next_json(ws).await
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let clients = arg(1, 10_000);
    let rooms = arg(2, 100);
    let missed = arg(3, 100);

    // The backend: everyone may join any room; bootstrap calls counted.
    let bootstraps = Arc::new(AtomicU64::new(0));
    let counter = bootstraps.clone();
    let app = Router::new().route(
        "/api/bootstrap/",
        get(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async { axum::Json(json!({"allowed_rooms": [{"room": "*"}]})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let binary =
        std::env::var("HT_BINARY").unwrap_or_else(|_| "target/release/high-templar".into());
    let server = ServerProcess(
        Command::new(&binary)
            .args(["--listen", &addr.to_string()])
            .args(["--api-url", &format!("http://{backend}/api/")])
            .args(["--trigger-token", TOKEN])
            .args(["--max-connections-per-ip", "1000000"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e} (cargo build --release first)")),
    );
    while TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Everyone subscribes with positions.
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let mut ws = open(addr, 1 + (i % 8) as u8).await;
            drop(permit);
            let answer = subscribe(&mut ws, i % rooms, json!({"recover": true})).await;
            let epoch = answer["epoch"].as_str().expect("epoch").to_string();
            let offset = answer["offset"].as_u64().expect("offset");
            (ws, epoch, offset)
        }));
    }
    let mut positions = Vec::new();
    for task in tasks {
        let (ws, epoch, offset) = task.await.expect("client");
        drop(ws); // all drop at once: the "deploy"
        positions.push((epoch, offset));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // While they are away: MISSED triggers to every room.
    let http = reqwest::Client::new();
    let triggers: Vec<Value> = (0..missed)
        .flat_map(|n| (0..rooms).map(move |r| json!({"rooms": [{"room": r}], "data": {"n": n}})))
        .collect();
    for chunk in triggers.chunks(BATCH) {
        let response = http
            .post(format!("http://{addr}/trigger/"))
            .bearer_auth(TOKEN)
            .body(Value::Array(chunk.to_vec()).to_string())
            .send()
            .await
            .expect("trigger");
        assert!(response.status().is_success(), "{}", response.status());
    }
    let bootstraps_before = bootstraps.load(Ordering::Relaxed);

    // Everyone comes back at once and resumes.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (epoch, offset)) in positions.into_iter().enumerate() {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let mut ws = open(addr, 1 + (i % 8) as u8).await;
            drop(permit);
            let since = json!({"since": {"epoch": epoch, "offset": offset}});
            let answer = subscribe(&mut ws, i % rooms, since).await;
            let recovered = answer["recovered"] == true;
            let mut got = 0;
            if recovered {
                let mut last = offset;
                while got < missed {
                    let frame = next_json(&mut ws).await;
                    let o = frame["offset"].as_u64().expect("offset");
                    assert!(o > last, "offsets increase");
                    assert_eq!(frame["data"]["n"], got as u64, "in order");
                    last = o;
                    got += 1;
                }
            }
            (recovered, got, started.elapsed())
        }));
    }
    let mut recovered = 0;
    let mut replayed = 0;
    let mut times = Vec::new();
    for task in tasks {
        let (ok, got, at) = task.await.expect("client");
        recovered += usize::from(ok);
        replayed += got;
        times.push(at.as_secs_f64());
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let bootstraps_storm = bootstraps.load(Ordering::Relaxed) - bootstraps_before;
    drop(server);
    println!(
        "recovery storm: {clients} clients over {rooms} rooms, {missed} missed triggers each\n\
         recovered:true {recovered}/{clients}; replayed {replayed} publishes ({:.0}/s)\n\
         last client live after {elapsed:.2} s (p50 {:.2} s, p99 {:.2} s), connect and bootstrap included\n\
         backend: {bootstraps_storm} bootstrap calls; refetches avoided: {recovered} \
         (a 3.1 frontend refetches every room it shows after a reconnect)",
        replayed as f64 / elapsed,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
    );
}
