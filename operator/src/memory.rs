//! The operator's memory given back after a large shrink (issue #19): after a mesh of 10,000
//! Services was removed, the operator's RSS stayed near its peak (docs/benchmarks.md, "Memory
//! given back (issue #19)") although its watch cache and snapshot had shrunk — glibc keeps freed
//! memory in its arenas. This task follows the published snapshots and, when one is smaller by
//! the rule of `weft_common::memory::ShrinkWatch` (the proxy's rule too), waits [`SETTLE`]
//! (streams and encoders drop their handles on the old snapshot once they have pushed the new
//! one), then asks glibc to return free pages on a blocking thread. Never per change: steady
//! churn costs nothing.

use std::time::Duration;

use weft_common::memory::{trim, ShrinkWatch};

use crate::discovery::{Published, SnapshotRx};
use crate::shutdown::Shutdown;

/// How long after a large shrink the memory is trimmed.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Resources a snapshot holds, as counted for a shrink: shared (outbound and endpoint)
/// resources plus one inbound resource per meshed pod.
fn size(published: Option<&Published>) -> usize {
    published.map_or(0, |p| {
        p.compiled.shared().len() + p.compiled.proxies().len()
    })
}

/// Follows `snapshots` until the channel closes or `stop` fires, trimming after each large shrink.
pub async fn give_back_after_shrinks(mut snapshots: SnapshotRx, mut stop: Shutdown) {
    let mut watch = ShrinkWatch::new(size(snapshots.borrow_and_update().as_deref()));
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = stop.triggered() => return,
        }
        let now = size(snapshots.borrow_and_update().as_deref());
        let Some(before) = watch.observe(now) else {
            continue;
        };
        tokio::select! {
            _ = tokio::time::sleep(SETTLE) => {}
            _ = stop.triggered() => return,
        }
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::info!(
            before,
            after = now,
            released,
            "the mesh shrank: free memory returned to the system"
        );
        watch.trimmed(size(snapshots.borrow_and_update().as_deref()));
    }
}
