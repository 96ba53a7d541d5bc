//! The proxy's config conversion: a protobuf `DiscoveryResponse` from fuzzed bytes is applied
//! the way the proxy's control client applies one (`ClientState::handle_validated` with
//! `Config::from_resources` as the validator), and its resources are also converted directly.
//!
//! Invariants:
//! - nothing panics (decoding, applying, converting, `/config` JSON);
//! - a resource set with an invalid value (a port of 0 or over 65535, an IP that is not 4 or
//!   16 bytes, a regex that does not compile, an invalid method or header name, a resource
//!   without a kind, two inbound policies, the same inbound port twice; a query-parameter regex
//!   that does not compile, a route filter of no kind, an invalid filter header, an unknown
//!   redirect status or scheme, a direct or unavailable status outside 400..=599) is rejected
//!   with an error naming a resource of the set: never accepted, never half-applied;
//! - what is accepted is what was sent: every inbound port, its restriction and its
//!   authorizations; an unknown default policy is deny (fail closed);
//! - a rejected response leaves the client state unchanged.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use weft_proxy::config::{compile_header_regex, compile_path_regex, Config, DefaultPolicy};
use weft_proxy_api::discovery::{ClientState, Rejection};
use weft_proxy_api::v1;

use crate::{clients, Features};

/// Tokens for the mutators.
pub const DICTIONARY: &[&str] = &[
    "inbound",
    "outbound:web.shop",
    "outbound:web-v2.shop",
    "endpoints:web.shop:80",
    "endpoints:web-v1.shop:80",
    "endpoints:x",
    "outbound:",
    "endpoints:",
    "future:thing",
    "spiffe://cluster.local/ns/shop/sa/frontend",
    "spiffe://cluster.local/ns/weft-system/sa/weft-operator",
    "*",
    "",
    "default",
    "split:shop/web",
    "GET",
    "get",
    "G ET",
    "CONNECT",
    "\u{0}",
    "Ä",
    "x-user",
    "X-User",
    "bad header",
    ":authority",
    "(on",
    "a{1000}{1000}",
    "\\",
    "[",
    "(?i)",
    ")(",
    ".*",
    "/public",
    "^admin$",
    "\\p{Greek}+",
    "(?-u:\\xff)",
    "a{4294967295}",
];

fn variant(e: &weft_proxy::config::ConfigError) -> &'static str {
    use weft_proxy::config::ConfigError as E;
    match e {
        E::MissingKind { .. } => "MissingKind",
        E::InvalidPathRegex { .. } => "InvalidPathRegex",
        E::InvalidHeaderRegex { .. } => "InvalidHeaderRegex",
        E::InvalidHeaderName { .. } => "InvalidHeaderName",
        E::InvalidMethod { .. } => "InvalidMethod",
        E::InvalidIp { .. } => "InvalidIp",
        E::InvalidPort { .. } => "InvalidPort",
        E::DuplicateInbound { .. } => "DuplicateInbound",
        E::InvalidQueryRegex { .. } => "InvalidQueryRegex",
        E::InvalidRoute { .. } => "InvalidRoute",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

fn valid_port(p: u32) -> bool {
    (1..=65535).contains(&p)
}

fn valid_ip(b: &[u8]) -> bool {
    b.len() == 4 || b.len() == 16
}

fn match_problems(m: &v1::HttpMatch, out: &mut Vec<String>) {
    if !m.path_regex.is_empty() && compile_path_regex(&m.path_regex).is_err() {
        out.push(format!("path_regex {:?}", m.path_regex));
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == "*") {
        for x in &m.methods {
            if http::Method::from_bytes(x.to_ascii_uppercase().as_bytes()).is_err() {
                out.push(format!("method {x:?}"));
            }
        }
    }
    for h in &m.headers {
        if http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).is_err() {
            out.push(format!("header name {:?}", h.name));
        }
        if compile_header_regex(&h.value_regex).is_err() {
            out.push(format!("header regex {:?}", h.value_regex));
        }
    }
    for q in &m.query_params {
        if compile_header_regex(&q.value_regex).is_err() {
            out.push(format!("query regex {:?}", q.value_regex));
        }
    }
}

/// A status the proxy answers itself: 0 (the default) or 400..=599.
fn valid_answer_status(code: u32) -> bool {
    code == 0 || (400..=599).contains(&code)
}

fn header_modifier_problems(m: &v1::HeaderModifier, out: &mut Vec<String>) {
    for h in m.set.iter().chain(&m.add) {
        if http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).is_err() {
            out.push(format!("filter header name {:?}", h.name));
        }
        if http::HeaderValue::from_str(&h.value).is_err() {
            out.push(format!("filter header value {:?}", h.value));
        }
    }
    for n in &m.remove {
        if http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).is_err() {
            out.push(format!("filter header name {n:?}"));
        }
    }
}

/// The Gateway API filter values the proxy must refuse (a subset: hostnames and paths are
/// checked by the proxy only).
fn filter_problems(filters: &[v1::RouteFilter], out: &mut Vec<String>) {
    use v1::route_filter::Kind;
    for f in filters {
        match &f.kind {
            None => out.push("filter of no kind".to_string()),
            Some(Kind::RequestHeaderModifier(m) | Kind::ResponseHeaderModifier(m)) => {
                header_modifier_problems(m, out)
            }
            Some(Kind::RequestRedirect(r)) => {
                if ![0, 301, 302, 303, 307, 308].contains(&r.status_code) {
                    out.push(format!("redirect status {}", r.status_code));
                }
                if !["", "http", "https"].contains(&r.scheme.as_str()) {
                    out.push(format!("redirect scheme {:?}", r.scheme));
                }
                if r.port > 65535 {
                    out.push(format!("redirect port {}", r.port));
                }
            }
            Some(Kind::UrlRewrite(_)) => {}
        }
    }
}

/// Everything invalid in a resource set, found independently of the proxy's conversion.
pub fn problems(resources: &BTreeMap<String, v1::Resource>) -> Vec<String> {
    use v1::resource::Kind;
    let mut out = Vec::new();
    let mut inbound = 0;
    for (name, r) in resources {
        match &r.kind {
            None => out.push(format!("{name}: no kind")),
            // On-demand resolutions: only their name (checked by `apply_response`) matters.
            Some(Kind::Ip(_)) => {}
            Some(Kind::Inbound(p)) => {
                inbound += 1;
                let mut seen = BTreeSet::new();
                for port in &p.ports {
                    if !valid_port(port.port) {
                        out.push(format!("{name}: inbound port {}", port.port));
                    }
                    if !seen.insert(port.port) {
                        out.push(format!("{name}: inbound port {} twice", port.port));
                    }
                    for a in &port.authorizations {
                        for m in &a.http_routes {
                            match_problems(m, &mut out);
                        }
                    }
                }
            }
            Some(Kind::Outbound(s)) => {
                for ip in &s.cluster_ips {
                    if !valid_ip(ip) {
                        out.push(format!("{name}: cluster IP of {} bytes", ip.len()));
                    }
                }
                for port in &s.ports {
                    if !valid_port(port.port) {
                        out.push(format!("{name}: outbound port {}", port.port));
                    }
                    for route in &port.routes {
                        for m in &route.matches {
                            match_problems(m, &mut out);
                        }
                        filter_problems(&route.filters, &mut out);
                        if !valid_answer_status(route.direct_status) {
                            out.push(format!("direct status {}", route.direct_status));
                        }
                        for b in &route.backends {
                            filter_problems(&b.filters, &mut out);
                            if !valid_answer_status(b.unavailable_status) {
                                out.push(format!("unavailable status {}", b.unavailable_status));
                            }
                        }
                    }
                }
            }
            Some(Kind::Endpoints(s)) => {
                for e in &s.endpoints {
                    if !valid_ip(&e.ip) {
                        out.push(format!("{name}: endpoint IP of {} bytes", e.ip.len()));
                    }
                    if !valid_port(e.port) {
                        out.push(format!("{name}: endpoint port {}", e.port));
                    }
                    if e.inbound_port != 0 && !valid_port(e.inbound_port) {
                        out.push(format!("{name}: endpoint inbound port {}", e.inbound_port));
                    }
                }
            }
        }
    }
    if inbound > 1 {
        out.push(format!("{inbound} inbound policies"));
    }
    out
}

fn check_accepted(cfg: &Config, resources: &BTreeMap<String, v1::Resource>) {
    use v1::resource::Kind;
    let _ = cfg.to_json();
    if let Some(p) = resources.values().find_map(|r| match &r.kind {
        Some(Kind::Inbound(p)) => Some(p),
        _ => None,
    }) {
        assert_eq!(cfg.inbound.identity, p.identity, "inbound identity");
        let expected_default = match v1::DefaultPolicy::try_from(p.default_policy) {
            Ok(v1::DefaultPolicy::Unspecified | v1::DefaultPolicy::Allow) => DefaultPolicy::Allow,
            Ok(v1::DefaultPolicy::Mesh) => DefaultPolicy::Mesh,
            // Unknown values fail closed.
            Ok(v1::DefaultPolicy::Deny) | Err(_) => DefaultPolicy::Deny,
        };
        assert_eq!(
            cfg.inbound.default_policy, expected_default,
            "default policy {} converted to {:?}",
            p.default_policy, cfg.inbound.default_policy
        );
        assert_eq!(cfg.inbound.ports.len(), p.ports.len(), "inbound ports lost");
        for port in &p.ports {
            let Some(got) = u16::try_from(port.port)
                .ok()
                .and_then(|n| cfg.inbound.ports.get(&n))
            else {
                panic!("inbound port {} lost", port.port);
            };
            assert_eq!(
                got.restricted, port.restricted,
                "port {} restriction",
                port.port
            );
            assert_eq!(
                got.authorizations.len(),
                port.authorizations.len(),
                "port {} authorizations",
                port.port
            );
            for (g, a) in got.authorizations.iter().zip(&port.authorizations) {
                assert_eq!(g.all_traffic, a.all_traffic, "all_traffic");
                assert_eq!(g.http_routes.len(), a.http_routes.len(), "http routes");
                // Who the authorization admits as the skew rule reads it ("*" = any client).
                let admitted = clients::admitted(a);
                let any = admitted.iter().any(|s| s == "*");
                let ids: BTreeSet<&str> = admitted
                    .iter()
                    .map(String::as_str)
                    .filter(|s| *s != "*")
                    .collect();
                match &g.clients {
                    weft_proxy::config::Clients::AnyClient => {
                        assert!(any, "authorization clients: any")
                    }
                    weft_proxy::config::Clients::Mesh(m) => {
                        assert!(!any, "authorization clients: mesh");
                        let got: BTreeSet<&str> = m.ids().into_iter().collect();
                        assert_eq!(got, ids, "authorization clients");
                    }
                }
            }
        }
    } else {
        assert!(
            cfg.inbound.ports.is_empty(),
            "inbound ports without an inbound resource"
        );
    }
    for (addr, svc) in &cfg.by_cluster_ip {
        assert!(
            svc.cluster_ips.contains(&addr.ip()) && svc.ports.iter().any(|p| p.port == addr.port()),
            "{addr} indexed to {}",
            svc.authority
        );
    }
}

/// The target.
pub fn run(data: &[u8], f: &mut Features) {
    let Ok(resp) = v1::DiscoveryResponse::decode(data) else {
        f.hit("undecodable");
        return;
    };
    f.hit_n("resources", resp.resources.len());
    f.hit(("full_state", resp.full_state));
    for r in &resp.resources {
        use v1::resource::Kind;
        match &r.kind {
            None => f.hit("no-kind"),
            Some(Kind::Ip(r)) => f.hit(("ip", r.service.is_empty())),
            Some(Kind::Inbound(p)) => {
                f.hit_n("inbound-ports", p.ports.len());
                f.hit(("default-policy", p.default_policy.clamp(-1, 4)));
                for port in &p.ports {
                    f.hit_n("authorizations", port.authorizations.len());
                    for a in &port.authorizations {
                        f.hit((
                            "authz",
                            a.all_traffic,
                            a.http_routes.len().min(3),
                            clients::admitted(a).len().min(3),
                            a.clients.as_ref().map(|c| match c {
                                v1::authorization::Clients::Mesh(_) => "mesh",
                                v1::authorization::Clients::Probes(_) => "probes",
                            }),
                        ));
                    }
                }
            }
            Some(Kind::Outbound(s)) => {
                f.hit_n("cluster-ips", s.cluster_ips.len());
                f.hit(("policy", s.policy.is_some()));
                for port in &s.ports {
                    f.hit_n("routes", port.routes.len());
                    for route in &port.routes {
                        f.hit((
                            "route",
                            route.matches.len().min(3),
                            route.backends.len().min(3),
                        ));
                        f.hit((
                            "gateway",
                            route.filters.len().min(3),
                            route.direct_status != 0,
                            route.timeouts.is_some(),
                        ));
                    }
                }
            }
            Some(Kind::Endpoints(s)) => f.hit_n("endpoints", s.endpoints.len()),
        }
    }

    // Directly: the resources of the response as a set (the last of a name wins).
    let resources: BTreeMap<String, v1::Resource> = resp
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    let found = problems(&resources);
    match Config::from_resources(&resp.version, &resources) {
        Ok(cfg) => {
            f.hit("accepted");
            assert!(
                found.is_empty(),
                "accepted a resource set with invalid values: {found:?}"
            );
            check_accepted(&cfg, &resources);
        }
        Err(e) => {
            f.hit(("rejected", variant(&e)));
            assert!(
                resources.contains_key(e.resource()) || e.resource().is_empty(),
                "error names resource {:?}, which is not in the set: {e}",
                e.resource()
            );
        }
    }

    // As the control client does it (a fresh client: full-state and incremental rules apply).
    let mut state = ClientState::new();
    let before = state.clone();
    let (_, result) = state.handle_validated(&resp, |next| {
        Config::from_resources(&resp.version, next)
            .map(|_| ())
            .map_err(|e| Rejection {
                error: e.to_string(),
                resource_names: vec![e.resource().to_string()],
            })
    });
    match result {
        Ok(()) => {
            f.hit("applied");
            assert!(
                problems(state.resources()).is_empty(),
                "the client applied invalid resources"
            );
        }
        Err(_) => {
            f.hit("nacked");
            assert_eq!(
                state, before,
                "a rejected response changed the client state"
            );
        }
    }
}
