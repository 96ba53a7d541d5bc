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

/// A v1alpha1 workload identity; the port is written as a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A port number written as a string (`"8080"`); a number is accepted too.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "port_string"
    )]
    #[schemars(schema_with = "port_schema")]
    pub port: Option<String>,
}

fn port_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(D::Error::custom(format!(
            "port must be a number or a string, found {other}"
        ))),
    }
}

fn port_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A port number, written as a string (`\"8080\"`) or a number.",
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": "^[0-9]+$",
    })
}
