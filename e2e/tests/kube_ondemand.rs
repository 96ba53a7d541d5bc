//! Issue #19 in a cluster: on-demand discovery installed with the chart
//! (`discovery.mode=on-demand`) on a real API server, the operator running as a pod, pods
//! injected by the webhook, proxies capturing their app's traffic with iptables (as
//! `kube_mesh`). One install, these scenarios:
//!
//! - the injector tells proxies to ask on demand, copies the valid entries of a pod's
//!   `weft.io/outbound-services` (an invalid one is dropped, the pod still injected), and a pod
//!   annotated `weft.io/discovery-mode: push-all` keeps getting everything; the chart's
//!   `proxy.http1IdleTimeout` and a pod's `weft.io/http1-idle-timeout` reach the proxies (an
//!   annotation the proxy would refuse is skipped);
//! - pre-subscription: the annotated Service is in the client proxy's `/config` before any
//!   request;
//! - the client app calls a Service by its name (DNS → ClusterIP, captured transparently): the
//!   first request succeeds, and the proxy then holds only the Services it called (plus the
//!   pre-subscribed one), never a Service it did not call;
//! - a meshed pod called by its IP (as through a headless Service): the address resolves to the
//!   pod's endpoint set, the connection is tunnelled over mTLS, so the pod's `deny` policy and
//!   TrafficTarget grant one route and refuse the other;
//! - a Service behind a `deny` policy and a TrafficTarget: the first on-demand request to a route
//!   the caller is not granted answers 403, the granted route 200 (authorization never bypassed);
//! - a ClusterIP that belongs to no Service: the request fails, nothing answers it.
//!
//! Needs root, the cached control plane (`e2e/scripts/kube-build.sh`), the Helm SDK and the
//! images (`cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins &&
//! scripts/build-images.sh --no-cargo --bins target/debug --out DIR`, then
//! `WEFT_IMAGES_DIR=DIR`); skips loudly otherwise (fails in CI).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_e2e::apply;
use weft_e2e::harness::{eventually, http_service, mesh_env, KubeEnv};

const TEST: &str = "kube_ondemand";
const NS: &str = "odns";

async fn deploy_app(env: &KubeEnv, name: &str, annotations: Value) {
    let sa_obj = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": NS}});
    apply::apply(&env.client, &sa_obj)
        .await
        .unwrap_or_else(|e| panic!("service account {name}: {e}"));
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name},
                     "annotations": annotations},
        "spec": {"serviceAccountName": name, "containers": [
            {"name": "app", "image": "weft-test-app",
             "env": [{"name": "APP_NAME", "value": name}, {"name": "APP_VERSION", "value": "v1"}],
             "ports": [{"containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}
    }))
    .await;
}

fn service(name: &str) -> Value {
    http_service(NS, name, json!({"app": name}))
}

/// One request from the client pod's app to `url` (captured by its proxy): `<body> <status>`,
/// or `fail <curl exit>` when no HTTP answer came.
async fn get(env: &KubeEnv, url: &str) -> String {
    let script = format!(
        "out=$(curl -s --max-time 8 -w ' %{{http_code}}' {url}); rc=$?; \
         if [ $rc -ne 0 ]; then echo \"fail $rc\"; else echo \"$out\" | tr -d '\\n'; fi"
    );
    let out = env.exec(NS, "client", None, &["sh", "-c", &script]).await;
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// As [`get`], with curl's total time in seconds (printed for the report, never asserted).
async fn get_timed(env: &KubeEnv, url: &str) -> (String, String) {
    let script = format!(
        "out=$(curl -s --max-time 8 -w ' %{{http_code}} %{{time_total}}' {url}); rc=$?; \
         if [ $rc -ne 0 ]; then echo \"fail $rc\"; else echo \"$out\" | tr -d '\\n'; fi"
    );
    let out = env.exec(NS, "client", None, &["sh", "-c", &script]).await;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match line.rsplit_once(' ') {
        Some((answer, time)) if !line.starts_with("fail") => (answer.to_string(), time.to_string()),
        _ => (line, "-".to_string()),
    }
}

/// A proxy's admin `/config` (read inside its pod: the admin port is not captured on loopback).
async fn proxy_config(env: &KubeEnv, pod: &str) -> Value {
    let out = env
        .exec(
            NS,
            pod,
            None,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "http://127.0.0.1:4191/config",
            ],
        )
        .await;
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// `<name>.<namespace>` of the outbound Services in a proxy's `/config` (of this test's
/// namespace: the operator's own Services are not counted).
async fn services_of(env: &KubeEnv, pod: &str) -> BTreeSet<String> {
    let config = proxy_config(env, pod).await;
    config["config"]["outbound"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["authority"].as_str())
                .filter(|a| a.ends_with(&format!(".{NS}")))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("{n}.{NS}")).collect()
}

/// The value of `name` in the injected proxy container's environment.
fn proxy_env(pod: &k8s_openapi::api::core::v1::Pod, name: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == "weft-proxy")?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_on_demand_installed_transparent_first_request_scoped_config_and_authz() {
    let Some(env) = mesh_env(TEST, Path::new(env!("CARGO_BIN_EXE_weft-test-app"))).await else {
        return;
    };
    env.install_weft_with(&["discovery.mode=on-demand", "proxy.http1IdleTimeout=20m"])
        .await;

    env.namespace(NS, json!({"weft.io/inject": "enabled"}))
        .await;
    for s in ["web", "secret", "other", "pinned"] {
        env.create(service(s)).await;
    }
    // `secret` denies whatever no TrafficTarget grants (from its first request on).
    let policy = format!(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {{name: secret-routes, namespace: {NS}}}
spec:
  matches:
  - name: items
    pathRegex: /items
    methods: [GET]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {{name: client-to-secret, namespace: {NS}}}
spec:
  destination: {{kind: ServiceAccount, name: secret, namespace: {NS}}}
  sources:
  - {{kind: ServiceAccount, name: client, namespace: {NS}}}
  rules:
  - {{kind: HTTPRouteGroup, name: secret-routes, matches: [items]}}
"#
    );
    apply::apply_yaml(&env.client, &policy)
        .await
        .unwrap_or_else(|e| panic!("applying access policy: {e}"));
    deploy_app(&env, "web", json!({"weft.io/http1-idle-timeout": "90s"})).await;
    deploy_app(
        &env,
        "secret",
        json!({"weft.io/default-inbound-policy": "deny"}),
    )
    .await;
    deploy_app(&env, "pinned", json!({})).await;
    // A push-all proxy in the same mesh (the annotation overrides the chart's mode).
    // Its idle timeout is one the proxy would refuse: skipped, the chart's applies.
    deploy_app(
        &env,
        "other",
        json!({"weft.io/discovery-mode": "push-all", "weft.io/http1-idle-timeout": "100ms"}),
    )
    .await;
    // The client pre-subscribes to `pinned`; the invalid entry is dropped, not fatal.
    deploy_app(
        &env,
        "client",
        json!({"weft.io/outbound-services": format!("pinned.{NS}, Not_A.Service")}),
    )
    .await;

    let mut pods = std::collections::BTreeMap::new();
    for p in ["web", "secret", "pinned", "other", "client"] {
        pods.insert(p, env.wait_ready(NS, p, Duration::from_secs(90)).await);
    }
    // What the injector told the proxies.
    let client = &pods["client"];
    assert_eq!(
        proxy_env(client, "WEFT_PROXY_DISCOVERY_MODE").as_deref(),
        Some("on-demand"),
        "the chart's discovery.mode reaches the injected proxy"
    );
    assert_eq!(
        proxy_env(client, "WEFT_PROXY_OUTBOUND_SERVICES"),
        Some(format!("pinned.{NS}"))
    );
    assert_eq!(proxy_env(&pods["other"], "WEFT_PROXY_DISCOVERY_MODE"), None);
    assert_eq!(
        proxy_env(&pods["web"], "WEFT_PROXY_DISCOVERY_MODE").as_deref(),
        Some("on-demand")
    );
    // The HTTP/1 idle timeout: the pod's annotation, else the chart's `proxy.http1IdleTimeout`
    // (the proxies started with them: their pods are ready).
    let idle = |pod: &str| proxy_env(&pods[pod], "WEFT_PROXY_HTTP1_IDLE_TIMEOUT");
    assert_eq!(idle("web").as_deref(), Some("90s"));
    assert_eq!(idle("other").as_deref(), Some("20m"));
    assert_eq!(idle("client").as_deref(), Some("20m"));

    // The push-all proxy holds every Service; the client only the pre-subscribed one, before
    // its app sent anything.
    eventually(
        "the push-all proxy holds every Service",
        Duration::from_secs(60),
        || services_of(&env, "other"),
        |s: &BTreeSet<String>| *s == set(&["other", "pinned", "secret", "web"]),
    )
    .await;
    let before = services_of(&env, "client").await;
    assert_eq!(
        before,
        set(&["pinned"]),
        "pre-subscribed only, before any request: {}",
        proxy_config(&env, "client").await
    );

    // The first request to a Service the proxy never saw, by name (DNS → ClusterIP → iptables →
    // the proxy resolves the address on demand), succeeds.
    let (first, first_time) = get_timed(&env, &format!("http://web.{NS}.svc.cluster.local/")).await;
    assert_eq!(
        first,
        "web v1 200",
        "first on-demand request\nclient logs:\n{}",
        env.logs(NS, "client")
    );
    eprintln!("first on-demand request to web: {first} in {first_time}s");
    let (second, second_time) =
        get_timed(&env, &format!("http://web.{NS}.svc.cluster.local/")).await;
    eprintln!("second request to web: {second} in {second_time}s");
    assert_eq!(services_of(&env, "client").await, set(&["pinned", "web"]));
    // The pre-subscribed one answers too, through the subscription it already has.
    let (pinned, pinned_time) = get_timed(&env, &format!("http://pinned.{NS}/")).await;
    eprintln!("first request to the pre-subscribed pinned: {pinned} in {pinned_time}s");
    assert_eq!(pinned, "pinned v1 200");

    // A meshed pod addressed by its IP (what a headless Service or a StatefulSet pod's name
    // resolves to), before the client's proxy knows anything of `secret`: the operator answers
    // the address with an endpoint set that holds the pod, and the proxy tunnels to it over mTLS
    // with the client's identity, so `secret`'s `deny` policy grants the TrafficTarget's route
    // and refuses the others (a plaintext pass-through would be refused on every route).
    let secret_ip = pods["secret"]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("secret's pod IP");
    let by_ip = format!("http://{secret_ip}:8080");
    let items_by_ip = format!("{by_ip}/items");
    eventually(
        "GET /items on secret's pod IP, tunnelled with the client's identity",
        Duration::from_secs(60),
        || get(&env, &items_by_ip),
        |r: &String| r == "secret v1 200",
    )
    .await;
    let denied_by_ip = get(&env, &format!("{by_ip}/private")).await;
    assert!(
        denied_by_ip.ends_with(" 403"),
        "ungranted route on the pod IP: {denied_by_ip}"
    );
    // The address brought the pod's endpoint set, not the Service's routing.
    assert_eq!(services_of(&env, "client").await, set(&["pinned", "web"]));

    // Authorization is never bypassed: the first request to `secret` by name (a Service the
    // client's proxy does not hold yet) on a route the TrafficTarget does not grant is refused
    // by secret's proxy; the granted route passes.
    let denied = get(&env, &format!("http://secret.{NS}/private")).await;
    assert!(
        denied.ends_with(" 403"),
        "ungranted route through an on-demand caller: {denied}\n{}",
        env.logs(NS, "client")
    );
    let items = format!("http://secret.{NS}/items");
    eventually(
        "GET /items granted to client",
        Duration::from_secs(60),
        || get(&env, &items),
        |r: &String| r == "secret v1 200",
    )
    .await;
    eprintln!("first request to secret on an ungranted route: {denied}");
    let again = get(&env, &format!("http://secret.{NS}/private")).await;
    assert!(again.ends_with(" 403"), "{again}");

    // Only what it called (and the pre-subscribed one); never `other`.
    let config = proxy_config(&env, "client").await;
    assert_eq!(
        services_of(&env, "client").await,
        set(&["pinned", "secret", "web"]),
        "{config}"
    );
    let endpoints: BTreeSet<String> = config["config"]["endpoints"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert!(
        !endpoints.iter().any(|e| e.contains(&format!("other.{NS}"))),
        "endpoints of a Service never called: {endpoints:?}"
    );

    // A ClusterIP no Service has: the request fails, nothing answers it (and the proxy gains no
    // Service from it).
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::all(env.client.clone());
    let used: BTreeSet<String> = services
        .list(&Default::default())
        .await
        .unwrap_or_else(|e| panic!("listing services: {e}"))
        .items
        .into_iter()
        .filter_map(|s| s.spec.and_then(|sp| sp.cluster_ip))
        .collect();
    let free = (1..=250)
        .map(|i| format!("198.19.254.{i}"))
        .find(|ip| !used.contains(ip))
        .unwrap_or_else(|| panic!("no free ClusterIP in {used:?}"));
    let nothing = get(&env, &format!("http://{free}/")).await;
    eprintln!("request to {free} (no Service): {nothing}");
    assert!(
        nothing.starts_with("fail"),
        "a ClusterIP of no Service answered: {nothing}"
    );
    assert_eq!(
        services_of(&env, "client").await,
        set(&["pinned", "secret", "web"])
    );

    env.shutdown().await;
}
