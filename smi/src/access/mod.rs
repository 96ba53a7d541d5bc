//! TrafficTarget (`access.smi-spec.io`), every served version.
//!
//! | version  | shape                                                          |
//! |----------|----------------------------------------------------------------|
//! | v1alpha1 | no `spec`: top-level `destination`, `sources`, `specs[]`; port is a string |
//! | v1alpha2 | `spec.destination`, `spec.sources`, `spec.rules`; port is an integer |
//! | v1alpha3 | same shape as v1alpha2 (current)                               |
//!
//! Every version expresses every hub value, so no annotation is needed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod v1alpha1;
pub mod v1alpha2;
pub mod v1alpha3;

pub const GROUP: &str = "access.smi-spec.io";

/// A workload identity (v1alpha2+): `kind: ServiceAccount`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    pub name: String,
    /// Defaults to the TrafficTarget's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,
}

/// A rule (v1alpha2+ `spec.rules[]`, v1alpha1 `specs[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// `HTTPRouteGroup`, `TCPRoute` or `UDPRoute`.
    #[schemars(extend("enum" = ["HTTPRouteGroup", "TCPRoute", "UDPRoute"]))]
    pub kind: String,
    pub name: String,
    /// Names of matches in the route object; empty or absent: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
}
