//! #18 labels: who calls whom, on real proxies on loopback.
//!
//! The mesh (`edges`): `web-0` (service account `web`, workload `deployment/web`, no app) calls
//! the `api` service, whose one pod `api-0` (service account `api`, `deployment/api`: owned by
//! ReplicaSet `api-5d8f7c9b4` in the manifests, as a Deployment's pod is) runs the HTTP test app.
//! An unmeshed client speaks plaintext to `api-0`'s inbound port.
//!
//! - The labels on the wire: the caller's requests appear on `api-0`'s inbound series with
//!   `tls="true"` and web's `client_id`, on `web-0`'s outbound series with `dst_pod`,
//!   `dst_deployment` and `server_id`; the unmeshed client's with `tls="false"`, no `client_id`.
//! - `weft edges` and `weft stat --from/--to` (the real `weft` binary, reading the proxies' admin
//!   ports) report the traffic sent inside their window exactly, with the identities right.
//!
//! Build first: `cargo build -p weft-proxy -p weft-operator -p weft-e2e -p weft-cli --bins`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use weft_e2e::loopback::{http_get, http_raw, LoopbackMesh, MeshSpec, PodSpec, ServiceSpec};

const NS: &str = "edges";
/// Requests from the meshed caller, and from the unmeshed one.
const MESHED: usize = 7;
const UNMESHED: usize = 3;

async fn mesh() -> LoopbackMesh {
    LoopbackMesh::start(
        MeshSpec::new(NS)
            .pod(PodSpec::new("web-0", "web", 10).workload("deployment/web"))
            .pod(
                PodSpec::new("api-0", "api", 20)
                    .workload("deployment/api")
                    .label("app", "api")
                    .http_app(8080, "api", "v1"),
            )
            .service(ServiceSpec::new("api", 8080).select("app", "api")),
    )
    .await
}

/// Sends the test's traffic: [`MESHED`] requests from web-0 to the api service, [`UNMESHED`]
/// plaintext requests straight to api-0's inbound port. Every one must be answered 200.
async fn traffic(mesh: &LoopbackMesh) {
    let t = mesh
        .tally("web-0", &mesh.authority("api", 8080), "/", &[], MESHED)
        .await;
    assert_eq!(t.status(200), MESHED as u64, "{t:?}\n{}", mesh.logs());
    let req = format!(
        "GET / HTTP/1.1\r\nHost: api.{NS}.svc.cluster.local:8080\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..UNMESHED {
        let r = http_raw(
            mesh.pod("api-0").inbound(),
            req.as_bytes(),
            Duration::from_secs(15),
        )
        .await
        .unwrap_or_else(|e| panic!("plaintext to api-0's inbound: {e}\n{}", mesh.logs()));
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
}

async fn metrics(mesh: &LoopbackMesh, pod: &str) -> String {
    http_get(mesh.pod(pod).admin(), "/metrics")
        .await
        .unwrap_or_else(|e| panic!("{pod} /metrics: {e}"))
        .body_text()
}

/// The value of the one series of `family` whose labels include every `labels` pair and none
/// of `absent`; panics when there is not exactly one.
fn value(text: &str, family: &str, labels: &[(&str, &str)], absent: &[&str]) -> f64 {
    let hits: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter(|l| absent.iter().all(|k| !l.contains(&format!(",{k}=\""))))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{family} {labels:?} without {absent:?}: {hits:#?}\n{text}"
    );
    hits[0]
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {}", hits[0]))
}

/// Waits until `pod`'s `response_total` series with `labels` (and none of `absent`) reaches
/// `n`: a response is counted when its stream ends, just after the client read its last byte.
async fn settled(
    mesh: &LoopbackMesh,
    pod: &str,
    labels: &[(&str, &str)],
    absent: &[&str],
    n: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(mesh, pod).await;
        let has = text
            .lines()
            .filter(|l| l.starts_with("response_total{"))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter(|l| absent.iter().all(|k| !l.contains(&format!(",{k}=\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        if has >= n as f64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pod}: response_total {labels:?} stayed at {has}, expected {n}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`traffic`], then waits until both proxies counted every response (`round` rounds so far).
async fn traffic_counted(mesh: &LoopbackMesh, round: usize) {
    traffic(mesh).await;
    let web_id = mesh.spiffe("web");
    let outbound = [("direction", "outbound"), ("dst_pod", "api-0")];
    settled(mesh, "web-0", &outbound, &[], MESHED * round).await;
    let from_web = [("direction", "inbound"), ("client_id", web_id.as_str())];
    settled(mesh, "api-0", &from_web, &[], MESHED * round).await;
    let plain = [("direction", "inbound"), ("tls", "false")];
    settled(mesh, "api-0", &plain, &["client_id"], UNMESHED * round).await;
}

#[tokio::test]
async fn caller_and_callee_labels_are_on_the_wire() {
    let mesh = mesh().await;
    traffic_counted(&mesh, 1).await;
    let web_id = mesh.spiffe("web");
    let api_id = mesh.spiffe("api");
    let api = metrics(&mesh, "api-0").await;
    let web = metrics(&mesh, "web-0").await;
    // The callee's inbound: the meshed caller with its identity over mTLS ...
    let inbound = [
        ("direction", "inbound"),
        ("namespace", NS),
        ("pod", "api-0"),
        ("deployment", "api"),
    ];
    let meshed = [&inbound[..], &[("tls", "true"), ("client_id", &web_id)]].concat();
    assert_eq!(
        value(&api, "request_total", &meshed, &[]),
        MESHED as f64,
        "{api}"
    );
    assert_eq!(
        value(
            &api,
            "response_total",
            &[&meshed[..], &[("status_code", "200")]].concat(),
            &[]
        ),
        MESHED as f64
    );
    // ... and the unmeshed client, plaintext, with no identity.
    let plain = [&inbound[..], &[("tls", "false")]].concat();
    assert_eq!(
        value(&api, "request_total", &plain, &["client_id"]),
        UNMESHED as f64
    );
    // The caller's outbound: the endpoint's pod, workload and identity.
    let outbound = [
        ("direction", "outbound"),
        ("namespace", NS),
        ("pod", "web-0"),
        ("deployment", "web"),
        ("dst_namespace", NS),
        ("dst_service", "api"),
        ("dst_pod", "api-0"),
        ("dst_deployment", "api"),
        ("server_id", &api_id),
        ("tls", "true"),
    ];
    assert_eq!(
        value(&web, "request_total", &outbound, &["client_id"]),
        MESHED as f64,
        "{web}"
    );
    assert_eq!(
        value(&web, "response_latency_ms_count", &outbound, &["client_id"]),
        MESHED as f64
    );
}

/// Starts `weft ARGS` reading both proxies; returns once its first reading is done (its stderr
/// says so), with the child to await.
async fn start_weft(mesh: &LoopbackMesh, args: &[&str]) -> tokio::process::Child {
    let weft = weft_e2e::workspace::target_debug().join("weft");
    assert!(
        weft.is_file(),
        "{} not built (cargo build -p weft-cli --bins)",
        weft.display()
    );
    let mut cmd = tokio::process::Command::new(weft);
    cmd.args(args);
    for pod in ["web-0", "api-0"] {
        cmd.arg("--proxy-admin")
            .arg(mesh.pod(pod).admin().to_string());
    }
    let mut child = cmd
        .args(["--window", "10s", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("weft: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(l)) if l.contains("measuring for") => break,
            Ok(Some(_)) => continue,
            other => panic!("weft {args:?} ended before its first reading: {other:?}"),
        }
    }
    child
}

async fn json_of(child: tokio::process::Child) -> Value {
    let out = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
async fn weft_edges_and_stat_from_to_report_the_window_exactly() {
    let mesh = mesh().await;
    // Traffic before the window: not counted.
    traffic_counted(&mesh, 1).await;
    let edges = start_weft(&mesh, &["edges"]).await;
    let stat = start_weft(
        &mesh,
        &[
            "stat",
            "--from",
            "deploy/web",
            "--to",
            "deploy/api",
            "-n",
            NS,
        ],
    )
    .await;
    let to_api = start_weft(&mesh, &["stat", "--to", "deploy/api"]).await;
    // Inside the 10 s window (counted before it ends: the test fails, rather than pass wrongly,
    // if the machine is too slow for that).
    traffic_counted(&mesh, 2).await;

    let edges = json_of(edges).await;
    let rows = edges.as_array().unwrap_or_else(|| panic!("{edges}"));
    assert_eq!(rows.len(), 2, "{edges:#}");
    let meshed = rows
        .iter()
        .find(|r| r["tls"] == true)
        .unwrap_or_else(|| panic!("{edges:#}"));
    assert_eq!(meshed["src"]["namespace"], NS);
    assert_eq!(meshed["src"]["name"], "deployment/web");
    assert_eq!(meshed["dst"]["name"], "deployment/api");
    assert_eq!(meshed["client_id"], mesh.spiffe("web"));
    assert_eq!(meshed["server_id"], mesh.spiffe("api"));
    assert_eq!(meshed["requests"], MESHED as u64);
    assert_eq!(meshed["success_rate"], 1.0);
    // The callee's proxy counted the same requests from the caller's identity.
    assert_eq!(meshed["server_seen"], MESHED as u64);
    let plain = rows
        .iter()
        .find(|r| r["tls"] == false)
        .unwrap_or_else(|| panic!("{edges:#}"));
    assert_eq!(plain["src"]["name"], "unmeshed");
    assert_eq!(plain["dst"]["name"], "deployment/api");
    assert_eq!(plain["client_id"], "");
    assert_eq!(plain["server_id"], mesh.spiffe("api"));
    assert_eq!(plain["requests"], UNMESHED as u64);

    let stat = json_of(stat).await;
    let rows = stat.as_array().unwrap_or_else(|| panic!("{stat}"));
    assert_eq!(rows.len(), 1, "{stat:#}");
    assert_eq!(
        rows[0]["name"],
        format!("{NS}/deployment/web -> {NS}/deployment/api")
    );
    assert_eq!(rows[0]["direction"], "outbound");
    assert_eq!(rows[0]["requests"], MESHED as u64);
    assert_eq!(rows[0]["success_rate"], 1.0);

    // --to alone: every caller, the unmeshed one too (seen by the callee).
    let to_api = json_of(to_api).await;
    let mut names: Vec<(String, u64)> = to_api
        .as_array()
        .unwrap_or_else(|| panic!("{to_api}"))
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["requests"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            (
                format!("{NS}/deployment/web -> {NS}/deployment/api"),
                MESHED as u64
            ),
            (format!("unmeshed -> {NS}/deployment/api"), UNMESHED as u64),
        ],
        "{to_api:#}"
    );
}
