//! The command line: every flag, each also read from an `HT_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Parser;

use super::parse::{parse_duration, parse_size};
use super::policy::PolicyCli;
use super::{parse_amqp_url, parse_redis_url};
use crate::backend::{ApiUrl, HeaderRule};

/// The command line. Every flag also reads an `HT_*` environment variable.
#[derive(Debug, Default, Parser)]
#[command(
    name = "high-templar",
    version,
    about = "Realtime websocket server beside an HTTP-only API (high-templar 3.1 compatible)",
    after_help = "Precedence: flags > HT_* environment variables > --config file > defaults.\n\
                  Logs: RUST_LOG=info (default), e.g. RUST_LOG=high_templar=debug."
)]
pub struct Cli {
    /// TOML config file (see high-templar.example.toml)
    #[arg(long, env = "HT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Public address for websockets (GET /ws/) [default: 127.0.0.1:8080]
    #[arg(long, env = "HT_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Internal address for POST /trigger/ and ops endpoints; when set, /trigger/ is served
    /// only there
    #[arg(long, env = "HT_INTERNAL_LISTEN", value_name = "ADDR")]
    pub internal_listen: Option<SocketAddr>,

    /// Backend base URL ending in /, e.g. http://127.0.0.1:8000/api/ (3.1: API_URL)
    #[arg(long, env = "HT_API_URL", value_name = "URL")]
    pub api_url: Option<ApiUrl>,

    /// Reach the backend over this unix socket instead of TCP (3.1: API_SOCKET)
    #[arg(long, env = "HT_API_SOCKET", value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// Extra CA certificates (PEM) trusted for an https:// api_url, e.g. an internal CA
    #[arg(long, env = "HT_API_CA_FILE", value_name = "PATH")]
    pub api_ca_file: Option<PathBuf>,

    /// Bearer token required on POST /trigger/ (Authorization: Bearer <token>)
    #[arg(
        long,
        env = "HT_TRIGGER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub trigger_token: Option<String>,

    /// Close connections silent for this long, e.g. 300 or 5m [default: 300s]
    #[arg(long, env = "HT_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// How often a one-line summary (connections opened, closed, refused by reason, triggers
    /// in, messages out) is logged at INFO; 0 turns it off [default: 60s]
    #[arg(long, env = "HT_LOG_SUMMARY_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub log_summary_interval: Option<Duration>,

    /// Timeout of every backend call [default: 10s]
    #[arg(long, env = "HT_BACKEND_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub backend_timeout: Option<Duration>,

    /// Extra or overriding header sent to the backend: NAME=SOURCE:KEY[:FORMAT], SOURCE one of
    /// header, query, cookie, value; FORMAT holds {} for the value. Repeatable; in the
    /// environment comma-separated. E.g. 'Authorization=query:token:Bearer {}'
    #[arg(
        long = "forward-header",
        env = "HT_FORWARD_HEADERS",
        value_name = "RULE",
        value_delimiter = ','
    )]
    pub forward_headers: Vec<HeaderRule>,

    /// POST {api_url}PATH when a client connects, e.g. user/notify_online/ [default: off]
    #[arg(long, env = "HT_ON_CONNECT", value_name = "PATH")]
    pub on_connect: Option<String>,

    /// POST {api_url}PATH when a client disconnects [default: off]
    #[arg(long, env = "HT_ON_DISCONNECT", value_name = "PATH")]
    pub on_disconnect: Option<String>,

    /// POST {api_url}PATH on each client ping [default: off]
    #[arg(long, env = "HT_ON_PING", value_name = "PATH")]
    pub on_ping: Option<String>,

    /// Largest client frame in bytes; larger closes the socket with 1009 [default: 65536]
    #[arg(long, env = "HT_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<usize>,

    /// Frames queued per connection before a slow client is disconnected [default: 1024]
    #[arg(long, env = "HT_OUTGOING_QUEUE", value_name = "FRAMES")]
    pub outgoing_queue: Option<usize>,

    /// How long triggers are kept for clients resuming with positions; 0 turns history off
    /// [default: 5m]
    #[arg(long, env = "HT_HISTORY_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub history_ttl: Option<Duration>,

    /// Most memory the history may take (payloads and index), e.g. 64MiB; 0 turns it off
    /// [default: 64MiB]
    #[arg(long, env = "HT_HISTORY_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub history_memory: Option<usize>,

    /// Bytes queued per connection before a slow client is disconnected [default: 4194304]
    #[arg(long, env = "HT_OUTGOING_QUEUE_BYTES", value_name = "BYTES")]
    pub outgoing_queue_bytes: Option<usize>,

    /// Largest POST /trigger/ body in bytes [default: 1048576]
    #[arg(long, env = "HT_MAX_TRIGGER_BODY", value_name = "BYTES")]
    pub max_trigger_body: Option<usize>,

    #[command(flatten)]
    pub policy: PolicyCli,
    /// Demo mode: a built-in backend letting everyone into {"target":"demo","room":"*"}, the
    /// demo page at /, and POST /trigger/ WITHOUT a token. Loopback addresses only.
    #[arg(long, env = "HT_DEMO", value_parser = BoolishValueParser::new())]
    pub demo: bool,

    /// DANGEROUS: let demo mode listen on a non-loopback address, where anyone who can reach
    /// it may publish without a token
    #[arg(long, env = "HT_DEMO_ALLOW_PUBLIC", value_parser = BoolishValueParser::new())]
    pub demo_allow_public: bool,
    /// Consume triggers from RabbitMQ, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    /// (3.1: RABBITMQ) [default: off]
    #[arg(
        long,
        env = "HT_AMQP_URL",
        value_name = "URL",
        hide_env_values = true,
        value_parser = parse_amqp_url
    )]
    pub amqp_url: Option<String>,

    /// Exchange the triggers are published to (direct, not durable, declared by the server)
    /// [default: hightemplar]
    #[arg(long, env = "HT_AMQP_EXCHANGE", value_name = "NAME")]
    pub amqp_exchange: Option<String>,

    /// POST /trigger/ publishes into the AMQP exchange instead of delivering locally, so a
    /// trigger sent to any node reaches every node; it then answers {"published": n}
    #[arg(long, env = "HT_AMQP_PUBLISH_HTTP_TRIGGERS")]
    pub amqp_publish_http_triggers: bool,

    /// Consume this shared, durable RabbitMQ stream (declared by the node, bound to the
    /// exchange with "*") instead of a per-node queue: positions are stream offsets, the same
    /// on every node, so a client resumes on any node; /trigger/ then always publishes into
    /// the exchange [default: off]
    #[arg(long, env = "HT_AMQP_STREAM", value_name = "NAME")]
    pub amqp_stream: Option<String>,

    /// The stream's retention by age (x-max-age), at least --history-ttl [default: 1h]
    #[arg(long, env = "HT_AMQP_STREAM_MAX_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub amqp_stream_max_age: Option<Duration>,

    /// The stream's retention by size (x-max-length-bytes): its disk on the broker
    /// [default: 1GiB]
    #[arg(long, env = "HT_AMQP_STREAM_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub amqp_stream_max_bytes: Option<usize>,

    /// Receive triggers by Redis pub/sub, e.g. redis://127.0.0.1:6379/ [default: off]
    #[arg(
        long,
        env = "HT_REDIS_URL",
        value_name = "URL",
        hide_env_values = true,
        value_parser = parse_redis_url
    )]
    pub redis_url: Option<String>,

    /// Redis pub/sub channel the triggers are published to [default: hightemplar]
    #[arg(long, env = "HT_REDIS_CHANNEL", value_name = "NAME")]
    pub redis_channel: Option<String>,
}
