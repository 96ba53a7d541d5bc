//! Gateway API route filters, as the proxy applies them (docs/gateway-api.md, section proxy).
//!
//! Filters are compiled once, when a config is converted ([`crate::config`]): header names and
//! values parsed, redirect statuses and hostnames checked, prefixes trimmed. Applying them is
//! pure and lives here, in one place:
//! - [`apply_request`]: a route's (then a backend's) filters, in order, to the request before it
//!   is sent (header edits, URL rewrite) or answered instead (redirect);
//! - [`apply_response`]: a backend's, then the route's response header edits, to the response
//!   the client gets.
//!
//! A route or backend without filters costs an `is_empty` check.

use std::time::Duration;

use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::http::{self as h, Body};

/// Header edits (Gateway API HTTPHeaderFilter): remove, then set, then add.
#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// Applies the edits to `headers`: every value of a `set` header is replaced by one, an
    /// `add` value is appended after the existing ones, `remove` drops every value.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

fn pairs(list: &[(HeaderName, HeaderValue)]) -> Vec<(&str, String)> {
    list.iter()
        .map(|(n, v)| {
            (
                n.as_str(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

impl Serialize for HeaderModifier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("HeaderModifier", 3)?;
        st.serialize_field("set", &pairs(&self.set))?;
        st.serialize_field("add", &pairs(&self.add))?;
        st.serialize_field(
            "remove",
            &self.remove.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
        )?;
        st.end()
    }
}

/// How a path is rewritten (Gateway API HTTPPathModifier).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathModifier {
    /// The whole path becomes this one.
    ReplaceFullPath(String),
    /// `matched` (the route's PathPrefix, without a trailing slash; empty for `/`) is replaced
    /// by `replacement` (without a trailing slash; empty for `/`), on segment boundaries.
    ReplacePrefixMatch {
        matched: String,
        replacement: String,
    },
}

impl PathModifier {
    /// A prefix modifier from the contract's values (trailing slashes dropped, so that `/foo/`
    /// and `/foo` mean the same prefix, as Gateway API's PathPrefix does).
    pub fn prefix(matched: &str, replacement: &str) -> Self {
        PathModifier::ReplacePrefixMatch {
            matched: matched.trim_end_matches('/').to_string(),
            replacement: replacement.trim_end_matches('/').to_string(),
        }
    }

    /// The rewritten path (no query). A prefix modifier whose prefix is not a segment prefix of
    /// `path` leaves it unchanged (it cannot happen when the route matched the prefix).
    ///
    /// `/foo` → `/bar`: `/foo/x` → `/bar/x`, `/foo` → `/bar`; `/foo` → `/`: `/foo/x` → `/x`,
    /// `/foo` → `/`.
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathModifier::ReplaceFullPath(p) => p.clone(),
            PathModifier::ReplacePrefixMatch {
                matched,
                replacement,
            } => {
                let Some(rest) = path.strip_prefix(matched.as_str()) else {
                    return path.to_string();
                };
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return path.to_string();
                }
                let out = format!("{replacement}{rest}");
                if out.is_empty() {
                    "/".to_string()
                } else {
                    out
                }
            }
        }
    }
}

/// `http` or `https`, the only schemes a redirect may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The scheme's well-known port, omitted from a Location.
    pub fn well_known_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The statuses a redirect may use; 0 on the wire is [`DEFAULT_REDIRECT_STATUS`].
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];
/// Gateway API's default redirect status.
pub const DEFAULT_REDIRECT_STATUS: StatusCode = StatusCode::FOUND;

/// Answer with a redirect (Gateway API HTTPRequestRedirectFilter). `None` fields keep the
/// request's value.
#[derive(Clone, Debug, Serialize)]
pub struct Redirect {
    pub scheme: Option<Scheme>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    #[serde(serialize_with = "ser_status")]
    pub status: StatusCode,
}

fn ser_status<S: Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Redirect {
    /// The `Location` of a request with `scheme`, `host` (no port) and `path`/`query`, received
    /// for service port `service_port` (the mesh's "listener port").
    ///
    /// Port: the filter's; else, when the filter names a scheme, that scheme's well-known port;
    /// else the service port. The port is left out when it is the well-known port of the
    /// Location's scheme. The query is always kept.
    pub fn location(
        &self,
        scheme: Scheme,
        host: &str,
        service_port: u16,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let out_scheme = self.scheme.unwrap_or(scheme);
        let port = match (self.port, self.scheme) {
            (Some(p), _) => p,
            (None, Some(s)) => s.well_known_port(),
            (None, None) => service_port,
        };
        let host = self.hostname.as_deref().unwrap_or(host);
        let path = match &self.path {
            Some(m) => m.apply(path),
            None => path.to_string(),
        };
        let mut out = format!("{}://{host}", out_scheme.as_str());
        if port != out_scheme.well_known_port() {
            out.push(':');
            out.push_str(&port.to_string());
        }
        out.push_str(&path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// Rewrite the request before it is sent (Gateway API HTTPURLRewriteFilter).
#[derive(Clone, Debug, Serialize)]
pub struct UrlRewrite {
    /// The new `Host` / `:authority`.
    #[serde(serialize_with = "ser_authority")]
    pub hostname: Option<Authority>,
    pub path: Option<PathModifier>,
}

fn ser_authority<S: Serializer>(a: &Option<Authority>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.serialize_some(a.as_str()),
        None => s.serialize_none(),
    }
}

/// One filter, as compiled.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite(UrlRewrite),
}

/// A route's own timeouts (Gateway API `timeouts`): they replace the service's request and
/// per-try timeouts for requests that take the route (`None`: no timeout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouteTimeouts {
    #[serde(serialize_with = "ser_ms", rename = "request_ms")]
    pub request: Option<Duration>,
    #[serde(serialize_with = "ser_ms", rename = "backend_request_ms")]
    pub backend_request: Option<Duration>,
}

fn ser_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

/// Where a request was received, for redirects: the service port it was sent to.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub service_port: u16,
}

/// Applies `filters` in order to `req`. Returns `Some(response)` when a redirect answers the
/// request (nothing is sent); `None` when the (edited) request goes on to a backend.
pub fn apply_request<B>(
    filters: &[Filter],
    req: &mut Request<B>,
    at: Received,
) -> Option<Response<Body>> {
    for f in filters {
        match f {
            Filter::RequestHeaderModifier(m) => m.apply(req.headers_mut()),
            Filter::ResponseHeaderModifier(_) => {}
            Filter::RequestRedirect(r) => return Some(redirect(r, req, at)),
            Filter::UrlRewrite(w) => {
                if let Err(reason) = rewrite(w, req) {
                    return Some(h::error(StatusCode::INTERNAL_SERVER_ERROR, &reason));
                }
            }
        }
    }
    None
}

/// Applies the response header edits of `filters`, in order, to `headers`.
pub fn apply_response(filters: &[Filter], headers: &mut HeaderMap) {
    for f in filters {
        if let Filter::ResponseHeaderModifier(m) = f {
            m.apply(headers);
        }
    }
}

/// The request's host without its port: `Host` (normalised to the target's authority), else
/// the URI's authority.
fn request_host<B>(req: &Request<B>) -> &str {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let raw = raw.rsplit_once('@').map_or(raw, |(_, h)| h);
    if raw.starts_with('[') {
        // [v6]:port
        return raw.find(']').map_or(raw, |end| &raw[..=end]);
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    }
}

fn redirect<B>(r: &Redirect, req: &Request<B>, at: Received) -> Response<Body> {
    let scheme = match req.uri().scheme_str() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let location = r.location(
        scheme,
        request_host(req),
        at.service_port,
        req.uri().path(),
        req.uri().query(),
    );
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut rsp = Response::new(h::empty());
            *rsp.status_mut() = r.status;
            rsp.headers_mut().insert(LOCATION, v);
            rsp.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            rsp
        }
        Err(_) => h::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the redirect's Location is not a valid header value",
        ),
    }
}

fn rewrite<B>(w: &UrlRewrite, req: &mut Request<B>) -> Result<(), String> {
    if w.hostname.is_none() && w.path.is_none() {
        return Ok(());
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Some(m) = &w.path {
        let (path, query) = match &parts.path_and_query {
            Some(pq) => (pq.path(), pq.query()),
            None => ("/", None),
        };
        let path = m.apply(path);
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.path_and_query = Some(
            PathAndQuery::from_maybe_shared(pq)
                .map_err(|e| format!("URL rewrite gives an invalid path: {e}"))?,
        );
    }
    if let Some(host) = &w.hostname {
        if parts.authority.is_some() {
            parts.authority = Some(host.clone());
        }
        let v = HeaderValue::from_str(host.as_str())
            .map_err(|e| format!("URL rewrite gives an invalid host: {e}"))?;
        req.headers_mut().insert(HOST, v);
    }
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|e| format!("URL rewrite gives an invalid URI: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(
        scheme: Option<Scheme>,
        hostname: Option<&str>,
        port: Option<u16>,
        path: Option<PathModifier>,
    ) -> Redirect {
        Redirect {
            scheme,
            hostname: hostname.map(str::to_string),
            port,
            path,
            status: DEFAULT_REDIRECT_STATUS,
        }
    }

    #[test]
    fn prefix_rewrite_on_segment_boundaries() {
        let m = PathModifier::prefix("/foo", "/bar");
        assert_eq!(m.apply("/foo"), "/bar");
        assert_eq!(m.apply("/foo/"), "/bar/");
        assert_eq!(m.apply("/foo/x/y"), "/bar/x/y");
        assert_eq!(m.apply("/foobar"), "/foobar");
        let strip = PathModifier::prefix("/foo", "/");
        assert_eq!(strip.apply("/foo/x"), "/x");
        assert_eq!(strip.apply("/foo"), "/");
        assert_eq!(strip.apply("/foo/"), "/");
        let trailing = PathModifier::prefix("/foo/", "/bar/");
        assert_eq!(trailing.apply("/foo/x"), "/bar/x");
        assert_eq!(trailing.apply("/foo"), "/bar");
        let root = PathModifier::prefix("/", "/api");
        assert_eq!(root.apply("/"), "/api/");
        assert_eq!(root.apply("/x"), "/api/x");
        let full = PathModifier::ReplaceFullPath("/one".into());
        assert_eq!(full.apply("/anything/else"), "/one");
    }

    #[test]
    fn redirect_location_follows_the_port_rules() {
        let plain = |r: &Redirect| r.location(Scheme::Http, "echo", 80, "/a", Some("q=1"));
        assert_eq!(
            plain(&redirect(None, Some("example.org"), None, None)),
            "http://example.org/a?q=1"
        );
        assert_eq!(
            plain(&redirect(None, None, Some(8083), None)),
            "http://echo:8083/a?q=1"
        );
        assert_eq!(
            plain(&redirect(Some(Scheme::Https), None, None, None)),
            "https://echo/a?q=1"
        );
        assert_eq!(
            plain(&redirect(Some(Scheme::Https), None, Some(8443), None)),
            "https://echo:8443/a?q=1"
        );
        assert_eq!(
            plain(&redirect(Some(Scheme::Http), None, Some(443), None)),
            "http://echo:443/a?q=1"
        );
        // No scheme, no port: the service port, omitted only when well known.
        assert_eq!(
            redirect(None, None, None, None).location(Scheme::Http, "echo", 8080, "/", None),
            "http://echo:8080/"
        );
        assert_eq!(
            plain(&redirect(
                None,
                None,
                None,
                Some(PathModifier::prefix("/a", "/b"))
            )),
            "http://echo/b?q=1"
        );
    }

    #[test]
    fn request_filters_in_order_and_redirect_stops() {
        let set = HeaderModifier {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("1"),
            )],
            add: vec![(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("2"),
            )],
            remove: vec![HeaderName::from_static("x-c")],
        };
        let filters = vec![
            Filter::RequestHeaderModifier(set),
            Filter::UrlRewrite(UrlRewrite {
                hostname: Some(Authority::from_static("new.example")),
                path: Some(PathModifier::prefix("/old", "/new")),
            }),
        ];
        let mut req = Request::get("/old/x?k=v")
            .header("host", "api.demo")
            .header("x-a", "0")
            .header("x-a", "9")
            .header("x-b", "1")
            .header("x-c", "gone")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(apply_request(&filters, &mut req, Received { service_port: 80 }).is_none());
        assert_eq!(req.uri().to_string(), "/new/x?k=v");
        assert_eq!(req.headers()["host"], "new.example");
        let a: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(a, vec!["1"]);
        let b: Vec<_> = req.headers().get_all("x-b").iter().collect();
        assert_eq!(b, vec!["1", "2"]);
        assert!(req.headers().get("x-c").is_none());

        let filters = vec![Filter::RequestRedirect(Redirect {
            status: StatusCode::MOVED_PERMANENTLY,
            ..redirect(None, Some("example.org"), None, None)
        })];
        let mut req = Request::get("/x?y")
            .header("host", "api.demo:8080")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        let rsp = apply_request(&filters, &mut req, Received { service_port: 8080 })
            .unwrap_or_else(|| panic!("no redirect"));
        assert_eq!(rsp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(rsp.headers()[LOCATION], "http://example.org:8080/x?y");
    }

    #[test]
    fn host_without_port() {
        let host = |h: &str| {
            let r = Request::get("/")
                .header("host", h)
                .body(())
                .unwrap_or_else(|e| panic!("{e}"));
            request_host(&r).to_string()
        };
        assert_eq!(host("api.demo:8080"), "api.demo");
        assert_eq!(host("api.demo"), "api.demo");
        assert_eq!(host("[::1]:80"), "[::1]");
        assert_eq!(host("10.0.0.1:80"), "10.0.0.1");
    }
}
