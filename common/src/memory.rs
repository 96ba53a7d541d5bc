//! Memory given back after a large shrink (issue #19), shared by the proxy (its config in force)
//! and the operator (its compiled snapshot).
//!
//! glibc malloc keeps memory a process freed in its arenas: after a mesh of 10,000 Services
//! shrank back to one, the proxy's resident memory stayed within 10 % of its peak although the
//! config was gone (docs/benchmarks.md, "Memory given back (issue #19)"). The memory was free —
//! `malloc_trim(0)` returned nearly all of it — but glibc only trims the top of its main heap by
//! itself, and the freed data is spread over the heap. So after a large shrink (never per update:
//! steady churn costs nothing) the owner waits for in-flight users of the old data to drop it and
//! calls [`trim`] on a blocking thread. A jemalloc global allocator was measured as the
//! alternative and not adopted: it costs idle memory on every proxy (docs/proxy.md, "Memory").
//!
//! The three `unsafe` calls of this crate are in [`keep_heap_top`], [`trim`] and [`heap_in_use`],
//! each with the proof of its soundness.
#![allow(unsafe_code)]

/// A shrink smaller than this many resources is left to the allocator.
pub const SHRINK_MIN: usize = 1000;

/// Whether going from `before` to `after` resources is a shrink worth trimming after: at least
/// [`SHRINK_MIN`] resources gone, and at most half left.
pub fn is_large_shrink(before: usize, after: usize) -> bool {
    before >= after.saturating_add(SHRINK_MIN) && after <= before / 2
}

/// When to trim, for a size followed over time (resources held): the one rule both the proxy
/// and the operator follow. A trim is due when the size shrank by [`is_large_shrink`] from the
/// largest size seen since the last trim; after a trim the peak starts over.
#[derive(Debug)]
pub struct ShrinkWatch {
    peak: usize,
}

impl ShrinkWatch {
    /// Starts at the current size.
    pub fn new(size: usize) -> Self {
        ShrinkWatch { peak: size }
    }

    /// Records the size now; `Some(peak)` (the size it shrank from) when a trim is due.
    pub fn observe(&mut self, now: usize) -> Option<usize> {
        if is_large_shrink(self.peak, now) {
            Some(self.peak)
        } else {
            self.peak = self.peak.max(now);
            None
        }
    }

    /// After a trim: the peak starts over at the size then.
    pub fn trimmed(&mut self, now: usize) {
        self.peak = now;
    }
}

/// Free memory at the top of glibc's main heap that a busy proxy keeps instead of returning it
/// at each `free` (see [`keep_heap_top`]).
pub const HEAP_TOP_KEPT: usize = 1 << 20;

/// Lets glibc keep up to `bytes` of free memory at the top of its main heap instead of
/// returning it to the kernel each time a `free` leaves more than that (its `M_TRIM_THRESHOLD`,
/// 128 KiB by default and rising only with large freed blocks). Whether glibc took the setting.
///
/// Under load the top of a proxy's heap moves up and down with the requests in flight: at the
/// default, weft-proxy shrank its heap with `brk` and faulted the same pages back in 0.12 and
/// 0.21 times a request over 64 connections (0.07 and 0.70 with 64 KiB bodies), which HAProxy,
/// which keeps its pools, does not do; with the top kept, neither happened and the proxy
/// answered a tenth more requests in the same time (issue #20, docs/benchmarks.md, session
/// 25). What is kept is bounded by `bytes`, and it is returned when
/// the proxy is quiet ([`trim`] ignores the threshold). Side effect, as glibc documents: the
/// threshold for serving a block with its own `mmap` no longer rises with large freed blocks;
/// it stays at glibc's 128 KiB, so large blocks go back to the kernel when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_heap_top(bytes: usize) -> bool {
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return false;
    };
    // SAFETY: `mallopt` takes two plain integers, no pointer. It takes the main arena's lock
    // while it sets the parameter (thread-safe like `malloc`), and `M_TRIM_THRESHOLD` only
    // changes when glibc returns free memory at the top of the heap, never memory in use. Under
    // an allocator other than glibc malloc the call changes nothing (weft's binaries set no
    // `#[global_allocator]`: `System` is glibc malloc on linux-gnu). It returns 1 on success.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, value) == 1 }
}

/// No glibc malloc: nothing to set.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_heap_top(_bytes: usize) -> bool {
    false
}

/// Returns free heap pages to the kernel; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` takes a plain integer (the bytes to keep at the top of the heap),
    // no pointer, and is thread-safe: it takes each arena's lock in turn, like `malloc`. It only
    // releases pages that glibc malloc itself holds free, so it cannot invalidate memory in use
    // whichever allocator a binary uses (weft's binaries set no `#[global_allocator]`: Rust's
    // `System` allocator is glibc malloc on linux-gnu; under another allocator the call would
    // merely release less). It returns 1 if memory was released, 0 if not.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators return memory by themselves (or not at all): nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Bytes glibc malloc has handed out and not had back: `mallinfo2`'s `uordblks` (chunks in use in
/// its heaps) plus `hblkhd` (chunks it mapped on their own). The rest of a process's anonymous
/// memory is, besides stacks and the like, heap that glibc holds free and still resident: what a
/// [`trim`] can give back. (glibc's own count of free heap, `fordblks`, cannot tell that: the
/// pages a trim returned stay in it, free but no longer resident.) `None` where there is no glibc
/// malloc (and [`trim`] does nothing).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use() -> Option<u64> {
    // SAFETY: `mallinfo2` takes no argument and returns a plain struct of counters by value, so
    // there is no pointer to get wrong; it is thread-safe (it takes each arena's lock in turn
    // while it sums the free chunks, like `malloc_trim`), available since glibc 2.33 (Debian 12
    // has 2.36, the proxy links it statically), and only reads glibc malloc's own bookkeeping.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks as u64).saturating_add(info.hblkhd as u64))
}

/// No glibc malloc: nothing to read.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use() -> Option<u64> {
    None
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
    fn a_trim_is_due_after_a_large_shrink_from_the_peak_then_the_peak_starts_over() {
        let mut w = ShrinkWatch::new(10);
        assert_eq!(w.observe(3_000), None, "growth");
        assert_eq!(w.observe(2_500), None, "a small shrink");
        assert_eq!(
            w.observe(5),
            Some(3_000),
            "from the peak, not the last size"
        );
        w.trimmed(5);
        assert_eq!(w.observe(4), None, "the peak started over");
        assert_eq!(w.observe(2_000), None);
        assert_eq!(w.observe(1_100), None, "fewer than SHRINK_MIN gone");
        assert_eq!(w.observe(1_000), Some(2_000));
    }

    #[test]
    fn heap_in_use_follows_allocations_not_what_stays_resident() {
        let Some(before) = heap_in_use() else {
            return;
        };
        // Many small blocks (below glibc's mmap threshold: they come from the heap), every
        // other one freed, so the freed half stays resident in the heap between live ones.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 1024]).collect();
        let during = heap_in_use().unwrap();
        assert!(
            during >= before + 4_000_000,
            "4 MiB in 1 KiB blocks: in use {before} -> {during}"
        );
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(2).map(std::mem::take).collect();
        drop(blocks);
        let after = heap_in_use().unwrap();
        assert!(
            after + 1_900_000 <= during,
            "half of them freed: in use {during} -> {after}"
        );
        drop(kept);
    }

    #[test]
    fn trim_can_be_called_at_any_time() {
        let v = vec![0u8; 1 << 20];
        drop(v);
        let _ = trim();
    }
}
