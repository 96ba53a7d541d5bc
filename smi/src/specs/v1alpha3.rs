//! `specs.smi-spec.io/v1alpha3`: `spec.matches` for HTTPRouteGroup, `spec: {}` for TCPRoute
//! and UDPRoute (their matches live in an annotation).

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::HttpMatch;
use crate::hub::SmiStatus;

pub const API_VERSION: &str = "specs.smi-spec.io/v1alpha3";

#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "specs.smi-spec.io",
    version = "v1alpha3",
    kind = "HTTPRouteGroup",
    plural = "httproutegroups",
    namespaced,
    status = "SmiStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteGroupSpec {
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
}

#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "specs.smi-spec.io",
    version = "v1alpha3",
    kind = "TCPRoute",
    plural = "tcproutes",
    namespaced,
    status = "SmiStatus"
)]
pub struct TCPRouteSpec {}

#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "specs.smi-spec.io",
    version = "v1alpha3",
    kind = "UDPRoute",
    plural = "udproutes",
    namespaced,
    status = "SmiStatus"
)]
pub struct UDPRouteSpec {}
