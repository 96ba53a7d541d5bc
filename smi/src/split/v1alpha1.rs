//! `split.smi-spec.io/v1alpha1` TrafficSplit: weights are Kubernetes quantities, no `matches`.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::hub::SmiStatus;
use crate::quantity::MilliQuantity;

pub const API_VERSION: &str = "split.smi-spec.io/v1alpha1";

#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "split.smi-spec.io",
    version = "v1alpha1",
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

/// A backend whose weight is a quantity (`1`, `"500m"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub service: String,
    pub weight: MilliQuantity,
}
