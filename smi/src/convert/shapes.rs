//! The shape of every served version, as total rewrites of JSON objects to and from the
//! storage version.
//!
//! [`up`] rewrites an object of an older version into the storage version's shape, [`down`]
//! does the reverse. Both only move, rename or re-type the fields that differ between the two
//! versions and leave everything else alone: missing fields stay missing, `null`s stay `null`,
//! values of an unexpected type pass through untouched, and nothing is validated (admission
//! does that). Neither can fail or panic, whatever the object holds, so the API server can
//! always read a stored object at any served version, and server-side apply can convert the
//! partial objects it builds from managed fields.
//!
//! | kind           | version  | differs from the storage version by                         |
//! |----------------|----------|-------------------------------------------------------------|
//! | TrafficSplit   | v1alpha1 | weights are quantities (`"500m"`); no `spec.matches`        |
//! | TrafficSplit   | v1alpha2 | no `spec.matches`                                           |
//! | TrafficTarget  | v1alpha1 | no `spec`: top-level `destination`, `sources`, `specs`; string ports |
//! | HTTPRouteGroup | v1alpha1 | no `spec`: top-level `matches`, which have no `headers`     |
//! | HTTPRouteGroup | v1alpha2 | no `spec`: top-level `matches`                              |
//! | TCP/UDPRoute   | v1alpha1, v1alpha2 | no fields at all                                  |
//! | TCP/UDPRoute   | v1alpha3 | `spec` has no `matches`                                     |
//!
//! The remaining versions (split v1alpha3, access v1alpha2, specs v1alpha3 for
//! HTTPRouteGroup) have the storage version's shape. What a version drops (`down`) and the
//! form a user chose where a version allows several (`1` or `"1"`, a number or a string port)
//! are kept by [`super::fidelity`], not here.

use serde_json::{Map, Value};

use crate::quantity::{format_milli, parse_milli};
use crate::split::ANN_ORIGINAL_WEIGHTS;

pub(crate) type Obj = Map<String, Value>;

/// Rewrites `obj`, an object of `kind` at `version`, into the storage version's shape.
pub(crate) fn up(kind: &str, version: &str, obj: &mut Obj) {
    legacy_up(kind, version, obj);
    match (kind, version) {
        ("TrafficSplit", "v1alpha1") => weights_up(obj),
        ("TrafficTarget", "v1alpha1") => {
            wrap(
                obj,
                &[
                    ("destination", "destination"),
                    ("sources", "sources"),
                    ("specs", "rules"),
                ],
            );
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                for_each_subject(spec, port_to_int);
            }
        }
        ("HTTPRouteGroup", "v1alpha1" | "v1alpha2") => wrap(obj, &[("matches", "matches")]),
        ("TCPRoute" | "UDPRoute", "v1alpha1" | "v1alpha2") => wrap(obj, &[]),
        _ => {}
    }
}

/// Rewrites `obj`, an object of `kind` in the storage version's shape, into `version`'s shape.
pub(crate) fn down(kind: &str, version: &str, obj: &mut Obj) {
    match (kind, version) {
        ("TrafficSplit", "v1alpha1") => {
            remove_in_spec(obj, "matches");
            weights_down(obj);
        }
        ("TrafficSplit", "v1alpha2") => remove_in_spec(obj, "matches"),
        ("TrafficTarget", "v1alpha1") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                for_each_subject(spec, port_to_string);
            }
            unwrap(
                obj,
                &[
                    ("destination", "destination"),
                    ("sources", "sources"),
                    ("rules", "specs"),
                ],
            );
        }
        ("HTTPRouteGroup", "v1alpha1") => {
            unwrap(obj, &[("matches", "matches")]);
            if let Some(ms) = obj.get_mut("matches").and_then(Value::as_array_mut) {
                for m in ms.iter_mut().filter_map(Value::as_object_mut) {
                    m.remove("headers");
                }
            }
        }
        ("HTTPRouteGroup", "v1alpha2") => unwrap(obj, &[("matches", "matches")]),
        ("TCPRoute" | "UDPRoute", "v1alpha1" | "v1alpha2") => unwrap(obj, &[]),
        ("TCPRoute" | "UDPRoute", "v1alpha3") => remove_in_spec(obj, "matches"),
        _ => {}
    }
}

/// Earlier weft releases kept what an older version cannot express in annotations of their
/// own ([`crate::convert::WEFT_ANNOTATIONS`]); an object read and saved with one of them still
/// carries it. Its values fill in the fields they stand for (never over a field the object
/// has), and the annotation goes.
fn legacy_up(kind: &str, version: &str, obj: &mut Obj) {
    use crate::{specs, split};
    let (key, field) = match (kind, version) {
        ("TrafficSplit", "v1alpha1" | "v1alpha2") => (split::ANN_ORIGINAL_MATCHES, "matches"),
        ("TCPRoute" | "UDPRoute", "v1alpha1" | "v1alpha2" | "v1alpha3") => {
            (specs::ANN_ORIGINAL_MATCHES, "matches")
        }
        ("HTTPRouteGroup", "v1alpha1") => (specs::ANN_ORIGINAL_HEADERS, "headers"),
        _ => return,
    };
    let Some(value) = annotations(obj)
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    else {
        return;
    };
    remove_annotation(obj, key);
    if field == "headers" {
        // One map per match, in order.
        let (Value::Array(per_match), Some(Value::Array(ms))) = (value, obj.get_mut("matches"))
        else {
            return;
        };
        if per_match.len() != ms.len() {
            return;
        }
        for (m, h) in ms.iter_mut().zip(per_match) {
            let Some(m) = m.as_object_mut() else { continue };
            if !m.contains_key("headers") && h.as_object().is_some_and(|h| !h.is_empty()) {
                m.insert("headers".into(), h);
            }
        }
        return;
    }
    let spec = obj
        .entry("spec")
        .or_insert_with(|| Value::Object(Map::new()));
    if !spec.is_object() {
        // As readers do: a `spec` that is not an object is an empty one.
        *spec = Value::Object(Map::new());
    }
    if let Some(spec) = spec.as_object_mut() {
        spec.entry(field).or_insert(value);
    }
}

/// Moves top-level fields into `spec` (renamed `from -> to`); `spec` always exists afterwards,
/// as the storage version requires. A `spec` that is not an object is replaced.
fn wrap(obj: &mut Obj, fields: &[(&str, &str)]) {
    let mut spec = match obj.remove("spec") {
        Some(Value::Object(s)) => s,
        _ => Map::new(),
    };
    for (from, to) in fields {
        if let Some(x) = obj.remove(*from) {
            spec.insert((*to).to_string(), x);
        }
    }
    obj.insert("spec".into(), Value::Object(spec));
}

/// Moves fields of `spec` to the top level (renamed `from -> to`) and removes `spec`.
fn unwrap(obj: &mut Obj, fields: &[(&str, &str)]) {
    if let Some(Value::Object(mut spec)) = obj.remove("spec") {
        for (from, to) in fields {
            if let Some(x) = spec.remove(*from) {
                obj.insert((*to).to_string(), x);
            }
        }
    }
}

fn remove_in_spec(obj: &mut Obj, field: &str) {
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove(field);
    }
}

/// Calls `f` on `destination` and on every item of `sources` that is an object.
fn for_each_subject(spec: &mut Obj, f: fn(&mut Obj)) {
    if let Some(d) = spec.get_mut("destination").and_then(Value::as_object_mut) {
        f(d);
    }
    if let Some(ss) = spec.get_mut("sources").and_then(Value::as_array_mut) {
        for s in ss.iter_mut().filter_map(Value::as_object_mut) {
            f(s);
        }
    }
}

/// A v1alpha1 port string (`"8080"`) becomes an integer; anything else is left as it is.
fn port_to_int(subject: &mut Obj) {
    if let Some(Value::String(s)) = subject.get("port") {
        if let Ok(n) = s.trim().parse::<i64>() {
            subject.insert("port".into(), Value::from(n));
        }
    }
}

/// An integer port becomes the v1alpha1 string form; anything else is left as it is.
fn port_to_string(subject: &mut Obj) {
    if let Some(Value::Number(n)) = subject.get("port") {
        if n.is_i64() || n.is_u64() {
            let s = n.to_string();
            subject.insert("port".into(), Value::String(s));
        }
    }
}

fn backends_mut(obj: &mut Obj) -> Option<&mut Vec<Value>> {
    obj.get_mut("spec")?
        .as_object_mut()?
        .get_mut("backends")?
        .as_array_mut()
}

/// A v1alpha1 weight (a quantity: a number or a string) in milli-units, when it is one.
fn quantity_milli(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => u.checked_mul(1000),
            None => parse_milli(&n.to_string()).ok(),
        },
        Value::String(s) => parse_milli(s).ok(),
        _ => None,
    }
}

/// v1alpha1 quantities to integer weights. When every weight is a whole number they are
/// written as such (`"2"` -> `2`); otherwise every weight is written in milli-units (ratios
/// kept: `"500m"`, `1` -> `500`, `1000`) and [`ANN_ORIGINAL_WEIGHTS`] records the exact
/// values. A weight that is not a quantity is left as it is (admission refuses such objects).
fn weights_up(obj: &mut Obj) {
    let mut record = None;
    if let Some(backends) = backends_mut(obj) {
        let milli: Vec<Option<u64>> = backends
            .iter()
            .map(|b| b.get("weight").and_then(quantity_milli))
            .collect();
        let whole = milli.iter().flatten().all(|m| m % 1000 == 0);
        for (b, m) in backends.iter_mut().zip(&milli) {
            let (Some(b), Some(m)) = (b.as_object_mut(), m) else {
                continue;
            };
            let w = if whole { m / 1000 } else { *m };
            if let Ok(w) = i64::try_from(w) {
                b.insert("weight".into(), Value::from(w));
            }
        }
        if !whole && milli.iter().all(Option::is_some) {
            let exact: Vec<u64> = milli.into_iter().flatten().collect();
            record = serde_json::to_string(&exact).ok();
        }
    }
    match record {
        Some(r) => set_annotation(obj, ANN_ORIGINAL_WEIGHTS, r),
        None => remove_annotation(obj, ANN_ORIGINAL_WEIGHTS),
    }
}

/// Integer weights to v1alpha1 quantity strings: the exact milli-units of
/// [`ANN_ORIGINAL_WEIGHTS`] when it agrees with the weights, else whole numbers. The annotation
/// is consumed: v1alpha1 carries the exact values itself.
fn weights_down(obj: &mut Obj) {
    let recorded: Option<Vec<u64>> = annotations(obj)
        .and_then(|a| a.get(ANN_ORIGINAL_WEIGHTS))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok());
    remove_annotation(obj, ANN_ORIGINAL_WEIGHTS);
    let Some(backends) = backends_mut(obj) else {
        return;
    };
    let ints: Vec<Option<u64>> = backends
        .iter()
        .map(|b| b.get("weight").and_then(Value::as_u64))
        .collect();
    let exact = recorded
        .filter(|r| r.len() == ints.len() && r.iter().zip(&ints).all(|(r, w)| Some(*r) == *w));
    for (b, w) in backends.iter_mut().zip(&ints) {
        let (Some(b), Some(w)) = (b.as_object_mut(), w) else {
            continue;
        };
        let milli = if exact.is_some() {
            Some(*w)
        } else {
            w.checked_mul(1000)
        };
        if let Some(milli) = milli {
            b.insert("weight".into(), Value::String(format_milli(milli)));
        }
    }
}

pub(crate) fn annotations(obj: &Obj) -> Option<&Obj> {
    obj.get("metadata")?.get("annotations")?.as_object()
}

/// Sets an annotation, creating `metadata` and `metadata.annotations` when missing (or
/// `null`). `metadata` or `annotations` of another type are left alone, and the annotation is
/// not set (the API server never sends such objects; nothing of the input is destroyed).
pub(crate) fn set_annotation(obj: &mut Obj, key: &str, value: String) {
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    if let Some(m) = meta.as_object_mut() {
        let ann = m
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if ann.is_null() {
            *ann = Value::Object(Map::new());
        }
        if let Some(a) = ann.as_object_mut() {
            a.insert(key.to_string(), Value::String(value));
        }
    }
}

/// Removes an annotation, and `metadata.annotations` when that leaves it empty.
pub(crate) fn remove_annotation(obj: &mut Obj, key: &str) {
    retain_annotations(obj, |k| k != key);
}

/// Keeps the annotations whose key passes `keep`; removes `metadata.annotations` when none is
/// left (and it had some).
pub(crate) fn retain_annotations(obj: &mut Obj, keep: impl Fn(&str) -> bool) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) else {
        return;
    };
    if ann.keys().all(|k| keep(k)) {
        return;
    }
    ann.retain(|k, _| keep(k));
    if ann.is_empty() {
        meta.remove("annotations");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Obj {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn weights_whole_and_fractional() {
        let mut o = obj(json!({"spec": {"backends": [{"weight": "2"}, {"weight": 3}]}}));
        weights_up(&mut o);
        assert_eq!(
            Value::Object(o.clone()),
            json!({"spec": {"backends": [{"weight": 2}, {"weight": 3}]}})
        );
        weights_down(&mut o);
        assert_eq!(
            Value::Object(o),
            json!({"spec": {"backends": [{"weight": "2"}, {"weight": "3"}]}})
        );

        let mut o = obj(json!({"spec": {"backends": [{"weight": "500m"}, {"weight": 1}]}}));
        weights_up(&mut o);
        assert_eq!(
            o["spec"]["backends"],
            json!([{"weight": 500}, {"weight": 1000}])
        );
        assert_eq!(
            o["metadata"]["annotations"][ANN_ORIGINAL_WEIGHTS],
            json!("[500,1000]")
        );
        weights_down(&mut o);
        assert_eq!(
            Value::Object(o),
            json!({"spec": {"backends": [{"weight": "500m"}, {"weight": "1"}]}, "metadata": {}})
        );
    }

    #[test]
    fn odd_values_pass_through() {
        for spec in [
            json!(null),
            json!({"backends": null}),
            json!({"backends": [null, 3, {"weight": null}, {"weight": "x"}, {}]}),
            json!({"backends": [{"weight": -1}, {"weight": 1.5}, {"weight": [1]}]}),
        ] {
            let mut o = obj(json!({ "spec": spec }));
            weights_up(&mut o);
            weights_down(&mut o);
            up("TrafficTarget", "v1alpha1", &mut o);
            down("TrafficTarget", "v1alpha1", &mut o);
        }
        let mut o = obj(json!({"spec": {"backends": [{"weight": null}, {"weight": "x"}]}}));
        weights_up(&mut o);
        assert_eq!(
            o["spec"]["backends"],
            json!([{"weight": null}, {"weight": "x"}])
        );
    }
}
