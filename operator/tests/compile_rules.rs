//! Table-driven tests of the compiler's rules (docs/compile.md), from manifests to per-proxy
//! results and status conditions.

use std::sync::Arc;

use weft_operator::compile::{
    compile, ChangedKeys, CompileOptions, Compiled, Compiler, DefaultPolicy, EndpointSet,
    InboundPolicy, OutboundService, ProxyConfig, ResourceKind, Route, ToProto,
};
use weft_operator::model::manifests::parse_manifests;
use weft_operator::model::{Kind, Model, ObjectKey, ObjectRef};

// ---------------------------------------------------------------------------------------------
// Manifest builders.

fn ns(name: &str, policy: Option<&str>) -> String {
    let ann = policy
        .map(|p| format!("\n  annotations:\n    weft.io/default-inbound-policy: {p}"))
        .unwrap_or_default();
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{ann}\n---\n")
}

/// A ready pod with IP, labels `app: <app>` (+ version), service account, container port
/// `http` 8080 (+ extra ports).
fn pod(name: &str, app: &str, ip: &str, sa: &str, meshed: bool, extra: &str) -> String {
    let mesh = if meshed {
        "\n    weft.io/proxy-version: \"0.1.0\""
    } else {
        ""
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels:
    app: {app}{mesh}
{extra}spec:
  serviceAccountName: {sa}
  containers:
  - name: app
    image: app
    ports:
    - name: http
      containerPort: 8080
    - name: admin
      containerPort: 9090
status:
  podIP: {ip}
  conditions:
  - type: Ready
    status: "True"
---
"#
    )
}

fn svc(name: &str, app: &str, ip: &str, ports: &[(u16, &str)], annotations: &str) -> String {
    let ports: String = ports
        .iter()
        .map(|(p, t)| format!("  - name: p{p}\n    port: {p}\n    targetPort: {t}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\n{annotations}spec:\n  clusterIP: {ip}\n  selector:\n    app: {app}\n  ports:\n{ports}---\n"
    )
}

fn split(name: &str, root: &str, backends: &[(&str, u64)], matches: &[&str], ts: &str) -> String {
    let b: String = backends
        .iter()
        .map(|(s, w)| format!("  - service: {s}\n    weight: {w}\n"))
        .collect();
    let m = if matches.is_empty() {
        String::new()
    } else {
        let items: String = matches
            .iter()
            .map(|n| format!("  - kind: HTTPRouteGroup\n    name: {n}\n"))
            .collect();
        format!("  matches:\n{items}")
    };
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: {name}\n  namespace: demo\n  generation: 3\n  creationTimestamp: \"{ts}\"\nspec:\n  service: {root}\n  backends:\n{b}{m}---\n"
    )
}

fn http_group(name: &str, matches_yaml: &str) -> String {
    format!(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  matches:\n{matches_yaml}---\n"
    )
}

fn tcp_route(name: &str, ports: &[u16]) -> String {
    let p = ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  matches:\n    ports: [{p}]\n---\n"
    )
}

/// `rules`: (kind, name, matches).
fn target(
    name: &str,
    dest: &str,
    port: Option<u16>,
    sources: &[&str],
    rules: &[(&str, &str, &[&str])],
) -> String {
    let port = port.map(|p| format!("\n    port: {p}")).unwrap_or_default();
    let s: String = sources
        .iter()
        .map(|s| format!("  - kind: ServiceAccount\n    name: {s}\n    namespace: demo\n"))
        .collect();
    let r: String = rules
        .iter()
        .map(|(k, n, m)| {
            let m = if m.is_empty() {
                String::new()
            } else {
                format!("\n    matches: [{}]", m.join(", "))
            };
            format!("  - kind: {k}\n    name: {n}{m}\n")
        })
        .collect();
    let sources = if sources.is_empty() {
        "  sources: []\n".to_string()
    } else {
        format!("  sources:\n{s}")
    };
    let rules = if rules.is_empty() {
        "  rules: []\n".to_string()
    } else {
        format!("  rules:\n{r}")
    };
    format!(
        "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  destination:\n    kind: ServiceAccount\n    name: {dest}\n    namespace: demo{port}\n{sources}{rules}---\n"
    )
}

fn model(yaml: &str) -> Model {
    let (objects, ignored) = parse_manifests(yaml, false).expect("test manifests parse");
    assert!(ignored.is_empty(), "ignored: {ignored:?}");
    let mut m = Model::from_objects(objects);
    m.derive_endpoints_from_pods = true;
    m
}

fn build(yaml: &str) -> Compiled {
    compile(&model(yaml), &CompileOptions::default())
}

fn base() -> String {
    let mut y = ns("demo", None);
    y += &pod("client-0", "client", "10.0.0.1", "client", true, "");
    y += &pod("web-v1-0", "web-v1", "10.0.1.1", "web", true, "");
    y += &pod("web-v2-0", "web-v2", "10.0.2.1", "web", true, "");
    y += &pod("legacy-0", "legacy", "10.0.3.1", "legacy", false, "");
    y += &svc("web", "web-v1", "10.96.0.1", &[(80, "http")], "");
    y += &svc("web-v1", "web-v1", "10.96.0.2", &[(80, "http")], "");
    y += &svc("web-v2", "web-v2", "10.96.0.3", &[(80, "http")], "");
    y += &svc("legacy", "legacy", "10.96.0.4", &[(80, "8080")], "");
    y
}

fn proxy(c: &Compiled, pod: &str) -> Arc<ProxyConfig> {
    c.proxy(&ObjectRef::new("demo", pod))
        .unwrap_or_else(|| panic!("no proxy for {pod}"))
}

fn outbound(c: &Compiled, svc: &str) -> OutboundService {
    let cfg = proxy(c, "client-0");
    match &cfg
        .get(&format!("outbound:{svc}.demo"))
        .expect("outbound")
        .resource
    {
        ResourceKind::Outbound(o) => o.clone(),
        _ => unreachable!(),
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

/// (backend, weight, endpoint_set) of a route.
fn backends(r: &Route) -> Vec<(String, u64, String)> {
    r.backends
        .iter()
        .map(|b| (b.service.clone(), b.weight, b.endpoint_set.clone()))
        .collect()
}

fn endpoints(c: &Compiled, name: &str) -> EndpointSet {
    match &c.shared().get(name).expect("endpoint set").resource {
        ResourceKind::Endpoints(e) => e.clone(),
        _ => unreachable!(),
    }
}

fn inbound(c: &Compiled, pod: &str) -> InboundPolicy {
    match &proxy(c, pod).inbound.resource {
        ResourceKind::Inbound(i) => i.clone(),
        _ => unreachable!(),
    }
}

/// (type, status, reason) of an object's conditions.
fn conditions(c: &Compiled, kind: Kind, name: &str) -> Vec<(String, String, String)> {
    c.statuses()
        .get(&ObjectKey::new(kind, "demo", name))
        .unwrap_or_else(|| panic!("no status for {kind} {name}"))
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

const T0: &str = "2024-01-01T00:00:00Z";
const T1: &str = "2024-02-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// TrafficSplit.

#[test]
fn split_routes_first_then_default() {
    let c = build(
        &(base()
            + &split(
                "canary",
                "web",
                &[("web-v1", 900), ("web-v2", 100)],
                &[],
                T0,
            )),
    );
    let r = routes(&c, "web", 80);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].name, "split:demo/canary");
    assert!(r[0].matches.is_empty());
    assert_eq!(
        backends(&r[0]),
        vec![
            ("web-v1".into(), 900, "endpoints:web-v1.demo:80".into()),
            ("web-v2".into(), 100, "endpoints:web-v2.demo:80".into())
        ]
    );
    assert_eq!(r[1].name, "default");
    assert_eq!(
        backends(&r[1]),
        vec![("web".into(), 1, "endpoints:web.demo:80".into())]
    );
    assert_eq!(
        conditions(&c, Kind::TrafficSplit, "canary"),
        vec![
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs"),
            cond("Conflicted", "False", "NoConflict"),
        ]
    );
    let st = &c.statuses()[&ObjectKey::new(Kind::TrafficSplit, "demo", "canary")];
    assert!(st.iter().all(|c| c.observed_generation == Some(3)));
}

#[test]
fn weights_are_relative_and_zero_is_kept() {
    type Case<'a> = (&'a [(&'a str, u64)], Vec<u64>);
    let cases: &[Case] = &[
        (&[("web-v1", 1000), ("web-v2", 500)], vec![1000, 500]),
        (&[("web-v1", 1), ("web-v2", 0)], vec![1, 0]),
        (&[("web-v1", 0), ("web-v2", 3)], vec![0, 3]),
    ];
    for (bs, want) in cases {
        let c = build(&(base() + &split("s", "web", bs, &[], T0)));
        let got: Vec<u64> = routes(&c, "web", 80)[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect();
        assert_eq!(&got, want, "{bs:?}");
    }
}

/// Fail closed (issue #13): every backend at weight 0 does not send the split's requests to
/// the root service (whose pods may include the very backends set to 0); the split route is
/// kept with its zero weights, so proxies answer 503, and the split is not Accepted.
/// (Before: the split route was left out and requests went to the root, with an event only.)
#[test]
fn all_zero_weights_fail_closed_and_are_not_accepted() {
    let c = build(&(base() + &split("s", "web", &[("web-v1", 0), ("web-v2", 0)], &[], T0)));
    let r = routes(&c, "web", 80);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].name, "split:demo/s");
    assert!(r[0].matches.is_empty());
    assert!(r[0].backends.iter().all(|b| b.weight == 0));
    assert!(c.events().iter().any(|e| e.reason == "NoWeight"));
    assert!(
        conditions(&c, Kind::TrafficSplit, "s").contains(&cond("Accepted", "False", "NoWeight"))
    );
}

/// A backend without the root's port keeps its weight on that port and fails there (503 with
/// a reason); its share is not given to the other backends. (Before: it was left out, so
/// web-v1 got 100 %.)
#[test]
fn backend_without_root_port_keeps_its_weight_and_fails() {
    let y = base()
        + &svc("web-v3", "web-v2", "10.96.0.9", &[(81, "http")], "")
        + &split("s", "web", &[("web-v1", 50), ("web-v3", 50)], &[], T0);
    let c = build(&y);
    let r = routes(&c, "web", 80);
    assert_eq!(
        backends(&r[0]),
        vec![
            ("web-v1".into(), 50, "endpoints:web-v1.demo:80".into()),
            ("web-v3".into(), 50, String::new()),
        ]
    );
    assert_eq!(r[0].backends[0].unavailable_reason, "");
    assert_eq!(
        r[0].backends[1].unavailable_reason,
        "backend web-v3 of split demo/s has no port 80"
    );
    assert!(conditions(&c, Kind::TrafficSplit, "s").contains(&cond(
        "ResolvedRefs",
        "False",
        "BackendPortMismatch"
    )));
    assert!(c.events().iter().any(|e| e.reason == "BackendPortMismatch"));
}

/// A missing backend keeps its weight: its share fails instead of moving to the others.
/// (Before: it was skipped, so a typo in the stable backend sent 100 % to the canary.)
#[test]
fn missing_backend_keeps_its_weight_and_fails() {
    let c = build(&(base() + &split("s", "web", &[("web-v1typo", 90), ("web-v2", 10)], &[], T0)));
    let r = routes(&c, "web", 80);
    assert_eq!(
        backends(&r[0]),
        vec![
            ("web-v1typo".into(), 90, String::new()),
            ("web-v2".into(), 10, "endpoints:web-v2.demo:80".into()),
        ]
    );
    assert_eq!(
        r[0].backends[0].unavailable_reason,
        "backend web-v1typo of split demo/s does not exist"
    );
    let conds = conditions(&c, Kind::TrafficSplit, "s");
    assert!(conds.contains(&cond("ResolvedRefs", "False", "BackendNotFound")));
    // In force (the other 10 % flow), and the Accepted message says the rest fails.
    assert!(conds.contains(&cond("Accepted", "True", "Accepted")));
    let st = &c.statuses()[&ObjectKey::new(Kind::TrafficSplit, "demo", "s")];
    let accepted = st.iter().find(|c| c.type_ == "Accepted").expect("Accepted");
    assert!(
        accepted.message.contains("web-v1typo"),
        "{}",
        accepted.message
    );
    assert!(c
        .events()
        .iter()
        .any(|e| e.reason == "BackendNotFound" && e.message.contains("web-v1typo")));
}

#[test]
fn backend_target_port_is_its_own() {
    // web-v2 maps port 80 to the container port named `admin` (9090).
    let y = ns("demo", None)
        + &pod("client-0", "client", "10.0.0.1", "client", true, "")
        + &pod("web-v1-0", "web-v1", "10.0.1.1", "web", true, "")
        + &pod("web-v2-0", "web-v2", "10.0.2.1", "web", false, "")
        + &svc("web", "web-v1", "10.96.0.1", &[(80, "http")], "")
        + &svc("web-v1", "web-v1", "10.96.0.2", &[(80, "http")], "")
        + &svc("web-v2", "web-v2", "10.96.0.3", &[(80, "admin")], "")
        + &split("s", "web", &[("web-v1", 1), ("web-v2", 1)], &[], T0);
    let c = build(&y);
    let v1 = endpoints(&c, "endpoints:web-v1.demo:80");
    assert_eq!(v1.endpoints.len(), 1);
    assert_eq!(v1.endpoints[0].port, 8080);
    assert_eq!(
        v1.endpoints[0].identity,
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    assert_eq!(v1.endpoints[0].inbound_port, 4143);
    let v2 = endpoints(&c, "endpoints:web-v2.demo:80");
    assert_eq!(v2.endpoints[0].port, 9090);
    assert_eq!(v2.endpoints[0].identity, "", "unmeshed pod has no identity");
    assert_eq!(v2.endpoints[0].inbound_port, 0);
    assert_eq!(v2.endpoints[0].pod, "demo/web-v2-0");
}

#[test]
fn root_as_its_own_backend_uses_root_endpoints() {
    let c = build(&(base() + &split("s", "web", &[("web", 90), ("web-v2", 10)], &[], T0)));
    let r = routes(&c, "web", 80);
    assert_eq!(
        backends(&r[0]),
        vec![
            ("web".into(), 90, "endpoints:web.demo:80".into()),
            ("web-v2".into(), 10, "endpoints:web-v2.demo:80".into())
        ]
    );
    let root = endpoints(&c, "endpoints:web.demo:80");
    assert_eq!(root.endpoints[0].ip.to_string(), "10.0.1.1");
}

#[test]
fn splits_are_not_followed_recursively() {
    let y = base()
        + &split("outer", "web", &[("web-v1", 1)], &[], T0)
        + &split("inner", "web-v1", &[("web-v2", 1)], &[], T0);
    let c = build(&y);
    let r = routes(&c, "web", 80);
    assert_eq!(
        backends(&r[0]),
        vec![("web-v1".into(), 1, "endpoints:web-v1.demo:80".into())]
    );
    // web-v1's own EndpointSet holds web-v1's pods, not web-v2's.
    let e = endpoints(&c, "endpoints:web-v1.demo:80");
    assert_eq!(e.endpoints[0].ip.to_string(), "10.0.1.1");
}

#[test]
fn conflicting_splits_oldest_wins_then_name() {
    for (a_ts, b_ts, winner, loser) in [(T0, T1, "a", "b"), (T1, T0, "b", "a"), (T0, T0, "a", "b")]
    {
        let y = base()
            + &split("a", "web", &[("web-v1", 1)], &[], a_ts)
            + &split("b", "web", &[("web-v2", 1)], &[], b_ts);
        let c = build(&y);
        let r = routes(&c, "web", 80);
        assert_eq!(r[0].name, format!("split:demo/{winner}"));
        assert_eq!(r.len(), 2);
        assert!(conditions(&c, Kind::TrafficSplit, loser).contains(&cond(
            "Conflicted",
            "True",
            "ApexConflict"
        )));
        assert!(conditions(&c, Kind::TrafficSplit, loser).contains(&cond(
            "Accepted",
            "False",
            "Conflicted"
        )));
        assert!(conditions(&c, Kind::TrafficSplit, winner).contains(&cond(
            "Conflicted",
            "False",
            "NoConflict"
        )));
    }
}

const HEADER_GROUP: &str = "  - name: firefox\n    headers:\n      user-agent: \".*Firefox.*\"\n";

#[test]
fn split_with_matches_only_applies_to_matching_requests() {
    let y = base()
        + &http_group("ff", HEADER_GROUP)
        + &split("ab", "web", &[("web-v2", 1)], &["ff"], T0);
    let c = build(&y);
    let r = routes(&c, "web", 80);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].matches.len(), 1);
    assert_eq!(r[0].matches[0].headers[0].name, "user-agent");
    assert_eq!(r[0].matches[0].headers[0].value_regex, ".*Firefox.*");
    assert!(r[1].matches.is_empty());
}

#[test]
fn split_with_missing_match_group_is_not_applied() {
    let c = build(&(base() + &split("ab", "web", &[("web-v2", 1)], &["nope"], T0)));
    let r = routes(&c, "web", 80);
    assert_eq!(r.len(), 1, "no split route: it would match every request");
    assert!(conditions(&c, Kind::TrafficSplit, "ab").contains(&cond(
        "ResolvedRefs",
        "False",
        "RouteNotFound"
    )));
}

#[test]
fn split_on_missing_root_is_reported() {
    let c = build(&(base() + &split("s", "ghost", &[("web-v2", 1)], &[], T0)));
    assert!(conditions(&c, Kind::TrafficSplit, "s").contains(&cond(
        "ResolvedRefs",
        "False",
        "ServiceNotFound"
    )));
    assert!(proxy(&c, "client-0").get("outbound:ghost.demo").is_none());
}

/// Issue #13: a split on a missing root is not Accepted (it was `Accepted=True`), with the
/// reason and an event.
#[test]
fn split_on_missing_root_is_not_accepted() {
    let c = build(&(base() + &split("s", "ghost", &[("web-v2", 1)], &[], T0)));
    assert!(conditions(&c, Kind::TrafficSplit, "s").contains(&cond(
        "Accepted",
        "False",
        "ServiceNotFound"
    )));
    assert!(c.events().iter().any(|e| e.reason == "ServiceNotFound"));
}

/// Issue #13: an A/B split whose only match cannot be compiled (invalid regex, or over the
/// regex size limit, or one that would close the proxy's anchoring group) applies to NO
/// request: no split route at all, never a route with an empty match list (= every request).
#[test]
fn ab_split_with_uncompilable_match_routes_nothing() {
    for value in ["(on", "a{1000}{1000}", "x)|(.*"] {
        let g = format!("  - name: beta\n    headers:\n      x-beta: \"{value}\"\n");
        let y =
            base() + &http_group("beta", &g) + &split("ab", "web", &[("web-v2", 1)], &["beta"], T0);
        let c = build(&y);
        let r = routes(&c, "web", 80);
        assert_eq!(r.len(), 1, "{value}: only the default route: {r:?}");
        assert_eq!(r[0].name, "default");
        assert!(
            conditions(&c, Kind::TrafficSplit, "ab").contains(&cond(
                "Accepted",
                "False",
                "InvalidMatch"
            )),
            "{value}"
        );
        assert!(
            conditions(&c, Kind::HTTPRouteGroup, "beta").contains(&cond(
                "Accepted",
                "False",
                "InvalidMatch"
            )),
            "{value}"
        );
        assert!(c
            .events()
            .iter()
            .any(|e| e.reason == "InvalidMatch" && e.object.name == "ab"));
    }
}

/// Only the uncompilable match routes nothing; the valid ones stay in force.
#[test]
fn ab_split_keeps_its_valid_matches() {
    let g = "  - name: bad\n    pathRegex: \"/(\"\n  - name: good\n    pathRegex: /beta\n";
    let y = base() + &http_group("g", g) + &split("ab", "web", &[("web-v2", 1)], &["g"], T0);
    let c = build(&y);
    let r = routes(&c, "web", 80);
    assert_eq!(r.len(), 2);
    let names: Vec<&str> = r[0].matches.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["good"]);
    assert!(conditions(&c, Kind::TrafficSplit, "ab").contains(&cond(
        "Accepted",
        "False",
        "InvalidMatch"
    )));
}

/// A referenced HTTPRouteGroup without matches matches nothing (it used to mean every request).
#[test]
fn ab_split_on_empty_group_routes_nothing() {
    let y = base()
        + "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n  name: g\n  namespace: demo\nspec:\n  matches: []\n---\n"
        + &split("ab", "web", &[("web-v2", 1)], &["g"], T0);
    let c = build(&y);
    assert_eq!(routes(&c, "web", 80).len(), 1);
    assert!(conditions(&c, Kind::TrafficSplit, "ab").contains(&cond(
        "Accepted",
        "False",
        "NoMatches"
    )));
}

/// A split without a creationTimestamp (manifests usually have none).
fn split_no_ts(name: &str, root: &str, backend: &str) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  service: {root}\n  backends:\n  - service: {backend}\n    weight: 1\n---\n"
    )
}

fn message(c: &Compiled, name: &str, type_: &str) -> String {
    c.statuses()[&ObjectKey::new(Kind::TrafficSplit, "demo", name)]
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Issue #13: conflict messages name the actual precedence reason. "older" only when the
/// winner's creationTimestamp is earlier; otherwise the name order (and why).
#[test]
fn conflict_messages_name_the_actual_precedence_reason() {
    // Both without timestamps: the name decides, and the message says so (it used to call the
    // winner "older").
    let y = base() + &split_no_ts("b", "web", "web-v2") + &split_no_ts("a", "web", "web-v1");
    let c = build(&y);
    assert_eq!(routes(&c, "web", 80)[0].name, "split:demo/a");
    let m = message(&c, "b", "Conflicted");
    assert!(
        m.contains("demo/a") && m.contains("neither has a creationTimestamp"),
        "{m}"
    );
    assert!(!m.contains("older"), "{m}");

    // Only one has a timestamp: it wins, even with the later name.
    let y =
        base() + &split("z", "web", &[("web-v2", 1)], &[], T0) + &split_no_ts("a", "web", "web-v1");
    let c = build(&y);
    assert_eq!(routes(&c, "web", 80)[0].name, "split:demo/z");
    let m = message(&c, "a", "Conflicted");
    assert!(
        m.contains("demo/z") && m.contains("this split has none"),
        "{m}"
    );

    // Same timestamp: name order, said as such.
    let y = base()
        + &split("b", "web", &[("web-v2", 1)], &[], T0)
        + &split("a", "web", &[("web-v1", 1)], &[], T0);
    let m = message(&build(&y), "b", "Conflicted");
    assert!(
        m.contains("demo/a") && m.contains("both were created at"),
        "{m}"
    );

    // Really older.
    let y = base()
        + &split("a", "web", &[("web-v2", 1)], &[], T1)
        + &split("b", "web", &[("web-v1", 1)], &[], T0);
    let m = message(&build(&y), "a", "Conflicted");
    assert!(m.contains("demo/b") && m.contains("it is older"), "{m}");
    assert!(m.contains(T0) && m.contains(T1), "{m}");
}

// ---------------------------------------------------------------------------------------------
// Outbound basics.

#[test]
fn every_service_is_an_outbound_service_with_traffic_policy() {
    let ann = "  annotations:\n    weft.io/timeout: 2s\n    weft.io/retries: \"3\"\n    weft.io/retry-non-idempotent: \"true\"\n";
    let y = base() + &svc("api", "api", "10.96.0.10", &[(8080, "8080")], ann);
    let c = build(&y);
    let cfg = proxy(&c, "client-0");
    for s in ["web", "web-v1", "web-v2", "legacy", "api"] {
        assert!(cfg.get(&format!("outbound:{s}.demo")).is_some(), "{s}");
    }
    let o = outbound(&c, "api");
    assert_eq!(o.policy.request_timeout_ms, 2000);
    assert_eq!(o.policy.max_retries, 3);
    assert_eq!(o.policy.retry_budget_ratio, 0.2);
    assert!(o.policy.retry_non_idempotent);
    assert_eq!(o.cluster_ips[0].to_string(), "10.96.0.10");
    let bad = base()
        + &svc(
            "api",
            "api",
            "10.96.0.10",
            &[(8080, "8080")],
            "  annotations:\n    weft.io/timeout: soon\n",
        );
    let c = build(&bad);
    assert_eq!(outbound(&c, "api").policy.request_timeout_ms, 0);
    assert!(c.events().iter().any(|e| e.reason == "InvalidAnnotation"));
}

#[test]
fn endpoint_slices_and_endpoints_take_precedence_over_pods() {
    let slice = r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v1-abc
  namespace: demo
  labels:
    kubernetes.io/service-name: web-v1
addressType: IPv4
ports:
- name: p80
  port: 8080
endpoints:
- addresses: ["10.0.1.1"]
  targetRef: {kind: Pod, name: web-v1-0, namespace: demo}
- addresses: ["10.0.1.2"]
  conditions: {ready: false}
- addresses: ["10.0.1.3"]
---
apiVersion: v1
kind: Endpoints
metadata:
  name: web-v2
  namespace: demo
subsets:
- addresses:
  - ip: 10.0.2.7
  notReadyAddresses:
  - ip: 10.0.2.8
  ports:
  - name: p80
    port: 7000
---
"#;
    let c = build(&(base() + slice));
    let e = endpoints(&c, "endpoints:web-v1.demo:80");
    let got: Vec<(String, u16, String)> = e
        .endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.port, e.identity.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "10.0.1.1".into(),
                8080,
                "spiffe://cluster.local/ns/demo/sa/web".into()
            ),
            ("10.0.1.3".into(), 8080, String::new()),
        ]
    );
    let e = endpoints(&c, "endpoints:web-v2.demo:80");
    assert_eq!(e.endpoints.len(), 1);
    assert_eq!(e.endpoints[0].port, 7000);
    // The pod with that IP is unknown: no identity.
    assert_eq!(e.endpoints[0].identity, "");
}

// ---------------------------------------------------------------------------------------------
// Inbound.

fn port(i: &InboundPolicy, p: u16) -> &weft_operator::compile::InboundPort {
    i.ports.iter().find(|x| x.port == p).expect("port listed")
}

#[test]
fn default_policy_precedence() {
    let annotated = "  annotations:\n    weft.io/default-inbound-policy: mesh\n";
    let cases = [
        (None, "", DefaultPolicy::Allow, DefaultPolicy::Allow),
        (None, "", DefaultPolicy::Deny, DefaultPolicy::Deny),
        (Some("deny"), "", DefaultPolicy::Allow, DefaultPolicy::Deny),
        (
            Some("deny"),
            annotated,
            DefaultPolicy::Allow,
            DefaultPolicy::Mesh,
        ),
        (None, annotated, DefaultPolicy::Deny, DefaultPolicy::Mesh),
    ];
    for (ns_policy, pod_ann, mesh, want) in cases {
        let y = ns("demo", ns_policy) + &pod("p-0", "p", "10.0.0.1", "p", true, pod_ann);
        let opts = CompileOptions {
            default_inbound_policy: mesh,
            ..CompileOptions::default()
        };
        let c = compile(&model(&y), &opts);
        let i = inbound(&c, "p-0");
        assert_eq!(i.default_policy, want, "{ns_policy:?} {pod_ann:?} {mesh:?}");
        assert_eq!(i.identity, "spiffe://cluster.local/ns/demo/sa/p");
        assert!(i.ports.iter().all(|p| !p.restricted));
    }
}

const GROUP: &str = "  - name: read\n    pathRegex: /api\n    methods: [GET]\n  - name: write\n    pathRegex: /api\n    methods: [POST]\n";

#[test]
fn traffic_targets_union() {
    let y = base()
        + &http_group("api", GROUP)
        + &target(
            "t1",
            "web",
            None,
            &["client"],
            &[("HTTPRouteGroup", "api", &["read"])],
        )
        + &target(
            "t2",
            "web",
            None,
            &["legacy"],
            &[("HTTPRouteGroup", "api", &["write"])],
        );
    let c = build(&y);
    let i = inbound(&c, "web-v1-0");
    assert_eq!(i.default_policy, DefaultPolicy::Deny);
    let p = port(&i, 8080);
    assert!(p.restricted);
    let auths: Vec<(String, Vec<String>, Vec<String>)> = p
        .authorizations
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.clients.legacy_sources(),
                a.http_routes.iter().map(|m| m.name.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        auths,
        vec![
            (
                "demo/t1".into(),
                vec!["spiffe://cluster.local/ns/demo/sa/client".into()],
                vec!["read".into()]
            ),
            (
                "demo/t2".into(),
                vec!["spiffe://cluster.local/ns/demo/sa/legacy".into()],
                vec!["write".into()]
            ),
        ]
    );
    // Pods of other service accounts are untouched.
    assert_eq!(inbound(&c, "client-0").default_policy, DefaultPolicy::Allow);
    assert!(
        conditions(&c, Kind::TrafficTarget, "t1").contains(&cond("Accepted", "True", "Accepted"))
    );
}

#[test]
fn rule_without_matches_covers_every_match() {
    let y = base()
        + &http_group("api", GROUP)
        + &target(
            "t",
            "web",
            None,
            &["client"],
            &[("HTTPRouteGroup", "api", &[])],
        );
    let c = build(&y);
    let names: Vec<String> = port(&inbound(&c, "web-v1-0"), 8080).authorizations[0]
        .http_routes
        .iter()
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(names, vec!["read".to_string(), "write".to_string()]);
}

#[test]
fn no_rules_or_no_sources_allow_nothing_but_restrict() {
    let cases = [
        target("t", "web", None, &["client"], &[]),
        target("t", "web", None, &[], &[("HTTPRouteGroup", "api", &[])]),
    ];
    for t in cases {
        let c = build(&(base() + &http_group("api", GROUP) + &t));
        let i = inbound(&c, "web-v1-0");
        assert_eq!(i.default_policy, DefaultPolicy::Deny);
        for p in &i.ports {
            assert!(p.restricted);
            assert!(p.authorizations.is_empty(), "{p:?}");
        }
        assert!(c.events().iter().any(|e| e.reason == "AllowsNothing"));
    }
}

#[test]
fn destination_port_restricts_only_that_port() {
    let y = base()
        + &tcp_route("all", &[])
        + &target(
            "t",
            "web",
            Some(9090),
            &["client"],
            &[("TCPRoute", "all", &[])],
        );
    let c = build(&y);
    let i = inbound(&c, "web-v1-0");
    assert_eq!(i.default_policy, DefaultPolicy::Allow);
    assert!(!port(&i, 8080).restricted);
    let admin = port(&i, 9090);
    assert!(admin.restricted);
    assert!(admin.authorizations[0].all_traffic);
}

#[test]
fn tcp_route_ports_limit_all_traffic() {
    let y = base()
        + &tcp_route("db", &[9090, 5432])
        + &target("t", "web", None, &["client"], &[("TCPRoute", "db", &[])]);
    let c = build(&y);
    let i = inbound(&c, "web-v1-0");
    assert!(port(&i, 8080).authorizations.is_empty());
    assert!(port(&i, 9090).authorizations[0].all_traffic);
    // A port only the route names is listed too.
    assert!(port(&i, 5432).authorizations[0].all_traffic);
}

#[test]
fn missing_route_is_unresolved() {
    let y = base()
        + &target(
            "t",
            "web",
            None,
            &["client"],
            &[("HTTPRouteGroup", "nope", &[])],
        );
    let c = build(&y);
    assert!(conditions(&c, Kind::TrafficTarget, "t").contains(&cond(
        "ResolvedRefs",
        "False",
        "RouteNotFound"
    )));
    assert!(port(&inbound(&c, "web-v1-0"), 8080)
        .authorizations
        .is_empty());
}

#[test]
fn invalid_regex_is_reported_and_left_out() {
    let g = "  - name: bad\n    pathRegex: \"/api/(\"\n  - name: good\n    pathRegex: /ok\n";
    let y = base()
        + &http_group("api", g)
        + &target(
            "t",
            "web",
            None,
            &["client"],
            &[("HTTPRouteGroup", "api", &[])],
        );
    let c = build(&y);
    assert!(conditions(&c, Kind::HTTPRouteGroup, "api").contains(&cond(
        "Accepted",
        "False",
        "InvalidMatch"
    )));
    let names: Vec<String> = port(&inbound(&c, "web-v1-0"), 8080).authorizations[0]
        .http_routes
        .iter()
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(names, vec!["good".to_string()]);
}

/// Status says a match with an unknown method is left out; the compiler now leaves it out too
/// (it used to keep it and the proxy accepted it as an extension method). Also for splits.
#[test]
fn match_with_unknown_method_is_left_out_as_status_says() {
    let g = "  - name: odd\n    pathRegex: /api\n    methods: [FETCH]\n  - name: good\n    pathRegex: /ok\n    methods: [get]\n";
    let y = base()
        + &http_group("api", g)
        + &target(
            "t",
            "web",
            None,
            &["client"],
            &[("HTTPRouteGroup", "api", &[])],
        );
    let c = build(&y);
    let st = &c.statuses()[&ObjectKey::new(Kind::HTTPRouteGroup, "demo", "api")];
    let accepted = st.iter().find(|c| c.type_ == "Accepted").expect("Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "InvalidMatch")
    );
    assert!(accepted.message.contains("FETCH"), "{}", accepted.message);
    let policy = inbound(&c, "web-v1-0");
    let routes_in_force = &port(&policy, 8080).authorizations[0].http_routes;
    let names: Vec<&str> = routes_in_force.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["good"]);
    assert_eq!(routes_in_force[0].methods, vec!["GET".to_string()]);

    // As the only match of an A/B split: the split applies to no request.
    let only = "  - name: odd\n    methods: [FETCH]\n";
    let y = base() + &http_group("g", only) + &split("ab", "web", &[("web-v2", 1)], &["g"], T0);
    assert_eq!(routes(&build(&y), "web", 80).len(), 1);
}

/// A regex that would close the proxy's anchoring group (`x)|(.*` → `^(?:x)|(.*)$`, which
/// matches any value) is left out of authorizations too.
#[test]
fn regex_that_escapes_its_anchors_is_left_out() {
    let g = "  - name: admin\n    headers:\n      x-user: \"admin)|(.*\"\n";
    let y = base()
        + &http_group("api", g)
        + &target(
            "t",
            "web",
            None,
            &["client"],
            &[("HTTPRouteGroup", "api", &[])],
        );
    let c = build(&y);
    assert!(conditions(&c, Kind::HTTPRouteGroup, "api").contains(&cond(
        "Accepted",
        "False",
        "InvalidMatch"
    )));
    assert!(port(&inbound(&c, "web-v1-0"), 8080)
        .authorizations
        .is_empty());
}

#[test]
fn udp_routes_say_they_are_not_enforced() {
    let udp = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: UDPRoute\nmetadata:\n  name: dns\n  namespace: demo\nspec:\n  matches:\n    ports: [53]\n---\n";
    let y = base() + udp;
    let c = build(&y);
    let conds = conditions(&c, Kind::UDPRoute, "dns");
    assert!(
        conds.contains(&cond("Accepted", "True", "Accepted")),
        "{conds:?}"
    );
    assert!(
        conds.contains(&cond("Programmed", "False", "UDPNotProxied")),
        "{conds:?}"
    );
    // TCP routes are enforced: no such condition.
    let y = base() + &tcp_route("db", &[5432]);
    let c = build(&y);
    assert!(!conditions(&c, Kind::TCPRoute, "db")
        .iter()
        .any(|(t, _, _)| t == "Programmed"));
}

#[test]
fn unknown_pod_gets_a_valid_default_config() {
    let y = base() + &target("t", "web", None, &["client"], &[]);
    let c = build(&y);
    let cfg = c.proxy_or_default(&ObjectRef::new("demo", "new-0"), "other");
    match &cfg.inbound.resource {
        ResourceKind::Inbound(i) => {
            assert_eq!(i.default_policy, DefaultPolicy::Allow);
            assert_eq!(i.identity, "spiffe://cluster.local/ns/demo/sa/other");
        }
        _ => unreachable!(),
    }
    assert!(cfg.get("outbound:web.demo").is_some());
    let restricted = c.proxy_or_default(&ObjectRef::new("demo", "new-1"), "web");
    match &restricted.inbound.resource {
        ResourceKind::Inbound(i) => assert_eq!(i.default_policy, DefaultPolicy::Deny),
        _ => unreachable!(),
    }
    // Unmeshed pods get no proxy config of their own.
    assert!(c.proxy(&ObjectRef::new("demo", "legacy-0")).is_none());
}

// ---------------------------------------------------------------------------------------------
// Kubelet probes.

/// A meshed pod running as `web` with a readiness probe on `/healthz` port 8080 and a liveness
/// probe on `/live` by port name `http`, plus an HTTPS startup probe on port 9090.
fn probed_pod(name: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels:
    app: web-v1
    weft.io/proxy-version: "0.1.0"
spec:
  serviceAccountName: web
  containers:
  - name: app
    image: app
    ports:
    - name: http
      containerPort: 8080
    - name: admin
      containerPort: 9090
    readinessProbe:
      httpGet:
        path: /healthz
        port: 8080
    livenessProbe:
      httpGet:
        path: /live?verbose=1
        port: http
    startupProbe:
      httpGet:
        path: /started
        port: 9090
        scheme: HTTPS
status:
  podIP: {ip}
  conditions:
  - type: Ready
    status: "True"
---
"#
    )
}

/// The proxy's inbound HTTP check as documented (docs/compile.md, docs/authorization.md): a
/// request is allowed by an authorization whose sources hold the client's identity or `*` and
/// which covers all traffic or has a matching route (path regex anchored as `^(?:re)`).
fn admits(i: &InboundPolicy, port_no: u16, peer: Option<&str>, method: &str, path: &str) -> bool {
    let p = port(i, port_no);
    let by_authz = p.authorizations.iter().any(|a| {
        let source_ok = a
            .clients
            .legacy_sources()
            .iter()
            .any(|s| s == "*" || Some(s.as_str()) == peer);
        source_ok
            && (a.all_traffic
                || a.http_routes.iter().any(|m| {
                    let re = regex::Regex::new(&format!("^(?:{})", m.path_regex))
                        .unwrap_or_else(|e| panic!("{e}"));
                    re.is_match(path)
                        && (m.methods.is_empty()
                            || m.methods.iter().any(|x| x == "*" || x == method))
                }))
    });
    by_authz
        || (!p.restricted
            && match i.default_policy {
                DefaultPolicy::Allow => true,
                DefaultPolicy::Mesh => peer.is_some(),
                DefaultPolicy::Deny => false,
            })
}

#[test]
fn kubelet_probes_are_authorized_on_restricted_pods() {
    const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
    let y = ns("demo", None)
        + &pod("client-0", "client", "10.0.0.1", "client", true, "")
        + &probed_pod("web-v1-0", "10.0.1.1")
        + &http_group("api", GROUP)
        + &target(
            "t",
            "web",
            None,
            &["client"],
            &[("HTTPRouteGroup", "api", &["read"])],
        );
    let c = build(&y);
    let i = inbound(&c, "web-v1-0");
    assert_eq!(i.default_policy, DefaultPolicy::Deny);
    assert!(port(&i, 8080).restricted);
    // The kubelet (no identity) reaches exactly its probe paths with GET/HEAD ...
    assert!(admits(&i, 8080, None, "GET", "/healthz"));
    assert!(admits(&i, 8080, None, "HEAD", "/healthz"));
    assert!(admits(&i, 8080, None, "GET", "/live"));
    // ... and nothing else.
    assert!(!admits(&i, 8080, None, "GET", "/items"));
    assert!(!admits(&i, 8080, None, "GET", "/healthz/x"));
    assert!(!admits(&i, 8080, None, "GET", "/healthzx"));
    assert!(!admits(&i, 8080, None, "POST", "/healthz"));
    assert!(!admits(&i, 8080, None, "GET", "/api"));
    // The TrafficTarget still decides for everything else.
    assert!(admits(&i, 8080, Some(CLIENT), "GET", "/api/items"));
    assert!(!admits(&i, 8080, Some(CLIENT), "POST", "/api/items"));
    // HTTPS probes are not authorized (the proxy cannot see their path): an event says so.
    assert!(port(&i, 9090)
        .authorizations
        .iter()
        .all(|a| a.name != "probe"));
    assert!(c
        .events()
        .iter()
        .any(|e| e.reason == "HttpsProbeNotAuthorized" && e.object.name == "web-v1-0"));
    // The authorization as emitted: source `*`, exact path regexes.
    let probe = port(&i, 8080)
        .authorizations
        .iter()
        .find(|a| a.name == "probe")
        .cloned()
        .expect("probe authorization");
    assert_eq!(probe.clients.legacy_sources(), vec!["*".to_string()]);
    let regexes: Vec<&str> = probe
        .http_routes
        .iter()
        .map(|m| m.path_regex.as_str())
        .collect();
    assert_eq!(regexes, vec!["/healthz$", "/live$"]);
}

#[test]
fn kubelet_probes_are_authorized_whatever_the_default_policy() {
    for policy in ["allow", "mesh", "deny"] {
        let y = ns("demo", Some(policy)) + &probed_pod("web-v1-0", "10.0.1.1");
        let i = inbound(&build(&y), "web-v1-0");
        assert!(admits(&i, 8080, None, "GET", "/healthz"), "{policy}");
        assert_eq!(
            admits(&i, 8080, None, "GET", "/items"),
            policy == "allow",
            "{policy}"
        );
    }
}

#[test]
fn probe_change_is_picked_up_incrementally() {
    let before = ns("demo", None) + &pod("web-v1-0", "web-v1", "10.0.1.1", "web", true, "");
    let mut m = model(&before);
    let mut compiler = Compiler::new(CompileOptions::default());
    compiler.full(&m);
    let (objects, _) =
        parse_manifests(&probed_pod("web-v1-0", "10.0.1.1"), false).expect("manifest parses");
    let mut changed = ChangedKeys::default();
    for o in objects {
        changed.insert(m.upsert(o));
    }
    let c = compiler.update(&m, &changed);
    let i = inbound(&c, "web-v1-0");
    assert!(port(&i, 8080)
        .authorizations
        .iter()
        .any(|a| a.name == "probe"));
    assert_eq!(
        fingerprint(&c),
        fingerprint(&compile(&m, &CompileOptions::default()))
    );
}

// ---------------------------------------------------------------------------------------------
// Determinism, versions, incremental updates.

type Fingerprint = Vec<(String, String, Vec<(String, String)>)>;

fn fingerprint(c: &Compiled) -> Fingerprint {
    c.proxies()
        .iter()
        .map(|(k, p)| {
            (
                k.to_string(),
                p.version.clone(),
                p.versions().into_iter().collect(),
            )
        })
        .collect()
}

fn rich() -> String {
    base()
        + &http_group("ff", HEADER_GROUP)
        + &http_group("api", GROUP)
        + &tcp_route("db", &[9090])
        + &split("ab", "web", &[("web-v1", 1), ("web-v2", 1)], &["ff"], T0)
        + &target(
            "t",
            "web",
            None,
            &["client"],
            &[("HTTPRouteGroup", "api", &["read"])],
        )
        + &target("t2", "web", None, &["legacy"], &[("TCPRoute", "db", &[])])
}

#[test]
fn same_input_same_bytes_in_any_order() {
    let (objs, _) = parse_manifests(&rich(), false).expect("parse");
    let mut ma = Model::from_objects(objs.clone());
    let mut mb = Model::from_objects(objs.into_iter().rev());
    ma.derive_endpoints_from_pods = true;
    mb.derive_endpoints_from_pods = true;
    let a = compile(&ma, &CompileOptions::default());
    let b = compile(&mb, &CompileOptions::default());
    assert_eq!(fingerprint(&a), fingerprint(&b));
    let bytes = |c: &Compiled| -> Vec<Vec<u8>> {
        use prost::Message;
        proxy(c, "client-0")
            .resources()
            .map(|r| r.to_proto().encode_to_vec())
            .collect()
    };
    assert_eq!(bytes(&a), bytes(&b));
    assert_eq!(fingerprint(&a), fingerprint(&build(&rich())));
}

#[test]
fn one_weight_change_touches_one_resource() {
    let mut m = model(&rich());
    let mut compiler = Compiler::new(CompileOptions::default());
    let before = compiler.full(&m);
    let (objs, _) = parse_manifests(
        &split("ab", "web", &[("web-v1", 1), ("web-v2", 3)], &["ff"], T0),
        false,
    )
    .expect("parse");
    let mut changed = ChangedKeys::default();
    for o in objs {
        changed.insert(m.upsert(o));
    }
    let after = compiler.update(&m, &changed);
    let stats = compiler.last_stats().clone();
    assert_eq!(stats.resources_changed, 1, "{stats:?}");
    let diff: Vec<&str> = after
        .shared()
        .iter()
        .filter(|r| before.shared().get(&r.name).map(|o| &o.version) != Some(&r.version))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(diff, vec!["outbound:web.demo"]);
    // Inbound resources are untouched; every proxy sees the new outbound.
    for (k, p) in after.proxies().iter() {
        let old = before.proxy(k).expect("proxy before");
        assert_eq!(p.inbound.version, old.inbound.version);
        assert_ne!(p.version, old.version);
    }
    assert_eq!(
        fingerprint(&after),
        fingerprint(&compile(&m, &CompileOptions::default()))
    );
}

#[test]
fn target_change_touches_only_destination_proxies() {
    let mut m = model(&rich());
    let mut compiler = Compiler::new(CompileOptions::default());
    let before = compiler.full(&m);
    let key = ObjectKey::new(Kind::TrafficTarget, "demo", "t2");
    m.remove(&key);
    let after = compiler.update(&m, &[key].into_iter().collect());
    let changed: Vec<String> = after
        .proxies()
        .iter()
        .filter(|(k, p)| before.proxy(k).map(|o| o.version.clone()) != Some(p.version.clone()))
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(changed, vec!["demo/web-v1-0", "demo/web-v2-0"]);
    assert!(!after
        .statuses()
        .contains_key(&ObjectKey::new(Kind::TrafficTarget, "demo", "t2")));
    assert_eq!(
        fingerprint(&after),
        fingerprint(&compile(&m, &CompileOptions::default()))
    );
}

/// #14 regression: a TCPRoute listing port 0 was rejected by admission but reported
/// `Accepted=True` in status; status now reads the route's analysis (`InvalidPort`), and the
/// valid ports keep working.
#[test]
fn tcp_route_with_port_zero_is_not_accepted_as_admission_says() {
    let y = base()
        + &tcp_route("db", &[0, 5432])
        + &target("t", "web", None, &["client"], &[("TCPRoute", "db", &[])]);
    let c = build(&y);
    let conds = conditions(&c, Kind::TCPRoute, "db");
    assert!(
        conds.contains(&cond("Accepted", "False", "InvalidPort")),
        "{conds:?}"
    );
    assert!(c.events().iter().any(|e| e.reason == "InvalidPort"));
    let ok = base() + &tcp_route("db", &[5432]);
    assert!(conditions(&build(&ok), Kind::TCPRoute, "db")
        .contains(&cond("Accepted", "True", "Accepted")));
}

/// #14: the inbound ports a TCPRoute adds are its analysis's valid ports: port 0 is not listed
/// (as Service ports with target port 0 are not), the valid port is restricted.
#[test]
fn tcp_route_port_zero_is_not_an_inbound_port() {
    let y = base()
        + &tcp_route("db", &[0, 5432])
        + &target("t", "web", None, &["client"], &[("TCPRoute", "db", &[])]);
    let c = build(&y);
    let i = inbound(&c, "web-v1-0");
    assert!(!i.ports.iter().any(|p| p.port == 0), "{:?}", i.ports);
    assert!(i.ports.iter().any(|p| p.port == 5432 && p.restricted));
}

/// #18: every endpoint carries its pod's workload, `<kind>/<name>` by the injector's rule
/// (`weft_core::inject::workload_of`): a Deployment's pod (owned by its ReplicaSet
/// `<deployment>-<pod-template-hash>`) is the Deployment's, a StatefulSet's pod the
/// StatefulSet's, a bare pod none. The proxies label outbound metrics with it (`dst_<kind>`).
#[test]
fn endpoints_carry_the_workload_of_their_pod() {
    let owned = |kind: &str, name: &str, hash: Option<&str>| {
        let label = hash
            .map(|h| format!("    pod-template-hash: {h}\n"))
            .unwrap_or_default();
        format!(
            "{label}  ownerReferences:\n  - apiVersion: apps/v1\n    kind: {kind}\n    name: {name}\n    uid: 00000000-0000-0000-0000-000000000001\n    controller: true\n"
        )
    };
    let mut y = ns("demo", None);
    y += &pod("client-0", "client", "10.0.0.1", "client", true, "");
    y += &pod(
        "web-5d8f7c9b4-x2k9p",
        "web",
        "10.0.1.1",
        "web",
        true,
        &owned("ReplicaSet", "web-5d8f7c9b4", Some("5d8f7c9b4")),
    );
    y += &pod(
        "db-0",
        "db",
        "10.0.2.1",
        "db",
        true,
        &owned("StatefulSet", "db", None),
    );
    y += &pod("bare", "bare", "10.0.3.1", "bare", false, "");
    y += &svc("web", "web", "10.96.0.1", &[(80, "http")], "");
    y += &svc("db", "db", "10.96.0.2", &[(80, "http")], "");
    y += &svc("bare", "bare", "10.96.0.3", &[(80, "http")], "");
    let c = build(&y);
    let one = |name: &str| {
        let set = endpoints(&c, name);
        assert_eq!(set.endpoints.len(), 1, "{name}: {set:?}");
        let ep = set.endpoints[0].clone();
        (ep.pod, ep.workload)
    };
    assert_eq!(
        one("endpoints:web.demo:80"),
        (
            "demo/web-5d8f7c9b4-x2k9p".to_string(),
            "deployment/web".to_string()
        )
    );
    assert_eq!(
        one("endpoints:db.demo:80"),
        ("demo/db-0".to_string(), "statefulset/db".to_string())
    );
    assert_eq!(
        one("endpoints:bare.demo:80"),
        ("demo/bare".to_string(), String::new())
    );
    // On the wire, too.
    let set = endpoints(&c, "endpoints:web.demo:80");
    assert_eq!(set.to_proto().endpoints[0].workload, "deployment/web");
}
