//! Issue #19 in a cluster: a proxy moves to another operator replica when its replica dies,
//! without failed requests. One install of the chart with its defaults (two operator replicas,
//! the `weft-discovery` ClusterIP Service in front of them), pods injected by the webhook,
//! proxies capturing their app's traffic (as `kube_mesh`):
//!
//! - the replica the client's proxy is connected to (found by every replica's `/proxies`) is
//!   SIGKILLed and its pod deleted while the client app sends requests: none fails;
//! - the client's proxy shows up on a live replica's `/proxies`;
//! - a TrafficSplit change applied afterwards reaches it (traffic moves to v2).
//!
//! Needs root, the cached control plane (`e2e/scripts/kube-build.sh`), the Helm SDK and the
//! images (`cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins &&
//! scripts/build-images.sh --no-cargo --bins target/debug --out DIR`, then
//! `WEFT_IMAGES_DIR=DIR`); skips loudly otherwise (fails in CI). Run under the shared lock:
//! `flock /tmp/weft-kube-e2e.lock cargo test -p weft-e2e --test kube_failover`.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use weft_e2e::apply;
use weft_e2e::harness::{eventually, http_service, mesh_env, traffic_split, KubeEnv};

const TEST: &str = "kube_failover";
const NS: &str = "fover";
const SYSTEM: &str = "weft-system";
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=weft,app.kubernetes.io/component=operator";
/// How long the client app sends requests across the kill (below `KubeEnv::exec`'s 30 s).
const LOAD_SECONDS: u32 = 20;

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn operator_pods(env: &KubeEnv) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), SYSTEM);
    api.list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Ready operator replicas: (pod name, the pods listed by its `/proxies`).
async fn replicas(env: &KubeEnv) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for p in operator_pods(env).await.iter().filter(|p| is_ready(p)) {
        let (Some(name), Some(ip)) = (
            p.metadata.name.clone(),
            p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        ) else {
            continue;
        };
        let got = tokio::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "3",
                &format!("http://{ip}:9990/proxies"),
            ])
            .output()
            .await;
        let proxies = got
            .ok()
            .and_then(|o| serde_json::from_slice::<Vec<Value>>(&o.stdout).ok())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["pod"].as_str().map(str::to_owned))
            .collect();
        out.push((name, proxies));
    }
    out
}

/// The replica whose `/proxies` lists `pod` (`<ns>/<name>`).
fn replica_of(replicas: &[(String, Vec<String>)], pod: &str) -> Option<String> {
    replicas
        .iter()
        .find(|(_, proxies)| proxies.iter().any(|p| p == pod))
        .map(|(name, _)| name.clone())
}

async fn deploy_app(env: &KubeEnv, name: &str, labels: Value, version: &str) {
    let sa = labels["app"].as_str().unwrap_or(name).to_string();
    let sa_obj = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": sa, "namespace": NS}});
    apply::apply(&env.client, &sa_obj)
        .await
        .unwrap_or_else(|e| panic!("service account {sa}: {e}"));
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"serviceAccountName": sa, "containers": [
            {"name": "app", "image": "weft-test-app",
             "env": [{"name": "APP_NAME", "value": sa}, {"name": "APP_VERSION", "value": version}],
             "ports": [{"containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}
    }))
    .await;
}

fn service(name: &str, selector: Value) -> Value {
    http_service(NS, name, selector)
}

fn split(v1: u32, v2: u32) -> Value {
    traffic_split(NS, "web-canary", "web", &[("web-v1", v1), ("web-v2", v2)])
}

/// One line per request from the client app to `web` (`web v1 200`, or `fail`): `n` requests,
/// or, with `seconds`, requests one after the other for that long.
async fn requests(env: &KubeEnv, n: u32, seconds: Option<u32>) -> Vec<String> {
    let one = format!(
        "(curl -s --max-time 5 -w ' %{{http_code}}' http://web.{NS}.svc.cluster.local/ || echo fail) | tr -d '\\n'; echo"
    );
    let script = match seconds {
        None => format!("for i in $(seq {n}); do {one}; done"),
        Some(s) => format!(
            "end=$(( $(date +%s) + {s} )); while [ $(date +%s) -lt $end ]; do {one}; sleep 0.05; done"
        ),
    };
    let out = env.exec(NS, "client", None, &["sh", "-c", &script]).await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn all_are(lines: &[String], want: &str) -> bool {
    !lines.is_empty() && lines.iter().all(|l| l == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_fails_over_to_another_operator_replica_without_failed_requests() {
    let Some(env) = mesh_env(TEST, Path::new(env!("CARGO_BIN_EXE_weft-test-app"))).await else {
        return;
    };
    env.install_weft().await;
    // The chart's default: two replicas, both serving discovery.
    eventually(
        "two ready operator replicas",
        Duration::from_secs(120),
        || operator_pods(&env),
        |pods: &Vec<Pod>| pods.iter().filter(|p| is_ready(p)).count() == 2,
    )
    .await;

    env.namespace(NS, json!({"weft.io/inject": "enabled"}))
        .await;
    env.create(service("web", json!({"app": "web"}))).await;
    env.create(service("web-v1", json!({"app": "web", "version": "v1"})))
        .await;
    env.create(service("web-v2", json!({"app": "web", "version": "v2"})))
        .await;
    apply::apply(&env.client, &split(100, 0))
        .await
        .unwrap_or_else(|e| panic!("applying the split: {e}"));
    deploy_app(&env, "client", json!({"app": "client"}), "v1").await;
    deploy_app(&env, "web-v1", json!({"app": "web", "version": "v1"}), "v1").await;
    deploy_app(&env, "web-v2", json!({"app": "web", "version": "v2"}), "v2").await;
    for p in ["client", "web-v1", "web-v2"] {
        env.wait_ready(NS, p, Duration::from_secs(120)).await;
    }
    eventually(
        "all traffic to v1 before the kill",
        Duration::from_secs(60),
        || requests(&env, 10, None),
        |l: &Vec<String>| all_are(l, "web v1 200"),
    )
    .await;

    let client = format!("{NS}/client");
    let killed = eventually(
        "the client's proxy on a replica",
        Duration::from_secs(60),
        || async { replica_of(&replicas(&env).await, &client) },
        Option::is_some,
    )
    .await
    .unwrap_or_default();
    eprintln!("{TEST}: client proxy connected to {killed}; killing it");

    let kill = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        env.crash_pod(SYSTEM, &killed).await;
    };
    let (lines, ()) = tokio::join!(requests(&env, 0, Some(LOAD_SECONDS)), kill);
    let failed: Vec<&String> = lines.iter().filter(|l| *l != "web v1 200").collect();
    eprintln!(
        "{TEST}: {} requests across the kill, {} failed",
        lines.len(),
        failed.len()
    );
    assert!(lines.len() >= 20, "too few requests ran: {lines:?}");
    assert!(
        failed.is_empty(),
        "requests failed across the operator kill: {failed:?}\nclient logs:\n{}",
        env.logs(NS, "client")
    );

    let now_on = eventually(
        "the client's proxy on a live replica",
        Duration::from_secs(60),
        || async { replica_of(&replicas(&env).await, &client) },
        |r: &Option<String>| r.as_ref().is_some_and(|r| *r != killed),
    )
    .await
    .unwrap_or_default();
    eprintln!("{TEST}: client proxy now connected to {now_on}");

    // A change applied now reaches the proxy through the replica it moved to.
    apply::apply(&env.client, &split(0, 100))
        .await
        .unwrap_or_else(|e| panic!("applying the split: {e}"));
    eventually(
        "all traffic to v2 after the split change",
        Duration::from_secs(60),
        || requests(&env, 10, None),
        |l: &Vec<String>| all_are(l, "web v2 200"),
    )
    .await;
    env.shutdown().await;
}
