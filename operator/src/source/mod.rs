//! Sources of cluster state, and the one loop that applies them.
//!
//! A source is the Kubernetes API ([`kube`]) or a watched manifests directory ([`manifests`]).
//! Every source speaks the same interface: it sends [`SourceEvent`]s on one bounded channel
//! ([`channel`]), and [`reconcile::run`] — the one reconcile loop, whatever the source — applies
//! them to the model, coalescing what is queued into one batch, and compiles and publishes once
//! per batch, so no snapshot is ever derived from half a change.
//!
//! The protocol, in order:
//! 1. [`SourceEvent::Expect`] names the initial listings the first snapshot waits for (one per
//!    Kubernetes watcher; `manifests` for the first directory scan);
//! 2. [`SourceEvent::Changes`] carry typed model objects (never JSON re-encoded from typed
//!    objects), [`SourceEvent::Synced`] marks one initial listing complete;
//! 3. the first snapshot is compiled once every expected listing is synced; later batches are
//!    compiled as they come.

pub mod kube;
pub mod manifests;
pub mod reconcile;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::model::{ClusterObject, ObjectKey};
use crate::shutdown::Shutdown;

/// One change to the model.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // built once per object change, moved straight into the model
pub enum Change {
    Upsert(ClusterObject),
    Remove(ObjectKey),
}

/// What a source reports to the reconcile loop.
#[derive(Debug)]
pub enum SourceEvent {
    /// The initial listings the first snapshot waits for (see [`SourceEvent::Synced`]).
    Expect(BTreeSet<String>),
    /// Changes to apply together, and when the first of them was observed.
    Changes {
        changes: Vec<Change>,
        observed_at: Instant,
    },
    /// The named listing is complete (or stopped for good: its SMI kind is not served
    /// anymore, so there is nothing to wait for).
    Synced(String),
    /// Kubernetes: the SMI kinds not watched now (CRD name → why); sent at start and on every
    /// change.
    Unwatched(BTreeMap<String, String>),
}

/// The sending half every source is given.
pub type SourceTx = mpsc::Sender<SourceEvent>;
/// The receiving half the reconcile loop owns.
pub type SourceRx = mpsc::Receiver<SourceEvent>;

/// Capacity of the source channel: a source that runs ahead of the compiler waits (a watch
/// stream is not read meanwhile), it never grows memory without bound.
pub const QUEUE: usize = 1024;

/// The one bounded channel between the sources and the reconcile loop.
pub fn channel() -> (SourceTx, SourceRx) {
    mpsc::channel(QUEUE)
}

/// A source of cluster state: runs until shutdown (or until the loop is gone: `tx` closed),
/// speaking the protocol above on `tx`.
pub trait Source: Send + 'static {
    fn run(
        self,
        tx: SourceTx,
        shutdown: Shutdown,
    ) -> impl std::future::Future<Output = Result<(), SourceError>> + Send;
}

/// Why a source stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("manifests directory {0}: {1}")]
    Manifests(PathBuf, String),
}
