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

use gateway_api::httproutes as gw;
use serde::{Deserialize, Serialize};
use weft_smi::hub;

use weft_smi::status::{ACCEPTED, RESOLVED_REFS};

use super::rules;
use super::types::*;

mod grpc;
use crate::model::gateway::{is_core_group, HttpRoute, ServiceParent};
use crate::model::{Model, ObjectRef, Service, ServicePort};
use crate::reason::Reason;

/// The protocol of a Service port: the compiler's one decision (`units::service_port_protocol`),
/// passed in by the caller so that this module does not depend on the units module.
pub type PortProtocol = fn(&ServicePort) -> Protocol;

fn condition(
    type_: &str,
    ok: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
) -> hub::Condition {
    hub::Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: None,
    }
}

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
/// then RegularExpression, then the longest PathPrefix; a method; more headers), then the older
/// route, then rule and match order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    path_kind: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
}

/// One match of one rule, in the proxy's form.
#[derive(Clone, Debug)]
struct CompiledMatch {
    precedence: Precedence,
    /// `None`: the rule's catch-all (no matches, or `PathPrefix /` alone): it also carries opaque
    /// TCP, like SMI's `default` route.
    http: Option<HttpMatch>,
}

/// One backendRef of a rule.
#[derive(Clone, Debug)]
pub struct BackendRef {
    /// The Service's name (in the route's namespace when it resolves).
    pub name: String,
    pub weight: u64,
    /// `None`: the parent's port.
    pub port: Option<u16>,
    /// Why it cannot resolve whatever the model holds (kind, namespace, port value).
    pub invalid: Option<(Reason, String)>,
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
}

/// What a route's spec becomes, independent of its parents.
#[derive(Clone, Debug)]
pub struct RouteAnalysis {
    rules: Vec<CompiledRule>,
    /// Fields weft does not implement: the route is not accepted while it uses them (routing
    /// only part of what it says could send requests where the user did not mean them to go).
    pub unsupported: Vec<String>,
}

fn path_match(
    p: Option<&gw::HttpRouteRulesMatchesPath>,
    at: &str,
    unsupported: &mut Vec<String>,
) -> (u8, usize, Option<String>) {
    let kind = p
        .and_then(|p| p.r#type.clone())
        .unwrap_or(gw::HttpRouteRulesMatchesPathType::PathPrefix);
    let value = p
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    match kind {
        gw::HttpRouteRulesMatchesPathType::Exact => {
            (0, value.len(), Some(format!("{}$", regex::escape(&value))))
        }
        gw::HttpRouteRulesMatchesPathType::RegularExpression => {
            if let Some(e) = rules::regex_error(&value, "^(?:", ")$") {
                unsupported.push(format!(
                    "{at}.path: invalid regular expression {value:?}: {e}"
                ));
                return (1, value.len(), None);
            }
            (1, value.len(), Some(format!("(?:{value})$")))
        }
        gw::HttpRouteRulesMatchesPathType::PathPrefix => {
            // Segment boundaries: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`; a
            // trailing `/` is ignored.
            let trimmed = value.trim_end_matches('/');
            if trimmed.is_empty() {
                (2, 1, Some(String::new()))
            } else {
                (
                    2,
                    trimmed.len(),
                    Some(format!("{}(?:/|$)", regex::escape(trimmed))),
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
    unsupported: &mut Vec<String>,
) -> Option<CompiledMatch> {
    let before = unsupported.len();
    if m.query_params.as_ref().is_some_and(|q| !q.is_empty()) {
        unsupported.push(format!("{at}.queryParams: query parameter matches"));
    }
    let (path_kind, path_len, path_regex) = path_match(m.path.as_ref(), at, unsupported);
    let mut headers = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, h) in m.headers.iter().flatten().enumerate() {
        let lower = h.name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            unsupported.push(format!(
                "{at}.headers[{i}]: invalid header name {:?}",
                h.name
            ));
            continue;
        }
        // The spec: of names equal ignoring case, only the first is considered.
        if !seen.insert(lower.clone()) {
            continue;
        }
        let value_regex = match h.r#type {
            Some(gw::HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                if let Some(e) = rules::regex_error(&h.value, "^(?:", ")$") {
                    unsupported.push(format!(
                        "{at}.headers[{i}]: invalid regular expression {:?}: {e}",
                        h.value
                    ));
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
    if unsupported.len() > before {
        return None;
    }
    headers.sort();
    let methods: Vec<String> = m.method.iter().map(|x| method_name(x).into()).collect();
    let path_regex = path_regex.unwrap_or_default();
    let catch_all = path_regex.is_empty() && methods.is_empty() && headers.is_empty();
    Some(CompiledMatch {
        precedence: Precedence {
            path_kind,
            path_len: Reverse(path_len),
            no_method: methods.is_empty(),
            headers: Reverse(headers.len()),
        },
        http: (!catch_all).then(|| HttpMatch {
            name: name.to_string(),
            path_regex,
            methods,
            headers,
            ..Default::default()
        }),
    })
}

fn backend_ref(b: &gw::HttpRouteRulesBackendRefs, route_ns: &str, at: &str) -> BackendRef {
    let kind = b.kind.as_deref().unwrap_or("Service");
    let group_core = b.group.is_none() || is_core_group(b.group.as_deref());
    let invalid = if !group_core || kind != "Service" {
        Some((
            Reason::InvalidKind,
            format!(
                "{at}: {}/{kind} {:?} is not a core Service",
                b.group.as_deref().unwrap_or(""),
                b.name
            ),
        ))
    } else if b.namespace.as_deref().is_some_and(|n| n != route_ns) {
        Some((
            Reason::RefNotPermitted,
            format!(
                "{at}: Service {:?} is in namespace {:?}; weft resolves backendRefs in the \
                 route's namespace only (cross-namespace backends are not implemented yet)",
                b.name,
                b.namespace.as_deref().unwrap_or("")
            ),
        ))
    } else {
        None
    };
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
    BackendRef {
        name: b.name.clone(),
        // Weights are 0..=1000000 (the CRD's bounds); a negative one carries no traffic.
        weight: b.weight.map_or(1, |w| u64::try_from(w).unwrap_or_default()),
        port,
        invalid,
    }
}

/// The one reading of a route's spec: its rules in the proxy's form, and what it uses that weft
/// does not implement.
pub fn analyze_route(route: &HttpRoute) -> RouteAnalysis {
    let mut unsupported = Vec::new();
    let mut out = Vec::new();
    let ns = &route.meta.namespace;
    for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        if rule.filters.as_ref().is_some_and(|f| !f.is_empty()) {
            unsupported.push(format!("{at}.filters: filters are not implemented yet"));
        }
        if rule.timeouts.is_some() {
            unsupported.push(format!(
                "{at}.timeouts: route timeouts are not implemented yet"
            ));
        }
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
                    compile_match(m, &name, &format!("{at}.matches[{j}]"), &mut unsupported)
                })
                .collect(),
            _ => compile_match(
                &gw::HttpRouteRulesMatches::default(),
                &name,
                &at,
                &mut unsupported,
            )
            .into_iter()
            .collect(),
        };
        let mut backends = Vec::new();
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            let bat = format!("{at}.backendRefs[{j}]");
            if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
                unsupported.push(format!("{bat}.filters: filters are not implemented yet"));
            }
            backends.push(backend_ref(b, ns, &bat));
        }
        out.push(CompiledRule {
            name,
            matches,
            backends,
        });
    }
    RouteAnalysis {
        rules: out,
        unsupported,
    }
}

/// Whether a route attaches to one Service parent, on which ports, and whether its backendRefs
/// resolve there.
#[derive(Clone, Debug)]
pub struct ParentAnalysis {
    pub parent: ServiceParent,
    /// The parent Service's ports the route applies to (HTTP-capable ports only).
    pub ports: Vec<u16>,
    /// `Err`: not accepted (reason, message).
    pub accepted: Result<(), (Reason, String)>,
    /// `Err`: some backendRef does not resolve (first reason, every message); the route is
    /// still in force and those backends keep their weight.
    pub resolved: Result<(), (Reason, String)>,
}

fn http_capable(p: Protocol) -> bool {
    !matches!(p, Protocol::Opaque | Protocol::Udp)
}

/// Why a backendRef cannot be used on parent port `port` (`None`: it can).
fn backend_problem(
    model: &Model,
    namespace: &str,
    b: &BackendRef,
    port: u16,
) -> Option<(Reason, String)> {
    if let Some(i) = &b.invalid {
        return Some(i.clone());
    }
    let want = b.port.unwrap_or(port);
    match model
        .services
        .get(&ObjectRef::new(namespace, b.name.clone()))
    {
        None => Some((
            Reason::BackendNotFound,
            format!("Service {namespace}/{} does not exist", b.name),
        )),
        Some(s) if !s.ports.iter().any(|p| p.port == want) => Some((
            Reason::BackendNotFound,
            format!("Service {namespace}/{} has no port {want}", b.name),
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
    let mut out = ParentAnalysis {
        parent: parent.clone(),
        ports: Vec::new(),
        accepted: Ok(()),
        resolved: Ok(()),
    };
    let svc_ref = &parent.service;
    let reference = &parent.reference;
    let svc = model.services.get(svc_ref);
    out.accepted = if svc_ref.namespace != route.meta.namespace {
        Err((
            Reason::UnsupportedValue,
            format!(
                "consumer routes (a route in namespace {} for Service {svc_ref}) are not \
                 implemented yet: only producer routes, in the Service's namespace",
                route.meta.namespace
            ),
        ))
    } else if let Some(svc) = svc {
        attach(svc, reference, port_protocol, &mut out.ports)
    } else {
        Err((
            Reason::NoMatchingParent,
            format!("Service {svc_ref} does not exist"),
        ))
    };
    if out.accepted.is_ok() {
        out.accepted = grpc::kind_ports(model, route, parent, port_protocol, &mut out.ports);
    }
    if out.accepted.is_ok() && !analysis.unsupported.is_empty() {
        out.accepted = Err((
            Reason::UnsupportedValue,
            format!("not in force: {}", analysis.unsupported.join("; ")),
        ));
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
            let found = if ports.is_empty() {
                // No port to resolve on: only what does not need one.
                b.invalid
                    .clone()
                    .or_else(|| {
                        (!model.services.contains_key(&ObjectRef::new(
                            route.meta.namespace.clone(),
                            b.name.clone(),
                        )))
                        .then(|| {
                            (
                                Reason::BackendNotFound,
                                format!(
                                    "Service {}/{} does not exist",
                                    route.meta.namespace, b.name
                                ),
                            )
                        })
                    })
                    .into_iter()
                    .collect::<Vec<_>>()
            } else {
                ports
                    .iter()
                    .filter_map(|&port| backend_problem(model, &route.meta.namespace, b, port))
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
                "{}; requests for these backends' share fail (503) instead of going elsewhere",
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

/// The ports of `svc` a parentRef attaches to.
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

/// What the HTTPRoutes attached to one Service make of its ports.
#[derive(Debug, Default)]
pub(crate) struct GatewayOutbound {
    /// The accepted routes attached to the Service (in force), oldest first.
    pub in_force: Vec<ObjectRef>,
    /// Routes per port, in precedence order (no catch-all is added: a request matching none
    /// is refused).
    pub ports: BTreeMap<u16, Vec<Route>>,
    /// Backend Services read (for recompiling when they change).
    pub backends: BTreeSet<ObjectRef>,
}

/// A route with where it sorts: (match precedence, route rank, rule index, match index).
type Ranked = ((Precedence, usize, usize, usize), Route);

/// The routes of `apex`'s ports from every HTTPRoute attached to it.
pub(crate) fn outbound_routes(
    model: &Model,
    apex: &ObjectRef,
    port_protocol: PortProtocol,
) -> GatewayOutbound {
    let mut out = GatewayOutbound::default();
    let Some(svc) = model.services.get(apex) else {
        return out;
    };
    let mut routes: Vec<&HttpRoute> = model
        .gateway_routes_for_parent(apex)
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
                out.backends
                    .insert(ObjectRef::new(route.meta.namespace.clone(), b.name.clone()));
            }
        }
        for &port in &attached {
            for (ri, rule) in analysis.rules.iter().enumerate() {
                let backends = rule_backends(model, svc, rule, port);
                for (mi, m) in rule.matches.iter().enumerate() {
                    entries.entry(port).or_default().push((
                        (m.precedence.clone(), rank, ri, mi),
                        Route {
                            name: rule.name.clone(),
                            matches: m.http.iter().cloned().collect(),
                            backends: backends.clone(),
                            ..Default::default()
                        },
                    ));
                }
            }
        }
    }
    for (port, mut list) in entries {
        list.sort_by(|a, b| a.0.cmp(&b.0));
        out.ports
            .insert(port, list.into_iter().map(|(_, r)| r).collect());
    }
    out
}

/// The weighted backends of a rule on parent port `port`.
fn rule_backends(
    model: &Model,
    svc: &Service,
    rule: &CompiledRule,
    port: u16,
) -> Vec<WeightedBackend> {
    if rule.backends.is_empty() {
        return vec![WeightedBackend {
            service: svc.name.clone(),
            weight: 1,
            endpoint_set: endpoints_name(&svc.namespace, &svc.name, port),
            unavailable_reason: String::new(),
            ..Default::default()
        }];
    }
    rule.backends
        .iter()
        .map(|b| match backend_problem(model, &svc.namespace, b, port) {
            None => WeightedBackend {
                service: b.name.clone(),
                weight: b.weight,
                endpoint_set: endpoints_name(&svc.namespace, &b.name, b.port.unwrap_or(port)),
                unavailable_reason: String::new(),
                ..Default::default()
            },
            Some((_, msg)) => WeightedBackend {
                service: b.name.clone(),
                weight: b.weight,
                endpoint_set: String::new(),
                unavailable_reason: format!("backendRef not resolved: {msg}"),
                ..Default::default()
            },
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
                    let mut msg = format!(
                        "in force for Service {} on port {}",
                        parent.service,
                        pa.ports
                            .iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
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
