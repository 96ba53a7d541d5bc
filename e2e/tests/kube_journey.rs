//! The platform team's journey of docs/install.md on a real API server: the chart installed
//! with real Helm and its defaults (two operator replicas), the sample application of
//! examples/app applied as written (Deployments, injected by the webhook), then: the canary
//! moved through its four steps with the shares measured from the frontend's calls; the access
//! policy applied (the frontend still gets 200, another caller 403); and the leading operator
//! replica killed mid-traffic (SIGKILL, pod deleted: the Lease is not released), asserting that
//! no request failed, that SMI writes at v1alpha2 (conversion and validation webhooks) were
//! refused for less than the documented failover bound, that another replica took the Lease
//! within it and writes status again, and that every proxy is connected and ACKed afterwards.
//!
//! Needs root, the cached control plane (`e2e/scripts/kube-build.sh`), the Helm SDK and
//! `cargo build -p weft-proxy -p weft-operator --bins`; skips loudly otherwise (fails in CI).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{json, Value};
use tokio::time::Instant;
use weft_e2e::apply;
use weft_e2e::cluster::repo_root;
use weft_e2e::harness::{eventually, mesh_env, KubeEnv};

const TEST: &str = "kube_journey";
/// The sample application's namespace (examples/app/00-namespace.yaml).
const NS: &str = "demo";
const SYSTEM: &str = "weft-system";
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=weft,app.kubernetes.io/component=operator";

/// The chart's defaults (charts/weft/values.yaml, `operator.leaderElectionTimings`).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Endpoint propagation: the killed pod leaving the webhook Service's endpoints, a replica's
/// readiness probe period; generous on a 2-core machine running the whole control plane.
const PROPAGATION: Duration = Duration::from_secs(8);

/// `kubectl apply -f FILE` for a file of examples/app.
async fn apply_example(env: &KubeEnv, file: &str) {
    let path = repo_root().join("examples/app").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    apply::apply_yaml(&env.client, &text)
        .await
        .unwrap_or_else(|e| panic!("applying {file}: {e}"));
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods of `ns` matching `selector`.
async fn pods(env: &KubeEnv, ns: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// The one ready, injected pod of `selector` in the sample app's namespace (its name).
async fn app_pod(env: &KubeEnv, selector: &str) -> String {
    let pod = eventually(
        &format!("a ready pod for {selector}"),
        Duration::from_secs(120),
        || pods(env, NS, selector),
        |p: &Vec<Pod>| p.iter().any(is_ready),
    )
    .await
    .into_iter()
    .find(is_ready)
    .unwrap_or_else(|| panic!("no ready pod for {selector}"));
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    assert!(
        containers.iter().any(|c| c == "weft-proxy"),
        "{selector}: not injected: {containers:?}"
    );
    pod.metadata.name.unwrap_or_default()
}

/// `n` calls from the frontend to the backend (`GET /?n=N` on the frontend, inside its pod):
/// one line per call, `<status> <answer>` (`200 backend v2`), or `curl failed ...`.
async fn frontend_calls(env: &KubeEnv, frontend: &str, n: u32) -> Vec<String> {
    let url = format!("http://127.0.0.1:8080/?n={n}");
    let out = env
        .exec(
            NS,
            frontend,
            None,
            &["curl", "-s", "--max-time", "20", &url],
        )
        .await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if !out.status.success() || lines.len() != n as usize {
        return vec![format!(
            "curl failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )];
    }
    lines
}

fn share(lines: &[String], needle: &str) -> f64 {
    lines.iter().filter(|l| l.ends_with(needle)).count() as f64 / lines.len().max(1) as f64
}

fn all_ok(lines: &[String]) -> bool {
    !lines.is_empty() && lines.iter().all(|l| l.starts_with("200 backend v"))
}

/// Applies canary step `file` (v1 `a`%, v2 `b`%), waits until the frontend's calls show it,
/// then measures the v2 share over 200 calls.
async fn canary_step(env: &KubeEnv, frontend: &str, file: &str, a: u32, b: u32) -> f64 {
    apply_example(env, &format!("canary/{file}")).await;
    let want = f64::from(b) / f64::from(a + b);
    eventually(
        &format!("canary {a}/{b} in effect"),
        Duration::from_secs(60),
        || frontend_calls(env, frontend, 20),
        |l: &Vec<String>| {
            let s = share(l, "backend v2");
            all_ok(l)
                && if want == 0.0 || want == 1.0 {
                    (s - want).abs() < f64::EPSILON
                } else {
                    s > 0.0 && s < 1.0
                }
        },
    )
    .await;
    let lines = frontend_calls(env, frontend, 200).await;
    assert!(all_ok(&lines), "canary {a}/{b}: failed calls: {lines:?}");
    let measured = share(&lines, "backend v2");
    eprintln!("canary {a}/{b}: v2 answered {measured:.3} of 200 calls");
    measured
}

/// The TrafficSplit of examples/app/canary at `version`.
fn split_api(env: &KubeEnv, version: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "split.smi-spec.io".into(),
        version: version.into(),
        api_version: format!("split.smi-spec.io/{version}"),
        kind: "TrafficSplit".into(),
        plural: "trafficsplits".into(),
    };
    Api::namespaced_with(env.client.clone(), NS, &ar)
}

/// The holder of the operator's Lease.
async fn lease_holder(env: &KubeEnv) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), SYSTEM);
    leases
        .get_opt("weft-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// `GET /proxies` of every ready operator replica: the pods whose proxy is connected and has
/// ACKed the last config it was sent.
async fn acked_proxies(env: &KubeEnv) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    for p in pods(env, SYSTEM, OPERATOR_SELECTOR).await {
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if !is_ready(&p) {
            continue;
        }
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "3",
                &format!("http://{ip}:9990/proxies"),
            ])
            .output()
            .await;
        let Ok(out) = out else { continue };
        let Ok(list) = serde_json::from_slice::<Vec<Value>>(&out.stdout) else {
            continue;
        };
        for entry in list {
            let sent = entry["last_sent_version"].as_str();
            if sent.is_some() && entry["last_acked_version"].as_str() == sent {
                if let Some(pod) = entry["pod"].as_str() {
                    acked.insert(pod.to_string());
                }
            }
        }
    }
    acked
}

/// The `Accepted` condition's observedGeneration and the object's generation, at v1alpha4.
async fn observed_and_generation(env: &KubeEnv) -> (Option<i64>, Option<i64>) {
    let Ok(split) = split_api(env, "v1alpha4").get("backend-canary").await else {
        return (None, None);
    };
    let v = serde_json::to_value(&split).unwrap_or_default();
    let observed = v["status"]["conditions"].as_array().and_then(|c| {
        c.iter()
            .find(|c| c["type"] == "Accepted")
            .and_then(|c| c["observedGeneration"].as_i64())
    });
    (observed, v["metadata"]["generation"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_journey_install_app_canary_access_and_operator_failover() {
    let Some(env) = mesh_env(TEST, Path::new(env!("CARGO_BIN_EXE_weft-test-app"))).await else {
        return;
    };

    // docs/install.md: `helm install weft charts/weft -n weft-system --create-namespace`.
    let out = env.helm(&[
        "install",
        "--namespace",
        SYSTEM,
        "--name",
        "weft",
        "--set",
        weft_e2e::harness::NO_API_SERVICES,
    ]);
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both replicas ready: each serves webhooks and discovery, leader or not.
    let operators = eventually(
        "two ready operator replicas",
        Duration::from_secs(120),
        || pods(&env, SYSTEM, OPERATOR_SELECTOR),
        |p: &Vec<Pod>| p.iter().filter(|p| is_ready(p)).count() == 2,
    )
    .await;
    let operator_names: Vec<String> = operators
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let leader = eventually(
        "one replica holds the Lease",
        Duration::from_secs(60),
        || lease_holder(&env),
        |h: &Option<String>| h.as_ref().is_some_and(|h| operator_names.contains(h)),
    )
    .await
    .unwrap_or_default();
    eprintln!("operator replicas {operator_names:?}, leader {leader}");

    // `kubectl apply -f examples/app/`.
    for file in ["00-namespace.yaml", "10-frontend.yaml", "20-backend.yaml"] {
        apply_example(&env, file).await;
    }
    let frontend = app_pod(&env, "app=frontend").await;
    let backend_v1 = app_pod(&env, "app=backend,version=v1").await;
    let backend_v2 = app_pod(&env, "app=backend,version=v2").await;
    eprintln!("app pods {frontend} {backend_v1} {backend_v2}");

    // Before any split: the plain Service answers with both versions.
    eventually(
        "backend answers with both versions",
        Duration::from_secs(60),
        || frontend_calls(&env, &frontend, 40),
        |l: &Vec<String>| all_ok(l) && share(l, "backend v1") > 0.0 && share(l, "backend v2") > 0.0,
    )
    .await;

    // The canary, step by step (examples/app/canary).
    assert_eq!(
        canary_step(&env, &frontend, "1-v1-100-v2-0.yaml", 100, 0).await,
        0.0
    );
    let s = canary_step(&env, &frontend, "2-v1-90-v2-10.yaml", 90, 10).await;
    assert!((0.03..=0.20).contains(&s), "90/10 measured {s}");
    let s = canary_step(&env, &frontend, "3-v1-50-v2-50.yaml", 50, 50).await;
    assert!((0.35..=0.65).contains(&s), "50/50 measured {s}");
    assert_eq!(
        canary_step(&env, &frontend, "4-v1-0-v2-100.yaml", 0, 100).await,
        1.0
    );

    // The access policy: only the frontend's identity may call the backend.
    env.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "intruder", "namespace": NS}}))
        .await;
    env.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "intruder", "namespace": NS, "labels": {"app": "intruder"}},
        "spec": {"serviceAccountName": "intruder", "containers": [{
            "name": "app", "image": "weft/sample-app:0.1.0",
            "env": [{"name": "APP_NAME", "value": "intruder"}]}]}}))
        .await;
    env.wait_ready(NS, "intruder", Duration::from_secs(90))
        .await;
    let intruder_calls = || async {
        let out = env
            .exec(
                NS,
                "intruder",
                None,
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://backend.demo.svc.cluster.local/",
                ],
            )
            .await;
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(intruder_calls().await, "200", "no policy yet: open");
    apply_example(&env, "policy/access.yaml").await;
    eventually(
        "another caller refused",
        Duration::from_secs(60),
        intruder_calls,
        |code: &String| code == "403",
    )
    .await;
    let lines = frontend_calls(&env, &frontend, 50).await;
    assert!(all_ok(&lines), "the frontend is allowed: {lines:?}");

    // Every proxy (frontend, backends, intruder) connected to some replica and ACKed.
    let meshed: BTreeSet<String> = [&frontend, &backend_v1, &backend_v2]
        .iter()
        .map(|p| format!("{NS}/{p}"))
        .chain([format!("{NS}/intruder")])
        .collect();
    eventually(
        "every proxy ACKed before the failover",
        Duration::from_secs(60),
        || acked_proxies(&env),
        |a: &BTreeSet<String>| meshed.is_subset(a),
    )
    .await;

    failover(&env, &frontend, &leader, &meshed).await;

    env.shutdown().await;
}

/// One SMI write at v1alpha2 (through the conversion and validation webhooks): sets the
/// canary's weights. Ok when the API server accepted it.
async fn write_v1alpha2(env: &KubeEnv, v1: u32, v2: u32) -> Result<(), String> {
    let patch = json!({"spec": {"backends": [
        {"service": "backend-v1", "weight": v1}, {"service": "backend-v2", "weight": v2}]}});
    tokio::time::timeout(
        Duration::from_secs(35),
        split_api(env, "v1alpha2").patch(
            "backend-canary",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ),
    )
    .await
    .map_err(|_| "no answer within 35s".to_string())?
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The leader is killed mid-traffic (see the module comment).
async fn failover(env: &KubeEnv, frontend: &str, leader: &str, meshed: &BTreeSet<String>) {
    let bound = LEASE_DURATION + RETRY_PERIOD + PROPAGATION;
    let done = AtomicBool::new(false);
    // Traffic from the frontend, continuously, until the failover is over.
    let traffic = async {
        let mut all = Vec::new();
        while !done.load(Ordering::SeqCst) {
            all.extend(frontend_calls(env, frontend, 20).await);
        }
        all
    };
    // SMI writes at v1alpha2, every 250 ms: (time since the kill, refused?).
    let killed_at = std::sync::OnceLock::<Instant>::new();
    let writes = async {
        let mut results: Vec<(Duration, Result<(), String>)> = Vec::new();
        let mut flip = false;
        while !done.load(Ordering::SeqCst) {
            flip = !flip;
            let (a, b) = if flip { (50, 50) } else { (40, 60) };
            let r = write_v1alpha2(env, a, b).await;
            if let Some(t) = killed_at.get() {
                results.push((t.elapsed(), r));
            } else {
                assert!(r.is_ok(), "SMI write refused before the failover: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        results
    };
    let drive = async {
        // Let traffic and writes run, then crash the leader.
        tokio::time::sleep(Duration::from_secs(2)).await;
        env.crash_pod(SYSTEM, leader).await;
        let _ = killed_at.set(Instant::now());
        eprintln!("killed the leader {leader} (SIGKILL, pod deleted; Lease not released)");
        // Another replica takes the Lease over.
        let new_leader = eventually(
            "another replica holds the Lease",
            bound + Duration::from_secs(30),
            || lease_holder(env),
            |h: &Option<String>| h.as_ref().is_some_and(|h| h != leader),
        )
        .await
        .unwrap_or_default();
        let took = killed_at.get().map(Instant::elapsed).unwrap_or_default();
        eprintln!("failover: {new_leader} holds the Lease {took:?} after the kill");
        assert!(
            took <= bound,
            "the Lease moved {took:?} after the kill; documented bound {bound:?}"
        );
        // Keep writing and sending a little longer under the new leader.
        tokio::time::sleep(Duration::from_secs(3)).await;
        done.store(true, Ordering::SeqCst);
        (new_leader, took)
    };
    let (during, writes, (new_leader, took)) = tokio::join!(traffic, writes, drive);

    let failed: Vec<&String> = during
        .iter()
        .filter(|l| !l.starts_with("200 backend v"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed during the failover: {failed:?}",
        failed.len(),
        during.len()
    );
    assert!(during.len() >= 40, "too little traffic: {}", during.len());
    let refused: Vec<&(Duration, Result<(), String>)> =
        writes.iter().filter(|(_, r)| r.is_err()).collect();
    let window = match (refused.first(), refused.last()) {
        (Some((first, _)), Some((last, _))) => *last - *first + Duration::from_millis(250),
        _ => Duration::ZERO,
    };
    eprintln!(
        "failover: {} calls during it, all 200; {} SMI writes, {} refused, refused window {window:?} (first refusal: {:?}); Lease moved after {took:?}",
        during.len(),
        writes.len(),
        refused.len(),
        refused.first().map(|(_, r)| r.clone()),
    );
    assert!(
        writes.iter().any(|(_, r)| r.is_ok()),
        "no SMI write accepted after the kill: {writes:?}"
    );
    assert!(
        window <= bound,
        "SMI writes refused for {window:?}, longer than the documented {bound:?}: {refused:?}"
    );

    // The new leader writes status: a change's generation is observed.
    write_v1alpha2(env, 30, 70)
        .await
        .unwrap_or_else(|e| panic!("SMI write after the failover: {e}"));
    let (observed, generation) = eventually(
        "the new leader writes status for a new generation",
        Duration::from_secs(60),
        || observed_and_generation(env),
        |(o, g): &(Option<i64>, Option<i64>)| o.is_some() && o == g,
    )
    .await;
    eprintln!(
        "status: observedGeneration {observed:?} = generation {generation:?} under {new_leader}"
    );

    // Every proxy reconnected (to a surviving or new replica) and ACKed.
    let acked = eventually(
        "every proxy connected and ACKed after the failover",
        Duration::from_secs(60),
        || acked_proxies(env),
        |a: &BTreeSet<String>| meshed.is_subset(a),
    )
    .await;
    eprintln!("proxies ACKed after the failover: {acked:?}");
    let lines = frontend_calls(env, frontend, 100).await;
    assert!(all_ok(&lines), "after the failover: {lines:?}");
    let s = share(&lines, "backend v2");
    assert!((0.5..=0.9).contains(&s), "30/70 measured {s}");
}
