//! Load balancing across endpoints: power of two choices over a peak-EWMA latency estimate.
//!
//! Every endpoint carries a [`Load`] (lock-free atomics, plus its failure accrual state,
//! [`Breaker`]). A request picks two distinct endpoints at random and takes one of them with a
//! probability inversely proportional to its cost, where cost = EWMA latency × (in-flight + 1).
//! The EWMA is "peak" sensitive: a latency above the current estimate replaces it at once (but
//! one answer at most doubles it, [`PEAK_STEP`]), lower latencies pull it down, by at least
//! [`MIN_PULL`] of the way per answer and more the longer the endpoint went without one (time
//! constant [`DECAY`]). Failures (connect errors, timeouts,
//! failure statuses) count as a latency of [`FAILURE_PENALTY`]: a fast `502` is not a fast
//! success.
//!
//! Why two identical endpoints settled at ~95/5 before: with two endpoints both are always the
//! two choices, and "always the cheaper" made the choice deterministic: the endpoint with the
//! slightly lower estimate got *every* request. The other one's estimate then only moved
//! through its idle decay (10 s): an endpoint not measured yet stood at [`DEFAULT_RTT`] (30 ms)
//! against its peer's measured ~1 ms, and a single slow answer (a connection set up, a GC
//! pause) did the same, so an identical endpoint starved for tens of seconds. Now an endpoint
//! not measured yet is a tie with anyone and its first answer replaces the default. Now costs within a factor [`TIE_RATIO`] (noise) give each 50 %, a cost
//! ten times higher gives ~9 %, so every endpoint keeps being measured, and an estimate falls
//! back after a few good answers instead of after tens of seconds.
//!
//! The [`Load`]s are live state: they belong to the [`crate::state::StateRegistry`], not to a
//! config, and survive pushes while their endpoint stays in its set.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use crate::accrual::Breaker;

/// Time constant of the EWMA decay.
pub const DECAY: Duration = Duration::from_secs(10);
/// Estimate for an endpoint that has not answered yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Latency charged for a failed attempt (connect error, timeout, failure status).
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Most one answer can multiply the estimate by.
pub const PEAK_STEP: f64 = 1.5;
/// Costs closer than this factor are a tie, broken at random: between equal endpoints the
/// estimates differ by noise (on one host, answers of 0.2 ms and 0.6 ms alternate), and a
/// choice steered by noise keeps a stale high estimate unrefreshed, which skews shares. A real
/// difference (a slower endpoint, one with requests piling up, a failure penalty) exceeds it;
/// under concurrency the in-flight factor of the cost grows it further.
pub const TIE_RATIO: f64 = 2.0;
/// Least share of the way a lower latency pulls the estimate down, however recent the last
/// answer: a peak fades after a few good answers, not only with time.
pub const MIN_PULL: f64 = 0.5;

fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// `at` in nanoseconds since the process-local origin (the first call).
fn nanos_at(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// The load estimate of one endpoint. Cheap to share (`Arc<Load>`), updated without locks.
#[derive(Debug)]
pub struct Load {
    /// EWMA latency in nanoseconds, stored as `f64` bits.
    ewma_bits: AtomicU64,
    /// When `ewma_bits` was last updated (nanoseconds since process-local origin).
    stamp: AtomicU64,
    pending: AtomicU32,
    /// Whether it has answered (or failed) at least once.
    measured: AtomicBool,
    /// Failure accrual (ejection, probation, `Retry-After` back-off).
    pub breaker: Breaker,
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
            measured: AtomicBool::new(false),
            breaker: Breaker::default(),
        }
    }

    /// Marks a request as started unless `max` (0: unlimited) are already in flight.
    pub fn try_start(&self, max: u32) -> Option<InFlight<'_>> {
        if max == 0 {
            return Some(self.start());
        }
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight { load: self })
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
        if !self.measured.load(Ordering::Relaxed) {
            // Unknown: a tie with anything (see [`p2c`]), never "30 ms against 1 ms".
            return f64::NAN;
        }
        let idle = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        let decayed = self.ewma_nanos() * (-idle / DECAY.as_nanos() as f64).exp();
        decayed * f64::from(self.pending().saturating_add(1))
    }

    /// Records an observed latency.
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, now_nanos());
    }

    /// [`Load::observe`] of an answer that ended at `done` (a clock read the caller made).
    pub fn observe_ended(&self, rtt: Duration, done: Instant) {
        self.observe_at(rtt, nanos_at(done));
    }

    fn observe_at(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let prev = self.ewma_nanos();
        let last = self.stamp.swap(now, Ordering::Relaxed);
        let next = if !self.measured.swap(true, Ordering::Relaxed) {
            // The first answer replaces the default estimate.
            rtt
        } else if rtt > prev {
            // A peak counts at once, but one answer at most doubles the estimate: a single
            // hiccup is noise, and it would otherwise steer traffic away until the endpoint is
            // measured again. A sustained slowdown reaches its level within a few answers.
            rtt.min((prev * PEAK_STEP).max(1_000.0))
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64)
                .exp()
                .min(1.0 - MIN_PULL);
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Starts the estimate afresh from `rtt` (an endpoint restored by a successful probe: its
    /// failures are history).
    pub fn reset(&self, rtt: Duration) {
        self.ewma_bits
            .store((rtt.as_nanos() as f64).to_bits(), Ordering::Relaxed);
        self.stamp.store(now_nanos(), Ordering::Relaxed);
        self.measured.store(true, Ordering::Relaxed);
    }

    /// Records a failed attempt (connect error, timeout, failure status): charged as
    /// [`FAILURE_PENALTY`] at once (a failure is not noise: no [`PEAK_STEP`] limit).
    pub fn observe_failure(&self) {
        self.observe_failure_at(now_nanos());
    }

    fn observe_failure_at(&self, now: u64) {
        let penalty = FAILURE_PENALTY.as_nanos() as f64;
        self.stamp.store(now, Ordering::Relaxed);
        self.measured.store(true, Ordering::Relaxed);
        let next = self.ewma_nanos().max(penalty);
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
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

/// Picks an index among `n` items by power of two choices over `cost`: of two distinct random
/// items, each is taken with a probability inversely proportional to its cost (one ten times
/// the other: ~91/9), or even odds when their costs are within [`TIE_RATIO`]. Returns `None`
/// when `n == 0`.
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
            Some(if prefer_second(cost(a), cost(b), rand::random::<f64>()) {
                b
            } else {
                a
            })
        }
    }
}

/// Whether the second of two items with costs `ca` and `cb` is taken, given a uniform `r` in
/// `[0, 1)`: with probability `ca / (ca + cb)`, or 1/2 when the costs are within
/// [`TIE_RATIO`] of each other or one is unknown (NaN: not measured yet). Other costs that are
/// not finite and positive fall back to "the lower wins" (ties: the first).
fn prefer_second(ca: f64, cb: f64, r: f64) -> bool {
    if ca.is_nan() || cb.is_nan() {
        return r < 0.5;
    }
    let sum = ca + cb;
    if ca.is_finite() && cb.is_finite() && ca > 0.0 && cb > 0.0 && sum.is_finite() {
        if ca.max(cb) < ca.min(cb) * TIE_RATIO {
            r < 0.5
        } else {
            r * sum < ca
        }
    } else {
        cb < ca
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
        slow.observe_at(Duration::from_millis(5), t0);
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
        let load = Load::new(Duration::from_millis(30));
        let t0 = load.stamp.load(Ordering::Relaxed);
        // The first answer replaces the default estimate.
        load.observe_at(Duration::from_millis(10), t0);
        assert_eq!(load.ewma_nanos(), 10_000_000.0);
        // One slow answer multiplies it by 1.5 at most; a sustained slowdown reaches its level
        // (10 → 15 → 22.5 → 33.75 → 50.6 → 75.9 → 100 ms).
        load.observe_at(Duration::from_millis(100), t0);
        assert_eq!(load.ewma_nanos(), 15_000_000.0);
        for _ in 0..5 {
            load.observe_at(Duration::from_millis(100), t0);
        }
        assert_eq!(load.ewma_nanos(), 100_000_000.0);
        // One time constant later a fast answer pulls the estimate down by about 1 - 1/e.
        load.observe_at(Duration::from_millis(0), t0 + DECAY.as_nanos() as u64);
        let v = load.ewma_nanos();
        assert!(v > 35_000_000.0 && v < 38_000_000.0, "{v}");
        // Immediately afterwards a fast answer still pulls it down by [`MIN_PULL`].
        load.observe_at(Duration::from_millis(0), t0 + DECAY.as_nanos() as u64);
        assert!((load.ewma_nanos() - v * (1.0 - MIN_PULL)).abs() < 1.0);
    }

    #[test]
    fn pending_counts_in_cost() {
        let load = Load::new(Duration::from_millis(1));
        let now = load.stamp.load(Ordering::Relaxed);
        assert!(load.cost_at(now).is_nan(), "unmeasured: unknown");
        load.observe_at(Duration::from_millis(1), now);
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
        // Endpoint 0 costs 100 times more: it gets about 1 % (binomial, n = 10,000: sd ~10).
        let mut slow = 0;
        for _ in 0..10_000 {
            if p2c(2, |i| if i == 0 { 100.0 } else { 1.0 }) == Some(0) {
                slow += 1;
            }
        }
        assert!((40..=160).contains(&slow), "{slow}");
        // With three, the cheapest gets most and the most expensive least.
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let i = p2c(3, |i| [5.0, 1.0, 40.0][i]).unwrap_or(99);
            counts[i] += 1;
        }
        assert!(counts[1] > counts[0] && counts[0] > counts[2], "{counts:?}");
    }

    #[test]
    fn equal_costs_split_evenly() {
        // 20,000 draws of 2 equal endpoints: mean 10,000, sd ~71; 5 sd either side.
        let mut first = 0;
        for _ in 0..20_000 {
            if p2c(2, |_| 3.0) == Some(0) {
                first += 1;
            }
        }
        assert!((9_645..=10_355).contains(&first), "{first}");
        assert!(!prefer_second(1.0, 1.0, 0.5));
        assert!(prefer_second(1.0, 1.0, 0.49));
        // Within the tie ratio: even odds; beyond: by inverse cost (1/3 for twice the cost).
        assert!(prefer_second(1.0, 1.9, 0.49));
        assert!(!prefer_second(1.0, 2.0, 0.34));
        assert!(prefer_second(1.0, 2.0, 0.33));
        // Unknown (not measured yet): even odds.
        assert!(prefer_second(f64::NAN, 1.0, 0.49));
        assert!(!prefer_second(1.0, f64::NAN, 0.5));
        // Degenerate costs: the lower wins.
        assert!(prefer_second(f64::INFINITY, 1.0, 0.9));
        assert!(!prefer_second(0.0, 1.0, 0.0));
    }

    #[test]
    fn a_peak_fades_after_a_few_good_answers() {
        let load = Load::new(Duration::from_millis(1));
        let t0 = load.stamp.load(Ordering::Relaxed);
        load.observe_failure_at(t0);
        assert_eq!(load.ewma_nanos(), 1e9);
        // Answers 1 µs apart (no time decay to speak of): each pulls half of the way:
        // 0.5^12 × 1 s ≈ 0.24 ms above the 1 ms answers.
        for k in 1..=12u64 {
            load.observe_at(Duration::from_millis(1), t0 + k * 1_000);
        }
        let v = load.ewma_nanos();
        assert!(v < 1_300_000.0, "{v}");
    }

    #[test]
    fn try_start_respects_the_limit() {
        let load = Load::default();
        let a = load.try_start(2);
        let b = load.try_start(2);
        assert!(a.is_some() && b.is_some());
        assert!(load.try_start(2).is_none());
        drop(a);
        assert!(load.try_start(2).is_some());
        assert!(load.try_start(0).is_some());
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
