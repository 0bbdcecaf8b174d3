//! Admission of new websockets, before the upgrade: the origin check (cross-site websocket
//! hijacking) and the per-node and per-IP connection limits. The client's IP is the one
//! [`crate::proxy`] works out (the peer, or who a trusted proxy says it forwards).
//!
//! A page on another site can open a websocket to us that carries the victim's cookies; the
//! browser always sends that page's `Origin`, so a foreign `Origin` is refused with 403. A
//! request without `Origin` is not from a browser page, so not this attack, and is let in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};

use crate::config::policy::Policy;
use crate::stats::Stats;

/// Why a websocket was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Origin,
    NodeFull,
    IpFull,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Origin => StatusCode::FORBIDDEN,
            Refusal::NodeFull => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::IpFull => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Origin => "origin not allowed",
            Refusal::NodeFull => "server full, try another node or later",
            Refusal::IpFull => "too many connections from this address",
        }
    }
}

/// How often a full node says so at INFO: the first refusal says it, the summary line counts
/// the rest.
const NODE_FULL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Counts open websockets, node-wide and per client IP.
pub(crate) struct Admission {
    policy: Policy,
    /// The node-wide limit: the configured one, or what the open-files limit leaves room for.
    max_connections: usize,
    stats: Arc<Stats>,
    open: AtomicUsize,
    // A std mutex: a map update per connect and disconnect, never held across an await.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// When "node full" was last logged; only touched while refusing.
    full_logged: Mutex<Option<Instant>>,
}

/// Holds one connection's place; dropping it frees the place.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub fn new(policy: Policy, max_connections: usize, stats: Arc<Stats>) -> Admission {
        Admission {
            policy,
            max_connections,
            stats,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            full_logged: Mutex::new(None),
        }
    }

    /// Lets a websocket from `ip` in, or says why not (and counts the refusal).
    pub fn admit(self: &Arc<Self>, headers: &HeaderMap, ip: IpAddr) -> Result<Ticket, Refusal> {
        let refusal = |r: Refusal, counter| {
            Stats::incr(counter);
            Err(r)
        };
        if !origin_allowed(headers, &self.policy.allowed_origins) {
            return refusal(Refusal::Origin, &self.stats.refused_origin);
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.log_full();
            return refusal(Refusal::NodeFull, &self.stats.refused_node_full);
        }
        {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.policy.max_connections_per_ip {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return refusal(Refusal::IpFull, &self.stats.refused_ip_full);
            }
            *count += 1;
        }
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    /// A node event worth a line at INFO, but not one per refused client.
    fn log_full(&self) {
        let mut logged = self.full_logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_none_or(|at| at.elapsed() >= NODE_FULL_LOG_EVERY) {
            *logged = Some(Instant::now());
            tracing::info!(
                max_connections = self.max_connections,
                "node full: new websockets get HTTP 503 (counted in the summary line)"
            );
        }
    }
}

/// The origin rule: no `Origin` passes; `*` allows all; no patterns means same origin (the
/// `Origin`'s host equals `Host`, as gorilla/websocket does); else one pattern must match.
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    if allowed.is_empty() {
        let Some(request_host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        return host.eq_ignore_ascii_case(request_host);
    }
    allowed.iter().any(|pattern| {
        let Some((p_scheme, p_host)) = pattern.split_once("://") else {
            return false;
        };
        if !p_scheme.eq_ignore_ascii_case(scheme) {
            return false;
        }
        match p_host.strip_prefix("*.") {
            // `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`
            // nor `evil-example.com`.
            Some(suffix) => {
                let host = host.to_ascii_lowercase();
                let suffix = suffix.to_ascii_lowercase();
                host.len() > suffix.len() + 1
                    && host.ends_with(&suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => p_host.eq_ignore_ascii_case(host),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
        }
        h
    }

    fn allowed(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn same_origin_by_default() {
        assert!(origin_allowed(
            &headers(Some("https://app.example.com"), "app.example.com"),
            &[]
        ));
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.com"), "app.example.com"),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(Some("null"), "app.example.com"),
            &[]
        ));
        assert!(origin_allowed(&headers(None, "app.example.com"), &[]));
    }

    #[test]
    fn patterns_match_exactly_or_by_subdomain() {
        let list = allowed(&["https://app.example.com", "https://*.corp.example"]);
        let h = |o| headers(Some(o), "ws.example.com");
        assert!(origin_allowed(&h("https://app.example.com"), &list));
        assert!(origin_allowed(&h("https://APP.example.com"), &list));
        assert!(!origin_allowed(&h("http://app.example.com"), &list));
        assert!(origin_allowed(&h("https://a.corp.example"), &list));
        assert!(origin_allowed(&h("https://a.b.corp.example"), &list));
        assert!(!origin_allowed(&h("https://corp.example"), &list));
        assert!(!origin_allowed(&h("https://evilcorp.example"), &list));
        assert!(!origin_allowed(
            &h("https://app.example.com.evil.com"),
            &list
        ));
    }

    #[test]
    fn star_allows_any_origin() {
        assert!(origin_allowed(
            &headers(Some("https://evil.com"), "x"),
            &allowed(&["*"])
        ));
    }
}
