//! Just enough of the Prometheus text format to read weft-proxy's `/metrics`: one reader for the
//! CLI (`weft stat`, `weft check`, `weft edges`) and the operator (TrafficMetrics).

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a Prometheus (or OpenMetrics) text exposition; skips what it cannot read.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let end = closing_brace(body)?;
        parse_labels(&body[..end], &mut labels)?;
        &body[end + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Index of the `}` closing a label set, honouring quoted values.
fn closing_brace(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_labels(mut s: &str, out: &mut BTreeMap<String, String>) -> Option<()> {
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(());
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        let rest = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.insert(key, value);
        s = &rest[end + 1..];
    }
}

/// The `q` quantile (0..=1) of a cumulative histogram given as `(upper bound, count)` pairs,
/// interpolated linearly within the bucket, as PromQL's `histogram_quantile` does.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_bound = 0.0;
    let mut prev_count = 0.0;
    for (bound, count) in b {
        if count >= rank {
            if bound.is_infinite() {
                return Some(prev_bound);
            }
            let in_bucket = count - prev_count;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket);
        }
        prev_bound = bound;
        prev_count = count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let text = "# HELP x y\nweft_proxy_requests_total{direction=\"outbound\",authority=\"api.demo\",peer=\"a\\\"b\"} 42\nup 1\n";
        let s = parse(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "weft_proxy_requests_total");
        assert_eq!(s[0].labels["authority"], "api.demo");
        assert_eq!(s[0].labels["peer"], "a\"b");
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].value, 1.0);
    }

    #[test]
    fn quantiles_interpolate() {
        let b = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        let p50 = histogram_quantile(0.5, &b).unwrap_or_default();
        assert!((p50 - 0.001).abs() < 1e-12);
        let p75 = histogram_quantile(0.75, &b).unwrap_or_default();
        assert!((p75 - 0.0015).abs() < 1e-12);
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }
}
