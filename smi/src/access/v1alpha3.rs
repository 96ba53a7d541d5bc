//! `access.smi-spec.io/v1alpha3` TrafficTarget (current).

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::{Rule, Subject};
use crate::hub::SmiStatus;

pub const API_VERSION: &str = "access.smi-spec.io/v1alpha3";

#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "access.smi-spec.io",
    version = "v1alpha3",
    kind = "TrafficTarget",
    plural = "traffictargets",
    namespaced,
    status = "SmiStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTargetSpec {
    pub destination: Subject,
    /// No sources: the target allows nothing.
    #[serde(default)]
    pub sources: Vec<Subject>,
    /// No rules: the target allows nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}
