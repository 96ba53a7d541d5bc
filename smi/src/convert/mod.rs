//! Conversions between every served version and the hub, and the CRD conversion webhook logic.
//!
//! * [`Versioned`]: every typed version to and from the hub (what weft reads and renders).
//!   The storage version carries every hub value, exact weights included
//!   ([`crate::split::ANN_ORIGINAL_WEIGHTS`] when they are not whole numbers);
//!   [`crate::to_value`] renders older versions from it with [`convert_object`].
//! * [`convert_object`]: the conversion webhook's rewrite of whole objects between versions,
//!   total and faithful ([`fidelity`], shapes in `shapes`).
//!
//! The typed readers of older versions still honour the annotations earlier weft releases
//! wrote ([`WEFT_ANNOTATIONS`]); nothing writes them any more except
//! [`crate::split::ANN_ORIGINAL_WEIGHTS`].

pub mod fidelity;
mod shapes;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::hub::{self, SmiObject};
use crate::{access, specs, split, SmiError};

/// A typed object of one served version.
pub trait Versioned: Serialize + DeserializeOwned {
    const API_VERSION: &'static str;
    const KIND: &'static str;
    /// To the hub, normalised (namespaces defaulted, header names lower-case, methods upper-case).
    fn to_hub(&self) -> Result<SmiObject, SmiError>;
    /// From the hub; fails if `obj` is another kind or holds a value the version cannot carry
    /// even in an annotation.
    fn from_hub(obj: &SmiObject) -> Result<Self, SmiError>;
}

/// Every annotation weft uses to keep values a version cannot express.
pub const WEFT_ANNOTATIONS: [&str; 4] = [
    split::ANN_ORIGINAL_WEIGHTS,
    split::ANN_ORIGINAL_MATCHES,
    specs::ANN_ORIGINAL_HEADERS,
    specs::ANN_ORIGINAL_MATCHES,
];

// ---------------------------------------------------------------------------------------------
// metadata and annotations

fn time_to_string<T: Serialize>(t: &T) -> Option<String> {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

pub(crate) fn meta_to_hub(m: &ObjectMeta, api_version: &str) -> hub::Meta {
    hub::Meta {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
        generation: m.generation,
        creation_timestamp: m.creation_timestamp.as_ref().and_then(time_to_string),
        uid: m.uid.clone(),
        api_version: api_version.to_string(),
    }
}

pub(crate) fn meta_from_hub(h: &hub::Meta) -> ObjectMeta {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    ObjectMeta {
        name: non_empty(&h.name),
        namespace: non_empty(&h.namespace),
        generation: h.generation,
        uid: h.uid.clone(),
        // An unparsable timestamp cannot be represented in ObjectMeta and is dropped.
        creation_timestamp: h
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::from_value(Value::String(t.clone())).ok()),
        ..ObjectMeta::default()
    }
}

fn annotation<T: DeserializeOwned>(m: &ObjectMeta, key: &str) -> Option<T> {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|s| serde_json::from_str(s).ok())
}

fn set_annotation<T: Serialize>(m: &mut ObjectMeta, key: &str, value: &T) {
    if let Ok(s) = serde_json::to_string(value) {
        m.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), s);
    }
}

fn ns_or(ns: &Option<String>, default: &str) -> String {
    match ns {
        Some(n) if !n.is_empty() => n.clone(),
        _ => default.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// TrafficSplit

fn weights_from_int(backends: &[split::Backend], meta: &ObjectMeta) -> Result<Vec<u64>, SmiError> {
    if let Some(orig) = annotation::<Vec<u64>>(meta, split::ANN_ORIGINAL_WEIGHTS) {
        let consistent = orig.len() == backends.len()
            && orig
                .iter()
                .zip(backends)
                .all(|(o, b)| i64::try_from(*o).ok() == Some(b.weight));
        if consistent {
            return Ok(orig);
        }
    }
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let path = format!("spec.backends[{i}].weight");
            let w = u64::try_from(b.weight).map_err(|_| {
                SmiError::invalid(
                    &path,
                    format!("{} is negative; weights must be >= 0", b.weight),
                )
            })?;
            w.checked_mul(1000)
                .ok_or_else(|| SmiError::invalid(&path, format!("{w} is too large")))
        })
        .collect()
}

fn weights_to_int(
    backends: &[hub::Backend],
    meta: &mut ObjectMeta,
) -> Result<Vec<split::Backend>, SmiError> {
    let exact = backends.iter().all(|b| b.weight_milli.is_multiple_of(1000));
    if !exact {
        // Integer weights are relative: writing the milli-units themselves keeps every ratio,
        // and the annotation keeps the exact values.
        let milli: Vec<u64> = backends.iter().map(|b| b.weight_milli).collect();
        set_annotation(meta, split::ANN_ORIGINAL_WEIGHTS, &milli);
    }
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let w = if exact {
                b.weight_milli / 1000
            } else {
                b.weight_milli
            };
            let weight = i64::try_from(w).map_err(|_| {
                SmiError::invalid(
                    format!("spec.backends[{i}].weight"),
                    format!("{w} is too large"),
                )
            })?;
            Ok(split::Backend {
                service: b.service.clone(),
                weight,
            })
        })
        .collect()
}

fn split_matches_from_annotation(meta: &ObjectMeta) -> Vec<hub::TypedRef> {
    annotation(meta, split::ANN_ORIGINAL_MATCHES).unwrap_or_default()
}

fn split_meta(h: &hub::TrafficSplit, keep_matches_in_annotation: bool) -> ObjectMeta {
    let mut meta = meta_from_hub(&h.meta);
    if keep_matches_in_annotation && !h.matches.is_empty() {
        set_annotation(&mut meta, split::ANN_ORIGINAL_MATCHES, &h.matches);
    }
    meta
}

fn as_split(obj: &SmiObject) -> Result<&hub::TrafficSplit, SmiError> {
    match obj {
        SmiObject::TrafficSplit(s) => Ok(s),
        other => Err(SmiError::KindMismatch {
            expected: "TrafficSplit",
            found: other.kind(),
        }),
    }
}

impl Versioned for split::v1alpha1::TrafficSplit {
    const API_VERSION: &'static str = split::v1alpha1::API_VERSION;
    const KIND: &'static str = "TrafficSplit";

    fn to_hub(&self) -> Result<SmiObject, SmiError> {
        Ok(SmiObject::TrafficSplit(hub::TrafficSplit {
            meta: meta_to_hub(&self.metadata, Self::API_VERSION),
            service: self.spec.service.clone(),
            backends: self
                .spec
                .backends
                .iter()
                .map(|b| hub::Backend {
                    service: b.service.clone(),
                    weight_milli: b.weight.0,
                })
                .collect(),
            matches: split_matches_from_annotation(&self.metadata),
        }))
    }

    fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
        let h = as_split(obj)?;
        let spec = split::v1alpha1::TrafficSplitSpec {
            service: h.service.clone(),
            backends: h
                .backends
                .iter()
                .map(|b| split::v1alpha1::Backend {
                    service: b.service.clone(),
                    weight: crate::quantity::MilliQuantity(b.weight_milli),
                })
                .collect(),
        };
        let mut o = Self::new(&h.meta.name, spec);
        o.metadata = split_meta(h, true);
        Ok(o)
    }
}

impl Versioned for split::v1alpha2::TrafficSplit {
    const API_VERSION: &'static str = split::v1alpha2::API_VERSION;
    const KIND: &'static str = "TrafficSplit";

    fn to_hub(&self) -> Result<SmiObject, SmiError> {
        let weights = weights_from_int(&self.spec.backends, &self.metadata)?;
        Ok(SmiObject::TrafficSplit(hub::TrafficSplit {
            meta: meta_to_hub(&self.metadata, Self::API_VERSION),
            service: self.spec.service.clone(),
            backends: self
                .spec
                .backends
                .iter()
                .zip(weights)
                .map(|(b, weight_milli)| hub::Backend {
                    service: b.service.clone(),
                    weight_milli,
                })
                .collect(),
            matches: split_matches_from_annotation(&self.metadata),
        }))
    }

    fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
        let h = as_split(obj)?;
        let mut meta = split_meta(h, true);
        let backends = weights_to_int(&h.backends, &mut meta)?;
        let mut o = Self::new(
            &h.meta.name,
            split::v1alpha2::TrafficSplitSpec {
                service: h.service.clone(),
                backends,
            },
        );
        o.metadata = meta;
        Ok(o)
    }
}

macro_rules! split_with_matches {
    ($m:ident) => {
        impl Versioned for split::$m::TrafficSplit {
            const API_VERSION: &'static str = split::$m::API_VERSION;
            const KIND: &'static str = "TrafficSplit";

            fn to_hub(&self) -> Result<SmiObject, SmiError> {
                let weights = weights_from_int(&self.spec.backends, &self.metadata)?;
                Ok(SmiObject::TrafficSplit(hub::TrafficSplit {
                    meta: meta_to_hub(&self.metadata, Self::API_VERSION),
                    service: self.spec.service.clone(),
                    backends: self
                        .spec
                        .backends
                        .iter()
                        .zip(weights)
                        .map(|(b, weight_milli)| hub::Backend {
                            service: b.service.clone(),
                            weight_milli,
                        })
                        .collect(),
                    matches: self.spec.matches.iter().map(hub::TypedRef::from).collect(),
                }))
            }

            fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
                let h = as_split(obj)?;
                let mut meta = split_meta(h, false);
                let backends = weights_to_int(&h.backends, &mut meta)?;
                let mut o = Self::new(
                    &h.meta.name,
                    split::$m::TrafficSplitSpec {
                        service: h.service.clone(),
                        backends,
                        matches: h.matches.iter().map(split::MatchRef::from).collect(),
                    },
                );
                o.metadata = meta;
                Ok(o)
            }
        }
    };
}
split_with_matches!(v1alpha3);
split_with_matches!(v1alpha4);

// ---------------------------------------------------------------------------------------------
// TrafficTarget

pub(crate) fn route_kind(kind: &str) -> Option<hub::RouteKind> {
    [
        hub::RouteKind::HTTPRouteGroup,
        hub::RouteKind::TCPRoute,
        hub::RouteKind::UDPRoute,
    ]
    .into_iter()
    .find(|k| k.as_str().eq_ignore_ascii_case(kind))
}

fn rules_to_hub(
    rules: &[access::Rule],
    field: &str,
) -> Result<Vec<hub::TrafficTargetRule>, SmiError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let kind = route_kind(&r.kind).ok_or_else(|| {
                SmiError::invalid(
                    format!("{field}[{i}].kind"),
                    format!(
                        "unknown rule kind {:?}; expected HTTPRouteGroup, TCPRoute or UDPRoute",
                        r.kind
                    ),
                )
            })?;
            Ok(hub::TrafficTargetRule {
                kind,
                name: r.name.clone(),
                matches: r.matches.clone(),
            })
        })
        .collect()
}

fn rules_from_hub(rules: &[hub::TrafficTargetRule]) -> Vec<access::Rule> {
    rules
        .iter()
        .map(|r| access::Rule {
            kind: r.kind.as_str().to_string(),
            name: r.name.clone(),
            matches: r.matches.clone(),
        })
        .collect()
}

fn port_from_int(p: Option<i64>, path: &str) -> Result<Option<u16>, SmiError> {
    p.map(|p| {
        u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| SmiError::invalid(path, format!("port {p} is not in 1..=65535")))
    })
    .transpose()
}

fn subject_to_hub(s: &access::Subject, ns: &str, path: &str) -> Result<hub::IdentityRef, SmiError> {
    Ok(hub::IdentityRef {
        kind: s.kind.clone(),
        name: s.name.clone(),
        namespace: ns_or(&s.namespace, ns),
        port: port_from_int(s.port, &format!("{path}.port"))?,
    })
}

fn subject_from_hub(s: &hub::IdentityRef) -> access::Subject {
    access::Subject {
        kind: s.kind.clone(),
        name: s.name.clone(),
        namespace: (!s.namespace.is_empty()).then(|| s.namespace.clone()),
        port: s.port.map(i64::from),
    }
}

fn as_target(obj: &SmiObject) -> Result<&hub::TrafficTarget, SmiError> {
    match obj {
        SmiObject::TrafficTarget(t) => Ok(t),
        other => Err(SmiError::KindMismatch {
            expected: "TrafficTarget",
            found: other.kind(),
        }),
    }
}

macro_rules! target_with_spec {
    ($m:ident) => {
        impl Versioned for access::$m::TrafficTarget {
            const API_VERSION: &'static str = access::$m::API_VERSION;
            const KIND: &'static str = "TrafficTarget";

            fn to_hub(&self) -> Result<SmiObject, SmiError> {
                let meta = meta_to_hub(&self.metadata, Self::API_VERSION);
                let ns = meta.namespace.clone();
                Ok(SmiObject::TrafficTarget(hub::TrafficTarget {
                    destination: subject_to_hub(&self.spec.destination, &ns, "spec.destination")?,
                    sources: self
                        .spec
                        .sources
                        .iter()
                        .enumerate()
                        .map(|(i, s)| subject_to_hub(s, &ns, &format!("spec.sources[{i}]")))
                        .collect::<Result<_, _>>()?,
                    rules: rules_to_hub(&self.spec.rules, "spec.rules")?,
                    meta,
                }))
            }

            fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
                let h = as_target(obj)?;
                let mut o = Self::new(
                    &h.meta.name,
                    access::$m::TrafficTargetSpec {
                        destination: subject_from_hub(&h.destination),
                        sources: h.sources.iter().map(subject_from_hub).collect(),
                        rules: rules_from_hub(&h.rules),
                    },
                );
                o.metadata = meta_from_hub(&h.meta);
                Ok(o)
            }
        }
    };
}
target_with_spec!(v1alpha2);
target_with_spec!(v1alpha3);

fn subject_v1_to_hub(
    s: &access::v1alpha1::Subject,
    ns: &str,
    path: &str,
) -> Result<hub::IdentityRef, SmiError> {
    let port = match s.port.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(p) => {
            let n: i64 = p.parse().map_err(|_| {
                SmiError::invalid(
                    format!("{path}.port"),
                    format!("port {p:?} is not a number"),
                )
            })?;
            port_from_int(Some(n), &format!("{path}.port"))?
        }
    };
    Ok(hub::IdentityRef {
        kind: s.kind.clone(),
        name: s.name.clone(),
        namespace: ns_or(&s.namespace, ns),
        port,
    })
}

fn subject_v1_from_hub(s: &hub::IdentityRef) -> access::v1alpha1::Subject {
    access::v1alpha1::Subject {
        kind: s.kind.clone(),
        name: s.name.clone(),
        namespace: (!s.namespace.is_empty()).then(|| s.namespace.clone()),
        port: s.port.map(|p| p.to_string()),
    }
}

impl Versioned for access::v1alpha1::TrafficTarget {
    const API_VERSION: &'static str = access::v1alpha1::API_VERSION;
    const KIND: &'static str = "TrafficTarget";

    fn to_hub(&self) -> Result<SmiObject, SmiError> {
        let meta = meta_to_hub(&self.metadata, Self::API_VERSION);
        let ns = meta.namespace.clone();
        Ok(SmiObject::TrafficTarget(hub::TrafficTarget {
            destination: subject_v1_to_hub(&self.destination, &ns, "destination")?,
            sources: self
                .sources
                .iter()
                .enumerate()
                .map(|(i, s)| subject_v1_to_hub(s, &ns, &format!("sources[{i}]")))
                .collect::<Result<_, _>>()?,
            rules: rules_to_hub(&self.specs, "specs")?,
            meta,
        }))
    }

    fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
        let h = as_target(obj)?;
        Ok(Self {
            metadata: meta_from_hub(&h.meta),
            destination: subject_v1_from_hub(&h.destination),
            sources: h.sources.iter().map(subject_v1_from_hub).collect(),
            specs: rules_from_hub(&h.rules),
            status: None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// HTTPRouteGroup

fn normalise_headers(
    headers: &BTreeMap<String, String>,
    path: &str,
) -> Result<BTreeMap<String, String>, SmiError> {
    let mut out = BTreeMap::new();
    for (k, v) in headers {
        let lk = k.to_ascii_lowercase();
        if let Some(prev) = out.insert(lk.clone(), v.clone()) {
            if prev != *v {
                return Err(SmiError::invalid(
                    format!("{path}.headers"),
                    format!("header {lk:?} given twice with different values"),
                ));
            }
        }
    }
    Ok(out)
}

fn http_match_to_hub(m: &specs::HttpMatch, path: &str) -> Result<hub::HttpMatch, SmiError> {
    Ok(hub::HttpMatch {
        name: m.name.clone(),
        path_regex: m.path_regex.clone(),
        methods: m.methods.iter().map(|x| x.to_ascii_uppercase()).collect(),
        headers: normalise_headers(&m.headers.0, path)?,
    })
}

fn http_match_from_hub(m: &hub::HttpMatch) -> specs::HttpMatch {
    specs::HttpMatch {
        name: m.name.clone(),
        methods: m.methods.clone(),
        path_regex: m.path_regex.clone(),
        headers: specs::Headers(m.headers.clone()),
    }
}

fn http_matches_to_hub(
    ms: &[specs::HttpMatch],
    field: &str,
) -> Result<Vec<hub::HttpMatch>, SmiError> {
    ms.iter()
        .enumerate()
        .map(|(i, m)| http_match_to_hub(m, &format!("{field}[{i}]")))
        .collect()
}

fn as_http(obj: &SmiObject) -> Result<&hub::HttpRouteGroup, SmiError> {
    match obj {
        SmiObject::HTTPRouteGroup(g) => Ok(g),
        other => Err(SmiError::KindMismatch {
            expected: "HTTPRouteGroup",
            found: other.kind(),
        }),
    }
}

macro_rules! http_with_spec {
    ($m:ident) => {
        impl Versioned for specs::$m::HTTPRouteGroup {
            const API_VERSION: &'static str = specs::$m::API_VERSION;
            const KIND: &'static str = "HTTPRouteGroup";

            fn to_hub(&self) -> Result<SmiObject, SmiError> {
                Ok(SmiObject::HTTPRouteGroup(hub::HttpRouteGroup {
                    meta: meta_to_hub(&self.metadata, Self::API_VERSION),
                    matches: http_matches_to_hub(&self.spec.matches, "spec.matches")?,
                }))
            }

            fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
                let h = as_http(obj)?;
                let mut o = Self::new(
                    &h.meta.name,
                    specs::$m::HTTPRouteGroupSpec {
                        matches: h.matches.iter().map(http_match_from_hub).collect(),
                    },
                );
                o.metadata = meta_from_hub(&h.meta);
                Ok(o)
            }
        }
    };
}
http_with_spec!(v1alpha3);
http_with_spec!(v1alpha4);

impl Versioned for specs::v1alpha2::HTTPRouteGroup {
    const API_VERSION: &'static str = specs::v1alpha2::API_VERSION;
    const KIND: &'static str = "HTTPRouteGroup";

    fn to_hub(&self) -> Result<SmiObject, SmiError> {
        Ok(SmiObject::HTTPRouteGroup(hub::HttpRouteGroup {
            meta: meta_to_hub(&self.metadata, Self::API_VERSION),
            matches: http_matches_to_hub(&self.matches, "matches")?,
        }))
    }

    fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
        let h = as_http(obj)?;
        Ok(Self {
            metadata: meta_from_hub(&h.meta),
            matches: h.matches.iter().map(http_match_from_hub).collect(),
            status: None,
        })
    }
}

impl Versioned for specs::v1alpha1::HTTPRouteGroup {
    const API_VERSION: &'static str = specs::v1alpha1::API_VERSION;
    const KIND: &'static str = "HTTPRouteGroup";

    fn to_hub(&self) -> Result<SmiObject, SmiError> {
        let headers: Vec<BTreeMap<String, String>> =
            annotation(&self.metadata, specs::ANN_ORIGINAL_HEADERS)
                .filter(|h: &Vec<BTreeMap<String, String>>| h.len() == self.matches.len())
                .unwrap_or_else(|| vec![BTreeMap::new(); self.matches.len()]);
        let matches = self
            .matches
            .iter()
            .zip(headers)
            .map(|(m, headers)| specs::HttpMatch {
                name: m.name.clone(),
                methods: m.methods.clone(),
                path_regex: m.path_regex.clone(),
                headers: specs::Headers(headers),
            })
            .collect::<Vec<_>>();
        Ok(SmiObject::HTTPRouteGroup(hub::HttpRouteGroup {
            meta: meta_to_hub(&self.metadata, Self::API_VERSION),
            matches: http_matches_to_hub(&matches, "matches")?,
        }))
    }

    fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
        let h = as_http(obj)?;
        let mut metadata = meta_from_hub(&h.meta);
        if h.matches.iter().any(|m| !m.headers.is_empty()) {
            let headers: Vec<_> = h.matches.iter().map(|m| m.headers.clone()).collect();
            set_annotation(&mut metadata, specs::ANN_ORIGINAL_HEADERS, &headers);
        }
        Ok(Self {
            metadata,
            matches: h
                .matches
                .iter()
                .map(|m| specs::HttpMatchV1 {
                    name: m.name.clone(),
                    methods: m.methods.clone(),
                    path_regex: m.path_regex.clone(),
                })
                .collect(),
            status: None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// TCPRoute / UDPRoute

fn port_match_to_hub(m: &specs::PortMatch) -> hub::PortMatch {
    hub::PortMatch {
        name: m.name.clone(),
        ports: m.ports.clone(),
    }
}

fn port_match_from_hub(m: &hub::PortMatch) -> specs::PortMatch {
    specs::PortMatch {
        name: m.name.clone(),
        ports: m.ports.clone(),
    }
}

fn as_port_route(obj: &SmiObject, kind: hub::RouteKind) -> Result<&hub::PortRoute, SmiError> {
    match obj {
        SmiObject::PortRoute(r) if r.kind == kind => Ok(r),
        other => Err(SmiError::KindMismatch {
            expected: kind.as_str(),
            found: other.kind(),
        }),
    }
}

fn port_meta(h: &hub::PortRoute) -> ObjectMeta {
    let mut meta = meta_from_hub(&h.meta);
    if let Some(m) = &h.matches {
        set_annotation(
            &mut meta,
            specs::ANN_ORIGINAL_MATCHES,
            &port_match_from_hub(m),
        );
    }
    meta
}

fn port_matches_from_annotation(meta: &ObjectMeta) -> Option<hub::PortMatch> {
    annotation::<specs::PortMatch>(meta, specs::ANN_ORIGINAL_MATCHES).map(|m| port_match_to_hub(&m))
}

macro_rules! port_route {
    (native $m:ident, $ty:ident, $spec:ident, $kind:ident) => {
        impl Versioned for specs::$m::$ty {
            const API_VERSION: &'static str = specs::$m::API_VERSION;
            const KIND: &'static str = stringify!($ty);

            fn to_hub(&self) -> Result<SmiObject, SmiError> {
                Ok(SmiObject::PortRoute(hub::PortRoute {
                    meta: meta_to_hub(&self.metadata, Self::API_VERSION),
                    kind: hub::RouteKind::$kind,
                    matches: self.spec.matches.as_ref().map(port_match_to_hub),
                }))
            }

            fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
                let h = as_port_route(obj, hub::RouteKind::$kind)?;
                let mut o = Self::new(
                    &h.meta.name,
                    specs::$m::$spec {
                        matches: h.matches.as_ref().map(port_match_from_hub),
                    },
                );
                o.metadata = meta_from_hub(&h.meta);
                Ok(o)
            }
        }
    };
    (empty_spec $m:ident, $ty:ident, $spec:ident, $kind:ident) => {
        impl Versioned for specs::$m::$ty {
            const API_VERSION: &'static str = specs::$m::API_VERSION;
            const KIND: &'static str = stringify!($ty);

            fn to_hub(&self) -> Result<SmiObject, SmiError> {
                Ok(SmiObject::PortRoute(hub::PortRoute {
                    meta: meta_to_hub(&self.metadata, Self::API_VERSION),
                    kind: hub::RouteKind::$kind,
                    matches: port_matches_from_annotation(&self.metadata),
                }))
            }

            fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
                let h = as_port_route(obj, hub::RouteKind::$kind)?;
                let mut o = Self::new(&h.meta.name, specs::$m::$spec {});
                o.metadata = port_meta(h);
                Ok(o)
            }
        }
    };
    (no_spec $m:ident, $ty:ident, $kind:ident) => {
        impl Versioned for specs::$m::$ty {
            const API_VERSION: &'static str = specs::$m::API_VERSION;
            const KIND: &'static str = stringify!($ty);

            fn to_hub(&self) -> Result<SmiObject, SmiError> {
                Ok(SmiObject::PortRoute(hub::PortRoute {
                    meta: meta_to_hub(&self.metadata, Self::API_VERSION),
                    kind: hub::RouteKind::$kind,
                    matches: port_matches_from_annotation(&self.metadata),
                }))
            }

            fn from_hub(obj: &SmiObject) -> Result<Self, SmiError> {
                let h = as_port_route(obj, hub::RouteKind::$kind)?;
                Ok(Self {
                    metadata: port_meta(h),
                    status: None,
                })
            }
        }
    };
}
port_route!(native v1alpha4, TCPRoute, TCPRouteSpec, TCPRoute);
port_route!(native v1alpha4, UDPRoute, UDPRouteSpec, UDPRoute);
port_route!(empty_spec v1alpha3, TCPRoute, TCPRouteSpec, TCPRoute);
port_route!(empty_spec v1alpha3, UDPRoute, UDPRouteSpec, UDPRoute);
port_route!(no_spec v1alpha2, TCPRoute, TCPRoute);
port_route!(no_spec v1alpha2, UDPRoute, UDPRoute);
port_route!(no_spec v1alpha1, TCPRoute, TCPRoute);
port_route!(no_spec v1alpha1, UDPRoute, UDPRoute);

// ---------------------------------------------------------------------------------------------
// the conversion webhook

/// Converts a whole object (as the API server sends it in a ConversionReview, partial objects
/// from server-side apply included) to `desired_api_version`, faithfully and without
/// validating it; see [`fidelity`]. `metadata` and `status` are kept; only weft's own
/// annotations change.
pub fn convert_object(obj: &Value, desired_api_version: &str) -> Result<Value, SmiError> {
    fidelity::convert(obj, desired_api_version)
}
