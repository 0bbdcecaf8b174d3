//! Who the client is when a proxy stands in front: the trusted-proxies rule of gunicorn's and
//! uvicorn's `forwarded_allow_ips`.
//!
//! Behind nginx every socket comes from the proxy's address, so per-IP limits would count the
//! whole node as one client. A proxy says who its client is in `X-Forwarded-For` or
//! `X-Real-IP`, but any client can send those headers too: they are believed only when the TCP
//! peer is a listed proxy, and from anyone else they are ignored.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies trusted by default: loopback, where nginx or a sidecar on the same host
/// connects from. Any local process could claim an address through them, but a local process
/// can open as many sockets as it likes anyway.
pub const DEFAULT_TRUSTED_PROXIES: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// The peers whose `X-Forwarded-For` / `X-Real-IP` are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl Default for TrustedProxies {
    fn default() -> Self {
        TrustedProxies(
            DEFAULT_TRUSTED_PROXIES
                .iter()
                .filter_map(|net| net.parse().ok())
                .collect(),
        )
    }
}

impl TrustedProxies {
    /// No proxy is trusted: the client is always the TCP peer.
    pub fn none() -> TrustedProxies {
        TrustedProxies(Vec::new())
    }

    /// Parses each entry as a network (`10.0.0.0/8`) or a single address (`10.0.0.7`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let net = IpNet::from_str(entry)
                .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                .map_err(|_| format!("{entry:?} is not an address or a network like 10.0.0.0/8"))?;
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    /// The networks, as given.
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: from a trusted `peer`, the right-most `X-Forwarded-For` address
    /// that is not itself a trusted proxy (each proxy appends the address it was reached
    /// from, so everything left of that is the client's own say), or else `X-Real-IP`; from
    /// any other peer, or when neither header holds an address, the peer itself.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        self.forwarded_for(headers)
            .or_else(|| real_ip(headers))
            .unwrap_or(peer)
    }

    fn forwarded_for(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            // What a trusted proxy appended is an address; anything else is not ours to guess.
            let ip = parse_hop(hop)?;
            if !self.contains(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        // Every hop is a proxy of ours (a health check from inside, say): the first one.
        leftmost
    }
}

fn real_ip(headers: &HeaderMap) -> Option<IpAddr> {
    parse_hop(headers.get("x-real-ip")?.to_str().ok()?.trim())
}

/// One hop: `1.2.3.4`, `2001:db8::1`, or with a port as some proxies write it (`1.2.3.4:5678`,
/// `[2001:db8::1]:5678`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in list {
            h.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn loopback_is_trusted_by_default() {
        let proxies = TrustedProxies::default();
        assert!(proxies.contains(ip("127.0.0.1")));
        assert!(proxies.contains(ip("127.8.9.10")));
        assert!(proxies.contains(ip("::1")));
        assert!(proxies.contains(ip("::ffff:127.0.0.1")));
        assert!(!proxies.contains(ip("10.0.0.1")));
        assert!(!proxies.contains(ip("::2")));
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let proxies = TrustedProxies::default();
        let forged = headers(&[("x-forwarded-for", "1.1.1.1"), ("x-real-ip", "2.2.2.2")]);
        assert_eq!(
            proxies.client_ip(ip("203.0.113.5"), &forged),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let proxies = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).expect("valid");
        let peer = ip("127.0.0.1");
        // The client claimed 6.6.6.6; nginx appended the address it saw, a load balancer in
        // 10/8 appended its own.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")]);
        assert_eq!(proxies.client_ip(peer, &h), ip("198.51.100.7"));
        // Several header lines read as one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(proxies.client_ip(peer, &h), ip("198.51.100.7"));
        // With ports and brackets.
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(proxies.client_ip(peer, &h), ip("2001:db8::1"));
        // Only proxies of ours: the left-most of them.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 127.0.0.1")]);
        assert_eq!(proxies.client_ip(peer, &h), ip("10.9.9.9"));
    }

    #[test]
    fn x_real_ip_when_there_is_no_usable_forwarded_for() {
        let proxies = TrustedProxies::default();
        let peer = ip("127.0.0.1");
        let h = headers(&[("x-real-ip", "198.51.100.9")]);
        assert_eq!(proxies.client_ip(peer, &h), ip("198.51.100.9"));
        let h = headers(&[
            ("x-forwarded-for", "garbage"),
            ("x-real-ip", "198.51.100.9"),
        ]);
        assert_eq!(proxies.client_ip(peer, &h), ip("198.51.100.9"));
        // Nothing usable: the proxy itself.
        let h = headers(&[("x-real-ip", "unknown")]);
        assert_eq!(proxies.client_ip(peer, &h), peer);
    }

    #[test]
    fn nothing_trusted_means_the_peer() {
        let h = headers(&[("x-real-ip", "198.51.100.9")]);
        assert_eq!(
            TrustedProxies::none().client_ip(ip("127.0.0.1"), &h),
            ip("127.0.0.1")
        );
        assert_eq!(
            TrustedProxies::parse(&["", " "]).expect("empty"),
            TrustedProxies::none()
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let err = TrustedProxies::parse(&["10.0.0.0/8", "nginx"]).expect_err("invalid");
        assert!(err.contains("\"nginx\""), "{err}");
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
    }
}
