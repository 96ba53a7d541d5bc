//! Gateway API (GAMMA) GRPCRoutes through the compiler: from manifests to the routes every proxy
//! gets for a Service (the same routes an HTTPRoute compiles to) and to `status.parents[]`
//! (docs/gateway-api.md, section "GRPCRoute").

use std::collections::BTreeMap;

use weft_core::compile::gateway::CONTROLLER_NAME;
use weft_core::compile::{
    compile, ChangedKeys, CompileOptions, Compiled, Compiler, ResourceKind, Route,
};
use weft_core::model::parse::parse_manifests;
use weft_core::model::{ClusterObject, Kind, Model, ObjectKey};

// ---------------------------------------------------------------------------------------------
// Manifest builders.

/// A Service in `demo` whose ports are named `<prefix>-<port>` (`grpc`: gRPC ports; `http`:
/// HTTP/1 ports).
fn svc(name: &str, ip: &str, prefix: &str, ports: &[u16]) -> String {
    let ports: String = ports
        .iter()
        .map(|p| format!("  - name: {prefix}-{p}\n    port: {p}\n    targetPort: 8080\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  clusterIP: {ip}\n  selector:\n    app: {name}\n  ports:\n{ports}---\n"
    )
}

/// A route of `kind` in `demo` whose parent is Service `parent` port 80, with `rules` as YAML
/// (the items of `spec.rules`, indented by 2).
fn route(kind: &str, name: &str, parent: &str, ts: &str, rules: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata:
  name: {name}
  namespace: demo
  generation: 7
  creationTimestamp: "{ts}"
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: {parent}
    port: 80
  rules:
{rules}---
"#
    )
}

fn grpc(name: &str, parent: &str, ts: &str, rules: &str) -> String {
    route("GRPCRoute", name, parent, ts, rules)
}

fn http(name: &str, parent: &str, ts: &str, rules: &str) -> String {
    route("HTTPRoute", name, parent, ts, rules)
}

fn base() -> String {
    [
        svc("echo", "10.96.0.10", "grpc", &[80]),
        svc("echo-v1", "10.96.0.11", "grpc", &[80]),
        svc("echo-v2", "10.96.0.12", "grpc", &[80]),
    ]
    .concat()
}

fn model(yaml: &str) -> Model {
    let (objects, ignored) = parse_manifests(yaml, false).expect("manifests parse");
    assert!(ignored.is_empty(), "ignored: {ignored:?}");
    Model::from_objects(objects)
}

/// The routes of a Service port that come from Gateway API routes (`httproute:`/`grpcroute:`).
fn routes(c: &Compiled, svc: &str, port: u16) -> Vec<Route> {
    let name = format!("outbound:{svc}.demo");
    let o = match &c.shared().get(&name).expect("outbound resource").resource {
        ResourceKind::Outbound(o) => o.clone(),
        other => panic!("{name} is {other:?}"),
    };
    o.ports
        .into_iter()
        .find(|p| p.port == port)
        .expect("port")
        .routes
        .into_iter()
        .filter(|r| r.name.starts_with("grpcroute:") || r.name.starts_with("httproute:"))
        .collect()
}

/// (type, status, reason) of each condition of the route's only parent.
fn conditions(c: &Compiled, kind: Kind, name: &str) -> Vec<(String, String, String)> {
    let parents = &c.route_parents()[&ObjectKey::new(kind, "demo", name)];
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_eq!(parents[0].controller_name, CONTROLLER_NAME);
    parents[0]
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

fn accepted_message(c: &Compiled, kind: Kind, name: &str) -> String {
    c.route_parents()[&ObjectKey::new(kind, "demo", name)][0].conditions[0]
        .message
        .clone()
}

fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

fn in_force() -> Vec<(String, String, String)> {
    vec![
        cond("Accepted", "True", "Accepted"),
        cond("ResolvedRefs", "True", "ResolvedRefs"),
    ]
}

/// (route name, path regex, headers as (name, value regex), backends as (service, weight)).
type Summary = (String, String, Vec<(String, String)>, Vec<(String, u64)>);

fn summary(routes: &[Route]) -> Vec<Summary> {
    routes
        .iter()
        .map(|r| {
            let m = r.matches.first().cloned().unwrap_or_default();
            (
                r.name.clone(),
                m.path_regex,
                m.headers
                    .into_iter()
                    .map(|h| (h.name, h.value_regex))
                    .collect(),
                r.backends
                    .iter()
                    .map(|b| (b.service.clone(), b.weight))
                    .collect(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn service_and_method_matches_headers_and_weights_become_routes() {
    // Rules listed least specific first: the compiler orders them by precedence.
    let rules = r#"  - name: service
    matches:
    - method: {service: grpc.Echo}
    backendRefs: [{name: echo-v1, port: 80}]
  - name: method
    matches:
    - method: {method: Ping}
    backendRefs: [{name: echo-v2, port: 80}]
  - name: exact
    matches:
    - method: {service: grpc.Echo, method: Ping}
      headers: [{name: X-Tenant, value: a.b}]
    backendRefs:
    - {name: echo-v1, port: 80, weight: 30}
    - {name: echo-v2, port: 80, weight: 70}
  - name: regex
    matches:
    - method: {type: RegularExpression, service: 'grpc\..*', method: 'Get.*'}
    backendRefs: [{name: echo-v2, port: 80}]
"#;
    let yaml = base() + &grpc("g", "echo", "2024-01-01T00:00:00Z", rules);
    let c = compile(&model(&yaml), &CompileOptions::default());
    let s = |x: &str| x.to_string();
    assert_eq!(
        summary(&routes(&c, "echo", 80)),
        vec![
            (
                s("grpcroute:demo/g/exact"),
                s(r"/grpc\.Echo/Ping$"),
                vec![(s("x-tenant"), s(r"a\.b"))],
                vec![(s("echo-v1"), 30), (s("echo-v2"), 70)],
            ),
            // Regular expressions: the longer pattern first.
            (
                s("grpcroute:demo/g/regex"),
                s(r"(?:/(?:grpc\..*)/(?:Get.*))$"),
                vec![],
                vec![(s("echo-v2"), 1)],
            ),
            (
                s("grpcroute:demo/g/method"),
                s("(?:/[^/]+/Ping)$"),
                vec![],
                vec![(s("echo-v2"), 1)],
            ),
            (
                s("grpcroute:demo/g/service"),
                s(r"/grpc\.Echo(?:/|$)"),
                vec![],
                vec![(s("echo-v1"), 1)],
            ),
        ]
    );
    assert_eq!(conditions(&c, Kind::GRPCRoute, "g"), in_force());
    let p = &c.route_parents()[&ObjectKey::new(Kind::GRPCRoute, "demo", "g")][0];
    assert!(p
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(7)));
    assert_eq!(
        (p.parent_ref.name.as_str(), p.parent_ref.port),
        ("echo", Some(80))
    );
    // The matches are regular expressions the proxy can compile, and they select what gRPC
    // sends: `POST /<package.Service>/<Method>`.
    let r = routes(&c, "echo", 80);
    let first_match = |path: &str| {
        r.iter()
            .find(|route| {
                route.matches.iter().any(|m| {
                    regex::Regex::new(&format!("^{}", m.path_regex))
                        .unwrap()
                        .is_match(path)
                })
            })
            .map(|route| route.name.clone())
    };
    assert_eq!(
        first_match("/grpc.Echo/GetX").as_deref(),
        Some("grpcroute:demo/g/regex")
    );
    assert_eq!(
        first_match("/other.Svc/Ping").as_deref(),
        Some("grpcroute:demo/g/method")
    );
    assert_eq!(
        first_match("/grpc.Echo/Other").as_deref(),
        Some("grpcroute:demo/g/service")
    );
    assert_eq!(first_match("/grpc.EchoX/Other"), None);
    assert_eq!(first_match("/other.Svc/Pingx"), None);
}

#[test]
fn no_backend_refs_sends_to_the_parent_and_unresolved_backends_keep_their_weight() {
    let rules = "  - backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: gone, port: 80, weight: 3}]\n  - matches: [{method: {service: a.B}}]\n";
    let yaml = base() + &grpc("g", "echo", "2024-01-01T00:00:00Z", rules);
    let c = compile(&model(&yaml), &CompileOptions::default());
    let r = routes(&c, "echo", 80);
    let s = summary(&r);
    assert_eq!(s[0].3, vec![("echo".to_string(), 1)], "{s:?}");
    assert_eq!(
        s[1].3,
        vec![("echo-v1".to_string(), 1), ("gone".to_string(), 3)]
    );
    assert!(r[1].backends[1].endpoint_set.is_empty());
    assert_eq!(
        conditions(&c, Kind::GRPCRoute, "g"),
        vec![
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "False", "BackendNotFound"),
        ]
    );
}

#[test]
fn header_filters_compile_as_the_same_httproute_filters() {
    // A GRPCRoute with header modifiers (route and backendRef level) is the HTTPRoute with the
    // same filters and the path its method match means: same status, same routes but the name.
    let filters = r#"    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: "1"}]
        add: [{name: x-add, value: "2"}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp, value: "3"}]
"#;
    let backend = r#"    backendRefs:
    - name: echo-v1
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-backend, value: v1}]}
"#;
    let g = format!(
        "  - matches: [{{method: {{service: grpc.Echo, method: Ping}}}}]\n{filters}{backend}"
    );
    let h = format!(
        "  - matches: [{{path: {{type: Exact, value: /grpc.Echo/Ping}}}}]\n{filters}{backend}"
    );
    let cg = compile(
        &model(&(base() + &grpc("r", "echo", "2024-01-01T00:00:00Z", &g))),
        &CompileOptions::default(),
    );
    let ch = compile(
        &model(&(base() + &http("r", "echo", "2024-01-01T00:00:00Z", &h))),
        &CompileOptions::default(),
    );
    assert_eq!(
        conditions(&cg, Kind::GRPCRoute, "r"),
        conditions(&ch, Kind::HTTPRoute, "r")
    );
    let rename = |mut rs: Vec<Route>| {
        for r in &mut rs {
            r.name = r.name.replace("httproute:", "grpcroute:");
            for m in &mut r.matches {
                m.name = m.name.replace("httproute:", "grpcroute:");
            }
        }
        rs
    };
    assert_eq!(routes(&cg, "echo", 80), rename(routes(&ch, "echo", 80)));
}

#[test]
fn request_mirror_and_extension_ref_are_refused() {
    for filter in [
        "{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}",
        "{type: ExtensionRef, extensionRef: {group: x.io, kind: X, name: y}}",
    ] {
        let rules =
            format!("  - filters: [{filter}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n");
        let yaml = base() + &grpc("g", "echo", "2024-01-01T00:00:00Z", &rules);
        let c = compile(&model(&yaml), &CompileOptions::default());
        assert_eq!(
            conditions(&c, Kind::GRPCRoute, "g")[0],
            cond("Accepted", "False", "UnsupportedValue"),
            "{filter}"
        );
        assert!(
            accepted_message(&c, Kind::GRPCRoute, "g").contains("spec.rules[0].filters"),
            "{filter}"
        );
        assert!(
            routes(&c, "echo", 80).is_empty(),
            "{filter}: nothing applied"
        );
    }
}

#[test]
fn grpc_routes_attach_only_to_ports_that_can_carry_grpc() {
    // `http-80`: an HTTP/1 port. `grpc-81`, `h2c-82` and an unnamed port (detected) carry gRPC.
    let yaml = svc("one", "10.96.0.20", "http", &[80])
        + &svc("echo-v1", "10.96.0.11", "grpc", &[80])
        + &grpc(
            "g",
            "one",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v1, port: 80}]\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        conditions(&c, Kind::GRPCRoute, "g")[0],
        cond("Accepted", "False", "NoMatchingParent")
    );
    assert!(accepted_message(&c, Kind::GRPCRoute, "g").contains("gRPC"));
    assert!(routes(&c, "one", 80).is_empty());

    let multi = r#"apiVersion: v1
kind: Service
metadata: {name: multi, namespace: demo}
spec:
  clusterIP: 10.96.0.21
  ports:
  - {name: http-80, port: 80}
  - {name: grpc-81, port: 81}
  - {name: h2c-82, port: 82}
  - {port: 83}
  - {name: tcp-84, port: 84}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: all, namespace: demo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: multi}]
  rules: [{matches: [{method: {service: a.B}}]}]
---
"#;
    let c = compile(&model(multi), &CompileOptions::default());
    assert_eq!(conditions(&c, Kind::GRPCRoute, "all"), in_force());
    assert!(
        accepted_message(&c, Kind::GRPCRoute, "all").contains("on port 81, 82, 83"),
        "{}",
        accepted_message(&c, Kind::GRPCRoute, "all")
    );
    let name = "outbound:multi.demo";
    let ResourceKind::Outbound(o) = &c.shared().get(name).unwrap().resource else {
        panic!("not outbound");
    };
    for p in &o.ports {
        let has = p.routes.iter().any(|r| r.name.starts_with("grpcroute:"));
        assert_eq!(has, [81, 82, 83].contains(&p.port), "port {}", p.port);
    }
}

#[test]
fn a_grpc_route_may_share_an_httproutes_name() {
    let yaml = base()
        + &svc("other", "10.96.0.30", "grpc", &[80])
        + &grpc(
            "same",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v1, port: 80}]\n",
        )
        + &http(
            "same",
            "other",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v2, port: 80}]\n",
        );
    let m = model(&yaml);
    assert_eq!(m.gateway_routes.len(), 1);
    assert_eq!(m.grpc_routes.len(), 1);
    let c = compile(&m, &CompileOptions::default());
    assert_eq!(conditions(&c, Kind::GRPCRoute, "same"), in_force());
    assert_eq!(conditions(&c, Kind::HTTPRoute, "same"), in_force());
    let g = summary(&routes(&c, "echo", 80));
    let h = summary(&routes(&c, "other", 80));
    assert_eq!(g.len(), 1);
    assert_eq!(h.len(), 1);
    assert_eq!(
        (g[0].0.as_str(), g[0].3[0].0.as_str()),
        ("grpcroute:demo/same/rule-0", "echo-v1")
    );
    assert_eq!(
        (h[0].0.as_str(), h[0].3[0].0.as_str()),
        ("httproute:demo/same/rule-0", "echo-v2")
    );
    // Removing one leaves the other.
    let mut m = m;
    assert!(m.remove(&ObjectKey::new(Kind::GRPCRoute, "demo", "same")));
    assert_eq!(m.gateway_routes.len(), 1);
    let c = compile(&m, &CompileOptions::default());
    assert!(!c
        .route_parents()
        .contains_key(&ObjectKey::new(Kind::GRPCRoute, "demo", "same")));
    assert_eq!(conditions(&c, Kind::HTTPRoute, "same"), in_force());
}

#[test]
fn the_older_of_an_httproute_and_a_grpcroute_on_one_port_wins() {
    let g = "  - backendRefs: [{name: echo-v1, port: 80}]\n";
    let h = "  - backendRefs: [{name: echo-v2, port: 80}]\n";
    // The GRPCRoute is older.
    let yaml = base()
        + &grpc("g", "echo", "2024-01-01T00:00:00Z", g)
        + &http("h", "echo", "2024-02-01T00:00:00Z", h);
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(conditions(&c, Kind::GRPCRoute, "g"), in_force());
    assert_eq!(
        conditions(&c, Kind::HTTPRoute, "h")[0],
        cond("Accepted", "False", "Conflicted")
    );
    assert!(accepted_message(&c, Kind::HTTPRoute, "h").contains("GRPCRoute demo/g"));
    let names: Vec<String> = routes(&c, "echo", 80).into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["grpcroute:demo/g/rule-0"]);

    // The HTTPRoute is older.
    let yaml = base()
        + &grpc("g", "echo", "2024-03-01T00:00:00Z", g)
        + &http("h", "echo", "2024-02-01T00:00:00Z", h);
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(conditions(&c, Kind::HTTPRoute, "h"), in_force());
    assert_eq!(
        conditions(&c, Kind::GRPCRoute, "g")[0],
        cond("Accepted", "False", "Conflicted")
    );
    let names: Vec<String> = routes(&c, "echo", 80).into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["httproute:demo/h/rule-0"]);

    // An older HTTPRoute weft refuses (an ExtensionRef filter) does not take the port.
    let refused =
        "  - filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: X, name: y}}]\n";
    let yaml = base()
        + &grpc("g", "echo", "2024-03-01T00:00:00Z", g)
        + &http("h", "echo", "2024-02-01T00:00:00Z", refused);
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        conditions(&c, Kind::HTTPRoute, "h")[0],
        cond("Accepted", "False", "UnsupportedValue")
    );
    assert_eq!(conditions(&c, Kind::GRPCRoute, "g"), in_force());
}

#[test]
fn unknown_method_match_is_refused_at_parse() {
    let yaml = base()
        + &grpc(
            "g",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - matches: [{method: {type: Exact}}]\n",
        );
    let e = parse_manifests(&yaml, false).unwrap_err();
    assert!(
        e.to_string().contains("at least one of service and method"),
        "{e}"
    );
}

#[test]
fn incremental_updates_match_a_full_compile() {
    let opts = CompileOptions::default();
    let g = "  - matches: [{method: {service: grpc.Echo}}]\n    backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: late, port: 80, weight: 3}]\n";
    let h = "  - backendRefs: [{name: echo-v2, port: 80}]\n";
    let steps = [
        base(),
        base() + &grpc("r", "echo", "2024-02-01T00:00:00Z", g),
        // The missing backend appears.
        base()
            + &svc("late", "10.96.0.13", "grpc", &[80])
            + &grpc("r", "echo", "2024-02-01T00:00:00Z", g),
        // An older HTTPRoute of the same name arrives on the same port: it wins.
        base()
            + &svc("late", "10.96.0.13", "grpc", &[80])
            + &grpc("r", "echo", "2024-02-01T00:00:00Z", g)
            + &http("r", "echo", "2024-01-01T00:00:00Z", h),
        // The HTTPRoute moves to another Service: the GRPCRoute is in force again.
        base()
            + &svc("late", "10.96.0.13", "grpc", &[80])
            + &svc("other", "10.96.0.30", "grpc", &[80])
            + &grpc("r", "echo", "2024-02-01T00:00:00Z", g)
            + &http("r", "other", "2024-01-01T00:00:00Z", h),
        // The parent's port becomes HTTP/1: the GRPCRoute detaches.
        svc("echo", "10.96.0.10", "http", &[80])
            + &svc("echo-v1", "10.96.0.11", "grpc", &[80])
            + &svc("echo-v2", "10.96.0.12", "grpc", &[80])
            + &svc("late", "10.96.0.13", "grpc", &[80])
            + &svc("other", "10.96.0.30", "grpc", &[80])
            + &grpc("r", "echo", "2024-02-01T00:00:00Z", g)
            + &http("r", "other", "2024-01-01T00:00:00Z", h),
        // Back to gRPC; then the GRPCRoute goes.
        base()
            + &svc("late", "10.96.0.13", "grpc", &[80])
            + &grpc("r", "echo", "2024-02-01T00:00:00Z", g),
        base(),
    ];
    let mut compiler = Compiler::new(opts.clone());
    let mut m = Model::new();
    compiler.full(&m);
    let mut prev: BTreeMap<ObjectKey, ClusterObject> = BTreeMap::new();
    let mut seen_states = Vec::new();
    for (i, yaml) in steps.iter().enumerate() {
        let (objects, _) = parse_manifests(yaml, false).expect("parse");
        let next: BTreeMap<ObjectKey, ClusterObject> =
            objects.into_iter().map(|o| (o.key(), o)).collect();
        let mut changed = ChangedKeys::default();
        for k in prev.keys() {
            if !next.contains_key(k) {
                m.remove(k);
                changed.insert(k.clone());
            }
        }
        for (k, o) in &next {
            if prev.get(k) != Some(o) {
                m.upsert(o.clone());
                changed.insert(k.clone());
            }
        }
        prev = next;
        let inc = compiler.update(&m, &changed);
        let full = compile(&m, &opts);
        assert_eq!(inc.route_parents(), full.route_parents(), "step {i}");
        assert_eq!(inc.statuses(), full.statuses(), "step {i}");
        assert_eq!(
            inc.shared().digest(),
            full.shared().digest(),
            "step {i}: shared resources"
        );
        seen_states.push(
            full.route_parents()
                .get(&ObjectKey::new(Kind::GRPCRoute, "demo", "r"))
                .map(|p| p[0].conditions[0].reason.clone()),
        );
    }
    // The steps went through the states they were written for.
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        seen_states,
        vec![
            None,
            s("Accepted"),
            s("Accepted"),
            s("Conflicted"),
            s("Accepted"),
            s("NoMatchingParent"),
            s("Accepted"),
            None
        ]
    );
}
