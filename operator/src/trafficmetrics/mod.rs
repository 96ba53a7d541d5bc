//! `metrics.smi-spec.io/v1alpha1` (SMI TrafficMetrics), served through the aggregated API
//! server ([`crate::apiserver`]): TrafficMetrics and TrafficMetricsList for pods, deployments,
//! services, namespaces and trafficsplits (one item per backend, with the `backend` block), and
//! the `edges` subresource of pods and deployments. Figures are the increase over the window of
//! the proxies' `response_total` and `response_latency_ms_bucket`, scraped by [`scrape`].
//! docs/traffic-metrics.md describes the API.

pub mod compute;
pub mod promtext;
pub mod scrape;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{json, Value};

use crate::admin::{json as json_response, Body};
use crate::aggregated::{Caller, GroupHandler, ResponseFuture};
use compute::{Direction, EdgeKind, History, Selector, Stats};
use scrape::{MeshView, MeshViewRx};

pub const GROUP: &str = "metrics.smi-spec.io";
pub const VERSION: &str = "v1alpha1";
const API_VERSION: &str = "metrics.smi-spec.io/v1alpha1";

/// The `metrics.smi-spec.io` group handler.
pub struct TrafficMetricsApi {
    history: Arc<Mutex<History>>,
    view: MeshViewRx,
    window: Duration,
}

impl TrafficMetricsApi {
    pub fn new(history: Arc<Mutex<History>>, view: MeshViewRx, window: Duration) -> Self {
        TrafficMetricsApi {
            history,
            view,
            window,
        }
    }

    /// Answers a GET of `path` (the request path, starting with `/apis/metrics.smi-spec.io`).
    pub fn get(&self, path: &str) -> Response<Body> {
        let rest = path
            .strip_prefix("/apis/")
            .and_then(|p| p.strip_prefix(GROUP))
            .unwrap_or("");
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let view = self.view.borrow().clone();
        let increases = match self.history.lock() {
            Ok(h) => h.increases(),
            Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "history unavailable"),
        };
        let ctx = Ctx {
            view: &view,
            increases: &increases,
            window: self.window,
            now: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        match parts.as_slice() {
            [] => json_response(StatusCode::OK, &api_group()),
            [VERSION] => json_response(StatusCode::OK, &resource_list()),
            [VERSION, "namespaces", ns] => json_response(
                StatusCode::OK,
                &ctx.item(
                    obj("Namespace", None, ns),
                    &Selector::Namespace {
                        name: ns.to_string(),
                    },
                ),
            ),
            [VERSION, kind] => ctx.list(None, kind),
            [VERSION, "namespaces", ns, kind] => ctx.list(Some(ns), kind),
            [VERSION, "namespaces", ns, kind, name] => ctx.one(ns, kind, name),
            [VERSION, "namespaces", ns, kind, name, "edges"] => ctx.edges(ns, kind, name),
            _ => status(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

impl GroupHandler for TrafficMetricsApi {
    fn group(&self) -> &'static str {
        GROUP
    }

    fn handle(&self, req: Request<Incoming>, _caller: Caller) -> ResponseFuture {
        // The API server authorized the caller for this resource before proxying the request.
        let resp = if req.method() == Method::GET {
            self.get(req.uri().path())
        } else {
            status(
                StatusCode::METHOD_NOT_ALLOWED,
                "only get and list are served",
            )
        };
        Box::pin(async move { resp })
    }
}

/// A Kubernetes `Status` error.
pub fn status(code: StatusCode, message: &str) -> Response<Body> {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        _ => "InternalError",
    };
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// The `APIGroup` discovery document.
pub fn api_group() -> Value {
    let gv = json!({"groupVersion": API_VERSION, "version": VERSION});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [gv.clone()],
           "preferredVersion": gv})
}

/// Resources (plural) with the kind of object they name, and whether namespaced.
const RESOURCES: &[(&str, &str, bool)] = &[
    ("pods", "Pod", true),
    ("deployments", "Deployment", true),
    ("services", "Service", true),
    ("trafficsplits", "TrafficSplit", true),
    ("namespaces", "Namespace", false),
];

/// The `APIResourceList` of v1alpha1.
pub fn resource_list() -> Value {
    let mut resources = Vec::new();
    for (plural, _, namespaced) in RESOURCES {
        resources.push(
            json!({"name": plural, "singularName": "", "namespaced": namespaced,
                              "kind": "TrafficMetrics", "verbs": ["get", "list"]}),
        );
        if matches!(*plural, "pods" | "deployments") {
            resources.push(
                json!({"name": format!("{plural}/edges"), "singularName": "",
                                  "namespaced": true, "kind": "TrafficMetricsList",
                                  "verbs": ["get"]}),
            );
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
           "resources": resources})
}

#[derive(Clone, Debug, Serialize)]
struct ObjRef {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
}

fn obj(kind: &'static str, namespace: Option<&str>, name: &str) -> ObjRef {
    ObjRef {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    }
}

/// A latency in ms as a Kubernetes quantity of seconds (`12m` = 12 ms, `12500u` = 12.5 ms).
pub fn seconds_quantity(ms: f64) -> String {
    let us = (ms * 1000.0).round();
    if us % 1000.0 == 0.0 {
        format!("{}m", us / 1000.0)
    } else {
        format!("{us}u")
    }
}

fn metrics(s: &Stats) -> Value {
    let latency = |q: f64, name: &str| {
        json!({"name": name, "unit": "seconds",
               "value": s.latency_ms(q).map(seconds_quantity)})
    };
    json!([
        latency(0.99, "p99_response_latency"),
        latency(0.9, "p90_response_latency"),
        latency(0.5, "p50_response_latency"),
        {"name": "success_count", "value": format!("{}", s.success.round())},
        {"name": "failure_count", "value": format!("{}", s.failure.round())},
    ])
}

type Increases = Vec<compute::Increase>;

struct Ctx<'a> {
    view: &'a MeshView,
    increases: &'a Increases,
    window: Duration,
    now: String,
}

fn kind_of(plural: &str) -> Option<(&'static str, bool)> {
    RESOURCES
        .iter()
        .find(|(p, _, _)| *p == plural)
        .map(|(_, k, n)| (*k, *n))
}

impl Ctx<'_> {
    fn base(&self, resource: &ObjRef) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("kind".into(), json!("TrafficMetrics"));
        m.insert("apiVersion".into(), json!(API_VERSION));
        m.insert(
            "metadata".into(),
            json!({"name": resource.name, "namespace": resource.namespace,
                   "creationTimestamp": self.now}),
        );
        m.insert("timestamp".into(), json!(self.now));
        m.insert(
            "window".into(),
            json!(format!("{}s", self.window.as_secs())),
        );
        m.insert("resource".into(), json!(resource));
        m
    }

    fn item(&self, resource: ObjRef, sel: &Selector) -> Value {
        let mut m = self.base(&resource);
        m.insert("edge".into(), Value::Null);
        m.insert(
            "metrics".into(),
            metrics(&compute::stats(self.increases, sel)),
        );
        Value::Object(m)
    }

    fn list_of(&self, resource: ObjRef, items: Vec<Value>) -> Response<Body> {
        json_response(
            StatusCode::OK,
            &json!({"kind": "TrafficMetricsList", "apiVersion": API_VERSION,
                    "metadata": {}, "resource": resource, "items": items}),
        )
    }

    fn pod_known(&self, ns: &str, name: &str) -> bool {
        self.view
            .pods
            .iter()
            .any(|(p, _)| p.namespace == ns && p.name == name)
    }

    fn selector(&self, kind: &str, ns: &str, name: &str) -> Option<Selector> {
        let (namespace, name) = (ns.to_string(), name.to_string());
        Some(match kind {
            "pods" => Selector::Pod { namespace, name },
            "deployments" => Selector::Deployment { namespace, name },
            "services" => Selector::Service { namespace, name },
            _ => return None,
        })
    }

    fn one(&self, ns: &str, kind: &str, name: &str) -> Response<Body> {
        match kind {
            "trafficsplits" => self.split(ns, name),
            "pods" if !self.pod_known(ns, name) => {
                status(StatusCode::NOT_FOUND, &format!("no meshed pod {ns}/{name}"))
            }
            _ => match (kind_of(kind), self.selector(kind, ns, name)) {
                (Some((k, true)), Some(sel)) => {
                    json_response(StatusCode::OK, &self.item(obj(k, Some(ns), name), &sel))
                }
                _ => status(StatusCode::NOT_FOUND, &format!("no resource {kind}")),
            },
        }
    }

    /// A TrafficSplit: a list with one item per backend.
    fn split(&self, ns: &str, name: &str) -> Response<Body> {
        let Some(split) = self.view.splits.get(&(ns.to_string(), name.to_string())) else {
            return status(
                StatusCode::NOT_FOUND,
                &format!("no TrafficSplit {ns}/{name}"),
            );
        };
        let items = self.split_items(ns, split);
        self.list_of(obj("TrafficSplit", Some(ns), name), items)
    }

    fn split_items(&self, ns: &str, split: &scrape::SplitView) -> Vec<Value> {
        split
            .backends
            .iter()
            .map(|(backend, weight_milli)| {
                let sel = Selector::Backend {
                    namespace: ns.to_string(),
                    apex: split.apex.clone(),
                    backend: backend.clone(),
                };
                let mut v = self.item(obj("Service", Some(ns), backend), &sel);
                if let Value::Object(m) = &mut v {
                    m.insert(
                        "backend".into(),
                        json!({"apex": split.apex, "name": backend,
                               "weight": weight_quantity(*weight_milli)}),
                    );
                }
                v
            })
            .collect()
    }

    fn list(&self, ns: Option<&str>, kind: &str) -> Response<Body> {
        let Some((k, namespaced)) = kind_of(kind) else {
            return status(StatusCode::NOT_FOUND, &format!("no resource {kind}"));
        };
        if ns.is_some() && !namespaced {
            return status(StatusCode::NOT_FOUND, &format!("{kind} is not namespaced"));
        }
        let in_ns = |n: &str| ns.is_none_or(|want| want == n);
        let names: BTreeSet<(String, String)> = match kind {
            "pods" => self
                .view
                .pods
                .iter()
                .filter(|(p, _)| in_ns(&p.namespace))
                .map(|(p, _)| (p.namespace.clone(), p.name.clone()))
                .collect(),
            "namespaces" => self
                .view
                .pods
                .iter()
                .map(|(p, _)| (String::new(), p.namespace.clone()))
                .collect(),
            "trafficsplits" => self
                .view
                .splits
                .keys()
                .filter(|(n, _)| in_ns(n))
                .cloned()
                .collect(),
            _ => {
                let mut seen = BTreeSet::new();
                for (pod, series) in self.increases {
                    for (_, labels) in series.keys() {
                        let get = |l: &str| labels.get(l).cloned().unwrap_or_default();
                        let entry = if kind == "deployments" {
                            (pod.namespace.clone(), get("deployment"))
                        } else if labels.get("direction").map(String::as_str) == Some("outbound") {
                            (get("dst_namespace"), get("dst_service"))
                        } else {
                            continue;
                        };
                        if !entry.0.is_empty() && !entry.1.is_empty() && in_ns(&entry.0) {
                            seen.insert(entry);
                        }
                    }
                }
                seen
            }
        };
        let mut items = Vec::new();
        for (n, name) in &names {
            match kind {
                "namespaces" => items.push(self.item(
                    obj("Namespace", None, name),
                    &Selector::Namespace { name: name.clone() },
                )),
                "trafficsplits" => {
                    if let Some(split) = self.view.splits.get(&(n.clone(), name.clone())) {
                        items.extend(self.split_items(n, split));
                    }
                }
                _ => {
                    if let Some(sel) = self.selector(kind, n, name) {
                        items.push(self.item(obj(k, Some(n), name), &sel));
                    }
                }
            }
        }
        let resource = ObjRef {
            kind: k,
            namespace: ns.map(str::to_owned),
            name: "*".into(),
        };
        self.list_of(resource, items)
    }

    fn edges(&self, ns: &str, kind: &str, name: &str) -> Response<Body> {
        let (edge_kind, k) = match kind {
            "pods" => (EdgeKind::Pod, "Pod"),
            "deployments" => (EdgeKind::Deployment, "Deployment"),
            _ => return status(StatusCode::NOT_FOUND, &format!("no edges for {kind}")),
        };
        let resource = obj(k, Some(ns), name);
        let edges: BTreeMap<_, _> = compute::edges(self.increases, edge_kind, ns, name);
        let items = edges
            .iter()
            .map(|((direction, peer_ns, peer_kind, peer), stats)| {
                let mut m = self.base(&resource);
                m.insert(
                    "edge".into(),
                    json!({"direction": match direction { Direction::To => "to", Direction::From => "from" },
                           "side": "client",
                           "resource": obj(peer_kind, Some(peer_ns), peer)}),
                );
                m.insert("metrics".into(), metrics(stats));
                Value::Object(m)
            })
            .collect();
        self.list_of(resource, items)
    }
}

/// A backend weight (thousandths) as a quantity: `500m`, or `50` when whole.
fn weight_quantity(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        format!("{}", milli / 1000)
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute::{PodRef, Scrape};
    use http_body_util::BodyExt;
    use scrape::SplitView;
    use std::time::Instant;

    fn pod(ns: &str, name: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn scrape(text: &str) -> Scrape {
        Scrape::from_samples(promtext::parse(text), 100).unwrap()
    }

    /// A mesh of a client calling the `web` split (backends web-v1, web-v2), scraped twice.
    fn api() -> TrafficMetricsApi {
        let mut h = History::default();
        let t0 = Instant::now();
        h.record(pod("shop", "client-1"), t0, scrape(""));
        h.record(
            pod("shop", "client-1"),
            t0 + Duration::from_secs(5),
            scrape(
                r#"response_total{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",dst_pod="web-v1-a",deployment="client",classification="success"} 9
response_total{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v2",dst_pod="web-v2-a",deployment="client",classification="failure"} 3
response_latency_ms_bucket{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",le="10"} 9
response_latency_ms_bucket{direction="outbound",authority="web.shop",dst_namespace="shop",dst_service="web-v1",le="+Inf"} 9"#,
            ),
        );
        let view = MeshView {
            pods: vec![(pod("shop", "client-1"), [10, 0, 0, 1].into())],
            splits: BTreeMap::from([(
                ("shop".to_string(), "web".to_string()),
                SplitView {
                    apex: "web".into(),
                    backends: vec![("web-v1".into(), 900), ("web-v2".into(), 100)],
                },
            )]),
        };
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(view));
        TrafficMetricsApi::new(Arc::new(Mutex::new(h)), rx, Duration::from_secs(30))
    }

    async fn get(api: &TrafficMetricsApi, path: &str) -> (StatusCode, Value) {
        let resp = api.get(&format!("/apis/metrics.smi-spec.io{path}"));
        let code = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&body).unwrap())
    }

    fn metric(item: &Value, name: &str) -> Value {
        item["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["value"]
            .clone()
    }

    #[tokio::test]
    async fn a_split_answers_one_item_per_backend_with_its_block() {
        let api = api();
        let (code, v) = get(&api, "/v1alpha1/namespaces/shop/trafficsplits/web").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(v["kind"], "TrafficMetricsList");
        assert_eq!(
            v["resource"],
            json!({"kind": "TrafficSplit", "namespace": "shop", "name": "web"})
        );
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0]["backend"],
            json!({"apex": "web", "name": "web-v1", "weight": "900m"})
        );
        assert_eq!(metric(&items[0], "success_count"), "9");
        assert_eq!(metric(&items[0], "failure_count"), "0");
        assert_eq!(metric(&items[0], "p50_response_latency"), "5m");
        assert_eq!(metric(&items[1], "failure_count"), "3");
        assert_eq!(metric(&items[1], "p99_response_latency"), Value::Null);
        assert_eq!(items[1]["window"], "30s");
        // The namespace's list of splits holds the same items.
        let (_, list) = get(&api, "/v1alpha1/namespaces/shop/trafficsplits").await;
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn unknown_resources_are_not_found() {
        let api = api();
        for path in [
            "/v1alpha1/namespaces/shop/trafficsplits/nope",
            "/v1alpha1/namespaces/shop/pods/not-meshed",
            "/v1alpha1/namespaces/shop/secrets/x",
            "/v1alpha1/namespaces/shop/services/web/edges",
            "/v2/namespaces/shop/pods",
        ] {
            let (code, v) = get(&api, path).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(v["kind"], "Status", "{path}");
        }
        let (code, v) = get(&api, "/v1alpha1").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(v["kind"], "APIResourceList");
        let (_, g) = get(&api, "").await;
        assert_eq!(g["preferredVersion"]["groupVersion"], API_VERSION);
    }

    #[tokio::test]
    async fn pods_services_and_edges() {
        let api = api();
        let (_, pods) = get(&api, "/v1alpha1/namespaces/shop/pods").await;
        assert_eq!(pods["items"][0]["resource"]["name"], "client-1");
        let (_, svcs) = get(&api, "/v1alpha1/services").await;
        let names: Vec<&str> = svcs["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["resource"]["name"].as_str())
            .collect();
        assert_eq!(names, vec!["web-v1", "web-v2"]);
        let (_, edges) = get(&api, "/v1alpha1/namespaces/shop/pods/client-1/edges").await;
        let items = edges["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1]["edge"],
            json!({"direction": "to", "side": "client",
                   "resource": {"kind": "Pod", "namespace": "shop", "name": "web-v2-a"}})
        );
        assert_eq!(metric(&items[1], "failure_count"), "3");
        let (_, ns) = get(&api, "/v1alpha1/namespaces").await;
        assert_eq!(
            ns["items"][0]["resource"],
            json!({"kind": "Namespace", "name": "shop"})
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(seconds_quantity(12.0), "12m");
        assert_eq!(seconds_quantity(12.5), "12500u");
        assert_eq!(weight_quantity(50_000), "50");
        assert_eq!(weight_quantity(500), "500m");
    }
}
