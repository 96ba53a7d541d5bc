//! The hub: one internal model of every SMI kind, independent of API version.
//!
//! Every served version converts to and from these types (see `crate::convert`); the rest of
//! weft (validator, compiler, status writer) only ever sees the hub. Field semantics follow the
//! SMI spec; where a version cannot express a hub value the conversion keeps it in an annotation
//! so that round trips are lossless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Metadata weft needs from any SMI object, whatever its version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    /// `metadata.generation`, echoed as `observedGeneration` in status conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp` (RFC 3339), used to pick the oldest of conflicting splits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The apiVersion the object was read in (for messages; not semantically relevant).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
}

/// A TrafficSplit (`split.smi-spec.io`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplit {
    pub meta: Meta,
    /// The root (apex) service clients address, in the split's namespace.
    pub service: String,
    pub backends: Vec<Backend>,
    /// Route groups (kind `HTTPRouteGroup`) that restrict which requests are split. Empty: all.
    #[serde(default)]
    pub matches: Vec<TypedRef>,
}

/// One backend of a TrafficSplit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub service: String,
    /// Relative weight in thousandths ("milli-units"), so that v1alpha1 quantities (`500m`)
    /// are exact: v1alpha2+ weight `w` is `w * 1000` here. `0` means no traffic.
    pub weight_milli: u64,
}

/// A reference to another object in the same namespace, by kind and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypedRef {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
}

/// A TrafficTarget (`access.smi-spec.io`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    pub meta: Meta,
    pub destination: IdentityRef,
    pub sources: Vec<IdentityRef>,
    pub rules: Vec<TrafficTargetRule>,
}

/// A workload identity: today always `kind: ServiceAccount`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRef {
    pub kind: String,
    pub name: String,
    /// Namespace of the service account; when absent in the manifest, the object's namespace.
    pub namespace: String,
    /// Destination port (v1alpha2+ `destination.port`); `None`: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A rule of a TrafficTarget: a route object and, optionally, some of its named matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTargetRule {
    pub kind: RouteKind,
    pub name: String,
    /// Names of matches in the route object. Empty: every match of the route object.
    #[serde(default)]
    pub matches: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RouteKind {
    HTTPRouteGroup,
    TCPRoute,
    UDPRoute,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::HTTPRouteGroup => "HTTPRouteGroup",
            RouteKind::TCPRoute => "TCPRoute",
            RouteKind::UDPRoute => "UDPRoute",
        }
    }
}

/// An HTTPRouteGroup (`specs.smi-spec.io`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteGroup {
    pub meta: Meta,
    pub matches: Vec<HttpMatch>,
}

/// One named HTTP match. All present conditions must hold (AND); matches of a group are OR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    pub name: String,
    /// Regex anchored at the start of the path only (a prefix anchor). `None`: any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Upper-case methods, or `*`. Empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name (lower-cased) to value regex; all must match.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A TCPRoute or UDPRoute (`specs.smi-spec.io`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRoute {
    pub meta: Meta,
    pub kind: RouteKind,
    /// The route's match, if any. `None` or empty ports: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<PortMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// Any SMI object, in hub form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum SmiObject {
    TrafficSplit(TrafficSplit),
    TrafficTarget(TrafficTarget),
    HTTPRouteGroup(HttpRouteGroup),
    /// A TCPRoute or UDPRoute (see `PortRoute::kind`).
    PortRoute(PortRoute),
}

impl SmiObject {
    pub fn meta(&self) -> &Meta {
        match self {
            SmiObject::TrafficSplit(o) => &o.meta,
            SmiObject::TrafficTarget(o) => &o.meta,
            SmiObject::HTTPRouteGroup(o) => &o.meta,
            SmiObject::PortRoute(o) => &o.meta,
        }
    }

    /// The Kubernetes kind (`TrafficSplit`, `TrafficTarget`, `HTTPRouteGroup`, `TCPRoute`, `UDPRoute`).
    pub fn kind(&self) -> &'static str {
        match self {
            SmiObject::TrafficSplit(_) => "TrafficSplit",
            SmiObject::TrafficTarget(_) => "TrafficTarget",
            SmiObject::HTTPRouteGroup(_) => "HTTPRouteGroup",
            SmiObject::PortRoute(r) => r.kind.as_str(),
        }
    }
}

/// `status` of every SMI kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmiStatus {
    /// One condition per `type` (a map-list, so server-side apply merges by type).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, `Conflicted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339; set by the status writer, kept when the condition did not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}
