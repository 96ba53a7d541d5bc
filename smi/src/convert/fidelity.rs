//! Faithful, total conversion of whole objects between served versions: what the conversion
//! webhook runs.
//!
//! The shapes ([`super::shapes`]) say how each version differs from the storage version. Two
//! things a shape rewrite alone would lose are kept in annotations named
//! `weft.io/conversion-<version>`, each holding a JSON object: the object's fields other than
//! `apiVersion`, `kind`, `metadata` and `status` (its *body*) as they were at that version.
//!
//! * **The form a user wrote.** A version may accept several forms of one value (`1`, `"1"`
//!   and `"1000m"` as a v1alpha1 weight; `8080` and `"8080"` as a v1alpha1 port). The storage
//!   version keeps one; converting back would give the canonical form, not the user's, so
//!   `kubectl apply` would see a difference every time. When an object arrives at version V in
//!   a form that is not V's canonical one, the storage object keeps V's body under
//!   `weft.io/conversion-V`; converting to V restores it and removes the annotation, so the
//!   user never sees it at their own version.
//! * **What an older version cannot express.** Reading a TrafficSplit with `matches` as
//!   v1alpha2, or an HTTPRouteGroup with headers as v1alpha1, drops those fields. The object at
//!   the older version then carries the storage body under `weft.io/conversion-<storage>`,
//!   and converting it back restores them, so a write at the older version (or server-side
//!   apply's internal conversions) cannot silently remove a restriction.
//!
//! A kept body is used only while it still agrees with the object: converting the kept body
//! the ordinary way must give exactly what the object holds now. An object edited at another
//! version no longer agrees, and the annotation is dropped on the next conversion. Kept bodies
//! are bounded ([`MAX_KEPT_BYTES`] each, [`MAX_ANNOTATION_BYTES`] for all annotations
//! together, well under the API server's 256 KiB); past the bound the body is not kept and
//! the conversion is the canonical one (still correct, only not in the user's form).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::shapes::{self, Obj};
use crate::kinds::{self, KindVersion, SmiKind};
use crate::SmiError;

/// Prefix of the annotations holding a body as written at a version.
pub const KEPT_PREFIX: &str = "weft.io/conversion-";

/// Largest kept body, in bytes of JSON.
pub const MAX_KEPT_BYTES: usize = 32 * 1024;

/// No body is kept when the object's annotations (keys and values) would grow past this.
pub const MAX_ANNOTATION_BYTES: usize = 128 * 1024;

/// The annotation holding the body as written at `version` (`v1alpha1`, …).
pub fn kept_annotation(version: &str) -> String {
    format!("{KEPT_PREFIX}{version}")
}

/// Converts `obj` to `desired_api_version` without validating it: every field the two
/// versions share passes through as it is (missing, `null` or of an unexpected type
/// included), `metadata` and `status` are kept, and round trips through any version return
/// what was written.
///
/// Fails only when `obj` is not a JSON object, or when its `apiVersion` or the desired one is
/// not a served version of its kind: the API server never sends such a conversion.
pub fn convert(obj: &Value, desired_api_version: &str) -> Result<Value, SmiError> {
    let map = obj.as_object().ok_or(SmiError::MissingField("metadata"))?;
    let from_api = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or(SmiError::MissingField("apiVersion"))?;
    let kind_name = map
        .get("kind")
        .and_then(Value::as_str)
        .ok_or(SmiError::MissingField("kind"))?;
    let not_served = |api_version: &str| SmiError::NotSmi {
        api_version: api_version.to_string(),
        kind: kind_name.to_string(),
    };
    let kind = kinds::by_kind(group_of(from_api), kind_name).ok_or_else(|| not_served(from_api))?;
    let from = version_of(kind, from_api).ok_or_else(|| not_served(from_api))?;
    let to =
        version_of(kind, desired_api_version).ok_or_else(|| not_served(desired_api_version))?;
    let mut out = if from == to {
        map.clone()
    } else {
        convert_between(kind, from, to, map)
    };
    out.insert("apiVersion".into(), Value::String(to.api_version.into()));
    if !out.get("metadata").is_some_and(Value::is_object) {
        // The API server requires `metadata` in every converted object.
        out.insert("metadata".into(), Value::Object(Map::new()));
    }
    Ok(Value::Object(out))
}

fn group_of(api_version: &str) -> Option<&str> {
    api_version.split_once('/').map(|(g, _)| g)
}

fn version_of(kind: &SmiKind, api_version: &str) -> Option<&'static KindVersion> {
    kind.versions
        .iter()
        .find(|v| v.served && v.api_version == api_version)
}

/// The body: everything but `apiVersion`, `kind`, `metadata` and `status`.
fn body(obj: &Obj) -> Obj {
    obj.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `obj` with its body replaced by `body`.
fn with_body(obj: &Obj, body: &Obj) -> Obj {
    let mut out: Obj = obj
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(body.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

struct Shapes<'a> {
    kind: &'a str,
    storage: &'a KindVersion,
}

impl Shapes<'_> {
    fn up(&self, version: &KindVersion, obj: &Obj) -> Obj {
        let mut o = obj.clone();
        if version != self.storage {
            shapes::up(self.kind, version.name, &mut o);
        }
        o
    }

    fn down(&self, version: &KindVersion, obj: &Obj) -> Obj {
        let mut o = obj.clone();
        if version != self.storage {
            shapes::down(self.kind, version.name, &mut o);
        }
        o
    }

    /// The canonical form at `version` of an object at `version`.
    fn canonical(&self, version: &KindVersion, obj: &Obj) -> Obj {
        self.down(version, &self.up(version, obj))
    }

    /// Whether `kept`, a body written at `version`, still agrees with `at_storage`: its
    /// canonical form is what `at_storage` gives at `version`.
    fn agrees(&self, version: &KindVersion, kept: &Obj, at_storage: &Obj) -> bool {
        let projected = self.down(version, at_storage);
        let kept_canonical = self.canonical(version, &with_body(&projected, kept));
        body(&kept_canonical) == body(&projected)
    }
}

/// The kept bodies an object carries, by version name (unknown versions and values that are
/// not JSON objects are ignored, and so dropped).
fn kept_bodies(kind: &SmiKind, obj: &Obj) -> BTreeMap<&'static str, Obj> {
    let mut out = BTreeMap::new();
    let Some(ann) = shapes::annotations(obj) else {
        return out;
    };
    for v in kind.versions {
        let kept = ann
            .get(&kept_annotation(v.name))
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str::<Value>(s).ok());
        if let Some(Value::Object(b)) = kept {
            out.insert(v.name, b);
        }
    }
    out
}

fn convert_between(kind: &SmiKind, from: &KindVersion, to: &KindVersion, obj: &Obj) -> Obj {
    let shapes = Shapes {
        kind: kind.kind,
        storage: kind.storage(),
    };
    let storage = shapes.storage;
    let kept = kept_bodies(kind, obj);
    let mut input = obj.clone();
    shapes::retain_annotations(&mut input, |k| !k.starts_with(KEPT_PREFIX));

    // 1. At the storage version: the shape rewrite, or the kept storage body when the object
    //    at `from` is exactly what that body gives at `from`.
    let mut at_storage = shapes.up(from, &input);
    if from != storage {
        if let Some(b) = kept.get(storage.name) {
            let candidate = with_body(&at_storage, b);
            if body(&shapes.down(from, &candidate)) == body(&shapes.down(from, &at_storage)) {
                at_storage = candidate;
            }
        }
    }

    // 2. At the desired version: the shape rewrite, or the body written at `to` while it
    //    agrees.
    let projected = shapes.down(to, &at_storage);
    let mut out = projected.clone();
    if to != storage {
        if let Some(b) = kept.get(to.name) {
            if shapes.agrees(to, b, &at_storage) {
                out = with_body(&projected, b);
            }
        }
    }

    // 3. The bodies the output keeps, most useful first.
    let mut keep: Vec<(&str, Obj)> = Vec::new();
    if to != storage {
        // What `to` cannot express (in the form it is given).
        let back = shapes.up(to, &out);
        if body(&back) != body(&at_storage) {
            keep.push((storage.name, body(&at_storage)));
        }
    }
    if from != storage && from != to {
        // The form the object arrived in, when it is not the canonical one.
        let canonical = shapes.down(from, &at_storage);
        if body(&canonical) != body(&input) {
            keep.push((from.name, body(&input)));
        }
    }
    for (version, b) in &kept {
        let Some(v) = kind.versions.iter().find(|v| v.name == *version) else {
            continue;
        };
        if v == to || v == from || v == storage {
            continue;
        }
        if shapes.agrees(v, b, &at_storage) {
            keep.push((v.name, b.clone()));
        }
    }
    for (version, b) in keep {
        let Ok(text) = serde_json::to_string(&Value::Object(b)) else {
            continue;
        };
        if text.len() <= MAX_KEPT_BYTES
            && annotation_bytes(&out) + text.len() + KEPT_PREFIX.len() + version.len()
                <= MAX_ANNOTATION_BYTES
        {
            shapes::set_annotation(&mut out, &kept_annotation(version), text);
        }
    }
    out
}

fn annotation_bytes(obj: &Obj) -> usize {
    shapes::annotations(obj).map_or(0, |a| {
        a.iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum()
    })
}
