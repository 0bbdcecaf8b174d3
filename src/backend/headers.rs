//! Which headers of the websocket request reach the backend, and how.
//!
//! The defaults are high-templar 3.1's; deployments add or override headers by name with a
//! [`HeaderRule`] (the original's `CONNECTION_HEADERS` with `Key`, `Param`, `Cookie`, `Fixed`
//! and `.map(...)`).

use std::fmt;
use std::str::FromStr;

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::ConnectRequest;

/// Where a forwarded header's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSource {
    /// A header of the websocket request (the original's `Key`).
    Header(String),
    /// A query parameter of the websocket URL (`Param`).
    Query(String),
    /// A cookie of the websocket request (`Cookie`).
    Cookie(String),
    /// A fixed string (`Fixed`).
    Value(String),
}

/// One forwarded header: its name, its source, and an optional format where `{}` stands for
/// the value (the original's `.map(lambda v: 'Token ' + v)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub name: HeaderName,
    pub source: HeaderSource,
    pub format: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderRuleError {
    #[error("expected NAME=SOURCE:KEY[:FORMAT] with SOURCE one of header, query, cookie, value")]
    Syntax,
    #[error("expected from = \"header\"|\"query\"|\"cookie\" with key = ..., or from = \"value\" with value = ...")]
    TomlSyntax,
    #[error("{0:?} is not a valid header name")]
    BadName(String),
    #[error("format {0:?} must contain {{}} once")]
    BadFormat(String),
}

impl HeaderRule {
    pub fn new(
        name: &str,
        source: HeaderSource,
        format: Option<String>,
    ) -> Result<HeaderRule, HeaderRuleError> {
        let name =
            HeaderName::from_str(name).map_err(|_| HeaderRuleError::BadName(name.to_string()))?;
        if let Some(f) = &format {
            if f.matches("{}").count() != 1 {
                return Err(HeaderRuleError::BadFormat(f.clone()));
            }
        }
        Ok(HeaderRule {
            name,
            source,
            format,
        })
    }

    /// The defaults of high-templar 3.1, in its order.
    pub fn defaults() -> Vec<HeaderRule> {
        let rule = |name: HeaderName, source, format: Option<&str>| HeaderRule {
            name,
            source,
            format: format.map(str::to_string),
        };
        use axum::http::header;
        vec![
            rule(header::COOKIE, HeaderSource::Header("cookie".into()), None),
            rule(
                header::USER_AGENT,
                HeaderSource::Header("user-agent".into()),
                None,
            ),
            rule(
                HeaderName::from_static("x-real-ip"),
                HeaderSource::Header("x-real-ip".into()),
                None,
            ),
            rule(
                HeaderName::from_static("x-csrftoken"),
                HeaderSource::Cookie("csrftoken".into()),
                None,
            ),
            rule(
                header::AUTHORIZATION,
                HeaderSource::Query("token".into()),
                Some("Token {}"),
            ),
        ]
    }

    /// This rule's value for `request`; `None` when the source has no (or an empty) value or
    /// the result is not a valid header value (a query parameter holding a newline, say).
    pub fn value_for(&self, request: &ConnectRequest) -> Option<HeaderValue> {
        let raw = match &self.source {
            HeaderSource::Header(name) => request.header(name).map(str::to_string),
            HeaderSource::Query(name) => request.query_param(name),
            HeaderSource::Cookie(name) => request.cookie(name),
            HeaderSource::Value(value) => Some(value.clone()).filter(|v| !v.is_empty()),
        }?;
        let text = match &self.format {
            Some(format) => format.replacen("{}", &raw, 1),
            None => raw,
        };
        HeaderValue::from_str(&text).ok()
    }
}

/// Parses `NAME=SOURCE:KEY[:FORMAT]`, e.g. `Authorization=query:token:Token {}` or
/// `X-Tenant=value:acme` (for `value` the whole rest is the value).
impl FromStr for HeaderRule {
    type Err = HeaderRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s.split_once('=').ok_or(HeaderRuleError::Syntax)?;
        let (source, rest) = rest.split_once(':').ok_or(HeaderRuleError::Syntax)?;
        let (source, format) = match source {
            "value" => (HeaderSource::Value(rest.to_string()), None),
            kind => {
                let (key, format) = match rest.split_once(':') {
                    Some((key, format)) => (key, Some(format.to_string())),
                    None => (rest, None),
                };
                if key.is_empty() {
                    return Err(HeaderRuleError::Syntax);
                }
                let key = key.to_string();
                let source = match kind {
                    "header" => HeaderSource::Header(key),
                    "query" => HeaderSource::Query(key),
                    "cookie" => HeaderSource::Cookie(key),
                    _ => return Err(HeaderRuleError::Syntax),
                };
                (source, format)
            }
        };
        HeaderRule::new(name.trim(), source, format)
    }
}

impl fmt::Display for HeaderRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, key) = match &self.source {
            HeaderSource::Header(k) => ("header", k),
            HeaderSource::Query(k) => ("query", k),
            HeaderSource::Cookie(k) => ("cookie", k),
            HeaderSource::Value(_) => ("value", &String::from("<fixed>")),
        };
        write!(f, "{}={kind}:{key}", self.name)
    }
}

/// The TOML form: `{ name = "Authorization", from = "query", key = "token", format = "Token {}" }`
/// or `{ name = "X-Tenant", from = "value", value = "acme" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderRuleToml {
    pub name: String,
    pub from: String,
    pub key: Option<String>,
    pub value: Option<String>,
    pub format: Option<String>,
}

impl TryFrom<HeaderRuleToml> for HeaderRule {
    type Error = HeaderRuleError;

    fn try_from(t: HeaderRuleToml) -> Result<Self, Self::Error> {
        let source = match (t.from.as_str(), t.key, t.value) {
            ("value", None, Some(value)) => HeaderSource::Value(value),
            ("header", Some(key), None) => HeaderSource::Header(key),
            ("query", Some(key), None) => HeaderSource::Query(key),
            ("cookie", Some(key), None) => HeaderSource::Cookie(key),
            _ => return Err(HeaderRuleError::TomlSyntax),
        };
        HeaderRule::new(&t.name, source, t.format)
    }
}

/// The headers sent to the backend for `request`: the defaults, then `extra` adding or
/// overriding by name. The websocket request's `Host` is never forwarded.
pub(crate) fn forwarded_headers(
    request: &ConnectRequest,
    extra: &[HeaderRule],
) -> Vec<(HeaderName, HeaderValue)> {
    let mut rules: Vec<&HeaderRule> = Vec::new();
    let defaults = HeaderRule::defaults();
    // A later rule of the same name replaces an earlier one in its place.
    for rule in defaults.iter().chain(extra) {
        match rules.iter_mut().find(|r| r.name == rule.name) {
            Some(slot) => *slot = rule,
            None => rules.push(rule),
        }
    }
    rules
        .into_iter()
        .filter_map(|rule| Some((rule.name.clone(), rule.value_for(request)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn request(headers: &[(&str, &str)], query: Option<&str>) -> ConnectRequest {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_str(k).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        ConnectRequest {
            id: "c".into(),
            headers: map,
            query: query.map(str::to_string),
            peer: "127.0.0.1:1".parse().expect("addr"),
            client_ip: "127.0.0.1".parse().expect("ip"),
        }
    }

    fn names_values(v: Vec<(HeaderName, HeaderValue)>) -> Vec<(String, String)> {
        v.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_string()))
            .collect()
    }

    #[test]
    fn defaults_forward_the_originals_headers() {
        let r = request(
            &[
                ("cookie", "sessionid=abc; csrftoken=tok"),
                ("user-agent", "ua"),
                ("x-real-ip", "1.2.3.4"),
                ("host", "ws.example.com"),
            ],
            Some("token=t%201&x=y"),
        );
        assert_eq!(
            names_values(forwarded_headers(&r, &[])),
            vec![
                ("cookie".into(), "sessionid=abc; csrftoken=tok".into()),
                ("user-agent".into(), "ua".into()),
                ("x-real-ip".into(), "1.2.3.4".into()),
                ("x-csrftoken".into(), "tok".into()),
                ("authorization".into(), "Token t 1".into()),
            ]
        );
    }

    #[test]
    fn empty_values_are_not_sent() {
        let r = request(&[("user-agent", "")], Some("token="));
        assert!(forwarded_headers(&r, &[]).is_empty());
    }

    #[test]
    fn extra_rules_add_and_override() {
        let r = request(&[("x-forwarded-for", "9.9.9.9")], Some("token=abc"));
        let extra: Vec<HeaderRule> = [
            "Authorization=query:token:Bearer {}",
            "X-Fwd=header:X-Forwarded-For",
            "X-Fixed=value:a:b",
        ]
        .iter()
        .map(|s| s.parse().expect("rule"))
        .collect();
        assert_eq!(
            names_values(forwarded_headers(&r, &extra)),
            vec![
                ("authorization".into(), "Bearer abc".into()),
                ("x-fwd".into(), "9.9.9.9".into()),
                ("x-fixed".into(), "a:b".into()),
            ]
        );
    }

    #[test]
    fn rule_syntax_errors_are_clear() {
        assert_eq!("nope".parse::<HeaderRule>(), Err(HeaderRuleError::Syntax));
        assert_eq!(
            "X=env:FOO".parse::<HeaderRule>(),
            Err(HeaderRuleError::Syntax)
        );
        assert!(matches!(
            "Bad Name=value:x".parse::<HeaderRule>(),
            Err(HeaderRuleError::BadName(_))
        ));
        assert!(matches!(
            "A=query:t:no-placeholder".parse::<HeaderRule>(),
            Err(HeaderRuleError::BadFormat(_))
        ));
    }

    #[test]
    fn header_values_with_newlines_are_dropped() {
        let r = request(&[], Some("token=a%0D%0AX-Evil:%201"));
        assert!(forwarded_headers(&r, &[]).is_empty());
    }
}
