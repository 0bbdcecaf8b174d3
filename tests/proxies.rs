//! Behind a proxy: every socket comes from the proxy's address, and the client's own is in
//! `X-Real-IP` / `X-Forwarded-For`. Per-IP limits count that address when (and only when) the
//! peer is a trusted proxy, loopback by default, so nginx in front on the same host works as
//! the README shows it and a client elsewhere cannot pick the address it is counted as.

mod common;

use std::net::IpAddr;

use common::*;
use futures_util::{stream, StreamExt};
use high_templar::proxy::TrustedProxies;
use serde_json::json;

/// More than the per-IP limit (1,000), all from 127.0.0.1 as through nginx.
const BEHIND_NGINX: usize = 1_200;

/// Handshakes in flight at once: enough to be quick, few enough not to overflow the backlog.
const CONCURRENCY: usize = 100;

async fn authorized(attempt: Attempt) -> Client {
    match attempt {
        Attempt::Open(mut client) => {
            let first = client.recv_json().await;
            assert_eq!(first["is_authorized"], true, "first frame: {first}");
            *client
        }
        other => panic!("expected an open websocket, got {other:?}"),
    }
}

fn forwarded(i: usize) -> String {
    format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
}

#[tokio::test]
async fn twelve_hundred_clients_behind_a_loopback_proxy_are_all_accepted_on_defaults() {
    raise_fd_limit(4 * BEHIND_NGINX as u64 + 1024);
    let (_backend, server) = server_allowing(json!([{"room": "*"}])).await;
    let addr = server.local_addr;
    let clients: Vec<Client> = stream::iter(0..BEHIND_NGINX)
        .map(|i| async move {
            let ip = forwarded(i);
            authorized(Client::attempt(addr, None, &[("X-Real-IP", &ip)]).await).await
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let status = server.status();
    assert_eq!(status["open_connections"], BEHIND_NGINX, "{status}");
    assert_eq!(status["connections_refused"]["ip_full"], 0, "{status}");
    drop(clients);
}

#[tokio::test]
async fn per_ip_limits_count_the_forwarded_address_from_a_trusted_proxy_only() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    assert_eq!(config.listen.ip().to_string(), "127.0.0.1");
    config.policy.trusted_proxies = TrustedProxies::parse(&["127.0.0.1/32"]).expect("cidr");
    config.policy.max_connections_per_ip = 2;
    let server = start(config).await;
    let addr = server.local_addr;
    let proxy: Option<IpAddr> = Some("127.0.0.1".parse().expect("ip"));
    let stranger: Option<IpAddr> = Some("127.0.0.2".parse().expect("ip"));
    let mut open = Vec::new();

    // Through the proxy, each forwarded address has a count of its own...
    for i in 0..3 {
        let ip = format!("198.51.100.{i}");
        open.push(authorized(Client::attempt(addr, proxy, &[("X-Real-IP", &ip)]).await).await);
    }
    // ...which its limit applies to, whichever header names it.
    let same = [("X-Real-IP", "198.51.100.0")];
    open.push(authorized(Client::attempt(addr, proxy, &same).await).await);
    assert!(matches!(
        Client::attempt(addr, proxy, &same).await,
        Attempt::Refused(429)
    ));
    // The right-most address nginx did not append itself is the client's: a forged one to
    // its left changes nothing.
    let xff = [("X-Forwarded-For", "203.0.113.66, 198.51.100.0")];
    assert!(matches!(
        Client::attempt(addr, proxy, &xff).await,
        Attempt::Refused(429)
    ));

    // From a peer that is not a trusted proxy the headers are ignored: forging a new address
    // for every socket does not get past the limit of 127.0.0.2.
    for i in 0..2 {
        let ip = format!("203.0.113.{i}");
        let forged = [("X-Real-IP", ip.as_str()), ("X-Forwarded-For", ip.as_str())];
        open.push(authorized(Client::attempt(addr, stranger, &forged).await).await);
    }
    let forged = [
        ("X-Real-IP", "203.0.113.9"),
        ("X-Forwarded-For", "203.0.113.9"),
    ];
    assert!(matches!(
        Client::attempt(addr, stranger, &forged).await,
        Attempt::Refused(429)
    ));
    assert_eq!(server.status()["connections_refused"]["ip_full"], 3);

    // The backend still gets the request's own X-Real-IP (PROTOCOL.md section 1).
    let forwarded: Vec<String> = backend
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("x-real-ip")?.to_str().ok().map(String::from))
        .collect();
    assert!(
        forwarded.contains(&"203.0.113.1".to_string()),
        "{forwarded:?}"
    );
}
