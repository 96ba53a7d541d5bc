//! `weft edges`: who calls whom, from the proxies' Linkerd-compatible families
//! (`response_total`, `response_latency_ms`) and their caller/callee labels (#18).
//!
//! Every proxy is read twice, `--window` apart (its `/metrics` and, once, its `/config` for its
//! own identity); an edge's figures are the difference. An edge is seen:
//!
//! - from the caller's outbound series: the caller is the proxy itself (its `namespace`, `pod`
//!   and workload labels), the callee the endpoint's `dst_namespace`/`dst_<kind>`/`dst_pod`
//!   (`dst_service` when no endpoint was reached), with `server_id` and `tls`; the client
//!   identity is the caller proxy's own;
//! - from the callee's inbound series, for callers that no proxy read here speaks for: an
//!   unmeshed client (`tls="false"`, no `client_id`: the caller is `unmeshed`) or a meshed one
//!   whose proxy was not read (the caller is named by its `client_id`).
//!
//! Outbound edges to a meshed callee carry `server_seen`: the callee proxies' inbound count of
//! requests from the edge's client identity over the same window (a cross-check; it sums every
//! caller workload that shares the identity).
//!
//! `weft stat --from/--to` reads the same edges ([`Edge`]) and reports their golden metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use crate::cmd::targets::{self as stat, Target};
use crate::promtext::{self, Sample};
use crate::OutputFormat;

/// The workload labels of the Linkerd-compatible families, with the kind each names.
const WORKLOAD_LABELS: [(&str, &str); 6] = [
    ("deployment", "deployment"),
    ("statefulset", "statefulset"),
    ("daemonset", "daemonset"),
    ("replicaset", "replicaset"),
    ("k8s_job", "job"),
    ("cronjob", "cronjob"),
];

/// The caller of an edge the callee saw without a mesh identity.
pub const UNMESHED: &str = "unmeshed";

/// One proxy's reading: its `/metrics` samples and its own identity (from `/config`).
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// How the proxy was reached (admin address or `namespace/pod`): names it across readings.
    pub target: String,
    pub identity: String,
    pub samples: Vec<Sample>,
}

/// A workload, pod or service: `kind/name` in `namespace`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Peer {
    pub namespace: String,
    /// `deployment/web`, `pod/web-0`, `service/api`, an identity, or [`UNMESHED`].
    pub name: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Who called whom, with which identities, over mTLS or not.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EdgeKey {
    pub src: Peer,
    pub dst: Peer,
    /// Outbound: the service (or TrafficSplit backend) the request went to, `dst_service`;
    /// empty for edges seen inbound.
    pub service: String,
    /// The caller's SPIFFE ID; empty when it had none.
    pub client_id: String,
    /// The callee's SPIFFE ID; empty when it is not meshed.
    pub server_id: String,
    pub tls: bool,
}

/// Counts of an edge (or of a reading of it).
#[derive(Clone, Debug, Default)]
pub struct Acc {
    /// Responses by status class (`2xx`, …).
    pub by_class: BTreeMap<String, f64>,
    /// Responses classified `failure` (5xx, gRPC errors).
    pub failures: f64,
    /// `response_latency_ms` buckets: upper bound (ms, as f64 bits) to cumulative count.
    pub buckets: BTreeMap<u64, f64>,
}

/// An edge over the window.
#[derive(Clone, Debug)]
pub struct Edge {
    pub key: EdgeKey,
    pub by_class: BTreeMap<String, f64>,
    pub failures: f64,
    /// Latency buckets in seconds (upper bound, count in the window).
    pub buckets: Vec<(f64, f64)>,
    /// Outbound edges to a meshed callee: the callee proxies' inbound count from `client_id`.
    pub server_seen: Option<u64>,
}

impl Edge {
    pub fn requests(&self) -> f64 {
        self.by_class.values().sum()
    }
}

/// `kind/name` of the workload in `labels` (with `prefix`: `""` or `"dst_"`), else
/// `pod/<pod>`.
fn workload_name(labels: &BTreeMap<String, String>, prefix: &str) -> Option<String> {
    let get = |k: &str| {
        labels
            .get(&format!("{prefix}{k}"))
            .filter(|v| !v.is_empty())
    };
    for (label, kind) in WORKLOAD_LABELS {
        if let Some(name) = get(label) {
            return Some(format!("{kind}/{name}"));
        }
    }
    get("pod").map(|p| format!("pod/{p}"))
}

/// The proxy's own name (namespace and workload, else pod), from any of its Linkerd-compatible
/// series; `None` when it has none yet.
pub fn proxy_peer(samples: &[Sample]) -> Option<Peer> {
    samples.iter().filter(|s| is_compat(&s.name)).find_map(|s| {
        Some(Peer {
            namespace: s.labels.get("namespace").cloned().unwrap_or_default(),
            name: workload_name(&s.labels, "")?,
        })
    })
}

/// The proxy's own pod, `pod/<name>`.
pub fn proxy_pod(samples: &[Sample]) -> Option<Peer> {
    samples.iter().filter(|s| is_compat(&s.name)).find_map(|s| {
        Some(Peer {
            namespace: s.labels.get("namespace").cloned().unwrap_or_default(),
            name: format!("pod/{}", s.labels.get("pod").filter(|p| !p.is_empty())?),
        })
    })
}

fn is_compat(name: &str) -> bool {
    name == "request_total" || name == "response_total" || name.starts_with("response_latency_ms")
}

/// Reads every target's `/metrics` (and, with `identities`, its identity from `/config`).
pub async fn read_all(
    targets: &[Target],
    client: Option<&kube::Client>,
    what: &str,
    identities: bool,
) -> anyhow::Result<Vec<Reading>> {
    let mut out = Vec::new();
    for t in targets {
        let Some(body) = stat::fetch(t, client, "/metrics", what).await? else {
            continue;
        };
        let config = if identities {
            stat::fetch(t, client, "/config", what).await
        } else {
            Ok(None)
        };
        let identity = match config {
            Ok(Some(config)) => serde_json::from_str::<serde_json::Value>(&config)
                .ok()
                .and_then(|v| v.pointer("/identity/id")?.as_str().map(str::to_owned))
                .unwrap_or_default(),
            _ => String::new(),
        };
        out.push(Reading {
            target: t.label(),
            identity,
            samples: promtext::parse(&body),
        });
    }
    Ok(out)
}

fn status_class(code: &str) -> String {
    match code.as_bytes().first() {
        Some(d @ b'1'..=b'5') => format!("{}xx", char::from(*d)),
        _ => "5xx".to_string(),
    }
}

/// The edges of one set of readings, with their cumulative counts, and the inbound counts by
/// (callee proxy, client identity) for the cross-check.
/// With `by_pod`, meshed callers and callees are named by pod (`pod/<name>`) instead of by
/// workload.
fn accumulate(
    readings: &[Reading],
    by_pod: bool,
) -> (BTreeMap<EdgeKey, Acc>, BTreeMap<(Peer, String), f64>) {
    let identities: BTreeSet<&str> = readings
        .iter()
        .map(|r| r.identity.as_str())
        .filter(|i| !i.is_empty())
        .collect();
    let mut edges: BTreeMap<EdgeKey, Acc> = BTreeMap::new();
    let mut seen: BTreeMap<(Peer, String), f64> = BTreeMap::new();
    for r in readings {
        let me = if by_pod {
            proxy_pod(&r.samples)
        } else {
            proxy_peer(&r.samples)
        };
        let me = me.unwrap_or_else(|| Peer {
            namespace: String::new(),
            name: r.target.clone(),
        });
        for s in &r.samples {
            let (response, bucket) = match s.name.as_str() {
                "response_total" => (true, None),
                "response_latency_ms_bucket" => {
                    let le = match s.labels.get("le").map(String::as_str) {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap_or(f64::INFINITY),
                        None => continue,
                    };
                    (false, Some(le / 1000.0))
                }
                _ => continue,
            };
            let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            let tls = l("tls") == "true";
            let key = match l("direction").as_str() {
                "outbound" => {
                    let dst_ns = l("dst_namespace");
                    let by_name = if by_pod {
                        Some(l("dst_pod"))
                            .filter(|p| !p.is_empty())
                            .map(|p| format!("pod/{p}"))
                    } else {
                        None
                    };
                    let dst = match by_name.or_else(|| workload_name(&s.labels, "dst_")) {
                        Some(name) => name,
                        None if !l("dst_service").is_empty() => {
                            format!("service/{}", l("dst_service"))
                        }
                        // Answered by the proxy before any service was resolved.
                        None => continue,
                    };
                    EdgeKey {
                        src: me.clone(),
                        dst: Peer {
                            namespace: dst_ns,
                            name: dst,
                        },
                        service: l("dst_service"),
                        client_id: r.identity.clone(),
                        server_id: l("server_id"),
                        tls,
                    }
                }
                "inbound" => {
                    let client = l("client_id");
                    if response && !client.is_empty() {
                        *seen.entry((me.clone(), client.clone())).or_default() += s.value;
                    }
                    // A caller whose proxy was read is counted from its outbound side.
                    if !client.is_empty() && identities.contains(client.as_str()) {
                        continue;
                    }
                    EdgeKey {
                        src: Peer {
                            namespace: String::new(),
                            name: if client.is_empty() {
                                UNMESHED.to_string()
                            } else {
                                client.clone()
                            },
                        },
                        dst: me.clone(),
                        service: String::new(),
                        client_id: client,
                        server_id: r.identity.clone(),
                        tls,
                    }
                }
                _ => continue,
            };
            let acc = edges.entry(key).or_default();
            match bucket {
                Some(le) => *acc.buckets.entry(le.to_bits()).or_default() += s.value,
                None => {
                    *acc.by_class
                        .entry(status_class(&l("status_code")))
                        .or_default() += s.value;
                    if l("classification") == "failure" {
                        acc.failures += s.value;
                    }
                }
            }
        }
    }
    (edges, seen)
}

/// The edges that carried requests between two readings. Only proxies read both times count
/// (a proxy that went away, or appeared in between, has no difference to report).
pub fn edges(first: &[Reading], second: &[Reading]) -> Vec<Edge> {
    edges_named(first, second, false)
}

/// [`edges`] with meshed callers and callees named by pod (`pod/<name>`), for `--from pod/X`
/// and `--to pod/X` (a Deployment's pod is otherwise named by its Deployment).
pub fn edges_by_pod(first: &[Reading], second: &[Reading]) -> Vec<Edge> {
    edges_named(first, second, true)
}

fn edges_named(first: &[Reading], second: &[Reading], by_pod: bool) -> Vec<Edge> {
    let before_targets: BTreeSet<&str> = first.iter().map(|r| r.target.as_str()).collect();
    let second: Vec<Reading> = second
        .iter()
        .filter(|r| before_targets.contains(r.target.as_str()))
        .cloned()
        .collect();
    let (a, seen_a) = accumulate(first, by_pod);
    let (b, seen_b) = accumulate(&second, by_pod);
    let delta = |now: f64, before: Option<f64>| (now - before.unwrap_or(0.0)).max(0.0);
    let mut out = Vec::new();
    for (key, now) in b {
        let before = a.get(&key);
        let by_class: BTreeMap<String, f64> = now
            .by_class
            .iter()
            .map(|(c, n)| {
                let d = delta(*n, before.and_then(|x| x.by_class.get(c)).copied());
                (c.clone(), d)
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        if by_class.is_empty() {
            continue;
        }
        let buckets = now
            .buckets
            .iter()
            .map(|(bits, n)| {
                let d = delta(*n, before.and_then(|x| x.buckets.get(bits)).copied());
                (f64::from_bits(*bits), d)
            })
            .collect();
        let server_seen = (key.tls && !key.client_id.is_empty() && key.src.name != UNMESHED)
            .then(|| {
                let mut n = 0.0;
                let mut any = false;
                for ((callee, client), v) in &seen_b {
                    if *callee == key.dst && *client == key.client_id {
                        any = true;
                        n += delta(*v, seen_a.get(&(callee.clone(), client.clone())).copied());
                    }
                }
                any.then_some(n as u64)
            })
            .flatten();
        out.push(Edge {
            failures: delta(now.failures, before.map(|x| x.failures)),
            key,
            by_class,
            buckets,
            server_seen,
        });
    }
    out
}

/// What `--from`, `--to` and `weft edges RESOURCE` name: `kind/name` (`deploy/web`,
/// `sts/db`, `pod/web-0`, `svc/api`, `ns/demo`), optionally in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Canonical kind: `deployment`, `statefulset`, `daemonset`, `replicaset`, `job`,
    /// `cronjob`, `pod`, `service` or `namespace`.
    pub kind: &'static str,
    pub name: String,
    pub namespace: Option<String>,
}

impl Resource {
    pub fn parse(s: &str, namespace: Option<&str>) -> anyhow::Result<Self> {
        let Some((kind, name)) = s.split_once('/') else {
            bail!(
                "{s:?}: expected KIND/NAME, e.g. deploy/web, sts/db, pod/web-0, svc/api, ns/demo"
            );
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deploy" | "deployment" | "deployments" => "deployment",
            "sts" | "statefulset" | "statefulsets" => "statefulset",
            "ds" | "daemonset" | "daemonsets" => "daemonset",
            "rs" | "replicaset" | "replicasets" => "replicaset",
            "job" | "jobs" => "job",
            "cj" | "cronjob" | "cronjobs" => "cronjob",
            "po" | "pod" | "pods" => "pod",
            "svc" | "service" | "services" => "service",
            "ns" | "namespace" | "namespaces" => "namespace",
            other => bail!(
                "{s:?}: unknown kind {other:?} (deploy, sts, ds, rs, job, cronjob, pod, svc, ns)"
            ),
        };
        if name.is_empty() || name.contains('/') {
            bail!("{s:?}: expected KIND/NAME");
        }
        Ok(Resource {
            kind,
            name: name.to_string(),
            namespace: namespace.map(str::to_owned),
        })
    }

    /// Whether `key`'s caller is (part of) this resource. A service is never a caller.
    pub fn matches_src(&self, key: &EdgeKey) -> bool {
        self.kind != "service" && self.matches(&key.src)
    }

    /// Whether `key`'s callee is (part of) this resource: a service matches the requests sent
    /// to it (`dst_service`: a TrafficSplit's backend, or the service addressed).
    pub fn matches_dst(&self, key: &EdgeKey) -> bool {
        if self.kind == "service" {
            let ns_ok = self
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == key.dst.namespace);
            return ns_ok && (key.service == self.name || self.matches(&key.dst));
        }
        self.matches(&key.dst)
    }

    /// Whether `peer` is (part of) this resource. A pod peer matches `pod/<name>`; a workload
    /// peer its workload; a service peer `svc/<name>`; any peer its namespace.
    pub fn matches(&self, peer: &Peer) -> bool {
        if self.kind == "namespace" {
            return peer.namespace == self.name;
        }
        if self
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != peer.namespace)
        {
            return false;
        }
        peer.name
            .split_once('/')
            .is_some_and(|(kind, name)| kind == self.kind && name == self.name)
    }
}

/// One row of `weft edges`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub src: Peer,
    pub dst: Peer,
    /// The service the caller addressed (`dst_service`); empty for edges seen inbound.
    pub service: String,
    pub client_id: String,
    pub server_id: String,
    pub tls: bool,
    pub requests: u64,
    /// 2xx and 3xx over all responses.
    pub success_rate: Option<f64>,
    /// Responses classified `failure` (5xx, gRPC errors, broken streams; see
    /// docs/observability.md).
    pub failures: u64,
    /// Requests the callee's proxies counted from `client_id` (outbound edges to meshed
    /// callees): a cross-check of `requests`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_seen: Option<u64>,
}

/// Reads every proxy twice, `window` apart, and returns the edges touching `filter` (all when
/// `None`).
pub async fn collect(
    targets: &[Target],
    client: Option<&kube::Client>,
    window: Duration,
    filter: Option<&Resource>,
) -> anyhow::Result<Vec<Row>> {
    let (first, second, _) = read_twice(targets, client, window, "weft edges", true).await?;
    Ok(rows(&edges(&first, &second), filter))
}

/// Two readings of every target, `window` apart, and the seconds between them; with
/// `identities`, each proxy's own identity too (edges need it; plain `weft stat` does not).
pub async fn read_twice(
    targets: &[Target],
    client: Option<&kube::Client>,
    window: Duration,
    what: &str,
    identities: bool,
) -> anyhow::Result<(Vec<Reading>, Vec<Reading>, f64)> {
    if targets.is_empty() {
        bail!("no proxies to read: pass --proxy-admin ADDR (repeatable), --demo, or run against a cluster with meshed pods");
    }
    let first = read_all(targets, client, what, identities).await?;
    let t0 = Instant::now();
    // Progress on stderr: the window starts now (tests wait for this line before sending).
    eprintln!(
        "{what}: read {} proxies; measuring for {} ms",
        first.len(),
        window.as_millis()
    );
    tokio::time::sleep(window).await;
    let second = read_all(targets, client, what, identities).await?;
    Ok((first, second, t0.elapsed().as_secs_f64().max(0.001)))
}

pub fn rows(edges: &[Edge], filter: Option<&Resource>) -> Vec<Row> {
    let mut out: Vec<Row> = edges
        .iter()
        .filter(|e| filter.is_none_or(|f| f.matches_src(&e.key) || f.matches_dst(&e.key)))
        .map(|e| {
            let total = e.requests();
            let ok = e.by_class.get("2xx").copied().unwrap_or(0.0)
                + e.by_class.get("3xx").copied().unwrap_or(0.0);
            Row {
                src: e.key.src.clone(),
                dst: e.key.dst.clone(),
                service: e.key.service.clone(),
                client_id: e.key.client_id.clone(),
                server_id: e.key.server_id.clone(),
                tls: e.key.tls,
                requests: total as u64,
                success_rate: (total > 0.0).then(|| ok / total),
                failures: e.failures as u64,
                server_seen: e.server_seen,
            }
        })
        .collect();
    out.sort_by(|x, y| {
        (
            &x.src,
            &x.dst,
            &x.service,
            &x.client_id,
            &x.server_id,
            x.tls,
        )
            .cmp(&(
                &y.src,
                &y.dst,
                &y.service,
                &y.client_id,
                &y.server_id,
                y.tls,
            ))
    });
    out
}

pub fn print(rows: &[Row], format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(rows)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            let wide = format == OutputFormat::Wide;
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut row = vec![
                        r.src.to_string(),
                        r.dst.to_string(),
                        dash(&r.client_id),
                        dash(&r.server_id),
                        r.tls.to_string(),
                        r.requests.to_string(),
                        r.success_rate
                            .map(|s| format!("{:.2}%", s * 100.0))
                            .unwrap_or_else(|| "-".into()),
                    ];
                    if wide {
                        row.push(dash(&r.service));
                        row.push(r.failures.to_string());
                    }
                    row
                })
                .collect();
            let mut head = vec![
                "SRC",
                "DST",
                "CLIENT_ID",
                "SERVER_ID",
                "TLS",
                "REQUESTS",
                "SUCCESS",
            ];
            if wide {
                head.extend(["SERVICE", "FAILURES"]);
            }
            let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
            for row in &table {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.len());
                }
            }
            let line = |cells: &[String]| {
                let mut s = String::new();
                for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                    if i > 0 {
                        s.push_str("  ");
                    }
                    s.push_str(&format!("{c:<w$}"));
                }
                println!("{}", s.trim_end());
            };
            line(&head.iter().map(|h| h.to_string()).collect::<Vec<_>>());
            for row in &table {
                line(row);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(target: &str, identity: &str, text: &str) -> Reading {
        Reading {
            target: target.into(),
            identity: identity.into(),
            samples: promtext::parse(text),
        }
    }

    const WEB: &str = "namespace=\"demo\",pod=\"web-0\",deployment=\"web\"";
    const API: &str = "namespace=\"demo\",pod=\"api-0\",deployment=\"api\"";
    const WEB_ID: &str = "spiffe://cluster.local/ns/demo/sa/web";
    const API_ID: &str = "spiffe://cluster.local/ns/demo/sa/api";

    fn web(ok: u32, denied: u32) -> Reading {
        let out = format!("direction=\"outbound\",authority=\"api.demo\",dst_namespace=\"demo\",dst_service=\"api\",dst_pod=\"api-0\",dst_deployment=\"api\",server_id=\"{API_ID}\",{WEB},tls=\"true\"");
        reading(
            "web",
            WEB_ID,
            &format!(
                "response_total{{{out},classification=\"success\",status_code=\"200\"}} {ok}\n\
                 response_total{{{out},classification=\"success\",status_code=\"403\"}} {denied}\n"
            ),
        )
    }

    fn api(from_web: u32, unmeshed: u32) -> Reading {
        reading(
            "api",
            API_ID,
            &format!(
                "response_total{{direction=\"inbound\",authority=\":8080\",{API},tls=\"true\",client_id=\"{WEB_ID}\",classification=\"success\",status_code=\"200\"}} {from_web}\n\
                 response_total{{direction=\"inbound\",authority=\":8080\",{API},tls=\"false\",classification=\"failure\",status_code=\"500\"}} {unmeshed}\n"
            ),
        )
    }

    #[test]
    fn edges_are_differences_with_identities_and_unmeshed_callers() {
        let e = edges(&[web(10, 1), api(10, 0)], &[web(40, 5), api(40, 3)]);
        let r = rows(&e, None);
        assert_eq!(r.len(), 2, "{r:#?}");
        let unmeshed = &r[0];
        assert_eq!(unmeshed.src.name, UNMESHED);
        assert_eq!(unmeshed.dst.to_string(), "demo/deployment/api");
        assert!(!unmeshed.tls);
        assert_eq!(unmeshed.client_id, "");
        assert_eq!(unmeshed.requests, 3);
        assert_eq!(unmeshed.success_rate, Some(0.0));
        assert_eq!(unmeshed.failures, 3);
        let meshed = &r[1];
        assert_eq!(meshed.src.to_string(), "demo/deployment/web");
        assert_eq!(meshed.dst.to_string(), "demo/deployment/api");
        assert_eq!(meshed.client_id, WEB_ID);
        assert_eq!(meshed.server_id, API_ID);
        assert!(meshed.tls);
        assert_eq!(meshed.requests, 34);
        assert_eq!(meshed.server_seen, Some(30));
        // A filter keeps the edges that touch it.
        let f = Resource::parse("deploy/web", None).unwrap();
        assert_eq!(rows(&e, Some(&f)).len(), 1);
        // A service is the callee the requests were sent to, never a caller.
        let svc = Resource::parse("svc/api", Some("demo")).unwrap();
        let r = rows(&e, Some(&svc));
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0].service, "api");
    }

    #[test]
    fn by_pod_names_a_deployments_pods_by_pod() {
        let e = edges_by_pod(&[web(10, 1), api(10, 0)], &[web(40, 5), api(40, 3)]);
        let meshed = e
            .iter()
            .find(|e| e.key.client_id == WEB_ID)
            .expect("meshed edge");
        assert_eq!(meshed.key.src.to_string(), "demo/pod/web-0");
        assert_eq!(meshed.key.dst.to_string(), "demo/pod/api-0");
        let pod = Resource::parse("pod/web-0", Some("demo")).unwrap();
        assert!(pod.matches_src(&meshed.key));
        // By workload, a pod filter matches no Deployment's pod (hence `edges_by_pod`).
        let e = edges(&[web(10, 1)], &[web(40, 5)]);
        assert!(!pod.matches_src(&e[0].key));
    }

    #[test]
    fn a_proxy_read_once_and_an_idle_edge_give_no_row() {
        // `api` appears only in the second reading: no difference to report.
        let e = edges(&[web(10, 1)], &[web(10, 1), api(40, 3)]);
        assert!(rows(&e, None).is_empty(), "{e:#?}");
    }

    #[test]
    fn resources_parse_and_match() {
        let r = Resource::parse("deploy/api", Some("demo")).unwrap();
        let peer = |ns: &str, n: &str| Peer {
            namespace: ns.into(),
            name: n.into(),
        };
        assert!(r.matches(&peer("demo", "deployment/api")));
        assert!(!r.matches(&peer("other", "deployment/api")));
        assert!(!r.matches(&peer("demo", "pod/api")));
        assert!(Resource::parse("ns/demo", None)
            .unwrap()
            .matches(&peer("demo", "pod/x")));
        assert!(Resource::parse("api", None).is_err());
        assert!(Resource::parse("bogus/api", None).is_err());
    }
}
