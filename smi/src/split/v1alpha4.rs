//! `split.smi-spec.io/v1alpha4` TrafficSplit (current).

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::{Backend, MatchRef};
use crate::hub::SmiStatus;

pub const API_VERSION: &str = "split.smi-spec.io/v1alpha4";

#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "split.smi-spec.io",
    version = "v1alpha4",
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
    /// HTTPRouteGroups restricting which requests are split; empty: all requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRef>,
}
