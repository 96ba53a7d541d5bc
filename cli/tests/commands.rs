//! Each `weft` command run as a process, asserting on what it prints and its exit status.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running weft")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Serves `routes` (path → (content type, body)) over HTTP/1.1 for `n` connections.
/// A fake admin server that answers its i-th connection with `bodies[i]` (whatever the path),
/// then stops.
fn fake_admin_seq(bodies: Vec<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for (stream, body) in listener.incoming().zip(bodies) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                    break;
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn fake_admin(routes: Vec<(&'static str, String)>, n: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (status, body) = routes
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, b)| ("200 OK", b.clone()))
                .unwrap_or(("404 Not Found", String::new()));
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn crds_prints_exactly_the_committed_yaml() {
    let o = weft(&["crds"]);
    assert!(o.status.success());
    let committed = std::fs::read_to_string(repo().join("crds/smi.yaml")).expect("crds/smi.yaml");
    assert!(
        stdout(&o) == committed,
        "`weft crds` differs from crds/smi.yaml"
    );
}

#[test]
fn compile_reports_proxies_and_accepted_objects() {
    let o = weft(&["compile", "-f", "examples/canary", "-o", "json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["proxies"].as_object().is_some_and(|p| !p.is_empty()));
    let objects = v["objects"].as_array().expect("objects");
    assert!(objects.iter().any(|o| o["kind"] == "TrafficSplit"));

    let one = weft(&["compile", "-f", "examples/canary", "--proxy", "no/such-pod"]);
    assert_eq!(one.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&one.stderr).contains("no meshed pod no/such-pod"));
}

#[test]
fn compile_shows_reliability_policy_and_invalid_annotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations:
    weft.io/retries: "2"
    weft.io/rate-limit: "fast"
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  annotations:
    weft.io/retry-statuses: "5xx"
    weft.io/failure-accrual-backoff: "60s-1s"
    weft.io/inbound-max-concurrent-requests: "8"
spec:
  clusterIP: 10.96.0.9
  selector: {app: api}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: api-0
  namespace: shop
  labels: {app: api, weft.io/proxy-version: "0.1.0"}
spec:
  containers: [{name: app, image: app}]
status:
  podIP: 10.0.0.9
  conditions: [{type: Ready, status: "True"}]
"#;
    std::fs::write(dir.path().join("shop.yaml"), yaml).expect("write");
    let path = dir.path().to_string_lossy().into_owned();
    let o = weft(&["compile", "-f", &path, "-o", "json"]);
    // Invalid annotations are warnings: the exit code is unchanged.
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let text = v.to_string();
    // The effective policy: the Namespace's retries, the Service's statuses, the default
    // backoff in place of the invalid one; the inbound limit on the targeted port.
    assert!(text.contains(r#""max_retries":2"#), "{text}");
    assert!(
        text.contains(r#""retry_statuses":[{"max":599,"min":500}]"#)
            || text.contains(r#""retry_statuses":[{"min":500,"max":599}]"#),
        "{text}"
    );
    assert!(text.contains(r#""min_backoff_ms":1000"#), "{text}");
    assert!(text.contains(r#""max_concurrent_requests":8"#), "{text}");
    let events = v["events"].as_array().expect("events");
    let find = |kind: &str, ann: &str| {
        events.iter().any(|e| {
            e["object"]["kind"] == kind
                && e["reason"] == "InvalidAnnotation"
                && e["message"].as_str().is_some_and(|m| m.starts_with(ann))
        })
    };
    assert!(
        find("Service", "weft.io/failure-accrual-backoff: \"60s-1s\""),
        "{events:?}"
    );
    assert!(
        find("Namespace", "weft.io/rate-limit: \"fast\""),
        "{events:?}"
    );
}

#[test]
fn diff_names_the_changed_weights_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(repo().join("examples/canary")).expect("examples") {
        let entry = entry.expect("entry");
        let text = std::fs::read_to_string(entry.path()).expect("read");
        let text = text
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50");
        std::fs::write(dir.path().join(entry.file_name()), text).expect("write");
    }
    let new = dir.path().to_string_lossy().into_owned();
    let o = weft(&["diff", "-f", &new, "-f", "examples/canary"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("weight: 90 -> 50"), "{text}");
    assert!(text.contains("weight: 10 -> 50"), "{text}");

    let same = weft(&["diff", "-f", "examples/canary", "-f", "examples/canary"]);
    assert_eq!(same.status.code(), Some(0));
}

/// `weft` with no cluster configuration at all.
fn weft_no_cluster(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(repo())
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("HOME", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("running weft")
}

#[test]
fn inject_without_trust_anchors_or_a_cluster_refuses_naming_both_options() {
    let o = weft_no_cluster(&["inject", "-f", "examples/canary/20-pods.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty(), "nothing half-injected is printed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--trust-anchors") && err.contains("--kubeconfig"),
        "{err}"
    );
}

#[test]
fn inject_is_idempotent_and_labels_the_pod() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = weft_common::ca::generate_ca("cluster.local").expect("CA");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &bundle.ca_cert_pem).expect("write");
    let ca = ca.to_string_lossy().to_string();
    let once = weft(&[
        "inject",
        "-f",
        "examples/canary/20-pods.yaml",
        "--trust-anchors",
        &ca,
    ]);
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let text = stdout(&once);
    assert!(text.contains("name: weft-proxy"));
    assert!(text.contains("weft.io/proxy-version"));
    let f = dir.path().join("once.yaml");
    std::fs::write(&f, &text).expect("write");
    let twice = weft(&["inject", "-f", &f.to_string_lossy(), "--trust-anchors", &ca]);
    assert_eq!(stdout(&twice), text, "re-injecting changes nothing");
}

#[test]
fn inject_with_trust_anchors_sets_them_on_the_proxy_and_stays_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = weft_common::ca::generate_ca("cluster.local").expect("CA");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &bundle.ca_cert_pem).expect("write");
    let ca = ca.to_string_lossy().to_string();
    let once = weft(&[
        "inject",
        "-f",
        "examples/canary/20-pods.yaml",
        "--trust-anchors",
        &ca,
    ]);
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let text = stdout(&once);
    assert!(text.contains("WEFT_PROXY_TRUST_ANCHORS"));
    assert!(text.contains("BEGIN CERTIFICATE"));
    let f = dir.path().join("once.yaml");
    std::fs::write(&f, &text).expect("write");
    let twice = weft(&["inject", "-f", &f.to_string_lossy(), "--trust-anchors", &ca]);
    assert_eq!(stdout(&twice), text, "re-injecting changes nothing");

    // A private key is refused, never copied into a pod spec.
    let key = dir.path().join("issuer.key");
    std::fs::write(&key, &bundle.issuer_key_pem).expect("write");
    let bad = weft(&[
        "inject",
        "-f",
        "examples/canary/20-pods.yaml",
        "--trust-anchors",
        &key.to_string_lossy(),
    ]);
    assert!(!bad.status.success());
    assert!(stdout(&bad).is_empty());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("CA certificates only"));
}

#[test]
fn install_has_fresh_certificates_each_time() {
    let a = stdout(&weft_no_cluster(&["install"]));
    let b = stdout(&weft_no_cluster(&["install"]));
    assert!(a.contains("kind: Deployment") && a.contains("name: weft-identity"));
    assert!(!a.contains("WEFT_CA_BUNDLE_PLACEHOLDER"));
    assert_ne!(a, b, "certificates are generated on every run");
    // Offline, for the newest version unless told otherwise.
    assert!(a.contains("apiVersion: policy/v1\nkind: PodDisruptionBudget"));
    let old = stdout(&weft_no_cluster(&["install", "--kube-version", "1.20"]));
    assert!(old.contains("apiVersion: policy/v1beta1\nkind: PodDisruptionBudget"));
    // An explicit kubeconfig that cannot be read is an error, not a silent fresh identity.
    let o = weft_no_cluster(&["install", "--kubeconfig", "/nonexistent/kc"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/kc"));
}

#[test]
fn every_binary_answers_version() {
    let o = weft(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("weft {}", env!("CARGO_PKG_VERSION"))
    );
    let o = weft_no_cluster(&["version"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    assert!(
        text.contains(&format!("client: weft {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("cluster: not shown"), "{text}");
}

#[test]
fn proxies_orders_nacking_first_and_fails_when_not_in_sync() {
    let json = r#"[{"pod":"demo/ok","last_sent_version":"a","last_acked_version":"a"},
                  {"pod":"demo/bad","last_sent_version":"b","last_acked_version":"a","last_nack_error":"invalid path_regex"}]"#;
    let addr = fake_admin(vec![("/proxies", json.to_string())], 1);
    let o = weft(&["proxies", "--operator", &addr]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    let bad = text.find("demo/bad").expect("bad listed");
    let ok = text.find("demo/ok").expect("ok listed");
    assert!(bad < ok, "NACKing proxies first:\n{text}");
    assert!(text.contains("invalid path_regex"));
}

#[test]
fn proxies_explains_an_unreachable_operator() {
    let o = weft(&["proxies", "--admin-addr", "127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("connection refused"),
        "names the address and the cause: {err}"
    );
    assert!(err.contains("--kubeconfig"), "and the next step: {err}");
    assert!(!err.contains("Os {") && !err.contains('\u{1b}'), "{err}");

    // No --admin-addr and no cluster: says both ways.
    let o = weft_no_cluster(&["proxies"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--kubeconfig") && err.contains("--admin-addr"),
        "{err}"
    );
}

#[test]
fn errors_and_logs_carry_no_colour_into_files() {
    // stderr is a pipe here: a warning logged by tracing must carry no escape sequence.
    let o = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxies", "--admin-addr", "127.0.0.1:1"])
        .env("WEFT_LOG", "debug")
        .output()
        .expect("running weft");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn stat_computes_rates_from_two_scrapes() {
    let scrape = |n: u32| {
        format!(
            "weft_proxy_requests_total{{direction=\"outbound\",authority=\"api.demo\",route=\"default\",backend=\"api-v1\",status_class=\"2xx\",peer=\"p\"}} {n}\n"
        )
    };
    // The fake serves the first scrape on the first connection, the second on the next.
    let listener_a = fake_admin(vec![("/metrics", scrape(100))], 1);
    let o = weft(&[
        "stat",
        "--proxy-admin",
        &listener_a,
        "--window",
        "1s",
        "-o",
        "json",
    ]);
    // One connection only: the second scrape fails, which must be a clear error, not a panic.
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));

    let listener_b = fake_admin(vec![("/metrics", scrape(100))], 2);
    let o = weft(&[
        "stat",
        "--proxy-admin",
        &listener_b,
        "--window",
        "1s",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    // #18: no stale rows: nothing changed between the scrapes, so there is no row.
    assert_eq!(rows, serde_json::json!([]), "no change between scrapes");

    // 100 then 160 requests: one row, 60 requests.
    let listener_c = fake_admin_seq(vec![scrape(100), scrape(160)]);
    let o = weft(&[
        "stat",
        "--proxy-admin",
        &listener_c,
        "--window",
        "1s",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(rows[0]["name"], "api.demo -> api-v1", "{rows}");
    assert_eq!(rows[0]["requests"], 60, "{rows}");
}

#[test]
fn check_fails_clearly_without_a_cluster() {
    let o = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["check", "--pre"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("running weft");
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("FAIL kubernetes-api"), "{}", stdout(&o));
}

#[test]
fn diff_against_the_cluster_needs_a_kubeconfig() {
    let o = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["diff", "-f", "examples/canary", "--cluster"])
        .current_dir(repo())
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("running weft");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kubeconfig"));
}
