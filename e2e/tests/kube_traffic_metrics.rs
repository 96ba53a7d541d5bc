//! SMI TrafficMetrics (`metrics.smi-spec.io/v1alpha1`) through the real API server: weft
//! installed with the chart (APIService, operator serving the aggregated API), meshed pods
//! behind a TrafficSplit getting traffic from a meshed client, one backend answering 502 to
//! every request. `GET /apis/metrics.smi-spec.io/v1alpha1/namespaces/<ns>/trafficsplits/<name>`
//! (what `kubectl get --raw` does) returns per-backend success and failure counts equal to what
//! the client received, and latency quantiles; a user without RBAC for `metrics.smi-spec.io`
//! gets 403 from the API server; a request straight to the operator's port without the API
//! server's front-proxy certificate is refused (even with forged `X-Remote-User` headers),
//! while the same request with that certificate is answered.
//!
//! Needs root, the cached control plane (`e2e/scripts/kube-build.sh`), the Helm SDK and
//! `cargo build -p weft-proxy -p weft-operator --bins`; skips loudly otherwise (fails in CI).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_e2e::apply;
use weft_e2e::harness::{eventually, http_service, mesh_env, traffic_split, KubeEnv};

const TEST: &str = "kube_traffic_metrics";
const NS: &str = "metrics";
const SPLIT_PATH: &str =
    "/apis/metrics.smi-spec.io/v1alpha1/namespaces/metrics/trafficsplits/web-split";

async fn pod(env: &KubeEnv, name: &str, labels: Value, app_env: Value) {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": NS}});
    apply::apply(&env.client, &sa)
        .await
        .unwrap_or_else(|e| panic!("service account {name}: {e}"));
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"serviceAccountName": name, "containers": [
            {"name": "app", "image": "weft-test-app", "env": app_env,
             "ports": [{"containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}
    }))
    .await;
}

fn service(name: &str, selector: Value) -> Value {
    http_service(NS, name, selector)
}

/// `n` requests to the apex from the client pod: `(answered by v1 with 200, sent to v2 and
/// failed, anything else)`.
async fn traffic(env: &KubeEnv, client: &str, n: u32) -> (u64, u64, Vec<String>) {
    let script = format!(
        "for i in $(seq {n}); do (curl -s --max-time 5 -w ' %{{http_code}}' http://web.{NS}.svc.cluster.local/ || echo fail) | tr -d '\\n'; echo; done"
    );
    let out = env.exec(NS, client, None, &["sh", "-c", &script]).await;
    let (mut v1, mut v2, mut other) = (0, 0, Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if line.starts_with("web v1") && line.ends_with(" 200") {
            v1 += 1;
        } else if (line.contains("unreachable") && line.ends_with(" 502"))
            || (line.contains("backend web-v2") && line.ends_with(" 503"))
        {
            // v2's own 502s, and the client proxy's 503s once failure accrual ejected v2's
            // endpoint: both requests the split sent to web-v2 that failed.
            v2 += 1;
        } else if !line.is_empty() {
            other.push(line.to_string());
        }
    }
    (v1, v2, other)
}

/// A raw GET through the API server as `client` (what `kubectl get --raw` does): the status
/// code and the body.
async fn raw_get(client: &kube::Client, path: &str) -> (u16, String) {
    let req = http::Request::get(path).body(Vec::new()).expect("request");
    match client.request_text(req).await {
        Ok(body) => (200, body),
        Err(kube::Error::Api(e)) => (e.code, e.message),
        Err(e) => (0, e.to_string()),
    }
}

/// `metrics[name].value` of a TrafficMetrics item.
fn metric(item: &Value, name: &str) -> Option<String> {
    item["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?
        .get("value")?
        .as_str()
        .map(str::to_owned)
}

/// The item of `backend` in a TrafficSplit's TrafficMetricsList.
fn backend<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["items"]
        .as_array()?
        .iter()
        .find(|i| i["backend"]["name"] == name)
}

/// A client for the same API server acting as `user` (impersonation: the admin asks, the API
/// server authorizes `user`).
async fn client_as(env: &KubeEnv, user: &str) -> kube::Client {
    let mut kc = kube::config::Kubeconfig::read_from(&env.cluster.kubeconfig).expect("kubeconfig");
    for ai in &mut kc.auth_infos {
        if let Some(info) = ai.auth_info.as_mut() {
            info.impersonate = Some(user.to_string());
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// `curl` straight to the operator's aggregated API port (bypassing the API server), with
/// extra arguments; the exit code and the output.
async fn direct(ip: &str, extra: &[&str]) -> (i32, String) {
    let url = format!("https://{ip}:8443{SPLIT_PATH}");
    let out = tokio::process::Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-w",
            " %{http_code}",
            "-H",
            "X-Remote-User: admin",
            "-H",
            "X-Remote-Group: system:masters",
        ])
        .args(extra)
        .arg(&url)
        .output()
        .await
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The chart's APIService (charts/weft/templates/webhook.yaml), created with a plain create:
/// same service, port and CA bundle (the webhook Secret's `ca.crt`).
async fn register_api_service(env: &KubeEnv) {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.client.clone(), "weft-system");
    let secret = secrets
        .get("weft-webhook-tls")
        .await
        .expect("webhook secret");
    let ca = secret
        .data
        .unwrap_or_default()
        .remove("ca.crt")
        .expect("ca.crt");
    let rendered = env.helm(&["template", "--namespace", "weft-system", "--name", "weft"]);
    let text = String::from_utf8_lossy(&rendered.stdout);
    let docs: Vec<&str> = text
        .split("\n---")
        .filter(|d| d.contains("kind: APIService"))
        .collect();
    // v1alpha1.metrics.smi-spec.io and v1alpha1.tap.weft.io.
    assert_eq!(docs.len(), 2, "the chart renders two APIServices");
    for doc in docs {
        let mut obj: Value = serde_yaml::from_str(doc).expect("APIService YAML");
        // A ByteString serializes as base64, as caBundle wants.
        obj["spec"]["caBundle"] = serde_json::to_value(&ca).expect("caBundle");
        env.create(obj).await;
    }
}

/// The client Deployment (one replica of the test app); the name of its pod.
async fn client_deployment(env: &KubeEnv) -> String {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "client", "namespace": NS}});
    apply::apply(&env.client, &sa)
        .await
        .expect("client service account");
    env.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "client", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "client"}},
            "template": {"metadata": {"labels": {"app": "client"}},
                "spec": {"serviceAccountName": "client", "containers": [
                    {"name": "app", "image": "weft-test-app",
                     "env": [{"name": "APP_NAME", "value": "client"}],
                     "ports": [{"containerPort": 8080}],
                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}}
    }))
    .await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.client.clone(), NS);
    let names = eventually(
        "the client Deployment's pod",
        Duration::from_secs(60),
        || async {
            pods.list(&kube::api::ListParams::default().labels("app=client"))
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter_map(|p| p.metadata.name)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        },
        |names| names.len() == 1,
    )
    .await;
    names[0].clone()
}

/// The header the client sends while tapped; its value must never show.
const SECRET: &str = "Bearer kubetap-secret-token";

/// Requests from the client pod (path `/tapped`, with an `authorization` header), forever,
/// raced against what reads them: every 300 ms one to the apex, split between web-v1 and
/// web-v2, then one to web-v1 directly. Once failure accrual has ejected web-v2, the client's
/// proxy answers the split's web-v2 share itself, without a server identity; the direct
/// request makes sure any 2 consecutive responses of a tap include one web-v1 answered over
/// mTLS, whatever the split drew.
async fn tapped_traffic(env: &KubeEnv, client: &str) {
    let curl = format!("curl -s -o /dev/null --max-time 5 -H 'authorization: {SECRET}'");
    let script = format!(
        "{curl} http://web.{NS}.svc.cluster.local/tapped; {curl} http://web-v1.{NS}.svc.cluster.local/tapped"
    );
    loop {
        env.exec(NS, client, None, &["sh", "-c", &script]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `fut` while the client sends tapped requests, for at most 60 s.
async fn with_traffic<T>(
    env: &KubeEnv,
    client: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    let run = async {
        tokio::select! {
            out = fut => out,
            _ = tapped_traffic(env, client) => unreachable!("the traffic loop never ends"),
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no answer within 60 s while traffic flowed")
}

/// The NDJSON lines of a tap.
fn tap_events(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("tap line {l:?}: {e}")))
        .collect()
}

/// The tap shows the client's requests with both identities (the client's on the request,
/// the server's, verified by the handshake, on the response: docs/tap.md "Event format") and
/// the `authorization` header redacted.
fn assert_tap_shows_client_requests(events: &[Value], raw: &str) {
    assert!(!raw.contains("kubetap-secret"), "secret leaked: {raw}");
    let client_id = format!("spiffe://cluster.local/ns/{NS}/sa/client");
    let req = events
        .iter()
        .find(|e| e["type"] == "request" && e["path"] == "/tapped")
        .unwrap_or_else(|| panic!("no tapped request event: {raw}"));
    assert_eq!(req["direction"], "outbound", "{req}");
    assert_eq!(req["client_id"], client_id, "{req}");
    let headers = req["headers"].as_array().expect("headers");
    assert!(
        headers.iter().any(|h| h[0]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case("authorization"))
            && h[1] == "<redacted>"),
        "authorization not shown redacted: {req}"
    );
    let servers = [
        format!("spiffe://cluster.local/ns/{NS}/sa/web-v1"),
        format!("spiffe://cluster.local/ns/{NS}/sa/web-v2"),
    ];
    let rsp = events
        .iter()
        .find(|e| {
            e["type"] == "response"
                && e["direction"] == "outbound"
                && e["client_id"] == client_id
                && servers.iter().any(|s| e["server_id"] == *s)
        })
        .unwrap_or_else(|| panic!("no response with both identities: {raw}"));
    assert_eq!(rsp["tls"], true, "{rsp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_traffic_metrics_for_a_traffic_split() {
    let Some(env) = mesh_env(TEST, Path::new(env!("CARGO_BIN_EXE_weft-test-app"))).await else {
        return;
    };
    // Scrape often, over a window that covers the whole test's traffic.
    let operator_pod = env
        .install_weft_with(&["metricsApi.scrapeInterval=1s", "metricsApi.window=300s"])
        .await;
    register_api_service(&env).await;

    env.namespace(NS, json!({"weft.io/inject": "enabled"}))
        .await;
    // The apex selects no pod: a request reaches a backend only through the split.
    for s in [
        service("web", json!({"app": "web-apex"})),
        service("web-v1", json!({"app": "web", "version": "v1"})),
        service("web-v2", json!({"app": "web", "version": "v2"})),
    ] {
        env.create(s).await;
    }
    apply::apply(
        &env.client,
        &traffic_split(NS, "web-split", "web", &[("web-v1", 50), ("web-v2", 50)]),
    )
    .await
    .expect("traffic split");
    pod(
        &env,
        "web-v1",
        json!({"app": "web", "version": "v1"}),
        json!([{"name": "APP_NAME", "value": "web"}, {"name": "APP_VERSION", "value": "v1"}]),
    )
    .await;
    // v2 answers 502 to every request: it calls a backend that does not resolve.
    pod(
        &env,
        "web-v2",
        json!({"app": "web", "version": "v2"}),
        json!([{"name": "APP_MODE", "value": "frontend"},
               {"name": "APP_BACKEND", "value": "http://nowhere.invalid/"}]),
    )
    .await;
    // The client is a Deployment (its pod owned by a ReplicaSet): tap, edges and
    // TrafficMetrics name it `deploy/client`.
    let client = client_deployment(&env).await;
    for p in ["web-v1", "web-v2", client.as_str()] {
        env.wait_ready(NS, p, Duration::from_secs(90)).await;
    }

    // The APIService is available and its discovery documents served.
    let (code, body) = eventually(
        "metrics.smi-spec.io discovery through the API server",
        Duration::from_secs(60),
        || raw_get(&env.client, "/apis/metrics.smi-spec.io/v1alpha1"),
        |(code, _)| *code == 200,
    )
    .await;
    assert_eq!(code, 200);
    let resources: Value = serde_json::from_str(&body).expect("APIResourceList");
    assert_eq!(resources["kind"], "APIResourceList", "{body}");
    assert!(body.contains("\"trafficsplits\""), "{body}");

    // The operator counts a proxy's requests from its first scrape on (docs/traffic-metrics.md
    // "How the figures are computed"): warm up until the client's proxy has been scraped with
    // traffic through the split, then take the figures, once they hold still, as the baseline.
    let split_counts = |body: &str| -> Option<(u64, u64)> {
        let list: Value = serde_json::from_str(body).ok()?;
        let ok = metric(backend(&list, "web-v1")?, "success_count")?
            .parse()
            .ok()?;
        let failed = metric(backend(&list, "web-v2")?, "failure_count")?
            .parse()
            .ok()?;
        Some((ok, failed))
    };
    eventually(
        "the client's proxy scraped with traffic through the split",
        Duration::from_secs(60),
        || async {
            traffic(&env, &client, 4).await;
            raw_get(&env.client, SPLIT_PATH).await
        },
        |(code, body)| *code == 200 && split_counts(body).is_some_and(|(a, b)| a + b > 0),
    )
    .await;
    let mut base = None;
    while base.is_none() {
        let before = split_counts(&raw_get(&env.client, SPLIT_PATH).await.1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = split_counts(&raw_get(&env.client, SPLIT_PATH).await.1);
        if before.is_some() && before == after {
            base = after;
        }
    }
    let (base1, base2) = base.unwrap_or_default();
    eprintln!("baseline: web-v1 {base1} successes, web-v2 {base2} failures");

    // Traffic through the apex, until both backends have answered some.
    let (mut v1, mut v2, mut other) = (0, 0, Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while v1 < 10 || v2 < 10 {
        let (a, b, c) = traffic(&env, &client, 20).await;
        v1 += a;
        v2 += b;
        other.extend(c);
        assert!(
            tokio::time::Instant::now() < deadline,
            "split not in force: v1 {v1}, v2 {v2}, other {other:?}"
        );
    }
    eprintln!("sent: {v1} answered 200 by v1, {v2} failed at v2, others {other:?}");

    // TrafficMetrics for the split, through the API server, as the admin: per-backend counts
    // equal to what the client received (every replica converges on them).
    let (_, body) = eventually(
        "TrafficMetrics of web-split matching the traffic sent",
        Duration::from_secs(60),
        || raw_get(&env.client, SPLIT_PATH),
        |(code, body)| {
            let Ok(list) = serde_json::from_str::<Value>(body) else {
                return false;
            };
            *code == 200
                && backend(&list, "web-v1").and_then(|i| metric(i, "success_count"))
                    == Some((base1 + v1).to_string())
                && backend(&list, "web-v2").and_then(|i| metric(i, "failure_count"))
                    == Some((base2 + v2).to_string())
        },
    )
    .await;
    let list: Value = serde_json::from_str(&body).expect("json");
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&list).unwrap_or_default()
    );
    assert_eq!(list["kind"], "TrafficMetricsList");
    assert_eq!(list["resource"]["kind"], "TrafficSplit");
    let b1 = backend(&list, "web-v1").expect("web-v1 item");
    let b2 = backend(&list, "web-v2").expect("web-v2 item");
    assert_eq!(b1["backend"]["apex"], "web");
    assert_eq!(b1["backend"]["weight"], "50");
    assert_eq!(metric(b1, "failure_count").as_deref(), Some("0"));
    assert_eq!(metric(b2, "success_count").as_deref(), Some("0"));
    for b in [b1, b2] {
        for q in [
            "p50_response_latency",
            "p90_response_latency",
            "p99_response_latency",
        ] {
            let v = metric(b, q).unwrap_or_else(|| panic!("{q} missing: {b}"));
            assert!(
                v.ends_with('m') || v.ends_with('u'),
                "{q} is a quantity of seconds: {v}"
            );
        }
    }

    // A user without RBAC for metrics.smi-spec.io: refused by the API server.
    let nobody = client_as(&env, "nobody").await;
    let (code, msg) = raw_get(&nobody, SPLIT_PATH).await;
    assert_eq!(code, 403, "{msg}");
    // The same user once bound to the chart's reader role: allowed.
    apply::apply(
        &env.client,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "nobody-metrics", "namespace": NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "weft-traffic-metrics-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "nobody"}]}),
    )
    .await
    .expect("role binding");
    eventually(
        "the reader role lets nobody read TrafficMetrics",
        Duration::from_secs(30),
        || raw_get(&nobody, SPLIT_PATH),
        |(code, _)| *code == 200,
    )
    .await;

    // Straight to the operator's port: no front-proxy certificate, no request gets in, forged
    // X-Remote-* headers or not.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.client.clone(), "weft-system");
    let op = pods.get(&operator_pod).await.expect("operator pod");
    let ip = op.status.and_then(|s| s.pod_ip).expect("operator pod IP");
    let (exit, out) = direct(&ip, &[]).await;
    assert_ne!(exit, 0, "answered without a client certificate: {out}");
    assert!(!out.contains("TrafficMetrics"), "{out}");
    // A client certificate with the allowed name but not of the front-proxy CA: refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["front-proxy-client".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    std::fs::write(dir.path().join("c.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("c.key"), key.serialize_pem()).expect("write");
    let (exit, out) = direct(
        &ip,
        &[
            "--cert",
            &dir.path().join("c.crt").display().to_string(),
            "--key",
            &dir.path().join("c.key").display().to_string(),
        ],
    )
    .await;
    assert_ne!(exit, 0, "answered a self-signed client certificate: {out}");
    // The API server's own front-proxy certificate: answered (so the refusals above are the
    // certificate's doing).
    let fp = env.cluster.dir.path();
    let (exit, out) = direct(
        &ip,
        &[
            "--cert",
            &fp.join("front-proxy-client.crt").display().to_string(),
            "--key",
            &fp.join("front-proxy-client.key").display().to_string(),
        ],
    )
    .await;
    assert_eq!(exit, 0, "{out}");
    assert!(
        out.contains("TrafficMetricsList") && out.ends_with(" 200"),
        "{out}"
    );

    // ---- tap.weft.io through the API server (docs/tap.md) ----
    let (code, apis) = raw_get(&env.client, "/apis").await;
    assert_eq!(code, 200, "{apis}");
    assert!(
        apis.contains("\"tap.weft.io\""),
        "/apis lists tap.weft.io: {apis}"
    );
    eventually(
        "tap.weft.io discovery through the API server",
        Duration::from_secs(60),
        || raw_get(&env.client, "/apis/tap.weft.io/v1alpha1"),
        |(code, body)| *code == 200 && body.contains("pods/tap"),
    )
    .await;
    let tap_path = format!(
        "/apis/tap.weft.io/v1alpha1/namespaces/{NS}/pods/{client}/tap?path=%2Ftapped&max=3"
    );
    let (code, body) = with_traffic(&env, &client, raw_get(&env.client, &tap_path)).await;
    assert_eq!(code, 200, "{body}");
    eprintln!("tap through the API server:\n{body}");
    let events = tap_events(&body);
    // `max` counts ended requests: the tap ends after the third response.
    assert_eq!(
        events.iter().filter(|e| e["type"] == "response").count(),
        3,
        "max=3 honoured: {body}"
    );
    assert_tap_shows_client_requests(&events, &body);

    // Without the weft-tap role: refused by the API server; bound to it: the tap answers.
    let tapper = client_as(&env, "tapper").await;
    let (code, msg) = raw_get(&tapper, &tap_path).await;
    assert_eq!(code, 403, "{msg}");
    apply::apply(
        &env.client,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tapper-tap", "namespace": NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "weft-tap"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "tapper"}]}),
    )
    .await
    .expect("role binding");
    let (_, body) = eventually(
        "the weft-tap role lets tapper tap",
        Duration::from_secs(90),
        || with_traffic(&env, &client, raw_get(&tapper, &tap_path)),
        |(code, _)| *code == 200,
    )
    .await;
    assert_tap_shows_client_requests(&tap_events(&body), &body);

    // ---- the weft CLI against the cluster (docs/cli.md) ----
    let weft = weft_e2e::workspace::target_debug().join("weft");
    assert!(
        weft.is_file(),
        "{} not built (cargo build -p weft-cli)",
        weft.display()
    );
    let cli = |args: Vec<String>| {
        let weft = weft.clone();
        let kubeconfig = env.cluster.kubeconfig.clone();
        async move {
            let o = tokio::process::Command::new(&weft)
                .args(&args)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .env_remove("KUBECONFIG")
                .env("HOME", "/nonexistent")
                .env("NO_COLOR", "1")
                .output()
                .await
                .unwrap_or_else(|e| panic!("weft {args:?}: {e}"));
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(o.status.success(), "weft {args:?}: {out}\n{err}");
            out
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let out = with_traffic(
        &env,
        &client,
        cli(args(&[
            "tap",
            "deploy/client",
            "-n",
            NS,
            "--path",
            "/tapped",
            "--max",
            "3",
            "-o",
            "json",
        ])),
    )
    .await;
    eprintln!("weft tap:\n{out}");
    assert_tap_shows_client_requests(&tap_events(&out), &out);

    let out = with_traffic(
        &env,
        &client,
        cli(args(&["edges", "-n", NS, "--window", "5s", "-o", "json"])),
    )
    .await;
    eprintln!("weft edges:\n{out}");
    let rows: Value = serde_json::from_str(&out).expect("edges JSON");
    let edge = rows
        .as_array()
        .expect("edges array")
        .iter()
        .find(|r| r["src"]["name"] == "deployment/client" && r["dst"]["name"] == "pod/web-v1")
        .unwrap_or_else(|| panic!("no client -> web-v1 edge: {out}"));
    assert_eq!(edge["tls"], true, "{edge}");
    assert_eq!(
        edge["client_id"],
        format!("spiffe://cluster.local/ns/{NS}/sa/client"),
        "{edge}"
    );
    assert_eq!(
        edge["server_id"],
        format!("spiffe://cluster.local/ns/{NS}/sa/web-v1"),
        "{edge}"
    );
    assert!(edge["requests"].as_f64().unwrap_or(0.0) > 0.0, "{edge}");

    let pod_ref = format!("pod/{client}");
    let out = with_traffic(
        &env,
        &client,
        cli(args(&[
            "stat", "--from", &pod_ref, "-n", NS, "--window", "5s", "-o", "json",
        ])),
    )
    .await;
    eprintln!("weft stat --from {pod_ref}:\n{out}");
    let rows: Value = serde_json::from_str(&out).expect("stat JSON");
    let rows = rows.as_array().expect("stat rows");
    // Every row's caller is the client's pod; web-v1 answers every request, web-v2 none
    // (its pod, or the service once failure accrual ejected the pod and the client's proxy
    // answered 503 itself).
    let from_client = format!("{NS}/pod/{client} -> ");
    let row_to = |dsts: &[String]| {
        rows.iter()
            .find(|r| {
                r["name"].as_str().is_some_and(|n| {
                    n.strip_prefix(&from_client)
                        .is_some_and(|dst| dsts.iter().any(|d| d == dst))
                })
            })
            .unwrap_or_else(|| panic!("no row from {from_client} to {dsts:?}: {out}"))
    };
    let v1_row = row_to(&[format!("{NS}/pod/web-v1")]);
    assert!(v1_row["requests"].as_u64().unwrap_or(0) > 0, "{v1_row}");
    assert_eq!(v1_row["success_rate"], 1.0, "{v1_row}");
    let v2_row = row_to(&[format!("{NS}/pod/web-v2"), format!("{NS}/service/web-v2")]);
    assert!(v2_row["requests"].as_u64().unwrap_or(0) > 0, "{v2_row}");
    assert_eq!(v2_row["success_rate"], 0.0, "{v2_row}");

    // ---- TrafficMetrics edges of the client's Deployment and pod ----
    for path in [
        format!("/apis/metrics.smi-spec.io/v1alpha1/namespaces/{NS}/deployments/client/edges"),
        format!("/apis/metrics.smi-spec.io/v1alpha1/namespaces/{NS}/pods/{client}/edges"),
    ] {
        let (code, body) = raw_get(&env.client, &path).await;
        assert_eq!(code, 200, "{path}: {body}");
        eprintln!("{path}:\n{body}");
        let list: Value = serde_json::from_str(&body).expect("edges list");
        assert_eq!(list["kind"], "TrafficMetricsList", "{body}");
        let to_v1 = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|i| i["edge"]["direction"] == "to" && i["edge"]["resource"]["name"] == "web-v1")
            .unwrap_or_else(|| panic!("{path}: no edge to web-v1: {body}"));
        // web-v1 is a bare pod: the Deployment's peer is named by its pod.
        assert_eq!(to_v1["edge"]["resource"]["kind"], "Pod", "{to_v1}");
        let ok: u64 = metric(to_v1, "success_count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            ok > 0,
            "{path}: no success to web-v1 in the window: {to_v1}"
        );
    }
}
