//! Memory given back after a large config shrink (issue #19): this task follows the config in
//! force and, when it shrinks by at least `SHRINK_MIN` resources to at most half of what it was
//! (`weft_common::memory::is_large_shrink`, the rule and the reasons), waits [`SETTLE`] (requests
//! in flight drop their handles on the old config), then asks glibc to return free pages
//! (`weft_common::memory::trim`) on a blocking thread. Only a large shrink triggers it: never per
//! update, so steady churn costs nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use weft_common::memory::{trim, ShrinkWatch};

use crate::config::Config;

/// How long after the shrink the memory is trimmed.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Resources a config holds, as counted for a shrink.
fn size(config: &Config) -> usize {
    config.outbound_sorted().len() + config.endpoint_sets_sorted().len()
}

/// Follows `config` until its sender is dropped, trimming after each large shrink.
pub async fn give_back_after_shrinks(mut config: watch::Receiver<Arc<Config>>) {
    let mut watch = ShrinkWatch::new(size(&config.borrow_and_update()));
    while config.changed().await.is_ok() {
        let now = size(&config.borrow_and_update());
        let Some(before) = watch.observe(now) else {
            continue;
        };
        tokio::time::sleep(SETTLE).await;
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(before, after = now, released, "config shrank: malloc_trim");
        watch.trimmed(size(&config.borrow_and_update()));
    }
}
