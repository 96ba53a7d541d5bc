//! The conversion webhook's rewrite is faithful and total: what a user wrote at any version
//! comes back exactly (form included) after a trip through the storage version and through
//! reads at every other version; objects the API server builds for server-side apply
//! (pruned, partial, with nulls) convert without error.

use proptest::prelude::*;
use serde_json::{json, Value};
use weft_smi::convert::convert_object;
use weft_smi::convert::fidelity::{KEPT_PREFIX, MAX_KEPT_BYTES};
use weft_smi::kinds::{self, SMI_KINDS};
use weft_smi::split::ANN_ORIGINAL_WEIGHTS;
use weft_smi::{from_value, hub::SmiObject};

fn storage_of(kind: &str) -> &'static str {
    kinds::by_kind(None, kind).unwrap().storage().api_version
}

fn versions_of(kind: &str) -> Vec<&'static str> {
    kinds::by_kind(None, kind)
        .unwrap()
        .versions
        .iter()
        .map(|v| v.api_version)
        .collect()
}

fn conv(obj: &Value, to: &str) -> Value {
    convert_object(obj, to).unwrap_or_else(|e| panic!("to {to}: {e}\n{obj:#}"))
}

fn weft_annotations(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.keys()
                .filter(|k| k.starts_with("weft.io/") || k.contains("weft-original"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn without_annotations(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("annotations");
    }
    o
}

/// What the object means (its hub form, apiVersion aside), when it is valid.
fn hub_at(obj: &Value) -> Option<SmiObject> {
    let mut h = from_value(obj).ok()?;
    match &mut h {
        SmiObject::TrafficSplit(o) => o.meta.api_version.clear(),
        SmiObject::TrafficTarget(o) => o.meta.api_version.clear(),
        SmiObject::HTTPRouteGroup(o) => o.meta.api_version.clear(),
        SmiObject::PortRoute(o) => o.meta.api_version.clear(),
    }
    Some(h)
}

/// What a user wrote at `obj`'s version is stored (at the storage version) and read back
/// exactly, with no weft annotation visible; reading it at any other version and writing that
/// back leaves the stored object exactly as it was; and every version means the same thing.
fn assert_faithful(obj: &Value) {
    let kind = obj["kind"].as_str().unwrap();
    let user_version = obj["apiVersion"].as_str().unwrap();
    let storage = storage_of(kind);
    let stored = conv(obj, storage);
    assert_eq!(stored["apiVersion"], storage);
    let back = conv(&stored, user_version);
    assert_eq!(
        &back, obj,
        "{user_version} -> {storage} -> back; stored:\n{stored:#}"
    );
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        serde_json::to_string(obj).unwrap(),
        "byte-identical"
    );
    let meaning = hub_at(obj);
    if meaning.is_some() {
        assert_eq!(hub_at(&stored), meaning, "stored:\n{stored:#}");
    }
    for other in versions_of(kind) {
        let read = conv(&stored, other);
        assert_eq!(read["apiVersion"], other);
        assert_eq!(read["status"], stored["status"]);
        assert_eq!(
            without_annotations(&read)["metadata"],
            without_annotations(&stored)["metadata"],
            "metadata other than annotations is kept"
        );
        if meaning.is_some() {
            assert_eq!(hub_at(&read), meaning, "read as {other}:\n{read:#}");
        }
        // Written back unchanged (an update at `other`, or server-side apply's own round
        // trips): the stored object does not change, annotations included.
        assert_eq!(
            conv(&read, storage),
            stored,
            "{storage} -> {other} -> {storage}; read:\n{read:#}"
        );
        // And converting between two older versions directly (server-side apply does) keeps
        // the user's form too.
        assert_eq!(conv(&read, user_version), *obj, "{other} -> {user_version}");
        if other != storage {
            // Other versions' views may show what they cannot express, other forms, and the
            // exact weights; never their own kept form.
            for a in weft_annotations(&read) {
                assert!(
                    (a.starts_with(KEPT_PREFIX) || a == ANN_ORIGINAL_WEIGHTS)
                        && a != format!("{KEPT_PREFIX}{}", version(other)),
                    "{other} view shows {a}"
                );
            }
        }
    }
    assert!(
        weft_annotations(&back).is_empty(),
        "nothing of weft's at the user's own version: {back:#}"
    );
}

fn version(api_version: &str) -> &str {
    api_version.split_once('/').unwrap().1
}

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": "shop", "uid": "u-1", "generation": 2,
           "resourceVersion": "77", "creationTimestamp": "2024-05-01T10:00:00Z",
           "labels": {"app": "web"},
           "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}})
}

fn status() -> Value {
    json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Valid",
                           "message": "", "observedGeneration": 2}]})
}

/// Objects as users write them, in every form each version accepts.
fn user_objects() -> Vec<Value> {
    let mut out = vec![];
    for (i, weights) in [
        json!([1, 1]),
        json!(["1", 3]),
        json!(["500m", 1]),
        json!(["1000m", "0"]),
        json!([0.5, "1.5"]),
        json!([{"n": 1}, "x"]),
    ]
    .iter()
    .enumerate()
    {
        let backends: Vec<Value> = weights
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(j, w)| json!({"service": format!("web-v{j}"), "weight": w}))
            .collect();
        out.push(json!({
            "apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
            "metadata": meta(&format!("s1-{i}")), "status": status(),
            "spec": {"service": "web", "backends": backends}
        }));
    }
    for v in ["v1alpha2", "v1alpha3", "v1alpha4"] {
        let mut s = json!({
            "apiVersion": format!("split.smi-spec.io/{v}"), "kind": "TrafficSplit",
            "metadata": meta("s"), "spec": {"service": "web", "backends": [
                {"service": "a", "weight": 1}, {"service": "b", "weight": 0}]}
        });
        if v != "v1alpha2" {
            s["spec"]["matches"] = json!([{"kind": "HTTPRouteGroup", "name": "g"}]);
        }
        out.push(s);
    }
    out.push(json!({
        "apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",
        "metadata": meta("t1"), "status": status(),
        "destination": {"kind": "ServiceAccount", "name": "api", "port": 8080},
        "sources": [{"kind": "ServiceAccount", "name": "web"},
                    {"kind": "ServiceAccount", "name": "job", "namespace": "batch", "port": "9090"}],
        "specs": [{"kind": "HTTPRouteGroup", "name": "r", "matches": ["get"]}]
    }));
    out.push(json!({
        "apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",
        "metadata": meta("t1b"),
        "destination": {"kind": "ServiceAccount", "name": "api", "port": "8080"},
        "specs": [{"kind": "TCPRoute", "name": "db"}]
    }));
    for v in ["v1alpha2", "v1alpha3"] {
        out.push(json!({
            "apiVersion": format!("access.smi-spec.io/{v}"), "kind": "TrafficTarget",
            "metadata": meta("t"),
            "spec": {"destination": {"kind": "ServiceAccount", "name": "api", "port": 80},
                     "sources": [{"kind": "ServiceAccount", "name": "web"}],
                     "rules": [{"kind": "HTTPRouteGroup", "name": "r"}]}
        }));
    }
    let list_headers = json!([{"X-User": "beta"}, {"Accept": "text/.*"}]);
    let map_headers = json!({"X-User": "beta"});
    out.push(json!({
        "apiVersion": "specs.smi-spec.io/v1alpha1", "kind": "HTTPRouteGroup",
        "metadata": meta("h1"), "status": status(),
        "matches": [{"name": "get", "methods": ["GET"], "pathRegex": "/api"}]
    }));
    for headers in [&list_headers, &map_headers] {
        out.push(json!({
            "apiVersion": "specs.smi-spec.io/v1alpha2", "kind": "HTTPRouteGroup",
            "metadata": meta("h2"),
            "matches": [{"name": "beta", "headers": headers, "methods": ["get", "POST"]},
                        {"name": "all"}]
        }));
        for v in ["v1alpha3", "v1alpha4"] {
            out.push(json!({
                "apiVersion": format!("specs.smi-spec.io/{v}"), "kind": "HTTPRouteGroup",
                "metadata": meta("h"),
                "spec": {"matches": [{"name": "beta", "headers": headers, "pathRegex": "/"}]}
            }));
        }
    }
    for kind in ["TCPRoute", "UDPRoute"] {
        for v in ["v1alpha1", "v1alpha2"] {
            out.push(json!({
                "apiVersion": format!("specs.smi-spec.io/{v}"), "kind": kind,
                "metadata": meta("p")
            }));
        }
        out.push(json!({
            "apiVersion": "specs.smi-spec.io/v1alpha3", "kind": kind,
            "metadata": meta("p"), "spec": {}
        }));
        out.push(json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4", "kind": kind,
            "metadata": meta("p"), "spec": {"matches": {"name": "pg", "ports": [5432, 5433]}}
        }));
        out.push(json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4", "kind": kind,
            "metadata": meta("p"), "spec": {}
        }));
    }
    out
}

#[test]
fn every_form_at_every_version_round_trips_exactly() {
    for obj in user_objects() {
        if obj["spec"]["backends"][0]["weight"].is_object() {
            // Not a quantity: conversion passes it through (admission refuses it).
            let kind = "TrafficSplit";
            let stored = conv(&obj, storage_of(kind));
            assert_eq!(stored["spec"]["backends"][0]["weight"], json!({"n": 1}));
            assert_eq!(conv(&stored, "split.smi-spec.io/v1alpha1"), obj);
            continue;
        }
        assert_faithful(&obj);
    }
}

#[test]
fn the_forms_from_the_issue_are_kept() {
    // v1alpha1 integer weights come back as integers, not as "1".
    let ts = json!({
        "apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": "canary", "namespace": "demo"},
        "spec": {"service": "web", "backends": [
            {"service": "web-v1", "weight": 1}, {"service": "web-v2", "weight": 3}]}
    });
    let stored = conv(&ts, "split.smi-spec.io/v1alpha4");
    assert_eq!(
        stored["spec"]["backends"],
        json!([{"service": "web-v1", "weight": 1}, {"service": "web-v2", "weight": 3}])
    );
    let back = conv(&stored, "split.smi-spec.io/v1alpha1");
    assert_eq!(back, ts);

    // v1alpha2 list-form headers stay in list form (and in their case) at every version
    // that has headers.
    let hrg = json!({
        "apiVersion": "specs.smi-spec.io/v1alpha2", "kind": "HTTPRouteGroup",
        "metadata": {"name": "routes", "namespace": "demo"},
        "matches": [{"name": "beta", "headers": [{"X-Canary": "yes"}]}]
    });
    let stored = conv(&hrg, "specs.smi-spec.io/v1alpha4");
    assert_eq!(
        stored["spec"]["matches"][0]["headers"],
        json!([{"X-Canary": "yes"}])
    );
    assert!(weft_annotations(&stored).is_empty(), "{stored:#}");
    assert_eq!(conv(&stored, "specs.smi-spec.io/v1alpha2"), hrg);
    // v1alpha1 has no headers: the view there keeps them in the storage body annotation,
    // and a write back at v1alpha1 restores them.
    let v1 = conv(&stored, "specs.smi-spec.io/v1alpha1");
    assert!(v1["matches"][0].get("headers").is_none(), "{v1:#}");
    assert_eq!(
        weft_annotations(&v1),
        vec![format!("{KEPT_PREFIX}v1alpha4")]
    );
    assert_eq!(conv(&v1, "specs.smi-spec.io/v1alpha4"), stored);
}

#[test]
fn an_object_edited_at_another_version_drops_the_kept_form() {
    let ts = json!({
        "apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": "canary", "namespace": "demo"},
        "spec": {"service": "web", "backends": [
            {"service": "web-v1", "weight": 1}, {"service": "web-v2", "weight": "1000m"}]}
    });
    let mut stored = conv(&ts, "split.smi-spec.io/v1alpha4");
    assert_eq!(
        weft_annotations(&stored),
        vec![format!("{KEPT_PREFIX}v1alpha1")]
    );
    // Someone edits the weights at v1alpha4 (the annotation stays, as a merge patch would
    // leave it): the v1alpha1 view is the new weights, canonical, and the stale form is gone.
    stored["spec"]["backends"][1]["weight"] = json!(4);
    let v1 = conv(&stored, "split.smi-spec.io/v1alpha1");
    assert_eq!(
        v1["spec"]["backends"],
        json!([{"service": "web-v1", "weight": "1"}, {"service": "web-v2", "weight": "4"}])
    );
    assert!(weft_annotations(&v1).is_empty(), "{v1:#}");
    let restored = conv(&v1, "split.smi-spec.io/v1alpha4");
    assert!(weft_annotations(&restored).is_empty(), "{restored:#}");
    // An edit at v1alpha4 that keeps the v1alpha1 meaning (a label) keeps the form.
    let mut stored = conv(&ts, "split.smi-spec.io/v1alpha4");
    stored["metadata"]["labels"] = json!({"team": "a"});
    let v1 = conv(&stored, "split.smi-spec.io/v1alpha1");
    assert_eq!(v1["spec"], ts["spec"]);
}

#[test]
fn partial_and_null_objects_convert() {
    let cases = [
        // What server-side apply builds from managed fields: no spec at all.
        json!({"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
               "status": {"conditions": [{"type": "Accepted"}]}}),
        json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
               "metadata": {"name": "x"}, "spec": {"backends": null}}),
        json!({"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
               "metadata": {"name": "x"}, "spec": {"service": null,
               "backends": [{"service": "a"}, null, {"weight": null}]}}),
        json!({"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
               "metadata": null, "spec": null}),
        json!({"apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",
               "metadata": {"name": "t"}, "destination": null, "specs": null}),
        json!({"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
               "spec": {"sources": null}}),
        json!({"apiVersion": "specs.smi-spec.io/v1alpha2", "kind": "HTTPRouteGroup",
               "matches": null}),
        json!({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
               "spec": {"matches": [null, {"headers": null}, 7]}}),
        json!({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute",
               "spec": {"matches": null}}),
        json!({"apiVersion": "specs.smi-spec.io/v1alpha1", "kind": "UDPRoute"}),
    ];
    for obj in cases {
        let kind = obj["kind"].as_str().unwrap();
        for to in versions_of(kind) {
            let out = conv(&obj, to);
            assert_eq!(out["apiVersion"], to);
            assert_eq!(out["kind"], kind);
            assert!(out["metadata"].is_object(), "{out:#}");
            assert_eq!(out.get("status"), obj.get("status"));
            // And back: what the partial object said is said again.
            let from = obj["apiVersion"].as_str().unwrap();
            let back = conv(&out, from);
            let said = |o: &Value| {
                let mut o = o.clone();
                let m = o.as_object_mut().unwrap();
                m.remove("metadata");
                m.remove("apiVersion");
                o
            };
            assert_eq!(
                said(&back),
                said(&obj),
                "{from} -> {to} -> back\n{out:#}\n{back:#}"
            );
        }
    }
}

#[test]
fn the_missing_spec_of_a_partial_object_stays_missing() {
    let partial = json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
                         "metadata": {"name": "x"}, "status": {"conditions": []}});
    for to in versions_of("TrafficSplit") {
        let out = conv(&partial, to);
        assert!(out.get("spec").is_none(), "{to}: {out:#}");
    }
}

#[test]
fn only_non_objects_and_unserved_versions_fail() {
    for bad in [json!(42), json!("x"), json!(null), json!([{}])] {
        assert!(convert_object(&bad, "split.smi-spec.io/v1alpha4").is_err());
    }
    let ts = json!({"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit"});
    assert!(convert_object(&ts, "split.smi-spec.io/v9").is_err());
    assert!(convert_object(&ts, "access.smi-spec.io/v1alpha3").is_err());
    assert!(convert_object(&ts, "split.smi-spec.io/v1alpha2").is_ok());
}

#[test]
fn kept_bodies_are_bounded() {
    // A body far past the bound is not kept: the conversion is the canonical one.
    let backends: Vec<Value> = (0..3000)
        .map(|i| json!({"service": format!("backend-with-a-long-name-{i}"), "weight": 1}))
        .collect();
    let ts = json!({
        "apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": "big"}, "spec": {"service": "web", "backends": backends}
    });
    assert!(serde_json::to_string(&ts).unwrap().len() > MAX_KEPT_BYTES);
    let stored = conv(&ts, "split.smi-spec.io/v1alpha4");
    assert!(weft_annotations(&stored).is_empty());
    let back = conv(&stored, "split.smi-spec.io/v1alpha1");
    assert_eq!(back["spec"]["backends"][0]["weight"], json!("1"));
    assert_eq!(hub_at(&back), hub_at(&ts));
    assert!(hub_at(&ts).is_some());
}

// ---------------------------------------------------------------------------------------------
// generated objects

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-zA-Z0-9./ -]{0,8}".prop_map(Value::from),
        Just(json!("500m")),
        Just(json!("8080")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(field_name(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Names the kinds use, so that generated objects hit the fields conversion rewrites.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("spec".to_string()),
        Just("backends".to_string()),
        Just("weight".to_string()),
        Just("service".to_string()),
        Just("matches".to_string()),
        Just("headers".to_string()),
        Just("destination".to_string()),
        Just("sources".to_string()),
        Just("specs".to_string()),
        Just("rules".to_string()),
        Just("port".to_string()),
        Just("ports".to_string()),
        Just("annotations".to_string()),
        "[a-z]{1,6}",
    ]
}

fn served() -> impl Strategy<Value = (&'static str, &'static str)> {
    let pairs: Vec<(&'static str, &'static str)> = SMI_KINDS
        .iter()
        .flat_map(|k| k.versions.iter().map(move |v| (v.api_version, k.kind)))
        .collect();
    proptest::sample::select(pairs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any object of a served version converts to every version of its kind, keeping kind,
    /// metadata (but annotations) and status, and never fails or panics.
    #[test]
    fn any_object_converts_to_every_version(
        (api_version, kind) in served(),
        fields in proptest::collection::btree_map(field_name(), any_json(), 0..5),
        annotations in proptest::collection::btree_map(
            prop_oneof![
                Just("weft.io/conversion-v1alpha1".to_string()),
                Just("weft.io/conversion-v1alpha4".to_string()),
                Just("split.smi-spec.io/weft-original-weights".to_string()),
                "[a-z]{1,5}",
            ],
            prop_oneof![
                Just("{\"spec\":{}}".to_string()),
                Just("[500]".to_string()),
                Just("{\"matches\":null}".to_string()),
                "[a-z{}\\[\\]\":,0-9]{0,12}",
            ],
            0..3),
    ) {
        let mut obj: serde_json::Map<String, Value> = fields.into_iter().collect();
        obj.insert("apiVersion".into(), json!(api_version));
        obj.insert("kind".into(), json!(kind));
        obj.insert("metadata".into(), json!({"name": "x", "annotations": annotations}));
        let obj = Value::Object(obj);
        for to in versions_of(kind) {
            let out = convert_object(&obj, to).unwrap_or_else(|e| panic!("{e}\n{obj:#}"));
            prop_assert_eq!(&out["apiVersion"], to);
            prop_assert_eq!(&out["kind"], kind);
            prop_assert_eq!(out.get("status"), obj.get("status"));
            prop_assert_eq!(&out["metadata"]["name"], "x");
            // Annotations stay strings (the API server refuses anything else).
            if let Some(a) = out.pointer("/metadata/annotations").and_then(Value::as_object) {
                prop_assert!(a.values().all(Value::is_string));
            }
            // Converting the output on never fails either.
            for next in versions_of(kind) {
                prop_assert!(convert_object(&out, next).is_ok());
            }
        }
    }
}

fn arb_split_v1() -> impl Strategy<Value = Value> {
    let weight = prop_oneof![
        (0u64..100).prop_map(Value::from),
        (0u64..100).prop_map(|w| Value::from(w.to_string())),
        (0u64..100_000).prop_map(|w| Value::from(format!("{w}m"))),
    ];
    (
        proptest::collection::vec(weight, 0..5),
        any::<bool>(),
        "[a-z]{1,8}",
    )
        .prop_map(|(weights, with_status, service)| {
            let backends: Vec<Value> = weights
                .into_iter()
                .enumerate()
                .map(|(i, w)| json!({"service": format!("{service}-{i}"), "weight": w}))
                .collect();
            let mut o = json!({
                "apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
                "metadata": {"name": "s", "namespace": "ns"},
                "spec": {"service": service, "backends": backends}
            });
            if with_status {
                o["status"] = status();
            }
            o
        })
}

fn arb_target_v1() -> impl Strategy<Value = Value> {
    let port = prop_oneof![
        Just(None),
        (1u16..=65535).prop_map(|p| Some(json!(p))),
        (1u16..=65535).prop_map(|p| Some(json!(p.to_string()))),
    ];
    let subject =
        ("[a-z]{1,6}", proptest::option::of("[a-z]{1,6}"), port).prop_map(|(name, ns, port)| {
            let mut s = json!({"kind": "ServiceAccount", "name": name});
            if let Some(ns) = ns {
                s["namespace"] = json!(ns);
            }
            if let Some(p) = port {
                s["port"] = p;
            }
            s
        });
    (subject.clone(), proptest::collection::vec(subject, 0..3)).prop_map(|(d, sources)| {
        json!({
            "apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",
            "metadata": {"name": "t", "namespace": "ns"},
            "destination": d, "sources": sources,
            "specs": [{"kind": "HTTPRouteGroup", "name": "r", "matches": ["a"]}]
        })
    })
}

fn arb_route_group() -> impl Strategy<Value = Value> {
    let headers = prop_oneof![
        Just(None),
        proptest::collection::btree_map("[A-Za-z-]{1,8}", "[a-z.*]{1,6}", 1..3)
            .prop_map(|m| Some(json!(m))),
        proptest::collection::vec(
            proptest::collection::btree_map("[A-Za-z-]{1,8}", "[a-z.*]{1,6}", 1..2),
            1..3
        )
        .prop_map(|l| Some(json!(l))),
    ];
    let m = ("[a-z]{1,6}", headers, proptest::option::of("/[a-z]{0,5}")).prop_map(
        |(name, headers, path)| {
            let mut m = json!({"name": name});
            if let Some(h) = headers {
                m["headers"] = h;
            }
            if let Some(p) = path {
                m["pathRegex"] = json!(p);
            }
            m
        },
    );
    (
        proptest::sample::select(vec!["v1alpha2", "v1alpha3", "v1alpha4"]),
        proptest::collection::vec(m, 0..3),
    )
        .prop_map(|(v, matches)| {
            let mut o = json!({
                "apiVersion": format!("specs.smi-spec.io/{v}"), "kind": "HTTPRouteGroup",
                "metadata": {"name": "h", "namespace": "ns"}
            });
            if v == "v1alpha2" {
                o["matches"] = json!(matches);
            } else {
                o["spec"] = json!({ "matches": matches });
            }
            o
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_v1alpha1_split_is_faithful(obj in arb_split_v1()) {
        assert_faithful(&obj);
    }

    #[test]
    fn any_v1alpha1_target_is_faithful(obj in arb_target_v1()) {
        assert_faithful(&obj);
    }

    #[test]
    fn any_route_group_is_faithful(obj in arb_route_group()) {
        assert_faithful(&obj);
    }
}
