//! The scenarios: open connections, subscribe, publish, receive, and turn it into figures.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::Semaphore;

use crate::publish::{now_micros, Plan, PublisherThread};
use crate::report::{percentile, Better, Outcome};
use crate::target::{Sample, Target};
use crate::ws::{find, number_after, BlockingWs, WsClient, OP_TEXT};

/// How long one connection (TCP, handshake, bootstrap, first frame) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the readiness probe waits for a trigger to come through (3.1 connects to RabbitMQ
/// in the background after it starts listening).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before reading the server's RSS once every connection is open, so memory freed by
/// finished handshakes is counted as freed.
const SETTLE: Duration = Duration::from_secs(1);
/// Triggers per `POST /trigger/` in the `rooms` scenario: 500 triggers are ~40 KB of body,
/// far below the server's 1 MiB and 10,000-trigger limits.
const ROOMS_BATCH: usize = 500;

/// What every scenario needs.
pub struct Ctx {
    pub target: Target,
    pub publisher: Option<PublisherThread>,
    /// Source addresses, used round robin (several 127.0.0.x when ports run out).
    pub sources: Vec<IpAddr>,
    /// Connections opened at once.
    pub concurrency: usize,
    /// Bound on waiting for deliveries.
    pub timeout: Duration,
}

/// The loopback source addresses 127.0.0.1 ..= 127.0.0.n (none to bind when n is 1).
pub fn sources(n: u8) -> Vec<IpAddr> {
    if n <= 1 {
        return Vec::new();
    }
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

impl Ctx {
    fn publisher(&self) -> anyhow::Result<&PublisherThread> {
        self.publisher
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no trigger route for this server"))
    }

    /// Opens one connection and waits for its first frame, which must authorize it; then
    /// subscribes to `room` if given.
    async fn open(&self, i: usize, room: Option<&str>) -> Result<WsClient, String> {
        let source = (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()]);
        let mut client = WsClient::connect(self.target.ws_addr, source, "/ws/")
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let first = client
            .next_text()
            .await
            .map_err(|e| format!("first frame: {e}"))?;
        if find(first, b"true").is_none() {
            return Err(format!(
                "not authorized: {}",
                String::from_utf8_lossy(first)
            ));
        }
        if let Some(room) = room {
            subscribe(&mut client, room, "r").await?;
        }
        Ok(client)
    }

    /// Opens `n` connections, `concurrency` at a time; `room(i)` is connection i's room.
    async fn open_many(
        &self,
        n: usize,
        room: impl Fn(usize) -> Option<String>,
    ) -> (Vec<WsClient>, Vec<u32>, Vec<String>) {
        let gate = Rc::new(Semaphore::new(self.concurrency.max(1)));
        let ctx: &Ctx = self;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let gate = gate.clone();
                let room = room(i);
                async move {
                    let _permit = gate.acquire().await;
                    let start = Instant::now();
                    let opened =
                        tokio::time::timeout(OPEN_TIMEOUT, ctx.open(i, room.as_deref())).await;
                    let micros = start.elapsed().as_micros() as u32;
                    match opened {
                        Ok(Ok(client)) => Ok((client, micros)),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err("timed out".to_string()),
                    }
                }
            })
            .collect();
        let mut clients = Vec::with_capacity(n);
        let mut latencies = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for result in futures_util::future::join_all(tasks).await {
            match result {
                Ok((client, micros)) => {
                    clients.push(client);
                    latencies.push(micros);
                }
                Err(e) => errors.push(e),
            }
        }
        (clients, latencies, errors)
    }

    /// Publishes to a probe room until a trigger comes through: the trigger path is live.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let mut probe = self
            .open(0, Some("probe"))
            .await
            .map_err(|e| anyhow::anyhow!("probe connection: {e}"))?;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while Instant::now() < deadline {
            let plan = Plan {
                rooms: vec!["probe".into()],
                per_room: 1,
                batch: 1,
                rate: None,
            };
            self.publisher()?.run(plan).await?;
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(300), probe.next_text()).await
            {
                return Ok(());
            }
        }
        bail!("no trigger reached the probe client within {PROBE_TIMEOUT:?}")
    }
}

/// Subscribes and checks the answer.
async fn subscribe(client: &mut WsClient, room: &str, request_id: &str) -> Result<(), String> {
    let message = format!(
        r#"{{"type":"subscribe","room":{{"target":"bench","room":"{room}"}},"requestId":"{request_id}"}}"#
    );
    client
        .send_text(message.as_bytes())
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let answer = client
        .next_text()
        .await
        .map_err(|e| format!("subscribe answer: {e}"))?;
    if find(answer, b"success").is_none() {
        return Err(format!(
            "subscribe refused: {}",
            String::from_utf8_lossy(answer)
        ));
    }
    Ok(())
}

/// What one receiving client saw.
struct Received {
    latencies: Vec<u32>,
    got: u64,
    duplicates: u64,
    last: Option<Instant>,
    error: Option<String>,
}

/// Reads publishes until `expected` distinct seqs arrived or the deadline passes.
async fn receive(mut client: WsClient, expected: u64, deadline: tokio::time::Instant) -> Received {
    let mut seen = vec![0u64; expected.div_ceil(64) as usize];
    let mut r = Received {
        latencies: Vec::with_capacity(expected as usize),
        got: 0,
        duplicates: 0,
        last: None,
        error: None,
    };
    while r.got < expected {
        let frame = match tokio::time::timeout_at(deadline, client.next_frame()).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                r.error = Some(e.to_string());
                break;
            }
            Err(_) => break,
        };
        if frame.opcode != OP_TEXT {
            r.error = Some(format!("opcode {} from the server", frame.opcode));
            break;
        }
        let payload = client.payload(&frame);
        let (Some(ts), Some(seq)) = (
            number_after(payload, b"\"ts\":"),
            number_after(payload, b"\"seq\":"),
        ) else {
            continue;
        };
        // The kernel's arrival time: what this single-threaded generator does afterwards
        // (one read per message per socket) is not the server's latency.
        let now = match client.arrived() {
            0 => now_micros(),
            arrived => arrived,
        };
        if seq >= expected || seen[(seq / 64) as usize] & (1 << (seq % 64)) != 0 {
            r.duplicates += 1;
            continue;
        }
        seen[(seq / 64) as usize] |= 1 << (seq % 64);
        r.got += 1;
        r.latencies
            .push(now.saturating_sub(ts).min(u64::from(u32::MAX)) as u32);
        r.last = Some(Instant::now());
    }
    r
}

/// `connect`: N connections, rate, open latency, failures, server RSS per idle connection.
pub async fn connect(ctx: &Ctx, n: usize) -> anyhow::Result<Outcome> {
    let rss_before = ctx.target.rss_kib();
    let start = Sample::take(&ctx.target);
    let t0 = Instant::now();
    let (clients, mut latencies, errors) = ctx.open_many(n, |_| None).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let end = Sample::take(&ctx.target);
    tokio::time::sleep(SETTLE).await;
    let rss_after = ctx.target.rss_kib();
    latencies.sort_unstable();
    let mut out = Outcome::default();
    out.add("connections", clients.len() as f64, "", Better::Neither);
    out.add(
        "connections/s",
        clients.len() as f64 / elapsed,
        "",
        Better::Higher,
    );
    out.add(
        "open p50",
        percentile(&latencies, 50.0) / 1000.0,
        " ms",
        Better::Lower,
    );
    out.add(
        "open p99",
        percentile(&latencies, 99.0) / 1000.0,
        " ms",
        Better::Lower,
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = after.saturating_sub(before) as f64 / clients.len().max(1) as f64;
        out.add("RSS/connection", per, " KiB", Better::Lower);
        out.add("server RSS", after as f64 / 1024.0, " MiB", Better::Lower);
    }
    add_cpu(&mut out, &start, &end);
    if let Some(first) = errors.first() {
        eprintln!("  first failure: {first}");
    }
    out.must_be_zero("failures", errors.len() as u64);
    drop(clients);
    Ok(out)
}

/// Subscribers of rooms receive `per_room` triggers for each room: `fanout` (one room),
/// `rooms` (one room per subscriber) and `latency` (paced) are this with different plans.
async fn deliver(
    ctx: &Ctx,
    clients_n: usize,
    room_of: impl Fn(usize) -> String,
    plan: Plan,
) -> anyhow::Result<Outcome> {
    let (clients, _, errors) = ctx.open_many(clients_n, |i| Some(room_of(i))).await;
    if let Some(first) = errors.first() {
        bail!(
            "{} of {clients_n} subscribers failed, first: {first}",
            errors.len()
        );
    }
    let expected = plan.per_room;
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    let receivers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(receive(client, expected, deadline)))
        .collect();
    // Let every receiver start waiting before the first trigger goes out.
    tokio::task::yield_now().await;
    let start = Sample::take(&ctx.target);
    let sent = ctx.publisher()?.run(plan).await?;
    let mut latencies = Vec::with_capacity(clients_n * expected as usize);
    let (mut got, mut duplicates, mut last, mut errors) = (0u64, 0u64, sent.first, Vec::new());
    for receiver in receivers {
        let r = receiver.await?;
        got += r.got;
        duplicates += r.duplicates;
        latencies.extend_from_slice(&r.latencies);
        last = last.max(r.last.unwrap_or(sent.first));
        errors.extend(r.error);
    }
    let end = Sample::take(&ctx.target);
    latencies.sort_unstable();
    let window = last.duration_since(sent.first).as_secs_f64().max(1e-6);
    let mut out = Outcome::default();
    out.add("delivered", got as f64, "", Better::Neither);
    out.add("msgs/s", got as f64 / window, "", Better::Higher);
    out.add(
        "latency p50",
        percentile(&latencies, 50.0) / 1000.0,
        " ms",
        Better::Lower,
    );
    out.add(
        "latency p99",
        percentile(&latencies, 99.0) / 1000.0,
        " ms",
        Better::Lower,
    );
    out.add(
        "latency max",
        percentile(&latencies, 100.0) / 1000.0,
        " ms",
        Better::Lower,
    );
    add_cpu(&mut out, &start, &end);
    let wanted = clients_n as u64 * expected;
    out.must_be_zero("lost", wanted.saturating_sub(got));
    out.must_be_zero("duplicates", duplicates);
    if let Some(first) = errors.first() {
        eprintln!("  first receive error: {first}");
    }
    out.must_be_zero("receive errors", errors.len() as u64);
    Ok(out)
}

pub async fn fanout(ctx: &Ctx, clients: usize, triggers: u64) -> anyhow::Result<Outcome> {
    let plan = Plan {
        rooms: vec!["fan".into()],
        per_room: triggers,
        batch: 1,
        rate: None,
    };
    deliver(ctx, clients, |_| "fan".into(), plan).await
}

pub async fn rooms(ctx: &Ctx, clients: usize, triggers: u64) -> anyhow::Result<Outcome> {
    let plan = Plan {
        rooms: (0..clients).map(|i| format!("r{i}")).collect(),
        per_room: triggers,
        batch: ROOMS_BATCH,
        rate: None,
    };
    deliver(ctx, clients, |i| format!("r{i}"), plan).await
}

pub async fn latency(
    ctx: &Ctx,
    clients: usize,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Outcome> {
    let plan = Plan {
        rooms: vec!["lat".into()],
        per_room: (rate * seconds).ceil().max(1.0) as u64,
        batch: 1,
        rate: Some(rate),
    };
    deliver(ctx, clients, |_| "lat".into(), plan).await
}

/// `subscribe`: one connection subscribes `rooms` rooms, `window` requests in flight (answers
/// come in request order, as clients match them).
pub async fn subscribe_many(ctx: &Ctx, rooms: usize, window: usize) -> anyhow::Result<Outcome> {
    let client = ctx
        .open(0, None)
        .await
        .map_err(|e| anyhow::anyhow!("connection: {e}"))?;
    // One subscribe at a time, the generator's cost per round trip is in every round trip:
    // the measured loop runs on a blocking socket (a write and a read per subscribe, no event
    // loop wake-up, no timer per answer). It blocks this thread, which is fine: the runtime is
    // single-threaded (main.rs), the fake backend runs on its own thread and runtime, and this
    // scenario has no publisher, so nothing else needs to run here meanwhile.
    let mut client = client.into_blocking(ctx.timeout)?;
    let start = Sample::take(&ctx.target);
    let t0 = Instant::now();
    let refused = subscribe_loop(&mut client, rooms, window)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let end = Sample::take(&ctx.target);
    let mut out = Outcome::default();
    out.add("subscribes", rooms as f64, "", Better::Neither);
    out.add("subscribes/s", rooms as f64 / elapsed, "", Better::Higher);
    add_cpu(&mut out, &start, &end);
    out.must_be_zero("refused", refused);
    Ok(out)
}

/// The measured loop of `subscribe`: `window` subscribes in flight, the next one sent as each
/// answer arrives. Returns how many were refused.
fn subscribe_loop(client: &mut BlockingWs, rooms: usize, window: usize) -> io::Result<u64> {
    let window = window.max(1);
    let mut message = Vec::with_capacity(128);
    let (mut sent, mut refused) = (0usize, 0u64);
    for answered in 0..rooms {
        // A blocking write cannot deadlock here: at most `window` small frames are unanswered.
        while sent < rooms && sent - answered < window {
            subscribe_message(&mut message, sent);
            client.send_text(&message)?;
            sent += 1;
        }
        let answer = client.next_text()?;
        if find(answer, b"success").is_none() {
            refused += 1;
        }
    }
    Ok(refused)
}

/// Writes subscribe `n` (room and request id `s{n}`) into `buf`, reused from one message to
/// the next (no allocation per message).
fn subscribe_message(buf: &mut Vec<u8>, n: usize) {
    use std::io::Write;
    buf.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        buf,
        r#"{{"type":"subscribe","room":{{"target":"bench","room":"s{n}"}},"requestId":"s{n}"}}"#
    );
}

fn add_cpu(out: &mut Outcome, start: &Sample, end: &Sample) {
    let (server, own) = start.shares(end);
    if let Some(server) = server {
        out.add("server CPU", server, " %", Better::Neither);
    }
    out.add("ht-bench CPU", own, " %", Better::Neither);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_buffer_holds_exactly_the_nth_subscribe() {
        let mut buf = Vec::new();
        for n in [123_456_789, 0, 7, usize::MAX] {
            subscribe_message(&mut buf, n);
            let frame: serde_json::Value = serde_json::from_slice(&buf).expect("JSON");
            assert_eq!(
                frame,
                serde_json::json!({
                    "type": "subscribe",
                    "room": {"target": "bench", "room": format!("s{n}")},
                    "requestId": format!("s{n}"),
                })
            );
        }
    }
}
