//! How long a client waits for an answer while large trigger batches are fanned out: the
//! round trip of `ping` → `pong` on one websocket, measured back to back while other tasks
//! post 10,000-trigger batches to `POST /trigger/` as fast as the server takes them.
//!
//! ```sh
//! cargo build --release --bin high-templar --example batch_latency
//! target/release/high-templar --demo --listen 127.0.0.1:8090 &
//! target/release/examples/batch_latency 127.0.0.1:8090 10 2   # address, seconds, posters
//! ```
//! The server runs in demo mode (everyone may join `{"target":"demo","room":"*"}`, `/trigger/`
//! without a token on loopback). 100 subscribers each hold a room of their own; a batch's
//! triggers go round-robin over 1,000 rooms, so each subscriber gets 10 publishes a batch
//! (a subscriber of every trigger would be a slow client at the default outgoing queue).
//! Prints the round-trip percentiles with no batch in flight first, then during the batches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

const SUBSCRIBERS: usize = 100;
const ROOMS: usize = 1_000;
/// Round trips measured with no batch in flight, for comparison.
const IDLE_PROBES: usize = 2_000;

fn room(i: usize) -> serde_json::Value {
    json!({"target": "demo", "room": format!("c{i}")})
}

async fn connect(addr: SocketAddr) -> Result<Ws, Error> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/")).await?;
    let first = next_text(&mut ws).await?;
    if !first.contains("\"is_authorized\":true") {
        return Err(format!("not authorised: {first}").into());
    }
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> Result<String, Error> {
    loop {
        match ws.next().await.ok_or("connection ended")?? {
            Message::Text(text) => return Ok(text.to_string()),
            Message::Close(frame) => return Err(format!("closed: {frame:?}").into()),
            _ => continue,
        }
    }
}

/// One `ping` → `pong` round trip.
async fn round_trip(ws: &mut Ws) -> Result<Duration, Error> {
    let sent = Instant::now();
    ws.send(Message::Text("ping".into())).await?;
    let answer = next_text(ws).await?;
    if answer != "pong" {
        return Err(format!("expected pong, got {answer}").into());
    }
    Ok(sent.elapsed())
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1));
        samples.get(i).map_or(0, |d| d.as_micros())
    };
    println!(
        "{label}: {} round trips, p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        samples.len(),
        at(0.50),
        at(0.99),
        at(0.999),
        samples.last().map_or(0, |d| d.as_micros())
    );
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .map_or("127.0.0.1:8090", String::as_str)
        .parse()?;
    let seconds: u64 = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let posters: usize = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let batch: usize = args.get(4).map_or(Ok(10_000), |s| s.parse())?;

    let received = Arc::new(AtomicU64::new(0));
    for i in 0..SUBSCRIBERS {
        let mut ws = connect(addr).await?;
        let subscribe = json!({"type": "subscribe", "room": room(i), "requestId": "r"});
        ws.send(Message::Text(subscribe.to_string().into())).await?;
        let answer = next_text(&mut ws).await?;
        if answer != r#"{"code":"success"}"# {
            return Err(format!("subscribe: {answer}").into());
        }
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok(_frame) = next_text(&mut ws).await {
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let mut probe = connect(addr).await?;
    let mut idle = Vec::with_capacity(IDLE_PROBES);
    for _ in 0..IDLE_PROBES {
        idle.push(round_trip(&mut probe).await?);
    }
    report("no batch", idle);

    let triggers: Vec<_> = (0..batch)
        .map(|i| json!({"rooms": [room(i % ROOMS)], "data": {"i": i}}))
        .collect();
    let body = serde_json::to_string(&triggers)?;
    let running = Arc::new(AtomicBool::new(true));
    let posted = Arc::new(AtomicU64::new(0));
    let mut poster_tasks = Vec::new();
    for _ in 0..posters {
        let (body, running, posted) = (body.clone(), running.clone(), posted.clone());
        poster_tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while running.load(Ordering::Relaxed) {
                let response = client
                    .post(format!("http://{addr}/trigger/"))
                    .body(body.clone())
                    .send()
                    .await?;
                if !response.status().is_success() {
                    return Err::<(), Error>(format!("/trigger/: {}", response.status()).into());
                }
                posted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    // Let the posters get going before measuring.
    while posted.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let mut busy = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        busy.push(round_trip(&mut probe).await?);
    }
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    for task in poster_tasks {
        task.await??;
    }
    report("during batches", busy);
    let batches = posted.load(Ordering::Relaxed);
    println!(
        "{batches} batches of {batch} posted ({:.0} triggers/s), {} publishes received",
        (batches * batch as u64) as f64 / elapsed.as_secs_f64(),
        received.load(Ordering::Relaxed)
    );
    Ok(())
}
