//! Pure routing decisions: request matching, route and backend selection, authority parsing and
//! inbound authorization. No I/O; everything here is unit tested.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::Config;
use crate::config::{
    Backend, DefaultPolicy, HttpMatch, InboundPolicy, OutboundPort, OutboundService, Route,
};

/// The parts of a request that matching looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The raw query (after `?`), if any.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestInfo<'a> {
    pub fn from_request<B>(req: &'a http::Request<B>) -> Self {
        RequestInfo {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        }
    }
}

/// Whether one match holds: path (prefix-anchored regex), method, and every header condition.
///
/// A header condition holds when the header is present and **every** value it carries (each
/// field line, as received) matches the regex: a client cannot satisfy a rule by adding a value
/// next to one that fails it (`x-user: other` + `x-user: admin` fails `^admin$`), whichever value
/// the app then reads. A value that is not visible ASCII fails. The same rule applies to
/// authorization and to route (split) matches. The path is matched as normalised by
/// [`crate::http::normalize`].
pub fn http_match(m: &HttpMatch, req: &RequestInfo<'_>) -> bool {
    if let Some(re) = &m.path {
        if !re.is_match(req.path) {
            return false;
        }
    }
    if let Some(methods) = &m.methods {
        if !methods.iter().any(|x| x == req.method) {
            return false;
        }
    }
    m.headers.iter().all(|h| {
        let mut values = req.headers.get_all(&h.name).iter().peekable();
        values.peek().is_some() && values.all(|v| v.to_str().is_ok_and(|v| h.value.is_match(v)))
    }) && m
        .query_params
        .iter()
        .all(|q| query_param(req.query, &q.name).is_some_and(|v| q.value.is_match(&v)))
}

/// The percent-decoded value of the first occurrence of `name` in `query` (Gateway API: when a
/// query repeats a name, the first one counts). Names are compared exactly after decoding; a
/// parameter without `=` has the empty value. `None` when absent, or when the name's first
/// occurrence does not decode to UTF-8 (or has an invalid escape): such a condition never
/// holds. `+` is not decoded (RFC 3986 query, not form encoding).
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    for pair in query?.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k).is_some_and(|k| k == name) {
            return percent_decode(v);
        }
    }
    None
}

/// Decodes `%XX` escapes; `None` for an invalid escape or a result that is not UTF-8.
/// Borrows when there is nothing to decode.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Matches are OR'ed; an empty list matches everything.
pub fn any_match(matches: &[HttpMatch], req: &RequestInfo<'_>) -> bool {
    matches.is_empty() || matches.iter().any(|m| http_match(m, req))
}

/// The first route whose matches hold (routes with no matches always hold).
pub fn select_route<'r>(routes: &'r [Route], req: &RequestInfo<'_>) -> Option<&'r Route> {
    routes.iter().find(|r| any_match(&r.matches, req))
}

/// The route for an opaque TCP connection: the first route without HTTP matches.
pub fn select_tcp_route(routes: &[Route]) -> Option<&Route> {
    routes.iter().find(|r| r.matches.is_empty())
}

/// Picks a backend in proportion to weight given `r`, a random number (any `u64`).
/// Backends of weight 0 are never chosen; `None` when all weights are 0 or there are none.
pub fn choose_backend_with(route: &Route, r: u64) -> Option<&Backend> {
    if route.total_weight == 0 {
        return None;
    }
    let mut point = r % route.total_weight;
    for b in &route.backends {
        if point < b.weight {
            return Some(b);
        }
        point -= b.weight;
    }
    None
}

/// Picks a backend in proportion to weight, per request.
pub fn choose_backend(route: &Route) -> Option<&Backend> {
    if route.backends.len() == 1 {
        return route.backends.first().filter(|b| b.weight > 0);
    }
    choose_backend_with(route, crate::balance::random_below(route.total_weight))
}

/// What an authority (Host header, `:authority`, absolute-form URI) names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A Kubernetes service by name.
    Service {
        name: Cow<'a, str>,
        namespace: Cow<'a, str>,
        /// `None`: no port given (use the scheme default).
        port: Option<u16>,
    },
    /// An IP literal (a ClusterIP or pod IP).
    Addr(IpAddr, Option<u16>),
}

/// Why an authority could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("missing host")]
    MissingHost,
    #[error("invalid port in authority {0:?}")]
    InvalidPort(String),
    #[error("{0:?} does not name a service (want <service>.<namespace>[.svc[.<cluster domain>]])")]
    NotAService(String),
}

/// Parses `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local` (any cluster domain), each with an
/// optional trailing dot and `:port`, and IP literals (`[v6]:port` included). Case-insensitive.
pub fn parse_authority(authority: &str) -> Result<Target<'_>, AuthorityError> {
    match plain_service(authority) {
        Some(target) => Ok(target),
        None => parse_authority_general(authority),
    }
}

/// What a byte is to [`plain_service`]: a label's (`a-z`, `0-9`, `-`), a dot, a colon, or one
/// it leaves to the general parse. One load a byte, where a `match` on ranges was several compares.
const AUTHORITY_BYTE: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => LABEL,
            b'.' => DOT,
            b':' => COLON,
            _ => OTHER,
        };
        b += 1;
    }
    t
};
const LABEL: u8 = 0;
const DOT: u8 = 1;
const COLON: u8 = 2;
const OTHER: u8 = 3;

/// The common authority, `<svc>.<ns>[.svc[.<domain>]][:port]` in lower case, read in one pass
/// over its bytes; `None` for anything else (upper case, userinfo, brackets, spaces, a trailing
/// dot, a leading digit, an error), which [`parse_authority_general`] then reads. Where this
/// answers, it answers what the general parse would
/// (`route::tests::the_one_pass_agrees_with_the_general_parse`). It runs on every outbound
/// request: the general parse's seven scans of the authority counted ~1,140 instructions of a
/// proxied request's ~32,200, this pass ~560 (issue #20, docs/benchmarks.md).
fn plain_service(authority: &str) -> Option<Target<'_>> {
    // The first two dots of the host and the colon before the port; a dot or colon right after
    // a dot (or at the start) is an empty label.
    let (mut first, mut second) = (None, None);
    let mut colon = None;
    let mut after_dot = true;
    for (i, &b) in authority.as_bytes().iter().enumerate() {
        match AUTHORITY_BYTE[usize::from(b)] {
            LABEL => {
                after_dot = false;
                continue;
            }
            DOT if colon.is_none() && !after_dot => {
                if first.is_none() {
                    first = Some(i);
                } else if second.is_none() {
                    second = Some(i);
                }
            }
            COLON if colon.is_none() && !after_dot => colon = Some(i),
            _ => return None,
        }
        after_dot = true;
    }
    let (host, port) = match colon {
        Some(c) => (authority.get(..c)?, authority.get(c + 1..)?),
        None => (authority, ""),
    };
    // A trailing dot (trimmed by the general parse) and a leading digit (maybe an IP address)
    // go the general way.
    if host.ends_with('.') || host.as_bytes().first().is_none_or(u8::is_ascii_digit) {
        return None;
    }
    let first = first?;
    let name = host.get(..first)?;
    let namespace = host.get(first + 1..second.unwrap_or(host.len()))?;
    if let Some(second) = second {
        let tail = host.get(second + 1..)?;
        if tail != "svc" && !tail.starts_with("svc.") {
            return None;
        }
    }
    let port = match port {
        "" => None,
        p => Some(p.parse::<u16>().ok().filter(|&n| n != 0)?),
    };
    Some(Target::Service {
        name: Cow::Borrowed(name),
        namespace: Cow::Borrowed(namespace),
        port,
    })
}

/// [`parse_authority`] for every form it takes.
fn parse_authority_general(authority: &str) -> Result<Target<'_>, AuthorityError> {
    // Header values and URI authorities are ASCII. Byte scans below, not `char` pattern
    // searches.
    let authority = authority.trim_ascii();
    // Strip userinfo if present.
    let authority = match authority.bytes().rposition(|b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let (host, port) = split_host_port(authority)?;
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return Err(AuthorityError::MissingHost);
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    // An IPv4 address starts with a digit and an IPv6 one has a colon: a service name is not
    // run through both address parsers on every request.
    if bare.contains(':') || bare.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Target::Addr(ip, port));
        }
    }
    let lower: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    let not_service = || AuthorityError::NotAService(authority.to_string());
    let (name, namespace) = match &lower {
        Cow::Borrowed(h) => {
            let (name, ns) = service_labels(h).ok_or_else(not_service)?;
            (Cow::Borrowed(name), Cow::Borrowed(ns))
        }
        Cow::Owned(h) => {
            let (name, ns) = service_labels(h).ok_or_else(not_service)?;
            (Cow::Owned(name.to_string()), Cow::Owned(ns.to_string()))
        }
    };
    Ok(Target::Service {
        name,
        namespace,
        port,
    })
}

/// The service and namespace of a host `<svc>.<ns>`, optionally followed by `.svc` and then a
/// cluster domain (any non-empty labels); every label non-empty.
fn service_labels(host: &str) -> Option<(&str, &str)> {
    let (name, rest) = split_once_byte(host, b'.')?;
    let (namespace, tail) = match split_once_byte(rest, b'.') {
        Some((namespace, tail)) => (namespace, Some(tail)),
        None => (rest, None),
    };
    let tail_ok = match tail {
        None | Some("svc") => true,
        Some(tail) => tail.strip_prefix("svc.").is_some_and(|domain| {
            domain
                .as_bytes()
                .split(|&b| b == b'.')
                .all(|label| !label.is_empty())
        }),
    };
    (tail_ok && !name.is_empty() && !namespace.is_empty()).then_some((name, namespace))
}

/// `str::split_once` for an ASCII separator, by a byte scan rather than a `char` pattern search
/// (issue #20: authorities and metric labels are split on every request).
pub fn split_once_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), AuthorityError> {
    let (host, port) = if authority.starts_with('[') {
        // [v6]:port
        match authority.find(']') {
            Some(end) => {
                let (h, rest) = authority.split_at(end + 1);
                (h, rest.strip_prefix(':'))
            }
            None => return Err(AuthorityError::MissingHost),
        }
    } else {
        match authority.bytes().rposition(|b| b == b':') {
            // Bare IPv6 without brackets (more than one colon): no port.
            Some(colon) if authority[..colon].bytes().any(|b| b == b':') => (authority, None),
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => Some(n),
            _ => return Err(AuthorityError::InvalidPort(authority.to_string())),
        },
    };
    Ok((host, port))
}

/// The default port for a URI scheme (`https` → 443, anything else → 80).
pub fn default_port(scheme: Option<&http::uri::Scheme>) -> u16 {
    match scheme {
        Some(s) if *s == http::uri::Scheme::HTTPS => 443,
        _ => 80,
    }
}

/// The authority of a request: the absolute-form URI's, else the Host header.
pub fn request_authority<B>(req: &http::Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// Why an explicit-mode request has no outbound destination.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no Host header or authority")]
    MissingAuthority,
    #[error("{0}")]
    Authority(#[from] AuthorityError),
    #[error("unknown service {name}.{namespace}")]
    UnknownService { name: String, namespace: String },
    #[error("service {service} has no port {port}")]
    UnknownPort { service: String, port: u16 },
    #[error("no service at {0}")]
    UnknownAddr(String),
}

/// Resolves an explicit-mode authority to a service and port.
pub fn resolve_authority<'c>(
    config: &'c Config,
    authority: &str,
    scheme: Option<&http::uri::Scheme>,
) -> Result<(&'c Arc<OutboundService>, &'c OutboundPort), ResolveError> {
    match parse_authority(authority)? {
        Target::Service {
            name,
            namespace,
            port,
        } => {
            let svc =
                config
                    .service(&namespace, &name)
                    .ok_or_else(|| ResolveError::UnknownService {
                        name: name.to_string(),
                        namespace: namespace.to_string(),
                    })?;
            let p = match port {
                Some(p) => svc.port(p),
                None => svc
                    .port(default_port(scheme))
                    .or_else(|| svc.default_port()),
            };
            let p = p.ok_or_else(|| ResolveError::UnknownPort {
                service: svc.authority.to_string(),
                port: port.unwrap_or_else(|| default_port(scheme)),
            })?;
            Ok((svc, p))
        }
        Target::Addr(ip, port) => {
            let addr = SocketAddr::new(ip, port.unwrap_or_else(|| default_port(scheme)));
            let svc = config
                .service_by_addr(addr)
                .ok_or_else(|| ResolveError::UnknownAddr(addr.to_string()))?;
            let p = svc
                .port(addr.port())
                .ok_or_else(|| ResolveError::UnknownAddr(addr.to_string()))?;
            Ok((svc, p))
        }
    }
}

/// The outcome of an inbound authorization check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, by the named authorization or (`None`) by the default policy.
    Allow(Option<Arc<str>>),
    Deny(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

fn default_decision(
    policy: &InboundPolicy,
    port: u16,
    peer: Option<&str>,
    restricted: bool,
) -> Decision {
    if restricted {
        return Decision::Deny(match peer {
            Some(id) => format!("no authorization on port {port} allows {id}"),
            None => format!("port {port} only admits authorized mesh identities"),
        });
    }
    match (policy.default_policy, peer) {
        (DefaultPolicy::Allow, _) | (DefaultPolicy::Mesh, Some(_)) => Decision::Allow(None),
        (DefaultPolicy::Mesh, None) => {
            Decision::Deny("default policy mesh: unauthenticated clients are denied".to_string())
        }
        (DefaultPolicy::Deny, _) => Decision::Deny(format!(
            "default policy deny and no authorization on port {port}"
        )),
    }
}

/// Authorizes an HTTP request to `port` from `peer` (its mTLS identity, if any): allowed iff any
/// authorization on the port allows it, or the port is not restricted and the default policy
/// allows the client. An authorization for [`crate::config::Clients::AnyClient`] admits every
/// client, plaintext ones included (kubelet probes).
pub fn authorize_http(
    policy: &InboundPolicy,
    port: u16,
    peer: Option<&str>,
    req: &RequestInfo<'_>,
) -> Decision {
    let port_policy = policy.ports.get(&port);
    if let Some(p) = port_policy {
        for a in &p.authorizations {
            if a.admits(peer) && (a.all_traffic || a.http_routes.iter().any(|m| http_match(m, req)))
            {
                return Decision::Allow(Some(a.name.clone()));
            }
        }
    }
    let restricted = port_policy.is_some_and(|p| p.restricted);
    match default_decision(policy, port, peer, restricted) {
        Decision::Deny(_) if restricted && peer.is_some() => Decision::Deny(format!(
            "no authorization on port {port} allows {} to {} {}",
            peer.unwrap_or_default(),
            req.method,
            req.path
        )),
        d => d,
    }
}

/// Authorizes an opaque TCP connection: only authorizations covering all traffic on the port
/// count, then the default policy as for HTTP.
pub fn authorize_tcp(policy: &InboundPolicy, port: u16, peer: Option<&str>) -> Decision {
    let port_policy = policy.ports.get(&port);
    if let Some(p) = port_policy {
        for a in &p.authorizations {
            if a.all_traffic && a.admits(peer) {
                return Decision::Allow(Some(a.name.clone()));
            }
        }
    }
    default_decision(
        policy,
        port,
        peer,
        port_policy.is_some_and(|p| p.restricted),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Authorization, Clients, EndpointSet, InboundPort, MeshClients, Protocol};
    use std::collections::BTreeMap;
    use weft_common::SpiffeId;

    fn mesh(ids: &[&str]) -> Clients {
        Clients::Mesh(MeshClients::new(
            ids.iter()
                .map(|id| SpiffeId::parse(id).unwrap_or_else(|e| panic!("{e}"))),
        ))
    }

    /// A match as the config conversion builds it from the proxy API's form.
    fn m(name: &str, path: Option<&str>, methods: &[&str], headers: &[(&str, &str)]) -> HttpMatch {
        let proto = weft_proxy_api::v1::HttpMatch {
            name: name.to_string(),
            path_regex: path.unwrap_or_default().to_string(),
            methods: methods.iter().map(|x| x.to_string()).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| weft_proxy_api::v1::HeaderMatch {
                    name: n.to_string(),
                    value_regex: v.to_string(),
                })
                .collect(),
            ..Default::default()
        };
        HttpMatch::from_proto("test", &proto).unwrap_or_else(|e| panic!("{e}"))
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> (Method, String, HeaderMap) {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                http::HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        (
            Method::from_bytes(method.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            path.to_string(),
            h,
        )
    }

    fn check(mt: &HttpMatch, method: &str, path: &str, headers: &[(&str, &str)]) -> bool {
        let (method, path, headers) = req(method, path, headers);
        http_match(
            mt,
            &RequestInfo {
                method: &method,
                path: &path,
                query: None,
                headers: &headers,
            },
        )
    }

    #[test]
    fn query_params_first_occurrence_decoded_whole_value() {
        let proto = weft_proxy_api::v1::HttpMatch {
            name: "q".into(),
            query_params: vec![weft_proxy_api::v1::QueryParamMatch {
                name: "animal".into(),
                value_regex: "whale|dol phin".into(),
            }],
            ..Default::default()
        };
        let mt = HttpMatch::from_proto("test", &proto).unwrap_or_else(|e| panic!("{e}"));
        let (method, path, headers) = req("GET", "/", &[]);
        let with = |query: Option<&str>| {
            http_match(
                &mt,
                &RequestInfo {
                    method: &method,
                    path: &path,
                    query,
                    headers: &headers,
                },
            )
        };
        assert!(with(Some("animal=whale")));
        assert!(with(Some("x=1&animal=whale&y")));
        assert!(with(Some("animal=dol%20phin")));
        assert!(with(Some("%61nimal=whale")));
        // Whole value, exact name, first occurrence only.
        assert!(!with(Some("animal=whales")));
        assert!(!with(Some("Animal=whale")));
        assert!(!with(Some("animal=dog&animal=whale")));
        assert!(!with(Some("animal")));
        assert!(!with(Some("animal=%zzwhale")));
        assert!(!with(Some("animal=%ff")));
        assert!(!with(None));
        assert_eq!(query_param(Some("a=%2B+1"), "a").as_deref(), Some("++1"));
        assert_eq!(query_param(Some("a=%+1"), "a"), None);
    }

    #[test]
    fn path_regex_is_prefix_anchored() {
        let mt = m("api", Some("/api"), &[], &[]);
        assert!(check(&mt, "GET", "/api", &[]));
        assert!(check(&mt, "GET", "/api/users/1", &[]));
        assert!(check(&mt, "GET", "/apix", &[]));
        assert!(!check(&mt, "GET", "/v1/api", &[]));
        let exact = m("exact", Some("/metrics$"), &[], &[]);
        assert!(check(&exact, "GET", "/metrics", &[]));
        assert!(!check(&exact, "GET", "/metrics/x", &[]));
        // Alternation stays anchored (compiled as ^(?:a|b)).
        let alt = m("alt", Some("/a|/b"), &[], &[]);
        assert!(check(&alt, "GET", "/b/1", &[]));
        assert!(!check(&alt, "GET", "/c/b", &[]));
        let dot = m("any", Some(".*"), &[], &[]);
        assert!(check(&dot, "GET", "/", &[]));
    }

    #[test]
    fn methods_and_wildcard() {
        let get = m("g", None, &["GET", "HEAD"], &[]);
        assert!(check(&get, "GET", "/", &[]));
        assert!(check(&get, "HEAD", "/", &[]));
        assert!(!check(&get, "POST", "/", &[]));
        let any = m("any", None, &["*"], &[]);
        assert!(check(&any, "DELETE", "/", &[]));
        let none = m("none", None, &[], &[]);
        assert!(check(&none, "PATCH", "/x", &[]));
    }

    #[test]
    fn headers_are_anded_and_fully_anchored() {
        let mt = m(
            "h",
            None,
            &[],
            &[("x-user", "beta-.*"), ("x-region", "eu|us")],
        );
        assert!(check(
            &mt,
            "GET",
            "/",
            &[("x-user", "beta-7"), ("x-region", "eu")]
        ));
        assert!(!check(&mt, "GET", "/", &[("x-user", "beta-7")]));
        assert!(!check(
            &mt,
            "GET",
            "/",
            &[("x-user", "beta-7"), ("x-region", "eux")]
        ));
        assert!(!check(
            &mt,
            "GET",
            "/",
            &[("x-user", "xbeta-7"), ("x-region", "eu")]
        ));
        // Every value of a repeated header must match: one failing value fails the rule.
        assert!(!check(
            &mt,
            "GET",
            "/",
            &[
                ("x-user", "alpha"),
                ("x-user", "beta-1"),
                ("x-region", "us")
            ]
        ));
        assert!(!check(
            &mt,
            "GET",
            "/",
            &[
                ("x-user", "beta-1"),
                ("x-user", "alpha"),
                ("x-region", "us")
            ]
        ));
        assert!(check(
            &mt,
            "GET",
            "/",
            &[
                ("x-user", "beta-1"),
                ("x-user", "beta-2"),
                ("x-region", "us")
            ]
        ));
        // Header-only match applies to every path and method.
        assert!(check(
            &mt,
            "PUT",
            "/deep/path",
            &[("x-user", "beta-"), ("x-region", "us")]
        ));
    }

    fn backend(service: &str, weight: u64) -> Backend {
        Backend {
            service: Arc::from(service),
            weight,
            endpoint_set: Arc::from(""),
            endpoints: Arc::new(EndpointSet::default()),
            unavailable: None,
            unavailable_status: http::StatusCode::SERVICE_UNAVAILABLE,
            filters: vec![],
        }
    }

    fn route(name: &str, matches: Vec<HttpMatch>, backends: Vec<Backend>) -> Route {
        let total_weight = backends.iter().map(|b| b.weight).sum();
        Route {
            name: Arc::from(name),
            matches,
            backends,
            total_weight,
            filters: vec![],
            direct_status: None,
            timeouts: None,
        }
    }

    #[test]
    fn matches_or_and_first_route_wins() {
        let routes = vec![
            route(
                "split:demo/ab",
                vec![
                    m("beta", None, &[], &[("x-beta", "1")]),
                    m("canary-path", Some("/canary"), &[], &[]),
                ],
                vec![backend("v2", 1)],
            ),
            route(
                "split:demo/later",
                vec![m("beta2", None, &[], &[("x-beta", ".*")])],
                vec![backend("v3", 1)],
            ),
            route("default", vec![], vec![backend("v1", 1)]),
        ];
        let pick = |method: &str, path: &str, headers: &[(&str, &str)]| {
            let (method, path, headers) = req(method, path, headers);
            let info = RequestInfo {
                method: &method,
                path: &path,
                query: None,
                headers: &headers,
            };
            select_route(&routes, &info).map(|r| r.name.to_string())
        };
        assert_eq!(
            pick("GET", "/", &[("x-beta", "1")]).as_deref(),
            Some("split:demo/ab")
        );
        assert_eq!(
            pick("GET", "/canary/x", &[]).as_deref(),
            Some("split:demo/ab")
        );
        assert_eq!(
            pick("GET", "/", &[("x-beta", "2")]).as_deref(),
            Some("split:demo/later")
        );
        assert_eq!(pick("GET", "/", &[]).as_deref(), Some("default"));
        assert_eq!(
            select_tcp_route(&routes)
                .map(|r| r.name.to_string())
                .as_deref(),
            Some("default")
        );
    }

    #[test]
    fn weighted_choice_respects_weights_and_zero() {
        let r = route(
            "s",
            vec![],
            vec![backend("a", 0), backend("b", 900), backend("c", 100)],
        );
        assert_eq!(choose_backend_with(&r, 0).map(|b| &*b.service), Some("b"));
        assert_eq!(choose_backend_with(&r, 899).map(|b| &*b.service), Some("b"));
        assert_eq!(choose_backend_with(&r, 900).map(|b| &*b.service), Some("c"));
        assert_eq!(
            choose_backend_with(&r, 1000).map(|b| &*b.service),
            Some("b")
        );
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            match choose_backend(&r).map(|b| &*b.service) {
                Some("a") => counts[0] += 1,
                Some("b") => counts[1] += 1,
                Some("c") => counts[2] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(counts[0], 0);
        assert!((8_700..9_300).contains(&counts[1]), "{counts:?}");
        let zero = route("z", vec![], vec![backend("a", 0)]);
        assert!(choose_backend(&zero).is_none());
        assert!(choose_backend_with(&zero, 5).is_none());
        let none = route("n", vec![], vec![]);
        assert!(choose_backend(&none).is_none());
    }

    fn svc(name: &str, ns: &str, port: Option<u16>) -> Target<'static> {
        Target::Service {
            name: Cow::Owned(name.to_string()),
            namespace: Cow::Owned(ns.to_string()),
            port,
        }
    }

    #[test]
    fn authority_forms() {
        fn ok(a: &str) -> Target<'_> {
            parse_authority(a).unwrap_or_else(|e| panic!("{a}: {e}"))
        }
        assert_eq!(ok("api.demo"), svc("api", "demo", None));
        assert_eq!(ok("api.demo:8080"), svc("api", "demo", Some(8080)));
        assert_eq!(ok("api.demo.svc"), svc("api", "demo", None));
        assert_eq!(ok("api.demo.svc.cluster.local"), svc("api", "demo", None));
        assert_eq!(ok("api.demo.svc.cluster.local."), svc("api", "demo", None));
        assert_eq!(
            ok("api.demo.svc.cluster.local.:8080"),
            svc("api", "demo", Some(8080))
        );
        assert_eq!(ok("API.Demo.SVC.cluster.local"), svc("api", "demo", None));
        assert_eq!(
            ok("api.demo.svc.example.org:80"),
            svc("api", "demo", Some(80))
        );
        assert_eq!(ok("api.demo:"), svc("api", "demo", None));
        assert_eq!(ok("api.demo."), svc("api", "demo", None));
        assert_eq!(
            ok("10.96.0.1:80"),
            Target::Addr(
                "10.96.0.1".parse().unwrap_or_else(|_| unreachable!()),
                Some(80)
            )
        );
        assert_eq!(
            ok("[::1]:81"),
            Target::Addr("::1".parse().unwrap_or_else(|_| unreachable!()), Some(81))
        );
        assert_eq!(
            ok("[::1]"),
            Target::Addr("::1".parse().unwrap_or_else(|_| unreachable!()), None)
        );
        assert_eq!(
            ok("fd00::1"),
            Target::Addr("fd00::1".parse().unwrap_or_else(|_| unreachable!()), None)
        );
        assert_eq!(ok(" user:pw@api.demo:81 "), svc("api", "demo", Some(81)));
        assert!(parse_authority("api").is_err());
        assert!(parse_authority("api.demo.svc.").is_ok());
        assert!(parse_authority("api.demo.svcx.local").is_err());
        assert!(parse_authority(".demo").is_err());
        assert!(parse_authority(":8080").is_err());
        assert!(parse_authority("").is_err());
        assert!(parse_authority("api.demo:99999").is_err());
        assert!(parse_authority("api.demo:0").is_err());
        assert!(parse_authority("api.demo.pod.cluster.local").is_err());
        assert!(parse_authority("api.demo.svc..local").is_err());
        assert!(parse_authority("api..svc").is_err());
    }

    /// The one-pass reading of the common authority answers what the general parse answers,
    /// wherever it answers; and it does answer for the forms a mesh sends.
    #[test]
    fn the_one_pass_agrees_with_the_general_parse() {
        for a in [
            "backend.bench.svc.cluster.local:8080",
            "api.demo",
            "api.demo:8080",
            "api.demo.svc",
            "api.demo.svc.cluster.local",
            "api-v2.demo-1.svc.example.org:80",
            "a1.b2:1",
        ] {
            assert!(plain_service(a).is_some(), "{a} not read in one pass");
        }
        let mut corpus: Vec<String> = "api.demo.svc. api.demo. api.demo: api.demo:0 api.demo:99999 \
            api.demo:65535 api.demo:08 api.demo:+8 api.demo:8a api..svc .demo api.demo.svcx.local \
            api.demo.svc..local api.demo.pod.cluster.local api api:80 :80 1api.demo 10.96.0.1:80 \
            api.demo.svc.c:1:2 api.:80 api.demo.svc:80 api.demo.svc.x.:80 a.b.svc.c.d a.b.svcc a.b.sv"
            .split_whitespace()
            .chain([""])
            .map(String::from)
            .collect();
        // And 200,000 short strings over the characters that matter (a fixed pseudo-random walk).
        let alphabet = b"ab1.:-svcS@[] 0";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 14) as usize;
            let s: String = (0..len)
                .map(|i| {
                    let k = (x >> (4 * (i % 15))) as usize ^ i;
                    alphabet[k % alphabet.len()] as char
                })
                .collect();
            corpus.push(s);
        }
        let mut read = 0;
        for a in &corpus {
            if let Some(t) = plain_service(a) {
                read += 1;
                assert_eq!(Ok(t), parse_authority_general(a), "{a:?}");
            }
        }
        assert!(
            read > 1_000,
            "the walk read only {read} authorities in one pass"
        );
    }

    #[test]
    fn request_authority_prefers_absolute_form() {
        let r = http::Request::get("http://api.demo:8080/x")
            .header("host", "other.ns")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request_authority(&r), Some("api.demo:8080"));
        let r = http::Request::get("/x")
            .header("host", "web.demo")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request_authority(&r), Some("web.demo"));
        assert_eq!(default_port(Some(&http::uri::Scheme::HTTPS)), 443);
        assert_eq!(default_port(None), 80);
    }

    fn policy(default: DefaultPolicy, restricted: bool) -> InboundPolicy {
        let mut ports = BTreeMap::new();
        ports.insert(
            8080,
            InboundPort {
                limits: None,
                port: 8080,
                protocol: Protocol::Detect,
                restricted,
                authorizations: vec![
                    Authorization {
                        name: Arc::from("demo/web-reads"),
                        clients: mesh(&["spiffe://td/ns/demo/sa/web"]),
                        all_traffic: false,
                        http_routes: vec![m("reads", Some("/api"), &["GET"], &[])],
                    },
                    Authorization {
                        name: Arc::from("demo/admin-all"),
                        clients: mesh(&["spiffe://td/ns/demo/sa/admin"]),
                        all_traffic: true,
                        http_routes: vec![],
                    },
                ],
            },
        );
        InboundPolicy {
            identity: "spiffe://td/ns/demo/sa/api".into(),
            default_policy: default,
            ports,
        }
    }

    fn authz(
        p: &InboundPolicy,
        port: u16,
        peer: Option<&str>,
        method: &str,
        path: &str,
    ) -> Decision {
        let (method, path, headers) = req(method, path, &[]);
        authorize_http(
            p,
            port,
            peer,
            &RequestInfo {
                method: &method,
                path: &path,
                query: None,
                headers: &headers,
            },
        )
    }

    const WEB: &str = "spiffe://td/ns/demo/sa/web";
    const ADMIN: &str = "spiffe://td/ns/demo/sa/admin";
    const OTHER: &str = "spiffe://td/ns/demo/sa/other";

    #[test]
    fn restricted_port_admits_only_authorizations() {
        for default in [
            DefaultPolicy::Allow,
            DefaultPolicy::Mesh,
            DefaultPolicy::Deny,
        ] {
            let p = policy(default, true);
            assert_eq!(
                authz(&p, 8080, Some(WEB), "GET", "/api/x"),
                Decision::Allow(Some(Arc::from("demo/web-reads")))
            );
            assert!(!authz(&p, 8080, Some(WEB), "POST", "/api/x").is_allowed());
            assert!(!authz(&p, 8080, Some(WEB), "GET", "/other").is_allowed());
            // Additive: admin's all-traffic grant covers everything.
            assert!(authz(&p, 8080, Some(ADMIN), "DELETE", "/x").is_allowed());
            assert!(!authz(&p, 8080, Some(OTHER), "GET", "/api").is_allowed());
            assert!(!authz(&p, 8080, None, "GET", "/api").is_allowed());
            // TCP: only all-traffic grants.
            assert!(authorize_tcp(&p, 8080, Some(ADMIN)).is_allowed());
            assert!(!authorize_tcp(&p, 8080, Some(WEB)).is_allowed());
        }
        let p = policy(DefaultPolicy::Allow, true);
        match authz(&p, 8080, Some(WEB), "POST", "/api/x") {
            Decision::Deny(reason) => assert!(reason.contains(WEB) && reason.contains("POST")),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn unrestricted_ports_follow_default_policy() {
        let allow = policy(DefaultPolicy::Allow, false);
        assert_eq!(
            authz(&allow, 8080, None, "GET", "/x"),
            Decision::Allow(None)
        );
        assert_eq!(
            authz(&allow, 9999, None, "GET", "/x"),
            Decision::Allow(None)
        );
        assert!(authorize_tcp(&allow, 9999, None).is_allowed());
        let mesh = policy(DefaultPolicy::Mesh, false);
        assert!(authz(&mesh, 9999, Some(OTHER), "GET", "/").is_allowed());
        assert!(!authz(&mesh, 9999, None, "GET", "/").is_allowed());
        assert!(!authorize_tcp(&mesh, 9999, None).is_allowed());
        let deny = policy(DefaultPolicy::Deny, false);
        assert!(!authz(&deny, 9999, Some(OTHER), "GET", "/").is_allowed());
        // Authorizations still allow on unrestricted ports.
        assert!(authz(&deny, 8080, Some(WEB), "GET", "/api").is_allowed());
        assert!(!authz(&deny, 8080, Some(WEB), "GET", "/nope").is_allowed());
        // The safe default config (no policy) allows everything.
        let default = InboundPolicy::default();
        assert!(authz(&default, 1234, None, "GET", "/").is_allowed());
    }

    #[test]
    fn repeated_header_cannot_satisfy_an_authorization() {
        let mut p = policy(DefaultPolicy::Deny, true);
        if let Some(port) = p.ports.get_mut(&8080) {
            port.authorizations = vec![Authorization {
                name: Arc::from("demo/admins"),
                clients: mesh(&[WEB]),
                all_traffic: false,
                http_routes: vec![m("admin", None, &[], &[("x-user", "admin")])],
            }];
        }
        let decide = |users: &[&str]| {
            let headers: Vec<(&str, &str)> = users.iter().map(|u| ("x-user", *u)).collect();
            let (method, path, headers) = req("GET", "/", &headers);
            authorize_http(
                &p,
                8080,
                Some(WEB),
                &RequestInfo {
                    method: &method,
                    path: &path,
                    query: None,
                    headers: &headers,
                },
            )
            .is_allowed()
        };
        assert!(decide(&["admin"]));
        assert!(decide(&["admin", "admin"]));
        assert!(!decide(&["other", "admin"]));
        assert!(!decide(&["admin", "other"]));
        assert!(!decide(&[]));
    }

    /// A `probe` authorization (any client) as the operator emits for kubelet probes.
    fn with_probe(mut p: InboundPolicy) -> InboundPolicy {
        if let Some(port) = p.ports.get_mut(&8080) {
            port.authorizations.push(Authorization {
                name: Arc::from("probe"),
                clients: Clients::AnyClient,
                all_traffic: false,
                http_routes: vec![m("probe", Some("/healthz$"), &["GET", "HEAD"], &[])],
            });
        }
        p
    }

    #[test]
    fn any_client_source_admits_plaintext_probes_on_their_paths_only() {
        for default in [
            DefaultPolicy::Allow,
            DefaultPolicy::Mesh,
            DefaultPolicy::Deny,
        ] {
            let p = with_probe(policy(default, true));
            // The kubelet: no identity.
            assert_eq!(
                authz(&p, 8080, None, "GET", "/healthz"),
                Decision::Allow(Some(Arc::from("probe")))
            );
            assert!(authz(&p, 8080, None, "HEAD", "/healthz").is_allowed());
            // A meshed client is a client too.
            assert!(authz(&p, 8080, Some(OTHER), "GET", "/healthz").is_allowed());
            // Only the probe path, only GET/HEAD.
            assert!(!authz(&p, 8080, None, "GET", "/items").is_allowed());
            assert!(!authz(&p, 8080, None, "GET", "/healthz/x").is_allowed());
            assert!(!authz(&p, 8080, None, "POST", "/healthz").is_allowed());
            // The TrafficTarget grants still hold and still exclude others.
            assert!(authz(&p, 8080, Some(WEB), "GET", "/api/x").is_allowed());
            assert!(!authz(&p, 8080, Some(OTHER), "GET", "/api/x").is_allowed());
            // Not an all-traffic grant: opaque TCP stays denied.
            assert!(!authorize_tcp(&p, 8080, None).is_allowed());
        }
    }

    #[test]
    fn any_client_all_traffic_admits_plaintext_tcp() {
        let mut p = policy(DefaultPolicy::Deny, true);
        if let Some(port) = p.ports.get_mut(&8080) {
            port.authorizations.push(Authorization {
                name: Arc::from("open"),
                clients: Clients::AnyClient,
                all_traffic: true,
                http_routes: vec![],
            });
        }
        assert_eq!(
            authorize_tcp(&p, 8080, None),
            Decision::Allow(Some(Arc::from("open")))
        );
        assert!(authz(&p, 8080, None, "POST", "/anything").is_allowed());
    }
}
