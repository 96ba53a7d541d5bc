//! Memory given back after a large config shrink (issue #19).
//!
//! glibc malloc keeps memory freed by a process in its arenas: after a mesh of 10,000 Services
//! shrank back to one, the proxy's resident memory stayed within 10 % of its peak although the
//! config was gone (measured in docs/benchmarks.md, "Memory given back (issue #19)"). The memory
//! was free — `malloc_trim(0)` called from outside returned nearly all of it — but glibc only
//! trims the top of its main heap by itself, and the freed config is spread over the heap.
//!
//! So this task watches the config in force and, when it shrinks by at least [`SHRINK_MIN`]
//! resources and to at most half of what it was, waits [`SETTLE`] (requests in flight drop
//! their handles on the old config), then asks glibc to return free pages with `malloc_trim(0)`
//! on a blocking thread. A jemalloc global allocator was measured as the alternative and not
//! adopted: it costs idle memory on every proxy (docs/proxy.md, "Memory").
//!
//! Only a large shrink triggers it: never per update, so steady churn costs nothing.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;

/// A shrink smaller than this many resources (outbound services plus endpoint sets) is left to
/// the allocator.
pub const SHRINK_MIN: usize = 1000;
/// How long after the shrink the memory is trimmed.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Resources a config holds, as counted for a shrink.
fn size(config: &Config) -> usize {
    config.outbound_sorted().len() + config.endpoint_sets_sorted().len()
}

/// Whether going from `before` to `after` resources is a shrink worth trimming after.
pub fn is_large_shrink(before: usize, after: usize) -> bool {
    before >= after.saturating_add(SHRINK_MIN) && after <= before / 2
}

/// Follows `config` until its sender is dropped, trimming after each large shrink.
pub async fn give_back_after_shrinks(mut config: watch::Receiver<Arc<Config>>) {
    let mut peak = size(&config.borrow_and_update());
    while config.changed().await.is_ok() {
        let now = size(&config.borrow_and_update());
        if !is_large_shrink(peak, now) {
            peak = peak.max(now);
            continue;
        }
        tokio::time::sleep(SETTLE).await;
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(
            before = peak,
            after = now,
            released,
            "config shrank: malloc_trim"
        );
        peak = size(&config.borrow_and_update());
    }
}

/// Returns free heap pages to the kernel; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes a plain integer (the bytes to keep at the top of the heap),
    // no pointer, and is thread-safe: it takes each arena's lock in turn, like `malloc`. The
    // process's allocator is glibc malloc here (Rust's `System` allocator on linux-gnu; this
    // crate sets no other `#[global_allocator]`), so the call only releases pages that malloc
    // itself holds free. It returns 1 if memory was released, 0 if not.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators return memory by themselves (or not at all): nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_shrinks_trim() {
        assert!(is_large_shrink(20_000, 2));
        assert!(is_large_shrink(2_000, 1_000));
        assert!(!is_large_shrink(2_000, 1_001), "less than half gone");
        assert!(!is_large_shrink(1_500, 600), "fewer than SHRINK_MIN gone");
        assert!(!is_large_shrink(10, 20_000), "growth");
        assert!(!is_large_shrink(0, 0));
    }

    #[test]
    fn trim_can_be_called_at_any_time() {
        let v = vec![0u8; 1 << 20];
        drop(v);
        let _ = trim();
    }
}
