//! Gateway API mesh conformance (GAMMA), ported from upstream's `conformance/tests/mesh/`
//! (kubernetes-sigs/gateway-api v1.5.1) onto the real API server: weft installed with the Helm
//! chart, the operator as a pod, pods injected by the webhook, proxies in network namespaces
//! with iptables redirection, and the client inside a meshed pod (the `echo-v1` pod, as upstream's
//! `echo.ConnectToApp(MeshAppEchoV1)`). Each upstream test keeps its name, manifest and
//! assertions: `MeshBasic`, `MeshHTTPRouteSimpleSameNamespace`, `MeshHTTPRouteMatching`,
//! `MeshHTTPRouteWeight` (500 requests, each backend within ±0.05 of its share, up to 10 tries
//! as upstream's `weight.MaxTestRetries`) and `MeshTrafficSplit`, run in that order on one
//! cluster (setting one up costs more than all five tests).
//!
//! Differences from upstream, forced by the test cluster (docs/gateway-api.md):
//! * upstream's echo Deployments are single Pods with the same labels, running weft's test app
//!   (which answers `<APP_NAME> <APP_VERSION>`: `echo v1`, `echo v2`) instead of the echo image;
//!   the Services are upstream's, verbatim;
//! * the client names the Service `echo.gateway-conformance-mesh` (the pods' `/etc/hosts` has no
//!   cluster DNS search path for the bare `echo`); routing is by the Service's cluster IP
//!   either way;
//! * each test also checks the route's `status.parents[]` (controller `weft.io/mesh-controller`,
//!   `Accepted` and `ResolvedRefs` True for the route's generation), as upstream's suite does
//!   before running a test's requests.
//!
//! Needs what `kube_mesh` needs; skips loudly otherwise (fails in CI). Run under
//! `flock /tmp/weft-kube-e2e.lock`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_e2e::apply;
use weft_e2e::cluster::repo_root;
use weft_e2e::harness::{eventually, kube_env, KubeEnv};

const TEST: &str = "gamma_mesh";
const NS: &str = "gateway-conformance-mesh";
const HOST: &str = "echo.gateway-conformance-mesh";

/// Upstream's `conformance/mesh/manifests.yaml` Services (v1.5.1), verbatim.
fn services() -> Vec<Value> {
    let svc = |name: &str, selector: Value| {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector, "ports": [
                {"name": "http", "port": 80, "appProtocol": "http", "targetPort": 8080},
                {"name": "http-alt", "port": 8080, "appProtocol": "http"},
                {"name": "https", "port": 443, "targetPort": 8443},
                {"name": "tcp", "port": 9090},
                {"name": "grpc", "port": 7070, "appProtocol": "grpc"}]}})
    };
    vec![
        svc("echo-v1", json!({"app": "echo", "version": "v1"})),
        svc("echo-v2", json!({"app": "echo", "version": "v2"})),
        svc("echo", json!({"app": "echo"})),
    ]
}

/// One upstream test manifest (`conformance/tests/mesh/<file>`, v1.5.1), verbatim.
fn manifest(file: &str) -> &'static str {
    match file {
        "httproute-simple-same-namespace.yaml" => {
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: gateway-conformance-mesh-test
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - backendRefs:
    - name: echo-v1
      port: 8080
"#
        }
        "httproute-matching.yaml" => {
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-matching
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /
    - headers:
      - name: version
        value: one
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /v2
    - headers:
      - name: version
        value: two
    backendRefs:
    - name: echo-v2
      port: 8080
"#
        }
        "httproute-weight.yaml" => {
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-weighted-backends
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - backendRefs:
    - name: echo-v1
      port: 8080
      weight: 70
    - name: echo-v2
      port: 8080
      weight: 30
"#
        }
        "mesh-split.yaml" => {
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-split
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
  rules:
  - matches:
    - path:
        type: Exact
        value: /v1
    backendRefs:
    - name: echo-v1
      port: 80
  - matches:
    - path:
        type: Exact
        value: /v2
    backendRefs:
    - name: echo-v2
      port: 80
"#
        }
        other => panic!("no manifest {other}"),
    }
}

/// An upstream `http.ExpectedResponse`: a request from the client pod and what must answer.
#[derive(Clone, Debug)]
struct Expected {
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    /// `echo-v1` / `echo-v2`; `None`: any backend.
    backend: Option<&'static str>,
}

const fn expect(path: &'static str, backend: Option<&'static str>) -> Expected {
    Expected {
        path,
        headers: &[],
        status: 200,
        backend,
    }
}

/// `n` GET requests from the `echo-v1` pod (through its proxy) to `echo`: one line per request,
/// `<body> <status>` (`echo v1 200`), `fail` when curl could not complete it.
async fn requests(env: &KubeEnv, n: u32, path: &str, headers: &[(&str, &str)]) -> Vec<String> {
    let h: String = headers
        .iter()
        .map(|(k, v)| format!(" -H '{k}: {v}'"))
        .collect();
    let script = format!(
        "for i in $(seq {n}); do (curl -s --max-time 5{h} -w ' %{{http_code}}' http://{HOST}{path} || echo fail) | tr -d '\\n'; echo; done"
    );
    let out = env.exec(NS, "echo-v1", None, &["sh", "-c", &script]).await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The backend that answered a `<body> <status>` line (`echo v1 200` → `echo-v1`).
fn backend_of(line: &str) -> Option<&'static str> {
    if line.starts_with("echo v1") {
        Some("echo-v1")
    } else if line.starts_with("echo v2") {
        Some("echo-v2")
    } else {
        None
    }
}

fn satisfies(line: &str, e: &Expected) -> bool {
    line.ends_with(&format!(" {}", e.status))
        && e.backend.is_none_or(|b| backend_of(line) == Some(b))
}

/// Upstream's `MakeRequestAndExpectEventuallyConsistentResponse`: the expectation holds for
/// three requests in a row, within a minute (config propagation).
async fn expect_eventually(env: &KubeEnv, test: &str, e: &Expected) {
    eventually(
        &format!("{test}: {e:?}"),
        Duration::from_secs(60),
        || requests(env, 3, e.path, e.headers),
        |lines: &Vec<String>| lines.len() == 3 && lines.iter().all(|l| satisfies(l, e)),
    )
    .await;
}

/// The route's `status.parents[]` says weft accepted it and resolved its references for its
/// current generation (what Flagger waits for before moving a canary).
async fn expect_accepted(env: &KubeEnv, test: &str, name: &str) {
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        env.client.clone(),
        NS,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
        ),
    );
    eventually(
        &format!("{test}: HTTPRoute {name} Accepted and ResolvedRefs by weft"),
        Duration::from_secs(60),
        || async {
            let o = api.get(name).await.ok()?;
            let generation = o.metadata.generation?;
            let parents = o.data.pointer("/status/parents")?.as_array()?.clone();
            Some((generation, parents))
        },
        |got: &Option<(i64, Vec<Value>)>| {
            let Some((generation, parents)) = got else {
                return false;
            };
            parents.len() == 1
                && parents[0]["controllerName"] == "weft.io/mesh-controller"
                && parents[0]["parentRef"]["name"] == "echo"
                && ["Accepted", "ResolvedRefs"].iter().all(|t| {
                    parents[0]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| {
                            c["type"] == *t
                                && c["status"] == "True"
                                && c["observedGeneration"] == *generation
                                && c["lastTransitionTime"].is_string()
                        })
                })
        },
    )
    .await;
}

async fn apply_manifest(env: &KubeEnv, file: &str) -> String {
    let objs = apply::apply_yaml(&env.client, manifest(file))
        .await
        .unwrap_or_else(|e| panic!("applying {file}: {e}"));
    objs[0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn delete_route(env: &KubeEnv, name: &str) {
    apply::delete(
        &env.client,
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        Some(NS),
        name,
    )
    .await
    .unwrap_or_else(|e| panic!("deleting HTTPRoute {name}: {e}"));
}

/// Shares of each backend over `lines`.
fn share(lines: &[String], backend: &str) -> f64 {
    let hits = lines
        .iter()
        .filter(|l| backend_of(l) == Some(backend))
        .count();
    hits as f64 / lines.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gamma_mesh_conformance() {
    let Some(env) = kube_env(
        TEST,
        &["weft-proxy", "weft-proxy-init", "weft-operator"],
        Path::new(env!("CARGO_BIN_EXE_weft-test-app")),
    )
    .await
    else {
        return;
    };
    if !env.helm_ready(TEST) {
        return;
    }
    // The Gateway API CRD first (as a cluster has it before any mesh is installed): the
    // operator watches HTTPRoutes when they are served at its start.
    let crd = std::fs::read_to_string(
        repo_root().join("crds/gateway-api/gateway.networking.k8s.io_httproutes.yaml"),
    )
    .expect("vendored HTTPRoute CRD");
    apply::apply_yaml(&env.client, &crd)
        .await
        .unwrap_or_else(|e| panic!("installing the HTTPRoute CRD: {e}"));
    let crds: kube::Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = kube::Api::all(env.client.clone());
    eventually(
        "HTTPRoute CRD Established",
        Duration::from_secs(30),
        || async {
            crds.get("httproutes.gateway.networking.k8s.io")
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        },
        |ok: &bool| *ok,
    )
    .await;

    let out = env.helm(&["install", "--namespace", "weft-system", "--name", "weft"]);
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let operator_pod = loop {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(env.client.clone(), "weft-system");
        let list = pods.list(&Default::default()).await.unwrap();
        if let Some(p) = list.items.first().and_then(|p| p.metadata.name.clone()) {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "no operator pod");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    env.wait_ready("weft-system", &operator_pod, Duration::from_secs(90))
        .await;

    env.namespace(NS, json!({"weft.io/inject": "enabled"}))
        .await;
    for s in services() {
        env.create(s).await;
    }
    for (name, version) in [("echo-v1", "v1"), ("echo-v2", "v2")] {
        env.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"app": "echo", "version": version}},
            "spec": {"containers": [{
                "name": "echo", "image": "weft-test-app",
                "env": [{"name": "APP_NAME", "value": "echo"},
                        {"name": "APP_VERSION", "value": version}],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}
        }))
        .await;
    }
    for p in ["echo-v1", "echo-v2"] {
        let pod = env.wait_ready(NS, p, Duration::from_secs(90)).await;
        assert!(
            pod.spec
                .unwrap_or_default()
                .containers
                .iter()
                .any(|c| c.name == "weft-proxy"),
            "{p} not injected"
        );
    }

    // MeshBasic: reachability with no configuration (either backend).
    expect_eventually(&env, "MeshBasic", &expect("/", None)).await;
    // Both versions answer for the plain Service before any route, so that "only echo-v1"
    // below can only mean a route is in force.
    eventually(
        "echo serves both versions before any route",
        Duration::from_secs(60),
        || requests(&env, 40, "/", &[]),
        |l: &Vec<String>| share(l, "echo-v1") > 0.0 && share(l, "echo-v2") > 0.0,
    )
    .await;
    eprintln!("MeshBasic: passed");

    // MeshHTTPRouteSimpleSameNamespace.
    let test = "MeshHTTPRouteSimpleSameNamespace";
    let name = apply_manifest(&env, "httproute-simple-same-namespace.yaml").await;
    expect_accepted(&env, test, &name).await;
    expect_eventually(&env, test, &expect("/", Some("echo-v1"))).await;
    let lines = requests(&env, 50, "/", &[]).await;
    assert_eq!(share(&lines, "echo-v1"), 1.0, "{test}: {lines:?}");
    delete_route(&env, &name).await;
    eprintln!("{test}: passed");

    // MeshHTTPRouteMatching.
    let test = "MeshHTTPRouteMatching";
    let name = apply_manifest(&env, "httproute-matching.yaml").await;
    expect_accepted(&env, test, &name).await;
    let cases = [
        expect("/", Some("echo-v1")),
        expect("/example", Some("echo-v1")),
        Expected {
            headers: &[("Version", "one")],
            ..expect("/", Some("echo-v1"))
        },
        expect("/v2", Some("echo-v2")),
        expect("/v2/example", Some("echo-v2")),
        Expected {
            headers: &[("Version", "two")],
            ..expect("/", Some("echo-v2"))
        },
        expect("/v2/", Some("echo-v2")),
        // Not a path segment prefix so should not match /v2.
        expect("/v2example", Some("echo-v1")),
        expect("/foo/v2/example", Some("echo-v1")),
    ];
    for c in &cases {
        expect_eventually(&env, test, c).await;
    }
    delete_route(&env, &name).await;
    eprintln!("{test}: passed");

    // MeshHTTPRouteWeight: 70/30, 500 requests, each share within ±0.05.
    let test = "MeshHTTPRouteWeight";
    let name = apply_manifest(&env, "httproute-weight.yaml").await;
    expect_accepted(&env, test, &name).await;
    expect_eventually(&env, test, &expect("/", None)).await;
    // Wait until the weights are in force (both backends answer; before the route only
    // the plain Service's endpoints did, which also gives both: so wait for the route's
    // config by its status above, then measure).
    let mut last = String::new();
    let mut passed = false;
    for attempt in 1..=10 {
        let mut lines = Vec::new();
        for _ in 0..5 {
            lines.extend(requests(&env, 100, "/", &[]).await);
        }
        let ok200 = lines.iter().filter(|l| l.ends_with(" 200")).count();
        let (v1, v2) = (share(&lines, "echo-v1"), share(&lines, "echo-v2"));
        last = format!(
            "attempt {attempt}: {} responses, {ok200} 200s, echo-v1 {v1:.3} (want 0.7), echo-v2 {v2:.3} (want 0.3)",
            lines.len()
        );
        eprintln!("{test}: {last}");
        if lines.len() == 500
            && ok200 == 500
            && (v1 - 0.7).abs() <= 0.05
            && (v2 - 0.3).abs() <= 0.05
        {
            passed = true;
            break;
        }
    }
    assert!(passed, "{test}: weighted distribution failed; last {last}");
    delete_route(&env, &name).await;
    eprintln!("{test}: passed");

    // MeshTrafficSplit: exact paths to each version (no parentRef port: every HTTP port).
    let test = "MeshTrafficSplit";
    let name = apply_manifest(&env, "mesh-split.yaml").await;
    expect_accepted(&env, test, &name).await;
    expect_eventually(&env, test, &expect("/v1", Some("echo-v1"))).await;
    expect_eventually(&env, test, &expect("/v2", Some("echo-v2"))).await;
    // A request matching no rule is refused, never sent to a backend (the spec says 404;
    // weft-proxy answers 503, see docs/gateway-api.md).
    let lines = requests(&env, 5, "/other", &[]).await;
    assert!(
        lines
            .iter()
            .all(|l| backend_of(l).is_none() && !l.ends_with(" 200")),
        "{test}: /other reached a backend: {lines:?}"
    );
    delete_route(&env, &name).await;
    eprintln!("{test}: passed");

    env.shutdown().await;
}
