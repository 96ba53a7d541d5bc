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
//!   docs/benchmarks.md, "Memory after load"), and so do the buffers of pooled connections that
//!   close when idle, a minute later. [`give_back_when_quiet`] looks every [`QUIET_INTERVAL`]
//!   at the process's CPU time (and, when it is quiet, at how much of its anonymous memory the
//!   heap does not hold in use), and trims when that grew ([`QuietWatch`], the rule). One
//!   `/proc` read per look (and a `mallinfo2` and a second `/proc` read when quiet), nothing on
//!   the request path; under load it never trims (the freed memory is about to be used again).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use weft_common::memory::{heap_in_use, trim, ShrinkWatch};

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

/// A look in which the proxy used less than this share of a core was quiet.
const QUIET_SHARE: f64 = 0.01;
/// A trim is only worth it when this much more of the proxy's memory is resident and not in use
/// than after the last one.
const MIN_GROWTH: u64 = 1 << 20;

/// When to trim: the one rule, fed one look at a time. A look is quiet when the proxy used less
/// than [`QUIET_SHARE`] of a core; on a quiet look the trim is due when the proxy's *slack* (its
/// anonymous resident memory less what glibc's heap holds in use, `anon_and_slack`) is at least
/// [`MIN_GROWTH`] above what it was after the last trim (or at start, or the lowest seen since:
/// glibc returns the top of its heap by itself). The slack is what a trim can return, plus
/// stacks and the like, which do not change. A busy proxy never trims (what it freed is about
/// to be used again), and a quiet one trims whenever memory was freed, which is not only when
/// load ends: pooled upstream connections that go idle after load close a minute later, and
/// their buffers are freed then (a rule that looked only at the first quiet moment after load
/// left them with glibc: docs/benchmarks.md, "Two timed runs of the boxed request"). Memory
/// taken into use (a larger config, more connections) raises both terms and is no reason to
/// trim. (glibc's own count of free heap is not the slack: pages a trim returned stay counted
/// as free, so after a first trim a rule that followed it missed a second burst of the same
/// size, and a proxy kept 17 MiB it did not use: docs/benchmarks.md, session 22.)
#[derive(Debug)]
pub struct QuietWatch {
    baseline: u64,
}

impl QuietWatch {
    /// Starts with the slack at start as the baseline.
    pub fn new(slack: u64) -> Self {
        QuietWatch { baseline: slack }
    }

    /// One look: CPU time `used` over `interval`. True when quiet: read the slack
    /// (`anon_and_slack`) and ask [`QuietWatch::due`].
    pub fn observe(&self, used: Duration, interval: Duration) -> bool {
        let share = used.as_secs_f64() / interval.as_secs_f64().max(f64::EPSILON);
        share < QUIET_SHARE
    }

    /// On a quiet look with `slack` bytes of slack: whether to trim. When not, memory glibc
    /// gave back by itself lowers the baseline.
    pub fn due(&mut self, slack: u64) -> bool {
        if slack >= self.baseline.saturating_add(MIN_GROWTH) {
            return true;
        }
        self.baseline = self.baseline.min(slack);
        false
    }

    /// After a trim that left `slack` bytes (what whole pages could not give back, stacks and
    /// the like): the next trim needs [`MIN_GROWTH`] more.
    pub fn trimmed(&mut self, slack: u64) {
        self.baseline = slack;
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

/// The proxy's anonymous resident memory, and its slack: the part glibc's heap does not hold in
/// use, which is heap freed and still resident (what [`trim`] can give back) plus stacks and the
/// like. `None` without `/proc` or glibc malloc.
fn anon_and_slack() -> Option<(u64, u64)> {
    let anon = anon_bytes()?;
    Some((anon, anon.saturating_sub(heap_in_use()?)))
}

/// Looks every `interval` and trims when [`QuietWatch`] says so; returns at once where `/proc`
/// or glibc's malloc statistics cannot be read (nothing to measure by, or nothing to trim).
pub async fn give_back_when_quiet(interval: Duration, trims: QuietTrims) {
    let (Some(mut last_cpu), Some((_, slack))) = (cpu_time(), anon_and_slack()) else {
        tracing::debug!("no /proc/self or no glibc malloc: no trims after load");
        return;
    };
    let mut watch = QuietWatch::new(slack);
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
        let Some((anon, slack)) = anon_and_slack() else {
            return;
        };
        if !watch.due(slack) {
            continue;
        }
        tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        let (after, slack_after) = anon_and_slack().unwrap_or((anon, slack));
        let released = anon.saturating_sub(after);
        trims.trims.inc();
        trims.released.inc_by(released);
        tracing::info!(
            slack_kib = slack / 1024,
            before_kib = anon / 1024,
            after_kib = after / 1024,
            released_kib = released / 1024,
            "quiet: freed heap returned to the kernel (malloc_trim)"
        );
        watch.trimmed(slack_after);
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

    /// One look with `ms` of CPU; the slack is only read (and passed) on quiet looks.
    fn look(w: &mut QuietWatch, ms: u64, slack: u64) -> bool {
        w.observe(cpu(ms), LOOK) && w.due(slack)
    }

    #[test]
    fn trims_when_quiet_after_a_burst_freed_heap() {
        let mut w = QuietWatch::new(MIB / 2);
        // Idle from the start: nothing to give back.
        assert!(!look(&mut w, 0, MIB / 2));
        // Load (half a core), buffers freed and reused; no trim while busy.
        assert!(!look(&mut w, 2_500, 6 * MIB));
        assert!(!look(&mut w, 2_500, 7 * MIB));
        // Winding down (not quiet), then quiet: trim.
        assert!(!look(&mut w, 200, 7 * MIB));
        assert!(look(&mut w, 10, 7 * MIB));
        // What whole pages could not give back stays free in the heap: no trim again for it.
        w.trimmed(MIB);
        assert!(!look(&mut w, 0, MIB));
        assert!(!look(&mut w, 0, MIB + MIB / 2));
    }

    #[test]
    fn memory_freed_later_in_a_quiet_spell_is_trimmed_too() {
        // Load ends while pooled connections still hold their buffers: the first quiet look
        // trims what the requests freed; the pool's idle timeout frees the rest a minute later,
        // with no load between.
        let mut w = QuietWatch::new(MIB / 2);
        assert!(!look(&mut w, 3_000, 5 * MIB));
        assert!(look(&mut w, 0, 5 * MIB));
        w.trimmed(MIB);
        for _ in 0..11 {
            assert!(!look(&mut w, 0, MIB));
        }
        assert!(look(&mut w, 0, 4 * MIB));
        w.trimmed(MIB);
        assert!(!look(&mut w, 0, MIB));
    }

    #[test]
    fn steady_load_and_light_traffic_are_left_alone() {
        let w = QuietWatch::new(2 * MIB);
        for _ in 0..100 {
            assert!(!w.observe(cpu(1_000), LOOK));
        }
        // Light traffic (probes, a request now and then) is not quiet.
        for _ in 0..100 {
            assert!(!w.observe(cpu(100), LOOK));
        }
    }

    #[test]
    fn less_than_a_mebibyte_freed_is_left_to_glibc() {
        let mut w = QuietWatch::new(4 * MIB);
        assert!(!look(&mut w, 3_000, 4 * MIB + MIB / 2));
        assert!(!look(&mut w, 0, 4 * MIB + MIB / 2));
        // glibc gave memory back by itself: growth counts from the lowest point seen.
        let mut w = QuietWatch::new(8 * MIB);
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
        if cfg!(target_env = "gnu") {
            assert!(anon_and_slack().is_some());
        }
        let before = cpu_time().expect("CPU time");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time().expect("CPU time") >= before);
    }
}
