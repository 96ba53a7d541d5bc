//! The whole mesh on a real API server: weft installed with the Helm chart (through the Helm
//! SDK), the operator running as a pod, pods injected by the webhook, proxies in network
//! namespaces with iptables redirection. Scenarios: a canary moving 100/0 → 90/10 → 50/50 → 0/100
//! with measured shares; mTLS on the wire (tcpdump); access control (403, then allowed).
//!
//! Needs root, the cached control plane (`e2e/scripts/kube-build.sh`), the Helm SDK and
//! `cargo build -p weft-proxy -p weft-operator --bins`; skips loudly otherwise (fails in CI).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_e2e::apply;
use weft_e2e::cluster::{repo_root, skip};
use weft_e2e::harness::{kube_env, KubeEnv};

const TEST: &str = "kube_mesh";
const NS: &str = "shop";

fn helm(env: &KubeEnv, args: &[&str]) -> std::process::Output {
    let kubeconfig = env.cluster.kubeconfig.display().to_string();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(repo_root().join("e2e/scripts/helm.py"))
        .args(args)
        .args(["--kubeconfig", &kubeconfig]);
    cmd.output().unwrap_or_else(|e| panic!("helm.py: {e}"))
}

async fn deploy_app(env: &KubeEnv, name: &str, sa: &str, labels: Value, app_env: Value) {
    let sa_obj = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": sa, "namespace": NS}});
    apply::apply(&env.client, &sa_obj)
        .await
        .unwrap_or_else(|e| panic!("service account {sa}: {e}"));
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        // The kubelet's probes are plain HTTP from the node: once a TrafficTarget names the
        // pod's ServiceAccount, the inbound proxy refuses them (403). Until the operator
        // authorizes probe routes itself, probes use a port the proxy does not intercept.
        "metadata": {"name": name, "namespace": NS, "labels": labels,
                     "annotations": {"weft.io/skip-inbound-ports": "8081"}},
        "spec": {"serviceAccountName": sa, "containers": [
            {"name": "app", "image": "weft-test-app", "env": app_env,
             "ports": [{"containerPort": 8080}]},
            {"name": "health", "image": "weft-test-app",
             "args": ["http", "--listen", "0.0.0.0:8081", "--name", "health"],
             "readinessProbe": {"httpGet": {"path": "/", "port": 8081}}}]}
    }))
    .await;
}

fn service(name: &str, selector: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn split(v1: u32, v2: u32) -> Value {
    json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "web-canary", "namespace": NS},
        "spec": {"service": "web", "backends": [
            {"service": "web-v1", "weight": v1}, {"service": "web-v2", "weight": v2}]}})
}

/// `n` requests from the client pod's app (redirected through its proxy); the bodies.
async fn requests(env: &KubeEnv, n: u32, path: &str) -> Vec<String> {
    requests_with(env, n, path, "").await
}

/// As [`requests`], with extra curl arguments (e.g. `-H 'x-beta: true'`).
async fn requests_with(env: &KubeEnv, n: u32, path: &str, curl_args: &str) -> Vec<String> {
    let script = format!(
        "for i in $(seq {n}); do (curl -s --max-time 5 {curl_args} -w ' %{{http_code}}' http://web.{NS}.svc.cluster.local{path} || echo fail) | tr -d '\\n'; echo; done"
    );
    let out = env.exec(NS, "client", None, &["sh", "-c", &script]).await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn share(bodies: &[String], needle: &str) -> f64 {
    let hits = bodies.iter().filter(|b| b.contains(needle)).count();
    hits as f64 / bodies.len().max(1) as f64
}

/// Applies a split and waits until traffic shows it (config propagated), then measures.
async fn canary_step(env: &KubeEnv, v1: u32, v2: u32) -> f64 {
    apply::apply(&env.client, &split(v1, v2))
        .await
        .unwrap_or_else(|e| panic!("applying split {v1}/{v2}: {e}"));
    let want = f64::from(v2) / f64::from(v1 + v2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let probe = requests(env, 20, "/").await;
        let s = share(&probe, "web v2");
        let settled = if want == 0.0 || want == 1.0 {
            (s - want).abs() < f64::EPSILON
        } else {
            s > 0.0 && s < 1.0
        };
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "split {v1}/{v2} not in effect after 60s: last probe {probe:?}\nclient logs:\n{}",
            env.logs(NS, "client")
        );
    }
    let bodies = requests(env, 200, "/").await;
    assert!(
        bodies.iter().all(|b| b.ends_with(" 200")),
        "non-200 answers: {bodies:?}"
    );
    let measured = share(&bodies, "web v2");
    eprintln!(
        "canary {v1}/{v2}: measured v2 share {measured:.3} over {} requests",
        bodies.len()
    );
    measured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mesh_canary_mtls_and_access() {
    let Some(env) = kube_env(
        TEST,
        &["weft-proxy", "weft-proxy-init", "weft-operator"],
        Path::new(env!("CARGO_BIN_EXE_weft-test-app")),
    )
    .await
    else {
        return;
    };
    let setup = helm(&env, &["setup"]);
    if !setup.status.success() {
        skip(
            TEST,
            &format!(
                "helm-python-sdk unavailable: {}",
                String::from_utf8_lossy(&setup.stderr)
            ),
        );
        return;
    }

    // Install: the exact command of docs/install.md (plus the test cluster's kubeconfig).
    let out = helm(
        &env,
        &["install", "--namespace", "weft-system", "--name", "weft"],
    );
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The Deployment's pod (run by the kubelet stand-in) becomes ready.
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

    // A meshed namespace: every pod gets a proxy from the injector.
    env.namespace(NS, json!({"weft.io/inject": "enabled"}))
        .await;
    for s in [
        service("web", json!({"app": "web"})),
        service("web-v1", json!({"app": "web", "version": "v1"})),
        service("web-v2", json!({"app": "web", "version": "v2"})),
    ] {
        env.create(s).await;
    }
    deploy_app(
        &env,
        "web-v1",
        "web",
        json!({"app": "web", "version": "v1"}),
        json!([{"name": "APP_NAME", "value": "web"}, {"name": "APP_VERSION", "value": "v1"}]),
    )
    .await;
    deploy_app(
        &env,
        "web-v2",
        "web",
        json!({"app": "web", "version": "v2"}),
        json!([{"name": "APP_NAME", "value": "web"}, {"name": "APP_VERSION", "value": "v2"}]),
    )
    .await;
    deploy_app(
        &env,
        "client",
        "client",
        json!({"app": "client"}),
        json!([{"name": "APP_NAME", "value": "client"}]),
    )
    .await;
    for p in ["web-v1", "web-v2", "client"] {
        let pod = env.wait_ready(NS, p, Duration::from_secs(90)).await;
        let names: Vec<String> = pod
            .spec
            .unwrap_or_default()
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert!(
            names.contains(&"weft-proxy".to_string()),
            "{p} not injected: {names:?}"
        );
        assert!(pod
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("weft.io/proxy-version"));
    }

    // Canary: 100/0 → 90/10 → 50/50 → 0/100.
    assert_eq!(canary_step(&env, 100, 0).await, 0.0);
    let s = canary_step(&env, 90, 10).await;
    assert!((0.03..=0.20).contains(&s), "90/10 measured {s}");
    let s = canary_step(&env, 50, 50).await;
    assert!((0.38..=0.62).contains(&s), "50/50 measured {s}");
    assert_eq!(canary_step(&env, 0, 100).await, 1.0);

    // mTLS on the wire: proxy-to-proxy traffic on the bridge is TLS, never the plaintext HTTP.
    let pcap = env.state_dir.join("mesh.pcap");
    let mut dump = tokio::process::Command::new("tcpdump")
        .args(["-i", weft_e2e::kubelet::BRIDGE, "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .args(["tcp", "port", "4143"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tcpdump");
    tokio::time::sleep(Duration::from_millis(700)).await; // tcpdump has no readiness signal
                                                          // New connections: restart the conversation with a fresh client-side connection pool.
    let bodies = requests(&env, 10, "/").await;
    assert!(bodies.iter().all(|b| b.contains("web v2")), "{bodies:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = dump.start_kill();
    let _ = dump.wait().await;
    let captured = std::fs::read(&pcap).unwrap_or_default();
    let contains = |needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    assert!(
        captured.len() > 200,
        "nothing captured on port 4143 ({} bytes)",
        captured.len()
    );
    assert!(
        !contains(b"web v2") && !contains(b"GET / HTTP"),
        "plaintext HTTP seen between proxies"
    );
    assert!(
        contains(&[0x17, 0x03, 0x03]),
        "no TLS application-data records on port 4143"
    );

    // A/B: only requests with `x-beta: true` are split (all to v2); the others go to the root
    // service, which selects both versions.
    let canary: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        env.client.clone(),
        NS,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("split.smi-spec.io", "v1alpha4", "TrafficSplit"),
            "trafficsplits",
        ),
    );
    canary
        .delete("web-canary", &Default::default())
        .await
        .unwrap_or_else(|e| panic!("deleting web-canary: {e}"));
    apply::apply_yaml(
        &env.client,
        &format!(
            r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {{name: beta-users, namespace: {NS}}}
spec:
  matches:
  - name: beta
    headers: {{x-beta: "true"}}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {{name: web-ab, namespace: {NS}}}
spec:
  service: web
  matches: [{{kind: HTTPRouteGroup, name: beta-users}}]
  backends:
  - {{service: web-v2, weight: 100}}
"#
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("applying the A/B split: {e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let beta = requests_with(&env, 20, "/", "-H 'x-beta: true'").await;
        let plain = requests(&env, 40, "/").await;
        let beta_ok = beta.iter().all(|b| b == "web v2 200");
        let plain_ok = plain.iter().all(|b| b.ends_with(" 200")) && share(&plain, "web v1") > 0.0;
        if beta_ok && plain_ok {
            eprintln!(
                "A/B: beta requests all v2; others v2 share {:.2}",
                share(&plain, "web v2")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A/B split not in effect after 60s: beta {beta:?} plain {plain:?}"
        );
    }

    // Access: once web's ServiceAccount is a TrafficTarget destination, only what it allows passes.
    apply::apply_yaml(
        &env.client,
        &format!(
            r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {{name: web-routes, namespace: {NS}}}
spec:
  matches:
  - name: public
    pathRegex: /public
    methods: [GET]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {{name: client-to-web, namespace: {NS}}}
spec:
  destination: {{kind: ServiceAccount, name: web, namespace: {NS}}}
  sources:
  - {{kind: ServiceAccount, name: client, namespace: {NS}}}
  rules:
  - {{kind: HTTPRouteGroup, name: web-routes, matches: [public]}}
"#
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("applying access policy: {e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let private = requests(&env, 5, "/private").await;
        let public = requests(&env, 5, "/public").await;
        if private.iter().all(|b| b.ends_with(" 403")) && public.iter().all(|b| b.ends_with(" 200"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "access policy not enforced after 60s: /private {private:?} /public {public:?}"
        );
    }

    versions_validation_and_restart(&env, &operator_pod).await;

    env.shutdown().await;
}

/// Every SMI version round-trips through the conversion webhook; bad objects are refused; the
/// data plane keeps serving while the operator restarts.
async fn versions_validation_and_restart(env: &KubeEnv, operator_pod: &str) {
    // A v1alpha1 split (quantity weights) read back as v1alpha4, and the reverse.
    let old = json!({"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": "legacy", "namespace": NS},
        "spec": {"service": "web", "backends": [
            {"service": "web-v1", "weight": "500m"}, {"service": "web-v2", "weight": 1}]}});
    apply::apply(&env.client, &old)
        .await
        .unwrap_or_else(|e| panic!("applying v1alpha1: {e}"));
    for version in ["v1alpha2", "v1alpha3", "v1alpha4"] {
        let got = apply::get(
            &env.client,
            &format!("split.smi-spec.io/{version}"),
            "TrafficSplit",
            Some(NS),
            "legacy",
        )
        .await
        .unwrap_or_else(|e| panic!("reading legacy split as {version}: {e}"));
        let weights: Vec<i64> = got["spec"]["backends"]
            .as_array()
            .unwrap_or_else(|| panic!("{version}: {got}"))
            .iter()
            .filter_map(|b| b["weight"].as_i64())
            .collect();
        assert_eq!(weights.len(), 2, "{version}: {got}");
        assert_eq!(
            weights[1],
            2 * weights[0],
            "{version}: relative weights kept: {got}"
        );
    }
    let back = apply::get(
        &env.client,
        "split.smi-spec.io/v1alpha1",
        "TrafficSplit",
        Some(NS),
        "web-ab",
    )
    .await
    .unwrap_or_else(|e| panic!("reading web-canary as v1alpha1: {e}"));
    assert_eq!(back["spec"]["service"], "web", "{back}");
    let tt = apply::get(
        &env.client,
        "access.smi-spec.io/v1alpha1",
        "TrafficTarget",
        Some(NS),
        "client-to-web",
    )
    .await
    .unwrap_or_else(|e| panic!("reading the TrafficTarget as v1alpha1: {e}"));
    assert_eq!(tt["destination"]["name"], "web", "{tt}");

    // Bad objects are refused (schema or validating webhook).
    let bad = json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "bad", "namespace": NS},
        "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": -5}]}});
    let err = apply::create(&env.client, &bad)
        .await
        .expect_err("a negative weight must be refused");
    assert!(
        err.contains("422") || err.contains("denied") || err.contains("Invalid"),
        "{err}"
    );

    // Operator restart: delete its pod; proxies keep serving; a new pod becomes ready.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.client.clone(), "weft-system");
    pods.delete(operator_pod, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("deleting the operator pod: {e}"));
    let during = requests(env, 20, "/public").await;
    assert!(
        during.iter().all(|b| b.ends_with(" 200")),
        "data plane broke during operator restart: {during:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let new_pod = loop {
        let list = pods
            .list(&Default::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(p) = list
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .find(|n| n != operator_pod)
        {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replacement operator pod"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    env.wait_ready("weft-system", &new_pod, Duration::from_secs(90))
        .await;
    let after = requests(env, 20, "/private").await;
    assert!(
        after.iter().all(|b| b.ends_with(" 403")),
        "policy lost after restart: {after:?}"
    );

    // `weft check` passes against the installed mesh.
    let weft = weft_e2e::workspace::target_debug().join("weft");
    if !weft.is_file() {
        skip(
            TEST,
            &format!(
                "`weft check` step: {} not built (cargo build -p weft-cli)",
                weft.display()
            ),
        );
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = tokio::process::Command::new(&weft)
            .args(["check", "--namespace", "weft-system"])
            .env("KUBECONFIG", &env.cluster.kubeconfig)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running weft check: {e}"));
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            eprintln!("weft check:\n{report}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "weft check failed: {report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // `weft stat` reads every meshed pod's metrics through the API server's pod proxy.
    let out = tokio::process::Command::new(&weft)
        .args([
            "stat", "-n", NS, "--by", "workload", "--window", "1s", "-o", "json",
        ])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running weft stat: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "weft stat failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("weft stat -o json: {e}: {text}"));
    let pods: Vec<&str> = rows
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        pods.iter().any(|p| p.starts_with(&format!("{NS}/"))),
        "weft stat shows no meshed pod of {NS}: {text}"
    );
    eprintln!("weft stat rows: {pods:?}");
}
