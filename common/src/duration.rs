//! The one parser of human durations, for annotations, environment variables and CLI flags:
//! a non-negative decimal number and a unit, `ms`, `s`, `m` or `h` (`500ms`, `2s`, `1.5m`, `1h`).
//! [`parse`] requires the unit; [`parse_or_seconds`] reads a bare number as seconds.

use std::time::Duration;

/// Longest duration accepted: a year (larger values are typos, and overflow timers).
pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// A string that is not a duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration like 500ms, 2s, 1.5m or 1h")]
pub struct InvalidDuration(pub String);

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`; the number may have a fraction.
pub fn parse(s: &str) -> Result<Duration, InvalidDuration> {
    parse_inner(s, false)
}

/// Like [`parse`], but a bare number is a number of seconds.
pub fn parse_or_seconds(s: &str) -> Result<Duration, InvalidDuration> {
    parse_inner(s, true)
}

fn parse_inner(s: &str, bare_is_seconds: bool) -> Result<Duration, InvalidDuration> {
    let err = || InvalidDuration(s.to_owned());
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" if bare_is_seconds => 1.0,
        _ => return Err(err()),
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(err());
    }
    let n: f64 = num.parse().map_err(|_| err())?;
    let secs = n * secs_per_unit;
    if !secs.is_finite() || secs < 0.0 || secs > MAX.as_secs_f64() {
        return Err(err());
    }
    // Round to whole microseconds so that `1.1s` is 1100 ms, not 1099.999…
    Ok(Duration::from_micros((secs * 1e6).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_fractions_and_bare_numbers() {
        let ms = Duration::from_millis;
        assert_eq!(parse("500ms"), Ok(ms(500)));
        assert_eq!(parse("2s"), Ok(ms(2000)));
        assert_eq!(parse(" 1.5s "), Ok(ms(1500)));
        assert_eq!(parse("1.1s"), Ok(ms(1100)));
        assert_eq!(parse("1m"), Ok(ms(60_000)));
        assert_eq!(parse("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse("0s"), Ok(ms(0)));
        assert_eq!(parse_or_seconds("30"), Ok(ms(30_000)));
        assert_eq!(parse_or_seconds("250ms"), Ok(ms(250)));
        for bad in [
            "",
            "s",
            "30",
            "-1s",
            "1.s",
            ".5s",
            "1..2s",
            "1e3s",
            "1d",
            "10 parsecs",
            "nan s",
            "1x",
            "99999999999h",
            "1s1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse_or_seconds("").is_err());
        assert!(parse_or_seconds("abc").is_err());
    }
}
