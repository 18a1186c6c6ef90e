//! The origin check (PROTOCOL §1.4): which web pages may open a socket.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Uri, header};

/// Which `Origin` headers a socket accepts. Requests without an `Origin`
/// header (non-browser clients) are always accepted; an origin without a
/// host (`null`, `file://`) is refused unless checking is disabled.
#[derive(Clone, Default)]
pub enum CheckOrigin {
    /// Accept every origin.
    Disabled,
    /// The origin's host must equal the request's `Host` (scheme and port
    /// ignored). The default.
    #[default]
    SameHost,
    /// The origin must match one of these patterns.
    List(Vec<OriginPattern>),
    /// The application decides from the parsed origin.
    Custom(Arc<dyn Fn(&Uri) -> bool + Send + Sync>),
}

impl fmt::Debug for CheckOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckOrigin::Disabled => f.write_str("Disabled"),
            CheckOrigin::SameHost => f.write_str("SameHost"),
            CheckOrigin::List(l) => f.debug_tuple("List").field(l).finish(),
            CheckOrigin::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl CheckOrigin {
    /// A list of patterns, e.g. `["//localhost", "https://*.example.com"]`.
    ///
    /// ```
    /// use fawkes::CheckOrigin;
    ///
    /// let check = CheckOrigin::list(["//localhost", "https://*.example.com:8443"]).unwrap();
    /// ```
    pub fn list<I, S>(patterns: I) -> Result<Self, InvalidOrigin>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        patterns
            .into_iter()
            .map(|p| OriginPattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()
            .map(CheckOrigin::List)
    }

    /// Whether a request with these headers passes.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        if matches!(self, CheckOrigin::Disabled) {
            return true;
        }
        let Some(origin) = origin.to_str().ok().and_then(parse_origin) else {
            return false;
        };
        match self {
            CheckOrigin::Disabled => true,
            CheckOrigin::SameHost => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.parse::<http::uri::Authority>().ok());
                host.is_some_and(|h| h.host().eq_ignore_ascii_case(origin.host().unwrap_or("")))
            }
            CheckOrigin::List(list) => list.iter().any(|p| p.matches(&origin)),
            CheckOrigin::Custom(f) => f(&origin),
        }
    }
}

/// An `Origin` value with a scheme and a host, or `None`.
fn parse_origin(value: &str) -> Option<Uri> {
    let uri: Uri = value.parse().ok()?;
    (uri.scheme().is_some() && uri.host().is_some_and(|h| !h.is_empty())).then_some(uri)
}

/// An origin pattern: `scheme://host:port` with any part optional
/// (`//host` matches any scheme and port); a host `*.a.com` matches `a.com`
/// and its subdomains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Option<String>,
    host: String,
    port: Option<u16>,
}

/// An origin pattern that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid origin pattern `{0}`")]
pub struct InvalidOrigin(pub String);

impl OriginPattern {
    /// Parses `https://a.com:8443`, `//a.com`, `a.com` or `//*.a.com`.
    pub fn parse(pattern: &str) -> Result<Self, InvalidOrigin> {
        let bad = || InvalidOrigin(pattern.to_owned());
        let (scheme, rest) = match pattern.split_once("://") {
            Some((s, r)) if !s.is_empty() => (Some(s.to_ascii_lowercase()), r),
            Some(_) => return Err(bad()),
            None => (None, pattern.strip_prefix("//").unwrap_or(pattern)),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
            None => (rest, None),
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        Ok(OriginPattern {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn matches(&self, origin: &Uri) -> bool {
        let host = origin.host().unwrap_or("").to_ascii_lowercase();
        let scheme = origin.scheme_str().unwrap_or("");
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        if let Some(port) = self.port {
            let origin_port = origin.port_u16().or(match scheme {
                "http" | "ws" => Some(80),
                "https" | "wss" => Some(443),
                _ => None,
            });
            if origin_port != Some(port) {
                return false;
            }
        }
        match self.host.strip_prefix("*.") {
            Some(base) => host == base || host.strip_suffix(base).is_some_and(|p| p.ends_with('.')),
            None => host == self.host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn no_origin_is_allowed_and_hostless_origins_refused() {
        let check = CheckOrigin::list(["//localhost"]).unwrap();
        assert!(check.allows(&headers(None, "x")));
        for o in ["null", "file://", "", "localhost"] {
            assert!(!check.allows(&headers(Some(o), "x")), "{o}");
        }
        assert!(CheckOrigin::Disabled.allows(&headers(Some("null"), "x")));
    }

    #[test]
    fn list_patterns() {
        let check =
            CheckOrigin::list(["//localhost", "https://*.a.com:8443", "http://b.com"]).unwrap();
        let ok = |o| check.allows(&headers(Some(o), "x"));
        assert!(ok("http://localhost:4000"));
        assert!(ok("https://localhost"));
        assert!(ok("https://a.com:8443"));
        assert!(ok("https://x.y.a.com:8443"));
        assert!(!ok("https://x-a.com:8443"));
        assert!(!ok("https://x.a.com"));
        assert!(!ok("http://x.a.com:8443"));
        assert!(ok("http://b.com"));
        assert!(ok("http://b.com:81"));
        assert!(!ok("https://b.com"));
        assert!(!ok("http://evil.com"));
    }

    #[test]
    fn same_host_ignores_scheme_and_port() {
        let check = CheckOrigin::SameHost;
        assert!(check.allows(&headers(
            Some("https://example.com:8080"),
            "example.com:4000"
        )));
        assert!(!check.allows(&headers(Some("https://evil.com"), "example.com:4000")));
    }

    #[test]
    fn bad_patterns() {
        for p in ["", "://a", "a.com:x", "//"] {
            assert!(OriginPattern::parse(p).is_err(), "{p}");
        }
    }
}
