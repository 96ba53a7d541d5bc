//! The compilation units: pure functions from the model to one piece of output.
//!
//! * [`outbound`]: one service (or split apex): its OutboundService and the status of every
//!   TrafficSplit rooted at it.
//! * [`endpoints`]: one service: an EndpointSet per port.
//! * [`inbound`]: one pod: its InboundPolicy.
//! * [`target_status`], [`route_status`]: status conditions of TrafficTargets and routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use weft_smi::hub;

use super::rules::condition;
use super::types::*;
use super::{reliability, rules, CompileOptions, Event};
use crate::model::{
    destination_ref, EndpointGroup, Kind, L4Protocol, Model, ObjectKey, ObjectRef, Pod, Service,
    ServicePort, DEFAULT_INBOUND_POLICY_ANNOTATION,
};
use crate::reason::Reason;

pub use super::reliability::{
    RETRIES_ANNOTATION, RETRY_BUDGET_ANNOTATION, RETRY_NON_IDEMPOTENT_ANNOTATION,
    TIMEOUT_ANNOTATION,
};

/// Condition types (their home is `weft_smi::status`).
pub use weft_smi::status::{ACCEPTED, CONFLICTED, PROGRAMMED, RESOLVED_REFS};
/// Why a UDPRoute is not enforced.
pub const UDP_NOT_PROXIED: &str =
    "weft-proxy does not intercept UDP (only TCP is redirected to it): \
    TrafficTargets naming this route allow and deny nothing, and UDP to meshed pods bypasses their \
    inbound policy; use a NetworkPolicy to restrict UDP";

fn warn(events: &mut Vec<Event>, object: ObjectKey, reason: Reason, message: String) {
    events.push(Event {
        object,
        reason: reason.as_str().to_string(),
        message,
    });
}

/// Protocol of a service port, from `appProtocol`, then the port name, then the L4 protocol.
pub(crate) fn service_port_protocol(p: &ServicePort) -> Protocol {
    protocol_hint(p.protocol, p.app_protocol.as_deref(), p.name.as_deref())
}

pub(crate) fn protocol_hint(l4: L4Protocol, app: Option<&str>, name: Option<&str>) -> Protocol {
    match l4 {
        L4Protocol::Udp => return Protocol::Udp,
        L4Protocol::Sctp => return Protocol::Opaque,
        L4Protocol::Tcp => {}
    }
    let classify = |s: &str| -> Option<Protocol> {
        let s = s.to_ascii_lowercase();
        let s = s.strip_prefix("kubernetes.io/").unwrap_or(&s).to_string();
        let head = s.split(['-', '_']).next().unwrap_or("");
        match head {
            "http" | "http1" => Some(Protocol::Http1),
            "http2" | "h2c" | "h2" => Some(Protocol::Http2),
            "grpc" | "grpc2" => Some(Protocol::Grpc),
            "tcp" | "opaque" | "tls" | "mysql" | "redis" | "mongo" | "postgres" => {
                Some(Protocol::Opaque)
            }
            _ => None,
        }
    };
    app.and_then(classify)
        .or_else(|| name.and_then(classify))
        .unwrap_or(Protocol::Detect)
}

/// The problems with a Namespace's reliability annotations (the defaults of its Services),
/// reported once per Namespace, on it.
pub(crate) fn namespace_events(ns: &crate::model::Namespace) -> Vec<Event> {
    let mut invalid = Vec::new();
    reliability::outbound(&ns.annotations, &mut TrafficPolicy::default(), &mut invalid);
    reliability::inbound_limits(
        &ns.annotations,
        &mut reliability::InboundSettings::default(),
        &mut invalid,
    );
    let key = ObjectKey::new(Kind::Namespace, "", ns.name.clone());
    let mut events = Vec::new();
    for i in invalid {
        warn(
            &mut events,
            key.clone(),
            Reason::InvalidAnnotation,
            i.message("the default"),
        );
    }
    events
}

/// A Service's reliability settings and its invalid values: defaults, then its Namespace's
/// annotations, then its own ([`reliability::service_settings`]; the Namespace's invalid values
/// are [`namespace_events`]'s to report).
fn service_settings(
    model: &Model,
    svc: &Service,
) -> (
    TrafficPolicy,
    reliability::InboundSettings,
    Vec<reliability::Invalid>,
) {
    let ns = model.namespaces.get(&svc.namespace).map(|n| &n.annotations);
    let (policy, inbound, _, invalid) = reliability::service_settings(ns, &svc.annotations);
    (policy, inbound, invalid)
}

/// The TrafficPolicy of a service from its and its Namespace's annotations (the Service wins);
/// the Service's bad values, inbound ones included, are reported on it and ignored.
pub(crate) fn traffic_policy(
    model: &Model,
    svc: &Service,
    events: &mut Vec<Event>,
) -> TrafficPolicy {
    let (policy, _, invalid) = service_settings(model, svc);
    let key = ObjectKey::new(Kind::Service, svc.namespace.clone(), svc.name.clone());
    for i in invalid {
        warn(
            events,
            key.clone(),
            Reason::InvalidAnnotation,
            i.message("the Namespace's value or the default"),
        );
    }
    policy
}

/// Converts an SMI match, or `None` when it cannot be compiled (see [`rules::match_problems`]:
/// it is left out and matches nothing; the route's status reports it).
pub(crate) fn convert_match(m: &hub::HttpMatch) -> Option<HttpMatch> {
    rules::convert_match(m)
}

/// Output of the outbound unit.
pub(crate) struct OutboundUnit {
    pub resource: Option<OutboundService>,
    pub statuses: Vec<(ObjectKey, Vec<hub::Condition>)>,
    pub events: Vec<Event>,
    /// Services whose change affects this unit (backends).
    pub backends: BTreeSet<ObjectRef>,
    /// Route groups read by this unit.
    pub routes: BTreeSet<ObjectRef>,
    /// A consumer unit: whether some consumer route of its namespace is in force.
    pub consumer_in_force: bool,
}

/// The status conditions of a split from its plan (the same values the routes are built from).
/// `lost_to`: the split in force on the same root, when this one is not.
fn split_conditions(
    plan: &rules::SplitPlan<'_>,
    apex: &ObjectRef,
    lost_to: Option<&hub::TrafficSplit>,
    events: &mut Vec<Event>,
) -> Vec<hub::Condition> {
    let split = plan.split;
    let key = ObjectKey::new(
        Kind::TrafficSplit,
        split.meta.namespace.clone(),
        split.meta.name.clone(),
    );
    let generation = split.meta.generation;
    let messages: Vec<(&rules::SplitIssue, String)> = plan
        .issues
        .iter()
        .map(|i| (i, i.message(&plan.key)))
        .collect();
    for (issue, msg) in &messages {
        warn(events, key.clone(), issue.reason(), msg.clone());
    }
    let summary = |pick: fn(&rules::SplitIssue) -> bool| -> Option<(Reason, String)> {
        let found: Vec<&(&rules::SplitIssue, String)> =
            messages.iter().filter(|(i, _)| pick(i)).collect();
        let first = found.first()?;
        let msg = found
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Some((first.0.reason(), msg))
    };
    let mut conds = Vec::new();
    match lost_to {
        Some(winner) => {
            let why = rules::precedence(&winner.meta, &split.meta);
            let msg = format!(
                "{} is also the root of TrafficSplit {}/{}, which takes precedence because {why}; \
                 this split is ignored",
                apex, winner.meta.namespace, winner.meta.name
            );
            warn(events, key.clone(), Reason::Conflicted, msg.clone());
            conds.push(condition(
                ACCEPTED,
                false,
                Reason::Conflicted,
                msg.clone(),
                generation,
            ));
            conds.push(condition(
                CONFLICTED,
                true,
                Reason::ApexConflict,
                msg,
                generation,
            ));
        }
        None => {
            match summary(rules::SplitIssue::affects_accepted) {
                Some((reason, msg)) => {
                    conds.push(condition(ACCEPTED, false, reason, msg, generation));
                }
                None => {
                    let failing: Vec<&str> = plan
                        .issues
                        .iter()
                        .filter_map(|i| match i {
                            rules::SplitIssue::BackendNotFound { backend }
                            | rules::SplitIssue::BackendPortMismatch { backend, .. } => {
                                Some(backend.name.as_str())
                            }
                            _ => None,
                        })
                        .collect();
                    let msg = if failing.is_empty() {
                        format!("in force for {apex}")
                    } else {
                        format!(
                            "in force for {apex}; requests for backend {} fail with 503 (see \
                             ResolvedRefs)",
                            failing.join(", ")
                        )
                    };
                    conds.push(condition(ACCEPTED, true, Reason::Accepted, msg, generation));
                }
            }
            conds.push(condition(
                CONFLICTED,
                false,
                Reason::NoConflict,
                "no other split has this root service".into(),
                generation,
            ));
        }
    }
    match summary(rules::SplitIssue::affects_refs) {
        None => conds.push(condition(
            RESOLVED_REFS,
            true,
            Reason::ResolvedRefs,
            "all references resolved".into(),
            generation,
        )),
        Some((reason, msg)) => {
            conds.push(condition(RESOLVED_REFS, false, reason, msg, generation));
        }
    }
    // Keep a stable order: Accepted, ResolvedRefs, Conflicted.
    conds.sort_by_key(|c| match c.type_.as_str() {
        ACCEPTED => 0,
        RESOLVED_REFS => 1,
        _ => 2,
    });
    conds
}

/// Compiles one service (or split apex): its OutboundService and its splits' statuses.
pub(crate) fn outbound(model: &Model, apex: &ObjectRef) -> OutboundUnit {
    outbound_scoped(model, apex, None)
}

/// The consumer variant of a Service's OutboundService for callers in namespace `consumer`
/// (GAMMA consumer routes: on the ports they attach to they replace the producer's routes;
/// other ports are as in the shared resource). `None` when no consumer route from that
/// namespace is in force. Its statuses and events are the producer unit's, so they are not
/// returned again.
pub(crate) fn outbound_consumer(
    model: &Model,
    apex: &ObjectRef,
    consumer: &str,
) -> Option<(OutboundService, BTreeSet<ObjectRef>)> {
    let unit = outbound_scoped(model, apex, Some(consumer));
    unit.consumer_in_force
        .then_some(())
        .and(unit.resource)
        .map(|r| (r, unit.backends))
}

fn outbound_scoped(model: &Model, apex: &ObjectRef, consumer: Option<&str>) -> OutboundUnit {
    let mut events = Vec::new();
    let mut statuses = Vec::new();
    let mut backends_read = BTreeSet::new();
    let mut routes_read = BTreeSet::new();
    let svc = model.services.get(apex);
    // HTTPRoutes attached to this Service take precedence over its TrafficSplits.
    let gateway = super::gateway::outbound_routes(
        model,
        apex,
        super::gateway::Scope::Producer,
        service_port_protocol,
    );
    backends_read.extend(gateway.backends.iter().cloned());
    // Consumer routes from `consumer` take precedence over the producer's on their ports.
    let consumer_routes = consumer.map(|ns| {
        super::gateway::outbound_routes(
            model,
            apex,
            super::gateway::Scope::Consumer(ns),
            service_port_protocol,
        )
    });
    if let Some(c) = &consumer_routes {
        backends_read.extend(c.backends.iter().cloned());
    }

    // Splits on this apex in precedence order: the first one is in force.
    let mut splits: Vec<&hub::TrafficSplit> = model
        .splits_for_apex(apex)
        .filter_map(|r| model.splits.get(r))
        .collect();
    splits.sort_by(|a, b| rules::split_order(&a.meta, &b.meta));

    let mut active: Option<rules::SplitPlan<'_>> = None;
    for (i, split) in splits.iter().enumerate() {
        for b in &split.backends {
            backends_read.insert(ObjectRef::new(apex.namespace.clone(), b.service.clone()));
        }
        for m in split.matches.iter().filter(|m| m.kind == "HTTPRouteGroup") {
            routes_read.insert(ObjectRef::new(apex.namespace.clone(), m.name.clone()));
        }
        let plan = super::analysis::split_plan(model, apex, split);
        let lost_to = (i > 0).then(|| splits[0]);
        let mut conds = split_conditions(&plan, apex, lost_to, &mut events);
        if !gateway.in_force.is_empty() {
            for c in conds.iter_mut().filter(|c| c.type_ == ACCEPTED) {
                *c = super::gateway::split_overridden(
                    apex,
                    &gateway.in_force,
                    split.meta.generation,
                );
            }
        }
        let key = ObjectKey::new(
            Kind::TrafficSplit,
            split.meta.namespace.clone(),
            split.meta.name.clone(),
        );
        statuses.push((key, conds));
        if i == 0 && gateway.in_force.is_empty() {
            active = Some(plan);
        }
    }

    let resource = svc.map(|svc| {
        let policy = traffic_policy(model, svc, &mut events);
        let ports = svc
            .ports
            .iter()
            .map(|sp| {
                if let Some(routes) = consumer_routes
                    .as_ref()
                    .and_then(|c| c.ports.get(&sp.port))
                    .or_else(|| gateway.ports.get(&sp.port))
                {
                    return OutboundPort {
                        port: sp.port,
                        protocol: service_port_protocol(sp),
                        routes: routes.clone(),
                    };
                }
                let mut routes = Vec::new();
                if let Some(plan) = &active {
                    routes.extend(plan.route(model, sp.port));
                }
                routes.push(Route {
                    name: "default".into(),
                    matches: Vec::new(),
                    backends: vec![WeightedBackend {
                        service: svc.name.clone(),
                        weight: 1,
                        endpoint_set: endpoints_name(&svc.namespace, &svc.name, sp.port),
                        unavailable_reason: String::new(),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                OutboundPort {
                    port: sp.port,
                    protocol: service_port_protocol(sp),
                    routes,
                }
            })
            .collect();
        OutboundService {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
            cluster_ips: svc.cluster_ips.clone(),
            ports,
            policy,
        }
    });
    OutboundUnit {
        resource,
        statuses,
        events,
        backends: backends_read,
        routes: routes_read,
        consumer_in_force: consumer_routes.is_some_and(|c| !c.in_force.is_empty()),
    }
}

/// Output of the endpoints unit.
pub(crate) struct EndpointsUnit {
    /// (port, set), in port order.
    pub sets: Vec<(u16, EndpointSet)>,
    /// Pods and IPs that appear in the sets.
    pub pods: BTreeSet<ObjectRef>,
    pub ips: BTreeSet<IpAddr>,
}

fn endpoint_for(
    model: &Model,
    opts: &CompileOptions,
    ip: IpAddr,
    port: u16,
    pod: Option<&ObjectRef>,
) -> (Endpoint, Option<ObjectRef>) {
    let found: Option<&Pod> = match pod {
        Some(r) => model.pods.get(r).map(|p| p.as_ref()),
        None => model
            .pods_with_ip(&ip)
            .next()
            .and_then(|r| model.pods.get(r))
            .map(|p| p.as_ref()),
    };
    let mut ep = Endpoint {
        ip,
        port,
        identity: String::new(),
        inbound_port: 0,
        pod: pod.map(|r| r.to_string()).unwrap_or_default(),
        workload: String::new(),
    };
    if let Some(p) = found {
        ep.pod = format!("{}/{}", p.namespace, p.name);
        ep.workload = p.workload.clone().unwrap_or_default();
        if p.meshed {
            ep.identity = spiffe_id(&opts.trust_domain, &p.namespace, &p.service_account);
            ep.inbound_port = opts.proxy_inbound_port;
        }
    }
    (ep, found.map(|p| p.object_ref()).or_else(|| pod.cloned()))
}

fn subset_port_matches(sp: &ServicePort, name: Option<&str>, protocol: L4Protocol) -> bool {
    sp.name.as_deref() == name && sp.protocol == protocol
}

/// Compiles a service's EndpointSets (one per service port).
pub(crate) fn endpoints(
    model: &Model,
    opts: &CompileOptions,
    svc_ref: &ObjectRef,
) -> EndpointsUnit {
    let mut unit = EndpointsUnit {
        sets: Vec::new(),
        pods: BTreeSet::new(),
        ips: BTreeSet::new(),
    };
    let Some(svc) = model.services.get(svc_ref) else {
        return unit;
    };
    let groups: Vec<&EndpointGroup> = model.endpoint_groups_for(svc_ref).collect();
    let derive = groups.is_empty() && model.derive_endpoints_from_pods;
    for sp in &svc.ports {
        let mut eps = Vec::new();
        if !groups.is_empty() {
            for g in &groups {
                for subset in &g.subsets {
                    let Some(port) = subset
                        .ports
                        .iter()
                        .find(|p| subset_port_matches(sp, p.name.as_deref(), p.protocol))
                    else {
                        continue;
                    };
                    for a in subset.addresses.iter().filter(|a| a.ready) {
                        unit.ips.insert(a.ip);
                        let (ep, pod) = endpoint_for(model, opts, a.ip, port.port, a.pod.as_ref());
                        unit.pods.extend(pod);
                        eps.push(ep);
                    }
                }
            }
        } else if derive {
            for pod in model.pods_in_namespace(&svc.namespace) {
                if !svc.selects(pod) || !pod.ready {
                    continue;
                }
                unit.pods.insert(pod.object_ref());
                let Some(ip) = pod.ip else { continue };
                let Some(port) = pod.resolve_target_port(&sp.target_port, sp.protocol) else {
                    continue;
                };
                unit.ips.insert(ip);
                let (ep, _) = endpoint_for(model, opts, ip, port, Some(&pod.object_ref()));
                eps.push(ep);
            }
        }
        eps.sort();
        eps.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
        unit.sets.push((sp.port, EndpointSet { endpoints: eps }));
    }
    unit
}

/// The default inbound policy of a pod: pod annotation > namespace annotation > mesh-wide.
pub(crate) fn default_policy(
    model: &Model,
    opts: &CompileOptions,
    namespace: &str,
    pod: Option<&Pod>,
    events: &mut Vec<Event>,
) -> DefaultPolicy {
    if let Some(p) = pod {
        if let Some(v) = p.annotations.get(DEFAULT_INBOUND_POLICY_ANNOTATION) {
            match DefaultPolicy::parse(v) {
                Some(d) => return d,
                None => warn(
                    events,
                    ObjectKey::new(Kind::Pod, p.namespace.clone(), p.name.clone()),
                    Reason::InvalidAnnotation,
                    format!("{DEFAULT_INBOUND_POLICY_ANNOTATION}: {v:?} is not allow, mesh or deny; ignored"),
                ),
            }
        }
    }
    namespace_default(model, opts, namespace)
}

/// The default inbound policy of a namespace (its annotation, else the mesh-wide default).
/// Invalid values fall back to the mesh-wide default.
pub(crate) fn namespace_default(
    model: &Model,
    opts: &CompileOptions,
    namespace: &str,
) -> DefaultPolicy {
    model
        .namespaces
        .get(namespace)
        .and_then(|n| n.annotations.get(DEFAULT_INBOUND_POLICY_ANNOTATION))
        .and_then(|v| DefaultPolicy::parse(v))
        .unwrap_or(opts.default_inbound_policy)
}

/// What a TrafficTarget grants on one port of its destination, or `None` when it grants
/// nothing there.
fn authorization(
    model: &Model,
    opts: &CompileOptions,
    tref: &ObjectRef,
    t: &hub::TrafficTarget,
    port: u16,
) -> Option<Authorization> {
    if !rules::restricts_port([t], port) {
        return None;
    }
    let clients = Clients::mesh(
        t.sources
            .iter()
            .filter_map(|s| rules::source_identity(t, s, &opts.trust_domain)),
    );
    if clients.is_empty() {
        return None;
    }
    let mut all_traffic = false;
    let mut http_routes = Vec::new();
    for rule in &t.rules {
        let rref = ObjectRef::new(tref.namespace.clone(), rule.name.clone());
        match rule.kind {
            hub::RouteKind::HTTPRouteGroup => {
                let Some(g) = model.http_routes.get(&rref) else {
                    continue;
                };
                for m in &g.matches {
                    if rule.matches.is_empty() || rule.matches.contains(&m.name) {
                        http_routes.extend(convert_match(m));
                    }
                }
            }
            hub::RouteKind::TCPRoute | hub::RouteKind::UDPRoute => {
                let routes = if rule.kind == hub::RouteKind::TCPRoute {
                    &model.tcp_routes
                } else {
                    &model.udp_routes
                };
                let Some(r) = routes.get(&rref) else { continue };
                let covers = match &r.matches {
                    None => true,
                    Some(m) => {
                        let named = rule.matches.is_empty()
                            || m.name.as_ref().is_some_and(|n| rule.matches.contains(n));
                        named && (m.ports.is_empty() || m.ports.contains(&port))
                    }
                };
                all_traffic |= covers;
            }
        }
    }
    if all_traffic {
        http_routes.clear();
    } else if http_routes.is_empty() {
        return None;
    }
    http_routes.sort();
    http_routes.dedup();
    Some(Authorization {
        name: tref.to_string(),
        clients,
        all_traffic,
        http_routes,
    })
}

/// Ports named by the TrafficTargets of a destination (destination.port and route ports).
fn target_ports(model: &Model, targets: &[(&ObjectRef, &hub::TrafficTarget)]) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for (tref, t) in targets {
        ports.extend(t.destination.port);
        for rule in &t.rules {
            let rref = ObjectRef::new(tref.namespace.clone(), rule.name.clone());
            let r = match rule.kind {
                hub::RouteKind::TCPRoute => model.tcp_routes.get(&rref),
                hub::RouteKind::UDPRoute => model.udp_routes.get(&rref),
                hub::RouteKind::HTTPRouteGroup => None,
            };
            // The route's analysis: its valid ports (port 0 is not a port to list).
            if let Some(r) = r {
                ports.extend(super::analysis::port_route(r).ports);
            }
        }
    }
    ports
}

/// Name of the authorization that admits the kubelet's HTTP probes.
pub const PROBE_AUTHORIZATION: &str = "probe";
/// The authorization source that admitted any client in the untyped form (kept for the
/// fuzz oracle and older callers; the compiler says [`Clients::KubeletProbes`]).
pub const ANY_CLIENT: &str = LEGACY_ANY_CLIENT;

/// The paths of a pod's plaintext `httpGet` probes by container port. HTTPS probes are left
/// out (the proxy cannot see their paths) with an event; so are probes on unknown port names.
fn probe_paths(pod: &Pod, events: &mut Vec<Event>) -> BTreeMap<u16, BTreeSet<String>> {
    let mut out: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for probe in &pod.http_probes {
        let Some(port) = pod.resolve_probe_port(&probe.port) else {
            continue;
        };
        if probe.https {
            warn(
                events,
                ObjectKey::new(Kind::Pod, pod.namespace.clone(), pod.name.clone()),
                Reason::HttpsProbeNotAuthorized,
                format!(
                    "{:?} probe on port {port} uses HTTPS: the proxy cannot see its path, so it \
                     is not authorized; it only passes where the port admits unauthenticated clients",
                    probe.kind
                ),
            );
            continue;
        }
        out.entry(port).or_default().insert(probe.path.clone());
    }
    out
}

/// The `probe` authorization of a port: any client may `GET`/`HEAD` exactly these paths. The
/// proxy anchors path regexes at the start only, so each path is escaped and ends with `$`.
fn probe_authorization(paths: &BTreeSet<String>) -> Authorization {
    Authorization {
        name: PROBE_AUTHORIZATION.to_string(),
        clients: Clients::KubeletProbes,
        all_traffic: false,
        http_routes: paths
            .iter()
            .map(|p| HttpMatch {
                name: PROBE_AUTHORIZATION.to_string(),
                path_regex: format!("{}$", regex::escape(p)),
                methods: vec!["GET".to_string(), "HEAD".to_string()],
                headers: Vec::new(),
                ..Default::default()
            })
            .collect(),
    }
}

/// The inbound limits of a pod's ports, from the Services that select it (and their
/// Namespace): where several Services target one port, the strictest value of each annotation
/// applies, with a Warning on the Services whose values differ.
fn inbound_limits(
    model: &Model,
    pod: &Pod,
    events: &mut Vec<Event>,
) -> BTreeMap<u16, InboundLimits> {
    // Per port: the combined settings, and the Service each annotation's value came from.
    let mut by_port: BTreeMap<u16, (reliability::InboundSettings, Vec<&Service>)> = BTreeMap::new();
    for svc in model.services_in_namespace(&pod.namespace) {
        if !svc.selects(pod) {
            continue;
        }
        let (_, settings, _) = service_settings(model, svc);
        if settings == reliability::InboundSettings::default() {
            continue;
        }
        let mut ports: BTreeSet<u16> = BTreeSet::new();
        for sp in &svc.ports {
            if sp.protocol != L4Protocol::Tcp {
                continue;
            }
            if let Some(port) = pod.resolve_target_port(&sp.target_port, sp.protocol) {
                if port != 0 {
                    ports.insert(port);
                }
            }
        }
        for port in ports {
            match by_port.get_mut(&port) {
                None => {
                    by_port.insert(port, (settings, vec![svc.as_ref()]));
                }
                Some((current, services)) => {
                    let (combined, conflicts) = current.strictest(&settings);
                    for ann in conflicts {
                        for other in services.iter().copied() {
                            for (a, b) in [(other, svc.as_ref()), (svc.as_ref(), other)] {
                                warn(
                                    events,
                                    ObjectKey::new(
                                        Kind::Service,
                                        a.namespace.clone(),
                                        a.name.clone(),
                                    ),
                                    Reason::InboundLimitConflict,
                                    format!(
                                        "{ann}: Services {}/{} and {}/{} give different values \
                                         for the same pod port {port}; the strictest applies to \
                                         both",
                                        a.namespace, a.name, b.namespace, b.name
                                    ),
                                );
                            }
                        }
                    }
                    *current = combined;
                    services.push(svc.as_ref());
                }
            }
        }
    }
    by_port
        .into_iter()
        .map(|(port, (s, _))| (port, s.limits()))
        .collect()
}

/// Compiles a pod's InboundPolicy. `pod` is `None` for a proxy the model does not know yet:
/// then it gets the namespace's default (or deny, when its service account is restricted).
pub(crate) fn inbound(
    model: &Model,
    opts: &CompileOptions,
    namespace: &str,
    service_account: &str,
    pod: Option<&Pod>,
    events: &mut Vec<Event>,
) -> InboundPolicy {
    let sa = ObjectRef::new(namespace, service_account);
    let targets: Vec<(&ObjectRef, &hub::TrafficTarget)> = model
        .targets_for_destination(&sa)
        .filter_map(|r| model.targets.get(r).map(|t| (r, t)))
        .filter(|(_, t)| rules::is_identity(&t.destination))
        .collect();
    let mut default = default_policy(model, opts, namespace, pod, events);
    if rules::restricts_every_port(targets.iter().map(|(_, t)| *t)) {
        default = DefaultPolicy::Deny;
    }

    // Ports: declared container ports, plus any a TrafficTarget names.
    let mut ports: BTreeMap<u16, Protocol> = BTreeMap::new();
    if let Some(p) = pod {
        for cp in &p.container_ports {
            let mut proto = protocol_hint(cp.protocol, None, cp.name.as_deref());
            // A service that targets this container port says more (appProtocol).
            for svc in model.services_in_namespace(&p.namespace) {
                if !svc.selects(p) {
                    continue;
                }
                for sp in &svc.ports {
                    if p.resolve_target_port(&sp.target_port, sp.protocol) == Some(cp.port)
                        && sp.protocol == cp.protocol
                    {
                        let sproto = service_port_protocol(sp);
                        if sproto != Protocol::Detect {
                            proto = sproto;
                        }
                    }
                }
            }
            ports.entry(cp.port).or_insert(proto);
        }
        // TCP ports a Service selecting the pod targets by number, declared or not (declaring
        // container ports is optional): the proxy forwards only to listed ports.
        for svc in model.services_in_namespace(&p.namespace) {
            if !svc.selects(p) {
                continue;
            }
            for sp in &svc.ports {
                if let (crate::model::TargetPort::Number(n), L4Protocol::Tcp) =
                    (&sp.target_port, sp.protocol)
                {
                    if *n != 0 {
                        ports.entry(*n).or_insert(service_port_protocol(sp));
                    }
                }
            }
        }
    }
    for p in target_ports(model, &targets) {
        ports.entry(p).or_insert(Protocol::Detect);
    }
    // Kubelet probes: their ports are listed too (a closed port would fail the probe).
    let probes = pod.map(|p| probe_paths(p, events)).unwrap_or_default();
    let mut limits = pod
        .map(|p| inbound_limits(model, p, events))
        .unwrap_or_default();
    for p in probes.keys() {
        ports.entry(*p).or_insert(Protocol::Detect);
    }

    let ports = ports
        .into_iter()
        .map(|(port, protocol)| {
            let restricted = rules::restricts_port(targets.iter().map(|(_, t)| *t), port);
            let mut authorizations: Vec<Authorization> = if restricted {
                targets
                    .iter()
                    .filter_map(|(r, t)| authorization(model, opts, r, t, port))
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(paths) = probes.get(&port) {
                authorizations.push(probe_authorization(paths));
            }
            InboundPort {
                port,
                protocol,
                restricted,
                authorizations,
                limits: limits.remove(&port).unwrap_or_default(),
            }
        })
        .collect();
    InboundPolicy {
        identity: spiffe_id(&opts.trust_domain, namespace, service_account),
        default_policy: default,
        ports,
    }
}

/// Status conditions (and problem events) of a TrafficTarget.
pub(crate) fn target_status(
    model: &Model,
    tref: &ObjectRef,
    t: &hub::TrafficTarget,
) -> (Vec<hub::Condition>, Vec<Event>) {
    let key = ObjectKey::new(
        Kind::TrafficTarget,
        tref.namespace.clone(),
        tref.name.clone(),
    );
    let g = t.meta.generation;
    let mut events = Vec::new();
    // The TrafficTarget's analysis: the identity decisions and whether its rules resolve.
    let own = super::analysis::traffic_target(t);
    let mut invalid = Vec::new();
    if !own.destination_is_identity {
        invalid.push(format!(
            "destination kind {:?} is not ServiceAccount: this TrafficTarget is ignored \
             (it allows nothing)",
            t.destination.kind
        ));
    }
    for s in own.unsupported_sources.iter().map(|&i| &t.sources[i]) {
        invalid.push(format!(
            "source kind {:?} is not ServiceAccount: that source admits no one (the \
             ServiceAccount sources are in force)",
            s.kind
        ));
    }
    let mut unresolved: Vec<(Reason, String)> = Vec::new();
    let resolutions = super::analysis::target_rules(t, |kind, name| {
        super::analysis::model_match_names(model, &tref.namespace, kind, name)
    });
    for (rule, res) in t.rules.iter().zip(resolutions) {
        let rref = ObjectRef::new(tref.namespace.clone(), rule.name.clone());
        match res {
            super::analysis::RuleResolution::Resolved => {}
            super::analysis::RuleResolution::RouteNotFound => unresolved.push((
                Reason::RouteNotFound,
                format!("{} {} not found", rule.kind.as_str(), rref),
            )),
            super::analysis::RuleResolution::MatchesNotFound(missing) => {
                for (_, m) in missing {
                    unresolved.push((
                        Reason::MatchNotFound,
                        format!("{} {} has no match named {:?}", rule.kind.as_str(), rref, m),
                    ));
                }
            }
        }
    }
    let mut conds = Vec::new();
    if invalid.is_empty() {
        let msg = if let Some(nothing) = own.allows_nothing {
            let m = format!(
                "accepted; it has no {} and allows nothing, but {} now only accepts what TrafficTargets allow",
                match nothing {
                    super::analysis::AllowsNothing::NoRules => "rules",
                    super::analysis::AllowsNothing::NoSources => "sources",
                },
                destination_ref(t)
            );
            warn(&mut events, key.clone(), Reason::AllowsNothing, m.clone());
            m
        } else {
            format!("in force for service account {}", destination_ref(t))
        };
        conds.push(condition(ACCEPTED, true, Reason::Accepted, msg, g));
    } else {
        let msg = invalid.join("; ");
        warn(&mut events, key.clone(), Reason::Invalid, msg.clone());
        conds.push(condition(ACCEPTED, false, Reason::Invalid, msg, g));
    }
    if unresolved.is_empty() {
        conds.push(condition(
            RESOLVED_REFS,
            true,
            Reason::ResolvedRefs,
            "all references resolved".into(),
            g,
        ));
    } else {
        for (r, m) in &unresolved {
            warn(&mut events, key.clone(), *r, m.clone());
        }
        let msg = unresolved
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        conds.push(condition(RESOLVED_REFS, false, unresolved[0].0, msg, g));
    }
    (conds, events)
}

/// Status conditions of an HTTPRouteGroup (regexes must compile) or TCPRoute/UDPRoute.
pub(crate) fn route_status(key: &ObjectKey, model: &Model) -> (Vec<hub::Condition>, Vec<Event>) {
    let r = key.object_ref();
    let mut events = Vec::new();
    // Each kind's analysis: what is left out, and why (`None`: everything is valid).
    let port_route = |p: &hub::PortRoute| -> Option<(Reason, String)> {
        let a = super::analysis::port_route(p);
        let errors: Vec<&super::analysis::Problem> = a.errors().collect();
        let first = errors.first()?;
        Some((
            first.reason,
            format!(
                "{}; the invalid ports are left out: they match no traffic and allow nothing",
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ))
    };
    let (generation, failure) = match key.kind {
        Kind::HTTPRouteGroup => match model.http_routes.get(&r) {
            Some(g) => {
                let problems: Vec<String> = super::analysis::http_route_group(g)
                    .problems()
                    .map(|(m, p)| format!("match {:?}: {p}", m.source.name))
                    .collect();
                let failure = (!problems.is_empty()).then(|| {
                    (
                        Reason::InvalidMatch,
                        format!(
                            "{}; the invalid matches are left out: they match no request and \
                             allow nothing",
                            problems.join("; ")
                        ),
                    )
                });
                (g.meta.generation, failure)
            }
            None => return (Vec::new(), events),
        },
        Kind::TCPRoute => match model.tcp_routes.get(&r) {
            Some(p) => (p.meta.generation, port_route(p)),
            None => return (Vec::new(), events),
        },
        Kind::UDPRoute => match model.udp_routes.get(&r) {
            Some(p) => (p.meta.generation, port_route(p)),
            None => return (Vec::new(), events),
        },
        _ => return (Vec::new(), events),
    };
    let mut conds = Vec::new();
    match failure {
        None => conds.push(condition(
            ACCEPTED,
            true,
            Reason::Accepted,
            "all matches are valid".into(),
            generation,
        )),
        Some((reason, msg)) => {
            warn(&mut events, key.clone(), reason, msg.clone());
            conds.push(condition(ACCEPTED, false, reason, msg, generation));
        }
    }
    conds.push(condition(
        RESOLVED_REFS,
        true,
        Reason::ResolvedRefs,
        "no references".into(),
        generation,
    ));
    if key.kind == Kind::UDPRoute {
        warn(
            &mut events,
            key.clone(),
            Reason::UDPNotProxied,
            UDP_NOT_PROXIED.to_string(),
        );
        conds.push(condition(
            PROGRAMMED,
            false,
            Reason::UDPNotProxied,
            UDP_NOT_PROXIED.into(),
            generation,
        ));
    }
    (conds, events)
}
