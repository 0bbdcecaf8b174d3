//! What the server allows: origins, per-connection and per-node limits, liveness, TLS.
//!
//! Settings come in through [`PolicyCli`] (flags and `HT_*` variables, flattened into the main
//! command line) and the `[limits]` and `[security]` tables of the config file, and end up in
//! one typed [`Policy`]. Every default is a named constant with its reasoning.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::parse::parse_duration;
use crate::proxy::TrustedProxies;
use crate::room::RoomLimits;

/// Subscriptions per connection. 3.1 had no cap, and its own load test subscribes 1,500 rooms
/// on one socket; dashboards subscribe to long lists at load. A subscription to a room of its
/// own costs the node ~1.3 KiB (hub entry, room, index postings, the session's requestId map;
/// measured: RSS of one connection subscribing 5,000 and 10,000 rooms, README "Limits"), so
/// the cap bounds one socket at 5,000 x 1.3 KiB = ~6.5 MiB; the per-IP connection limit and
/// the message budget (5,000 subscribes take ~15 s after the burst) bound one host.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 5_000;
/// Sustained client frames per second per connection (messages, pings). Over budget a
/// connection is not read until the budget refills (see `close_flooders`): a flood costs the
/// node at most ~200 x 30 us = 6 ms of CPU a second per socket, and a burst only waits.
pub const DEFAULT_MESSAGES_PER_SECOND: f64 = 200.0;
/// Frames taken at once above the rate: a page subscribing to 1,500 rooms at load (3.1's load
/// test) is answered without a pause.
pub const DEFAULT_MESSAGE_BURST: u32 = 2_000;
/// Open websockets per client IP. Offices behind one NAT share an address, so this is a guard
/// against one host exhausting the node, not a per-user limit.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
/// Bootstrap calls in flight at once: a reconnect storm after a deploy queues here instead of
/// flattening the backend with thousands of simultaneous requests.
pub const DEFAULT_MAX_CONCURRENT_BOOTSTRAPS: usize = 64;
/// How often the server sends a websocket ping; a connection that has sent nothing at all (not
/// even a pong) for two intervals is half-open and closed.
pub const DEFAULT_WS_PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long open connections get to close on SIGTERM/SIGINT before the process exits.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a new socket may take to send its request head (and its TLS handshake before it).
/// A browser sends the head in the first packet after connecting, so a second is already
/// generous across the world; 10 s also covers a phone on a bad link. A socket that trickles
/// header bytes (slowloris) holds a descriptor for this long at most.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit and security flags; flattened into [`super::Cli`].
#[derive(Debug, Default, clap::Args)]
pub struct PolicyCli {
    /// Origins allowed to open websockets, comma-separated; patterns like https://*.example.com;
    /// "*" allows any (insecure). Default: same origin as the Host header
    #[arg(
        long,
        env = "HT_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Most subscriptions per connection [default: 5000]
    #[arg(long, env = "HT_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,

    /// Sustained client frames per second per connection; above it the socket is not read
    /// until the budget refills [default: 200]
    #[arg(long, env = "HT_MESSAGES_PER_SECOND", value_name = "RATE")]
    pub messages_per_second: Option<f64>,

    /// Client frames allowed in a burst above the rate [default: 2000]
    #[arg(long, env = "HT_MESSAGE_BURST", value_name = "N")]
    pub message_burst: Option<u32>,

    /// Close a connection over its message budget with 1008 "rate-limited" instead of slowing
    /// it down
    #[arg(long, env = "HT_CLOSE_FLOODERS")]
    pub close_flooders: bool,

    /// Most open websockets on this node; more get HTTP 503 [default: what the open-files
    /// limit leaves room for, logged at start]
    #[arg(long, env = "HT_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most open websockets per client IP; more get HTTP 429 [default: 1000]
    #[arg(long, env = "HT_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Proxies whose X-Forwarded-For / X-Real-IP name the client (for per-IP limits and
    /// logs), comma-separated addresses or networks; "" trusts none [default: 127.0.0.0/8,::1]
    #[arg(
        long,
        env = "HT_TRUSTED_PROXIES",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub trusted_proxies: Option<Vec<String>>,

    /// Replaced by --trusted-proxies; setting it is an error that says so
    #[arg(long, env = "HT_CLIENT_IP_HEADER", value_name = "HEADER", hide = true)]
    pub client_ip_header: Option<String>,

    /// Time a new socket gets to send its request head (after its TLS handshake, within the
    /// same time); slower ones are closed [default: 10s]
    #[arg(long, env = "HT_REQUEST_HEAD_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub request_head_timeout: Option<Duration>,

    /// Most keys in a room object [default: 16]
    #[arg(long, env = "HT_MAX_ROOM_KEYS", value_name = "N")]
    pub max_room_keys: Option<usize>,

    /// Longest room key or value, in bytes [default: 256]
    #[arg(long, env = "HT_MAX_ROOM_VALUE_LEN", value_name = "BYTES")]
    pub max_room_value_len: Option<usize>,

    /// Bootstrap calls in flight at once [default: 64]
    #[arg(long, env = "HT_MAX_CONCURRENT_BOOTSTRAPS", value_name = "N")]
    pub max_concurrent_bootstraps: Option<usize>,

    /// Websocket ping interval; 0 turns pings off [default: 30s]
    #[arg(long, env = "HT_WS_PING_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub ws_ping_interval: Option<Duration>,

    /// Re-run bootstrap this often per connection, dropping rooms no longer allowed [default: off]
    #[arg(long, env = "HT_REAUTH_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub reauth_interval: Option<Duration>,

    /// Grace period for connections to close on SIGTERM/SIGINT [default: 10s]
    #[arg(long, env = "HT_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,

    /// Refuse the "status" client message (it shows node-wide counts to any user)
    #[arg(long, env = "HT_DISABLE_STATUS")]
    pub disable_status: bool,

    /// Serve TLS with this PEM certificate chain (needs --tls-key)
    #[arg(long, env = "HT_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert
    #[arg(long, env = "HT_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

/// The `[limits]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    max_subscriptions: Option<usize>,
    messages_per_second: Option<f64>,
    message_burst: Option<u32>,
    close_flooders: Option<bool>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_room_keys: Option<usize>,
    max_room_value_len: Option<usize>,
    max_concurrent_bootstraps: Option<usize>,
}

/// The `[security]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecurityFile {
    allowed_origins: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    /// Only to say what replaced it.
    client_ip_header: Option<String>,
    request_head_timeout: Option<String>,
    ws_ping_interval: Option<String>,
    reauth_interval: Option<String>,
    shutdown_grace: Option<String>,
    status_enabled: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// Where TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Empty: same origin only. `"*"`: any. Otherwise exact origins or `scheme://*.domain`.
    pub allowed_origins: Vec<String>,
    pub max_subscriptions: usize,
    pub messages_per_second: f64,
    pub message_burst: u32,
    /// Over budget: close with 1008 (true) or stop reading until the budget refills (false).
    pub close_flooders: bool,
    /// `None`: what the open-files limit leaves room for, worked out at start
    /// (`server::capacity`).
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: usize,
    /// Peers whose forwarded-address headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// Deadline for a new socket's TLS handshake and request head.
    pub request_head_timeout: Duration,
    pub room_limits: RoomLimits,
    pub max_concurrent_bootstraps: usize,
    /// `None`: no server pings.
    pub ws_ping_interval: Option<Duration>,
    pub reauth_interval: Option<Duration>,
    pub shutdown_grace: Duration,
    pub status_enabled: bool,
    pub tls: Option<TlsFiles>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_origins: Vec::new(),
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            messages_per_second: DEFAULT_MESSAGES_PER_SECOND,
            message_burst: DEFAULT_MESSAGE_BURST,
            close_flooders: false,
            max_connections: None,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            trusted_proxies: TrustedProxies::default(),
            request_head_timeout: DEFAULT_REQUEST_HEAD_TIMEOUT,
            room_limits: RoomLimits::default(),
            max_concurrent_bootstraps: DEFAULT_MAX_CONCURRENT_BOOTSTRAPS,
            ws_ping_interval: Some(DEFAULT_WS_PING_INTERVAL),
            reauth_interval: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            status_enabled: true,
            tls: None,
        }
    }
}

impl Policy {
    /// Merges flags/environment over the file's tables over the defaults; errors name fields.
    pub(crate) fn merge(
        cli: PolicyCli,
        limits: LimitsFile,
        security: SecurityFile,
        errors: &mut Vec<String>,
    ) -> Policy {
        let d = Policy::default();
        let mut duration = |field: &str, text: Option<String>| -> Option<Duration> {
            parse_duration(&text?)
                .map_err(|e| errors.push(format!("security.{field}: {e}")))
                .ok()
        };
        let file_ping = duration("ws_ping_interval", security.ws_ping_interval);
        let file_reauth = duration("reauth_interval", security.reauth_interval);
        let file_grace = duration("shutdown_grace", security.shutdown_grace);
        let file_head = duration("request_head_timeout", security.request_head_timeout);

        let allowed_origins = origins(cli.allowed_origins, security.allowed_origins, errors);
        if cli.client_ip_header.or(security.client_ip_header).is_some() {
            errors.push(
                "client_ip_header: replaced by trusted_proxies (--trusted-proxies): \
                 X-Forwarded-For and X-Real-IP are read from those peers only (default \
                 loopback, which covers nginx on the same host); remove client_ip_header"
                    .to_string(),
            );
        }
        let ping = layered(cli.ws_ping_interval, file_ping, DEFAULT_WS_PING_INTERVAL);
        let policy = Policy {
            allowed_origins,
            max_subscriptions: layered(
                cli.max_subscriptions,
                limits.max_subscriptions,
                d.max_subscriptions,
            ),
            messages_per_second: layered(
                cli.messages_per_second,
                limits.messages_per_second,
                d.messages_per_second,
            ),
            message_burst: layered(cli.message_burst, limits.message_burst, d.message_burst),
            close_flooders: cli.close_flooders || limits.close_flooders.unwrap_or(false),
            max_connections: cli.max_connections.or(limits.max_connections),
            max_connections_per_ip: layered(
                cli.max_connections_per_ip,
                limits.max_connections_per_ip,
                d.max_connections_per_ip,
            ),
            trusted_proxies: trusted_proxies(
                cli.trusted_proxies.or(security.trusted_proxies),
                d.trusted_proxies,
                errors,
            ),
            request_head_timeout: layered(
                cli.request_head_timeout,
                file_head,
                d.request_head_timeout,
            ),
            room_limits: RoomLimits {
                max_keys: layered(
                    cli.max_room_keys,
                    limits.max_room_keys,
                    d.room_limits.max_keys,
                ),
                max_len: layered(
                    cli.max_room_value_len,
                    limits.max_room_value_len,
                    d.room_limits.max_len,
                ),
            },
            max_concurrent_bootstraps: layered(
                cli.max_concurrent_bootstraps,
                limits.max_concurrent_bootstraps,
                d.max_concurrent_bootstraps,
            ),
            ws_ping_interval: Some(ping).filter(|p| !p.is_zero()),
            reauth_interval: cli.reauth_interval.or(file_reauth),
            shutdown_grace: layered(cli.shutdown_grace, file_grace, d.shutdown_grace),
            status_enabled: !cli.disable_status && security.status_enabled.unwrap_or(true),
            tls: tls_files(
                cli.tls_cert.or(security.tls_cert),
                cli.tls_key.or(security.tls_key),
                errors,
            ),
        };
        errors.extend(policy.problems());
        policy
    }

    /// Checks independent of where values came from.
    pub fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let positive = [
            ("max_subscriptions", self.max_subscriptions),
            ("max_connections", self.max_connections.unwrap_or(1)),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_room_keys", self.room_limits.max_keys),
            ("max_room_value_len", self.room_limits.max_len),
            ("max_concurrent_bootstraps", self.max_concurrent_bootstraps),
            ("message_burst", self.message_burst as usize),
        ];
        for (field, value) in positive {
            if value == 0 {
                errors.push(format!("{field}: must be at least 1"));
            }
        }
        if self.room_limits.max_keys > crate::room::MAX_ROOM_KEYS {
            errors.push(format!(
                "max_room_keys: at most {} (wildcard positions are a 64-bit mask)",
                crate::room::MAX_ROOM_KEYS
            ));
        }
        if !(self.messages_per_second.is_finite() && self.messages_per_second > 0.0) {
            errors.push("messages_per_second: must be a positive number".to_string());
        }
        if self.request_head_timeout.is_zero() {
            errors.push("request_head_timeout: must be more than 0".to_string());
        }
        if self
            .reauth_interval
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            errors.push("reauth_interval: must be at least 1s".to_string());
        }
        errors
    }
}

/// A setting from its layers: the flag (or variable) over the file over the default.
pub(super) fn layered<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// `allowed_origins`: the flags' list when given (it replaces the file's), trimmed, blanks
/// dropped, each pattern checked.
fn origins(flags: Vec<String>, file: Option<Vec<String>>, errors: &mut Vec<String>) -> Vec<String> {
    let origins = if flags.is_empty() {
        file.unwrap_or_default()
    } else {
        flags
    };
    let origins: Vec<String> = origins
        .into_iter()
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty())
        .collect();
    for origin in &origins {
        if let Err(e) = check_origin_pattern(origin) {
            errors.push(format!("allowed_origins: {e}"));
        }
    }
    origins
}

/// `trusted_proxies`, or `default` when unset or unreadable (the error is reported).
fn trusted_proxies(
    entries: Option<Vec<String>>,
    default: TrustedProxies,
    errors: &mut Vec<String>,
) -> TrustedProxies {
    match entries {
        None => default,
        Some(entries) => TrustedProxies::parse(&entries).unwrap_or_else(|e| {
            errors.push(format!("trusted_proxies: {e}"));
            default
        }),
    }
}

/// `tls_cert` and `tls_key`: both or neither.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    errors: &mut Vec<String>,
) -> Option<TlsFiles> {
    match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            errors.push("tls_cert: tls_cert and tls_key go together".to_string());
            None
        }
    }
}

/// An allowed-origin entry: `*`, `scheme://host[:port]`, or `scheme://*.domain[:port]`.
fn check_origin_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let (scheme, host) = pattern
        .split_once("://")
        .ok_or_else(|| format!("{pattern:?} must look like https://app.example.com"))?;
    if scheme.is_empty() || host.is_empty() || host.contains('/') {
        return Err(format!(
            "{pattern:?} must be scheme://host[:port] with no path"
        ));
    }
    if host.contains('*') && !(host.starts_with("*.") && host[2..].chars().all(|c| c != '*')) {
        return Err(format!(
            "{pattern:?}: only a leading *. wildcard is supported"
        ));
    }
    Ok(())
}
