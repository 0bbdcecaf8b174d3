//! The config file: the same settings as the flags, in TOML, snake_case.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::parse::{parse_duration, parse_size};
use super::policy::{LimitsFile, SecurityFile};
use super::ConfigError;

/// The config file: the same settings as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<String>,
    pub(super) internal_listen: Option<String>,
    pub(super) api_url: Option<String>,
    pub(super) api_socket: Option<PathBuf>,
    pub(super) api_ca_file: Option<PathBuf>,
    pub(super) trigger_token: Option<String>,
    pub(super) idle_timeout: Option<DurationValue>,
    pub(super) backend_timeout: Option<DurationValue>,
    pub(super) log_summary_interval: Option<DurationValue>,
    #[serde(default)]
    pub(super) forward_headers: Vec<crate::backend::HeaderRuleToml>,
    pub(super) on_connect: Option<String>,
    pub(super) on_disconnect: Option<String>,
    pub(super) on_ping: Option<String>,
    pub(super) max_message_size: Option<usize>,
    pub(super) outgoing_queue: Option<usize>,
    pub(super) outgoing_queue_bytes: Option<usize>,
    pub(super) max_trigger_body: Option<usize>,
    pub(super) history_ttl: Option<DurationValue>,
    pub(super) history_memory: Option<SizeValue>,
    #[serde(default)]
    pub(super) limits: LimitsFile,
    #[serde(default)]
    pub(super) security: SecurityFile,
    pub(super) demo: Option<bool>,
    pub(super) demo_allow_public: Option<bool>,
    pub(super) amqp_url: Option<String>,
    pub(super) amqp_exchange: Option<String>,
    pub(super) amqp_publish_http_triggers: Option<bool>,
    pub(super) amqp_stream: Option<String>,
    pub(super) amqp_stream_max_age: Option<DurationValue>,
    pub(super) amqp_stream_max_bytes: Option<SizeValue>,
    pub(super) redis_url: Option<String>,
    pub(super) redis_channel: Option<String>,
}

/// A duration in a file: seconds as a number, or text like "10s", "5m".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum DurationValue {
    Seconds(f64),
    Text(String),
}

impl DurationValue {
    pub(super) fn parse(&self) -> Result<Duration, String> {
        match self {
            DurationValue::Seconds(s) => Duration::try_from_secs_f64(*s).map_err(|e| e.to_string()),
            DurationValue::Text(t) => parse_duration(t),
        }
    }
}

/// A size in a file: bytes as a number, or text like "64MiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SizeValue {
    Bytes(usize),
    Text(String),
}

impl SizeValue {
    pub(super) fn parse(&self) -> Result<usize, String> {
        match self {
            SizeValue::Bytes(bytes) => Ok(*bytes),
            SizeValue::Text(text) => parse_size(text),
        }
    }
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(vec![format!("config: cannot read {}: {e}", path.display())]))?;
    toml::from_str(&text)
        .map_err(|e| ConfigError(vec![toml_error(&path.display().to_string(), &e)]))
}

/// A TOML error on one line, naming the file and field.
pub(super) fn toml_error(origin: &str, error: &toml::de::Error) -> String {
    let message = error.message().replace('\n', " ");
    match error.span() {
        Some(span) => format!("{origin}: {message} (at byte {})", span.start),
        None => format!("{origin}: {message}"),
    }
}
