//! A request's remaining time, as it travels from proxy to proxy (docs/reliability.md).
//!
//! Two headers carry it, both *relative* (time left when the request was sent), so that the
//! clocks of two hosts need not agree:
//! - `grpc-timeout` (gRPC's own: up to 8 digits and a unit `H`, `M`, `S`, `m`, `u`, `n`), which
//!   gRPC clients set and gRPC servers honour;
//! - [`DEADLINE_HEADER`] (`weft-timeout-ms`, decimal milliseconds), weft's for any HTTP request.
//!
//! A proxy reads the smaller of the two, takes the minimum with its own timeout, and before
//! forwarding rewrites both with what is left (`grpc-timeout` only where it was present). An
//! unparsable value is ignored (it can only shorten a request's life, never lengthen it, so
//! ignoring it is the safe reading), and values are capped at [`MAX_DEADLINE`].

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
pub use weft_common::reliability::DEADLINE_HEADER;

/// gRPC's header. Header names are `HeaderName` constants on the request path: a `&str` name
/// is parsed and validated again on every lookup (issue #20).
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// [`DEADLINE_HEADER`] as a header name.
pub const DEADLINE: HeaderName = HeaderName::from_static(DEADLINE_HEADER);
/// Longest deadline honoured: larger values are read as this.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Parses a `grpc-timeout` value (`"100m"`, `"5S"`, `"1H"`, …); `None` if malformed.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let d = match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(MAX_DEADLINE))
}

/// Formats `d` as a `grpc-timeout` value (at most 8 digits, the finest unit that fits).
pub fn format_grpc_timeout(d: Duration) -> HeaderValue {
    const LIMIT: u128 = 100_000_000;
    let nanos = d.as_nanos();
    let (n, unit) = if nanos < LIMIT {
        (nanos, 'n')
    } else if nanos / 1_000 < LIMIT {
        (nanos / 1_000, 'u')
    } else if nanos / 1_000_000 < LIMIT {
        (nanos / 1_000_000, 'm')
    } else if nanos / 1_000_000_000 < LIMIT {
        (nanos / 1_000_000_000, 'S')
    } else {
        ((nanos / 60_000_000_000).min(LIMIT - 1), 'M')
    };
    // Digits and an ASCII letter: always a valid header value.
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0n"))
}

/// Parses a [`DEADLINE_HEADER`] value (decimal milliseconds); `None` if malformed.
pub fn parse_deadline_ms(v: &[u8]) -> Option<Duration> {
    if v.is_empty() || v.len() > 12 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ms: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_DEADLINE))
}

/// The time a request says it has left: the smaller of its `grpc-timeout` and
/// [`DEADLINE_HEADER`], `None` when it carries neither (or only malformed values).
pub fn remaining(headers: &HeaderMap) -> Option<Duration> {
    let grpc = headers
        .get(GRPC_TIMEOUT)
        .and_then(|v| parse_grpc_timeout(v.as_bytes()));
    let weft = headers
        .get(DEADLINE)
        .and_then(|v| parse_deadline_ms(v.as_bytes()));
    match (grpc, weft) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The effective time limit of a request: the smaller of what it carries and `own` (a
/// service's or route's timeout).
pub fn effective(headers: &HeaderMap, own: Option<Duration>) -> Option<Duration> {
    match (remaining(headers), own) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes `left` into the headers of a request about to be forwarded: always
/// [`DEADLINE_HEADER`] (whole milliseconds, rounded down), and `grpc-timeout` when the request
/// already carried one (a gRPC request).
pub fn set_remaining(headers: &mut HeaderMap, left: Duration) {
    let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    headers.insert(DEADLINE, HeaderValue::from(ms));
    if headers.contains_key(GRPC_TIMEOUT) {
        headers.insert(GRPC_TIMEOUT, format_grpc_timeout(left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips_and_rejects_garbage() {
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"99999999H"), Some(MAX_DEADLINE));
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"10x",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        for d in [
            Duration::from_nanos(5),
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(86_400),
        ] {
            let v = format_grpc_timeout(d);
            let back = parse_grpc_timeout(v.as_bytes()).unwrap();
            assert!(
                back <= d && d - back < Duration::from_secs(60),
                "{d:?} -> {v:?}"
            );
        }
    }

    #[test]
    fn the_smallest_deadline_wins_and_is_rewritten() {
        let mut h = HeaderMap::new();
        assert_eq!(effective(&h, None), None);
        assert_eq!(
            effective(&h, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        h.insert(DEADLINE_HEADER, HeaderValue::from_static("1500"));
        assert_eq!(
            effective(&h, Some(Duration::from_secs(2))),
            Some(Duration::from_millis(1500))
        );
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("300m"));
        assert_eq!(remaining(&h), Some(Duration::from_millis(300)));
        set_remaining(&mut h, Duration::from_millis(120));
        assert_eq!(h[DEADLINE_HEADER], "120");
        assert_eq!(remaining(&h), Some(Duration::from_millis(120)));
        h.insert(DEADLINE_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(remaining(&h), Some(Duration::from_millis(120)));
    }
}
