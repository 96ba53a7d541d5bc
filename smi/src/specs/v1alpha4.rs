//! `specs.smi-spec.io/v1alpha4` (current): `spec.matches` everywhere, TCPRoute/UDPRoute ports.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::{HttpMatch, PortMatch};
use crate::hub::SmiStatus;

pub const API_VERSION: &str = "specs.smi-spec.io/v1alpha4";

#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "specs.smi-spec.io",
    version = "v1alpha4",
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
    version = "v1alpha4",
    kind = "TCPRoute",
    plural = "tcproutes",
    namespaced,
    status = "SmiStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct TCPRouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<PortMatch>,
}

#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "specs.smi-spec.io",
    version = "v1alpha4",
    kind = "UDPRoute",
    plural = "udproutes",
    namespaced,
    status = "SmiStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct UDPRouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<PortMatch>,
}
