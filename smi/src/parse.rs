//! Tolerant parsing of any served SMI version into the hub, and rendering back.

use serde_json::{Map, Value};

use crate::convert::Versioned;
use crate::hub::{self, SmiObject};
use crate::{access, specs, split, SmiError};

/// Calls `$f::<T>()` for the typed struct `T` serving `(api_version, kind)`, or evaluates
/// `$none` when that pair is not served.
macro_rules! dispatch {
    ($api_version:expr, $kind:expr, $f:ident ( $($arg:expr),* ), $none:expr) => {
        match ($api_version, $kind) {
            (split::v1alpha1::API_VERSION, "TrafficSplit") => $f::<split::v1alpha1::TrafficSplit>($($arg),*),
            (split::v1alpha2::API_VERSION, "TrafficSplit") => $f::<split::v1alpha2::TrafficSplit>($($arg),*),
            (split::v1alpha3::API_VERSION, "TrafficSplit") => $f::<split::v1alpha3::TrafficSplit>($($arg),*),
            (split::v1alpha4::API_VERSION, "TrafficSplit") => $f::<split::v1alpha4::TrafficSplit>($($arg),*),
            (access::v1alpha1::API_VERSION, "TrafficTarget") => $f::<access::v1alpha1::TrafficTarget>($($arg),*),
            (access::v1alpha2::API_VERSION, "TrafficTarget") => $f::<access::v1alpha2::TrafficTarget>($($arg),*),
            (access::v1alpha3::API_VERSION, "TrafficTarget") => $f::<access::v1alpha3::TrafficTarget>($($arg),*),
            (specs::v1alpha1::API_VERSION, "HTTPRouteGroup") => $f::<specs::v1alpha1::HTTPRouteGroup>($($arg),*),
            (specs::v1alpha2::API_VERSION, "HTTPRouteGroup") => $f::<specs::v1alpha2::HTTPRouteGroup>($($arg),*),
            (specs::v1alpha3::API_VERSION, "HTTPRouteGroup") => $f::<specs::v1alpha3::HTTPRouteGroup>($($arg),*),
            (specs::v1alpha4::API_VERSION, "HTTPRouteGroup") => $f::<specs::v1alpha4::HTTPRouteGroup>($($arg),*),
            (specs::v1alpha1::API_VERSION, "TCPRoute") => $f::<specs::v1alpha1::TCPRoute>($($arg),*),
            (specs::v1alpha2::API_VERSION, "TCPRoute") => $f::<specs::v1alpha2::TCPRoute>($($arg),*),
            (specs::v1alpha3::API_VERSION, "TCPRoute") => $f::<specs::v1alpha3::TCPRoute>($($arg),*),
            (specs::v1alpha4::API_VERSION, "TCPRoute") => $f::<specs::v1alpha4::TCPRoute>($($arg),*),
            (specs::v1alpha1::API_VERSION, "UDPRoute") => $f::<specs::v1alpha1::UDPRoute>($($arg),*),
            (specs::v1alpha2::API_VERSION, "UDPRoute") => $f::<specs::v1alpha2::UDPRoute>($($arg),*),
            (specs::v1alpha3::API_VERSION, "UDPRoute") => $f::<specs::v1alpha3::UDPRoute>($($arg),*),
            (specs::v1alpha4::API_VERSION, "UDPRoute") => $f::<specs::v1alpha4::UDPRoute>($($arg),*),
            _ => $none,
        }
    };
}

/// Every served `(apiVersion, kind)` pair, oldest version first per kind (from
/// [`crate::kinds::SMI_KINDS`]).
pub fn served_versions() -> &'static [(&'static str, &'static str)] {
    static SERVED: std::sync::OnceLock<Vec<(&'static str, &'static str)>> =
        std::sync::OnceLock::new();
    SERVED.get_or_init(|| {
        crate::kinds::SMI_KINDS
            .iter()
            .flat_map(|k| {
                k.versions
                    .iter()
                    .filter(|v| v.served)
                    .map(move |v| (v.api_version, k.kind))
            })
            .collect()
    })
}

/// Whether weft serves this `(apiVersion, kind)` as SMI.
pub fn is_smi(api_version: &str, kind: &str) -> bool {
    served_versions()
        .iter()
        .any(|(v, k)| *v == api_version && *k == kind)
}

/// Reads any served SMI object (from YAML or the API) into the hub. A missing
/// `metadata.namespace` is taken to be `default`; see [`from_value_in`].
pub fn from_value(v: &Value) -> Result<SmiObject, SmiError> {
    from_value_in(v, "default")
}

/// Like [`from_value`], with the namespace to assume when `metadata.namespace` is missing.
///
/// Tolerant of shapes seen in real manifests: `headers` as a map or a list of maps; fields at
/// the top level where the version wants them under `spec` and vice versa (`matches`, and
/// `rules`/`specs` for TrafficTarget); `matches` on versions that have none (kept, not
/// dropped). Normalises: reference namespaces default to the object's namespace, header names
/// are lower-cased, methods upper-cased.
pub fn from_value_in(v: &Value, default_namespace: &str) -> Result<SmiObject, SmiError> {
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or(SmiError::MissingField("apiVersion"))?;
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .ok_or(SmiError::MissingField("kind"))?;
    if !is_smi(api_version, kind) {
        return Err(SmiError::NotSmi {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        });
    }
    // SMI objects nest a handful of levels; anything deeper is refused before it is copied,
    // converted or compiled (a parser's own limits may be higher, or absent).
    let depth = crate::limits::value_depth(v);
    if depth > crate::limits::MAX_NESTING {
        return Err(SmiError::invalid(
            "",
            format!(
                "collections nested {depth} deep, more than the limit of {}",
                crate::limits::MAX_NESTING
            ),
        ));
    }
    if let Some(at_storage) = via_kept_storage_body(v, api_version, kind) {
        let mut hub = from_value_in(&at_storage, default_namespace)?;
        set_api_version(&mut hub, api_version);
        return Ok(hub);
    }
    let mut v = v.clone();
    let obj = v
        .as_object_mut()
        .ok_or(SmiError::MissingField("metadata"))?;
    normalise_shape(obj, api_version, kind, default_namespace);
    let mut hub = dispatch!(
        api_version,
        kind,
        parse_as(&v, api_version, kind),
        unreachable_pair(api_version, kind)
    )?;
    keep_unexpressible(&mut hub, &v)?;
    Ok(hub)
}

fn set_api_version(hub: &mut SmiObject, api_version: &str) {
    let meta = match hub {
        SmiObject::TrafficSplit(o) => &mut o.meta,
        SmiObject::TrafficTarget(o) => &mut o.meta,
        SmiObject::HTTPRouteGroup(o) => &mut o.meta,
        SmiObject::PortRoute(o) => &mut o.meta,
    };
    meta.api_version = api_version.to_string();
}

fn unreachable_pair(api_version: &str, kind: &str) -> Result<SmiObject, SmiError> {
    Err(SmiError::NotSmi {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    })
}

fn parse_as<T: Versioned>(v: &Value, api_version: &str, kind: &str) -> Result<SmiObject, SmiError> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| SmiError::Malformed {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        message: e.to_string(),
    })?;
    typed.to_hub()
}

/// Whether the version nests the kind's fields under `spec`.
fn wants_spec(api_version: &str, kind: &str) -> bool {
    match kind {
        "TrafficSplit" => true,
        "TrafficTarget" => api_version != access::v1alpha1::API_VERSION,
        _ => {
            api_version == specs::v1alpha3::API_VERSION
                || api_version == specs::v1alpha4::API_VERSION
        }
    }
}

fn normalise_shape(obj: &mut Map<String, Value>, api_version: &str, kind: &str, default_ns: &str) {
    // metadata.namespace default
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = meta.as_object_mut() {
        let missing = m
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if missing && !default_ns.is_empty() {
            m.insert("namespace".into(), Value::String(default_ns.to_string()));
        }
    }
    let fields: &[&str] = match kind {
        "TrafficSplit" => &["service", "backends", "matches"],
        "TrafficTarget" => &["destination", "sources", "rules", "specs"],
        _ => &["matches"],
    };
    if wants_spec(api_version, kind) {
        let mut spec = match obj.remove("spec") {
            Some(Value::Object(s)) => s,
            _ => Map::new(),
        };
        for f in fields {
            if !spec.contains_key(*f) {
                if let Some(x) = obj.remove(*f) {
                    spec.insert((*f).to_string(), x);
                }
            }
        }
        if kind == "TrafficTarget" && !spec.contains_key("rules") {
            if let Some(x) = spec.remove("specs") {
                spec.insert("rules".into(), x);
            }
        }
        obj.insert("spec".into(), Value::Object(spec));
    } else {
        if let Some(Value::Object(spec)) = obj.remove("spec") {
            for (k, x) in spec {
                if fields.contains(&k.as_str()) && !obj.contains_key(&k) {
                    obj.insert(k, x);
                }
            }
        }
        if kind == "TrafficTarget" && !obj.contains_key("specs") {
            if let Some(x) = obj.remove("rules") {
                obj.insert("specs".into(), x);
            }
        }
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get("spec")
        .and_then(|s| s.get(name))
        .or_else(|| v.get(name))
        .filter(|x| !x.is_null())
}

fn malformed(hub: &SmiObject, e: serde_json::Error) -> SmiError {
    SmiError::Malformed {
        api_version: hub.meta().api_version.clone(),
        kind: hub.kind().to_string(),
        message: e.to_string(),
    }
}

/// Keeps what a manifest says even where its version has no field for it, rather than
/// silently dropping a restriction (a split's `matches`, a route's headers or ports).
fn keep_unexpressible(hub: &mut SmiObject, v: &Value) -> Result<(), SmiError> {
    let snapshot = hub.clone();
    match hub {
        SmiObject::TrafficSplit(ts) if ts.matches.is_empty() => {
            if let Some(m) = field(v, "matches") {
                let refs: Vec<split::MatchRef> =
                    serde_json::from_value(m.clone()).map_err(|e| malformed(&snapshot, e))?;
                ts.matches = refs.iter().map(hub::TypedRef::from).collect();
            }
        }
        SmiObject::HTTPRouteGroup(g) => {
            if let Some(Value::Array(ms)) = field(v, "matches") {
                for (i, (m, raw)) in g.matches.iter_mut().zip(ms).enumerate() {
                    if !m.headers.is_empty() {
                        continue;
                    }
                    if let Some(h) = raw.get("headers") {
                        let h: specs::Headers = serde_json::from_value(h.clone())
                            .map_err(|e| malformed(&snapshot, e))?;
                        for (k, val) in h.0 {
                            let k = k.to_ascii_lowercase();
                            if m.headers.get(&k).is_some_and(|prev| *prev != val) {
                                return Err(SmiError::invalid(
                                    format!("matches[{i}].headers"),
                                    format!("header {k:?} given twice with different values"),
                                ));
                            }
                            m.headers.insert(k, val);
                        }
                    }
                }
            }
        }
        SmiObject::PortRoute(r) if r.matches.is_none() => {
            if let Some(m) = field(v, "matches") {
                let pm: specs::PortMatch =
                    serde_json::from_value(m.clone()).map_err(|e| malformed(&snapshot, e))?;
                r.matches = Some(hub::PortMatch {
                    name: pm.name,
                    ports: pm.ports,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// Renders a hub object as a full object (`apiVersion`, `kind`, `metadata`, `spec`) of the
/// given served version: rendered at the storage version, then converted the way the
/// conversion webhook converts (so an older version carries what it cannot express in the
/// annotation the webhook uses, and [`from_value`] reads it back).
pub fn to_value(obj: &SmiObject, api_version: &str) -> Result<Value, SmiError> {
    let kind = obj.kind();
    let not_served = || SmiError::NotSmi {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    };
    if !is_smi(api_version, kind) {
        return Err(not_served());
    }
    let storage = crate::kinds::by_kind(None, kind)
        .ok_or_else(not_served)?
        .storage()
        .api_version;
    let mut v = dispatch!(storage, kind, render_as(obj), Err(not_served()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(storage.to_string()));
        o.insert("kind".into(), Value::String(kind.to_string()));
        o.remove("status");
    }
    if api_version == storage {
        return Ok(v);
    }
    crate::convert::convert_object(&v, api_version)
}

/// The object at its kind's storage version, when it is at an older one and carries the
/// storage body the conversion webhook keeps (see [`crate::convert::fidelity`]).
fn via_kept_storage_body(v: &Value, api_version: &str, kind: &str) -> Option<Value> {
    let storage = crate::kinds::by_kind(None, kind)?.storage();
    if storage.api_version == api_version {
        return None;
    }
    let key = crate::convert::fidelity::kept_annotation(storage.name);
    v.pointer("/metadata/annotations")?.get(&key)?;
    crate::convert::convert_object(v, storage.api_version).ok()
}

fn render_as<T: Versioned>(obj: &SmiObject) -> Result<Value, SmiError> {
    let typed = T::from_hub(obj)?;
    serde_json::to_value(&typed).map_err(|e| SmiError::Malformed {
        api_version: T::API_VERSION.to_string(),
        kind: T::KIND.to_string(),
        message: e.to_string(),
    })
}
