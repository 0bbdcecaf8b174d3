//! Throughput of the AMQP trigger source, in one run: how many triggers per second one node
//! consumes from its own per-node queue (3.1's topology) and from the shared stream
//! (`amqp_stream`); then how long a node starting on that stream takes to warm its history
//! from it (PROTOCOL.md section 7, docs/scale-out.md).
//!
//! ```text
//! cargo run --release --example amqp_throughput -- [TRIGGERS]   # default 300000
//! HT_AMQP_URL=amqp://user:pass@host:5672/%2f cargo run --release --example amqp_throughput
//! ```
//!
//! Each measurement starts a node in-process on a fresh exchange (no websocket subscribers, so
//! this measures the broker link, parsing, the sequencer and the history, not fan-out), then
//! runs itself again as a separate publisher process that sends TRIGGERS small triggers to the
//! exchange as fast as it can. It reports the publish rate, the rate at which the node consumed
//! them (first publish → last trigger counted by the node), the rate at which the node drained
//! the backlog left when publishing ended, and the node's CPU time per trigger. The default,
//! 300,000, is five minutes at 1,000 triggers/s: the warm-up then starts a second node on the
//! stream the first one read, whose last five minutes hold all of them, and times it until it
//! is ready. Everything (RabbitMQ included) runs on one machine, so on a small one they share
//! its cores.

use std::time::{Duration, Instant};

use high_templar::config::{
    AmqpSettings, StreamSettings, DEFAULT_AMQP_STREAM_MAX_AGE, DEFAULT_AMQP_STREAM_MAX_BYTES,
};
use high_templar::{Config, Handle, Server};
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Five minutes of triggers at 1,000/s: the warm-up measured is the one the issue asks about.
const DEFAULT_TRIGGERS: u64 = 300_000;
/// Longest the check waits for the node to connect, and to consume everything.
const DEADLINE: Duration = Duration::from_secs(300);
/// The first argument that makes this binary the publisher child.
const PUBLISHER_MODE: &str = "--publisher";

fn amqp_url() -> String {
    std::env::var("HT_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, exchange, total] if mode == PUBLISHER_MODE => {
            publish(exchange, total.parse()?).await
        }
        [total] => measure(total.parse()?).await,
        [] => measure(DEFAULT_TRIGGERS).await,
        _ => anyhow::bail!("usage: amqp_throughput [TRIGGERS]"),
    }
}

/// The publisher child: `basic_publish` of `total` triggers, like a 3.1 backend.
async fn publish(exchange: &str, total: u64) -> anyhow::Result<()> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let start = Instant::now();
    for i in 0..total {
        let body = format!(r#"{{"rooms":[{{"target":"bench","id":{i}}}],"data":{{"i":{i}}}}}"#);
        channel
            .basic_publish(
                exchange.into(),
                "*".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await?;
    }
    // Make sure everything left the socket before reporting.
    channel.close(200, "done".into()).await?;
    println!("{}", start.elapsed().as_secs_f64());
    Ok(())
}

async fn measure(total: u64) -> anyhow::Result<()> {
    let url = amqp_url();
    println!("== per-node queue (3.1's topology)");
    let exchange = format!("ht-bench-{}", uuid::Uuid::new_v4());
    let node = Server::new(node_config(&exchange, None)?).start().await?;
    consume(&node, &exchange, total).await?;
    node.shutdown(Duration::from_secs(2)).await;
    delete(&url, &exchange, None).await?;

    println!("== shared stream (amqp_stream)");
    let exchange = format!("ht-bench-{}", uuid::Uuid::new_v4());
    let stream = format!("ht-bench-{}", uuid::Uuid::new_v4());
    let node = Server::new(node_config(&exchange, Some(&stream))?)
        .start()
        .await?;
    consume(&node, &exchange, total).await?;

    println!("== warm-up of a node starting on that stream");
    let cpu_before = process_cpu();
    let started = Instant::now();
    let second = Server::new(node_config(&exchange, Some(&stream))?)
        .start()
        .await?;
    let status = wait(|| {
        let status = second.status();
        (status["stream"]["warm_up"]["state"] == "warm").then_some(status)
    })
    .await?;
    let ready_in = started.elapsed();
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let stream_status = &status["stream"];
    println!(
        "ready:     {:.2} s after start ({} messages read to find the epoch; the warm-up itself \
         {} ms, {} messages read)",
        ready_in.as_secs_f64(),
        stream_status["epoch_read"],
        stream_status["warm_up"]["ms"],
        stream_status["warm_up"]["read"],
    );
    println!(
        "history:   {} triggers, {:.1} MiB (payloads and index)",
        status["history"]["entries"],
        status["history"]["bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0
    );
    if let Some(cpu) = cpu {
        println!(
            "node cpu:  {:.2} s  ({:.1} µs per message read)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / stream_status["warm_up"]["read"].as_f64().unwrap_or(1.0)
        );
    }
    second.shutdown(Duration::from_secs(2)).await;
    node.shutdown(Duration::from_secs(2)).await;
    delete(&url, &exchange, Some(&stream)).await?;
    Ok(())
}

/// A node on `exchange`, reading `stream` when given. Its history may hold the whole run
/// (256 MiB: 300,000 small triggers cost ~70 MiB), so the warm-up keeps everything it reads.
fn node_config(exchange: &str, stream: Option<&str>) -> anyhow::Result<Config> {
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        amqp: Some(AmqpSettings {
            url: amqp_url(),
            exchange: exchange.to_string(),
            publish_http_triggers: stream.is_some(),
            stream: stream.map(|name| StreamSettings {
                name: name.to_string(),
                max_age: DEFAULT_AMQP_STREAM_MAX_AGE,
                max_bytes: DEFAULT_AMQP_STREAM_MAX_BYTES,
            }),
        }),
        ..Config::default()
    };
    config.history.memory = 256 * 1024 * 1024;
    // Never called: no websocket client connects.
    config.backend.api_url = Some(
        "http://127.0.0.1:9/api/"
            .parse()
            .map_err(anyhow::Error::msg)?,
    );
    Ok(config)
}

/// Polls `ready` every 5 ms until it answers, for at most [`DEADLINE`].
async fn wait<T>(mut ready: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        anyhow::ensure!(started.elapsed() < DEADLINE, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes `total` triggers from a child process and reports how `node` consumed them.
async fn consume(node: &Handle, exchange: &str, total: u64) -> anyhow::Result<()> {
    wait(|| {
        let status = node.status();
        let warm = status
            .get("stream")
            .is_none_or(|s| s["warm_up"]["state"] == "warm");
        (status["amqp_connected"] == true && warm).then_some(())
    })
    .await?;
    let consumed = || {
        node.status()["triggers_received"]["amqp"]
            .as_u64()
            .unwrap_or(0)
    };

    let cpu_before = process_cpu();
    let start = Instant::now();
    let publisher = tokio::process::Command::new(std::env::current_exe()?)
        .args([PUBLISHER_MODE, exchange, &total.to_string()])
        .output()
        .await?;
    anyhow::ensure!(
        publisher.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&publisher.stderr)
    );
    let published_in = start.elapsed();
    let consumed_when_published = consumed();
    while consumed() < total {
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "only {} of {total} consumed",
            consumed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let consumed_in = start.elapsed();
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after - before);

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!("triggers:  {total}");
    println!(
        "published: {:.2} s  ({:.0} triggers/s, separate process)",
        published_in.as_secs_f64(),
        rate(total, published_in)
    );
    println!(
        "consumed:  {:.2} s  ({:.0} triggers/s, first publish to last consumed)",
        consumed_in.as_secs_f64(),
        rate(total, consumed_in)
    );
    // Once the publisher is done, the node drains its backlog with the broker only delivering:
    // the closest this single-machine check gets to the node's own consuming rate.
    let backlog = total - consumed_when_published;
    let drain = consumed_in.saturating_sub(published_in);
    if backlog > 0 && !drain.is_zero() {
        println!(
            "drained:   {backlog} queued when publishing ended, in {:.2} s  ({:.0} triggers/s)",
            drain.as_secs_f64(),
            rate(backlog, drain)
        );
    }
    if let Some(cpu) = cpu {
        println!(
            "node cpu:  {:.2} s  ({:.1} µs per trigger, so ~{:.0} triggers/s per core)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / total as f64,
            total as f64 / cpu.as_secs_f64()
        );
    }
    println!("invalid:   {}", node.status()["triggers_invalid"]);
    Ok(())
}

/// Removes the run's exchange, and its stream (durable: it would stay for good).
async fn delete(url: &str, exchange: &str, stream: Option<&str>) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    if let Some(stream) = stream {
        channel
            .queue_delete(stream.into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}

/// CPU time (user + system) of this process so far, from Linux's `/proc/self/stat`; `None`
/// elsewhere. Its resolution is the kernel's clock tick (10 ms), ample over seconds.
fn process_cpu() -> Option<Duration> {
    /// `USER_HZ`: the unit of the stat file's times, 100 on every Linux platform.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / TICKS_PER_SECOND))
}
