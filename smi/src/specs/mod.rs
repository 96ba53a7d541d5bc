//! HTTPRouteGroup, TCPRoute and UDPRoute (`specs.smi-spec.io`), every served version.
//!
//! | version  | HTTPRouteGroup                         | TCPRoute / UDPRoute             |
//! |----------|----------------------------------------|---------------------------------|
//! | v1alpha1 | top-level `matches`, no `headers`      | no fields                       |
//! | v1alpha2 | top-level `matches` with `headers`     | no fields                       |
//! | v1alpha3 | `spec.matches`                         | `spec: {}`                      |
//! | v1alpha4 | `spec.matches` (current)               | `spec.matches{name, ports}`     |
//!
//! Upstream defines UDPRoute only in v1alpha4; weft serves it in every version with the
//! TCPRoute shape of that version so that one conversion webhook covers all kinds.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod v1alpha1;
pub mod v1alpha2;
pub mod v1alpha3;
pub mod v1alpha4;

pub const GROUP: &str = "specs.smi-spec.io";

/// Annotation keeping HTTP match headers (JSON array, one map per match, in order) for
/// v1alpha1, which has no `headers` field.
pub const ANN_ORIGINAL_HEADERS: &str = "specs.smi-spec.io/weft-original-headers";
/// Annotation keeping a TCPRoute/UDPRoute `matches` (JSON `{name?, ports}`) for versions
/// before v1alpha4, which have no `matches`.
pub const ANN_ORIGINAL_MATCHES: &str = "specs.smi-spec.io/weft-original-matches";

/// HTTP methods accepted by the CRD schema.
pub const METHODS: [&str; 10] = [
    "*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Header name to value regex. Accepts a map or a list of single-entry maps on input (the
/// upstream Go type and CRD disagree); always written as a map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub BTreeMap<String, String>);

impl Headers {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

fn merge_header_map<E: serde::de::Error>(
    out: &mut BTreeMap<String, String>,
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<(), E> {
    for (k, v) in map {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => {
                return Err(E::custom(format!(
                    "header {k:?}: value must be a string (a regex), found {other}"
                )))
            }
        };
        if let Some(prev) = out.get(&k) {
            if *prev != v {
                return Err(E::custom(format!(
                    "header {k:?} given twice with different values ({prev:?}, {v:?})"
                )));
            }
        }
        out.insert(k, v);
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut out = BTreeMap::new();
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => {}
            serde_json::Value::Object(m) => merge_header_map::<D::Error>(&mut out, m)?,
            serde_json::Value::Array(items) => {
                for item in items {
                    match item {
                        serde_json::Value::Object(m) => merge_header_map::<D::Error>(&mut out, m)?,
                        other => {
                            return Err(D::Error::custom(format!(
                                "headers: list items must be maps of name to regex, found {other}"
                            )))
                        }
                    }
                }
            }
            other => {
                return Err(D::Error::custom(format!(
                    "headers must be a map or a list of maps, found {other}"
                )))
            }
        }
        Ok(Headers(out))
    }
}

impl JsonSchema for Headers {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Headers".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // A map or a list of maps: not expressible structurally, so the API server keeps it as
        // is and weft validates it when reading.
        schemars::json_schema!({
            "description": "Header name to value regex: a map, or a list of maps. All must match.",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

pub(crate) fn methods_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "HTTP methods (RFC 7231) or `*`; empty: any method.",
        "type": "array",
        "items": {"type": "string", "enum": METHODS},
    })
}

/// One named HTTP match (v1alpha2+; v1alpha1 has no `headers`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "methods_schema")]
    pub methods: Vec<String>,
    /// Regex anchored at the start of the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// A v1alpha1 HTTP match: no `headers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchV1 {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "methods_schema")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
}

/// A TCPRoute/UDPRoute match (v1alpha4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Empty or absent: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}
