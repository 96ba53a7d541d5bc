//! Issue #13, "mistakes that shift traffic instead of failing closed", on the data plane: the
//! operator's compiler turns manifests with the mistake into the client proxy's config, an
//! outbound proxy serves it on loopback, and real HTTP backends count who answers.
//!
//! Shares are checked with wide statistical bounds (binomial, ≥ 5 standard deviations), never
//! exactly; nothing here measures time.

mod dataplane_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dataplane_support::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_operator::compile::{compile, CompileOptions, ToProto};
use weft_operator::model::manifests::parse_manifests;
use weft_operator::model::{Model, ObjectRef};
use weft_proxy::config::Config;
use weft_proxy::transport::NoIdentity;
use weft_proxy_api::v1;

const N: usize = 400;

/// Two versions of `web` on loopback (answering `v1` / `v2`) and their manifests: pods, the
/// services `web` (root; selects `root_selects`), `web-v1`, `web-v2`, and a meshed client.
struct Mesh {
    manifests: String,
}

async fn mesh(root_selects: &str) -> Mesh {
    let v1 = backend("127.0.0.61:0", "v1", false).await;
    let v2 = backend("127.0.0.62:0", "v2", false).await;
    let pod = |name: &str, version: &str, addr: SocketAddr, meshed: bool| {
        let mesh = if meshed {
            ", weft.io/proxy-version: \"0.1.0\""
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: demo\n  labels: {{app: web, version: {version}{mesh}}}\nspec:\n  serviceAccountName: web\n  containers: [{{name: app, image: app, ports: [{{name: http, containerPort: {}}}]}}]\nstatus:\n  podIP: {}\n  conditions: [{{type: Ready, status: \"True\"}}]\n---\n",
            addr.port(),
            addr.ip()
        )
    };
    let svc = |name: &str, selector: &str, n: u8| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.{n}\n  selector: {{{selector}}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n---\n"
        )
    };
    let client: SocketAddr = ok("127.0.0.60:1".parse());
    let manifests = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n".to_string(),
        pod("web-v1-0", "v1", v1, false),
        pod("web-v2-0", "v2", v2, false),
        pod("client-0", "client", client, true),
        svc("web", root_selects, 10),
        svc("web-v1", "app: web, version: v1", 11),
        svc("web-v2", "app: web, version: v2", 12),
    ]
    .concat();
    Mesh { manifests }
}

/// The client pod's config as the operator compiles it, as proto resources.
fn compiled(manifests: &str) -> BTreeMap<String, v1::Resource> {
    let (objects, _) = ok(parse_manifests(manifests, false));
    let mut model = Model::from_objects(objects);
    model.derive_endpoints_from_pods = true;
    let c = compile(&model, &CompileOptions::default());
    let cfg = c
        .proxy(&ObjectRef::new("demo", "client-0"))
        .unwrap_or_else(|| panic!("no config for the client"));
    cfg.resources()
        .map(|r| (r.name.clone(), r.to_proto()))
        .collect()
}

fn config(resources: &BTreeMap<String, v1::Resource>) -> Arc<Config> {
    Arc::new(ok(Config::from_resources("test", resources)))
}

/// A proxy that does not know `WeightedBackend.unavailable_reason` (it predates the field):
/// the same resources with the field cleared.
fn as_old_proxy_sees_it(
    mut resources: BTreeMap<String, v1::Resource>,
) -> BTreeMap<String, v1::Resource> {
    for r in resources.values_mut() {
        if let Some(v1::resource::Kind::Outbound(o)) = &mut r.kind {
            for b in o
                .ports
                .iter_mut()
                .flat_map(|p| p.routes.iter_mut())
                .flat_map(|r| r.backends.iter_mut())
            {
                b.unavailable_reason.clear();
            }
        }
    }
    resources
}

/// Who answered `N` requests to `web.demo` through the outbound proxy at `proxy`: counts by
/// `x-backend` for 200s, and by `x-weft-error` for 503s.
#[derive(Debug, Default)]
struct Tally {
    ok: BTreeMap<String, usize>,
    unavailable: BTreeMap<String, usize>,
    other: usize,
}

impl Tally {
    fn ok(&self, backend: &str) -> usize {
        self.ok.get(backend).copied().unwrap_or(0)
    }
    fn failed(&self) -> usize {
        self.unavailable.values().sum()
    }
}

async fn tally(proxy: SocketAddr, headers: &[(&str, &str)]) -> Tally {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut t = Tally::default();
    for _ in 0..N {
        let mut b = Request::builder()
            .uri(format!("http://{proxy}/"))
            .header("host", "web.demo");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = ok(b.body(Full::new(Bytes::new())));
        let rsp = ok(ok(tokio::time::timeout(
            Duration::from_secs(20),
            client.request(req),
        )
        .await));
        let status = rsp.status();
        let header = |name: &str| {
            rsp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (backend, error) = (header("x-backend"), header("x-weft-error"));
        let body = ok(rsp.into_body().collect().await).to_bytes();
        match status {
            StatusCode::OK => *t.ok.entry(backend).or_default() += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    String::from_utf8_lossy(&body).contains(&error),
                    "the reason is in the body too"
                );
                *t.unavailable.entry(error).or_default() += 1
            }
            _ => t.other += 1,
        }
    }
    t
}

fn canary(stable: &str) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: canary, namespace: demo}}\nspec:\n  service: web\n  backends:\n  - {{service: {stable}, weight: 90}}\n  - {{service: web-v2, weight: 10}}\n---\n"
    )
}

/// A 90/10 split whose stable backend name has a typo: ~90 % of requests fail with 503 and the
/// reason, ~10 % reach the canary, and none of the 90 % is sent to the canary (before the fix,
/// 100 % went to the canary). The root selects both versions, so nothing may leak to v1 either.
#[tokio::test]
async fn missing_stable_backend_fails_its_share_and_never_reaches_the_canary() {
    let m = mesh("app: web").await;
    let resources = compiled(&(m.manifests.clone() + &canary("web-v1typo")));
    let proxy = start_outbound(config(&resources), Arc::new(NoIdentity)).await;
    let t = tally(proxy.addr, &[]).await;
    let reason = "backend web-v1typo of split demo/canary does not exist";
    assert_eq!(t.other, 0, "{t:?}");
    assert_eq!(
        t.ok("v1"),
        0,
        "nothing falls back to the root's pods: {t:?}"
    );
    assert_eq!(
        t.failed(),
        t.unavailable.get(reason).copied().unwrap_or(0),
        "{t:?}"
    );
    // Expected 360 ± 6 (binomial sd) failed, 40 ± 6 to the canary.
    assert!((320..=395).contains(&t.failed()), "{t:?}");
    assert!((5..=80).contains(&t.ok("v2")), "{t:?}");
    assert_eq!(t.failed() + t.ok("v2"), N);
    proxy.shutdown().await;

    // The control: spelled right, the same split answers everything.
    let resources = compiled(&(m.manifests + &canary("web-v1")));
    let proxy = start_outbound(config(&resources), Arc::new(NoIdentity)).await;
    let t = tally(proxy.addr, &[]).await;
    assert_eq!(t.failed() + t.other, 0, "{t:?}");
    assert!((320..=395).contains(&t.ok("v1")), "{t:?}");
    proxy.shutdown().await;
}

/// An old proxy (one that ignores `unavailable_reason`) given the new operator's config still
/// fails the missing backend's share: the backend names no endpoint set, so it has no endpoints.
#[tokio::test]
async fn proxy_ignoring_the_reason_field_still_fails_closed() {
    let m = mesh("app: web").await;
    let resources = as_old_proxy_sees_it(compiled(&(m.manifests + &canary("web-v1typo"))));
    let proxy = start_outbound(config(&resources), Arc::new(NoIdentity)).await;
    let t = tally(proxy.addr, &[]).await;
    assert_eq!(t.other + t.ok("v1"), 0, "{t:?}");
    assert!((320..=395).contains(&t.failed()), "{t:?}");
    assert!((5..=80).contains(&t.ok("v2")), "{t:?}");
    assert!(
        t.unavailable.keys().all(|k| k.contains("web-v1typo")),
        "{t:?}"
    );
    proxy.shutdown().await;
}

/// An A/B split whose header regex cannot be compiled (invalid, or over the size limit) sends
/// nothing to beta: requests go where they would go without the split (the root selects v1).
/// Before the fix every request went to beta.
#[tokio::test]
async fn ab_split_with_uncompilable_match_sends_nothing_to_beta() {
    let m = mesh("app: web, version: v1").await;
    for regex in ["(on", "a{1000}{1000}"] {
        let ab = format!(
            "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: beta, namespace: demo}}\nspec:\n  matches:\n  - name: beta\n    headers: {{x-beta: '{regex}'}}\n---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: ab, namespace: demo}}\nspec:\n  service: web\n  matches: [{{kind: HTTPRouteGroup, name: beta}}]\n  backends:\n  - {{service: web-v2, weight: 100}}\n---\n"
        );
        let resources = compiled(&(m.manifests.clone() + &ab));
        let proxy = start_outbound(config(&resources), Arc::new(NoIdentity)).await;
        for headers in [&[][..], &[("x-beta", "on")][..], &[("x-beta", "(on")][..]] {
            let t = tally(proxy.addr, headers).await;
            assert_eq!(
                t.ok("v2"),
                0,
                "{regex} {headers:?}: beta got traffic: {t:?}"
            );
            assert_eq!(t.ok("v1"), N, "{regex} {headers:?}: {t:?}");
        }
        proxy.shutdown().await;
    }
}

/// 0/0 weights: requests the split covers fail with 503 and a reason; none is sent to the
/// root service (whose pods include the zero-weight canary).
#[tokio::test]
async fn zero_weights_fail_and_send_nothing_to_the_root() {
    let m = mesh("app: web").await;
    let zero = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: canary, namespace: demo}\nspec:\n  service: web\n  backends:\n  - {service: web-v1, weight: 0}\n  - {service: web-v2, weight: 0}\n---\n";
    let resources = compiled(&(m.manifests + zero));
    let proxy = start_outbound(config(&resources), Arc::new(NoIdentity)).await;
    let t = tally(proxy.addr, &[]).await;
    assert_eq!(t.failed(), N, "{t:?}");
    assert!(
        t.unavailable
            .keys()
            .all(|k| k.contains("split:demo/canary") && k.contains("no backend with weight")),
        "{t:?}"
    );
    proxy.shutdown().await;
}
