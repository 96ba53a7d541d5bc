//! Memory given back to the kernel, in two cases:
//!
//! - After a large config shrink (issue #19): [`give_back_after_shrinks`] follows the config in
//!   force and, when it shrinks by at least `SHRINK_MIN` resources to at most half of what it was
//!   (`weft_common::memory::is_large_shrink`, the rule and the reasons), waits [`SETTLE`]
//!   (requests in flight drop their handles on the old config), then asks glibc to return free
//!   pages (`weft_common::memory::trim`) on a blocking thread. Only a large shrink triggers it:
//!   never per update, so steady churn costs nothing.
//! - After a burst of traffic (issue #20): buffers freed when the requests end stay in glibc's
//!   heap (5.6 MiB of anonymous memory after the benchmark's 1 KiB load, 11-13 MiB after 64 KiB
//!   bodies or HTTP/2 clients, of which `malloc_trim` returned 2.3, 5.7 and 7.7 MiB:
//!   docs/benchmarks.md, "Memory after load"). [`give_back_when_quiet`] looks every
//!   [`QUIET_INTERVAL`] at the process's CPU time (and, when it has gone quiet after being busy,
//!   at its anonymous memory), and trims once if its heap grew ([`QuietWatch`], the rule). One
//!   `/proc` read per look, nothing on the request path; under steady load it never
//!   trims (the freed memory is about to be used again).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
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

/// How often the proxy looks for a quiet spell (`WEFT_PROXY_MEMORY_QUIET`).
pub const QUIET_INTERVAL: Duration = Duration::from_secs(5);

/// A look in which the proxy used at least this share of a core was busy.
const BUSY_SHARE: f64 = 0.05;
/// A look in which it used less than this share of a core was quiet.
const QUIET_SHARE: f64 = 0.01;
/// A trim is only worth it when anonymous memory grew this much since the last one.
const MIN_GROWTH: u64 = 1 << 20;

/// When to trim after load: the one rule, fed one look at a time. A look is busy when the proxy
/// used at least [`BUSY_SHARE`] of a core, quiet under [`QUIET_SHARE`]. The first quiet look
/// after a busy one (any number of looks between) is a candidate, and the trim is due when
/// anonymous memory is then at least [`MIN_GROWTH`] above what it was after the last trim (or
/// at start). Memory is read only for candidates, so an idle or steadily loaded proxy's looks
/// read one small file.
#[derive(Debug)]
pub struct QuietWatch {
    busy: bool,
    baseline: u64,
}

impl QuietWatch {
    /// Starts with the anonymous memory at start as the baseline.
    pub fn new(anon: u64) -> Self {
        QuietWatch {
            busy: false,
            baseline: anon,
        }
    }

    /// One look: CPU time `used` over `interval`. True for a candidate: read the memory and ask
    /// [`QuietWatch::due`].
    pub fn observe(&mut self, used: Duration, interval: Duration) -> bool {
        let share = used.as_secs_f64() / interval.as_secs_f64().max(f64::EPSILON);
        if share >= BUSY_SHARE {
            self.busy = true;
        }
        self.busy && share < QUIET_SHARE
    }

    /// For a candidate with `anon` bytes of anonymous memory: whether to trim. When not, the
    /// burst is forgotten, and memory glibc gave back by itself lowers the baseline.
    pub fn due(&mut self, anon: u64) -> bool {
        if anon >= self.baseline.saturating_add(MIN_GROWTH) {
            return true;
        }
        self.busy = false;
        self.baseline = self.baseline.min(anon);
        false
    }

    /// After a trim that left `anon` bytes: the next one needs a new burst and new growth.
    pub fn trimmed(&mut self, anon: u64) {
        self.busy = false;
        self.baseline = anon;
    }
}

/// What the quiet trims did, on the admin `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct QuietTrims {
    trims: Counter,
    released: Counter,
}

impl QuietTrims {
    /// Registers `weft_proxy_memory_quiet_trims_total` and
    /// `weft_proxy_memory_quiet_released_bytes_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_proxy_memory_quiet_trims",
            "Times freed heap was returned to the kernel when the proxy went quiet after load",
            self.trims.clone(),
        );
        registry.register(
            "weft_proxy_memory_quiet_released_bytes",
            "Anonymous memory those trims returned to the kernel",
            self.released.clone(),
        );
    }
}

/// The process's user + system CPU time so far (`/proc/self/stat`, all its threads), or `None`
/// off Linux. In clock ticks of `USER_HZ`, 10 ms on Linux: fine for looks seconds apart.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (which may hold spaces: cut at its closing parenthesis) come
    // field 3 (state) to field 15; utime is field 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime).saturating_mul(10)))
}

/// The process's anonymous resident memory in bytes (`RssAnon` of `/proc/self/status`).
fn anon_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Looks every `interval` and trims when [`QuietWatch`] says so; returns at once where `/proc`
/// cannot be read (nothing to measure by).
pub async fn give_back_when_quiet(interval: Duration, trims: QuietTrims) {
    let (Some(mut last_cpu), Some(anon)) = (cpu_time(), anon_bytes()) else {
        tracing::debug!("no /proc/self: no trims after load");
        return;
    };
    let mut watch = QuietWatch::new(anon);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(cpu) = cpu_time() else {
            return;
        };
        let used = cpu.saturating_sub(last_cpu);
        last_cpu = cpu;
        if !watch.observe(used, interval) {
            continue;
        }
        let Some(anon) = anon_bytes() else {
            return;
        };
        if !watch.due(anon) {
            continue;
        }
        tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        let after = anon_bytes().unwrap_or(anon);
        let released = anon.saturating_sub(after);
        trims.trims.inc();
        trims.released.inc_by(released);
        tracing::info!(
            before_kib = anon / 1024,
            after_kib = after / 1024,
            released_kib = released / 1024,
            "quiet after load: freed heap returned to the kernel (malloc_trim)"
        );
        watch.trimmed(after);
        // The trim's own CPU time is not load.
        last_cpu = cpu_time().unwrap_or(last_cpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOK: Duration = Duration::from_secs(5);
    const MIB: u64 = 1 << 20;

    fn cpu(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// One look with `ms` of CPU; the memory is only read (and passed) for candidates.
    fn look(w: &mut QuietWatch, ms: u64, anon: u64) -> bool {
        w.observe(cpu(ms), LOOK) && w.due(anon)
    }

    #[test]
    fn trims_once_when_quiet_after_a_burst_that_grew_the_heap() {
        let mut w = QuietWatch::new(2 * MIB);
        // Idle from the start: nothing to give back.
        assert!(!look(&mut w, 0, 2 * MIB));
        // Load (half a core), the heap grows; no trim while busy.
        assert!(!look(&mut w, 2_500, 9 * MIB));
        assert!(!look(&mut w, 2_500, 11 * MIB));
        // Winding down (neither busy nor quiet), then quiet: trim.
        assert!(!look(&mut w, 200, 11 * MIB));
        assert!(look(&mut w, 10, 11 * MIB));
        w.trimmed(3 * MIB);
        // Still quiet: no second trim without a new burst.
        assert!(!look(&mut w, 0, 3 * MIB));
        assert!(!look(&mut w, 0, 5 * MIB));
    }

    #[test]
    fn steady_load_and_idle_proxies_are_left_alone() {
        let mut w = QuietWatch::new(2 * MIB);
        for _ in 0..100 {
            assert!(!w.observe(cpu(1_000), LOOK));
        }
        // Light traffic (probes, a request now and then) is neither busy nor quiet enough.
        let mut w = QuietWatch::new(2 * MIB);
        for _ in 0..100 {
            assert!(!w.observe(cpu(100), LOOK));
        }
    }

    #[test]
    fn a_burst_that_did_not_grow_the_heap_is_not_trimmed_after() {
        let mut w = QuietWatch::new(4 * MIB);
        assert!(!look(&mut w, 3_000, 4 * MIB + MIB / 2));
        assert!(!look(&mut w, 0, 4 * MIB + MIB / 2));
        // The burst is forgotten: the next quiet looks are not candidates.
        assert!(!w.observe(cpu(0), LOOK));
        // glibc gave memory back by itself: growth counts from the lowest point seen.
        let mut w = QuietWatch::new(8 * MIB);
        assert!(!look(&mut w, 3_000, 8 * MIB));
        assert!(!look(&mut w, 0, 3 * MIB));
        assert!(!look(&mut w, 3_000, 6 * MIB));
        assert!(look(&mut w, 0, 6 * MIB));
    }

    #[test]
    fn reads_its_own_cpu_time_and_memory() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let anon = anon_bytes().expect("RssAnon");
        assert!(anon > 0);
        let before = cpu_time().expect("CPU time");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time().expect("CPU time") >= before);
    }
}
