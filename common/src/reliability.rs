//! The defaults of weft's reliability policy (timeouts, retries, failure accrual, load shedding),
//! in one home: the core compiles them into every `TrafficPolicy` it sends, and a proxy given no
//! policy at all falls back to the same values. `docs/reliability.md` explains each one.

/// Retries allowed as a fraction of requests (`weft.io/retry-budget`).
pub const RETRY_BUDGET_RATIO: f64 = 0.2;
/// Retries allowed per second whatever the ratio (`weft.io/retry-budget-min-per-second`).
pub const RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
/// Largest request body buffered so that the request can be retried; a longer body is sent
/// once, streaming, and never retried.
pub const MAX_RETRY_BODY_BYTES: u64 = 64 * 1024;
/// HTTP statuses retried by default (`weft.io/retry-statuses`): the gateway errors.
pub const RETRY_STATUSES: &[(u16, u16)] = &[(502, 504)];
/// gRPC codes retried by default (`weft.io/retry-grpc-codes`): UNAVAILABLE.
pub const RETRY_GRPC_CODES: &[u32] = &[14];

/// Consecutive failures that eject an endpoint (`weft.io/failure-accrual-consecutive`).
pub const ACCRUAL_CONSECUTIVE_FAILURES: u32 = 5;
/// Success rate under which an endpoint is ejected (`weft.io/failure-accrual-success-rate`);
/// 0: off by default, because a dependency failing for everyone would eject every endpoint.
pub const ACCRUAL_MIN_SUCCESS_RATE: f64 = 0.0;
/// The success-rate window (`weft.io/failure-accrual-window`).
pub const ACCRUAL_WINDOW_MS: u64 = 10_000;
/// Responses needed in the window before the success rate counts.
pub const ACCRUAL_MIN_REQUESTS: u32 = 20;
/// First ejection (`weft.io/failure-accrual-backoff`, `<min>-<max>`).
pub const ACCRUAL_MIN_BACKOFF_MS: u64 = 1_000;
/// Longest ejection.
pub const ACCRUAL_MAX_BACKOFF_MS: u64 = 60_000;
/// HTTP statuses that count as failures (`weft.io/failure-statuses`).
pub const FAILURE_STATUSES: &[(u16, u16)] = &[(500, 599)];
/// gRPC codes that count as failures (`weft.io/failure-grpc-codes`): UNKNOWN, DEADLINE_EXCEEDED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS.
pub const FAILURE_GRPC_CODES: &[u32] = &[2, 4, 13, 14, 15];

/// Requests to one service in flight from one proxy (`weft.io/max-concurrent-requests`).
pub const MAX_CONCURRENT_REQUESTS: u32 = 10_000;
/// Requests that may wait for a slot (`weft.io/max-pending-requests`).
pub const MAX_PENDING_REQUESTS: u32 = 1_000;
/// Requests in flight to one endpoint (`weft.io/max-requests-per-endpoint`); 0: unlimited.
pub const MAX_REQUESTS_PER_ENDPOINT: u32 = 0;
/// Longest wait for a slot before a 503 (`weft.io/queue-timeout`).
pub const QUEUE_TIMEOUT_MS: u64 = 1_000;

/// The header that carries a request's remaining time, in milliseconds, from proxy to proxy
/// (as `grpc-timeout` does for gRPC). Relative, so that clocks need not agree.
pub const DEADLINE_HEADER: &str = "weft-timeout-ms";
/// The header a shed or rate-limited response carries, naming why (`concurrency`,
/// `pending`, `queue-timeout`, `rate-limit`, `ejected`, `deadline`).
pub const REASON_HEADER: &str = "weft-reason";

/// How long a client's kept-alive HTTP/1 connection may sit idle in a proxy's listeners before
/// the proxy closes it (`WEFT_PROXY_HTTP1_IDLE_TIMEOUT`, the `weft.io/http1-idle-timeout`
/// annotation, chart value `proxy.http1IdleTimeout`): an hour, Envoy's default, longer than the
/// idle pools of common HTTP clients, so that the client closes first and no request meets a
/// connection the proxy is closing.
pub const HTTP1_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// The shortest idle timeout taken: shorter closes connections while clients reuse them.
pub const MIN_HTTP1_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A value of the HTTP/1 idle timeout, the one check that the proxy (at start), the injector
/// (for the annotation) and the operator (for the chart value) all make: a duration
/// ([`crate::duration::parse_or_seconds`]) of at least [`MIN_HTTP1_IDLE_TIMEOUT`].
pub fn http1_idle_timeout(value: &str) -> Result<std::time::Duration, String> {
    let d = crate::duration::parse_or_seconds(value).map_err(|e| e.to_string())?;
    if d < MIN_HTTP1_IDLE_TIMEOUT {
        return Err(format!(
            "{value:?} is shorter than 1s (an idle timeout that short closes kept-alive \
             connections while clients reuse them)"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn http1_idle_timeout_is_a_duration_of_at_least_a_second() {
        assert_eq!(http1_idle_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(http1_idle_timeout("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(http1_idle_timeout("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(http1_idle_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(http1_idle_timeout("1s"), Ok(MIN_HTTP1_IDLE_TIMEOUT));
        for bad in ["", "999ms", "0", "-5s", "1d", "soon", "400d"] {
            assert!(http1_idle_timeout(bad).is_err(), "{bad:?} accepted");
        }
    }
}
