//! Failure accrual (circuit breaking) per endpoint, and the `Retry-After` back-off.
//!
//! Each endpoint's [`Breaker`] lives in its [`crate::balance::Load`]: live state, kept across
//! config pushes while the endpoint stays in its set. What counts as a failure is the service's
//! [`FailureAccrual`]: connect errors, attempt timeouts, statuses in `failure_statuses`, and a
//! `grpc-status` (response header: a trailers-only answer) in `failure_grpc_codes`.
//!
//! - **Ejection.** `consecutive_failures` failures in a row, or a success rate under
//!   `min_success_rate` over `window` (once `min_requests` answers are in it), eject the
//!   endpoint for a backoff: `min_backoff × 2^k` (k: ejections since it last recovered), plus up
//!   to 25 % jitter, at most `max_backoff`. An ejected endpoint is never picked.
//! - **Probation.** Once its backoff has passed, exactly one request (the probe) may go to it. A
//!   success restores it; a failure ejects it again with twice the backoff. A probe that ends
//!   with no verdict (the client went away) lets the next request probe.
//! - **Back-off.** `429` and gRPC `RESOURCE_EXHAUSTED` (8) are not failures, but the endpoint
//!   gets no request for its `Retry-After` (seconds or an HTTP date), bounded by `max_backoff`,
//!   or `min_backoff` when it gave none.
//!
//! The state is a small mutex per endpoint, held for a few instructions and never across an
//! await; picking reads one atomic flag for a healthy endpoint and locks only impaired ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};

use crate::metrics::{EjectedGuard, Metrics, OutboundLabels};
use serde::Serialize;

/// A set of HTTP statuses, as inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatusSet(pub Vec<(u16, u16)>);

impl StatusSet {
    pub fn from_pairs(pairs: &[(u16, u16)]) -> Self {
        StatusSet(pairs.to_vec())
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= status && status <= hi)
    }
}

/// When an endpoint is ejected from the balancer, and for how long.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureAccrual {
    /// 0: never by consecutive failures.
    pub consecutive_failures: u32,
    /// 0: never by success rate.
    pub min_success_rate: f64,
    #[serde(serialize_with = "ser_duration_ms_plain", rename = "window_ms")]
    pub window: Duration,
    pub min_requests: u32,
    #[serde(serialize_with = "ser_duration_ms_plain", rename = "min_backoff_ms")]
    pub min_backoff: Duration,
    #[serde(serialize_with = "ser_duration_ms_plain", rename = "max_backoff_ms")]
    pub max_backoff: Duration,
    pub failure_statuses: StatusSet,
    pub failure_grpc_codes: Vec<u32>,
}

impl Default for FailureAccrual {
    fn default() -> Self {
        use weft_common::reliability as d;
        FailureAccrual {
            consecutive_failures: d::ACCRUAL_CONSECUTIVE_FAILURES,
            min_success_rate: d::ACCRUAL_MIN_SUCCESS_RATE,
            window: Duration::from_millis(d::ACCRUAL_WINDOW_MS),
            min_requests: d::ACCRUAL_MIN_REQUESTS,
            min_backoff: Duration::from_millis(d::ACCRUAL_MIN_BACKOFF_MS),
            max_backoff: Duration::from_millis(d::ACCRUAL_MAX_BACKOFF_MS),
            failure_statuses: StatusSet::from_pairs(d::FAILURE_STATUSES),
            failure_grpc_codes: d::FAILURE_GRPC_CODES.to_vec(),
        }
    }
}

fn ser_duration_ms_plain<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Buckets of the success-rate window.
const BUCKETS: usize = 10;
/// Longest ejection or back-off, whatever the policy says (keeps `Instant` arithmetic far from
/// overflow).
const LONGEST: Duration = Duration::from_secs(24 * 3600);
/// gRPC `RESOURCE_EXHAUSTED`.
pub const GRPC_RESOURCE_EXHAUSTED: u32 = 8;

/// What an attempt tells about its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// `429` / `RESOURCE_EXHAUSTED`: back off for this long (`None`: the minimum backoff).
    Overloaded(Option<Duration>),
    /// Nothing learnt (the client's own body failed, the attempt was cancelled).
    Unknown,
}

/// Whether an endpoint may be picked now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Ejected, its backoff over: one request may probe it.
    ProbeDue,
    /// Ejected until `until` (`None`: its probe is in flight).
    Ejected {
        until: Option<Instant>,
    },
    /// Backing off for its `Retry-After` until then.
    BackingOff {
        until: Instant,
    },
}

/// Where a verdict is reported: the policy in force and the metrics labels of the service.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub policy: &'a FailureAccrual,
    pub metrics: &'a Metrics,
    pub labels: &'a OutboundLabels,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
struct Ejection {
    until: Instant,
    probing: bool,
    _counted: EjectedGuard,
}

#[derive(Debug, Default)]
struct Inner {
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
    /// Index of the current bucket, in bucket widths since `origin`.
    epoch: u64,
    /// Ejections since the endpoint last recovered (the backoff's exponent).
    ejections: u32,
    ejected: Option<Ejection>,
    backoff_until: Option<Instant>,
}

/// One endpoint's failure accrual state.
#[derive(Debug, Default)]
pub struct Breaker {
    /// Set while ejected or backing off: only then does picking lock `inner`.
    impaired: AtomicBool,
    inner: Mutex<Inner>,
}

fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Whether the endpoint may be picked at `now`.
    pub fn availability(&self, now: Instant) -> Availability {
        if !self.impaired.load(Ordering::Acquire) {
            return Availability::Ready;
        }
        let mut inner = self.lock();
        if let Some(e) = &inner.ejected {
            return if e.probing {
                Availability::Ejected { until: None }
            } else if now >= e.until {
                Availability::ProbeDue
            } else {
                Availability::Ejected {
                    until: Some(e.until),
                }
            };
        }
        match inner.backoff_until {
            Some(until) if now < until => Availability::BackingOff { until },
            _ => {
                inner.backoff_until = None;
                self.impaired.store(false, Ordering::Release);
                Availability::Ready
            }
        }
    }

    /// Claims the probe of an ejected endpoint whose backoff has passed; `false` when there is
    /// no probe to claim (another request has it, or the backoff is not over).
    pub fn try_probe(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match &mut inner.ejected {
            Some(e) if !e.probing && now >= e.until => {
                e.probing = true;
                true
            }
            _ => false,
        }
    }

    /// Gives a claimed probe back without a verdict: the next request may probe.
    pub fn release_probe(&self) {
        if let Some(e) = &mut self.lock().ejected {
            e.probing = false;
        }
    }

    /// Whether the endpoint is ejected (probation included).
    pub fn is_ejected(&self) -> bool {
        self.impaired.load(Ordering::Acquire) && self.lock().ejected.is_some()
    }

    /// Records what an attempt learnt; `probe`: the attempt was this endpoint's probe.
    pub fn record(&self, outcome: Outcome, probe: bool, now: Instant, ctx: Ctx<'_>) {
        let mut inner = self.lock();
        if inner.ejected.is_some() {
            // Answers to requests sent before the ejection say nothing new.
            if !probe {
                return;
            }
            match outcome {
                Outcome::Unknown => {
                    if let Some(e) = &mut inner.ejected {
                        e.probing = false;
                    }
                    return;
                }
                Outcome::Failure => {
                    self.eject(&mut inner, now, ctx);
                    return;
                }
                Outcome::Success | Outcome::Overloaded(_) => {
                    inner.ejected = None;
                    inner.ejections = 0;
                    inner.consecutive = 0;
                    inner.buckets = [Bucket::default(); BUCKETS];
                    if inner.backoff_until.is_none() {
                        self.impaired.store(false, Ordering::Release);
                    }
                }
            }
        }
        let p = ctx.policy;
        match outcome {
            Outcome::Unknown => {}
            Outcome::Overloaded(after) => {
                let d = after.unwrap_or(p.min_backoff).min(p.max_backoff);
                let until = later(now, d);
                inner.backoff_until = Some(inner.backoff_until.map_or(until, |u| u.max(until)));
                self.impaired.store(true, Ordering::Release);
                ctx.metrics.retry_after_backoff(ctx.labels);
            }
            Outcome::Success => {
                inner.consecutive = 0;
                Self::bucket(&mut inner, now, p).ok += 1;
            }
            Outcome::Failure => {
                inner.consecutive = inner.consecutive.saturating_add(1);
                Self::bucket(&mut inner, now, p).failed += 1;
                let by_count =
                    p.consecutive_failures > 0 && inner.consecutive >= p.consecutive_failures;
                let by_rate = p.min_success_rate > 0.0 && {
                    let (ok, failed) = inner.buckets.iter().fold((0u64, 0u64), |(o, f), b| {
                        (o + u64::from(b.ok), f + u64::from(b.failed))
                    });
                    let total = ok + failed;
                    total >= u64::from(p.min_requests.max(1))
                        && (ok as f64) < p.min_success_rate * total as f64
                };
                if by_count || by_rate {
                    self.eject(&mut inner, now, ctx);
                }
            }
        }
    }

    /// The current bucket of the success-rate window, clearing those that have expired.
    fn bucket<'a>(inner: &'a mut Inner, now: Instant, p: &FailureAccrual) -> &'a mut Bucket {
        let width = (p.window.as_nanos() / BUCKETS as u128).max(1);
        let epoch = u64::try_from(now.saturating_duration_since(origin()).as_nanos() / width)
            .unwrap_or(u64::MAX);
        let gap = epoch.saturating_sub(inner.epoch);
        if gap >= BUCKETS as u64 {
            inner.buckets = [Bucket::default(); BUCKETS];
        } else {
            for k in 1..=gap {
                inner.buckets[((inner.epoch + k) % BUCKETS as u64) as usize] = Bucket::default();
            }
        }
        inner.epoch = inner.epoch.max(epoch);
        &mut inner.buckets[(inner.epoch % BUCKETS as u64) as usize]
    }

    fn eject(&self, inner: &mut Inner, now: Instant, ctx: Ctx<'_>) {
        let backoff = ejection_backoff(
            ctx.policy,
            inner.ejections,
            rand::random_range(0..1u64 << 16),
        );
        inner.ejections = inner.ejections.saturating_add(1);
        inner.consecutive = 0;
        inner.buckets = [Bucket::default(); BUCKETS];
        // A re-ejection after a failed probe keeps the one count in the gauge.
        let counted = match inner.ejected.take() {
            Some(e) => e._counted,
            None => ctx.metrics.ejected(ctx.labels),
        };
        ctx.metrics.ejection(ctx.labels);
        inner.ejected = Some(Ejection {
            until: later(now, backoff),
            probing: false,
            _counted: counted,
        });
        self.impaired.store(true, Ordering::Release);
    }
}

/// `now + d`, `d` bounded by [`LONGEST`].
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(LONGEST)).unwrap_or(now)
}

/// The backoff of the `(k+1)`-th ejection in a row: `min × 2^k` plus up to 25 % jitter
/// (`jitter16` uniform in `0..65536`), within `[min, max]`.
pub fn ejection_backoff(p: &FailureAccrual, k: u32, jitter16: u64) -> Duration {
    let base = p
        .min_backoff
        .checked_mul(1u32.checked_shl(k.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(p.max_backoff)
        .min(p.max_backoff);
    let jitter = base.mul_f64((jitter16 as f64 / 65_536.0) * 0.25);
    (base + jitter).min(p.max_backoff).max(p.min_backoff)
}

/// The `grpc-status` of a response head (a trailers-only gRPC answer carries it there).
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(crate::http::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// What a response tells about its endpoint under `p`.
pub fn classify(status: StatusCode, headers: &HeaderMap, p: &FailureAccrual) -> Outcome {
    let grpc = grpc_status(headers);
    if status == StatusCode::TOO_MANY_REQUESTS || grpc == Some(GRPC_RESOURCE_EXHAUSTED) {
        return Outcome::Overloaded(retry_after(headers, SystemTime::now()));
    }
    if p.failure_statuses.contains(status.as_u16())
        || grpc.is_some_and(|c| p.failure_grpc_codes.contains(&c))
    {
        return Outcome::Failure;
    }
    Outcome::Success
}

/// A `Retry-After` value: delay-seconds or an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`),
/// relative to `now`. `None` when absent or malformed.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(v)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an IMF-fixdate.
fn parse_http_date(v: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let mut parts = v.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let s: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || !(1970..=9999).contains(&year) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let days = u64::try_from(days).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FailureAccrual {
        FailureAccrual {
            consecutive_failures: 3,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
            ..FailureAccrual::default()
        }
    }

    fn labels() -> OutboundLabels {
        OutboundLabels {
            authority: "api.demo".into(),
            backend: "api".into(),
        }
    }

    #[test]
    fn consecutive_failures_eject_then_one_probe_decides() {
        let m = Metrics::new();
        let p = policy();
        let l = labels();
        let ctx = Ctx {
            policy: &p,
            metrics: &m,
            labels: &l,
        };
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            b.record(Outcome::Failure, false, t0, ctx);
        }
        b.record(Outcome::Success, false, t0, ctx);
        for _ in 0..2 {
            b.record(Outcome::Failure, false, t0, ctx);
        }
        assert_eq!(b.availability(t0), Availability::Ready);
        b.record(Outcome::Failure, false, t0, ctx);
        assert!(matches!(
            b.availability(t0),
            Availability::Ejected { until: Some(_) }
        ));
        assert!(m.encode().contains(
            "weft_proxy_outbound_ejected_endpoints{authority=\"api.demo\",backend=\"api\"} 1"
        ));
        assert!(!b.try_probe(t0));
        // After at most 1.25 s the probe is due, and only one request gets it.
        let t1 = t0 + Duration::from_millis(1_251);
        assert_eq!(b.availability(t1), Availability::ProbeDue);
        assert!(b.try_probe(t1));
        assert!(!b.try_probe(t1));
        assert_eq!(b.availability(t1), Availability::Ejected { until: None });
        // A stale answer from before the ejection changes nothing.
        b.record(Outcome::Success, false, t1, ctx);
        assert!(b.is_ejected());
        // The probe fails: ejected again, for 2-2.5 s.
        b.record(Outcome::Failure, true, t1, ctx);
        assert!(!b.try_probe(t1 + Duration::from_millis(1_999)));
        assert!(b.try_probe(t1 + Duration::from_millis(2_501)));
        b.record(Outcome::Success, true, t1, ctx);
        assert_eq!(b.availability(t1), Availability::Ready);
        let text = m.encode();
        assert!(
            text.contains(
                "weft_proxy_outbound_ejected_endpoints{authority=\"api.demo\",backend=\"api\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "weft_proxy_outbound_ejections_total{authority=\"api.demo\",backend=\"api\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn success_rate_ejects_once_the_window_has_enough() {
        let m = Metrics::new();
        let p = FailureAccrual {
            consecutive_failures: 0,
            min_success_rate: 0.8,
            min_requests: 10,
            ..policy()
        };
        let l = labels();
        let ctx = Ctx {
            policy: &p,
            metrics: &m,
            labels: &l,
        };
        let b = Breaker::default();
        let t0 = Instant::now();
        // 1 failure in 3, 9 answers: not enough answers yet.
        for i in 0..9 {
            let o = if i % 3 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            b.record(o, false, t0, ctx);
        }
        assert_eq!(b.availability(t0), Availability::Ready);
        b.record(Outcome::Failure, false, t0, ctx);
        assert!(b.is_ejected());
    }

    #[test]
    fn overload_backs_off_without_counting_as_failure() {
        let m = Metrics::new();
        let p = policy();
        let l = labels();
        let ctx = Ctx {
            policy: &p,
            metrics: &m,
            labels: &l,
        };
        let b = Breaker::default();
        let t0 = Instant::now();
        b.record(
            Outcome::Overloaded(Some(Duration::from_secs(2))),
            false,
            t0,
            ctx,
        );
        assert_eq!(
            b.availability(t0),
            Availability::BackingOff {
                until: t0 + Duration::from_secs(2)
            }
        );
        assert_eq!(
            b.availability(t0 + Duration::from_secs(2)),
            Availability::Ready
        );
        // Bounded by max_backoff; absent: min_backoff.
        b.record(
            Outcome::Overloaded(Some(Duration::from_secs(3600))),
            false,
            t0,
            ctx,
        );
        assert_eq!(
            b.availability(t0),
            Availability::BackingOff {
                until: t0 + Duration::from_secs(8)
            }
        );
        assert!(!b.is_ejected());
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        let p = policy();
        assert_eq!(ejection_backoff(&p, 0, 0), Duration::from_secs(1));
        assert_eq!(ejection_backoff(&p, 1, 0), Duration::from_secs(2));
        assert!(ejection_backoff(&p, 2, 65_535) <= Duration::from_secs(5));
        assert_eq!(ejection_backoff(&p, 40, 65_535), Duration::from_secs(8));
    }

    #[test]
    fn classifies_statuses_grpc_codes_and_retry_after() {
        let p = FailureAccrual {
            failure_statuses: StatusSet::from_pairs(&[(500, 599)]),
            ..FailureAccrual::default()
        };
        let mut h = HeaderMap::new();
        assert_eq!(classify(StatusCode::OK, &h, &p), Outcome::Success);
        assert_eq!(classify(StatusCode::BAD_GATEWAY, &h, &p), Outcome::Failure);
        assert_eq!(classify(StatusCode::NOT_FOUND, &h, &p), Outcome::Success);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(classify(StatusCode::OK, &h, &p), Outcome::Failure);
        h.insert("grpc-status", "8".parse().unwrap());
        assert_eq!(classify(StatusCode::OK, &h, &p), Outcome::Overloaded(None));
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, &p),
            Outcome::Overloaded(Some(Duration::from_secs(2)))
        );
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:47 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        for bad in ["soon", "-1", "Sun, 06 Nov 1994 25:49:47 GMT", "1.5", ""] {
            h.insert("retry-after", bad.parse().unwrap());
            assert_eq!(retry_after(&h, now), None, "{bad}");
        }
    }
}
