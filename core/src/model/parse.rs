//! Parsing manifest text (YAML documents or JSON, `*List` kinds flattened) into model objects,
//! with the size and nesting limits applied before parsing. Reading files is `weft-manifests`'.

use serde::Deserialize;
pub use weft_smi::limits::{LimitError, MAX_MANIFEST_BYTES, MAX_NESTING};

use super::{ClusterObject, ModelError};

/// Why manifest text could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("document {document}: invalid YAML: {source}")]
    Yaml {
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("document {document}: {source}")]
    Object {
        document: usize,
        #[source]
        source: ModelError,
    },
    #[error("refused before parsing: {0}")]
    Limit(#[source] LimitError),
    #[error(
        "document {document}: collections nested {depth} deep, more than the limit of {limit}"
    )]
    TooDeep {
        document: usize,
        depth: usize,
        limit: usize,
    },
    #[error("not UTF-8 text")]
    NotUtf8,
}

/// Parses the text of a manifest file: YAML (several documents) or JSON. Returns the objects
/// weft reads and a description of the documents it skipped. Text larger than
/// [`MAX_MANIFEST_BYTES`] or nesting deeper than [`MAX_NESTING`] is refused before parsing.
pub fn parse_manifests(
    text: &str,
    json: bool,
) -> Result<(Vec<ClusterObject>, Vec<String>), ParseError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ParseError::Limit(LimitError::TooLarge {
            size: text.len() as u64,
            limit: MAX_MANIFEST_BYTES as u64,
        }));
    }
    weft_smi::limits::check_nesting(text, MAX_NESTING).map_err(ParseError::Limit)?;
    let mut docs = Vec::new();
    if json {
        docs.push(serde_json::from_str::<serde_json::Value>(text).map_err(ParseError::Json)?);
    } else {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = serde_json::Value::deserialize(doc).map_err(|source| ParseError::Yaml {
                document: i + 1,
                source,
            })?;
            docs.push(v);
        }
    }
    for (i, doc) in docs.iter().enumerate() {
        // Block collections (indentation) are not counted by the pre-scan.
        let depth = weft_smi::limits::value_depth(doc);
        if depth > MAX_NESTING {
            return Err(ParseError::TooDeep {
                document: i + 1,
                depth,
                limit: MAX_NESTING,
            });
        }
    }
    let mut objects = Vec::new();
    let mut ignored = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let mut items = Vec::new();
        flatten_lists(doc, &mut items);
        for item in items {
            match ClusterObject::from_value(&item) {
                Ok(o) => objects.push(o),
                Err(ModelError::UnsupportedKind { api_version, kind }) => {
                    let name = item
                        .pointer("/metadata/name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("");
                    ignored.push(format!("{api_version}/{kind} {name}"));
                }
                Err(source) => {
                    return Err(ParseError::Object {
                        document: i + 1,
                        source,
                    })
                }
            }
        }
    }
    Ok((objects, ignored))
}

fn flatten_lists(doc: serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match doc {
        serde_json::Value::Null => {}
        serde_json::Value::Object(mut map) => {
            let is_list = map
                .get("kind")
                .and_then(|k| k.as_str())
                .is_some_and(|k| k.ends_with("List"))
                && map.get("items").is_some_and(|i| i.is_array());
            if is_list {
                if let Some(serde_json::Value::Array(items)) = map.remove("items") {
                    for item in items {
                        flatten_lists(item, out);
                    }
                }
            } else {
                out.push(serde_json::Value::Object(map));
            }
        }
        other => out.push(other),
    }
}
