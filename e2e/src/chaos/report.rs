//! A load run's record (one [`Sample`] per request, by intended start time) and the figures the
//! benchmark reports from it: outcome counts, latency percentiles of successful requests, goodput,
//! and after a fault, the time until at least a target share of requests succeed again and the
//! requests lost meanwhile.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// Connect or I/O error, or a malformed response.
    Error,
    /// No response within the load generator's time limit.
    Timeout,
}

impl Outcome {
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Status(s) if (200..300).contains(&s))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::Error => f.write_str("err"),
            Outcome::Timeout => f.write_str("timeout"),
        }
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "err" => Ok(Outcome::Error),
            "timeout" => Ok(Outcome::Timeout),
            _ => s
                .parse::<u16>()
                .ok()
                .filter(|s| (100..1000).contains(s))
                .map(Outcome::Status)
                .ok_or_else(|| format!("bad outcome {s:?}")),
        }
    }
}

/// One request: when it was due (µs after the run started; open loop, so latency counts from
/// then, including any wait for a connection), how long until it ended, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub start_us: u64,
    pub latency_us: u64,
    pub outcome: Outcome,
}

impl Sample {
    /// One TSV line: `start_us latency_us outcome`.
    pub fn to_line(&self) -> String {
        format!("{}\t{}\t{}", self.start_us, self.latency_us, self.outcome)
    }

    pub fn parse_line(line: &str) -> Result<Sample, String> {
        let mut f = line.split('\t');
        let mut num = |what: &str| -> Result<u64, String> {
            f.next()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("bad {what} in {line:?}"))
        };
        let start_us = num("start")?;
        let latency_us = num("latency")?;
        let outcome = f
            .next()
            .ok_or_else(|| format!("no outcome in {line:?}"))?
            .trim()
            .parse()?;
        Ok(Sample {
            start_us,
            latency_us,
            outcome,
        })
    }
}

/// What to compute, over the requests due in `[from_s, to_s)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub from_s: f64,
    pub to_s: f64,
    /// When the fault began (seconds after the run started), for recovery figures.
    pub fault_s: Option<f64>,
    /// Recovery must hold this long to count (the end of the window minus this is the latest
    /// moment at which recovery can be found).
    pub hold_s: f64,
    /// Share of requests that must succeed (0.999).
    pub target: f64,
}

/// The figures of one window (latencies in milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub from_s: f64,
    pub to_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    /// Count per outcome (`200`, `503`, `err`, `timeout`, ...).
    pub outcomes: BTreeMap<String, u64>,
    pub success_ratio: Option<f64>,
    /// Successful requests per second of window.
    pub goodput_rps: f64,
    pub ok_p50_ms: Option<f64>,
    pub ok_p90_ms: Option<f64>,
    pub ok_p99_ms: Option<f64>,
    pub ok_p999_ms: Option<f64>,
    pub ok_max_ms: Option<f64>,
    /// Seconds from the fault until, from then to the end of the window, at least `target` of
    /// requests succeed (and that lasts at least `hold_s`); `None`: never within the window.
    pub recovery_s: Option<f64>,
    /// Failed requests due after the fault.
    pub lost_after_fault: Option<u64>,
    /// Failed requests in the last `hold_s` of the window (the state the balancer settled in).
    pub failed_in_last_hold: Option<u64>,
    pub requests_in_last_hold: Option<u64>,
}

/// Nearest-rank percentile (`p` in 0..=1) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&p) {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Seconds after `fault_s` until every later suffix of the run (from that request to the end)
/// has at least `target` of its requests succeed, with that suffix starting no later than
/// `end_s - hold_s`. `samples` sorted by start.
pub fn recovery(
    samples: &[Sample],
    fault_s: f64,
    end_s: f64,
    hold_s: f64,
    target: f64,
) -> Option<f64> {
    let fault_us = secs_to_us(fault_s);
    let latest_us = secs_to_us(end_s - hold_s);
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.start_us >= fault_us && s.start_us < secs_to_us(end_s))
        .collect();
    let mut failed_suffix = vec![0u64; after.len() + 1];
    for (i, s) in after.iter().enumerate().rev() {
        failed_suffix[i] = failed_suffix[i + 1] + u64::from(!s.outcome.is_success());
    }
    if failed_suffix.first().copied().unwrap_or(0) == 0 {
        return Some(0.0);
    }
    for (i, s) in after.iter().enumerate() {
        if s.start_us > latest_us {
            break;
        }
        // Recovery begins right after a failure, never on one.
        if !s.outcome.is_success() {
            continue;
        }
        let n = (after.len() - i) as f64;
        if failed_suffix[i] as f64 <= (1.0 - target) * n {
            return Some(s.start_us.saturating_sub(fault_us) as f64 / 1e6);
        }
    }
    None
}

fn secs_to_us(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1e6) as u64
    } else {
        0
    }
}

fn ms(us: Option<u64>) -> Option<f64> {
    us.map(|u| u as f64 / 1000.0)
}

/// The figures of `w` over `samples` (in any order).
pub fn report(samples: &[Sample], w: &Window) -> Report {
    let (from_us, to_us) = (secs_to_us(w.from_s), secs_to_us(w.to_s));
    let mut inside: Vec<Sample> = samples
        .iter()
        .filter(|s| s.start_us >= from_us && s.start_us < to_us)
        .copied()
        .collect();
    inside.sort_by_key(|s| s.start_us);
    let mut outcomes = BTreeMap::new();
    for s in &inside {
        *outcomes.entry(s.outcome.to_string()).or_insert(0u64) += 1;
    }
    let mut ok_lat: Vec<u64> = inside
        .iter()
        .filter(|s| s.outcome.is_success())
        .map(|s| s.latency_us)
        .collect();
    ok_lat.sort_unstable();
    let requests = inside.len() as u64;
    let ok = ok_lat.len() as u64;
    let span = (w.to_s - w.from_s).max(f64::MIN_POSITIVE);
    let (mut recovery_s, mut lost, mut last_failed, mut last_n) = (None, None, None, None);
    if let Some(fault_s) = w.fault_s {
        recovery_s = recovery(&inside, fault_s, w.to_s, w.hold_s, w.target);
        let fault_us = secs_to_us(fault_s);
        lost = Some(
            inside
                .iter()
                .filter(|s| s.start_us >= fault_us && !s.outcome.is_success())
                .count() as u64,
        );
        let hold_from = secs_to_us(w.to_s - w.hold_s);
        let tail: Vec<&Sample> = inside.iter().filter(|s| s.start_us >= hold_from).collect();
        last_n = Some(tail.len() as u64);
        last_failed = Some(tail.iter().filter(|s| !s.outcome.is_success()).count() as u64);
    }
    Report {
        from_s: w.from_s,
        to_s: w.to_s,
        requests,
        ok,
        failed: requests - ok,
        outcomes,
        success_ratio: (requests > 0).then(|| ok as f64 / requests as f64),
        goodput_rps: ok as f64 / span,
        ok_p50_ms: ms(percentile(&ok_lat, 0.5)),
        ok_p90_ms: ms(percentile(&ok_lat, 0.9)),
        ok_p99_ms: ms(percentile(&ok_lat, 0.99)),
        ok_p999_ms: ms(percentile(&ok_lat, 0.999)),
        ok_max_ms: ms(ok_lat.last().copied()),
        recovery_s,
        lost_after_fault: lost,
        failed_in_last_hold: last_failed,
        requests_in_last_hold: last_n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcomes: &[(u64, Outcome)]) -> Vec<Sample> {
        outcomes
            .iter()
            .map(|&(start_ms, outcome)| Sample {
                start_us: start_ms * 1000,
                latency_us: 1000,
                outcome,
            })
            .collect()
    }

    /// 100 rps for 10 s; requests due in [fail_from, fail_to) ms get `bad`.
    fn steady(fail_from: u64, fail_to: u64, bad: Outcome) -> Vec<Sample> {
        let every: Vec<(u64, Outcome)> = (0..1000)
            .map(|i| {
                let t = i * 10;
                let o = if (fail_from..fail_to).contains(&t) {
                    bad
                } else {
                    Outcome::Status(200)
                };
                (t, o)
            })
            .collect();
        run(&every)
    }

    fn window(fault_s: f64) -> Window {
        Window {
            from_s: 0.0,
            to_s: 10.0,
            fault_s: Some(fault_s),
            hold_s: 3.0,
            target: 0.999,
        }
    }

    #[test]
    fn recovery_is_the_moment_after_the_last_failure_burst() {
        let samples = steady(2000, 3500, Outcome::Status(502));
        let r = report(&samples, &window(2.0));
        assert_eq!(r.recovery_s, Some(1.5));
        assert_eq!(r.lost_after_fault, Some(150));
        assert_eq!(r.failed_in_last_hold, Some(0));
        assert_eq!(r.outcomes.get("502"), Some(&150));
        assert_eq!(r.ok, 850);
    }

    #[test]
    fn failures_that_never_stop_mean_no_recovery() {
        // One request in three fails for the rest of the run (the balancer never learned).
        let every: Vec<(u64, Outcome)> = (0..1000)
            .map(|i| {
                let bad = i >= 200 && i % 3 == 0;
                let o = if bad {
                    Outcome::Error
                } else {
                    Outcome::Status(200)
                };
                (i * 10, o)
            })
            .collect();
        let r = report(&run(&every), &window(2.0));
        assert_eq!(r.recovery_s, None);
        assert_eq!(r.failed_in_last_hold, Some(100));
    }

    #[test]
    fn a_late_failure_counts_against_the_share_of_what_follows_it() {
        let mut samples = steady(2000, 2500, Outcome::Timeout);
        // One failure at 5 s among the 750 requests after 2.5 s: 0.13 % > 0.1 %, so recovery
        // waits for it; among 17,900 (below) it is within target.
        samples[500].outcome = Outcome::Status(503);
        let r = report(&samples, &window(2.0));
        assert_eq!(r.recovery_s, Some(3.01));
        assert_eq!(r.lost_after_fault, Some(51));
        let mut long: Vec<Sample> = (0..20_000)
            .map(|i| Sample {
                start_us: i * 1000,
                latency_us: 10,
                outcome: if (2000..2100).contains(&i) || i == 15_000 {
                    Outcome::Error
                } else {
                    Outcome::Status(200)
                },
            })
            .collect();
        long.reverse();
        let w = Window {
            to_s: 20.0,
            ..window(2.0)
        };
        assert_eq!(report(&long, &w).recovery_s, Some(0.1));
    }

    #[test]
    fn no_failure_at_all_recovers_at_once_and_a_fault_too_late_to_hold_never() {
        let samples = steady(0, 0, Outcome::Error);
        assert_eq!(report(&samples, &window(2.0)).recovery_s, Some(0.0));
        let samples = steady(8000, 10_000, Outcome::Error);
        assert_eq!(report(&samples, &window(8.0)).recovery_s, None);
    }

    #[test]
    fn percentiles_are_nearest_rank_over_successes_only() {
        let mut samples: Vec<Sample> = (1..=1000)
            .map(|i| Sample {
                start_us: i,
                latency_us: i * 1000,
                outcome: Outcome::Status(200),
            })
            .collect();
        samples.push(Sample {
            start_us: 5,
            latency_us: 99_000_000,
            outcome: Outcome::Timeout,
        });
        let w = Window {
            from_s: 0.0,
            to_s: 1.0,
            fault_s: None,
            hold_s: 0.0,
            target: 0.999,
        };
        let r = report(&samples, &w);
        assert_eq!(r.ok_p50_ms, Some(500.0));
        assert_eq!(r.ok_p99_ms, Some(990.0));
        assert_eq!(r.ok_p999_ms, Some(999.0));
        assert_eq!(r.ok_max_ms, Some(1000.0));
        assert_eq!((r.requests, r.failed), (1001, 1));
        assert_eq!(r.goodput_rps, 1000.0);
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.0), Some(7));
    }

    #[test]
    fn samples_round_trip_through_their_line() {
        for o in [Outcome::Status(429), Outcome::Error, Outcome::Timeout] {
            let s = Sample {
                start_us: 12,
                latency_us: 34,
                outcome: o,
            };
            assert_eq!(Sample::parse_line(&s.to_line()), Ok(s));
        }
        assert!(Sample::parse_line("1\t2").is_err());
        assert!(Sample::parse_line("1\t2\t99").is_err());
        assert!(Sample::parse_line("x\t2\t200").is_err());
    }
}
