//! `memory::keep_heap_top`: free memory at the top of glibc's main heap stays with the process
//! (no `brk` shrink, no pages faulted back in on the next request), up to the amount set, and
//! `memory::trim` still returns it (issue #20, docs/benchmarks.md, session 25).
//!
//! Without libtest's harness: the test runs on the main thread, whose arena is the main heap.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    use weft_common::memory::{keep_heap_top, trim, HEAP_TOP_KEPT};

    /// The program break (the top of the main heap).
    fn brk() -> usize {
        // SAFETY: `sbrk(0)` moves nothing: it returns the current program break.
        unsafe { libc::sbrk(0) as usize }
    }

    /// Allocates `total` bytes in blocks of 4 KiB (below glibc's `mmap` threshold, so from the
    /// top of the main heap), frees them newest first, and returns how far the break fell.
    fn churn(total: usize) -> usize {
        let blocks: Vec<Vec<u8>> = (0..total / 4096).map(|i| vec![i as u8; 4096]).collect();
        let before_free = brk();
        drop(blocks.into_iter().rev().collect::<Vec<_>>());
        before_free.saturating_sub(brk())
    }

    let size = HEAP_TOP_KEPT / 2;
    // At glibc's default the freed top goes back at once: what the test can see.
    let fell = churn(size);
    assert!(
        fell >= size / 2,
        "at glibc's default the break should fall after {size} bytes are freed; it fell {fell}"
    );

    assert!(
        keep_heap_top(HEAP_TOP_KEPT),
        "glibc refused M_TRIM_THRESHOLD"
    );
    let fell = churn(size);
    assert_eq!(
        fell, 0,
        "with {HEAP_TOP_KEPT} bytes kept, freeing {size} at the top must not shrink the heap"
    );

    // More than is kept goes back as before.
    let fell = churn(HEAP_TOP_KEPT * 3);
    assert!(
        fell >= HEAP_TOP_KEPT,
        "freeing {} at the top with {HEAP_TOP_KEPT} kept should return the rest; the break fell {fell}",
        HEAP_TOP_KEPT * 3
    );

    // The quiet trim returns what was kept.
    let top = brk();
    let _ = churn(size);
    trim();
    assert!(
        brk() < top,
        "malloc_trim should return the kept top of the heap"
    );
    println!("heap_top: ok");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {}
