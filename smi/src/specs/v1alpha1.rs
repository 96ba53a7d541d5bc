//! `specs.smi-spec.io/v1alpha1`: no `spec` wrapper; HTTPRouteGroup has top-level `matches`
//! (no `headers`); TCPRoute and UDPRoute have no fields.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::HttpMatchV1 as HttpMatch;
use crate::hub::SmiStatus;

pub const API_VERSION: &str = "specs.smi-spec.io/v1alpha1";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteGroup {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SmiStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TCPRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SmiStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UDPRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SmiStatus>,
}

crate::impl_resource!(
    HTTPRouteGroup,
    "specs.smi-spec.io",
    "v1alpha1",
    "HTTPRouteGroup",
    "httproutegroups"
);
crate::impl_resource!(
    TCPRoute,
    "specs.smi-spec.io",
    "v1alpha1",
    "TCPRoute",
    "tcproutes"
);
crate::impl_resource!(
    UDPRoute,
    "specs.smi-spec.io",
    "v1alpha1",
    "UDPRoute",
    "udproutes"
);
