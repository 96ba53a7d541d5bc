//! Gateway API (GAMMA) HTTPRoutes through the compiler: from manifests to the routes every proxy
//! gets for a Service, and to `status.parents[]` (docs/gateway-api.md).

use std::collections::BTreeMap;
use weft_core::compile::gateway::CONTROLLER_NAME;
use weft_core::compile::{
    compile, ChangedKeys, CompileOptions, Compiled, Compiler, OutboundService, ResourceKind, Route,
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
            "httproute:demo/newer/rule-0".to_string()
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
    for x in &b[1..] {
        assert!(x.endpoint_set.is_empty(), "{x:?}");
        assert!(!x.unavailable_reason.is_empty(), "{x:?}");
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
    assert_eq!(
        r.len(),
        1,
        "no catch-all: a request matching no rule is refused"
    );
    assert_eq!(r[0].backends.len(), 1);
    assert_eq!(r[0].backends[0].service, "echo");
    assert_eq!(r[0].backends[0].endpoint_set, "endpoints:echo.demo:80");
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
            "  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: x, value: y}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
        )
        + &route(
            "query",
            "echo",
            "2024-01-01T00:00:00Z",
            "  - matches:\n    - queryParams: [{name: a, value: b}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
        );
    let c = compile(&model(&yaml), &CompileOptions::default());
    for name in ["filtered", "query"] {
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
fn gateway_parents_and_consumer_routes() {
    let yaml = base()
        + r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mixed
  namespace: other
spec:
  parentRefs:
  - name: some-gateway
  - group: ""
    kind: Service
    name: echo
    namespace: demo
  rules:
  - backendRefs: [{name: echo-v1, port: 80}]
---
"#;
    let c = compile(&model(&yaml), &CompileOptions::default());
    let parents = &c.route_parents()[&ObjectKey::new(Kind::HTTPRoute, "other", "mixed")];
    assert_eq!(parents.len(), 1, "the Gateway parent is not weft's");
    assert_eq!(parents[0].conditions[0].reason, "UnsupportedValue");
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
    }
    // The last step's split is in force again.
    let c = compiler.current();
    assert!(routes(&c, "echo", 80)[0].name.starts_with("split:"));
}
