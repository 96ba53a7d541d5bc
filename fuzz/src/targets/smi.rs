//! SMI manifests: one YAML or JSON document of any kind and version.
//!
//! Invariants (docs/smi-support.md, "Conversion"):
//! - `from_value` never panics;
//! - what it accepts is normalised (header names lower-case, methods upper-case, identity
//!   namespaces filled in);
//! - hub → every served version → hub is the identity, and so is hub → A → webhook → B → hub;
//! - the webhook is total: it converts any object of a served version to every version of its
//!   kind, valid or not, without error (it never validates);
//! - it is faithful: the user's own object → storage version → back is the same JSON value
//!   (when the object carries none of weft's annotations and is small enough to be kept);
//! - it loses no meaning: an object `from_value` accepts means the same at every version.

use serde_json::Value;
use weft_smi::convert::convert_object;
use weft_smi::hub::SmiObject;
use weft_smi::{from_value, served_versions, to_value, SmiError};

use crate::Features;

/// Tokens for the byte mutator (also used by the compile target).
pub const DICTIONARY: &[&str] = &[
    "split.smi-spec.io/v1alpha1",
    "split.smi-spec.io/v1alpha2",
    "split.smi-spec.io/v1alpha3",
    "split.smi-spec.io/v1alpha4",
    "access.smi-spec.io/v1alpha1",
    "access.smi-spec.io/v1alpha2",
    "access.smi-spec.io/v1alpha3",
    "specs.smi-spec.io/v1alpha1",
    "specs.smi-spec.io/v1alpha2",
    "specs.smi-spec.io/v1alpha3",
    "specs.smi-spec.io/v1alpha4",
    "discovery.k8s.io/v1",
    "discovery.k8s.io/v1beta1",
    "v1",
    "List",
    "TrafficSplit",
    "TrafficTarget",
    "HTTPRouteGroup",
    "TCPRoute",
    "UDPRoute",
    "Service",
    "Pod",
    "Namespace",
    "ServiceAccount",
    "EndpointSlice",
    "Endpoints",
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "annotations",
    "labels",
    "generation",
    "creationTimestamp",
    "2024-01-01T00:00:00Z",
    "uid",
    "spec",
    "status",
    "service",
    "backends",
    "weight",
    "matches",
    "apiGroup",
    "specs.smi-spec.io",
    "destination",
    "sources",
    "rules",
    "specs",
    "port",
    "ports",
    "pathRegex",
    "methods",
    "headers",
    "GET",
    "*",
    "x-user",
    "(on",
    "a{1000}{1000}",
    "^admin$",
    "/public",
    "selector",
    "clusterIP",
    "clusterIPs",
    "targetPort",
    "appProtocol",
    "protocol",
    "UDP",
    "http",
    "grpc",
    "serviceAccountName",
    "containers",
    "containerPort",
    "readinessProbe",
    "httpGet",
    "path",
    "scheme",
    "podIP",
    "conditions",
    "Ready",
    "True",
    "endpoints",
    "addresses",
    "targetRef",
    "subsets",
    "items",
    "weft.io/proxy-version",
    "weft.io/default-inbound-policy",
    "deny",
    "allow",
    "mesh",
    "weft.io/timeout",
    "weft.io/retries",
    "weft.io/retry-budget",
    "split.smi-spec.io/weft-original-weights",
    "split.smi-spec.io/weft-original-matches",
    "specs.smi-spec.io/weft-original-headers",
    "specs.smi-spec.io/weft-original-matches",
    "500m",
    "127.0.0.1",
    "::1",
];

fn error_kind(e: &SmiError) -> &'static str {
    match e {
        SmiError::MissingField(_) => "MissingField",
        SmiError::NotSmi { .. } => "NotSmi",
        SmiError::Malformed { .. } => "Malformed",
        SmiError::Invalid { .. } => "Invalid",
        SmiError::KindMismatch { .. } => "KindMismatch",
    }
}

/// What the hub object looks like (which optional parts it has), for feedback.
fn shape(hub: &SmiObject, f: &mut Features) {
    match hub {
        SmiObject::TrafficSplit(s) => {
            f.hit_n("split-backends", s.backends.len());
            f.hit_n("split-matches", s.matches.len());
            f.hit((
                "split-weights",
                s.backends.iter().any(|b| b.weight_milli % 1000 != 0),
                s.backends.iter().any(|b| b.weight_milli == 0),
                s.backends.iter().any(|b| b.weight_milli > i64::MAX as u64),
            ));
        }
        SmiObject::TrafficTarget(t) => {
            f.hit_n("target-sources", t.sources.len());
            f.hit_n("target-rules", t.rules.len());
            f.hit((
                "target",
                t.destination.port.is_some(),
                t.sources.iter().any(|s| s.port.is_some()),
                t.rules.iter().any(|r| !r.matches.is_empty()),
            ));
        }
        SmiObject::HTTPRouteGroup(g) => {
            f.hit_n("hrg-matches", g.matches.len());
            for m in &g.matches {
                f.hit((
                    "hrg-match",
                    m.path_regex.is_some(),
                    m.methods.len().min(3),
                    m.headers.len().min(3),
                ));
            }
        }
        SmiObject::PortRoute(r) => {
            f.hit((
                "route",
                r.kind.as_str(),
                r.matches
                    .as_ref()
                    .map(|m| (m.name.is_some(), m.ports.len().min(3))),
            ));
        }
    }
    let m = hub.meta();
    f.hit((
        "meta",
        m.generation.is_some(),
        m.creation_timestamp.is_some(),
        m.uid.is_some(),
    ));
}

fn versions_of(kind: &str) -> impl Iterator<Item = &'static str> + '_ {
    served_versions()
        .iter()
        .filter(move |(_, k)| *k == kind)
        .map(|(v, _)| *v)
}

/// `o` as read from `api_version`.
pub fn with_api_version(mut o: SmiObject, v: &str) -> SmiObject {
    match &mut o {
        SmiObject::TrafficSplit(x) => x.meta.api_version = v.into(),
        SmiObject::TrafficTarget(x) => x.meta.api_version = v.into(),
        SmiObject::HTTPRouteGroup(x) => x.meta.api_version = v.into(),
        SmiObject::PortRoute(x) => x.meta.api_version = v.into(),
    }
    o
}

/// Parses one document (JSON first, then YAML).
pub fn parse_document(data: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        return Some(v);
    }
    let text = std::str::from_utf8(data).ok()?;
    serde_yaml::from_str::<Value>(text).ok()
}

fn check_normalised(hub: &SmiObject) {
    match hub {
        SmiObject::HTTPRouteGroup(g) => {
            for m in &g.matches {
                for k in m.headers.keys() {
                    assert_eq!(*k, k.to_ascii_lowercase(), "header name not lower-cased");
                }
                for x in &m.methods {
                    assert_eq!(*x, x.to_ascii_uppercase(), "method not upper-cased");
                }
            }
        }
        SmiObject::TrafficTarget(t) => {
            for id in std::iter::once(&t.destination).chain(&t.sources) {
                assert!(
                    !id.namespace.is_empty(),
                    "identity {id:?} has no namespace after parsing"
                );
                assert_ne!(id.port, Some(0), "port 0 accepted");
            }
        }
        SmiObject::PortRoute(_) | SmiObject::TrafficSplit(_) => {}
    }
}

/// The target.
pub fn run(data: &[u8], f: &mut Features) {
    let Some(v) = parse_document(data) else {
        f.hit("unparsable");
        return;
    };
    let hub = match from_value(&v) {
        Ok(h) => h,
        Err(e) => {
            // Only messages made of field paths and serde's words: others hold user values.
            let shape = match &e {
                SmiError::Malformed { message, .. } => crate::message_shape(message)
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
                SmiError::Invalid { path, .. } => crate::message_shape(path),
                _ => String::new(),
            };
            f.hit(("error", error_kind(&e), shape));
            // Conversion does not validate: the webhook converts it all the same.
            webhook_is_total_and_faithful(&v, f);
            return;
        }
    };
    let kind = hub.kind();
    let read_as = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    f.hit(("ok", kind, read_as));
    shape(&hub, f);
    assert_eq!(hub.meta().api_version, read_as, "hub apiVersion");
    check_normalised(&hub);

    for a in versions_of(kind) {
        let va = match to_value(&hub, a) {
            Ok(va) => va,
            Err(e) => {
                // Only a value the version cannot carry at all (a weight over i64) may fail.
                assert!(
                    matches!(e, SmiError::Invalid { .. }),
                    "{kind} cannot be rendered as {a}: {e}"
                );
                f.hit(("render-error", a));
                continue;
            }
        };
        assert_eq!(va["apiVersion"], a);
        assert_eq!(va["kind"], kind);
        let back = from_value(&va)
            .unwrap_or_else(|e| panic!("{kind} rendered as {a} does not parse: {e}\n{va:#}"));
        assert_eq!(
            back,
            with_api_version(hub.clone(), a),
            "{kind} read as {read_as}, rendered as {a}: not lossless\n{va:#}"
        );
        for b in versions_of(kind) {
            match convert_object(&va, b) {
                Ok(vb) => {
                    let back = from_value(&vb).unwrap_or_else(|e| {
                        panic!("{kind} {a} -> webhook {b} does not parse: {e}\n{vb:#}")
                    });
                    assert_eq!(
                        back,
                        with_api_version(hub.clone(), b),
                        "{kind} {a} -> webhook {b}: not lossless\n{vb:#}"
                    );
                }
                Err(e) => {
                    assert!(
                        to_value(&hub, b).is_err(),
                        "{kind} {a} -> webhook {b} fails ({e}) though the hub renders as {b}"
                    );
                }
            }
        }
    }

    // The webhook on the user's own object.
    webhook_is_total_and_faithful(&v, f);
    for b in versions_of(kind) {
        let Ok(vb) = convert_object(&v, b) else {
            continue;
        };
        // Only objects in the shape the API server sends (its schemas prune everything else):
        // the misshaped manifests `from_value` tolerates may read differently once moved.
        if !api_shaped(&v) {
            continue;
        }
        if let Ok(back) = from_value(&vb) {
            f.hit(("webhook", read_as, b));
            assert_eq!(
                back,
                with_api_version(hub.clone(), b),
                "{kind} {read_as} -> webhook {b}: not lossless\n{vb:#}"
            );
        }
    }
}

/// Whether the object has only the fields its version's schema keeps (what the API server
/// sends to the conversion webhook).
fn api_shaped(v: &Value) -> bool {
    let (Some(api_version), Some(kind), Some(obj)) = (
        v.get("apiVersion").and_then(Value::as_str),
        v.get("kind").and_then(Value::as_str),
        v.as_object(),
    ) else {
        return false;
    };
    let version = api_version.split_once('/').map_or("", |(_, v)| v);
    let (top, in_spec): (&[&str], &[&str]) = match (kind, version) {
        ("TrafficSplit", "v1alpha1" | "v1alpha2") => (&["spec"], &["service", "backends"]),
        ("TrafficSplit", _) => (&["spec"], &["service", "backends", "matches"]),
        ("TrafficTarget", "v1alpha1") => (&["destination", "sources", "specs"], &[]),
        ("TrafficTarget", _) => (&["spec"], &["destination", "sources", "rules"]),
        ("HTTPRouteGroup", "v1alpha1" | "v1alpha2") => (&["matches"], &[]),
        ("HTTPRouteGroup", _) => (&["spec"], &["matches"]),
        (_, "v1alpha1" | "v1alpha2") => (&[], &[]),
        (_, "v1alpha3") => (&["spec"], &[]),
        _ => (&["spec"], &["matches"]),
    };
    let top_ok = obj.keys().all(|k| {
        matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
            || top.contains(&k.as_str())
    });
    let spec_ok = match obj.get("spec") {
        None => true,
        Some(Value::Object(spec)) => spec.keys().all(|k| in_spec.contains(&k.as_str())),
        Some(_) => false,
    };
    top_ok && spec_ok
}

/// Whether the object carries an annotation of weft's (a kept body, the exact weights).
fn has_weft_annotation(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.keys().any(|k| k.contains("weft")))
}

fn webhook_is_total_and_faithful(v: &Value, f: &mut Features) {
    let (Some(from), Some(kind)) = (
        v.get("apiVersion").and_then(Value::as_str),
        v.get("kind").and_then(Value::as_str),
    ) else {
        return;
    };
    let Some(smi) = weft_smi::kinds::by_kind(from.split_once('/').map(|(g, _)| g), kind) else {
        return;
    };
    if !smi.serves(from, kind) || !v.is_object() {
        return;
    }
    let storage = smi.storage().api_version;
    for b in versions_of(kind) {
        let out = convert_object(v, b)
            .unwrap_or_else(|e| panic!("{kind} {from} -> webhook {b} fails: {e}\n{v:#}"));
        assert_eq!(out["apiVersion"], b);
        assert_eq!(
            out.get("status"),
            v.get("status"),
            "{from} -> {b}: status changed"
        );
        assert!(out["metadata"].is_object(), "{from} -> {b}: no metadata");
    }
    let small = serde_json::to_string(v)
        .map(|s| s.len() < weft_smi::convert::fidelity::MAX_KEPT_BYTES / 2)
        .unwrap_or(false);
    let annotations_ok = v
        .pointer("/metadata/annotations")
        .is_none_or(Value::is_object);
    if !has_weft_annotation(v) && small && v["metadata"].is_object() && annotations_ok {
        let stored = convert_object(v, storage).unwrap_or_else(|e| panic!("{e}"));
        let back = convert_object(&stored, from).unwrap_or_else(|e| panic!("{e}"));
        // The API server never stores an empty annotations map (Go omits it): whether one is
        // kept does not matter.
        let drop_empty = |o: &Value| {
            let mut o = o.clone();
            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                if m.get("annotations")
                    .and_then(Value::as_object)
                    .is_some_and(|a| a.is_empty())
                {
                    m.remove("annotations");
                }
            }
            o
        };
        let (back, want) = (drop_empty(&back), drop_empty(v));
        assert_eq!(back, want, "{kind} {from} -> {storage} -> back\n{stored:#}");
        f.hit(("faithful", from));
    }
}
