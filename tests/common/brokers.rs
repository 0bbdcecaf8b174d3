//! The machine's real RabbitMQ and Redis, for the trigger source tests.
//!
//! When a broker is unreachable the test fails, in CI and outside it (never a silent pass).

use high_templar::config::{
    AmqpSettings, RedisSettings, StreamSettings, DEFAULT_AMQP_STREAM_MAX_AGE,
    DEFAULT_AMQP_STREAM_MAX_BYTES,
};
use high_templar::{Config, Handle};
#[cfg(feature = "amqp")]
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
#[cfg(feature = "amqp")]
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};

use super::{eventually, trigger, Client, WAIT};

/// The test broker; override with `HT_TEST_AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("HT_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// The test Redis; override with `HT_TEST_REDIS_URL`.
pub fn redis_url() -> String {
    std::env::var("HT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string())
}

/// A name no other test uses, for exchanges, channels, rooms.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// A broker test without its broker fails, in CI and outside it: a test that returned early
/// would report a pass for what it never checked.
fn missing(service: &str, error: &dyn std::fmt::Display) -> ! {
    panic!(
        "{service} is not reachable ({error}): scripts/ci-brokers.sh installs and starts it, \
         or run `cargo test -- --skip amqp --skip redis` knowingly"
    );
}

/// A plain AMQP publisher, as a high-templar 3.1 backend is (pika's `basic_publish`).
#[cfg(feature = "amqp")]
pub struct AmqpPublisher {
    pub connection: Connection,
    channel: Channel,
}

#[cfg(feature = "amqp")]
impl AmqpPublisher {
    /// Connects; fails the test when RabbitMQ is not there.
    pub async fn connect() -> AmqpPublisher {
        let url = amqp_url();
        let connect = Connection::connect(&url, ConnectionProperties::default());
        let connection = match tokio::time::timeout(WAIT, connect).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => missing("RabbitMQ", &error),
            Err(_) => missing("RabbitMQ", &"connect timed out"),
        };
        let channel = connection.create_channel().await.expect("channel");
        AmqpPublisher {
            connection,
            channel,
        }
    }

    /// Removes a test's exchange (they are not durable, but would stay until a broker restart).
    pub async fn delete_exchange(&self, exchange: &str) {
        self.channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await
            .expect("exchange_delete");
    }

    /// Deletes a queue or stream (a test's streams are durable: they would stay for good).
    pub async fn delete_queue(&self, queue: &str) {
        self.channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("queue_delete");
    }

    /// `basic_publish(exchange, routing_key='*', body)`.
    pub async fn publish(&self, exchange: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                exchange.into(),
                "*".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("basic_publish")
            .await
            .expect("published");
    }
}

/// A Redis connection for PUBLISH and admin commands; fails the test when Redis is not there.
#[cfg(feature = "redis")]
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).expect("redis url");
    match tokio::time::timeout(WAIT, client.get_multiplexed_async_connection()).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => missing("Redis", &error),
        Err(_) => missing("Redis", &"connect timed out"),
    }
}

/// `config` consuming from `exchange` on the test broker.
pub fn with_amqp(mut config: Config, exchange: &str) -> Config {
    config.amqp = Some(AmqpSettings {
        url: amqp_url(),
        exchange: exchange.to_string(),
        publish_http_triggers: false,
        stream: None,
    });
    config
}

/// `config` reading the shared stream `stream`, bound to `exchange`, with the default
/// retention (HTTP triggers are published through the exchange, as stream mode requires).
pub fn with_stream(config: Config, exchange: &str, stream: &str) -> Config {
    let mut config = with_amqp(config, exchange);
    if let Some(amqp) = config.amqp.as_mut() {
        amqp.publish_http_triggers = true;
        amqp.stream = Some(StreamSettings {
            name: stream.to_string(),
            max_age: DEFAULT_AMQP_STREAM_MAX_AGE,
            max_bytes: DEFAULT_AMQP_STREAM_MAX_BYTES,
        });
    }
    config
}

/// Waits until `server` has warmed its history from its stream (and so is ready); returns
/// the status's `stream` entry.
pub async fn wait_warm(server: &Handle) -> Value {
    eventually(WAIT, || async {
        let status = server.status();
        match status["stream"]["warm_up"]["state"] == "warm" {
            true => Ok(status["stream"].clone()),
            false => Err(format!("the stream did not warm: {status}")),
        }
    })
    .await
}

/// The broker's id of the connection named after the node listening on `addr`.
pub fn connection_pid(addr: std::net::SocketAddr) -> String {
    let needle = format!("on {addr}\"");
    let listing = admin(
        "rabbitmqctl",
        &["-q", "list_connections", "pid", "client_properties"],
    );
    let line = listing
        .lines()
        .find(|line| line.contains(&needle))
        .unwrap_or_else(|| panic!("no connection named {needle} in {listing}"));
    line.split('\t').next().expect("pid column").to_string()
}

/// `config` subscribed to `channel` at `url`.
pub fn with_redis(mut config: Config, url: &str, channel: &str) -> Config {
    config.redis = Some(RedisSettings {
        url: url.to_string(),
        channel: channel.to_string(),
    });
    config
}

/// Waits until the status field `field` (e.g. `amqp_connects`) reaches at least `n`, with the
/// source connected; returns the status.
pub async fn wait_for_connects(server: &Handle, source: &str, n: u64) -> Value {
    eventually(WAIT, || async {
        let status = server.status();
        let connects = status[format!("{source}_connects")].as_u64().unwrap_or(0);
        match connects >= n && status[format!("{source}_connected")] == Value::Bool(true) {
            true => Ok(status),
            false => Err(format!("{source} did not connect {n} time(s): {status}")),
        }
    })
    .await
}

/// Waits until the status counter `field` reaches `n`.
pub async fn wait_for_count(server: &Handle, field: &str, n: u64) -> Value {
    eventually(WAIT, || async {
        let status = server.status();
        match status[field].as_u64().unwrap_or(0) >= n {
            true => Ok(status),
            false => Err(format!("{field} did not reach {n}: {status}")),
        }
    })
    .await
}

/// Runs a broker admin command (`rabbitmqctl ...`, `redis-cli ...`), asserting it succeeded;
/// returns its standard output.
pub fn admin(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The rooms the broker tests' backends allow: every customer's messages.
pub fn allowed() -> Value {
    json!([{"target": "message", "customer": "*"}])
}

/// A client of `server` subscribed to customer `customer`'s messages as `request_id`.
pub async fn subscriber(server: &Handle, customer: &str, request_id: &str) -> Client {
    let mut client = Client::authorized(server.local_addr).await;
    client
        .subscribe(
            json!({"target": "message", "customer": customer}),
            request_id,
        )
        .await;
    client
}

/// A trigger body for customer `customer`'s messages.
pub fn trigger_for(customer: &str, data: Value) -> String {
    trigger(json!([{"target": "message", "customer": customer}]), data)
}
