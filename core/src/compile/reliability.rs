//! The reliability annotations (docs/reliability.md, section "Configuration"): their names,
//! and one parser per annotation family, used by the compiler and by anything else that reads
//! them.
//!
//! Each family function applies the annotations it knows from one object (a Service or a
//! Namespace) over a value, leaving fields whose annotation is absent or invalid as they were,
//! and reports every invalid value as an [`Invalid`]. Applying the Namespace's annotations over
//! the defaults and then the Service's over the result gives the Service's effective policy:
//! the Service wins, per annotation. Defaults are never repeated here: they come from
//! [`TrafficPolicy::default`] and [`FailureAccrual::default`] (`weft_common::reliability`).

use std::collections::BTreeMap;

use super::types::{FailureAccrual, InboundLimits, RateLimit, StatusRange, TrafficPolicy};

// Outbound: how callers' proxies treat requests to the Service.

/// Request timeout (`2s`, `500ms`, `1m`); `0s`: none.
pub const TIMEOUT_ANNOTATION: &str = "weft.io/timeout";
/// Maximum retries per request.
pub const RETRIES_ANNOTATION: &str = "weft.io/retries";
/// Retries as a fraction of requests (0 to 1).
pub const RETRY_BUDGET_ANNOTATION: &str = "weft.io/retry-budget";
/// `true` to also retry non-idempotent methods.
pub const RETRY_NON_IDEMPOTENT_ANNOTATION: &str = "weft.io/retry-non-idempotent";
/// Retries allowed per second whatever the ratio.
pub const RETRY_BUDGET_MIN_PER_SECOND_ANNOTATION: &str = "weft.io/retry-budget-min-per-second";
/// Time limit of each attempt; `0s`: none.
pub const PER_TRY_TIMEOUT_ANNOTATION: &str = "weft.io/per-try-timeout";
/// HTTP statuses retried (`502,503,504`, `500-599`, `5xx`).
pub const RETRY_STATUSES_ANNOTATION: &str = "weft.io/retry-statuses";
/// gRPC codes retried (`UNAVAILABLE,RESOURCE_EXHAUSTED` or numbers).
pub const RETRY_GRPC_CODES_ANNOTATION: &str = "weft.io/retry-grpc-codes";
/// Consecutive failures that eject an endpoint; 0: off.
pub const ACCRUAL_CONSECUTIVE_ANNOTATION: &str = "weft.io/failure-accrual-consecutive";
/// Success rate (0 to 1) under which an endpoint is ejected; 0: off.
pub const ACCRUAL_SUCCESS_RATE_ANNOTATION: &str = "weft.io/failure-accrual-success-rate";
/// The success-rate window.
pub const ACCRUAL_WINDOW_ANNOTATION: &str = "weft.io/failure-accrual-window";
/// Responses needed in the window before the success rate counts.
pub const ACCRUAL_MIN_REQUESTS_ANNOTATION: &str = "weft.io/failure-accrual-min-requests";
/// Ejection backoff, `<min>-<max>` (`1s-60s`).
pub const ACCRUAL_BACKOFF_ANNOTATION: &str = "weft.io/failure-accrual-backoff";
/// HTTP statuses that count as failures.
pub const FAILURE_STATUSES_ANNOTATION: &str = "weft.io/failure-statuses";
/// gRPC codes that count as failures.
pub const FAILURE_GRPC_CODES_ANNOTATION: &str = "weft.io/failure-grpc-codes";
/// Requests to the Service in flight from one proxy; 0: unlimited.
pub const MAX_CONCURRENT_REQUESTS_ANNOTATION: &str = "weft.io/max-concurrent-requests";
/// Requests that may wait for a slot.
pub const MAX_PENDING_REQUESTS_ANNOTATION: &str = "weft.io/max-pending-requests";
/// Requests in flight to one endpoint from one proxy; 0: unlimited.
pub const MAX_REQUESTS_PER_ENDPOINT_ANNOTATION: &str = "weft.io/max-requests-per-endpoint";
/// Longest wait for a slot.
pub const QUEUE_TIMEOUT_ANNOTATION: &str = "weft.io/queue-timeout";

// Inbound: applied by the proxies of the pods the Service selects, on its targetPorts.

/// Requests in flight to the application on the port; 0: unlimited.
pub const INBOUND_MAX_CONCURRENT_ANNOTATION: &str = "weft.io/inbound-max-concurrent-requests";
/// Requests that may wait for an inbound slot.
pub const INBOUND_MAX_PENDING_ANNOTATION: &str = "weft.io/inbound-max-pending-requests";
/// Longest wait for an inbound slot.
pub const INBOUND_QUEUE_TIMEOUT_ANNOTATION: &str = "weft.io/inbound-queue-timeout";
/// Requests per pod from all callers together (`100/s`, `6000/m`).
pub const RATE_LIMIT_ANNOTATION: &str = "weft.io/rate-limit";
/// Burst of [`RATE_LIMIT_ANNOTATION`].
pub const RATE_LIMIT_BURST_ANNOTATION: &str = "weft.io/rate-limit-burst";
/// Requests per pod from each calling identity (`10/s`).
pub const RATE_LIMIT_PER_IDENTITY_ANNOTATION: &str = "weft.io/rate-limit-per-identity";
/// Burst of [`RATE_LIMIT_PER_IDENTITY_ANNOTATION`].
pub const RATE_LIMIT_PER_IDENTITY_BURST_ANNOTATION: &str = "weft.io/rate-limit-per-identity-burst";

/// Every reliability annotation, outbound then inbound.
pub const ANNOTATIONS: &[&str] = &[
    TIMEOUT_ANNOTATION,
    RETRIES_ANNOTATION,
    RETRY_BUDGET_ANNOTATION,
    RETRY_NON_IDEMPOTENT_ANNOTATION,
    RETRY_BUDGET_MIN_PER_SECOND_ANNOTATION,
    PER_TRY_TIMEOUT_ANNOTATION,
    RETRY_STATUSES_ANNOTATION,
    RETRY_GRPC_CODES_ANNOTATION,
    ACCRUAL_CONSECUTIVE_ANNOTATION,
    ACCRUAL_SUCCESS_RATE_ANNOTATION,
    ACCRUAL_WINDOW_ANNOTATION,
    ACCRUAL_MIN_REQUESTS_ANNOTATION,
    ACCRUAL_BACKOFF_ANNOTATION,
    FAILURE_STATUSES_ANNOTATION,
    FAILURE_GRPC_CODES_ANNOTATION,
    MAX_CONCURRENT_REQUESTS_ANNOTATION,
    MAX_PENDING_REQUESTS_ANNOTATION,
    MAX_REQUESTS_PER_ENDPOINT_ANNOTATION,
    QUEUE_TIMEOUT_ANNOTATION,
    INBOUND_MAX_CONCURRENT_ANNOTATION,
    INBOUND_MAX_PENDING_ANNOTATION,
    INBOUND_QUEUE_TIMEOUT_ANNOTATION,
    RATE_LIMIT_ANNOTATION,
    RATE_LIMIT_BURST_ANNOTATION,
    RATE_LIMIT_PER_IDENTITY_ANNOTATION,
    RATE_LIMIT_PER_IDENTITY_BURST_ANNOTATION,
];

/// An annotation value that is ignored, and what was expected instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub annotation: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl Invalid {
    /// The message of its Warning Event: the annotation, the value, what is expected, and
    /// what applies instead (`fallback`: "the Namespace's value or the default", ...).
    pub fn message(&self, fallback: &str) -> String {
        format!(
            "{}: {:?} is not {}; ignored, {fallback} applies",
            self.annotation, self.value, self.expected
        )
    }
}

/// An object's annotations.
pub type Annotations = BTreeMap<String, String>;

/// Reads annotations, recording invalid values.
struct Reader<'a> {
    a: &'a Annotations,
    invalid: &'a mut Vec<Invalid>,
}

impl Reader<'_> {
    /// The parsed value of `ann`, or `None` when absent or invalid (then recorded).
    fn get<T>(
        &mut self,
        ann: &'static str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let v = self.a.get(ann)?;
        let parsed = parse(v.trim());
        if parsed.is_none() {
            self.invalid.push(Invalid {
                annotation: ann,
                value: v.clone(),
                expected,
            });
        }
        parsed
    }

    fn set<T>(
        &mut self,
        field: &mut T,
        ann: &'static str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) {
        if let Some(v) = self.get(ann, expected, parse) {
            *field = v;
        }
    }
}

const WHOLE: &str = "a whole number (0 to 4294967295)";
const DURATION: &str = "a duration like 2s or 500ms";
const POSITIVE_DURATION: &str = "a duration greater than 0 like 1s or 500ms";
const RATIO: &str = "a ratio between 0 and 1";
const STATUSES: &str = "a comma-separated list of HTTP statuses (100-599), ranges (500-504) or \
                        classes (5xx)";
const GRPC_CODES: &str = "a comma-separated list of gRPC status codes, by name (UNAVAILABLE) or \
                          number (1-16)";
const BACKOFF: &str = "<min>-<max>, two durations with 0 < min <= max, like 1s-60s";
const RATE: &str = "a rate greater than 0 like 100/s, 6000/m or 1000/h";

/// A `u32`.
pub fn parse_u32(s: &str) -> Option<u32> {
    s.trim().parse().ok()
}

/// A duration in milliseconds ([`weft_common::duration::parse`], the one duration parser).
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let d = weft_common::duration::parse(s).ok()?;
    u64::try_from(d.as_millis()).ok()
}

fn positive_duration_ms(s: &str) -> Option<u64> {
    parse_duration_ms(s).filter(|&ms| ms > 0)
}

/// A ratio in `[0, 1]`.
pub fn parse_ratio(s: &str) -> Option<f64> {
    let r: f64 = s.trim().parse().ok()?;
    (r.is_finite() && (0.0..=1.0).contains(&r)).then_some(r)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A list of HTTP statuses: codes (`503`), inclusive ranges (`500-504`) and classes (`5xx`),
/// comma separated, each within 100-599. Returned sorted with overlapping and adjacent ranges
/// merged; `None` when empty or when any item is invalid.
pub fn parse_statuses(s: &str) -> Option<Vec<StatusRange>> {
    let code = |t: &str| -> Option<u16> {
        let n: u16 = t.trim().parse().ok()?;
        (100..=599).contains(&n).then_some(n)
    };
    let mut ranges = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        let lower = item.to_ascii_lowercase();
        let r = if let Some(class) = lower.strip_suffix("xx") {
            let c: u16 = match class {
                "1" | "2" | "3" | "4" | "5" => class.parse().ok()?,
                _ => return None,
            };
            StatusRange {
                min: c * 100,
                max: c * 100 + 99,
            }
        } else if let Some((a, b)) = item.split_once('-') {
            let (min, max) = (code(a)?, code(b)?);
            if min > max {
                return None;
            }
            StatusRange { min, max }
        } else {
            let n = code(item)?;
            StatusRange { min: n, max: n }
        };
        ranges.push(r);
    }
    ranges.sort();
    let mut merged: Vec<StatusRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.min <= last.max.saturating_add(1) => last.max = last.max.max(r.max),
            _ => merged.push(r),
        }
    }
    (!merged.is_empty()).then_some(merged)
}

/// gRPC status code names, by number.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A list of gRPC status codes, by name (any case) or number, comma separated; `OK` (0) is not
/// an error and is refused. Sorted, without duplicates; `None` when empty or when any item is
/// invalid.
pub fn parse_grpc_codes(s: &str) -> Option<Vec<u32>> {
    let mut codes = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        let code = match item.parse::<u32>() {
            Ok(n) => n,
            Err(_) => GRPC_CODE_NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(item))
                .and_then(|i| u32::try_from(i).ok())?,
        };
        if code == 0 || code as usize >= GRPC_CODE_NAMES.len() {
            return None;
        }
        codes.push(code);
    }
    codes.sort_unstable();
    codes.dedup();
    (!codes.is_empty()).then_some(codes)
}

/// `<min>-<max>`: two durations in milliseconds with `0 < min <= max`.
pub fn parse_backoff(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('-')?;
    let (min, max) = (positive_duration_ms(a)?, parse_duration_ms(b)?);
    (min <= max).then_some((min, max))
}

/// Largest rate accepted, per second (larger values are typos).
const MAX_RATE_PER_SECOND: f64 = 1e9;

/// A rate, `<n>/s`, `<n>/m` or `<n>/h` (`n` may have a fraction), as requests per second;
/// `None` unless greater than 0.
pub fn parse_rate(s: &str) -> Option<f64> {
    let (n, unit) = s.split_once('/')?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let n: f64 = n.trim().parse().ok()?;
    let rps = n / per;
    (rps.is_finite() && rps > 0.0 && rps <= MAX_RATE_PER_SECOND).then_some(rps)
}

/// The timeout and retry family: `weft.io/timeout`, `weft.io/retries`, `weft.io/retry-budget`,
/// `weft.io/retry-non-idempotent`, `weft.io/retry-budget-min-per-second`,
/// `weft.io/per-try-timeout`, `weft.io/retry-statuses`, `weft.io/retry-grpc-codes`.
pub fn retries(a: &Annotations, p: &mut TrafficPolicy, invalid: &mut Vec<Invalid>) {
    let mut r = Reader { a, invalid };
    r.set(
        &mut p.request_timeout_ms,
        TIMEOUT_ANNOTATION,
        DURATION,
        parse_duration_ms,
    );
    r.set(&mut p.max_retries, RETRIES_ANNOTATION, WHOLE, parse_u32);
    r.set(
        &mut p.retry_budget_ratio,
        RETRY_BUDGET_ANNOTATION,
        RATIO,
        parse_ratio,
    );
    r.set(
        &mut p.retry_non_idempotent,
        RETRY_NON_IDEMPOTENT_ANNOTATION,
        "true or false",
        parse_bool,
    );
    r.set(
        &mut p.retry_budget_min_per_second,
        RETRY_BUDGET_MIN_PER_SECOND_ANNOTATION,
        WHOLE,
        parse_u32,
    );
    r.set(
        &mut p.per_try_timeout_ms,
        PER_TRY_TIMEOUT_ANNOTATION,
        DURATION,
        parse_duration_ms,
    );
    r.set(
        &mut p.retry_statuses,
        RETRY_STATUSES_ANNOTATION,
        STATUSES,
        parse_statuses,
    );
    r.set(
        &mut p.retry_grpc_codes,
        RETRY_GRPC_CODES_ANNOTATION,
        GRPC_CODES,
        parse_grpc_codes,
    );
}

/// The failure accrual family: `weft.io/failure-accrual-*`, `weft.io/failure-statuses`,
/// `weft.io/failure-grpc-codes`.
pub fn failure_accrual(a: &Annotations, f: &mut FailureAccrual, invalid: &mut Vec<Invalid>) {
    let mut r = Reader { a, invalid };
    r.set(
        &mut f.consecutive_failures,
        ACCRUAL_CONSECUTIVE_ANNOTATION,
        WHOLE,
        parse_u32,
    );
    r.set(
        &mut f.min_success_rate,
        ACCRUAL_SUCCESS_RATE_ANNOTATION,
        RATIO,
        parse_ratio,
    );
    r.set(
        &mut f.window_ms,
        ACCRUAL_WINDOW_ANNOTATION,
        POSITIVE_DURATION,
        positive_duration_ms,
    );
    r.set(
        &mut f.min_requests,
        ACCRUAL_MIN_REQUESTS_ANNOTATION,
        WHOLE,
        parse_u32,
    );
    if let Some((min, max)) = r.get(ACCRUAL_BACKOFF_ANNOTATION, BACKOFF, parse_backoff) {
        f.min_backoff_ms = min;
        f.max_backoff_ms = max;
    }
    r.set(
        &mut f.failure_statuses,
        FAILURE_STATUSES_ANNOTATION,
        STATUSES,
        parse_statuses,
    );
    r.set(
        &mut f.failure_grpc_codes,
        FAILURE_GRPC_CODES_ANNOTATION,
        GRPC_CODES,
        parse_grpc_codes,
    );
}

/// The outbound load-shedding family: `weft.io/max-concurrent-requests`,
/// `weft.io/max-pending-requests`, `weft.io/max-requests-per-endpoint`, `weft.io/queue-timeout`.
pub fn outbound_limits(a: &Annotations, p: &mut TrafficPolicy, invalid: &mut Vec<Invalid>) {
    let mut r = Reader { a, invalid };
    r.set(
        &mut p.max_concurrent_requests,
        MAX_CONCURRENT_REQUESTS_ANNOTATION,
        WHOLE,
        parse_u32,
    );
    r.set(
        &mut p.max_pending_requests,
        MAX_PENDING_REQUESTS_ANNOTATION,
        WHOLE,
        parse_u32,
    );
    r.set(
        &mut p.max_requests_per_endpoint,
        MAX_REQUESTS_PER_ENDPOINT_ANNOTATION,
        WHOLE,
        parse_u32,
    );
    r.set(
        &mut p.queue_timeout_ms,
        QUEUE_TIMEOUT_ANNOTATION,
        POSITIVE_DURATION,
        positive_duration_ms,
    );
}

/// Every outbound family ([`retries`], [`failure_accrual`], [`outbound_limits`]) over `p`.
pub fn outbound(a: &Annotations, p: &mut TrafficPolicy, invalid: &mut Vec<Invalid>) {
    retries(a, p, invalid);
    failure_accrual(a, &mut p.failure_accrual, invalid);
    outbound_limits(a, p, invalid);
}

/// The inbound annotations of an object, each `None` where not set (or invalid): layered
/// (Namespace, then Service) with [`inbound_limits`], combined across Services with
/// [`InboundSettings::strictest`], and compiled with [`InboundSettings::limits`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct InboundSettings {
    pub max_concurrent_requests: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub queue_timeout_ms: Option<u64>,
    pub rate_limit: Option<f64>,
    pub rate_limit_burst: Option<u32>,
    pub rate_limit_per_identity: Option<f64>,
    pub rate_limit_per_identity_burst: Option<u32>,
}

/// Takes the smaller of two limits where both are set; `0` (unlimited) is the largest.
fn strictest_u32(a: Option<u32>, b: Option<u32>, unlimited_zero: bool) -> Option<u32> {
    match (a, b) {
        (Some(x), Some(y)) if unlimited_zero && (x == 0 || y == 0) => Some(x.max(y)),
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn strictest_f64(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl InboundSettings {
    /// The strictest of two Services' settings for one pod port, field by field (the smallest
    /// limit; a limit set on one only applies), and the annotations whose values differ.
    pub fn strictest(&self, other: &InboundSettings) -> (InboundSettings, Vec<&'static str>) {
        let s = InboundSettings {
            max_concurrent_requests: strictest_u32(
                self.max_concurrent_requests,
                other.max_concurrent_requests,
                true,
            ),
            max_pending_requests: strictest_u32(
                self.max_pending_requests,
                other.max_pending_requests,
                false,
            ),
            queue_timeout_ms: match (self.queue_timeout_ms, other.queue_timeout_ms) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
            rate_limit: strictest_f64(self.rate_limit, other.rate_limit),
            rate_limit_burst: strictest_u32(self.rate_limit_burst, other.rate_limit_burst, true),
            rate_limit_per_identity: strictest_f64(
                self.rate_limit_per_identity,
                other.rate_limit_per_identity,
            ),
            rate_limit_per_identity_burst: strictest_u32(
                self.rate_limit_per_identity_burst,
                other.rate_limit_per_identity_burst,
                true,
            ),
        };
        fn differs<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
            matches!((a, b), (Some(x), Some(y)) if x != y)
        }
        let mut conflicts = Vec::new();
        let pairs: [(bool, &'static str); 7] = [
            (
                differs(self.max_concurrent_requests, other.max_concurrent_requests),
                INBOUND_MAX_CONCURRENT_ANNOTATION,
            ),
            (
                differs(self.max_pending_requests, other.max_pending_requests),
                INBOUND_MAX_PENDING_ANNOTATION,
            ),
            (
                differs(self.queue_timeout_ms, other.queue_timeout_ms),
                INBOUND_QUEUE_TIMEOUT_ANNOTATION,
            ),
            (
                differs(self.rate_limit, other.rate_limit),
                RATE_LIMIT_ANNOTATION,
            ),
            (
                differs(self.rate_limit_burst, other.rate_limit_burst),
                RATE_LIMIT_BURST_ANNOTATION,
            ),
            (
                differs(self.rate_limit_per_identity, other.rate_limit_per_identity),
                RATE_LIMIT_PER_IDENTITY_ANNOTATION,
            ),
            (
                differs(
                    self.rate_limit_per_identity_burst,
                    other.rate_limit_per_identity_burst,
                ),
                RATE_LIMIT_PER_IDENTITY_BURST_ANNOTATION,
            ),
        ];
        for (d, ann) in pairs {
            if d {
                conflicts.push(ann);
            }
        }
        (s, conflicts)
    }

    /// The compiled limits: [`InboundLimits::default`] where nothing is set. A burst without
    /// its rate limits nothing.
    pub fn limits(&self) -> InboundLimits {
        let d = InboundLimits::default();
        InboundLimits {
            max_concurrent_requests: self
                .max_concurrent_requests
                .unwrap_or(d.max_concurrent_requests),
            max_pending_requests: self.max_pending_requests.unwrap_or(d.max_pending_requests),
            queue_timeout_ms: self.queue_timeout_ms.unwrap_or(d.queue_timeout_ms),
            rate_limit: self.rate_limit.map(|rps| RateLimit {
                requests_per_second: rps,
                burst: self.rate_limit_burst.unwrap_or_default(),
            }),
            rate_limit_per_identity: self.rate_limit_per_identity.map(|rps| RateLimit {
                requests_per_second: rps,
                burst: self.rate_limit_per_identity_burst.unwrap_or_default(),
            }),
        }
    }
}

/// The inbound family: `weft.io/inbound-max-concurrent-requests`,
/// `weft.io/inbound-max-pending-requests`, `weft.io/inbound-queue-timeout`,
/// `weft.io/rate-limit[-burst]`, `weft.io/rate-limit-per-identity[-burst]`.
pub fn inbound_limits(a: &Annotations, s: &mut InboundSettings, invalid: &mut Vec<Invalid>) {
    fn set_u32(r: &mut Reader<'_>, field: &mut Option<u32>, ann: &'static str) {
        if let Some(v) = r.get(ann, WHOLE, parse_u32) {
            *field = Some(v);
        }
    }
    let mut r = Reader { a, invalid };
    set_u32(
        &mut r,
        &mut s.max_concurrent_requests,
        INBOUND_MAX_CONCURRENT_ANNOTATION,
    );
    set_u32(
        &mut r,
        &mut s.max_pending_requests,
        INBOUND_MAX_PENDING_ANNOTATION,
    );
    if let Some(v) = r.get(
        INBOUND_QUEUE_TIMEOUT_ANNOTATION,
        POSITIVE_DURATION,
        positive_duration_ms,
    ) {
        s.queue_timeout_ms = Some(v);
    }
    if let Some(v) = r.get(RATE_LIMIT_ANNOTATION, RATE, parse_rate) {
        s.rate_limit = Some(v);
    }
    set_u32(&mut r, &mut s.rate_limit_burst, RATE_LIMIT_BURST_ANNOTATION);
    if let Some(v) = r.get(RATE_LIMIT_PER_IDENTITY_ANNOTATION, RATE, parse_rate) {
        s.rate_limit_per_identity = Some(v);
    }
    set_u32(
        &mut r,
        &mut s.rate_limit_per_identity_burst,
        RATE_LIMIT_PER_IDENTITY_BURST_ANNOTATION,
    );
}

/// A Service's effective outbound policy and inbound settings: the defaults, then its
/// Namespace's annotations, then its own. Invalid values are returned per object (Namespace,
/// Service) and ignored.
pub fn service_settings(
    namespace: Option<&Annotations>,
    service: &Annotations,
) -> (TrafficPolicy, InboundSettings, Vec<Invalid>, Vec<Invalid>) {
    let mut policy = TrafficPolicy::default();
    let mut inbound = InboundSettings::default();
    let mut ns_invalid = Vec::new();
    let mut svc_invalid = Vec::new();
    if let Some(ns) = namespace {
        outbound(ns, &mut policy, &mut ns_invalid);
        inbound_limits(ns, &mut inbound, &mut ns_invalid);
    }
    outbound(service, &mut policy, &mut svc_invalid);
    inbound_limits(service, &mut inbound, &mut svc_invalid);
    (policy, inbound, ns_invalid, svc_invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sr(min: u16, max: u16) -> StatusRange {
        StatusRange { min, max }
    }

    #[test]
    fn statuses_codes_ranges_classes_merged() {
        assert_eq!(parse_statuses("502,503,504"), Some(vec![sr(502, 504)]));
        assert_eq!(parse_statuses("5xx"), Some(vec![sr(500, 599)]));
        assert_eq!(
            parse_statuses(" 429 , 500-502,503"),
            Some(vec![sr(429, 429), sr(500, 503)])
        );
        for bad in [
            "", "600", "99", "504-502", "6xx", "5x", "abc", "500,", "500-",
        ] {
            assert_eq!(parse_statuses(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_codes_by_name_or_number() {
        assert_eq!(parse_grpc_codes("UNAVAILABLE"), Some(vec![14]));
        assert_eq!(
            parse_grpc_codes("unavailable, 4,RESOURCE_EXHAUSTED,14"),
            Some(vec![4, 8, 14])
        );
        for bad in ["", "OK", "0", "17", "UNAVAILABLEX", "14,"] {
            assert_eq!(parse_grpc_codes(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the input, the parsers never panic, and what they accept keeps the
        /// promises the proxy relies on.
        #[test]
        fn parsers_accept_only_well_formed_values(s in "[0-9a-zA-Z_,/ .x-]{0,24}") {
            if let Some(r) = parse_statuses(&s) {
                proptest::prop_assert!(!r.is_empty());
                for w in r.windows(2) {
                    proptest::prop_assert!(w[0].max + 1 < w[1].min, "sorted, merged: {r:?}");
                }
                for x in &r {
                    proptest::prop_assert!(100 <= x.min && x.min <= x.max && x.max <= 599);
                }
            }
            if let Some(c) = parse_grpc_codes(&s) {
                proptest::prop_assert!(!c.is_empty());
                proptest::prop_assert!(c.windows(2).all(|w| w[0] < w[1]));
                proptest::prop_assert!(c.iter().all(|&n| (1..=16).contains(&n)));
            }
            if let Some((min, max)) = parse_backoff(&s) {
                proptest::prop_assert!(0 < min && min <= max);
            }
            if let Some(r) = parse_rate(&s) {
                proptest::prop_assert!(r.is_finite() && r > 0.0);
            }
            if let Some(r) = parse_ratio(&s) {
                proptest::prop_assert!((0.0..=1.0).contains(&r));
            }
        }
    }

    #[test]
    fn backoff_and_rate() {
        assert_eq!(parse_backoff("1s-60s"), Some((1000, 60_000)));
        assert_eq!(parse_backoff("500ms-500ms"), Some((500, 500)));
        for bad in ["60s-1s", "0s-1s", "1s", "1s-", "-1s", "1s-x"] {
            assert_eq!(parse_backoff(bad), None, "{bad:?}");
        }
        assert_eq!(parse_rate("100/s"), Some(100.0));
        assert_eq!(parse_rate("6000/m"), Some(100.0));
        assert_eq!(parse_rate("3600/h"), Some(1.0));
        for bad in ["0/s", "100", "100/d", "-1/s", "NaN/s", "inf/s", "/s"] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
    }
}
