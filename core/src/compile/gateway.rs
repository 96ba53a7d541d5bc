//! Gateway API for the mesh (GAMMA): HTTPRoutes whose parentRef names a Service, compiled into
//! the same [`OutboundPort`] routes SMI TrafficSplits compile to, so that one place (the proxy's
//! route table) decides routing. The rules are in `docs/gateway-api.md`.
//!
//! Pure functions of the model:
//! * [`analyze_route`]: what a route's rules become (matches in the proxy's form, backendRefs),
//!   and what it uses that weft does not implement;
//! * [`analyze_parent`]: whether the route attaches to one parent Service, on which ports, and
//!   whether its backendRefs resolve: the one decision that both the routes and the status use;
//! * [`outbound_routes`]: the routes of a Service's ports from every route attached to it;
//! * [`route_status`]: `status.parents[]` of a route.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use gateway_api::httproutes as gw;
use serde::{Deserialize, Serialize};
use weft_smi::hub;

use weft_smi::status::{ACCEPTED, RESOLVED_REFS};

use super::rules::{self, condition};
use super::types::*;

mod grpc;
use crate::model::gateway::{is_core_group, HttpRoute, ServiceParent};
use crate::model::{Model, ObjectRef, Service, ServicePort};
use crate::reason::Reason;

/// The protocol of a Service port: the compiler's one decision (`units::service_port_protocol`),
/// passed in by the caller so that this module does not depend on the units module.
pub type PortProtocol = fn(&ServicePort) -> Protocol;

/// The `controllerName` weft writes in `status.parents[]`.
pub const CONTROLLER_NAME: &str = "weft.io/mesh-controller";

/// `status.parents[]` entry of an HTTPRoute for one Service parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parentRef as written in the spec.
    pub parent_ref: gw::HttpRouteParentRefs,
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs` (in that order).
    pub conditions: Vec<hub::Condition>,
}

// Strings, integers and conditions only: equality is total.
impl Eq for RouteParentStatus {}

/// Where a match sorts among all matches on a port: the Gateway API's precedence (Exact path,
/// then RegularExpression, then the longest PathPrefix; a method; more headers; more query
/// parameters), then the older route, then rule and match order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    path_kind: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
}

/// One match of one rule, in the proxy's form.
#[derive(Clone, Debug)]
struct CompiledMatch {
    precedence: Precedence,
    /// `None`: the rule's catch-all (no matches, or `PathPrefix /` alone): it also carries opaque
    /// TCP, like SMI's `default` route.
    http: Option<HttpMatch>,
    /// The PathPrefix of the match (trailing `/` removed, `/` for the root); `None` for Exact
    /// and RegularExpression paths. A `ReplacePrefixMatch` rewrite replaces this prefix.
    prefix: Option<String>,
}

/// One backendRef of a rule.
#[derive(Clone, Debug)]
pub struct BackendRef {
    /// The Service's namespace: the backendRef's, else the route's.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    pub weight: u64,
    /// `None`: the parent's port.
    pub port: Option<u16>,
    /// Why it cannot resolve whatever the model holds (kind, port value).
    pub invalid: Option<(Reason, String)>,
    /// The backendRef's filters (a `ReplacePrefixMatch` still without its prefix).
    filters: Vec<RouteFilter>,
}

impl BackendRef {
    fn service(&self) -> ObjectRef {
        ObjectRef::new(self.namespace.clone(), self.name.clone())
    }
}

/// One rule of a route.
#[derive(Clone, Debug)]
struct CompiledRule {
    /// Route name in the proxy config (`httproute:<ns>/<name>/<rule name or index>`), a metrics
    /// label bounded by the config.
    name: String,
    matches: Vec<CompiledMatch>,
    /// Empty: the parent Service itself.
    backends: Vec<BackendRef>,
    /// The rule's filters (a `ReplacePrefixMatch` still without its prefix).
    filters: Vec<RouteFilter>,
    timeouts: Option<RouteTimeouts>,
}

/// What a route's spec becomes, independent of its parents.
#[derive(Clone, Debug)]
pub struct RouteAnalysis {
    rules: Vec<CompiledRule>,
    /// What keeps the route out of force, with the reason of its `Accepted=False` condition:
    /// fields weft does not implement (`UnsupportedValue`), invalid values (`UnsupportedValue`),
    /// filters that cannot be combined (`IncompatibleFilters`). A route is in force entirely or
    /// not at all (routing only part of what it says could send requests where the user did
    /// not mean them to go).
    pub problems: Vec<(Reason, String)>,
}

fn unsupported(problems: &mut Vec<(Reason, String)>, msg: String) {
    problems.push((Reason::UnsupportedValue, msg));
}

fn path_match(
    p: Option<&gw::HttpRouteRulesMatchesPath>,
    at: &str,
    problems: &mut Vec<(Reason, String)>,
) -> (u8, usize, Option<String>, Option<String>) {
    let kind = p
        .and_then(|p| p.r#type.clone())
        .unwrap_or(gw::HttpRouteRulesMatchesPathType::PathPrefix);
    let value = p
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    match kind {
        gw::HttpRouteRulesMatchesPathType::Exact => (
            0,
            value.len(),
            Some(format!("{}$", regex::escape(&value))),
            None,
        ),
        gw::HttpRouteRulesMatchesPathType::RegularExpression => {
            if let Some(e) = rules::regex_error(&value, "^(?:", ")$") {
                unsupported(
                    problems,
                    format!("{at}.path: invalid regular expression {value:?}: {e}"),
                );
                return (1, value.len(), None, None);
            }
            (1, value.len(), Some(format!("(?:{value})$")), None)
        }
        gw::HttpRouteRulesMatchesPathType::PathPrefix => {
            // Segment boundaries: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`; a
            // trailing `/` is ignored.
            let trimmed = value.trim_end_matches('/');
            if trimmed.is_empty() {
                (2, 1, Some(String::new()), Some("/".into()))
            } else {
                (
                    2,
                    trimmed.len(),
                    Some(format!("{}(?:/|$)", regex::escape(trimmed))),
                    Some(trimmed.to_string()),
                )
            }
        }
    }
}

fn method_name(m: &gw::HttpRouteRulesMatchesMethod) -> &'static str {
    use gw::HttpRouteRulesMatchesMethod as M;
    match m {
        M::Get => "GET",
        M::Head => "HEAD",
        M::Post => "POST",
        M::Put => "PUT",
        M::Delete => "DELETE",
        M::Connect => "CONNECT",
        M::Options => "OPTIONS",
        M::Trace => "TRACE",
        M::Patch => "PATCH",
    }
}

fn compile_match(
    m: &gw::HttpRouteRulesMatches,
    name: &str,
    at: &str,
    problems: &mut Vec<(Reason, String)>,
) -> Option<CompiledMatch> {
    let before = problems.len();
    let (path_kind, path_len, path_regex, prefix) = path_match(m.path.as_ref(), at, problems);
    let mut headers = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, h) in m.headers.iter().flatten().enumerate() {
        let lower = h.name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            unsupported(
                problems,
                format!("{at}.headers[{i}]: invalid header name {:?}", h.name),
            );
            continue;
        }
        // The spec: of names equal ignoring case, only the first is considered.
        if !seen.insert(lower.clone()) {
            continue;
        }
        let value_regex = match h.r#type {
            Some(gw::HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                if let Some(e) = rules::regex_error(&h.value, "^(?:", ")$") {
                    unsupported(
                        problems,
                        format!(
                            "{at}.headers[{i}]: invalid regular expression {:?}: {e}",
                            h.value
                        ),
                    );
                    continue;
                }
                h.value.clone()
            }
            _ => regex::escape(&h.value),
        };
        headers.push(HeaderMatch {
            name: lower,
            value_regex,
        });
    }
    let mut query_params = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, q) in m.query_params.iter().flatten().enumerate() {
        if q.name.is_empty() {
            unsupported(
                problems,
                format!("{at}.queryParams[{i}]: empty parameter name"),
            );
            continue;
        }
        // The spec: names are compared exactly; of equal names only the first is considered.
        if !seen.insert(q.name.clone()) {
            continue;
        }
        let value_regex = match q.r#type {
            Some(gw::HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                if let Some(e) = rules::regex_error(&q.value, "^(?:", ")$") {
                    unsupported(
                        problems,
                        format!(
                            "{at}.queryParams[{i}]: invalid regular expression {:?}: {e}",
                            q.value
                        ),
                    );
                    continue;
                }
                q.value.clone()
            }
            _ => regex::escape(&q.value),
        };
        query_params.push(QueryParamMatch {
            name: q.name.clone(),
            value_regex,
        });
    }
    if problems.len() > before {
        return None;
    }
    headers.sort();
    query_params.sort();
    let methods: Vec<String> = m.method.iter().map(|x| method_name(x).into()).collect();
    let path_regex = path_regex.unwrap_or_default();
    let catch_all = path_regex.is_empty()
        && methods.is_empty()
        && headers.is_empty()
        && query_params.is_empty();
    Some(CompiledMatch {
        precedence: Precedence {
            path_kind,
            path_len: Reverse(path_len),
            no_method: methods.is_empty(),
            headers: Reverse(headers.len()),
            query_params: Reverse(query_params.len()),
        },
        http: (!catch_all).then(|| HttpMatch {
            name: name.to_string(),
            path_regex,
            methods,
            headers,
            query_params,
        }),
        prefix,
    })
}

/// A header name of a filter: lower-case, a valid HTTP token.
fn filter_header_name(
    name: &str,
    at: &str,
    problems: &mut Vec<(Reason, String)>,
) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        unsupported(problems, format!("{at}: invalid header name {name:?}"));
        return None;
    }
    Some(lower)
}

fn filter_header_value(value: &str, at: &str, problems: &mut Vec<(Reason, String)>) -> bool {
    if http::HeaderValue::from_str(value).is_err() {
        unsupported(problems, format!("{at}: invalid header value {value:?}"));
        return false;
    }
    true
}

/// A `requestHeaderModifier` / `responseHeaderModifier` in the proxy's form. The spec's header
/// names are case-insensitive and a name may appear once across `set`, `add` and `remove`.
fn header_modifier(
    m: &gw::HttpRouteRulesFiltersRequestHeaderModifier,
    at: &str,
    problems: &mut Vec<(Reason, String)>,
) -> HeaderModifier {
    let before = problems.len();
    let mut seen = BTreeSet::new();
    let mut out = HeaderModifier::default();
    let mut named = |name: &str, at: String, problems: &mut Vec<(Reason, String)>| {
        let lower = filter_header_name(name, &at, problems)?;
        if !seen.insert(lower.clone()) {
            unsupported(
                problems,
                format!("{at}: header {name:?} is named more than once in this filter"),
            );
            return None;
        }
        Some(lower)
    };
    for (i, h) in m.set.iter().flatten().enumerate() {
        let at = format!("{at}.set[{i}]");
        if let Some(name) = named(&h.name, at.clone(), problems) {
            if filter_header_value(&h.value, &at, problems) {
                out.set.push(HeaderValue {
                    name,
                    value: h.value.clone(),
                });
            }
        }
    }
    for (i, h) in m.add.iter().flatten().enumerate() {
        let at = format!("{at}.add[{i}]");
        if let Some(name) = named(&h.name, at.clone(), problems) {
            if filter_header_value(&h.value, &at, problems) {
                out.add.push(HeaderValue {
                    name,
                    value: h.value.clone(),
                });
            }
        }
    }
    for (i, h) in m.remove.iter().flatten().enumerate() {
        if let Some(name) = named(h, format!("{at}.remove[{i}]"), problems) {
            out.remove.push(name);
        }
    }
    if problems.len() > before {
        return HeaderModifier::default();
    }
    out
}

/// A path of a redirect or rewrite: absolute, without query or fragment.
fn valid_path(path: &str, at: &str, problems: &mut Vec<(Reason, String)>) -> bool {
    let ok = path.starts_with('/')
        && !path.contains(['?', '#'])
        && path.parse::<http::uri::PathAndQuery>().is_ok();
    if !ok {
        unsupported(problems, format!("{at}: invalid path {path:?}"));
    }
    ok
}

/// A hostname of a redirect or rewrite (the CRD's RFC 1123 check; weft checks it is a valid
/// `Host` value).
fn valid_hostname(host: &str, at: &str, problems: &mut Vec<(Reason, String)>) -> bool {
    let ok = !host.is_empty()
        && !host.contains(['/', '?', '#', '@', ':', ' '])
        && http::uri::Authority::from_str(host).is_ok();
    if !ok {
        unsupported(problems, format!("{at}: invalid hostname {host:?}"));
    }
    ok
}

/// A redirect's or rewrite's `path` (the two filters' path types have the same shape).
fn path_modifier(
    kind: &str,
    full: Option<&str>,
    prefix: Option<&str>,
    at: &str,
    problems: &mut Vec<(Reason, String)>,
) -> Option<PathModifier> {
    match kind {
        "ReplaceFullPath" => match full {
            Some(p) if valid_path(p, &format!("{at}.replaceFullPath"), problems) => {
                Some(PathModifier::ReplaceFullPath(p.to_string()))
            }
            Some(_) => None,
            None => {
                unsupported(
                    problems,
                    format!("{at}: type ReplaceFullPath without replaceFullPath"),
                );
                None
            }
        },
        _ => match prefix {
            Some(p) if valid_path(p, &format!("{at}.replacePrefixMatch"), problems) => {
                Some(PathModifier::ReplacePrefixMatch {
                    matched_prefix: String::new(),
                    replacement: p.to_string(),
                })
            }
            Some(_) => None,
            None => {
                unsupported(
                    problems,
                    format!("{at}: type ReplacePrefixMatch without replacePrefixMatch"),
                );
                None
            }
        },
    }
}

/// A filter type as the spec spells it (for messages).
fn filter_type_name(t: &gw::HttpRouteRulesFiltersType) -> &'static str {
    use gw::HttpRouteRulesFiltersType as T;
    match t {
        T::RequestHeaderModifier => "RequestHeaderModifier",
        T::ResponseHeaderModifier => "ResponseHeaderModifier",
        T::RequestMirror => "RequestMirror",
        T::RequestRedirect => "RequestRedirect",
        T::UrlRewrite => "URLRewrite",
        T::ExtensionRef => "ExtensionRef",
        T::Cors => "CORS",
    }
}

/// The redirect status codes the spec allows (`statusCode`, default 302).
const REDIRECT_STATUS: [i64; 5] = [301, 302, 303, 307, 308];

/// A rule's (or, converted to this type, a backendRef's) filters in the proxy's form.
/// RequestMirror, ExtensionRef and CORS are not implemented: `UnsupportedValue`. A filter type
/// given twice, or RequestRedirect with URLRewrite: `IncompatibleFilters`.
fn compile_filters(
    filters: &[gw::HttpRouteRulesFilters],
    at: &str,
    problems: &mut Vec<(Reason, String)>,
) -> Vec<RouteFilter> {
    use gw::HttpRouteRulesFiltersType as T;
    let mut out = Vec::new();
    let mut kinds = BTreeSet::new();
    for (i, f) in filters.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let kind = filter_type_name(&f.r#type);
        if matches!(
            f.r#type,
            T::RequestHeaderModifier
                | T::ResponseHeaderModifier
                | T::RequestRedirect
                | T::UrlRewrite
        ) && !kinds.insert(kind)
        {
            problems.push((
                Reason::IncompatibleFilters,
                format!("{at}: filter {kind} given more than once in one list"),
            ));
            continue;
        }
        let missing = |problems: &mut Vec<(Reason, String)>| {
            unsupported(problems, format!("{at}: type {kind} without its field"));
        };
        match f.r#type {
            T::RequestHeaderModifier => match &f.request_header_modifier {
                Some(m) => out.push(RouteFilter::RequestHeaderModifier(header_modifier(
                    m,
                    &format!("{at}.requestHeaderModifier"),
                    problems,
                ))),
                None => missing(problems),
            },
            T::ResponseHeaderModifier => match &f.response_header_modifier {
                Some(m) => {
                    // The two header filters have the same shape; one conversion.
                    let m = gw::HttpRouteRulesFiltersRequestHeaderModifier {
                        add: m.add.as_ref().map(|v| {
                            v.iter()
                                .map(|h| gw::HttpRouteRulesFiltersRequestHeaderModifierAdd {
                                    name: h.name.clone(),
                                    value: h.value.clone(),
                                })
                                .collect()
                        }),
                        set: m.set.as_ref().map(|v| {
                            v.iter()
                                .map(|h| gw::HttpRouteRulesFiltersRequestHeaderModifierSet {
                                    name: h.name.clone(),
                                    value: h.value.clone(),
                                })
                                .collect()
                        }),
                        remove: m.remove.clone(),
                    };
                    out.push(RouteFilter::ResponseHeaderModifier(header_modifier(
                        &m,
                        &format!("{at}.responseHeaderModifier"),
                        problems,
                    )))
                }
                None => missing(problems),
            },
            T::RequestRedirect => match &f.request_redirect {
                Some(r) => {
                    let at = format!("{at}.requestRedirect");
                    let mut redirect = RequestRedirect {
                        scheme: match r.scheme {
                            Some(gw::HttpRouteRulesFiltersRequestRedirectScheme::Http) => {
                                "http".into()
                            }
                            Some(gw::HttpRouteRulesFiltersRequestRedirectScheme::Https) => {
                                "https".into()
                            }
                            None => String::new(),
                        },
                        ..Default::default()
                    };
                    if let Some(h) = &r.hostname {
                        if valid_hostname(h, &format!("{at}.hostname"), problems) {
                            redirect.hostname = h.clone();
                        }
                    }
                    if let Some(p) = r.port {
                        match u16::try_from(p).ok().filter(|p| *p != 0) {
                            Some(p) => redirect.port = p,
                            None => unsupported(problems, format!("{at}.port: invalid port {p}")),
                        }
                    }
                    match r.status_code {
                        None => redirect.status_code = 302,
                        Some(c) if REDIRECT_STATUS.contains(&c) => {
                            redirect.status_code = u16::try_from(c).unwrap_or(302)
                        }
                        Some(c) => unsupported(
                            problems,
                            format!("{at}.statusCode: {c} is not one of 301, 302, 303, 307, 308"),
                        ),
                    }
                    if let Some(p) = &r.path {
                        let kind = match p.r#type {
                            gw::HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath => {
                                "ReplaceFullPath"
                            }
                            gw::HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch => {
                                "ReplacePrefixMatch"
                            }
                        };
                        redirect.path = path_modifier(
                            kind,
                            p.replace_full_path.as_deref(),
                            p.replace_prefix_match.as_deref(),
                            &format!("{at}.path"),
                            problems,
                        );
                    }
                    out.push(RouteFilter::RequestRedirect(redirect));
                }
                None => missing(problems),
            },
            T::UrlRewrite => match &f.url_rewrite {
                Some(r) => {
                    let at = format!("{at}.urlRewrite");
                    let mut rewrite = UrlRewrite::default();
                    if let Some(h) = &r.hostname {
                        if valid_hostname(h, &format!("{at}.hostname"), problems) {
                            rewrite.hostname = h.clone();
                        }
                    }
                    if let Some(p) = &r.path {
                        let kind = match p.r#type {
                            gw::HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath => {
                                "ReplaceFullPath"
                            }
                            gw::HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch => {
                                "ReplacePrefixMatch"
                            }
                        };
                        rewrite.path = path_modifier(
                            kind,
                            p.replace_full_path.as_deref(),
                            p.replace_prefix_match.as_deref(),
                            &format!("{at}.path"),
                            problems,
                        );
                    }
                    out.push(RouteFilter::UrlRewrite(rewrite));
                }
                None => missing(problems),
            },
            T::RequestMirror | T::ExtensionRef | T::Cors => {
                unsupported(problems, format!("{at}: filter {kind} is not implemented"))
            }
        }
    }
    if kinds.contains("RequestRedirect") && kinds.contains("URLRewrite") {
        problems.push((
            Reason::IncompatibleFilters,
            format!("{at}: RequestRedirect and URLRewrite cannot be combined"),
        ));
    }
    out
}

/// Whether filters rewrite or redirect with `ReplacePrefixMatch` (valid only on PathPrefix
/// matches).
fn uses_prefix_match(filters: &[RouteFilter]) -> bool {
    filters.iter().any(|f| {
        matches!(
            f,
            RouteFilter::RequestRedirect(RequestRedirect {
                path: Some(PathModifier::ReplacePrefixMatch { .. }),
                ..
            }) | RouteFilter::UrlRewrite(UrlRewrite {
                path: Some(PathModifier::ReplacePrefixMatch { .. }),
                ..
            })
        )
    })
}

/// Filters for one match: `ReplacePrefixMatch` gets the match's PathPrefix.
fn filters_for_match(filters: &[RouteFilter], prefix: Option<&str>) -> Vec<RouteFilter> {
    let fill = |p: &mut Option<PathModifier>| {
        if let Some(PathModifier::ReplacePrefixMatch { matched_prefix, .. }) = p {
            *matched_prefix = prefix.unwrap_or("/").to_string();
        }
    };
    filters
        .iter()
        .cloned()
        .map(|mut f| {
            match &mut f {
                RouteFilter::RequestRedirect(r) => fill(&mut r.path),
                RouteFilter::UrlRewrite(r) => fill(&mut r.path),
                _ => {}
            }
            f
        })
        .collect()
}

/// `timeouts` in milliseconds (GEP-2257 durations; `0s` disables a timeout). `backendRequest`
/// longer than a non-zero `request` is invalid (the request timeout encloses every attempt).
fn compile_timeouts(
    t: &gw::HttpRouteRulesTimeouts,
    at: &str,
    problems: &mut Vec<(Reason, String)>,
) -> Option<RouteTimeouts> {
    let before = problems.len();
    let ms = |v: Option<&String>, field: &str, problems: &mut Vec<(Reason, String)>| -> u64 {
        let Some(v) = v else { return 0 };
        match gateway_api::Duration::from_str(v) {
            Ok(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Err(e) => {
                unsupported(
                    problems,
                    format!("{at}.{field}: invalid duration {v:?}: {e}"),
                );
                0
            }
        }
    };
    let request_ms = ms(t.request.as_ref(), "request", problems);
    let backend_request_ms = ms(t.backend_request.as_ref(), "backendRequest", problems);
    if request_ms != 0 && backend_request_ms > request_ms {
        unsupported(
            problems,
            format!(
                "{at}: backendRequest ({backend_request_ms} ms) is longer than request \
                 ({request_ms} ms)"
            ),
        );
    }
    if problems.len() > before || (t.request.is_none() && t.backend_request.is_none()) {
        return None;
    }
    Some(RouteTimeouts {
        request_ms,
        backend_request_ms,
    })
}

fn backend_ref(
    b: &gw::HttpRouteRulesBackendRefs,
    route_ns: &str,
    at: &str,
    problems: &mut Vec<(Reason, String)>,
) -> BackendRef {
    let kind = b.kind.as_deref().unwrap_or("Service");
    let group_core = b.group.is_none() || is_core_group(b.group.as_deref());
    let invalid = (!group_core || kind != "Service").then(|| {
        (
            Reason::InvalidKind,
            format!(
                "{at}: {}/{kind} {:?} is not a core Service",
                b.group.as_deref().unwrap_or(""),
                b.name
            ),
        )
    });
    let port = b
        .port
        .and_then(|p| u16::try_from(p).ok().filter(|p| *p != 0));
    let invalid = invalid.or_else(|| {
        (b.port.is_some() && port.is_none()).then(|| {
            (
                Reason::BackendNotFound,
                format!("{at}: port {:?} is not a valid port", b.port),
            )
        })
    });
    // The backendRef's filters have the rule filters' shape under other type names: one
    // conversion, through their common JSON form.
    let filters: Vec<gw::HttpRouteRulesFilters> = match b
        .filters
        .as_ref()
        .map(|f| serde_json::to_value(f).and_then(serde_json::from_value))
    {
        None => Vec::new(),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            unsupported(problems, format!("{at}.filters: {e}"));
            Vec::new()
        }
    };
    BackendRef {
        namespace: b
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| route_ns.to_string()),
        name: b.name.clone(),
        // Weights are 0..=1000000 (the CRD's bounds); a negative one carries no traffic.
        weight: b.weight.map_or(1, |w| u64::try_from(w).unwrap_or_default()),
        port,
        invalid,
        filters: compile_filters(&filters, &format!("{at}.filters"), problems),
    }
}

/// The one reading of a route's spec: its rules in the proxy's form, and what keeps it out of
/// force.
pub fn analyze_route(route: &HttpRoute) -> RouteAnalysis {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let ns = &route.meta.namespace;
    for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        let filters = compile_filters(
            rule.filters.as_deref().unwrap_or_default(),
            &format!("{at}.filters"),
            &mut problems,
        );
        let timeouts = rule
            .timeouts
            .as_ref()
            .and_then(|t| compile_timeouts(t, &format!("{at}.timeouts"), &mut problems));
        let rule_name = rule
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("rule-{i}"));
        let prefix = route.kind.route_name_prefix();
        let name = format!("{prefix}:{}/{}/{rule_name}", ns, route.meta.name);
        let matches: Vec<CompiledMatch> = match &rule.matches {
            Some(ms) if !ms.is_empty() => ms
                .iter()
                .enumerate()
                .filter_map(|(j, m)| {
                    compile_match(m, &name, &format!("{at}.matches[{j}]"), &mut problems)
                })
                .collect(),
            _ => compile_match(
                &gw::HttpRouteRulesMatches::default(),
                &name,
                &at,
                &mut problems,
            )
            .into_iter()
            .collect(),
        };
        let mut backends = Vec::new();
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            backends.push(backend_ref(
                b,
                ns,
                &format!("{at}.backendRefs[{j}]"),
                &mut problems,
            ));
        }
        let prefix_filters =
            uses_prefix_match(&filters) || backends.iter().any(|b| uses_prefix_match(&b.filters));
        if prefix_filters && matches.iter().any(|m| m.prefix.is_none()) {
            problems.push((
                Reason::IncompatibleFilters,
                format!(
                    "{at}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix \
                     match"
                ),
            ));
        }
        out.push(CompiledRule {
            name,
            matches,
            backends,
            filters,
            timeouts,
        });
    }
    RouteAnalysis {
        rules: out,
        problems,
    }
}

/// Whether a route attaches to one Service parent, on which ports, and whether its backendRefs
/// resolve there.
#[derive(Clone, Debug)]
pub struct ParentAnalysis {
    pub parent: ServiceParent,
    /// The parent Service's ports the route applies to (HTTP-capable ports only).
    pub ports: Vec<u16>,
    /// A consumer route: the route is in another namespace than the Service, and applies only
    /// to callers in its own namespace (GAMMA).
    pub consumer: bool,
    /// `Err`: not accepted (reason, message).
    pub accepted: Result<(), (Reason, String)>,
    /// `Err`: some backendRef does not resolve (first reason, every message); the route is
    /// still in force and those backends keep their weight.
    pub resolved: Result<(), (Reason, String)>,
}

fn http_capable(p: Protocol) -> bool {
    !matches!(p, Protocol::Opaque | Protocol::Udp)
}

/// Why a backendRef cannot be used on parent port `port` (`None`: it can). Cross-namespace
/// backendRefs are allowed (docs/security.md: the backend's inbound policy still decides).
fn backend_problem(model: &Model, b: &BackendRef, port: u16) -> Option<(Reason, String)> {
    if let Some(i) = &b.invalid {
        return Some(i.clone());
    }
    let want = b.port.unwrap_or(port);
    match model.services.get(&b.service()) {
        None => Some((
            Reason::BackendNotFound,
            format!("Service {}/{} does not exist", b.namespace, b.name),
        )),
        Some(s) if !s.ports.iter().any(|p| p.port == want) => Some((
            Reason::BackendNotFound,
            format!("Service {}/{} has no port {want}", b.namespace, b.name),
        )),
        Some(_) => None,
    }
}

/// The one decision about a route and one of its Service parents (routes and status use it).
pub fn analyze_parent(
    model: &Model,
    route: &HttpRoute,
    analysis: &RouteAnalysis,
    parent: &ServiceParent,
    port_protocol: PortProtocol,
) -> ParentAnalysis {
    let svc_ref = &parent.service;
    let mut out = ParentAnalysis {
        parent: parent.clone(),
        ports: Vec::new(),
        consumer: svc_ref.namespace != route.meta.namespace,
        accepted: Ok(()),
        resolved: Ok(()),
    };
    let svc = model.services.get(svc_ref);
    out.accepted = match svc {
        Some(svc) => attach(svc, &parent.reference, port_protocol, &mut out.ports),
        None => Err((
            Reason::NoMatchingParent,
            format!("Service {svc_ref} does not exist"),
        )),
    };
    if out.accepted.is_ok() {
        out.accepted = grpc::kind_ports(model, route, parent, port_protocol, &mut out.ports);
    }
    if out.accepted.is_ok() {
        if let Some((reason, _)) = analysis.problems.first() {
            out.accepted = Err((
                *reason,
                format!(
                    "not in force: {}",
                    analysis
                        .problems
                        .iter()
                        .map(|(_, m)| m.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        }
    }
    let mut problems: Vec<(Reason, String)> = Vec::new();
    // Backends are checked on the ports the route attaches to; when it attaches to none, on
    // every port of the Service (a route not accepted still reports its references).
    let ports: Vec<u16> = if out.ports.is_empty() {
        svc.map(|s| s.ports.iter().map(|p| p.port).collect())
            .unwrap_or_default()
    } else {
        out.ports.clone()
    };
    for rule in &analysis.rules {
        for b in &rule.backends {
            let found: Vec<(Reason, String)> = if ports.is_empty() {
                // No port to resolve on: only what does not need one.
                b.invalid
                    .clone()
                    .or_else(|| {
                        (!model.services.contains_key(&b.service())).then(|| {
                            (
                                Reason::BackendNotFound,
                                format!("Service {}/{} does not exist", b.namespace, b.name),
                            )
                        })
                    })
                    .into_iter()
                    .collect()
            } else {
                ports
                    .iter()
                    .filter_map(|&port| backend_problem(model, b, port))
                    .collect()
            };
            for p in found {
                if !problems.iter().any(|(_, m)| *m == p.1) {
                    problems.push(p);
                }
            }
        }
    }
    if let Some((reason, _)) = problems.first() {
        out.resolved = Err((
            *reason,
            format!(
                "{}; requests for these backends' share fail ({GATEWAY_UNAVAILABLE_STATUS}) \
                 instead of going elsewhere",
                problems
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    out
}

/// The ports of `svc` a parentRef attaches to. GAMMA: `port` selects one Service port,
/// `sectionName` the Service port of that name; both given, both must match; neither, every
/// HTTP-capable port.
fn attach(
    svc: &Service,
    reference: &gw::HttpRouteParentRefs,
    port_protocol: PortProtocol,
    ports: &mut Vec<u16>,
) -> Result<(), (Reason, String)> {
    let svc_name = format!("{}/{}", svc.namespace, svc.name);
    if svc.cluster_ips.is_empty() {
        return Err((
            Reason::NoMatchingParent,
            format!(
                "Service {svc_name} has no cluster IP (headless or ExternalName): mesh routes \
                 route by a Service's cluster IP"
            ),
        ));
    }
    for p in &svc.ports {
        if !http_capable(port_protocol(p)) {
            continue;
        }
        if reference.port.is_some_and(|want| i32::from(p.port) != want) {
            continue;
        }
        if reference
            .section_name
            .as_deref()
            .is_some_and(|want| p.name.as_deref() != Some(want))
        {
            continue;
        }
        ports.push(p.port);
    }
    if ports.is_empty() {
        let mut what = Vec::new();
        if let Some(p) = reference.port {
            what.push(format!("port {p}"));
        }
        if let Some(s) = &reference.section_name {
            what.push(format!("port name {s:?}"));
        }
        let what = if what.is_empty() {
            "HTTP port".to_string()
        } else {
            format!("HTTP port with {}", what.join(" and "))
        };
        return Err((
            Reason::NoMatchingParent,
            format!("Service {svc_name} has no {what}"),
        ));
    }
    Ok(())
}

/// The status a Gateway API route's unresolvable backendRef answers with (the spec's 500).
pub const GATEWAY_UNAVAILABLE_STATUS: u16 = 500;

/// The status of a request that matches none of the rules in force on a port (the spec's 404).
pub const NO_MATCH_STATUS: u16 = 404;

/// The name of the route that answers [`NO_MATCH_STATUS`].
pub const NO_MATCH_ROUTE: &str = "gateway:no-match";

/// Which routes attached to a Service are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    /// Routes in the Service's namespace: every caller.
    Producer,
    /// Routes in this namespace (not the Service's): callers in it only.
    Consumer(&'a str),
}

/// What the HTTPRoutes attached to one Service make of its ports, for one [`Scope`].
#[derive(Debug, Default)]
pub(crate) struct GatewayOutbound {
    /// The accepted routes attached to the Service (in force), oldest first.
    pub in_force: Vec<ObjectRef>,
    /// Routes per port, in precedence order, ending with the 404 for requests that match none
    /// (unless a catch-all rule makes it unreachable).
    pub ports: BTreeMap<u16, Vec<Route>>,
    /// Backend Services read (for recompiling when they change).
    pub backends: BTreeSet<ObjectRef>,
}

/// A route with where it sorts: (match precedence, route rank, rule index, match index).
type Ranked = ((Precedence, usize, usize, usize), Route);

/// The namespaces of consumer routes attached to `apex` (routes outside its namespace).
pub(crate) fn consumer_namespaces(model: &Model, apex: &ObjectRef) -> BTreeSet<String> {
    model
        .gateway_routes_for_parent(apex)
        .filter(|r| r.namespace != apex.namespace)
        .map(|r| r.namespace.clone())
        .collect()
}

/// Whether a route's status or routes read Service `svc` (as a parent or a backend).
pub(crate) fn reads_service(route: &HttpRoute, svc: &ObjectRef) -> bool {
    route.service_parents().iter().any(|p| &p.service == svc)
        || route
            .spec
            .rules
            .iter()
            .flatten()
            .flat_map(|rule| rule.backend_refs.iter().flatten())
            .any(|b| {
                b.name == svc.name
                    && b.namespace
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .unwrap_or(&route.meta.namespace)
                        == svc.namespace
            })
}

/// The routes of `apex`'s ports from the HTTPRoutes of `scope` attached to it.
pub(crate) fn outbound_routes(
    model: &Model,
    apex: &ObjectRef,
    scope: Scope<'_>,
    port_protocol: PortProtocol,
) -> GatewayOutbound {
    let mut out = GatewayOutbound::default();
    let Some(svc) = model.services.get(apex) else {
        return out;
    };
    let route_ns = match scope {
        Scope::Producer => apex.namespace.as_str(),
        Scope::Consumer(ns) => ns,
    };
    let mut routes: Vec<&HttpRoute> = model
        .gateway_routes_for_parent(apex)
        .filter(|k| k.namespace == route_ns)
        .filter_map(|k| model.gateway_route(k))
        .map(|r| r.as_ref())
        .collect();
    routes.sort_by(|a, b| rules::split_order(&a.meta, &b.meta));
    let mut entries: BTreeMap<u16, Vec<Ranked>> = BTreeMap::new();
    for (rank, route) in routes.iter().enumerate() {
        let analysis = analyze_route(route);
        let mut attached = BTreeSet::new();
        for parent in route
            .service_parents()
            .into_iter()
            .filter(|p| &p.service == apex)
        {
            let pa = analyze_parent(model, route, &analysis, &parent, port_protocol);
            if pa.accepted.is_ok() {
                attached.extend(pa.ports);
            }
        }
        if attached.is_empty() {
            continue;
        }
        out.in_force.push(route.object_ref());
        for rule in &analysis.rules {
            for b in &rule.backends {
                out.backends.insert(b.service());
            }
        }
        for &port in &attached {
            for (ri, rule) in analysis.rules.iter().enumerate() {
                let backends = rule_backends(model, svc, rule, port);
                for (mi, m) in rule.matches.iter().enumerate() {
                    let prefix = m.prefix.as_deref();
                    entries.entry(port).or_default().push((
                        (m.precedence.clone(), rank, ri, mi),
                        Route {
                            name: rule.name.clone(),
                            matches: m.http.iter().cloned().collect(),
                            backends: backends
                                .iter()
                                .map(|(b, filters)| WeightedBackend {
                                    filters: filters_for_match(filters, prefix),
                                    ..b.clone()
                                })
                                .collect(),
                            filters: filters_for_match(&rule.filters, prefix),
                            direct_status: 0,
                            timeouts: rule.timeouts,
                        },
                    ));
                }
            }
        }
    }
    for (port, mut list) in entries {
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let mut routes: Vec<Route> = list.into_iter().map(|(_, r)| r).collect();
        if !routes.iter().any(|r| r.matches.is_empty()) {
            routes.push(Route {
                name: NO_MATCH_ROUTE.into(),
                direct_status: NO_MATCH_STATUS,
                ..Default::default()
            });
        }
        out.ports.insert(port, routes);
    }
    out
}

/// The weighted backends of a rule on parent port `port`, each with its filters (a
/// `ReplacePrefixMatch` still without its prefix).
fn rule_backends(
    model: &Model,
    svc: &Service,
    rule: &CompiledRule,
    port: u16,
) -> Vec<(WeightedBackend, Vec<RouteFilter>)> {
    if rule.backends.is_empty() {
        return vec![(
            WeightedBackend {
                service: svc.name.clone(),
                weight: 1,
                endpoint_set: endpoints_name(&svc.namespace, &svc.name, port),
                ..Default::default()
            },
            Vec::new(),
        )];
    }
    rule.backends
        .iter()
        .map(|b| {
            // A backend in another namespace than the parent is labelled `<ns>/<name>`.
            let service = if b.namespace == svc.namespace {
                b.name.clone()
            } else {
                format!("{}/{}", b.namespace, b.name)
            };
            let wb = match backend_problem(model, b, port) {
                None => WeightedBackend {
                    service,
                    weight: b.weight,
                    endpoint_set: endpoints_name(&b.namespace, &b.name, b.port.unwrap_or(port)),
                    ..Default::default()
                },
                Some((_, msg)) => WeightedBackend {
                    service,
                    weight: b.weight,
                    endpoint_set: String::new(),
                    unavailable_reason: format!("backendRef not resolved: {msg}"),
                    unavailable_status: GATEWAY_UNAVAILABLE_STATUS,
                    ..Default::default()
                },
            };
            (wb, b.filters.clone())
        })
        .collect()
}

/// `status.parents[]` of a route: one entry per Service parent (other parents are not weft's).
pub fn route_status(
    model: &Model,
    route: &HttpRoute,
    port_protocol: PortProtocol,
) -> Vec<RouteParentStatus> {
    let analysis = analyze_route(route);
    let generation = route.meta.generation;
    route
        .service_parents()
        .iter()
        .map(|parent| {
            let pa = analyze_parent(model, route, &analysis, parent, port_protocol);
            let accepted = match &pa.accepted {
                Ok(()) => {
                    let ports = pa
                        .ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let msg = if pa.consumer {
                        format!(
                            "consumer route: in force for Service {} on port {ports} for callers \
                             in namespace {} only, where it takes precedence over the Service's \
                             producer routes",
                            parent.service, route.meta.namespace
                        )
                    } else {
                        let mut msg =
                            format!("in force for Service {} on port {ports}", parent.service);
                        let splits: Vec<String> = model
                            .splits_for_apex(&parent.service)
                            .map(|s| s.to_string())
                            .collect();
                        if !splits.is_empty() {
                            msg.push_str(&format!(
                                "; takes precedence over TrafficSplit {} on the same Service",
                                splits.join(", ")
                            ));
                        }
                        msg
                    };
                    condition(ACCEPTED, true, Reason::Accepted, msg, generation)
                }
                Err((reason, msg)) => condition(ACCEPTED, false, *reason, msg.clone(), generation),
            };
            let resolved = match &pa.resolved {
                Ok(()) => condition(
                    RESOLVED_REFS,
                    true,
                    Reason::ResolvedRefs,
                    "all backendRefs resolved".into(),
                    generation,
                ),
                Err((reason, msg)) => {
                    condition(RESOLVED_REFS, false, *reason, msg.clone(), generation)
                }
            };
            RouteParentStatus {
                parent_ref: parent.reference.clone(),
                controller_name: CONTROLLER_NAME.to_string(),
                conditions: vec![accepted, resolved],
            }
        })
        .collect()
}

/// The `Accepted` condition of a TrafficSplit that HTTPRoutes override.
pub(crate) fn split_overridden(
    apex: &ObjectRef,
    routes: &[ObjectRef],
    generation: Option<i64>,
) -> hub::Condition {
    condition(
        ACCEPTED,
        false,
        Reason::HTTPRouteInForce,
        format!(
            "HTTPRoute {} targets {apex} and takes precedence over TrafficSplits \
             (docs/gateway-api.md); this split is not in force",
            routes
                .iter()
                .map(ObjectRef::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        generation,
    )
}
