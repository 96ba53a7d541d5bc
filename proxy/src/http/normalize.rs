//! Request normalisation before routing and authorization: the proxy matches the request as the
//! app will read it, and forwards exactly what it matched.
//!
//! The path (not the query) is put in one canonical form:
//!
//! 1. Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) are decoded
//!    (`%2e` → `.`, `%41` → `A`); every other escape keeps its encoding with upper-case hex
//!    (`%c3%a9` → `%C3%A9`). Nothing is decoded twice: `%252e` stays `%252e`.
//! 2. Empty segments are merged (`//` → `/`); a trailing slash is kept.
//! 3. Dot segments are removed (RFC 3986 §5.2.4), never above the root (`/../x` → `/x`).
//!
//! Rejected with `400` (never forwarded): an invalid escape (`%`, `%4`, `%zz`); an encoded
//! slash or backslash (`%2F`, `%5C`) and a raw backslash, which some apps treat as a separator
//! and others not, so no single reading is safe; an encoded NUL (`%00`); a dot segment carrying
//! parameters (`/..;/`, `/.;x/`, which servlet containers resolve as `..` / `.`); a path that does
//! not start with `/` (other than the asterisk-form `*`).
//!
//! Headers named by `Connection` (hop-by-hop, never forwarded) are removed before matching, so a
//! rule is never satisfied by a header the upstream does not receive.
//!
//! `Host`: more than one is `400` (RFC 9112 §3.2). A request whose target carries an authority
//! (HTTP/1.1 absolute-form, or HTTP/2 `:authority`) is routed by that authority and its `Host`
//! is replaced by it (RFC 9112 §3.2.2: the target's authority wins over `Host`), so the upstream
//! sees the authority the proxy routed on.

use std::borrow::Cow;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri};

/// Why a request was refused before routing (answered `400`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("invalid percent-encoding in path")]
    InvalidEscape,
    #[error("encoded slash or backslash (%2F, %5C) in path")]
    EncodedSeparator,
    #[error("backslash in path")]
    Backslash,
    #[error("encoded NUL (%00) in path")]
    EncodedNul,
    #[error("dot segment with parameters (..; or .;) in path")]
    DotSegmentParameters,
    #[error("path does not start with /")]
    Relative,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("request target could not be rebuilt")]
    Target,
}

impl Rejected {
    /// A short, bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Rejected::DuplicateHost => "duplicate_host",
            Rejected::Target => "bad_target",
            _ => "bad_path",
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `path` may need rewriting or rejecting; `false` for the common clean path, found in
/// one pass without allocating.
fn needs_work(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' => return true,
            b'/' | b'.' if prev == b'/' => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

/// The canonical form of a request path (see the module docs), borrowed when it is already
/// canonical. The asterisk-form `*` is returned as is.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, Rejected> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        return Err(Rejected::Relative);
    }
    let bytes = path.as_bytes();
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Escapes: decode unreserved characters, upper-case the rest, reject the unsafe ones.
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(Rejected::InvalidEscape);
                };
                let c = (hi << 4) | lo;
                match c {
                    b'/' | b'\\' => return Err(Rejected::EncodedSeparator),
                    0 => return Err(Rejected::EncodedNul),
                    c if unreserved(c) => decoded.push(c),
                    _ => decoded.extend_from_slice(&[
                        b'%',
                        HEX_UPPER[usize::from(hi)],
                        HEX_UPPER[usize::from(lo)],
                    ]),
                }
                i += 3;
            }
            b'\\' => return Err(Rejected::Backslash),
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2 and 3. Segments: empty ones merged, dot segments resolved, never above the root.
    let mut out: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let rest = decoded.get(1..).unwrap_or_default();
    let count = rest.split(|&b| b == b'/').count();
    for (n, seg) in rest.split(|&b| b == b'/').enumerate() {
        let last = n + 1 == count;
        let name = seg.split(|&b| b == b';').next().unwrap_or_default();
        let dots = name == b"." || name == b"..";
        if dots && name.len() != seg.len() {
            return Err(Rejected::DotSegmentParameters);
        }
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
        trailing_slash = last && matches!(seg, b"" | b"." | b"..");
    }
    let mut canon = String::with_capacity(decoded.len());
    for seg in &out {
        canon.push('/');
        // Every byte came from a `&str` or is ASCII, and segments split on ASCII `/`.
        canon.push_str(std::str::from_utf8(seg).map_err(|_| Rejected::Target)?);
    }
    if out.is_empty() || trailing_slash {
        canon.push('/');
    }
    if canon == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(canon))
}

/// Normalises `req` in place before routing and authorization: one `Host` at most, the target's
/// authority (absolute-form or `:authority`) as `Host`, and the canonical path (query kept as
/// is). On `Err` the request must be answered `400` and not forwarded.
pub fn normalize_request<B>(req: &mut Request<B>) -> Result<(), Rejected> {
    let mut hosts = req.headers().get_all(HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(Rejected::DuplicateHost);
    }
    drop_connection_named(req.headers_mut());
    if let Some(authority) = req.uri().authority() {
        // `host[:port]`, without userinfo.
        let target = authority.as_str();
        let target = target.rsplit_once('@').map_or(target, |(_, h)| h);
        if req.headers().get(HOST).map(|v| v.as_bytes()) != Some(target.as_bytes()) {
            let v = HeaderValue::from_str(target).map_err(|_| Rejected::Target)?;
            req.headers_mut().insert(HOST, v);
        }
    }
    if req.method() == http::Method::CONNECT {
        // Authority-form: no path (CONNECT is answered `501` anyway).
        return Ok(());
    }
    let path = req.uri().path();
    let canon = match normalize_path(path)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(c) => c,
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{canon}?{q}"),
        None => canon,
    };
    let pq = PathAndQuery::from_maybe_shared(pq).map_err(|_| Rejected::Target)?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Rejected::Target)?;
    Ok(())
}

/// Removes the headers a `Connection` header names (they are hop-by-hop and never reach the
/// upstream), so that matching sees only headers that are forwarded. `upgrade` is kept: the
/// upgrade path carries it on; the standard hop-by-hop headers are removed later as before.
fn drop_connection_named(headers: &mut http::HeaderMap) {
    if !headers.contains_key(http::header::CONNECTION) {
        return;
    }
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| *n != http::header::UPGRADE && *n != http::header::CONNECTION)
        .collect();
    for n in named {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, Rejected> {
        normalize_path(p).map(|c| c.into_owned())
    }

    #[test]
    fn clean_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/a;x=1/b", "/é", "*"] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(_))),
                "{p} {:?}",
                normalize_path(p)
            );
        }
    }

    #[test]
    fn dot_segments_never_climb_above_root() {
        assert_eq!(n("/public/../private").as_deref(), Ok("/private"));
        assert_eq!(n("/public/./a").as_deref(), Ok("/public/a"));
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/a/b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(n("/..").as_deref(), Ok("/"));
        assert_eq!(n("/../../x").as_deref(), Ok("/x"));
        assert_eq!(n("/a/..").as_deref(), Ok("/"));
        assert_eq!(n("/.").as_deref(), Ok("/"));
        assert_eq!(n("/a/.../b").as_deref(), Ok("/a/.../b"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        assert_eq!(n("/public/%2e%2e/private").as_deref(), Ok("/private"));
        assert_eq!(n("/public/%2E%2E/private").as_deref(), Ok("/private"));
        assert_eq!(n("/public/.%2e/private").as_deref(), Ok("/private"));
        assert_eq!(n("/%41%7a%2D%5f%7E").as_deref(), Ok("/Az-_~"));
        assert_eq!(n("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(n("/a%20b").as_deref(), Ok("/a%20b"));
        // No double decoding.
        assert_eq!(
            n("/public/%252e%252e/x").as_deref(),
            Ok("/public/%252e%252e/x")
        );
    }

    #[test]
    fn slashes_are_merged_trailing_kept() {
        assert_eq!(n("//private").as_deref(), Ok("/private"));
        assert_eq!(n("/a//b///c").as_deref(), Ok("/a/b/c"));
        assert_eq!(n("/a//").as_deref(), Ok("/a/"));
        assert_eq!(n("/public//../private").as_deref(), Ok("/private"));
    }

    #[test]
    fn unsafe_paths_are_rejected() {
        assert_eq!(n("/a%"), Err(Rejected::InvalidEscape));
        assert_eq!(n("/a%4"), Err(Rejected::InvalidEscape));
        assert_eq!(n("/a%zz"), Err(Rejected::InvalidEscape));
        assert_eq!(n("/public%2F..%2Fprivate"), Err(Rejected::EncodedSeparator));
        assert_eq!(n("/public%2f"), Err(Rejected::EncodedSeparator));
        assert_eq!(n("/public%5C..%5Cprivate"), Err(Rejected::EncodedSeparator));
        assert_eq!(n("/public\\..\\private"), Err(Rejected::Backslash));
        assert_eq!(n("/a%00b"), Err(Rejected::EncodedNul));
        assert_eq!(
            n("/public/..;/private"),
            Err(Rejected::DotSegmentParameters)
        );
        assert_eq!(n("/public/.;x/a"), Err(Rejected::DotSegmentParameters));
        assert_eq!(
            n("/public/%2e%2e;/private"),
            Err(Rejected::DotSegmentParameters)
        );
        assert_eq!(n("a/b"), Err(Rejected::Relative));
    }

    #[test]
    fn normal_form_is_stable() {
        let samples = [
            "/a/./b/../../c//d/%2e/e/",
            "/%2e%2E/%2e/x%3a%3A/y",
            "/a/b/c/../../../../d",
            "//./..//.//",
            "/x/%7e/.././%41",
        ];
        for p in samples {
            let once = n(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(n(&once).as_deref(), Ok(once.as_str()), "{p}");
            assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../"));
        }
    }

    fn request(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn headers_named_by_connection_are_not_matched() {
        let mut r = Request::get("/")
            .header("connection", "x-user, Upgrade")
            .header("upgrade", "websocket")
            .header("x-user", "admin")
            .header("x-keep", "1")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(normalize_request(&mut r), Ok(()));
        assert!(r.headers().get("x-user").is_none());
        assert!(r.headers().get("upgrade").is_some());
        assert!(r.headers().get("connection").is_some());
        assert!(r.headers().get("x-keep").is_some());
    }

    #[test]
    fn request_target_and_host() {
        let mut r = request("/public/%2e%2e/private?x=%2e%2e/../a", &["web.shop"]);
        assert_eq!(normalize_request(&mut r), Ok(()));
        assert_eq!(r.uri().to_string(), "/private?x=%2e%2e/../a");

        let mut r = request("/", &["a.shop", "b.shop"]);
        assert_eq!(normalize_request(&mut r), Err(Rejected::DuplicateHost));

        let mut r = request(
            "http://user@web.shop.svc.cluster.local:8080/a/../x",
            &["evil.shop"],
        );
        assert_eq!(normalize_request(&mut r), Ok(()));
        assert_eq!(
            r.uri().to_string(),
            "http://user@web.shop.svc.cluster.local:8080/x"
        );
        assert_eq!(
            r.headers().get(HOST).map(|v| v.as_bytes()),
            Some(&b"web.shop.svc.cluster.local:8080"[..])
        );
    }
}
