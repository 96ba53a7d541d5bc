//! The Discovery gRPC server: one stream per proxy, fed by the latest compiled snapshot.
//!
//! The runtime publishes every compiled snapshot into a `tokio::sync::watch` channel (latest value
//! wins, so a burst of edits coalesces into a few pushes). Each proxy stream is a task that sleeps
//! until its inbound side (ACK/NACK) or the snapshot changes, diffs the proxy's resources against
//! what it last sent, and pushes the difference through a small bounded queue: a slow proxy only
//! ever delays itself, never the compiler or other proxies.

mod encode;
mod metrics;
pub mod ondemand;
pub mod proto;
mod registry;
mod server;
mod stream;
mod wake;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::compile::Compiled;

pub use metrics::DiscoveryMetrics;
pub use ondemand::DiscoveryMode;
pub use registry::{ProxyInfo, ProxyRegistry};
pub use server::DiscoveryServer;
pub use stream::{DiscoveryService, ServiceOptions, DEFAULT_MAX_STREAM_AGE};

/// A compiled snapshot as published to discovery.
#[derive(Clone)]
pub struct Published {
    /// Increases with every publication.
    pub generation: u64,
    /// When the change that led to this snapshot was observed (for push-to-ACK latency).
    pub changed_at: Instant,
    pub compiled: Arc<Compiled>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Receiving side of the snapshot channel: `None` until the first snapshot is compiled.
pub type SnapshotRx = watch::Receiver<Option<Arc<Published>>>;
/// Publishing side of the snapshot channel.
pub type SnapshotTx = watch::Sender<Option<Arc<Published>>>;

/// A new snapshot channel, empty until the first publication.
pub fn snapshot_channel() -> (SnapshotTx, SnapshotRx) {
    watch::channel(None)
}
