//! Issue #14, "the proxy's config is not its state": the real `weft-proxy` binary on loopback,
//! fed by a fake operator, balances real traffic to two services; then the operator pushes an
//! endpoint change for ONE of them. The other service's balancer estimates and retry budget —
//! read from the proxy's admin `GET /state` — are exactly what they were before the push, and
//! the changed service keeps its budget and the estimate of the endpoint that stayed.
//!
//! Nothing here measures time: estimates are compared for equality before and after the push
//! (an estimate only moves when a response is observed, and no request runs in between).

mod control_support;
mod process_support;

use std::net::SocketAddr;

use control_support::*;
use process_support::*;
use serde_json::Value;
use weft_proxy_api::v1;

/// `outbound:<name>.demo` on port 80, one catch-all route to `endpoints:<name>.demo:80`, with
/// a retry budget that grows by half a retry per request.
fn service(name: &str) -> v1::Resource {
    v1::Resource {
        name: format!("outbound:{name}.demo"),
        version: format!("out-{name}"),
        kind: Some(v1::resource::Kind::Outbound(v1::OutboundService {
            namespace: "demo".into(),
            name: name.into(),
            cluster_ips: vec![],
            ports: vec![v1::OutboundPort {
                port: 80,
                protocol: v1::Protocol::Http1 as i32,
                routes: vec![v1::Route {
                    name: "default".into(),
                    matches: vec![],
                    backends: vec![v1::WeightedBackend {
                        service: name.into(),
                        weight: 1,
                        endpoint_set: format!("endpoints:{name}.demo:80"),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }],
            policy: Some(v1::TrafficPolicy {
                request_timeout_ms: 10_000,
                max_retries: 0,
                retry_budget_ratio: 0.5,
                retry_non_idempotent: false,
                ..Default::default()
            }),
        })),
    }
}

fn ports(addrs: &[SocketAddr]) -> Vec<u16> {
    addrs.iter().map(|a| a.port()).collect()
}

/// `GET /state` as JSON.
async fn state(proxy: &ProxyProcess) -> Value {
    let body = proxy.admin_until("/state", |status, _| status == 200).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/state is not JSON ({e}): {body}"))
}

/// Sends `n` requests for `host` through the proxy's outbound listener; every one must be
/// answered by one of the service's backends.
async fn traffic(proxy: &ProxyProcess, host: &str, n: usize) {
    for _ in 0..n {
        let (status, body) = http_get(proxy.outbound, "/", host)
            .await
            .unwrap_or_else(|e| panic!("GET {host}: {e}; proxy log:\n{}", proxy.log()));
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.starts_with("backend-"), "{host}: {body}");
    }
}

fn endpoint<'v>(state: &'v Value, set: &str, addr: SocketAddr) -> &'v Value {
    state["state"]["endpoints"][set]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["addr"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no endpoint {addr} in {set}: {state}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_change_for_one_service_keeps_the_others_balancer_state_and_budget() {
    let mut op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let proxy = ProxyProcess::start(&op.uri()).await;
    let api = [backend().await, backend().await];
    let web = [backend().await, backend().await];
    let web_added = backend().await;

    op.expect_subscribe().await;
    op.push(full_state(
        "n1",
        "v1",
        vec![
            inbound("spiffe://cluster.local/ns/demo/sa/client"),
            service("api"),
            endpoints("demo", "api", 80, &ports(&api)),
            service("web"),
            endpoints("demo", "web", 80, &ports(&web)),
        ],
    ))
    .await;
    assert_eq!(op.expect_ack().await.version, "v1");

    traffic(&proxy, "api.demo", 20).await;
    traffic(&proxy, "web.demo", 20).await;
    let before = state(&proxy).await;
    assert_eq!(before["version"], "v1", "{before}");
    let api_budget = before["state"]["services"]["api.demo"]["retry_budget_milli"].clone();
    let web_budget = before["state"]["services"]["web.demo"]["retry_budget_milli"].clone();
    // Traffic moved the budgets (10 retries in reserve + 20 × 0.5) and the estimates.
    assert_eq!(api_budget, 20_000, "{before}");
    assert_eq!(web_budget, 20_000, "{before}");
    let default_rtt = weft_proxy::balance::DEFAULT_RTT.as_nanos() as f64;
    let api_set = "endpoints:api.demo:80";
    let web_set = "endpoints:web.demo:80";
    let moved = |set: &str, addrs: &[SocketAddr]| {
        addrs
            .iter()
            .any(|a| endpoint(&before, set, *a)["ewma_ns"].as_f64() != Some(default_rtt))
    };
    assert!(moved(api_set, &api), "{before}");
    assert!(moved(web_set, &web), "{before}");

    // Endpoint churn in web.demo only: one endpoint leaves, one arrives.
    op.push(incremental(
        "n2",
        "v2",
        vec![endpoints(
            "demo",
            "web",
            80,
            &[web[0].port(), web_added.port()],
        )],
        vec![],
    ))
    .await;
    assert_eq!(op.expect_ack().await.version, "v2");
    let after = proxy
        .admin_until("/state", |_, body| body.contains("\"version\": \"v2\""))
        .await;
    let after: Value = serde_json::from_str(&after).unwrap_or_else(|e| panic!("{e}: {after}"));

    // The other service: its budget and every endpoint's estimate are exactly as before.
    assert_eq!(
        after["state"]["services"]["api.demo"], before["state"]["services"]["api.demo"],
        "api.demo's retry budget was reset by web.demo's endpoint change"
    );
    assert_eq!(
        after["state"]["endpoints"][api_set], before["state"]["endpoints"][api_set],
        "api.demo's balancer estimates were reset by web.demo's endpoint change"
    );
    // The changed service keeps its budget and the estimate of the endpoint that stayed; the
    // new endpoint starts from the default, the removed one is gone.
    assert_eq!(
        after["state"]["services"]["web.demo"], before["state"]["services"]["web.demo"],
        "{after}"
    );
    assert_eq!(
        endpoint(&after, web_set, web[0]),
        endpoint(&before, web_set, web[0])
    );
    assert_eq!(
        endpoint(&after, web_set, web_added)["ewma_ns"].as_f64(),
        Some(default_rtt)
    );
    let web_after = after["state"]["endpoints"][web_set]
        .as_array()
        .map_or(0, |eps| eps.len());
    assert_eq!(web_after, 2, "{after}");

    // Both services still serve.
    traffic(&proxy, "api.demo", 2).await;
    traffic(&proxy, "web.demo", 2).await;
}
