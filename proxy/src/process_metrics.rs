//! The standard `process_*` metrics (as Prometheus' client libraries name them) and
//! `weft_build_info`, read from `/proc` at scrape time: a few small reads, nothing on the request
//! path. Where `/proc` is missing (not Linux) or unreadable, the families are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`): 100 on every Linux
/// architecture the kernel exports to user space (`sysconf(_SC_CLK_TCK)`).
const USER_HZ: f64 = 100.0;

/// What one scrape read; `None` when it could not be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's statistics from `/proc`.
    pub fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = read("/proc/self/stat");
        let times = stat.as_deref().and_then(parse_stat);
        let boot = read("/proc/stat").as_deref().and_then(parse_boot_time);
        ProcessStats {
            cpu_seconds: times.map(|t| t.cpu_ticks / USER_HZ),
            resident_memory_bytes: read("/proc/self/status").as_deref().and_then(parse_rss),
            start_time_seconds: match (times, boot) {
                (Some(t), Some(boot)) => Some(boot + t.start_ticks / USER_HZ),
                _ => None,
            },
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
            max_fds: read("/proc/self/limits").as_deref().and_then(parse_max_fds),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct StatTimes {
    /// utime + stime.
    cpu_ticks: f64,
    /// Since boot.
    start_ticks: f64,
}

/// `/proc/<pid>/stat`: fields after the command name (which may hold spaces and parentheses,
/// hence the last `)`); utime and stime are fields 14 and 15, starttime field 22.
fn parse_stat(text: &str) -> Option<StatTimes> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n.checked_sub(3)?)?.parse().ok() };
    Some(StatTimes {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

/// `btime` of `/proc/stat`: boot time, Unix seconds.
fn parse_boot_time(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime"))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS:  1234 kB` of `/proc/<pid>/status`, in bytes.
fn parse_rss(text: &str) -> Option<f64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`.
fn parse_max_fds(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Encodes the `process_*` families and `weft_build_info` at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(v) = stats.cpu_seconds {
            let metric = ConstCounter::new(v);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_memory_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                stats.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit)",
                stats.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let metric = ConstGauge::new(v);
                metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
            }
        }
        let info = ConstGauge::new(1_i64);
        let mut family = encoder.encode_descriptor(
            "weft_build_info",
            "The build of this weft binary (value 1)",
            None,
            MetricType::Gauge,
        )?;
        info.encode(family.encode_family(&[
            ("component", "proxy"),
            ("version", env!("CARGO_PKG_VERSION")),
        ])?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (weft (proxy) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 \
                    4 0 12345 1000000 500 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(StatTimes {
                cpu_ticks: 400.0,
                start_ticks: 12345.0
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            parse_rss("Name:\tweft\nVmRSS:\t   2048 kB\n"),
            Some(2048.0 * 1024.0)
        );
        assert_eq!(
            parse_max_fds(
                "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max open files            1024                 524288               files\n"
            ),
            Some(1024.0)
        );
    }

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(s.cpu_seconds.is_some_and(|v| v >= 0.0), "{s:?}");
            assert!(s.resident_memory_bytes.is_some_and(|v| v > 0.0), "{s:?}");
            assert!(s.open_fds.is_some_and(|v| v >= 1.0), "{s:?}");
            assert!(s.max_fds.is_some_and(|v| v >= 1.0), "{s:?}");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            assert!(
                s.start_time_seconds
                    .is_some_and(|t| t <= now + 1.0 && t > now - 86_400.0 * 365.0),
                "{s:?}"
            );
        }
    }
}
