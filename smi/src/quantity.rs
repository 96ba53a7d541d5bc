//! Kubernetes quantities as used by v1alpha1 TrafficSplit weights (`"500m"`, `1`, `"1.5"`).
//!
//! weft keeps weights in milli-units (`u64`); a quantity that is negative or finer than one
//! milli-unit is rejected rather than rounded, so that conversions stay lossless.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quantity could not be read as a whole number of milli-units.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error(
        "quantity {0:?} is not a number with an optional suffix (m, k, M, G, T, P, E, Ki..Ei)"
    )]
    Syntax(String),
    #[error("quantity {0:?} is negative; weights must be >= 0")]
    Negative(String),
    #[error("quantity {0:?} is finer than one milli-unit (0.001)")]
    TooPrecise(String),
    #[error("quantity {0:?} is too large")]
    Overflow(String),
}

/// Parses a Kubernetes quantity into milli-units, exactly.
pub fn parse_milli(s: &str) -> Result<u64, QuantityError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(QuantityError::Empty);
    }
    let syntax = || QuantityError::Syntax(s.to_string());
    let (negative, t) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(syntax());
    }
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    // value = digits * 10^exp10 * 1024^exp1024 (digits without the decimal point)
    let (exp10, exp1024): (i32, u32) = match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| syntax())?;
            (exp, 0)
        }
        _ => return Err(syntax()),
    };
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    // milli-units: shift by 3 more decimal places.
    let mut exp = exp10 + 3 - i32::try_from(frac_part.len()).map_err(|_| syntax())?;
    let mut digits: String = digits.to_string();
    if digits.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(s.to_string()));
    }
    // Drop trailing zeros while the exponent is negative (e.g. "0.5000" -> 5 * 10^-1).
    while exp < 0 && digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    if exp < 0 {
        return Err(QuantityError::TooPrecise(s.to_string()));
    }
    let overflow = || QuantityError::Overflow(s.to_string());
    let mut v: u64 = digits.parse().map_err(|_| overflow())?;
    for _ in 0..exp {
        v = v.checked_mul(10).ok_or_else(overflow)?;
    }
    for _ in 0..exp1024 {
        v = v.checked_mul(1024).ok_or_else(overflow)?;
    }
    Ok(v)
}

/// Formats milli-units as the canonical quantity string: `"2"` for 2000, `"500m"` for 500.
pub fn format_milli(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// A v1alpha1 TrafficSplit weight: a Kubernetes quantity, written as a number or a string.
///
/// Serialises as the canonical string (`"500m"`, `"1"`); deserialises from either form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MilliQuantity(pub u64);

impl fmt::Display for MilliQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_milli(self.0))
    }
}

impl Serialize for MilliQuantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_milli(self.0))
    }
}

impl<'de> Deserialize<'de> for MilliQuantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => {
                parse_milli(&s).map(MilliQuantity).map_err(D::Error::custom)
            }
            serde_json::Value::Number(n) => {
                let s = n.to_string();
                parse_milli(&s).map(MilliQuantity).map_err(D::Error::custom)
            }
            other => Err(D::Error::custom(format!(
                "expected a quantity (number or string), found {other}"
            ))),
        }
    }
}

/// The schema Kubernetes uses for `resource.Quantity`, restricted to non-negative values.
pub(crate) const QUANTITY_PATTERN: &str = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[mkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

impl JsonSchema for MilliQuantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MilliQuantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A non-negative Kubernetes quantity: 1, \"1\", \"500m\" (= 0.5).",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let cases = [
            ("1", 1000),
            ("0", 0),
            ("500m", 500),
            ("0.5", 500),
            ("1.5", 1500),
            ("+2", 2000),
            ("1k", 1_000_000),
            ("1Ki", 1_024_000),
            ("1e3", 1_000_000),
            ("5e-1", 500),
            ("0.5000", 500),
            ("0m", 0),
            (".25", 250),
            ("-0", 0),
        ];
        for (s, want) in cases {
            assert_eq!(parse_milli(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_bad_quantities() {
        for s in [
            "",
            "abc",
            "1x",
            "-1",
            "0.0001",
            "1.2.3",
            "99999999999999999999",
            ".",
        ] {
            assert!(parse_milli(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_milli(0), "0");
        assert_eq!(format_milli(1000), "1");
        assert_eq!(format_milli(1500), "1500m");
        assert_eq!(format_milli(500), "500m");
    }

    #[test]
    fn deserialises_numbers_and_strings() {
        let q: MilliQuantity = serde_json::from_str("1").unwrap();
        assert_eq!(q, MilliQuantity(1000));
        let q: MilliQuantity = serde_json::from_str("\"250m\"").unwrap();
        assert_eq!(q, MilliQuantity(250));
        let q: MilliQuantity = serde_json::from_str("0.5").unwrap();
        assert_eq!(q, MilliQuantity(500));
        assert!(serde_json::from_str::<MilliQuantity>("true").is_err());
    }

    proptest::proptest! {
        #[test]
        fn format_parse_round_trip(m in 0u64..u64::MAX / 2) {
            proptest::prop_assert_eq!(parse_milli(&format_milli(m)), Ok(m));
        }
    }
}
