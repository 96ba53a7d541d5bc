//! `weft stat`: golden metrics (success rate, rps, latency percentiles) from proxies' `/metrics`.
//!
//! It scrapes every proxy twice, `--window` apart, and reports the difference, grouped by
//! workload or pod (the proxy, named by its own `namespace`/`pod`/workload labels), service,
//! TrafficSplit backend or route. A row with no request in the window is not shown, nor a proxy
//! read only once (gone, or new, in between). `--from`/`--to` report the edges between callers
//! and callees instead (see [`crate::cmd::edges`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::cmd::edges;
pub use crate::cmd::targets::{cluster_targets, resolve_targets, Target};
use crate::promtext::{self, Sample};
use crate::OutputFormat;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The proxy's workload (`deployment/web`; its pod when it has no workload).
    Workload,
    /// The proxy's pod.
    Pod,
    Service,
    Backend,
    Route,
}

/// One row of `weft stat`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub direction: String,
    pub name: String,
    pub requests: u64,
    pub rps: f64,
    /// 2xx and 3xx over all responses.
    pub success_rate: Option<f64>,
    pub client_errors: u64,
    pub server_errors: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Default)]
struct Acc {
    by_class: BTreeMap<String, f64>,
    buckets: BTreeMap<u64, f64>,
}

pub async fn collect(
    targets: &[Target],
    client: Option<&kube::Client>,
    window: Duration,
    by: GroupBy,
) -> anyhow::Result<Vec<Row>> {
    let (first, second, secs) =
        edges::read_twice(targets, client, window, "weft stat", false).await?;
    Ok(rows(&first, &second, secs, by))
}

/// `weft stat --from/--to`: the traffic of the edges whose caller is `from` and callee `to`
/// (either may be absent), one row per caller and callee.
pub async fn collect_edges(
    targets: &[Target],
    client: Option<&kube::Client>,
    window: Duration,
    from: Option<&edges::Resource>,
    to: Option<&edges::Resource>,
) -> anyhow::Result<Vec<Row>> {
    let (first, second, secs) =
        edges::read_twice(targets, client, window, "weft stat", true).await?;
    // A pod of a workload is named by its workload unless a side asks for a pod.
    let by_pod = [from, to]
        .iter()
        .any(|r| r.is_some_and(|r| r.kind == "pod"));
    let all = if by_pod {
        edges::edges_by_pod(&first, &second)
    } else {
        edges::edges(&first, &second)
    };
    Ok(edge_rows(&all, secs, from, to))
}

/// Rows of the edges from `from` to `to`, summed by (caller, callee).
pub fn edge_rows(
    all: &[edges::Edge],
    secs: f64,
    from: Option<&edges::Resource>,
    to: Option<&edges::Resource>,
) -> Vec<Row> {
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for e in all {
        if from.is_some_and(|f| !f.matches_src(&e.key))
            || to.is_some_and(|t| !t.matches_dst(&e.key))
        {
            continue;
        }
        // Seen by the caller's proxy (outbound) or only by the callee's (inbound).
        let dir = if e.key.src.namespace.is_empty() {
            "inbound"
        } else {
            "outbound"
        };
        let a = acc
            .entry((dir.to_string(), format!("{} -> {}", e.key.src, e.key.dst)))
            .or_default();
        for (class, n) in &e.by_class {
            *a.by_class.entry(class.clone()).or_default() += n;
        }
        for (le, n) in &e.buckets {
            *a.buckets.entry(le.to_bits()).or_default() += n;
        }
    }
    let empty = BTreeMap::new();
    rows_of(&empty, &acc, secs)
}

fn key(proxy: &str, s: &Sample, by: GroupBy) -> (String, String) {
    let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
    let dir = l("direction");
    let name = match by {
        GroupBy::Workload | GroupBy::Pod => proxy.to_owned(),
        GroupBy::Service => l("authority"),
        GroupBy::Backend => {
            let b = l("backend");
            if b.is_empty() {
                l("authority")
            } else {
                format!("{} -> {b}", l("authority"))
            }
        }
        GroupBy::Route => format!("{} {}", l("authority"), l("route")),
    };
    (dir, name)
}

/// The name of a proxy's rows by workload or pod: from its own labels, else how it was reached.
fn proxy_name(r: &edges::Reading, by: GroupBy) -> String {
    let peer = match by {
        GroupBy::Pod => edges::proxy_pod(&r.samples),
        _ => edges::proxy_peer(&r.samples),
    };
    peer.map_or_else(|| r.target.clone(), |p| p.to_string())
}

fn accumulate(scrape: &[edges::Reading], by: GroupBy) -> BTreeMap<(String, String), Acc> {
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for r in scrape {
        let proxy = proxy_name(r, by);
        for s in &r.samples {
            if s.name == "weft_proxy_requests_total" {
                let a = acc.entry(key(&proxy, s, by)).or_default();
                *a.by_class
                    .entry(s.labels.get("status_class").cloned().unwrap_or_default())
                    .or_default() += s.value;
            } else if s.name == "weft_proxy_request_duration_seconds_bucket" {
                let le = match s.labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                let a = acc.entry(key(&proxy, s, by)).or_default();
                *a.buckets.entry(le.to_bits()).or_default() += s.value;
            }
        }
    }
    acc
}

fn rows(first: &[edges::Reading], second: &[edges::Reading], secs: f64, by: GroupBy) -> Vec<Row> {
    // Only proxies read both times: one that appeared in between has no difference to report.
    let before: BTreeSet<&str> = first.iter().map(|r| r.target.as_str()).collect();
    let second: Vec<edges::Reading> = second
        .iter()
        .filter(|r| before.contains(r.target.as_str()))
        .cloned()
        .collect();
    rows_of(&accumulate(first, by), &accumulate(&second, by), secs)
}

fn rows_of(
    a: &BTreeMap<(String, String), Acc>,
    b: &BTreeMap<(String, String), Acc>,
    secs: f64,
) -> Vec<Row> {
    let mut out = Vec::new();
    for ((dir, name), now) in b {
        let before = a.get(&(dir.clone(), name.clone()));
        let class = |c: &str| {
            let n = now.by_class.get(c).copied().unwrap_or(0.0);
            let p = before
                .and_then(|x| x.by_class.get(c))
                .copied()
                .unwrap_or(0.0);
            (n - p).max(0.0)
        };
        let ok = class("2xx") + class("3xx");
        let total: f64 = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .map(|c| class(c))
            .sum();
        // No stale rows: nothing happened in the window.
        if total <= 0.0 {
            continue;
        }
        let buckets: Vec<(f64, f64)> = now
            .buckets
            .iter()
            .map(|(bits, n)| {
                let p = before
                    .and_then(|x| x.buckets.get(bits))
                    .copied()
                    .unwrap_or(0.0);
                (f64::from_bits(*bits), (n - p).max(0.0))
            })
            .collect();
        let q = |x| promtext::histogram_quantile(x, &buckets).map(|s| s * 1000.0);
        out.push(Row {
            direction: dir.clone(),
            name: name.clone(),
            requests: total as u64,
            rps: total / secs,
            success_rate: Some(ok / total),
            client_errors: class("4xx") as u64,
            server_errors: class("5xx") as u64,
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        });
    }
    out.sort_by(|x, y| (&x.direction, &x.name).cmp(&(&y.direction, &y.name)));
    out
}

pub fn print(rows: &[Row], format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(rows)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
            print!(
                "{:<9} {:<width$} {:>8} {:>9} {:>8} {:>8}",
                "DIRECTION", "NAME", "SUCCESS", "RPS", "P50", "P99"
            );
            if wide {
                print!(" {:>8} {:>9} {:>6} {:>6}", "P95", "REQUESTS", "4XX", "5XX");
            }
            println!();
            for r in rows {
                let f =
                    |v: Option<f64>| v.map(|x| format!("{x:.2}ms")).unwrap_or_else(|| "-".into());
                let sr = r
                    .success_rate
                    .map(|s| format!("{:.2}%", s * 100.0))
                    .unwrap_or_else(|| "-".into());
                print!(
                    "{:<9} {:<width$} {:>8} {:>9.1} {:>8} {:>8}",
                    r.direction,
                    r.name,
                    sr,
                    r.rps,
                    f(r.p50_ms),
                    f(r.p99_ms)
                );
                if wide {
                    print!(
                        " {:>8} {:>9} {:>6} {:>6}",
                        f(r.p95_ms),
                        r.requests,
                        r.client_errors,
                        r.server_errors
                    );
                }
                println!();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(ok: f64, denied: f64, fast: f64) -> Vec<edges::Reading> {
        let text = format!(
            "weft_proxy_requests_total{{direction=\"outbound\",authority=\"api.demo\",route=\"default\",backend=\"api-v1\",status_class=\"2xx\",peer=\"x\"}} {ok}\n\
             weft_proxy_requests_total{{direction=\"outbound\",authority=\"api.demo\",route=\"default\",backend=\"api-v1\",status_class=\"4xx\",peer=\"x\"}} {denied}\n\
             weft_proxy_request_duration_seconds_bucket{{direction=\"outbound\",authority=\"api.demo\",route=\"default\",backend=\"api-v1\",le=\"0.001\"}} {fast}\n\
             weft_proxy_request_duration_seconds_bucket{{direction=\"outbound\",authority=\"api.demo\",route=\"default\",backend=\"api-v1\",le=\"+Inf\"}} {}\n",
            ok + denied
        );
        vec![edges::Reading {
            target: "p".to_string(),
            identity: String::new(),
            samples: promtext::parse(&text),
        }]
    }

    #[test]
    fn rates_are_differences_over_the_window() {
        let r = rows(
            &scrape(100.0, 0.0, 100.0),
            &scrape(280.0, 20.0, 300.0),
            2.0,
            GroupBy::Backend,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "api.demo -> api-v1");
        assert_eq!(r[0].requests, 200);
        assert!((r[0].rps - 100.0).abs() < 1e-9);
        assert_eq!(r[0].success_rate, Some(0.9));
        assert_eq!(r[0].client_errors, 20);
        assert!(r[0].p50_ms.is_some_and(|p| p <= 1.0));
    }
}
