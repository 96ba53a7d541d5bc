//! TrafficMetrics from scrapes of the proxies' Linkerd-compatible families: the increase of
//! `response_total` (by `classification`) and `response_latency_ms_bucket` over the window, per
//! proxy, summed over the series a resource selects; latency quantiles interpolated from the
//! summed buckets as PromQL's `histogram_quantile` does. Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::promtext::{histogram_quantile, Sample};

/// Responses, labelled `classification` (`success`/`failure`).
pub const RESPONSE_TOTAL: &str = "response_total";
/// Latency histogram buckets (ms), labelled `le`.
pub const LATENCY_BUCKET: &str = "response_latency_ms_bucket";

pub type Labels = BTreeMap<String, String>;

/// A series: its family and labels.
pub type SeriesKey = (String, Labels);

/// One proxy's increase of every series over the window.
pub type Increase = (PodRef, HashMap<SeriesKey, f64>);

/// A meshed pod (the proxy scraped).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// One proxy's series of interest at one scrape: (family, labels) → value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub series: HashMap<SeriesKey, f64>,
}

/// A scrape held more series of interest than the bound.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("more than {0} series of response_total/response_latency_ms_bucket")]
pub struct TooManySeries(pub usize);

impl Scrape {
    /// Keeps the samples TrafficMetrics uses; refuses more than `max_series` of them.
    pub fn from_samples(
        samples: impl IntoIterator<Item = Sample>,
        max_series: usize,
    ) -> Result<Scrape, TooManySeries> {
        let mut series = HashMap::new();
        for s in samples {
            if s.name != RESPONSE_TOTAL && s.name != LATENCY_BUCKET {
                continue;
            }
            if !s.value.is_finite() || s.value < 0.0 {
                continue;
            }
            if series.len() >= max_series {
                return Err(TooManySeries(max_series));
            }
            series.insert((s.name, s.labels), s.value);
        }
        Ok(Scrape { series })
    }
}

/// The increase of every series between `base` and `latest` of the same proxy. A series absent
/// from `base` was zero then (Prometheus counters appear at their first increment); a value
/// lower than the base's is a counter reset (the proxy restarted), counted from zero.
pub fn increase(base: &Scrape, latest: &Scrape) -> HashMap<SeriesKey, f64> {
    latest
        .series
        .iter()
        .filter_map(|(key, &now)| {
            let then = base.series.get(key).copied().unwrap_or(0.0);
            let d = if now >= then { now - then } else { now };
            (d > 0.0).then(|| (key.clone(), d))
        })
        .collect()
}

/// The scrapes of every proxy within the window, and one before it (the base of the increase).
#[derive(Debug, Default)]
pub struct History {
    proxies: HashMap<PodRef, VecDeque<(Instant, Arc<Scrape>)>>,
}

impl History {
    pub fn record(&mut self, pod: PodRef, at: Instant, scrape: Scrape) {
        self.proxies
            .entry(pod)
            .or_default()
            .push_back((at, Arc::new(scrape)));
    }

    /// Drops proxies not in `keep` or not scraped successfully within the window, and samples
    /// older than the one that starts the window.
    pub fn prune(&mut self, now: Instant, window: Duration, keep: impl Fn(&PodRef) -> bool) {
        let start = now.checked_sub(window);
        self.proxies.retain(|pod, samples| {
            if !keep(pod) {
                return false;
            }
            let Some(start) = start else { return true };
            while samples.len() > 1 && samples.get(1).is_some_and(|(at, _)| *at <= start) {
                samples.pop_front();
            }
            samples.back().is_some_and(|(at, _)| *at > start)
        });
    }

    /// Every proxy's increase over the window (proxies with a single scrape have none yet).
    pub fn increases(&self) -> Vec<Increase> {
        self.proxies
            .iter()
            .filter_map(|(pod, samples)| {
                let (base, latest) = (samples.front()?, samples.back()?);
                (samples.len() > 1).then(|| (pod.clone(), increase(&base.1, &latest.1)))
            })
            .collect()
    }

    /// The proxies scraped.
    pub fn pods(&self) -> Vec<PodRef> {
        let mut pods: Vec<PodRef> = self.proxies.keys().cloned().collect();
        pods.sort();
        pods
    }

    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }
}

/// Which series a resource's figures sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Requests to the pod (its proxy's inbound side).
    Pod { namespace: String, name: String },
    /// Requests to the Deployment's pods (inbound, proxies labelled `deployment`).
    Deployment { namespace: String, name: String },
    /// Requests to the namespace's pods (inbound).
    Namespace { name: String },
    /// Requests meshed clients sent to the Service (outbound, `dst_service`).
    Service { namespace: String, name: String },
    /// Requests meshed clients addressed to a TrafficSplit's apex that went to one backend
    /// (outbound, `authority` = `<apex>.<namespace>`, `dst_service` = the backend).
    Backend {
        namespace: String,
        apex: String,
        backend: String,
    },
}

fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).map(String::as_str).unwrap_or("")
}

fn inbound(labels: &Labels) -> bool {
    label(labels, "direction") == "inbound"
}

fn outbound(labels: &Labels) -> bool {
    label(labels, "direction") == "outbound"
}

impl Selector {
    /// Whether the series `labels` of `pod`'s proxy counts for this resource.
    pub fn selects(&self, pod: &PodRef, labels: &Labels) -> bool {
        match self {
            Selector::Pod { namespace, name } => {
                inbound(labels) && pod.namespace == *namespace && pod.name == *name
            }
            Selector::Deployment { namespace, name } => {
                inbound(labels)
                    && pod.namespace == *namespace
                    && label(labels, "deployment") == name
            }
            Selector::Namespace { name } => inbound(labels) && pod.namespace == *name,
            Selector::Service { namespace, name } => {
                outbound(labels)
                    && label(labels, "dst_namespace") == namespace
                    && label(labels, "dst_service") == name
            }
            Selector::Backend {
                namespace,
                apex,
                backend,
            } => {
                outbound(labels)
                    && label(labels, "dst_namespace") == namespace
                    && label(labels, "dst_service") == backend
                    && label(labels, "authority") == format!("{apex}.{namespace}")
            }
        }
    }
}

/// Summed figures of a set of series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub success: f64,
    pub failure: f64,
    /// Cumulative latency buckets: `le` (ms, as exposed) → count.
    buckets: BTreeMap<String, f64>,
}

impl Stats {
    pub fn add(&mut self, family: &str, labels: &Labels, value: f64) {
        if family == RESPONSE_TOTAL {
            match label(labels, "classification") {
                "success" => self.success += value,
                "failure" => self.failure += value,
                _ => {}
            }
        } else if family == LATENCY_BUCKET {
            if let Some(le) = labels.get("le") {
                *self.buckets.entry(le.clone()).or_default() += value;
            }
        }
    }

    /// The `q` latency quantile in milliseconds; `None` without requests.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        let buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .filter_map(|(le, n)| {
                let bound = match le.as_str() {
                    "+Inf" | "Inf" | "inf" => f64::INFINITY,
                    v => v.parse().ok()?,
                };
                Some((bound, *n))
            })
            .collect();
        histogram_quantile(q, &buckets)
    }
}

/// The figures of one resource over the window.
pub fn stats(increases: &[Increase], sel: &Selector) -> Stats {
    let mut out = Stats::default();
    for (pod, series) in increases {
        for ((family, labels), v) in series {
            if sel.selects(pod, labels) {
                out.add(family, labels, *v);
            }
        }
    }
    out
}

/// Kinds of workload an edge connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    Pod,
    Deployment,
}

/// Which way an edge goes, seen from the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// The resource called the peer.
    To,
    /// The peer called the resource.
    From,
}

/// An edge's key: its direction, and the peer's namespace, kind (`Pod` or `Deployment`) and
/// name.
pub type EdgeKey = (Direction, String, &'static str, String);

/// The edges of a pod or Deployment, both measured by the client's proxy (outbound series with
/// the `dst_pod`/`dst_deployment` labels): requests it sent (`To`, grouped by destination) and
/// requests meshed clients sent to it (`From`, grouped by the client). A Deployment's peer is
/// named by its Deployment, else (a bare pod, a StatefulSet's pod, ...) by its pod, so a
/// Deployment calling a pod that no Deployment owns still has the edge.
pub fn edges(
    increases: &[Increase],
    kind: EdgeKind,
    namespace: &str,
    name: &str,
) -> BTreeMap<EdgeKey, Stats> {
    // The peer's (kind, name): by Deployment when asked and known, else by pod.
    let peer = |deployment: &str, pod: &str| -> Option<(&'static str, String)> {
        if kind == EdgeKind::Deployment && !deployment.is_empty() {
            Some(("Deployment", deployment.to_owned()))
        } else if !pod.is_empty() {
            Some(("Pod", pod.to_owned()))
        } else {
            None
        }
    };
    let mut out: BTreeMap<EdgeKey, Stats> = BTreeMap::new();
    for (pod, series) in increases {
        for ((family, labels), v) in series {
            if !outbound(labels) {
                continue;
            }
            let dst_ns = label(labels, "dst_namespace");
            let (client, dst) = match kind {
                EdgeKind::Pod => (pod.name.as_str(), label(labels, "dst_pod")),
                EdgeKind::Deployment => {
                    (label(labels, "deployment"), label(labels, "dst_deployment"))
                }
            };
            if pod.namespace == namespace && client == name {
                if let Some((k, n)) =
                    peer(label(labels, "dst_deployment"), label(labels, "dst_pod"))
                {
                    out.entry((Direction::To, dst_ns.to_owned(), k, n))
                        .or_default()
                        .add(family, labels, *v);
                }
            }
            if dst_ns == namespace && dst == name {
                if let Some((k, n)) = peer(label(labels, "deployment"), &pod.name) {
                    out.entry((Direction::From, pod.namespace.clone(), k, n))
                        .or_default()
                        .add(family, labels, *v);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trafficmetrics::promtext::parse;

    fn scrape(text: &str) -> Scrape {
        Scrape::from_samples(parse(text), 1000).unwrap()
    }

    fn pod(ns: &str, name: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    const CLIENT_BEFORE: &str = r#"
# TYPE response_total counter
response_total{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",dst_pod="web-v1-abc",dst_deployment="web-v1",deployment="client",classification="success",status_code="200"} 10
response_total{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v2",dst_pod="web-v2-def",dst_deployment="web-v2",deployment="client",classification="failure",status_code="500"} 4
response_latency_ms_bucket{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",deployment="client",le="10"} 10
response_latency_ms_bucket{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",deployment="client",le="20"} 10
response_latency_ms_bucket{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",deployment="client",le="+Inf"} 10
weft_proxy_other_total 99
"#;

    const CLIENT_AFTER: &str = r#"
response_total{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",dst_pod="web-v1-abc",dst_deployment="web-v1",deployment="client",classification="success",status_code="200"} 70
response_total{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v2",dst_pod="web-v2-def",dst_deployment="web-v2",deployment="client",classification="failure",status_code="500"} 24
response_total{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v2",dst_pod="web-v2-def",dst_deployment="web-v2",deployment="client",classification="success",status_code="404"} 3
response_total{direction="outbound",authority="db.shop",dst_namespace="shop",dst_service="db",deployment="client",classification="success",status_code="200"} 5
response_latency_ms_bucket{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",deployment="client",le="10"} 40
response_latency_ms_bucket{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",deployment="client",le="20"} 70
response_latency_ms_bucket{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",deployment="client",le="+Inf"} 70
"#;

    #[test]
    fn backend_counts_are_the_increase_over_the_window() {
        let inc = vec![(
            pod("shop", "client-1"),
            increase(&scrape(CLIENT_BEFORE), &scrape(CLIENT_AFTER)),
        )];
        let v1 = stats(
            &inc,
            &Selector::Backend {
                namespace: "shop".into(),
                apex: "web".into(),
                backend: "web-v1".into(),
            },
        );
        assert_eq!((v1.success, v1.failure), (60.0, 0.0));
        let v2 = stats(
            &inc,
            &Selector::Backend {
                namespace: "shop".into(),
                apex: "web".into(),
                backend: "web-v2".into(),
            },
        );
        // The 404s appeared after the base scrape: all three counted; 4xx are successes.
        assert_eq!((v2.success, v2.failure), (3.0, 20.0));
        // Requests to db are not the split's.
        let db = stats(
            &inc,
            &Selector::Backend {
                namespace: "shop".into(),
                apex: "web".into(),
                backend: "db".into(),
            },
        );
        assert_eq!((db.success, db.failure), (0.0, 0.0));
        let svc = stats(
            &inc,
            &Selector::Service {
                namespace: "shop".into(),
                name: "db".into(),
            },
        );
        assert_eq!(svc.success, 5.0);
    }

    #[test]
    fn quantiles_come_from_the_bucket_increase() {
        let inc = vec![(
            pod("shop", "client-1"),
            increase(&scrape(CLIENT_BEFORE), &scrape(CLIENT_AFTER)),
        )];
        let v1 = stats(
            &inc,
            &Selector::Backend {
                namespace: "shop".into(),
                apex: "web".into(),
                backend: "web-v1".into(),
            },
        );
        // Increase: 30 in (0, 10], 30 in (10, 20]. p50 = rank 30 → 10 ms; p90 = rank 54 →
        // 10 + 10 * 24/30 = 18 ms; p99 = rank 59.4 → 10 + 10 * 29.4/30 = 19.8 ms.
        assert_eq!(v1.latency_ms(0.5), Some(10.0));
        assert!((v1.latency_ms(0.9).unwrap() - 18.0).abs() < 1e-9);
        assert!((v1.latency_ms(0.99).unwrap() - 19.8).abs() < 1e-9);
        assert_eq!(Stats::default().latency_ms(0.5), None);
    }

    #[test]
    fn a_counter_reset_counts_from_zero() {
        let before = scrape(r#"response_total{direction="inbound",classification="success"} 100"#);
        let after = scrape(r#"response_total{direction="inbound",classification="success"} 7"#);
        let inc = vec![(pod("a", "p"), increase(&before, &after))];
        let s = stats(
            &inc,
            &Selector::Pod {
                namespace: "a".into(),
                name: "p".into(),
            },
        );
        assert_eq!(s.success, 7.0);
    }

    #[test]
    fn inbound_selectors_use_the_scraped_pod_and_its_workload_label() {
        let before = scrape("");
        let after = scrape(
            r#"response_total{direction="inbound",deployment="web",classification="success"} 8
response_total{direction="inbound",deployment="web",classification="failure"} 2
response_total{direction="outbound",deployment="web",dst_namespace="a",dst_service="x",classification="failure"} 50"#,
        );
        let inc = vec![
            (pod("a", "web-1"), increase(&before, &after)),
            (pod("b", "web-1"), increase(&before, &after)),
        ];
        let p = stats(
            &inc,
            &Selector::Pod {
                namespace: "a".into(),
                name: "web-1".into(),
            },
        );
        assert_eq!((p.success, p.failure), (8.0, 2.0));
        let d = stats(
            &inc,
            &Selector::Deployment {
                namespace: "a".into(),
                name: "web".into(),
            },
        );
        assert_eq!((d.success, d.failure), (8.0, 2.0));
        let n = stats(&inc, &Selector::Namespace { name: "b".into() });
        assert_eq!((n.success, n.failure), (8.0, 2.0));
    }

    #[test]
    fn edges_are_grouped_by_peer_both_ways() {
        let inc = vec![(
            pod("shop", "client-1"),
            increase(&scrape(CLIENT_BEFORE), &scrape(CLIENT_AFTER)),
        )];
        let to = edges(&inc, EdgeKind::Pod, "shop", "client-1");
        let keys: Vec<_> = to.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                (
                    Direction::To,
                    "shop".to_string(),
                    "Pod",
                    "web-v1-abc".to_string()
                ),
                (
                    Direction::To,
                    "shop".to_string(),
                    "Pod",
                    "web-v2-def".to_string()
                ),
            ],
            "db has no dst_pod (not meshed): no edge"
        );
        let from = edges(&inc, EdgeKind::Deployment, "shop", "web-v2");
        let s = &from[&(
            Direction::From,
            "shop".to_string(),
            "Deployment",
            "client".to_string(),
        )];
        assert_eq!((s.success, s.failure), (3.0, 20.0));
        // A Deployment's peer that no Deployment owns is named by its pod.
        let bare = "response_total{direction=\"outbound\",authority=\"db.shop\",dst_namespace=\"shop\",dst_service=\"db\",dst_pod=\"db-0\",dst_statefulset=\"db\",deployment=\"client\",classification=\"success\",status_code=\"200\"}";
        let inc = vec![(
            pod("shop", "client-1"),
            increase(
                &scrape(&format!("{bare} 1\n")),
                &scrape(&format!("{bare} 6\n")),
            ),
        )];
        let to = edges(&inc, EdgeKind::Deployment, "shop", "client");
        let s = &to[&(Direction::To, "shop".to_string(), "Pod", "db-0".to_string())];
        assert_eq!(s.success, 5.0);
        // A pod that is no Deployment's is never the Deployment of the same name.
        assert!(edges(&inc, EdgeKind::Deployment, "shop", "db-0").is_empty());
    }

    #[test]
    fn history_keeps_one_scrape_before_the_window_and_drops_stale_proxies() {
        let t0 = Instant::now();
        let w = Duration::from_secs(30);
        let mut h = History::default();
        let s = |n: u32| {
            scrape(&format!(
                r#"response_total{{direction="inbound",classification="success"}} {n}"#
            ))
        };
        h.record(pod("a", "p"), t0, s(1));
        h.record(pod("a", "p"), t0 + Duration::from_secs(10), s(5));
        h.record(pod("a", "p"), t0 + Duration::from_secs(40), s(9));
        h.record(pod("a", "q"), t0, s(1));
        h.prune(t0 + Duration::from_secs(45), w, |_| true);
        // Window starts at 15 s: the 10 s scrape is its base, the 0 s one is gone; q's last
        // scrape is older than the window: dropped.
        assert_eq!(h.pods(), vec![pod("a", "p")]);
        let inc = h.increases();
        let total = stats(&inc, &Selector::Namespace { name: "a".into() });
        assert_eq!(total.success, 4.0);
        h.prune(t0 + Duration::from_secs(45), w, |p| p.name != "p");
        assert!(h.is_empty());
    }

    #[test]
    fn too_many_series_are_refused() {
        let text = (0..5)
            .map(|i| format!("response_total{{direction=\"inbound\",x=\"{i}\"}} 1\n"))
            .collect::<String>();
        assert_eq!(Scrape::from_samples(parse(&text), 4), Err(TooManySeries(4)));
    }
}
