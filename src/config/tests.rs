//! Unit tests of the configuration: merging, precedence, and one-line errors.

use std::time::Duration;

use clap::Parser;

use super::*;

#[test]
fn defaults_need_nothing() {
    let config = Config::from_toml("").expect("valid");
    assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(config.idle_timeout, Duration::from_secs(300));
    assert_eq!(config.backend.timeout, Duration::from_secs(10));
    assert!(config.http_backend().is_none());
}

#[test]
fn file_settings_are_read() {
    let config = Config::from_toml(
        r#"
        listen = "0.0.0.0:9000"
        internal_listen = "127.0.0.1:9001"
        api_url = "http://127.0.0.1:8000/api/"
        idle_timeout = "5m"
        backend_timeout = 2.5
        on_connect = "user/notify_online/"
        forward_headers = [
          { name = "Authorization", from = "query", key = "token", format = "Bearer {}" },
          { name = "X-Tenant", from = "value", value = "acme" },
        ]
        "#,
    )
    .expect("valid");
    assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.idle_timeout, Duration::from_secs(300));
    assert_eq!(config.backend.timeout, Duration::from_millis(2500));
    assert_eq!(config.backend.forward_headers.len(), 2);
    assert_eq!(
        config.backend.on_connect.as_deref(),
        Some("user/notify_online/")
    );
    assert!(config.http_backend().is_some());
}

#[test]
fn flags_override_the_file() {
    let dir = std::env::temp_dir().join(format!("ht-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("c.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\nidle_timeout = 7\n").expect("write");
    let cli = Cli::try_parse_from([
        "high-templar",
        "--config",
        path.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:2",
    ])
    .expect("cli");
    let config = Config::load(cli).expect("valid");
    assert_eq!(config.listen.to_string(), "127.0.0.1:2");
    assert_eq!(config.idle_timeout, Duration::from_secs(7));
}

#[test]
fn every_error_names_its_field() {
    let err = Config::from_toml(
        r#"
        listen = "nowhere"
        api_url = "http://x/api"
        idle_timeout = "soon"
        on_ping = "http://evil/"
        forward_headers = [{ name = "X", from = "env", key = "A" }]
        "#,
    )
    .expect_err("invalid");
    let text = err.to_string();
    for field in [
        "listen:",
        "api_url:",
        "idle_timeout:",
        "on_ping:",
        "forward_headers[0]:",
    ] {
        assert!(text.contains(field), "{field} missing in {text}");
    }
    assert!(!text.contains('\n'));
}

#[test]
fn policy_tables_are_read_and_checked() {
    let config = Config::from_toml(
        r#"
        [limits]
        max_subscriptions = 3
        messages_per_second = 2.5
        [security]
        allowed_origins = ["https://*.example.com"]
        ws_ping_interval = "0"
        reauth_interval = "1m"
        status_enabled = false
        "#,
    )
    .expect("valid");
    let p = &config.policy;
    assert_eq!(p.max_subscriptions, 3);
    assert_eq!(p.messages_per_second, 2.5);
    assert_eq!(p.allowed_origins, vec!["https://*.example.com"]);
    assert_eq!(p.ws_ping_interval, None);
    assert_eq!(p.reauth_interval, Some(Duration::from_secs(60)));
    assert!(!p.status_enabled);

    let err = Config::from_toml(
        r#"
        [limits]
        max_connections = 0
        [security]
        allowed_origins = ["example.com"]
        tls_cert = "/x.pem"
        "#,
    )
    .expect_err("invalid");
    let text = err.to_string();
    for field in ["max_connections:", "allowed_origins:", "tls_cert:"] {
        assert!(text.contains(field), "{field} missing in {text}");
    }
}

#[test]
fn trusted_proxies_are_read_and_client_ip_header_says_what_replaced_it() {
    let config = Config::from_toml("").expect("valid");
    assert_eq!(
        config.policy.trusted_proxies,
        crate::proxy::TrustedProxies::default()
    );
    let config = Config::from_toml(
        r#"
        [security]
        trusted_proxies = ["10.0.0.0/8", "192.0.2.7"]
        request_head_timeout = "2s"
        "#,
    )
    .expect("valid");
    let p = &config.policy;
    assert_eq!(p.trusted_proxies.networks().len(), 2);
    assert!(p.trusted_proxies.contains("192.0.2.7".parse().expect("ip")));
    assert!(!p.trusted_proxies.contains("127.0.0.1".parse().expect("ip")));
    assert_eq!(p.request_head_timeout, Duration::from_secs(2));
    // An empty list trusts nobody.
    let cli = Cli::try_parse_from(["high-templar", "--trusted-proxies", ""]).expect("cli");
    let config = Config::merge(cli, FileConfig::default()).expect("valid");
    assert_eq!(config.policy.trusted_proxies.networks(), &[]);

    let err = Config::from_toml(
        r#"
        [security]
        client_ip_header = "X-Real-IP"
        trusted_proxies = ["nginx"]
        request_head_timeout = "0"
        "#,
    )
    .expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("client_ip_header: replaced by trusted_proxies"),
        "{text}"
    );
    assert!(text.contains("trusted_proxies: \"nginx\""), "{text}");
    assert!(text.contains("request_head_timeout:"), "{text}");
    let cli = Cli::try_parse_from(["high-templar", "--client-ip-header", "X-Real-IP"]);
    let err = Config::merge(cli.expect("cli"), FileConfig::default()).expect_err("invalid");
    assert!(
        err.to_string().contains("client_ip_header: replaced"),
        "{err}"
    );
}

#[test]
fn the_summary_interval_is_read_and_0_turns_it_off() {
    let config = Config::from_toml("").expect("valid");
    assert_eq!(
        config.log_summary_interval,
        Some(DEFAULT_LOG_SUMMARY_INTERVAL)
    );
    let config = Config::from_toml("log_summary_interval = \"5s\"").expect("valid");
    assert_eq!(config.log_summary_interval, Some(Duration::from_secs(5)));
    let config = Config::from_toml("log_summary_interval = 0").expect("valid");
    assert_eq!(config.log_summary_interval, None);
    let config = Config::from_toml("[limits]\nmax_connections = 5").expect("valid");
    assert_eq!(config.policy.max_connections, Some(5));
}

#[test]
fn rooms_wider_than_the_wildcard_mask_are_refused_at_start() {
    let config = Config::from_toml("[limits]\nmax_room_keys = 64\n").expect("64 fits");
    assert_eq!(config.policy.room_limits.max_keys, 64);
    let err = Config::from_toml("[limits]\nmax_room_keys = 65\n").expect_err("65 does not");
    assert!(
        err.to_string().contains("max_room_keys: at most 64"),
        "{err}"
    );
}

#[test]
fn history_settings_take_durations_and_sizes() {
    let config =
        Config::from_toml("history_ttl = \"90s\"\nhistory_memory = \"8MiB\"\n").expect("valid");
    assert_eq!(config.history.ttl, Duration::from_secs(90));
    assert_eq!(config.history.memory, 8 * 1024 * 1024);
    let config = Config::from_toml("history_ttl = 0\nhistory_memory = 1000\n").expect("valid");
    assert!(!config.history.enabled());
    assert_eq!(config.history.memory, 1000);
    let err = Config::from_toml("history_memory = \"lots\"\n").expect_err("invalid");
    assert!(err.to_string().contains("history_memory:"), "{err}");
}

#[cfg(feature = "amqp")]
#[test]
fn a_stream_has_its_retention_and_always_publishes_http_triggers() {
    let config = Config::from_toml(
        r#"
        amqp_url = "amqp://127.0.0.1"
        amqp_stream = "hightemplar-log"
        "#,
    )
    .expect("valid");
    let amqp = config.amqp.expect("amqp on");
    assert!(
        amqp.publish_http_triggers,
        "a stream implies publish-through"
    );
    assert_eq!(
        amqp.stream,
        Some(StreamSettings {
            name: "hightemplar-log".into(),
            max_age: DEFAULT_AMQP_STREAM_MAX_AGE,
            max_bytes: DEFAULT_AMQP_STREAM_MAX_BYTES,
        })
    );
    let cli = Cli::try_parse_from([
        "high-templar",
        "--amqp-url",
        "amqp://127.0.0.1",
        "--amqp-stream",
        "log",
        "--amqp-stream-max-age",
        "2h",
        "--amqp-stream-max-bytes",
        "10GiB",
    ])
    .expect("cli");
    let stream = Config::merge(cli, FileConfig::default())
        .expect("valid")
        .amqp
        .and_then(|a| a.stream)
        .expect("stream");
    assert_eq!(stream.max_age, Duration::from_secs(7200));
    assert_eq!(stream.max_bytes, 10 << 30);
}

#[test]
fn a_stream_must_keep_the_history_and_give_every_trigger_a_position() {
    let err = Config::from_toml(
        r#"
        amqp_url = "amqp://127.0.0.1"
        amqp_stream = "log"
        amqp_stream_max_age = "1m"
        amqp_stream_max_bytes = "1MiB"
        redis_url = "redis://127.0.0.1/"
        "#,
    )
    .expect_err("invalid");
    let text = err.to_string();
    for field in [
        "amqp_stream_max_age: must be at least history_ttl (300s)",
        "amqp_stream_max_bytes: must be at least",
        "redis_url: cannot be combined with amqp_stream",
    ] {
        assert!(text.contains(field), "{field} missing in {text}");
    }
    let err = Config::from_toml("amqp_stream = \"log\"\namqp_stream_max_age = 7200")
        .expect_err("needs a url");
    assert!(
        err.to_string().contains("amqp_stream: needs amqp_url"),
        "{err}"
    );
    let err = Config::from_toml("amqp_stream_max_bytes = \"2GiB\"").expect_err("needs a stream");
    assert!(
        err.to_string()
            .contains("amqp_stream_max_bytes: needs amqp_stream"),
        "{err}"
    );
}

#[cfg(all(feature = "amqp", feature = "redis"))]
#[test]
fn broker_sources_are_read_with_defaults() {
    let config = Config::from_toml(
        r#"
        amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        amqp_publish_http_triggers = true
        redis_url = "redis://127.0.0.1:6379/"
        "#,
    )
    .expect("valid");
    let amqp = config.amqp.expect("amqp on");
    assert_eq!(amqp.exchange, DEFAULT_AMQP_EXCHANGE);
    assert!(amqp.publish_http_triggers);
    assert_eq!(config.redis.expect("redis on").channel, "hightemplar");
    let off = Config::from_toml("").expect("valid");
    assert!(off.amqp.is_none() && off.redis.is_none());
}

#[cfg(all(feature = "amqp", feature = "redis"))]
#[test]
fn broker_errors_name_the_field_and_hide_the_password() {
    let err = Config::from_toml(
        r#"
        amqp_url = "http://user:s3cret@host/"
        redis_url = "ftp://user:s3cret@host/"
        redis_channel = ""
        "#,
    )
    .expect_err("invalid");
    let text = err.to_string();
    assert!(text.contains("amqp_url:"), "{text}");
    assert!(text.contains("redis_url:"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");

    let err =
        Config::from_toml("amqp_exchange = \"x\"\nredis_channel = \"y\"").expect_err("needs urls");
    let text = err.to_string();
    assert!(text.contains("amqp_exchange: needs amqp_url"), "{text}");
    assert!(text.contains("redis_channel: needs redis_url"), "{text}");

    let err = Config::from_toml("amqp_url = \"amqp://127.0.0.1\"\namqp_exchange = \"\"")
        .expect_err("empty exchange");
    assert!(err.to_string().contains("amqp_exchange:"), "{err}");
}

/// The broker keys stay known without their feature (a config file stays valid), but a node
/// that cannot read the broker it is configured for refuses to start, saying how to fix it.
#[cfg(not(feature = "amqp"))]
#[tokio::test]
async fn amqp_options_without_the_amqp_feature_are_refused_naming_the_feature() {
    const REFUSAL: &str =
        "amqp_url is set but this build has no `amqp` feature: rebuild with --features amqp";
    let err = Config::from_toml(
        r#"
        amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        amqp_exchange = "hightemplar"
        amqp_stream = "hightemplar-log"
        "#,
    )
    .expect_err("no amqp in this build");
    assert!(err.to_string().contains(REFUSAL), "{err}");
    let cli = Cli::try_parse_from(["high-templar", "--amqp-url", "amqp://127.0.0.1"]).expect("cli");
    let err = Config::merge(cli, FileConfig::default()).expect_err("no amqp in this build");
    assert!(err.to_string().contains(REFUSAL), "{err}");
    // Keys that need amqp_url still say so: they are checked as in every build.
    let err = Config::from_toml("amqp_exchange = \"x\"").expect_err("needs a url");
    assert!(
        err.to_string().contains("amqp_exchange: needs amqp_url"),
        "{err}"
    );

    // A hand-built config does not slip past: the server refuses to start.
    let mut config = Config::from_toml("").expect("valid");
    config.amqp = Some(AmqpSettings {
        url: "amqp://127.0.0.1".into(),
        exchange: DEFAULT_AMQP_EXCHANGE.into(),
        publish_http_triggers: false,
        stream: None,
    });
    assert_eq!(start_refusal(config).await.as_deref(), Some(REFUSAL));
}

/// Why a server with `config` (and a backend of its own) refuses to start, if it does.
#[cfg(not(all(feature = "amqp", feature = "redis")))]
async fn start_refusal(config: Config) -> Option<String> {
    crate::Server::new(config)
        .backend(crate::demo::DemoBackend)
        .start()
        .await
        .err()
        .map(|e| e.to_string())
}

/// As the test above, for `redis`.
#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn redis_options_without_the_redis_feature_are_refused_naming_the_feature() {
    const REFUSAL: &str =
        "redis_url is set but this build has no `redis` feature: rebuild with --features redis";
    let err = Config::from_toml("redis_url = \"redis://127.0.0.1:6379/\"\nredis_channel = \"x\"")
        .expect_err("no redis in this build");
    assert!(err.to_string().contains(REFUSAL), "{err}");
    let cli = Cli::try_parse_from(["high-templar", "--redis-url", "redis://127.0.0.1:6379/"])
        .expect("cli");
    let err = Config::merge(cli, FileConfig::default()).expect_err("no redis in this build");
    assert!(err.to_string().contains(REFUSAL), "{err}");

    let mut config = Config::from_toml("").expect("valid");
    config.redis = Some(RedisSettings {
        url: "redis://127.0.0.1:6379/".into(),
        channel: DEFAULT_REDIS_CHANNEL.into(),
    });
    assert_eq!(start_refusal(config).await.as_deref(), Some(REFUSAL));
}

#[test]
fn unknown_keys_are_refused() {
    let err = Config::from_toml("lisen = \"127.0.0.1:1\"").expect_err("typo");
    assert!(err.to_string().contains("lisen"), "{err}");
}

#[test]
fn demo_is_read_from_file_flag_and_environment_style_values() {
    let config = Config::from_toml("demo = true").expect("valid");
    assert!(config.demo && !config.demo_allow_public);
    let cli = Cli::try_parse_from(["high-templar", "--demo"]).expect("cli");
    assert!(Config::load(cli).expect("valid").demo);
}

#[test]
fn demo_stays_on_loopback_unless_forced() {
    let err = Config::from_toml("demo = true\nlisten = \"0.0.0.0:8080\"").expect_err("public");
    assert!(
        err.to_string().contains("listen: demo mode refuses"),
        "{err}"
    );
    let config =
        Config::from_toml("demo = true\ndemo_allow_public = true\nlisten = \"0.0.0.0:8080\"")
            .expect("forced");
    assert!(config.demo_allow_public);
    assert!(Config::from_toml("demo = true\nlisten = \"[::1]:8080\"").is_ok());
}

#[test]
fn demo_refuses_a_configured_backend() {
    let err = Config::from_toml("demo = true\napi_url = \"http://127.0.0.1:8000/api/\"")
        .expect_err("two backends");
    assert!(err.to_string().contains("api_url: demo mode"), "{err}");
}

#[test]
fn durations_accept_seconds_and_units() {
    assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert!(parse_duration("-1").is_err());
    assert!(parse_duration("later").is_err());
}

/// The annotated example in the repository must stay a valid configuration.
#[test]
fn example_config_is_valid() {
    let text = include_str!("../../high-templar.example.toml");
    let config = Config::from_toml(text).expect("example config parses");
    assert!(config.http_backend().is_some());
}
