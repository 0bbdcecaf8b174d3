//! Configuration: one typed [`Config`], read from a TOML file, then environment variables, then
//! command-line flags (each overriding the one before).
//!
//! Every setting is parsed and checked before the server starts, and every error is reported at
//! once on one line naming its field, in the spirit of linkerd2-proxy's `env.rs`.
//!
//! high-templar 3.1 settings map as: `API_URL` → `api_url`, `API_SOCKET` → `api_socket`,
//! `CONNECTION_HEADERS` → `forward_headers`, `RABBITMQ` → `amqp_url` (see README).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::{ApiUrl, HeaderRule, HeaderRuleToml, HttpBackendConfig};
use crate::history::HistoryLimits;

/// Default public address: loopback, so a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The original's idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the one-line summary of connections, refusals and messages goes to the log at
/// INFO: a minute is one line an operator can scan a day of (1,440), fine-grained enough to
/// date an incident.
pub const DEFAULT_LOG_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// A backend slower than this is treated as down (close 1013), not waited on forever.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest client frame. Client messages are small JSON (a subscribe is ~100 bytes); 64 KiB
/// leaves ample room while bounding what one frame can cost to buffer.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Frames queued per connection before it counts as too slow and is disconnected. At ~200
/// bytes a publish frame that is ~200 KiB at most per slow client, and 1024 absorbs a burst of
/// 1024 triggers to one room faster than any client could read them.
pub const DEFAULT_OUTGOING_QUEUE: usize = 1024;
/// Bytes queued per connection before it counts as too slow (a frame always fits into an empty
/// queue, so the largest trigger still reaches a client that reads). Ordinary frames hit the
/// frame bound first (1,024 x ~200 B); this one binds for large payloads: four 1 MiB triggers
/// behind, a client is dropped. Worst case for the node: stalled sockets x 4 MiB, e.g. 1 % of
/// 19,000 sockets stalled under 1 MiB triggers at once = 190 x 4 MiB = 760 MiB.
pub const DEFAULT_OUTGOING_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// How long the history keeps a trigger: a client away for less (a deploy, a network blip, a
/// laptop lid closed over a coffee) gets everything it missed instead of refetching.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(5 * 60);
/// What the history may cost the node, payloads and index together. A ~300-byte trigger to one
/// room is counted as ~0.5 KiB (payload, entry, index: `history.rs`), so 64 MiB holds ~130,000
/// of them: the whole 5-minute ttl up to ~430 triggers/s, ~2 minutes at 1,000/s.
pub const DEFAULT_HISTORY_MEMORY: usize = 64 * 1024 * 1024;
/// Largest `/trigger/` body: 1 MiB fits a batch of thousands of ordinary triggers.
pub const DEFAULT_MAX_TRIGGER_BODY: usize = 1024 * 1024;
/// Most triggers in one `/trigger/` batch.
pub const DEFAULT_MAX_BATCH: usize = 10_000;
/// The original's exchange: existing backends publish there, so it must stay the default.
pub const DEFAULT_AMQP_EXCHANGE: &str = "hightemplar";
/// The Redis channel, named like the exchange so one word names the trigger stream.
pub const DEFAULT_REDIS_CHANNEL: &str = "hightemplar";
/// AMQP 0.9.1 names (exchanges, queues) are short strings: at most 255 bytes.
const MAX_AMQP_NAME: usize = 255;
/// How long the shared stream (`amqp_stream`) keeps a trigger. It must cover the history ttl
/// (a starting node warms its history from the last ttl of the stream) and should cover the
/// longest outage a node is to come back from without a gap (a node away for less resumes
/// where it stopped; longer, its clients are told what cannot be proven). An hour covers a
/// broker restart, a deploy or a network partition of some minutes with room to spare.
pub const DEFAULT_AMQP_STREAM_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// The stream's segment size (`x-stream-max-segment-size-bytes`). Retention drops whole
/// segments, oldest first, and never the one being written: the stream holds its size bound
/// plus up to one segment, and its age bound plus the time one segment takes to fill.
/// RabbitMQ's default (500 MB) would make retention that coarse; 64 MiB fills in ~3 minutes at
/// 1,000 triggers/s of ~300 bytes, hours at a few per second (then the stream keeps more than
/// `amqp_stream_max_age`, which only costs disk up to the size bound).
pub const AMQP_STREAM_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The stream's size bound (`x-max-length-bytes`): the broker's disk cost of the stream, plus
/// one segment ([`AMQP_STREAM_SEGMENT_BYTES`]). At 1,000 triggers/s of ~300 bytes
/// (~400 on disk with the broker's per-message overhead) 1 GiB holds ~45 minutes; at 100/s
/// the whole hour of `DEFAULT_AMQP_STREAM_MAX_AGE`. Whichever bound is reached first wins.
pub const DEFAULT_AMQP_STREAM_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// The least `amqp_stream_max_bytes` allowed: four segments, so retention (which drops whole
/// segments) never leaves the stream empty of the node's own epoch markers.
const MIN_AMQP_STREAM_MAX_BYTES: u64 = 4 * AMQP_STREAM_SEGMENT_BYTES;

mod cli;
mod file;
mod parse;
pub mod policy;
#[cfg(test)]
mod tests;

pub use cli::Cli;
use file::{read_file, toml_error, FileConfig};
pub use parse::{parse_duration, parse_size};
use policy::{layered, Policy};

/// Checks an AMQP URL (`amqp://` or `amqps://`). The error never repeats the URL: it may hold
/// a password.
#[cfg(feature = "amqp")]
pub fn parse_amqp_url(text: &str) -> Result<String, String> {
    match text.parse::<lapin::uri::AMQPUri>() {
        Ok(_) => Ok(text.to_string()),
        Err(e) => Err(format!(
            "not an AMQP URL like amqp://user:password@host:5672/vhost ({})",
            e.replace(text, "<url>")
        )),
    }
}

/// Checks a Redis URL (`redis://`, `rediss://`, `unix://`, `redis+unix://`). The error never
/// repeats the URL: it may hold a password.
#[cfg(feature = "redis")]
pub fn parse_redis_url(text: &str) -> Result<String, String> {
    use ::redis::IntoConnectionInfo;
    match text.into_connection_info() {
        Ok(_) => Ok(text.to_string()),
        Err(e) => Err(format!(
            "not a Redis URL like redis://127.0.0.1:6379/ ({})",
            e.to_string().replace(text, "<url>")
        )),
    }
}

/// Without the `amqp` feature there is no parser to check the URL with: it is taken as it is,
/// and the configuration refused for the missing feature ([`Config::missing_features`]).
#[cfg(not(feature = "amqp"))]
pub fn parse_amqp_url(text: &str) -> Result<String, String> {
    Ok(text.to_string())
}

/// Without the `redis` feature, as [`parse_amqp_url`] without `amqp`.
#[cfg(not(feature = "redis"))]
pub fn parse_redis_url(text: &str) -> Result<String, String> {
    Ok(text.to_string())
}

fn missing_feature(option: &str, feature: &str) -> String {
    format!(
        "{option} is set but this build has no `{feature}` feature: rebuild with --features \
         {feature}"
    )
}

/// The RabbitMQ trigger source (PROTOCOL.md section 4).
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Broker URL; may hold a password, so it is never logged.
    pub url: String,
    /// Exchange to declare and consume from (direct, not durable).
    pub exchange: String,
    /// `POST /trigger/` publishes into the exchange instead of delivering locally (always on
    /// with a stream: a trigger delivered locally would have no stream position).
    pub publish_http_triggers: bool,
    /// Consume one shared, durable stream instead of a per-node queue (issue 13): positions
    /// are stream offsets, the same on every node. `None`: 3.1's per-node queue.
    pub stream: Option<StreamSettings>,
}

/// The shared stream every node consumes (`amqp_stream`, docs/scale-out.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// The stream queue's name, bound to the exchange with routing key `*`.
    pub name: String,
    /// Retention by age (`x-max-age`); at least the history ttl.
    pub max_age: Duration,
    /// Retention by size (`x-max-length-bytes`): the broker's disk for the stream.
    pub max_bytes: u64,
}

/// The Redis pub/sub trigger source.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Server URL; may hold a password, so it is never logged.
    pub url: String,
    /// Channel to subscribe to.
    pub channel: String,
}

/// Where the default backend is and how to call it.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// Required for the default HTTP backend; optional when a custom [`crate::Backend`] is
    /// plugged in.
    pub api_url: Option<ApiUrl>,
    pub api_socket: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM) for an https backend.
    pub api_ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub forward_headers: Vec<HeaderRule>,
    pub on_connect: Option<String>,
    pub on_disconnect: Option<String>,
    pub on_ping: Option<String>,
}

/// The whole, checked configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public address: websockets, and `/trigger/` when no internal address is set.
    pub listen: SocketAddr,
    /// Internal address for `/trigger/` and ops endpoints.
    pub internal_listen: Option<SocketAddr>,
    pub backend: BackendSettings,
    /// Bearer token for `/trigger/`. Without it, `/trigger/` is served only on the internal
    /// address (and not at all when there is none).
    pub trigger_token: Option<String>,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// How often the summary line is logged at INFO (`None`: never).
    pub log_summary_interval: Option<Duration>,
    /// Largest client frame; larger closes with 1009.
    pub max_message_size: usize,
    /// Per-connection outgoing queue length, in frames.
    pub outgoing_queue: usize,
    /// Per-connection outgoing queue size, in bytes.
    pub outgoing_queue_bytes: usize,
    pub max_trigger_body: usize,
    pub max_batch: usize,
    /// How much history the node keeps for recovery (PROTOCOL.md section 7).
    pub history: HistoryLimits,
    /// Origins, limits, liveness and TLS.
    pub policy: Policy,
    /// Demo mode: the built-in [`crate::demo::DemoBackend`], the demo page at `/`, and an
    /// open (token-less) `POST /trigger/` on the public address.
    pub demo: bool,
    /// Lets demo mode listen on a non-loopback address (logged as a warning at start).
    pub demo_allow_public: bool,
    /// Trigger source: RabbitMQ (`None`: off).
    pub amqp: Option<AmqpSettings>,
    /// Trigger source: Redis pub/sub (`None`: off).
    pub redis: Option<RedisSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            internal_listen: None,
            backend: BackendSettings {
                api_url: None,
                api_socket: None,
                api_ca_file: None,
                timeout: DEFAULT_BACKEND_TIMEOUT,
                forward_headers: Vec::new(),
                on_connect: None,
                on_disconnect: None,
                on_ping: None,
            },
            trigger_token: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            log_summary_interval: Some(DEFAULT_LOG_SUMMARY_INTERVAL),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            outgoing_queue: DEFAULT_OUTGOING_QUEUE,
            outgoing_queue_bytes: DEFAULT_OUTGOING_QUEUE_BYTES,
            max_trigger_body: DEFAULT_MAX_TRIGGER_BODY,
            max_batch: DEFAULT_MAX_BATCH,
            history: HistoryLimits {
                ttl: DEFAULT_HISTORY_TTL,
                memory: DEFAULT_HISTORY_MEMORY,
            },
            policy: Policy::default(),
            demo: false,
            demo_allow_public: false,
            amqp: None,
            redis: None,
        }
    }
}

/// Every problem found in a configuration, one per field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads the file named by `cli.config` (if any) and overlays the flags and environment.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    /// Parses a TOML text as a config file, with no flags (for tests and embedding).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError(vec![toml_error("config", &e)]))?;
        Self::merge(Cli::default(), file)
    }

    fn merge(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let defaults = Config::default();

        let file_listen = read(&mut errors, "listen", file.listen.map(address));
        let file_internal = read(
            &mut errors,
            "internal_listen",
            file.internal_listen.map(address),
        );
        let file_api_url = read(
            &mut errors,
            "api_url",
            file.api_url.map(|text| text.parse::<ApiUrl>()),
        );
        let file_idle = read(
            &mut errors,
            "idle_timeout",
            file.idle_timeout.map(|v| v.parse()),
        );
        let file_backend_timeout = read(
            &mut errors,
            "backend_timeout",
            file.backend_timeout.map(|v| v.parse()),
        );
        let file_summary = read(
            &mut errors,
            "log_summary_interval",
            file.log_summary_interval.map(|v| v.parse()),
        );
        let file_history_ttl = read(
            &mut errors,
            "history_ttl",
            file.history_ttl.map(|v| v.parse()),
        );
        let file_stream_max_age = read(
            &mut errors,
            "amqp_stream_max_age",
            file.amqp_stream_max_age.map(|v| v.parse()),
        );
        let file_history_memory = read(
            &mut errors,
            "history_memory",
            file.history_memory.map(|v| v.parse()),
        );
        let forward_headers =
            forward_headers(file.forward_headers, cli.forward_headers, &mut errors);
        let file_amqp_url = read(
            &mut errors,
            "amqp_url",
            file.amqp_url.map(|t| parse_amqp_url(&t)),
        );
        let file_redis_url = read(
            &mut errors,
            "redis_url",
            file.redis_url.map(|t| parse_redis_url(&t)),
        );
        let file_stream_max_bytes = read(
            &mut errors,
            "amqp_stream_max_bytes",
            file.amqp_stream_max_bytes.map(|v| v.parse()),
        );

        let stream = stream_settings(
            cli.amqp_stream.or(file.amqp_stream),
            cli.amqp_stream_max_age.or(file_stream_max_age),
            cli.amqp_stream_max_bytes.or(file_stream_max_bytes),
            &mut errors,
        );
        let amqp = amqp_settings(
            cli.amqp_url.or(file_amqp_url),
            cli.amqp_exchange.or(file.amqp_exchange),
            cli.amqp_publish_http_triggers || file.amqp_publish_http_triggers.unwrap_or(false),
            stream,
            &mut errors,
        );
        let redis = redis_settings(
            cli.redis_url.or(file_redis_url),
            cli.redis_channel.or(file.redis_channel),
            &mut errors,
        );

        let config = Config {
            listen: layered(cli.listen, file_listen, defaults.listen),
            internal_listen: cli.internal_listen.or(file_internal),
            backend: BackendSettings {
                api_url: cli.api_url.or(file_api_url),
                api_socket: cli.api_socket.or(file.api_socket),
                api_ca_file: cli.api_ca_file.or(file.api_ca_file),
                timeout: layered(
                    cli.backend_timeout,
                    file_backend_timeout,
                    defaults.backend.timeout,
                ),
                forward_headers,
                on_connect: cli.on_connect.or(file.on_connect),
                on_disconnect: cli.on_disconnect.or(file.on_disconnect),
                on_ping: cli.on_ping.or(file.on_ping),
            },
            trigger_token: cli.trigger_token.or(file.trigger_token),
            log_summary_interval: Some(layered(
                cli.log_summary_interval,
                file_summary,
                DEFAULT_LOG_SUMMARY_INTERVAL,
            ))
            .filter(|every| !every.is_zero()),
            idle_timeout: layered(cli.idle_timeout, file_idle, defaults.idle_timeout),
            max_message_size: layered(
                cli.max_message_size,
                file.max_message_size,
                defaults.max_message_size,
            ),
            outgoing_queue: layered(
                cli.outgoing_queue,
                file.outgoing_queue,
                defaults.outgoing_queue,
            ),
            outgoing_queue_bytes: layered(
                cli.outgoing_queue_bytes,
                file.outgoing_queue_bytes,
                defaults.outgoing_queue_bytes,
            ),
            max_trigger_body: layered(
                cli.max_trigger_body,
                file.max_trigger_body,
                defaults.max_trigger_body,
            ),
            max_batch: defaults.max_batch,
            history: HistoryLimits {
                ttl: layered(cli.history_ttl, file_history_ttl, defaults.history.ttl),
                memory: layered(
                    cli.history_memory,
                    file_history_memory,
                    defaults.history.memory,
                ),
            },
            policy: Policy::merge(cli.policy, file.limits, file.security, &mut errors),
            // A flag can only switch these on: a bare `--demo` has no "off" form.
            demo: cli.demo || file.demo.unwrap_or(defaults.demo),
            demo_allow_public: cli.demo_allow_public
                || file.demo_allow_public.unwrap_or(defaults.demo_allow_public),
            amqp,
            redis,
        };
        errors.extend(config.problems());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Checks that do not depend on where a value came from.
    pub fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.idle_timeout.is_zero() {
            errors.push("idle_timeout: must be more than 0".to_string());
        }
        if self.backend.timeout.is_zero() {
            errors.push("backend_timeout: must be more than 0".to_string());
        }
        if self.max_message_size < 256 {
            errors.push("max_message_size: must be at least 256 bytes".to_string());
        }
        if self.outgoing_queue == 0 {
            errors.push("outgoing_queue: must be at least 1".to_string());
        }
        if self.outgoing_queue_bytes < 1024 {
            errors.push("outgoing_queue_bytes: must be at least 1024".to_string());
        }
        if self.max_trigger_body == 0 {
            errors.push("max_trigger_body: must be at least 1".to_string());
        }
        if self.backend.api_socket.is_some() && self.backend.api_url.is_none() {
            errors.push(
                "api_socket: needs api_url too (its path and host are still used)".to_string(),
            );
        }
        if self.trigger_token.as_deref() == Some("") {
            errors.push("trigger_token: must not be empty".to_string());
        }
        if Some(self.listen) == self.internal_listen {
            errors.push("internal_listen: must differ from listen".to_string());
        }
        errors.extend(self.demo_problems());
        errors.extend(self.missing_features());
        for (field, path) in [
            ("on_connect", &self.backend.on_connect),
            ("on_disconnect", &self.backend.on_disconnect),
            ("on_ping", &self.backend.on_ping),
        ] {
            if let Some(path) = path {
                let valid = !path.is_empty()
                    && !path.contains("://")
                    && format!("/{path}")
                        .parse::<axum::http::uri::PathAndQuery>()
                        .is_ok();
                if !valid {
                    errors.push(format!("{field}: {path:?} is not a path under api_url"));
                }
            }
        }
        if let Some(amqp) = &self.amqp {
            if amqp.exchange.is_empty() || amqp.exchange.len() > MAX_AMQP_NAME {
                errors.push(format!(
                    "amqp_exchange: must be 1 to {MAX_AMQP_NAME} bytes long"
                ));
            }
            if let Some(stream) = &amqp.stream {
                errors.extend(self.stream_problems(stream));
            }
        }
        if let Some(redis) = &self.redis {
            if redis.channel.is_empty() {
                errors.push("redis_channel: must not be empty".to_string());
            }
        }
        errors
    }

    /// The broker options set that this build has no code for: the keys are known in every
    /// build (a config file stays valid), but a node without the engine must not start as if
    /// it read the broker. `Server::start` checks this too, for a hand-built `Config`.
    pub fn missing_features(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if cfg!(not(feature = "amqp")) && self.amqp.is_some() {
            missing.push(missing_feature("amqp_url", "amqp"));
        }
        if cfg!(not(feature = "redis")) && self.redis.is_some() {
            missing.push(missing_feature("redis_url", "redis"));
        }
        missing
    }

    /// A stream must keep what the history is to be warmed from, and every trigger must get a
    /// stream position.
    fn stream_problems(&self, stream: &StreamSettings) -> Vec<String> {
        let mut errors = Vec::new();
        if stream.name.is_empty() || stream.name.len() > MAX_AMQP_NAME {
            errors.push(format!(
                "amqp_stream: must be 1 to {MAX_AMQP_NAME} bytes long"
            ));
        }
        if stream.max_age < self.history.ttl || stream.max_age < Duration::from_secs(1) {
            errors.push(format!(
                "amqp_stream_max_age: must be at least history_ttl ({}s) and 1s",
                self.history.ttl.as_secs()
            ));
        }
        if stream.max_bytes < MIN_AMQP_STREAM_MAX_BYTES {
            errors.push(format!(
                "amqp_stream_max_bytes: must be at least {MIN_AMQP_STREAM_MAX_BYTES} (four \
                 segments of the stream)"
            ));
        }
        if self.redis.is_some() {
            errors.push(
                "redis_url: cannot be combined with amqp_stream (its triggers would have no \
                 stream position); publish them to the exchange instead"
                    .to_string(),
            );
        }
        if !self.amqp.as_ref().is_some_and(|a| a.publish_http_triggers) {
            errors.push("amqp_publish_http_triggers: must be on with amqp_stream".to_string());
        }
        errors
    }

    /// Demo mode publishes without a token, so it stays on loopback unless forced, and it
    /// brings its own backend, so a configured one would be silently ignored.
    fn demo_problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !self.demo {
            if self.demo_allow_public {
                errors.push("demo_allow_public: only means something with demo".to_string());
            }
            return errors;
        }
        if !self.demo_allow_public && !self.listen.ip().is_loopback() {
            errors.push(format!(
                "listen: demo mode refuses the non-loopback address {} (anyone reaching it could \
                 publish without a token); use 127.0.0.1, or force it with --demo-allow-public",
                self.listen
            ));
        }
        if self.backend.api_url.is_some() || self.backend.api_socket.is_some() {
            errors.push(
                "api_url: demo mode has its own backend; remove api_url/api_socket or --demo"
                    .to_string(),
            );
        }
        errors
    }

    /// The default backend's settings; `None` when `api_url` is not set.
    pub fn http_backend(&self) -> Option<HttpBackendConfig> {
        let b = &self.backend;
        Some(HttpBackendConfig {
            api_url: b.api_url.clone()?,
            api_socket: b.api_socket.clone(),
            ca_file: b.api_ca_file.clone(),
            timeout: b.timeout,
            forward_headers: b.forward_headers.clone(),
            on_connect: b.on_connect.clone(),
            on_disconnect: b.on_disconnect.clone(),
            on_ping: b.on_ping.clone(),
        })
    }
}

/// A file's value, parsed; an error is reported under `field` and the value left out.
fn read<T, E: std::fmt::Display>(
    errors: &mut Vec<String>,
    field: &str,
    value: Option<Result<T, E>>,
) -> Option<T> {
    value?
        .map_err(|e| errors.push(format!("{field}: {e}")))
        .ok()
}

/// An address (`listen`, `internal_listen`) as the file gives it.
fn address(text: String) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?} is not an address: {e}"))
}

/// The header rules: the file's, then the flags' and environment's (later rules override
/// earlier ones by name).
fn forward_headers(
    file: Vec<HeaderRuleToml>,
    flags: Vec<HeaderRule>,
    errors: &mut Vec<String>,
) -> Vec<HeaderRule> {
    let mut rules: Vec<HeaderRule> = Vec::new();
    for (i, rule) in file.into_iter().enumerate() {
        match HeaderRule::try_from(rule) {
            Ok(rule) => rules.push(rule),
            Err(e) => errors.push(format!("forward_headers[{i}]: {e}")),
        }
    }
    rules.extend(flags);
    rules
}

/// `amqp_stream` and its retention; the retention settings alone are an error.
fn stream_settings(
    name: Option<String>,
    max_age: Option<Duration>,
    max_bytes: Option<usize>,
    errors: &mut Vec<String>,
) -> Option<StreamSettings> {
    match name {
        Some(name) => Some(StreamSettings {
            name,
            max_age: max_age.unwrap_or(DEFAULT_AMQP_STREAM_MAX_AGE),
            max_bytes: max_bytes.map_or(DEFAULT_AMQP_STREAM_MAX_BYTES, |bytes| bytes as u64),
        }),
        None => {
            if max_age.is_some() {
                errors.push("amqp_stream_max_age: needs amqp_stream".to_string());
            }
            if max_bytes.is_some() {
                errors.push("amqp_stream_max_bytes: needs amqp_stream".to_string());
            }
            None
        }
    }
}

/// The RabbitMQ source when `amqp_url` is set; its other settings alone are an error.
fn amqp_settings(
    url: Option<String>,
    exchange: Option<String>,
    publish_http_triggers: bool,
    stream: Option<StreamSettings>,
    errors: &mut Vec<String>,
) -> Option<AmqpSettings> {
    match url {
        Some(url) => Some(AmqpSettings {
            url,
            exchange: exchange.unwrap_or_else(|| DEFAULT_AMQP_EXCHANGE.to_string()),
            // With a stream, /trigger/ must go through the exchange to get a position.
            publish_http_triggers: publish_http_triggers || stream.is_some(),
            stream,
        }),
        None => {
            if exchange.is_some() {
                errors.push("amqp_exchange: needs amqp_url".to_string());
            }
            if publish_http_triggers {
                errors.push("amqp_publish_http_triggers: needs amqp_url".to_string());
            }
            if stream.is_some() {
                errors.push("amqp_stream: needs amqp_url".to_string());
            }
            None
        }
    }
}

/// The Redis source when `redis_url` is set; a channel alone is an error.
fn redis_settings(
    url: Option<String>,
    channel: Option<String>,
    errors: &mut Vec<String>,
) -> Option<RedisSettings> {
    match url {
        Some(url) => Some(RedisSettings {
            url,
            channel: channel.unwrap_or_else(|| DEFAULT_REDIS_CHANNEL.to_string()),
        }),
        None => {
            if channel.is_some() {
                errors.push("redis_channel: needs redis_url".to_string());
            }
            None
        }
    }
}
