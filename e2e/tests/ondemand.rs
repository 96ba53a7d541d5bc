//! Issue #19, on-demand discovery: a proxy learns only the Services it uses.
//!
//! Real processes on loopback (see `weft_e2e::loopback`): `weft-operator --manifests
//! --discovery-mode on-demand`, a client proxy with `WEFT_PROXY_DISCOVERY_MODE=on-demand`, and
//! push-all proxies next to it (the operator serves those as before). Build them first:
//! `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use weft_e2e::loopback::{http_get, LoopbackMesh, MeshSpec, PodSpec, ServiceSpec};

const NS: &str = "od";

/// client-0 on demand; web-0, api-0, other-0 push-all, each behind its own Service.
fn spec() -> MeshSpec {
    let mut s = MeshSpec::new(NS)
        .operator_arg("--discovery-mode")
        .operator_arg("on-demand")
        .pod(
            PodSpec::new("client-0", "client", 10)
                .proxy_env("WEFT_PROXY_DISCOVERY_MODE", "on-demand")
                .proxy_env("WEFT_PROXY_ON_DEMAND_WAIT", "2s"),
        );
    for (i, name) in ["web", "api", "other"].into_iter().enumerate() {
        s = s
            .pod(
                PodSpec::new(&format!("{name}-0"), name, 20 + i as u8)
                    .label("app", name)
                    .http_app(8080, name, "v1"),
            )
            .service(ServiceSpec::new(name, 8080).select("app", name));
    }
    s
}

/// `<name>.<namespace>` of every outbound service in a proxy's `/config`.
async fn services_of(mesh: &LoopbackMesh, pod: &str) -> BTreeSet<String> {
    let config = mesh.proxy_config(pod).await;
    config["config"]["outbound"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["authority"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Endpoint set names in a proxy's `/config`.
async fn endpoint_sets_of(mesh: &LoopbackMesh, pod: &str) -> BTreeSet<String> {
    let config = mesh.proxy_config(pod).await;
    config["config"]["endpoints"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The operator's `/proxies` entry of `pod`.
async fn proxy_entry(mesh: &LoopbackMesh, pod: &str) -> Value {
    let r = http_get(mesh.operator_admin(), "/proxies")
        .await
        .unwrap_or_else(|e| panic!("/proxies: {e}"));
    let all: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let want = format!("{NS}/{pod}");
    all.as_array()
        .and_then(|a| a.iter().find(|p| p["pod"] == want.as_str()).cloned())
        .unwrap_or_else(|| panic!("{pod} not in /proxies: {all}"))
}

fn pod_yaml(name: &str, app: &str, ip: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n    app: {app}\n    weft.io/proxy-version: v0.1.0\n\
         spec:\n  serviceAccountName: {app}\n  containers:\n    - name: app\n      image: weft/test-app\n\
         status:\n  phase: Running\n  podIP: {ip}\n  conditions:\n    - type: Ready\n      status: \"True\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_proxy_learns_only_what_it_calls_and_nothing_else_is_pushed() {
    let mesh = LoopbackMesh::start(spec()).await;
    let all: BTreeSet<String> = ["api.od", "other.od", "web.od"]
        .into_iter()
        .map(str::to_owned)
        .collect();

    // A push-all proxy next to it holds every Service; the on-demand one none yet.
    assert_eq!(services_of(&mesh, "web-0").await, all);
    assert!(services_of(&mesh, "client-0").await.is_empty());
    let entry = proxy_entry(&mesh, "client-0").await;
    assert_eq!(entry["on_demand"], true, "{entry}");
    assert_eq!(entry["on_demand"], true);
    assert_eq!(proxy_entry(&mesh, "web-0").await["on_demand"], false);

    // The first request to a Service it never saw succeeds.
    let rsp = mesh
        .get_via("client-0", &mesh.authority("web", 8080), "/", &[])
        .await
        .unwrap_or_else(|e| panic!("first request: {e}\n{}", mesh.logs()));
    assert_eq!(rsp.status, 200, "{}\n{}", rsp.body_text(), mesh.logs());
    assert!(rsp.body_text().contains("web"), "{}", rsp.body_text());
    assert_eq!(
        services_of(&mesh, "client-0").await,
        BTreeSet::from(["web.od".to_string()])
    );
    assert_eq!(
        endpoint_sets_of(&mesh, "client-0").await,
        BTreeSet::from(["endpoints:web.od:8080".to_string()])
    );

    // An endpoint change in a Service it does not use: the push-all proxy gets it, the
    // on-demand proxy is sent nothing.
    let before = proxy_entry(&mesh, "client-0").await;
    let witness = mesh.proxy_config_version("web-0").await;
    mesh.write_manifest("other-1.yaml", &pod_yaml("other-1", "other", mesh.ip(40)));
    assert!(
        mesh.wait_config_change("web-0", witness.as_deref(), Duration::from_secs(30))
            .await,
        "the push-all proxy never saw the change:\n{}",
        mesh.logs()
    );
    // A barrier: a watch sent now is answered from the latest snapshot (the one with the
    // change), so after it the on-demand stream has looked at that snapshot.
    let rsp = mesh
        .get_via("client-0", &mesh.authority("api", 8080), "/", &[])
        .await
        .unwrap_or_else(|e| panic!("request to api: {e}"));
    assert_eq!(rsp.status, 200, "{}", rsp.body_text());
    let after = proxy_entry(&mesh, "client-0").await;
    assert_eq!(
        after["pushes"].as_u64(),
        before["pushes"].as_u64().map(|p| p + 1),
        "only the answer to the watch of api was pushed: before {before}, after {after}"
    );
    let services = services_of(&mesh, "client-0").await;
    assert!(!services.contains("other.od"), "{services:?}");
    assert!(!endpoint_sets_of(&mesh, "client-0")
        .await
        .contains("endpoints:other.od:8080"));
    // And the push-all proxy does hold the new endpoint.
    let web_cfg = mesh.proxy_config("web-0").await;
    let other_eps = web_cfg["config"]["endpoints"]["endpoints:other.od:8080"].to_string();
    assert!(other_eps.contains(&mesh.ip(40).to_string()), "{other_eps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_a_clear_503_after_the_bounded_wait_and_addresses_resolve() {
    let mesh = LoopbackMesh::start(spec()).await;

    // A Service that never exists: 503 naming the bounded wait, nothing sent anywhere.
    let rsp = mesh
        .get_via("client-0", "nosuch.od.svc.cluster.local:8080", "/", &[])
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(rsp.status, 503, "{}", rsp.body_text());
    assert!(
        rsp.body_text().contains("on-demand discovery"),
        "{}",
        rsp.body_text()
    );
    assert!(services_of(&mesh, "client-0").await.is_empty());

    // By ClusterIP (what a transparent connection resolves): the `ip:` watch brings the
    // Service whose ClusterIP it is, and the request goes through.
    let push_all = mesh.proxy_config("web-0").await;
    let api_ip = push_all["config"]["outbound"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["authority"] == "api.od"))
        .and_then(|s| s["cluster_ips"][0].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no ClusterIP for api in {push_all}"));
    let rsp = mesh
        .get_via("client-0", &format!("{api_ip}:8080"), "/", &[])
        .await
        .unwrap_or_else(|e| panic!("request by address: {e}"));
    assert_eq!(rsp.status, 200, "{}\n{}", rsp.body_text(), mesh.logs());
    assert!(rsp.body_text().contains("api"), "{}", rsp.body_text());
    let config = mesh.proxy_config("client-0").await;
    assert_eq!(
        config["config"]["resolved_ips"],
        serde_json::json!([api_ip]),
        "{config}"
    );
    assert_eq!(
        services_of(&mesh, "client-0").await,
        BTreeSet::from(["api.od".to_string()])
    );
    // `outbound:nosuch.od` and `ip:<api>`.
    assert_eq!(proxy_entry(&mesh, "client-0").await["watched"], 2);
}
