//! A GRPCRoute in `--manifests` mode, through the operator runtime on loopback with a real gRPC
//! proxy client: its rule reaches the proxy as the parent Service's route (weights, the path its
//! method match means), an edit is pushed, and its `status.parents` is served on `/status`.

mod runtime_support;

use runtime_support::*;
use weft_operator::runtime::{Runtime, RuntimeConfig};
use weft_proxy_api::v1;

/// `web`, `web-v1`, `web-v2` with a gRPC port (a GRPCRoute attaches only to those).
fn grpc_services() -> String {
    services().replace("name: http,", "name: grpc,")
}

fn grpc_route(w1: u64, w2: u64) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: demo, generation: 1}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - matches: [{{method: {{service: grpc.Echo, method: Ping}}}}]
    backendRefs:
    - {{name: web-v1, port: 80, weight: {w1}}}
    - {{name: web-v2, port: 80, weight: {w2}}}
"#
    )
}

/// (path regexes, backends as (service, weight)) of a route.
type Rule = (Vec<String>, Vec<(String, u64)>);

/// The GRPCRoute's route of `outbound:web.demo`, if sent.
fn grpc_rule(r: &v1::DiscoveryResponse) -> Option<Rule> {
    let res = r.resources.iter().find(|x| x.name == "outbound:web.demo")?;
    let Some(v1::resource::Kind::Outbound(out)) = &res.kind else {
        return None;
    };
    let route = out
        .ports
        .iter()
        .flat_map(|p| p.routes.iter())
        .find(|route| route.name == "grpcroute:demo/echo/rule-0")?;
    Some((
        route.matches.iter().map(|m| m.path_regex.clone()).collect(),
        route
            .backends
            .iter()
            .map(|b| (b.service.clone(), b.weight))
            .collect(),
    ))
}

#[tokio::test]
async fn a_grpc_route_reaches_the_proxy_and_its_status_is_served() {
    let dir = mesh_dir();
    write_atomic(&dir.path().join("services.yaml"), &grpc_services());
    std::fs::remove_file(dir.path().join("split.yaml")).expect("remove split");
    write_atomic(&dir.path().join("grpc.yaml"), &grpc_route(30, 70));
    let rt = Runtime::start(RuntimeConfig::manifests_on_loopback(dir.path()))
        .await
        .expect("runtime starts");
    until(rt.admin_addr, "/ready", |code, _| code == 200).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "web-0").await;

    let first = proxy.next().await;
    let (paths, backends) = grpc_rule(&first).expect("the GRPCRoute's route");
    assert_eq!(paths, vec![r"/grpc\.Echo/Ping$".to_string()]);
    assert_eq!(
        backends,
        vec![("web-v1".to_string(), 30), ("web-v2".to_string(), 70)]
    );
    proxy.ack(&first).await;

    write_atomic(&dir.path().join("grpc.yaml"), &grpc_route(0, 100));
    let push = proxy.next().await;
    assert_eq!(
        grpc_rule(&push).map(|r| r.1),
        Some(vec![("web-v1".to_string(), 0), ("web-v2".to_string(), 100)])
    );

    let body = until(rt.admin_addr, "/status", |_, b| b.contains("GRPCRoute")).await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    let route = status["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["object"]["kind"] == "GRPCRoute")
        .expect("GRPCRoute status");
    assert_eq!(route["object"]["name"], "echo");
    let accepted = route["parents"][0]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Accepted")
        .expect("Accepted")
        .clone();
    assert_eq!(accepted["status"], "True", "{route}");
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}
