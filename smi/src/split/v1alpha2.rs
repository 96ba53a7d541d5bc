//! `split.smi-spec.io/v1alpha2` TrafficSplit: integer weights, no `matches`.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::Backend;
use crate::hub::SmiStatus;

pub const API_VERSION: &str = "split.smi-spec.io/v1alpha2";

#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "split.smi-spec.io",
    version = "v1alpha2",
    kind = "TrafficSplit",
    plural = "trafficsplits",
    namespaced,
    status = "SmiStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitSpec {
    /// The root (apex) service clients address.
    pub service: String,
    pub backends: Vec<Backend>,
}
