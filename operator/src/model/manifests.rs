//! Loading a directory of Kubernetes manifests into model objects.
//!
//! Files are read recursively (`*.yaml`, `*.yml`, `*.json`), in path order; a file may hold
//! several YAML documents and `List` kinds. Each file loads on its own: a malformed file is
//! reported in [`Loaded::errors`] and does not stop the others (the runtime keeps the last
//! good version of that file). Kinds weft does not read (Deployments, ConfigMaps…) are skipped
//! and listed in [`LoadedFile::ignored`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ClusterObject, Model, ModelError};

/// A failure to read a manifest file or directory.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
}

/// The objects read from one file.
#[derive(Clone, Debug)]
pub struct LoadedFile {
    pub path: PathBuf,
    pub objects: Vec<ClusterObject>,
    /// `apiVersion/kind name` of documents weft does not read.
    pub ignored: Vec<String>,
}

/// A file that could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadError {
    pub path: PathBuf,
    pub message: String,
}

/// The result of loading a directory.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub files: Vec<LoadedFile>,
    pub errors: Vec<LoadError>,
}

impl Loaded {
    /// Every object of every file that loaded, in path order.
    pub fn objects(&self) -> impl Iterator<Item = &ClusterObject> {
        self.files.iter().flat_map(|f| f.objects.iter())
    }

    /// A model of the loaded objects, deriving endpoints from pods where a service has no
    /// EndpointSlice/Endpoints (see [`Model::derive_endpoints_from_pods`]).
    pub fn to_model(&self) -> Model {
        let mut m = Model::from_objects(self.objects().cloned());
        m.derive_endpoints_from_pods = true;
        m
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every manifest file under `dir`, recursively, sorted by path. Hidden entries (starting
/// with `.`) are skipped, so editor swap files and `..data` symlink farms are not read twice.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| ManifestError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| ManifestError::Io {
                path: d.clone(),
                source,
            })?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if is_manifest(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every manifest under `dir`. Only an unreadable `dir` is an error; per-file problems
/// are in [`Loaded::errors`].
pub fn load_dir(dir: &Path) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded::default();
    for path in manifest_files(dir)? {
        match load_file(&path) {
            Ok(f) => loaded.files.push(f),
            Err(e) => loaded.errors.push(LoadError {
                path: path.clone(),
                message: e.to_string(),
            }),
        }
    }
    Ok(loaded)
}

/// Loads one manifest file.
pub fn load_file(path: &Path) -> Result<LoadedFile, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json = path.extension().and_then(|e| e.to_str()) == Some("json");
    let (objects, ignored) = parse_manifests(&text, json)?;
    Ok(LoadedFile {
        path: path.to_path_buf(),
        objects,
        ignored,
    })
}

/// Parses the text of a manifest file: YAML (several documents) or JSON. Returns the objects
/// weft reads and a description of the documents it skipped.
pub fn parse_manifests(
    text: &str,
    json: bool,
) -> Result<(Vec<ClusterObject>, Vec<String>), ManifestError> {
    let mut docs = Vec::new();
    if json {
        docs.push(serde_json::from_str::<serde_json::Value>(text).map_err(ManifestError::Json)?);
    } else {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = serde_json::Value::deserialize(doc).map_err(|source| ManifestError::Yaml {
                document: i + 1,
                source,
            })?;
            docs.push(v);
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
                    return Err(ManifestError::Object {
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
