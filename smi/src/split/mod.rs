//! TrafficSplit (`split.smi-spec.io`), every served version.
//!
//! | version  | weights                 | `matches` |
//! |----------|-------------------------|-----------|
//! | v1alpha1 | quantities (`"500m"`)   | no        |
//! | v1alpha2 | integers                | no        |
//! | v1alpha3 | integers                | yes       |
//! | v1alpha4 | integers                | yes       |
//!
//! What a version cannot express is kept in annotations (see [`crate::convert`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::hub;

pub mod v1alpha1;
pub mod v1alpha2;
pub mod v1alpha3;
pub mod v1alpha4;

pub const GROUP: &str = "split.smi-spec.io";

/// Annotation holding the exact hub weights (milli-units, JSON array in backend order) when an
/// integer-weight version had to scale them.
pub const ANN_ORIGINAL_WEIGHTS: &str = "split.smi-spec.io/weft-original-weights";
/// Annotation holding `spec.matches` (JSON array of `{kind, name, apiGroup?}`) for versions that
/// have no `matches` field (v1alpha1, v1alpha2).
pub const ANN_ORIGINAL_MATCHES: &str = "split.smi-spec.io/weft-original-matches";

/// A backend with an integer weight (v1alpha2+).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The backend service, in the split's namespace.
    pub service: String,
    /// Relative weight; 0 means no traffic. Always serialised, also when 0.
    #[schemars(range(min = 0))]
    pub weight: i64,
}

/// A typed reference to a route group in the same namespace (v1alpha3+ `spec.matches[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    pub kind: String,
    pub name: String,
}

impl From<&MatchRef> for hub::TypedRef {
    fn from(m: &MatchRef) -> Self {
        hub::TypedRef {
            kind: m.kind.clone(),
            name: m.name.clone(),
            api_group: m.api_group.clone(),
        }
    }
}

impl From<&hub::TypedRef> for MatchRef {
    fn from(m: &hub::TypedRef) -> Self {
        MatchRef {
            api_group: m.api_group.clone(),
            kind: m.kind.clone(),
            name: m.name.clone(),
        }
    }
}
