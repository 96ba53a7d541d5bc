//! `access.smi-spec.io/v1alpha1` TrafficTarget: no `spec` wrapper, `specs[]` instead of
//! `rules`, and the port is a string.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::Rule;
use crate::hub::SmiStatus;

pub const API_VERSION: &str = "access.smi-spec.io/v1alpha1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub destination: Subject,
    #[serde(default)]
    pub sources: Vec<Subject>,
    #[serde(default)]
    pub specs: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SmiStatus>,
}

crate::impl_resource!(
    TrafficTarget,
    "access.smi-spec.io",
    "v1alpha1",
    "TrafficTarget",
    "traffictargets"
);

/// A v1alpha1 identity: like [`super::Subject`] but the port is a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A port number written as a string (`"8080"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub port: Option<String>,
}
