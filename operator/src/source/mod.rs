//! Sources of cluster state: a watched manifests directory, or the Kubernetes API.
//!
//! Both produce batches of [`Change`]s; the runtime applies each batch to the model as a whole
//! and compiles once per batch, so no snapshot is ever derived from half a change.

pub mod kube;
pub mod manifests;

use crate::model::{ClusterObject, ObjectKey};

/// One change to the model.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // built once per object change, moved straight into the model
pub enum Change {
    Upsert(ClusterObject),
    Remove(ObjectKey),
}
