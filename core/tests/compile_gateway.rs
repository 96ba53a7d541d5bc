//! Gateway API (GAMMA) HTTPRoutes through the compiler: from manifests to the routes every proxy
//! gets for a Service, and to `status.parents[]` (docs/gateway-api.md).

use std::collections::BTreeMap;
use weft_core::compile::gateway::CONTROLLER_NAME;
use weft_core::compile::{
    compile, ChangedKeys, CompileOptions, Compiled, Compiler, HeaderModifier, HeaderValue,
    OutboundService, PathModifier, QueryParamMatch, RequestRedirect, ResourceKind, Route,
    RouteFilter, RouteTimeouts, UrlRewrite,
};
use weft_core::model::parse::parse_manifests;

use weft_core::model::{ClusterObject, Kind, Model, ObjectKey};

// ---------------------------------------------------------------------------------------------
// Manifest builders.

fn svc(name: &str, ip: &str, ports: &[u16]) -> String {
    let ports: String = ports
        .iter()
        .map(|p| format!("  - name: http-{p}\n    port: {p}\n    targetPort: 8080\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  clusterIP: {ip}\n  selector:\n    app: {name}\n  ports:\n{ports}---\n"
    )
}

/// An HTTPRoute in `demo` whose parent is Service `parent` (port 80), with `rules` as YAML
/// (the items of `spec.rules`, indented by 2).
fn route(name: &str, parent: &str, ts: &str, rules: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: demo
  generation: 4
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

fn split(name: &str, root: &str, backends: &[(&str, u64)]) -> String {
    let b: String = backends
        .iter()
        .map(|(s, w)| format!("  - service: {s}\n    weight: {w}\n"))
        .collect();
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: {name}\n  namespace: demo\n  generation: 2\nspec:\n  service: {root}\n  backends:\n{b}---\n"
    )
}

fn base() -> String {
    [
        svc("echo", "10.96.0.10", &[80]),
        svc("echo-v1", "10.96.0.11", &[80]),
        svc("echo-v2", "10.96.0.12", &[80]),
    ]
    .concat()
}

/// A meshed, ready pod.
fn pod(ns: &str, name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: {name}, weft.io/proxy-version: \"0.1.0\"}}\nspec:\n  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n---\n"
    )
}

/// An HTTPRoute in namespace `ns` for Service `demo/echo` port 80 (a consumer route unless
/// `ns` is `demo`).
fn consumer_route(ns: &str, name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {ns}\n  generation: 2\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: echo, namespace: demo, port: 80}}\n  rules:\n{rules}---\n"
    )
}

fn model(yaml: &str) -> Model {
    let (objects, ignored) = parse_manifests(yaml, false).expect("manifests parse");
    assert!(ignored.is_empty(), "ignored: {ignored:?}");
    Model::from_objects(objects)
}

fn outbound(c: &Compiled, svc: &str) -> OutboundService {
    let name = format!("outbound:{svc}.demo");
    match &c.shared().get(&name).expect("outbound resource").resource {
        ResourceKind::Outbound(o) => o.clone(),
        other => panic!("{name} is {other:?}"),
    }
}

fn routes(c: &Compiled, svc: &str, port: u16) -> Vec<Route> {
    outbound(c, svc)
        .ports
        .into_iter()
        .find(|p| p.port == port)
        .expect("port")
        .routes
}

/// (type, status, reason) of each condition of the route's only parent.
fn parent_conditions(c: &Compiled, name: &str) -> Vec<(String, String, String)> {
    let parents = &c.route_parents()[&ObjectKey::new(Kind::HTTPRoute, "demo", name)];
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_eq!(parents[0].controller_name, CONTROLLER_NAME);
    parents[0]
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

// ---------------------------------------------------------------------------------------------

#[test]
fn weights_compile_to_one_route_with_weighted_backends_and_no_default() {
    let yaml = base()
        + &route(
            "canary",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs:\n    - name: echo-v1\n      port: 80\n      weight: 30\n    - name: echo-v2\n      port: 80\n      weight: 70\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    let r = routes(&c, "echo", 80);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].name, "httproute:demo/canary/rule-0");
    assert!(
        r[0].matches.is_empty(),
        "a catch-all rule carries every request"
    );
    let got: Vec<(&str, u64, &str)> = r[0]
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight, b.endpoint_set.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("echo-v1", 30, "endpoints:echo-v1.demo:80"),
            ("echo-v2", 70, "endpoints:echo-v2.demo:80"),
        ]
    );
    let conds = parent_conditions(&c, "canary");
    assert_eq!(
        conds,
        vec![
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    let p = &c.route_parents()[&ObjectKey::new(Kind::HTTPRoute, "demo", "canary")][0];
    assert!(p
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(4)));
    assert_eq!(p.parent_ref.name, "echo");
    assert_eq!(p.parent_ref.port, Some(80));
}

/// (route name, path regex, methods, headers as (name, value regex)).
type Summary = (String, String, Vec<String>, Vec<(String, String)>);

#[test]
fn matches_follow_the_spec_precedence_across_rules_and_routes() {
    // Rules deliberately listed least specific first.
    let rules = r#"  - matches:
    - path: {type: PathPrefix, value: /}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /api/}
    backendRefs: [{name: echo-v2, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /api}
      method: POST
    backendRefs: [{name: echo-v2, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers:
      - {name: X-Version, value: "2.0"}
      - {name: x-env, type: RegularExpression, value: "canary|beta"}
    backendRefs: [{name: echo-v2, port: 80}]
  - matches:
    - path: {type: Exact, value: /api/v1.0}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches:
    - path: {type: RegularExpression, value: "/items/[0-9]+"}
    backendRefs: [{name: echo-v1, port: 80}]
"#;
    let yaml = base() + &route("m", "echo", "2024-01-01T00:00:00Z", rules);
    let c = compile(&model(&yaml), &CompileOptions::default());
    let r = routes(&c, "echo", 80);
    let summary: Vec<Summary> = r
        .iter()
        .map(|r| {
            let m = r.matches.first().cloned().unwrap_or_default();
            (
                r.name.clone(),
                m.path_regex,
                m.methods,
                m.headers
                    .into_iter()
                    .map(|h| (h.name, h.value_regex))
                    .collect(),
            )
        })
        .collect();
    let s = |n: &str, p: &str, m: &[&str], h: &[(&str, &str)]| {
        (
            format!("httproute:demo/m/{n}"),
            p.to_string(),
            m.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            h.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        summary,
        vec![
            // Exact first, then RegularExpression, then prefixes longest first; among equal
            // prefixes a method wins, then more headers; the catch-all last.
            s("rule-4", r"/api/v1\.0$", &[], &[]),
            s("rule-5", "(?:/items/[0-9]+)$", &[], &[]),
            s("rule-2", "/api(?:/|$)", &["POST"], &[]),
            s(
                "rule-3",
                "/api(?:/|$)",
                &[],
                &[("x-env", "canary|beta"), ("x-version", r"2\.0")]
            ),
            s("rule-1", "/api(?:/|$)", &[], &[]),
            s("rule-0", "", &[], &[]),
        ]
    );
    // The catch-all (PathPrefix /) carries no HTTP match, like SMI's default route.
    assert!(r.last().expect("routes").matches.is_empty());
}

#[test]
fn matches_of_an_older_route_win_ties() {
    let rule = |b: &str| {
        format!(
            "  - matches:\n    - path: {{type: PathPrefix, value: /x}}\n    backendRefs: [{{name: {b}, port: 80}}]\n"
        )
    };
    let yaml = base()
        + &route("newer", "echo", "2024-02-01T00:00:00Z", &rule("echo-v2"))
        + &route("older", "echo", "2024-01-01T00:00:00Z", &rule("echo-v1"));
    let c = compile(&model(&yaml), &CompileOptions::default());
    let names: Vec<String> = routes(&c, "echo", 80).into_iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        vec![
            "httproute:demo/older/rule-0".to_string(),
            "httproute:demo/newer/rule-0".to_string(),
            "gateway:no-match".to_string(),
        ]
    );
}

#[test]
fn an_unresolvable_backend_keeps_its_weight_and_fails_its_share() {
    let yaml = base()
        + &route(
            "r",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs:\n    - {name: echo-v1, port: 80, weight: 1}\n    - {name: missing, port: 80, weight: 1}\n    - {name: echo-v2, port: 81, weight: 1}\n    - {group: example.com, kind: Bucket, name: b, weight: 1}\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    let r = routes(&c, "echo", 80);
    assert_eq!(r.len(), 1);
    let b = &r[0].backends;
    assert_eq!(b.len(), 4);
    assert!(
        b.iter().all(|b| b.weight == 1),
        "every backend keeps its weight"
    );
    assert!(b[0].unavailable_reason.is_empty());
    assert_eq!(b[0].unavailable_status, 0);
    for x in &b[1..] {
        assert!(x.endpoint_set.is_empty(), "{x:?}");
        assert!(!x.unavailable_reason.is_empty(), "{x:?}");
        assert_eq!(x.unavailable_status, 500, "the spec's status: {x:?}");
    }
    assert_eq!(
        parent_conditions(&c, "r"),
        vec![
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "False", "BackendNotFound")
        ]
    );
    let msg =
        &c.route_parents()[&ObjectKey::new(Kind::HTTPRoute, "demo", "r")][0].conditions[1].message;
    assert!(msg.contains("demo/missing does not exist"), "{msg}");
    assert!(msg.contains("has no port 81"), "{msg}");
    assert!(msg.contains("Bucket"), "{msg}");
}

#[test]
fn a_rule_without_backend_refs_sends_to_the_parent() {
    let yaml = base()
        + &route(
            "r",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - matches:\n    - path: {type: Exact, value: /only}\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    let r = routes(&c, "echo", 80);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].backends.len(), 1);
    assert_eq!(r[0].backends[0].service, "echo");
    assert_eq!(r[0].backends[0].endpoint_set, "endpoints:echo.demo:80");
    // No catch-all: a request matching no rule gets the spec's 404 from the proxy itself.
    assert_eq!(r[1].name, "gateway:no-match");
    assert_eq!(r[1].direct_status, 404);
    assert!(r[1].matches.is_empty() && r[1].backends.is_empty());
}

#[test]
fn headless_and_missing_parents_are_refused_and_change_nothing() {
    let headless = "apiVersion: v1\nkind: Service\nmetadata:\n  name: hl\n  namespace: demo\nspec:\n  clusterIP: None\n  ports:\n  - port: 80\n---\n";
    let yaml = base()
        + headless
        + &route(
            "to-headless",
            "hl",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v1, port: 80}]\n",
        )
        + &route(
            "to-missing",
            "nope",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v1, port: 80}]\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        parent_conditions(&c, "to-headless")[0],
        cond("Accepted", "False", "NoMatchingParent")
    );
    assert_eq!(
        parent_conditions(&c, "to-missing")[0],
        cond("Accepted", "False", "NoMatchingParent")
    );
    let r = routes(&c, "hl", 80);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "default");
}

#[test]
fn a_parent_port_the_service_lacks_is_no_matching_parent() {
    let yaml = base()
        + &route(
            "r",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v1, port: 80}]\n",
        )
        .replace("    port: 80\n  rules:", "    port: 8080\n  rules:");
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        parent_conditions(&c, "r")[0],
        cond("Accepted", "False", "NoMatchingParent")
    );
    assert_eq!(routes(&c, "echo", 80)[0].name, "default");
}

#[test]
fn unsupported_fields_keep_the_route_out_of_force() {
    let yaml = base()
        + &route(
            "filtered",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: x, value: y}]\n    - type: RequestMirror\n      requestMirror:\n        backendRef: {name: echo-v1, port: 80}\n    backendRefs: [{name: echo-v2, port: 80}]\n",
        )
        + &route(
            "extension",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs:\n    - name: echo-v2\n      port: 80\n      filters:\n      - type: ExtensionRef\n        extensionRef: {group: example.com, kind: Thing, name: t}\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    for name in ["filtered", "extension"] {
        assert_eq!(
            parent_conditions(&c, name)[0],
            cond("Accepted", "False", "UnsupportedValue"),
            "{name}"
        );
    }
    let r = routes(&c, "echo", 80);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "default", "nothing half-applied");
}

#[test]
fn gateway_parents_are_not_weft_s() {
    let yaml = base()
        + r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: gw-only
  namespace: demo
spec:
  parentRefs:
  - name: some-gateway
  rules:
  - backendRefs: [{name: echo-v1, port: 80}]
---
"#;
    let c = compile(&model(&yaml), &CompileOptions::default());
    let parents = &c.route_parents()[&ObjectKey::new(Kind::HTTPRoute, "demo", "gw-only")];
    assert!(parents.is_empty(), "the Gateway parent is not weft's");
    assert_eq!(routes(&c, "echo", 80)[0].name, "default");
}

#[test]
fn an_http_route_takes_precedence_over_a_traffic_split_and_both_say_so() {
    let yaml = base()
        + &split("smi", "echo", &[("echo-v1", 50), ("echo-v2", 50)])
        + &route(
            "gw",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v2, port: 80}]\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    let r = routes(&c, "echo", 80);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "httproute:demo/gw/rule-0");
    let split_accepted = c.statuses()[&ObjectKey::new(Kind::TrafficSplit, "demo", "smi")]
        .iter()
        .find(|c| c.type_ == "Accepted")
        .cloned()
        .expect("Accepted");
    assert_eq!(split_accepted.status, "False");
    assert_eq!(split_accepted.reason, "HTTPRouteInForce");
    assert!(split_accepted.message.contains("demo/gw"));
    let msg =
        &c.route_parents()[&ObjectKey::new(Kind::HTTPRoute, "demo", "gw")][0].conditions[0].message;
    assert!(
        msg.contains("takes precedence over TrafficSplit demo/smi"),
        "{msg}"
    );

    // Without the route the split is in force again.
    let yaml = base() + &split("smi", "echo", &[("echo-v1", 50), ("echo-v2", 50)]);
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert!(routes(&c, "echo", 80)[0].name.starts_with("split:"));
}

/// Incremental recompilation (the operator's path) gives what a full compile gives.
#[test]
fn incremental_updates_match_a_full_compile() {
    let opts = CompileOptions::default();
    let steps = [
        base(),
        base()
            + &route(
                "r",
                "echo",
                "2024-01-01T00:00:00Z",
                "  - backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: late, port: 80, weight: 3}]\n",
            ),
        // The missing backend appears.
        base()
            + &svc("late", "10.96.0.13", &[80])
            + &route(
                "r",
                "echo",
                "2024-01-01T00:00:00Z",
                "  - backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: late, port: 80, weight: 3}]\n",
            ),
        // A split on the same Service appears.
        base()
            + &svc("late", "10.96.0.13", &[80])
            + &split("smi", "echo", &[("echo-v1", 1)])
            + &route(
                "r",
                "echo",
                "2024-01-01T00:00:00Z",
                "  - backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: late, port: 80, weight: 3}]\n",
            ),
        // The route goes: the split is in force.
        base() + &svc("late", "10.96.0.13", &[80]) + &split("smi", "echo", &[("echo-v1", 1)]),
        // Pods in two namespaces, and a consumer route whose backend is missing.
        base()
            + &svc("late", "10.96.0.13", &[80])
            + &split("smi", "echo", &[("echo-v1", 1)])
            + &pod("demo", "server", "10.0.0.1")
            + &pod("client", "caller", "10.0.0.2")
            + &consumer_route("client", "mine", "  - backendRefs: [{name: near, port: 80}]\n"),
        // Its backend appears in the consumer's namespace.
        base()
            + &svc("late", "10.96.0.13", &[80])
            + &split("smi", "echo", &[("echo-v1", 1)])
            + &pod("demo", "server", "10.0.0.1")
            + &pod("client", "caller", "10.0.0.2")
            + &svc("near", "10.96.2.1", &[80]).replace("namespace: demo", "namespace: client")
            + &consumer_route("client", "mine", "  - backendRefs: [{name: near, port: 80}]\n"),
        // The shared Service changes (a new port) while the consumer route is in force.
        base().replace("10.96.0.10", "10.96.0.20")
            + &svc("late", "10.96.0.13", &[80])
            + &split("smi", "echo", &[("echo-v1", 1)])
            + &pod("demo", "server", "10.0.0.1")
            + &pod("client", "caller", "10.0.0.2")
            + &svc("near", "10.96.2.1", &[80]).replace("namespace: demo", "namespace: client")
            + &consumer_route("client", "mine", "  - backendRefs: [{name: near, port: 80}]\n"),
        // The consumer route goes.
        base()
            + &svc("late", "10.96.0.13", &[80])
            + &split("smi", "echo", &[("echo-v1", 1)])
            + &pod("demo", "server", "10.0.0.1")
            + &pod("client", "caller", "10.0.0.2")
            + &svc("near", "10.96.2.1", &[80]).replace("namespace: demo", "namespace: client"),
    ];
    let mut compiler = Compiler::new(opts.clone());
    let mut m = Model::new();
    compiler.full(&m);
    let mut prev: BTreeMap<ObjectKey, ClusterObject> = BTreeMap::new();
    for (i, yaml) in steps.iter().enumerate() {
        let (objects, _) = parse_manifests(yaml, false).expect("parse");
        let next: BTreeMap<ObjectKey, ClusterObject> =
            objects.into_iter().map(|o| (o.key(), o)).collect();
        // Only what changed is reported, as the watchers do.
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
        let versions = |c: &Compiled| -> Vec<(String, String)> {
            c.proxies()
                .iter()
                .map(|(k, p)| (k.to_string(), p.version.clone()))
                .collect()
        };
        assert_eq!(versions(&inc), versions(&full), "step {i}: proxy versions");
        if i == 7 {
            // The consumer variant follows the Service's own change.
            let (name, o) = echo_in_proxy(&inc, "client", "caller");
            assert_eq!(name, "outbound:echo.demo@client");
            assert_eq!(
                o.cluster_ips,
                vec!["10.96.0.20".parse::<std::net::IpAddr>().unwrap()]
            );
        }
        if (5..=7).contains(&i) {
            assert!(inc.consumer_shared("client").is_some(), "step {i}");
        }
    }
    assert!(compiler.current().consumer_shared("client").is_none());
    // The last step's split is in force again.
    let c = compiler.current();
    assert!(routes(&c, "echo", 80)[0].name.starts_with("split:"));
}

/// The Accepted condition's (status, reason) of each named route.
fn accepted(c: &Compiled, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| {
            let c = &parent_conditions(c, n)[0];
            (c.1.clone(), c.2.clone())
        })
        .collect()
}

#[test]
fn filters_compile_into_route_and_backend_filters() {
    let yaml = base()
        + &route(
            "f",
            "echo",
            "2024-01-01T00:00:00Z",
            r#"  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: "1"}]
        add: [{name: X-Add, value: a}]
        remove: [X-Gone]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: X-Resp, value: r}]
    backendRefs:
    - name: echo-v1
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: X-Backend, value: v1}]
    - name: echo-v2
      port: 80
"#,
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        accepted(&c, &["f"]),
        vec![("True".into(), "Accepted".into())]
    );
    let r = routes(&c, "echo", 80);
    assert_eq!(r.len(), 1, "a catch-all rule: no 404 route after it: {r:?}");
    let hv = |n: &str, v: &str| HeaderValue {
        name: n.into(),
        value: v.into(),
    };
    assert_eq!(
        r[0].filters,
        vec![
            RouteFilter::RequestHeaderModifier(HeaderModifier {
                set: vec![hv("x-set", "1")],
                add: vec![hv("x-add", "a")],
                remove: vec!["x-gone".into()],
            }),
            RouteFilter::ResponseHeaderModifier(HeaderModifier {
                add: vec![hv("x-resp", "r")],
                ..Default::default()
            }),
        ]
    );
    assert_eq!(
        r[0].backends[0].filters,
        vec![RouteFilter::RequestHeaderModifier(HeaderModifier {
            set: vec![hv("x-backend", "v1")],
            ..Default::default()
        })]
    );
    assert!(r[0].backends[1].filters.is_empty());
}

#[test]
fn rewrites_and_redirects_carry_the_prefix_of_each_match() {
    let yaml = base()
        + &route(
            "rw",
            "echo",
            "2024-01-01T00:00:00Z",
            r#"  - matches:
    - path: {type: PathPrefix, value: /old/}
    - path: {type: PathPrefix, value: /legacy}
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: new.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
    backendRefs: [{name: echo-v1, port: 80}]
  - name: moved
    matches:
    - path: {type: Exact, value: /moved}
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: elsewhere.example
        port: 8443
        statusCode: 301
        path: {type: ReplaceFullPath, replaceFullPath: /here}
"#,
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        accepted(&c, &["rw"]),
        vec![("True".into(), "Accepted".into())]
    );
    let r = routes(&c, "echo", 80);
    let by_name: Vec<(&str, &[RouteFilter])> = r
        .iter()
        .map(|r| (r.name.as_str(), r.filters.as_slice()))
        .collect();
    let rewrite = |prefix: &str| {
        vec![RouteFilter::UrlRewrite(UrlRewrite {
            hostname: "new.example".into(),
            path: Some(PathModifier::ReplacePrefixMatch {
                matched_prefix: prefix.into(),
                replacement: "/new".into(),
            }),
        })]
    };
    let redirect = vec![RouteFilter::RequestRedirect(RequestRedirect {
        scheme: "https".into(),
        hostname: "elsewhere.example".into(),
        port: 8443,
        path: Some(PathModifier::ReplaceFullPath("/here".into())),
        status_code: 301,
    })];
    // Exact first, then the longer prefix; one route per match, each with its own prefix.
    assert_eq!(
        by_name,
        vec![
            ("httproute:demo/rw/moved", redirect.as_slice()),
            ("httproute:demo/rw/rule-0", rewrite("/legacy").as_slice()),
            ("httproute:demo/rw/rule-0", rewrite("/old").as_slice()),
            ("gateway:no-match", &[][..]),
        ]
    );
    assert_eq!(r[3].direct_status, 404);
}

#[test]
fn invalid_filters_keep_the_route_out_of_force_with_the_spec_reason() {
    let rules = [
        // RequestRedirect and URLRewrite cannot be combined.
        ("both", "  - filters:\n    - {type: RequestRedirect, requestRedirect: {statusCode: 302}}\n    - {type: URLRewrite, urlRewrite: {hostname: x.example}}\n", "IncompatibleFilters"),
        // ReplacePrefixMatch on an Exact match.
        ("prefix-on-exact", "  - matches:\n    - path: {type: Exact, value: /a}\n    filters:\n    - type: URLRewrite\n      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}\n", "IncompatibleFilters"),
        // The same filter type twice.
        ("twice", "  - filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: c, value: d}]}}\n", "IncompatibleFilters"),
        // A status code the spec does not allow.
        ("status-305", "  - filters:\n    - {type: RequestRedirect, requestRedirect: {statusCode: 305}}\n", "UnsupportedValue"),
        // An invalid header name, and a header named twice in one modifier.
        ("bad-header", "  - filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: \"a b\", value: c}]}}\n", "UnsupportedValue"),
        ("dup-header", "  - filters:\n    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-A, value: c}], remove: [x-a]}}\n", "UnsupportedValue"),
        // A type without its field.
        ("empty", "  - filters:\n    - {type: URLRewrite}\n", "UnsupportedValue"),
        // CORS is not implemented.
        ("cors", "  - filters:\n    - {type: CORS, cors: {allowOrigins: [\"https://a.example\"]}}\n", "UnsupportedValue"),
    ];
    let mut yaml = base();
    for (name, rule, _) in &rules {
        yaml += &route(name, "echo", "2024-01-01T00:00:00Z", rule);
    }
    let c = compile(&model(&yaml), &CompileOptions::default());
    for (name, _, reason) in &rules {
        assert_eq!(
            parent_conditions(&c, name)[0],
            cond("Accepted", "False", reason),
            "{name}"
        );
    }
    let message = |name: &str| {
        c.route_parents()[&ObjectKey::new(Kind::HTTPRoute, "demo", name)][0].conditions[0]
            .message
            .clone()
    };
    assert!(
        message("cors").contains("spec.rules[0].filters[0]: filter CORS is not implemented"),
        "{}",
        message("cors")
    );
    assert!(
        message("both").contains("RequestRedirect and URLRewrite cannot be combined"),
        "{}",
        message("both")
    );
    let r = routes(&c, "echo", 80);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "default", "nothing in force");
}

#[test]
fn query_param_matches_compile_and_count_in_precedence() {
    let yaml = base()
        + &route(
            "q",
            "echo",
            "2024-01-01T00:00:00Z",
            r#"  - name: one
    matches:
    - queryParams: [{name: a.b, value: "x.y"}]
    backendRefs: [{name: echo-v1, port: 80}]
  - name: two
    matches:
    - queryParams:
      - {name: c, type: RegularExpression, value: "[0-9]+"}
      - {name: a.b, value: "x.y"}
      - {name: c, value: ignored}
    backendRefs: [{name: echo-v2, port: 80}]
"#,
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        accepted(&c, &["q"]),
        vec![("True".into(), "Accepted".into())]
    );
    let r = routes(&c, "echo", 80);
    let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "httproute:demo/q/two",
            "httproute:demo/q/one",
            "gateway:no-match"
        ],
        "more query parameter matches first"
    );
    assert_eq!(
        r[0].matches[0].query_params,
        vec![
            QueryParamMatch {
                name: "a.b".into(),
                value_regex: r"x\.y".into()
            },
            QueryParamMatch {
                name: "c".into(),
                value_regex: "[0-9]+".into()
            },
        ],
        "Exact escaped, RegularExpression as written, the first of a repeated name"
    );

    // An invalid regular expression: not in force.
    let yaml = base()
        + &route(
            "bad",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - matches:\n    - queryParams: [{name: a, type: RegularExpression, value: \"(\"}]\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        accepted(&c, &["bad"]),
        vec![("False".into(), "UnsupportedValue".into())]
    );
    assert_eq!(routes(&c, "echo", 80)[0].name, "default");
}

#[test]
fn timeouts_and_named_rules() {
    let yaml = base()
        + &route(
            "t",
            "echo",
            "2024-01-01T00:00:00Z",
            r#"  - name: with-timeouts
    timeouts: {request: 10s, backendRequest: 1500ms}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /slow}}]
    timeouts: {request: "0s", backendRequest: 1m}
"#,
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        accepted(&c, &["t"]),
        vec![("True".into(), "Accepted".into())]
    );
    let r = routes(&c, "echo", 80);
    let got: Vec<(&str, Option<RouteTimeouts>)> =
        r.iter().map(|r| (r.name.as_str(), r.timeouts)).collect();
    assert_eq!(
        got,
        vec![
            (
                "httproute:demo/t/rule-1",
                Some(RouteTimeouts {
                    request_ms: 0,
                    backend_request_ms: 60_000
                })
            ),
            (
                "httproute:demo/t/with-timeouts",
                Some(RouteTimeouts {
                    request_ms: 10_000,
                    backend_request_ms: 1_500
                })
            ),
        ]
    );

    for (name, timeouts) in [
        ("longer", "{request: 1s, backendRequest: 2s}"),
        ("not-a-duration", "{request: 1.5s}"),
    ] {
        let yaml = base()
            + &route(
                name,
                "echo",
                "2024-01-01T00:00:00Z",
                &format!("  - timeouts: {timeouts}\n"),
            );
        let c = compile(&model(&yaml), &CompileOptions::default());
        assert_eq!(
            accepted(&c, &[name]),
            vec![("False".into(), "UnsupportedValue".into())],
            "{name}"
        );
        assert_eq!(routes(&c, "echo", 80)[0].name, "default", "{name}");
    }
}

#[test]
fn cross_namespace_backend_refs_resolve_in_their_namespace() {
    let yaml = base()
        + "apiVersion: v1\nkind: Service\nmetadata:\n  name: far\n  namespace: other\nspec:\n  clusterIP: 10.96.1.1\n  ports:\n  - port: 80\n---\n"
        + &route(
            "x",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs:\n    - {name: far, namespace: other, port: 80, weight: 1}\n    - {name: echo-v1, port: 80, weight: 1}\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        parent_conditions(&c, "x"),
        vec![
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    let got: Vec<(String, String)> = routes(&c, "echo", 80)[0]
        .backends
        .iter()
        .map(|b| (b.service.clone(), b.endpoint_set.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("other/far".into(), "endpoints:far.other:80".into()),
            ("echo-v1".into(), "endpoints:echo-v1.demo:80".into()),
        ]
    );
}

#[test]
fn section_name_selects_the_service_port_of_that_name() {
    let two_ports = svc("echo", "10.96.0.10", &[80, 81]);
    let with_section = |section: &str| {
        route(
            "s",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v1, port: 80}]\n",
        )
        .replace(
            "    port: 80\n  rules:",
            &format!("    sectionName: {section}\n  rules:"),
        )
    };
    let yaml =
        two_ports.clone() + &svc("echo-v1", "10.96.0.11", &[80, 81]) + &with_section("http-81");
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(routes(&c, "echo", 81)[0].name, "httproute:demo/s/rule-0");
    assert_eq!(routes(&c, "echo", 80)[0].name, "default");
    let yaml = two_ports + &with_section("nope");
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        parent_conditions(&c, "s")[0],
        cond("Accepted", "False", "NoMatchingParent")
    );
}

/// The outbound resource for Service `demo/echo` in one proxy's config.
fn echo_in_proxy(c: &Compiled, ns: &str, pod: &str) -> (String, OutboundService) {
    let cfg = c
        .proxies()
        .get(&weft_core::model::ObjectRef::new(ns, pod))
        .expect("proxy");
    let mut found: Vec<(String, OutboundService)> = cfg
        .resources()
        .filter_map(|r| match &r.resource {
            ResourceKind::Outbound(o) if o.namespace == "demo" && o.name == "echo" => {
                Some((r.name.clone(), o.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one resource for demo/echo: {found:?}"
    );
    found.remove(0)
}

fn first_route_names(o: &OutboundService) -> Vec<String> {
    o.ports[0].routes.iter().map(|r| r.name.clone()).collect()
}

#[test]
fn a_consumer_route_applies_to_its_namespace_only_and_wins_there() {
    let yaml = base()
        + &pod("demo", "server", "10.0.0.1")
        + &pod("client", "caller", "10.0.0.2")
        + &pod("third", "bystander", "10.0.0.3")
        + &svc("echo-v2", "10.96.0.12", &[80]).replace("namespace: demo", "namespace: client")
        + &route(
            "producer",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - backendRefs: [{name: echo-v1, port: 80}]\n",
        )
        + &consumer_route(
            "client",
            "mine",
            "  - matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    assert_eq!(
        parent_conditions(&c, "producer"),
        vec![
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    let consumer = &c.route_parents()[&ObjectKey::new(Kind::HTTPRoute, "client", "mine")];
    assert_eq!(consumer.len(), 1);
    assert_eq!(consumer[0].conditions[0].status, "True");
    assert!(
        consumer[0].conditions[0]
            .message
            .contains("namespace client only"),
        "{:?}",
        consumer[0].conditions[0]
    );
    assert_eq!(consumer[0].conditions[1].reason, "ResolvedRefs");

    // The caller in `client` gets the consumer variant instead of the shared resource.
    let (name, o) = echo_in_proxy(&c, "client", "caller");
    assert_eq!(name, "outbound:echo.demo@client");
    assert_eq!(
        first_route_names(&o),
        vec!["httproute:client/mine/rule-0", "gateway:no-match"]
    );
    // A backendRef of a consumer route resolves in the route's namespace.
    assert_eq!(o.ports[0].routes[0].backends[0].service, "client/echo-v2");
    assert_eq!(
        o.ports[0].routes[0].backends[0].endpoint_set,
        "endpoints:echo-v2.client:80"
    );
    // Everyone else gets the producer's routes.
    for (ns, p) in [("demo", "server"), ("third", "bystander")] {
        let (name, o) = echo_in_proxy(&c, ns, p);
        assert_eq!(name, "outbound:echo.demo", "{ns}");
        assert_eq!(
            first_route_names(&o),
            vec!["httproute:demo/producer/rule-0"]
        );
    }
    assert!(c.shared().get("outbound:echo.demo@client").is_none());

    // A consumer route that is not accepted changes nothing for its namespace.
    let yaml = yaml.replace(
        "path: {type: PathPrefix, value: /api}",
        "path: {type: RegularExpression, value: \"(\"}",
    );
    let c = compile(&model(&yaml), &CompileOptions::default());
    let (name, o) = echo_in_proxy(&c, "client", "caller");
    assert_eq!(name, "outbound:echo.demo");
    assert_eq!(
        first_route_names(&o),
        vec!["httproute:demo/producer/rule-0"]
    );
    assert!(c.consumer_shared("client").is_none());
}

#[test]
fn a_consumer_route_leaves_the_split_in_force_for_everyone_else() {
    let yaml = base()
        + &pod("demo", "server", "10.0.0.1")
        + &pod("client", "caller", "10.0.0.2")
        + &split("smi", "echo", &[("echo-v1", 50), ("echo-v2", 50)])
        + &consumer_route(
            "client",
            "mine",
            "  - backendRefs: [{name: echo-v2, namespace: demo, port: 80}]\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    let split_accepted = c.statuses()[&ObjectKey::new(Kind::TrafficSplit, "demo", "smi")]
        .iter()
        .find(|c| c.type_ == "Accepted")
        .cloned()
        .expect("Accepted");
    assert_eq!(split_accepted.status, "True", "{split_accepted:?}");
    let (name, o) = echo_in_proxy(&c, "demo", "server");
    assert_eq!(name, "outbound:echo.demo");
    assert!(first_route_names(&o)[0].starts_with("split:"));
    let (name, o) = echo_in_proxy(&c, "client", "caller");
    assert_eq!(name, "outbound:echo.demo@client");
    assert_eq!(
        first_route_names(&o),
        vec!["httproute:client/mine/rule-0"],
        "the consumer route (a catch-all) replaces the split for its namespace"
    );
    assert_eq!(o.ports[0].routes[0].backends[0].service, "echo-v2");
}
