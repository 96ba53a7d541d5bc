//! Conversions: tolerant parsing, lossless round trips through every served version, and the
//! conversion webhook's object rewriting.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;
use weft_smi::hub::*;
use weft_smi::{convert::convert_object, from_value, is_smi, served_versions, to_value, SmiError};

fn meta(api_version: &str) -> Meta {
    Meta {
        namespace: "shop".into(),
        name: "obj".into(),
        generation: Some(3),
        creation_timestamp: Some("2024-05-01T10:00:00Z".into()),
        uid: Some("1234".into()),
        api_version: api_version.into(),
    }
}

fn versions_of(kind: &str) -> Vec<&'static str> {
    served_versions()
        .iter()
        .filter(|(_, k)| *k == kind)
        .map(|(v, _)| *v)
        .collect()
}

fn with_api_version(mut o: SmiObject, v: &str) -> SmiObject {
    match &mut o {
        SmiObject::TrafficSplit(x) => x.meta.api_version = v.into(),
        SmiObject::TrafficTarget(x) => x.meta.api_version = v.into(),
        SmiObject::HTTPRouteGroup(x) => x.meta.api_version = v.into(),
        SmiObject::PortRoute(x) => x.meta.api_version = v.into(),
    }
    o
}

/// hub -> every version -> hub is the identity, and so is hub -> A -> (webhook) B -> hub.
fn assert_lossless(o: &SmiObject) {
    let kind = o.kind();
    for a in versions_of(kind) {
        let va = to_value(o, a).unwrap_or_else(|e| panic!("{kind} to {a}: {e}"));
        let back = from_value(&va).unwrap_or_else(|e| panic!("{kind} from {a}: {e}\n{va:#}"));
        assert_eq!(
            back,
            with_api_version(o.clone(), a),
            "{kind} via {a}:\n{va:#}"
        );
        for b in versions_of(kind) {
            let vb = convert_object(&va, b).unwrap_or_else(|e| panic!("{a} -> {b}: {e}"));
            assert_eq!(vb["apiVersion"], b);
            let back = from_value(&vb).unwrap_or_else(|e| panic!("{kind} {a}->{b}: {e}\n{vb:#}"));
            assert_eq!(
                back,
                with_api_version(o.clone(), b),
                "{kind} {a} -> {b}:\n{vb:#}"
            );
        }
    }
}

fn split(weights: &[u64], matches: bool) -> SmiObject {
    SmiObject::TrafficSplit(TrafficSplit {
        meta: meta(""),
        service: "web".into(),
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend {
                service: format!("web-v{i}"),
                weight_milli: *w,
            })
            .collect(),
        matches: if matches {
            vec![TypedRef {
                kind: "HTTPRouteGroup".into(),
                name: "canary-users".into(),
                api_group: Some("specs.smi-spec.io".into()),
            }]
        } else {
            vec![]
        },
    })
}

#[test]
fn traffic_split_round_trips_every_version_pair() {
    assert_lossless(&split(&[1000, 0], false));
    assert_lossless(&split(&[500, 1500, 0], true));
    assert_lossless(&split(&[0, 0], true));
    assert_lossless(&split(&[], false));
}

#[test]
fn traffic_target_round_trips_every_version_pair() {
    let tt = SmiObject::TrafficTarget(TrafficTarget {
        meta: meta(""),
        destination: IdentityRef {
            kind: "ServiceAccount".into(),
            name: "api".into(),
            namespace: "shop".into(),
            port: Some(8080),
        },
        sources: vec![
            IdentityRef {
                kind: "ServiceAccount".into(),
                name: "web".into(),
                namespace: "front".into(),
                port: None,
            },
            IdentityRef {
                kind: "ServiceAccount".into(),
                name: "prom".into(),
                namespace: "shop".into(),
                port: None,
            },
        ],
        rules: vec![
            TrafficTargetRule {
                kind: RouteKind::HTTPRouteGroup,
                name: "api-routes".into(),
                matches: vec!["metrics".into()],
            },
            TrafficTargetRule {
                kind: RouteKind::TCPRoute,
                name: "db".into(),
                matches: vec![],
            },
        ],
    });
    assert_lossless(&tt);
}

#[test]
fn route_kinds_round_trip_every_version_pair() {
    let mut headers = BTreeMap::new();
    headers.insert("x-canary".to_string(), "^true$".to_string());
    let g = SmiObject::HTTPRouteGroup(HttpRouteGroup {
        meta: meta(""),
        matches: vec![
            HttpMatch {
                name: "canary".into(),
                path_regex: Some("/api".into()),
                methods: vec!["GET".into(), "*".into()],
                headers,
            },
            HttpMatch {
                name: "any".into(),
                path_regex: None,
                methods: vec![],
                headers: BTreeMap::new(),
            },
        ],
    });
    assert_lossless(&g);
    for kind in [RouteKind::TCPRoute, RouteKind::UDPRoute] {
        for matches in [
            None,
            Some(PortMatch {
                name: Some("db".into()),
                ports: vec![5432, 6432],
            }),
            Some(PortMatch {
                name: None,
                ports: vec![],
            }),
        ] {
            assert_lossless(&SmiObject::PortRoute(PortRoute {
                meta: meta(""),
                kind,
                matches,
            }));
        }
    }
}

proptest! {
    #[test]
    fn any_weights_round_trip(weights in proptest::collection::vec(0u64..10_000_000, 0..5), matches in any::<bool>()) {
        assert_lossless(&split(&weights, matches));
    }
}

#[test]
fn v1alpha1_quantities_and_zero_weight() {
    let v = json!({
        "apiVersion": "split.smi-spec.io/v1alpha1",
        "kind": "TrafficSplit",
        "metadata": {"name": "s", "namespace": "shop"},
        "spec": {"service": "web", "backends": [
            {"service": "a", "weight": "500m"},
            {"service": "b", "weight": 1},
            {"service": "c", "weight": 0}
        ]}
    });
    let SmiObject::TrafficSplit(ts) = from_value(&v).unwrap() else {
        panic!()
    };
    let w: Vec<u64> = ts.backends.iter().map(|b| b.weight_milli).collect();
    assert_eq!(w, vec![500, 1000, 0]);
    // Zero weights are written, never omitted.
    let out = to_value(
        &SmiObject::TrafficSplit(ts.clone()),
        "split.smi-spec.io/v1alpha4",
    )
    .unwrap();
    assert_eq!(out["spec"]["backends"][2]["weight"], json!(0));
    assert_eq!(out["spec"]["backends"][0]["weight"], json!(500));
    assert_eq!(
        out["metadata"]["annotations"]["split.smi-spec.io/weft-original-weights"],
        json!("[500,1000,0]")
    );
    let out = to_value(&SmiObject::TrafficSplit(ts), "split.smi-spec.io/v1alpha1").unwrap();
    assert_eq!(out["spec"]["backends"][2]["weight"], json!("0"));
}

#[test]
fn stale_weight_annotation_is_ignored() {
    let v = json!({
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": {"name": "s", "namespace": "shop", "annotations": {
            "split.smi-spec.io/weft-original-weights": "[500,1000]"
        }},
        "spec": {"service": "web", "backends": [
            {"service": "a", "weight": 1},
            {"service": "b", "weight": 3}
        ]}
    });
    let SmiObject::TrafficSplit(ts) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(ts.backends[0].weight_milli, 1000);
    assert_eq!(ts.backends[1].weight_milli, 3000);
}

#[test]
fn tolerant_http_route_group() {
    // newer apiVersion with top-level matches, headers as a list of maps, mixed case
    let v = json!({
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "g"},
        "matches": [{
            "name": "canary",
            "pathRegex": "/api",
            "methods": ["get", "Post"],
            "headers": [{"X-Canary": "true"}, {"User-Agent": ".*Firefox.*"}]
        }]
    });
    let SmiObject::HTTPRouteGroup(g) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(g.meta.namespace, "default");
    assert_eq!(g.meta.api_version, "specs.smi-spec.io/v1alpha4");
    let m = &g.matches[0];
    assert_eq!(m.methods, vec!["GET", "POST"]);
    assert_eq!(m.headers.get("x-canary").map(String::as_str), Some("true"));
    assert_eq!(
        m.headers.get("user-agent").map(String::as_str),
        Some(".*Firefox.*")
    );

    // headers as a map, spec-wrapped
    let v = json!({
        "apiVersion": "specs.smi-spec.io/v1alpha3",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "g", "namespace": "shop"},
        "spec": {"matches": [{"name": "m", "headers": {"Cookie": "beta=1"}}]}
    });
    let SmiObject::HTTPRouteGroup(g) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(
        g.matches[0].headers.get("cookie").map(String::as_str),
        Some("beta=1")
    );

    // v1alpha1 has no headers field: they are kept, not dropped
    let v = json!({
        "apiVersion": "specs.smi-spec.io/v1alpha1",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "g", "namespace": "shop"},
        "matches": [{"name": "m", "headers": {"X-A": "1"}}]
    });
    let SmiObject::HTTPRouteGroup(g) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(
        g.matches[0].headers.get("x-a").map(String::as_str),
        Some("1")
    );
}

#[test]
fn tolerant_traffic_target_defaults_namespaces() {
    let v = json!({
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": "t", "namespace": "shop"},
        "spec": {
            "destination": {"kind": "ServiceAccount", "name": "api"},
            "sources": [{"kind": "ServiceAccount", "name": "web", "namespace": "front"},
                        {"kind": "ServiceAccount", "name": "cli"}],
            "rules": [{"kind": "HTTPRouteGroup", "name": "routes"}]
        }
    });
    let SmiObject::TrafficTarget(t) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(t.destination.namespace, "shop");
    assert_eq!(t.sources[0].namespace, "front");
    assert_eq!(t.sources[1].namespace, "shop");
    assert!(t.rules[0].matches.is_empty());

    // v1alpha1: top level, `specs`, string port (also accepted spec-wrapped with `rules`)
    let v = json!({
        "apiVersion": "access.smi-spec.io/v1alpha1",
        "kind": "TrafficTarget",
        "metadata": {"name": "t", "namespace": "shop"},
        "destination": {"kind": "ServiceAccount", "name": "api", "port": "8080"},
        "sources": [{"kind": "ServiceAccount", "name": "web"}],
        "specs": [{"kind": "TCPRoute", "name": "db"}]
    });
    let SmiObject::TrafficTarget(t1) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(t1.destination.port, Some(8080));
    assert_eq!(t1.rules[0].kind, RouteKind::TCPRoute);
}

#[test]
fn typed_errors_on_bad_input() {
    let bad_kind = json!({
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": "t", "namespace": "shop"},
        "spec": {"destination": {"kind": "ServiceAccount", "name": "api"},
                 "rules": [{"kind": "GRPCRoute", "name": "x"}]}
    });
    assert!(
        matches!(from_value(&bad_kind), Err(SmiError::Invalid { path, .. }) if path == "spec.rules[0].kind")
    );

    let negative = json!({
        "apiVersion": "split.smi-spec.io/v1alpha2",
        "kind": "TrafficSplit",
        "metadata": {"name": "s"},
        "spec": {"service": "web", "backends": [{"service": "a", "weight": -1}]}
    });
    assert!(matches!(
        from_value(&negative),
        Err(SmiError::Invalid { .. })
    ));

    let bad_quantity = json!({
        "apiVersion": "split.smi-spec.io/v1alpha1",
        "kind": "TrafficSplit",
        "metadata": {"name": "s"},
        "spec": {"service": "web", "backends": [{"service": "a", "weight": "lots"}]}
    });
    assert!(matches!(
        from_value(&bad_quantity),
        Err(SmiError::Malformed { .. })
    ));

    let not_smi = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    assert!(matches!(from_value(&not_smi), Err(SmiError::NotSmi { .. })));
    assert!(matches!(
        from_value(&json!({"kind": "TrafficSplit"})),
        Err(SmiError::MissingField("apiVersion"))
    ));

    let bad_headers = json!({
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "g"},
        "spec": {"matches": [{"name": "m", "headers": "x"}]}
    });
    assert!(matches!(
        from_value(&bad_headers),
        Err(SmiError::Malformed { .. })
    ));
}

#[test]
fn matches_on_versions_without_matches_are_kept() {
    let v = json!({
        "apiVersion": "split.smi-spec.io/v1alpha2",
        "kind": "TrafficSplit",
        "metadata": {"name": "s", "namespace": "shop"},
        "spec": {"service": "web", "backends": [{"service": "a", "weight": 1}],
                 "matches": [{"kind": "HTTPRouteGroup", "name": "g"}]}
    });
    let SmiObject::TrafficSplit(ts) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(ts.matches.len(), 1);

    let v = json!({
        "apiVersion": "specs.smi-spec.io/v1alpha3",
        "kind": "TCPRoute",
        "metadata": {"name": "r", "namespace": "shop"},
        "spec": {"matches": {"ports": [5432]}}
    });
    let SmiObject::PortRoute(r) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(r.matches.map(|m| m.ports), Some(vec![5432]));
}

#[test]
fn webhook_conversion_keeps_metadata_and_status() {
    let v = json!({
        "apiVersion": "split.smi-spec.io/v1alpha1",
        "kind": "TrafficSplit",
        "metadata": {"name": "s", "namespace": "shop", "resourceVersion": "42",
                     "labels": {"app": "web"}, "annotations": {"team": "a"}},
        "spec": {"service": "web", "backends": [{"service": "a", "weight": "500m"}]},
        "status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Valid", "message": ""}]}
    });
    let out = convert_object(&v, "split.smi-spec.io/v1alpha4").unwrap();
    assert_eq!(out["metadata"]["resourceVersion"], "42");
    assert_eq!(out["metadata"]["labels"]["app"], "web");
    assert_eq!(out["metadata"]["annotations"]["team"], "a");
    assert_eq!(out["status"], v["status"]);
    assert_eq!(out["spec"]["backends"][0]["weight"], 500);
    let back = convert_object(&out, "split.smi-spec.io/v1alpha1").unwrap();
    assert_eq!(
        back["spec"],
        json!({"service": "web", "backends": [{"service": "a", "weight": "500m"}]})
    );
    assert_eq!(back["metadata"]["annotations"], json!({"team": "a"}));
}

#[test]
fn is_smi_knows_served_kinds() {
    assert!(is_smi("split.smi-spec.io/v1alpha4", "TrafficSplit"));
    assert!(is_smi("access.smi-spec.io/v1alpha1", "TrafficTarget"));
    assert!(is_smi("specs.smi-spec.io/v1alpha4", "UDPRoute"));
    assert!(!is_smi("access.smi-spec.io/v1alpha4", "TrafficTarget"));
    assert!(!is_smi("v1", "Service"));
}

fn arb_http_match() -> impl Strategy<Value = HttpMatch> {
    (
        "[a-z]{1,8}",
        proptest::option::of("/[a-z/]{0,10}"),
        proptest::sample::subsequence(vec!["*", "GET", "POST", "DELETE", "PATCH"], 0..3),
        proptest::collection::btree_map("x-[a-z]{1,6}", "[a-z.*^$]{0,6}", 0..3),
    )
        .prop_map(|(name, path_regex, methods, headers)| HttpMatch {
            name,
            path_regex,
            methods: methods.into_iter().map(str::to_string).collect(),
            headers,
        })
}

fn arb_identity() -> impl Strategy<Value = IdentityRef> {
    ("[a-z]{1,8}", "[a-z]{1,8}", proptest::option::of(1u16..)).prop_map(
        |(name, namespace, port)| IdentityRef {
            kind: "ServiceAccount".into(),
            name,
            namespace,
            port,
        },
    )
}

proptest! {
    #[test]
    fn any_http_route_group_round_trips(matches in proptest::collection::vec(arb_http_match(), 0..4)) {
        assert_lossless(&SmiObject::HTTPRouteGroup(HttpRouteGroup { meta: meta(""), matches }));
    }

    #[test]
    fn any_traffic_target_round_trips(
        destination in arb_identity(),
        sources in proptest::collection::vec(arb_identity(), 0..3),
        rules in proptest::collection::vec(
            (prop_oneof![Just(RouteKind::HTTPRouteGroup), Just(RouteKind::TCPRoute), Just(RouteKind::UDPRoute)],
             "[a-z]{1,8}", proptest::collection::vec("[a-z]{1,5}", 0..3))
                .prop_map(|(kind, name, matches)| TrafficTargetRule { kind, name, matches }),
            0..3),
    ) {
        assert_lossless(&SmiObject::TrafficTarget(TrafficTarget { meta: meta(""), destination, sources, rules }));
    }

    #[test]
    fn any_port_route_round_trips(
        udp in any::<bool>(),
        matches in proptest::option::of((proptest::option::of("[a-z]{1,6}"), proptest::collection::vec(1u16.., 0..4))
            .prop_map(|(name, ports)| PortMatch { name, ports })),
    ) {
        let kind = if udp { RouteKind::UDPRoute } else { RouteKind::TCPRoute };
        assert_lossless(&SmiObject::PortRoute(PortRoute { meta: meta(""), kind, matches }));
    }
}

#[test]
fn v1alpha1_traffic_target_port_may_be_a_number() {
    let v = json!({
        "apiVersion": "access.smi-spec.io/v1alpha1",
        "kind": "TrafficTarget",
        "metadata": {"name": "t", "namespace": "shop"},
        "destination": {"kind": "ServiceAccount", "name": "api", "port": 8080},
        "sources": [{"kind": "ServiceAccount", "name": "web"}],
        "specs": [{"kind": "HTTPRouteGroup", "name": "r"}]
    });
    let SmiObject::TrafficTarget(t) = from_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(t.destination.port, Some(8080));
    let out = to_value(&SmiObject::TrafficTarget(t), "access.smi-spec.io/v1alpha1").unwrap();
    assert_eq!(out["destination"]["port"], json!("8080"));
    assert!(out.get("spec").is_none());
    let bad = json!({
        "apiVersion": "access.smi-spec.io/v1alpha1",
        "kind": "TrafficTarget",
        "metadata": {"name": "t"},
        "destination": {"kind": "ServiceAccount", "name": "api", "port": "http"}
    });
    assert!(
        matches!(from_value(&bad), Err(SmiError::Invalid { path, .. }) if path == "destination.port")
    );
}

#[test]
fn to_value_rejects_wrong_kind_or_version() {
    let s = split(&[1000], false);
    assert!(matches!(
        to_value(&s, "access.smi-spec.io/v1alpha3"),
        Err(SmiError::NotSmi { .. })
    ));
    assert!(matches!(
        to_value(&s, "split.smi-spec.io/v9"),
        Err(SmiError::NotSmi { .. })
    ));
}

#[test]
fn an_object_nested_deeper_than_the_limit_is_refused() {
    let mut deep = serde_json::json!("x");
    for _ in 0..weft_smi::limits::MAX_NESTING {
        deep = serde_json::json!([deep]);
    }
    let v = serde_json::json!({
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": {"name": "s", "namespace": "demo"},
        "spec": {"service": "web", "backends": [{"service": "a", "weight": 1}], "x": deep},
    });
    let err = weft_smi::from_value(&v).unwrap_err();
    assert!(err.to_string().contains("nested"), "{err}");
    // The same object without the deep field reads.
    let mut ok = v.clone();
    ok["spec"].as_object_mut().unwrap().remove("x");
    assert!(weft_smi::from_value(&ok).is_ok());
}
