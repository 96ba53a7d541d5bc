//! Load balancing across endpoints: power of two choices over a peak-EWMA latency estimate.
//!
//! Every endpoint carries a [`Load`] (lock-free atomics). A request picks two distinct endpoints at
//! random and takes the one with the lower cost, where cost = EWMA latency × (in-flight + 1).
//! The EWMA is "peak" sensitive: a latency above the current estimate replaces it at once, lower
//! latencies pull it down with a decay of time constant [`DECAY`]. Connect failures count as a
//! large latency so that broken endpoints are avoided until they recover.
//!
//! The [`Load`]s are live state: they belong to the [`crate::state::StateRegistry`], not to a
//! config, and survive pushes while their endpoint stays in its set.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Time constant of the EWMA decay.
pub const DECAY: Duration = Duration::from_secs(10);
/// Estimate for an endpoint that has not answered yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Latency charged for a failed connection attempt.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

fn now_nanos() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The load estimate of one endpoint. Cheap to share (`Arc<Load>`), updated without locks.
#[derive(Debug)]
pub struct Load {
    /// EWMA latency in nanoseconds, stored as `f64` bits.
    ewma_bits: AtomicU64,
    /// When `ewma_bits` was last updated (nanoseconds since process-local origin).
    stamp: AtomicU64,
    pending: AtomicU32,
}

impl Default for Load {
    fn default() -> Self {
        Self::new(DEFAULT_RTT)
    }
}

impl Load {
    pub fn new(initial: Duration) -> Self {
        Load {
            ewma_bits: AtomicU64::new((initial.as_nanos() as f64).to_bits()),
            stamp: AtomicU64::new(now_nanos()),
            pending: AtomicU32::new(0),
        }
    }

    /// Marks a request as started; the returned guard marks it finished when dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight { load: self }
    }

    /// Requests currently in flight.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Current latency estimate in nanoseconds.
    pub fn ewma_nanos(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Ordering::Relaxed))
    }

    /// The cost used to compare endpoints: lower is better. The latency estimate decays towards
    /// zero while an endpoint gets no responses, so an endpoint that was slow once (or simply
    /// unused, as the old version after a canary reached 100 %) is tried again instead of being
    /// starved for ever by a faster peer.
    pub fn cost(&self) -> f64 {
        self.cost_at(now_nanos())
    }

    fn cost_at(&self, now: u64) -> f64 {
        let idle = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        let decayed = self.ewma_nanos() * (-idle / DECAY.as_nanos() as f64).exp();
        decayed * f64::from(self.pending().saturating_add(1))
    }

    /// Records an observed latency.
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, now_nanos());
    }

    fn observe_at(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let prev = self.ewma_nanos();
        let last = self.stamp.swap(now, Ordering::Relaxed);
        let next = if rtt > prev {
            rtt
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Records a failed attempt (connect error): charged as [`FAILURE_PENALTY`].
    pub fn observe_failure(&self) {
        self.observe(FAILURE_PENALTY);
    }
}

/// A request in flight on an endpoint; decrements the pending count on drop.
#[derive(Debug)]
pub struct InFlight<'a> {
    load: &'a Load,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.load.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks an index among `n` items by power of two choices over `cost`.
/// Returns `None` when `n == 0`.
pub fn p2c<F: Fn(usize) -> f64>(n: usize, cost: F) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(0),
        _ => {
            let a = random_below(n as u64) as usize;
            // A second index distinct from the first.
            let mut b = random_below(n as u64 - 1) as usize;
            if b >= a {
                b += 1;
            }
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

/// A uniform pseudo-random number in `0..n` (`0` when `n == 0`), from `rand`'s thread-local
/// generator: the proxy's one RNG (also behind `weft_common::Backoff`'s jitter and the identity
/// renewal spread). Not for secrets.
pub fn random_below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    rand::random_range(0..n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_endpoint_is_tried_again() {
        let slow = Load::new(Duration::from_millis(5));
        let busy = Load::new(Duration::from_millis(1));
        let t0 = slow.stamp.load(Ordering::Relaxed);
        busy.observe_at(Duration::from_millis(1), t0);
        assert!(slow.cost_at(t0) > busy.cost_at(t0));
        // After 20 s without a response the slow one's estimate has decayed below the busy
        // one's fresh estimate.
        let later = t0 + 2 * DECAY.as_nanos() as u64;
        busy.observe_at(Duration::from_millis(1), later);
        assert!(slow.cost_at(later) < busy.cost_at(later));
    }

    #[test]
    fn peak_replaces_and_decays() {
        let load = Load::new(Duration::from_millis(10));
        let t0 = load.stamp.load(Ordering::Relaxed);
        load.observe_at(Duration::from_millis(100), t0);
        assert_eq!(load.ewma_nanos(), 100_000_000.0);
        // One time constant later a fast answer pulls the estimate down by about 1 - 1/e.
        load.observe_at(Duration::from_millis(0), t0 + DECAY.as_nanos() as u64);
        let v = load.ewma_nanos();
        assert!(v > 35_000_000.0 && v < 38_000_000.0, "{v}");
        // Immediately afterwards a fast answer barely moves it.
        load.observe_at(Duration::from_millis(0), t0 + DECAY.as_nanos() as u64);
        assert!((load.ewma_nanos() - v).abs() < 1.0);
    }

    #[test]
    fn pending_counts_in_cost() {
        let load = Load::new(Duration::from_millis(1));
        let now = load.stamp.load(Ordering::Relaxed);
        let c0 = load.cost_at(now);
        let g1 = load.start();
        let g2 = load.start();
        assert_eq!(load.pending(), 2);
        assert_eq!(load.cost_at(now), c0 * 3.0);
        drop(g1);
        drop(g2);
        assert_eq!(load.pending(), 0);
    }

    #[test]
    fn p2c_prefers_cheaper_endpoints() {
        assert_eq!(p2c(0, |_| 0.0), None);
        assert_eq!(p2c(1, |_| 0.0), Some(0));
        // Endpoint 0 is much slower: it only wins when both picks are... never, since picks are
        // distinct. With two endpoints, the cheaper one always wins.
        for _ in 0..1000 {
            assert_eq!(p2c(2, |i| if i == 0 { 100.0 } else { 1.0 }), Some(1));
        }
        // With three, the most expensive is never chosen (it always loses its comparison).
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let i = p2c(3, |i| [5.0, 1.0, 9.0][i]).unwrap_or(99);
            counts[i] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!(counts[1] > counts[0], "{counts:?}");
    }

    #[test]
    fn random_below_covers_range_evenly() {
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[random_below(4) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(random_below(0), 0);
    }
}
