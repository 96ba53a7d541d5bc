//! The real `weft-proxy` binary against a fake operator on 127.0.0.1: discovery from the
//! scripted fake, identity from the operator's own Certify service with a bootstrap token.

mod control_support;
mod process_support;

use std::net::SocketAddr;
use std::time::Duration;

use control_support::*;
use process_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn config_v1(backend: SocketAddr) -> Vec<weft_proxy_api::v1::Resource> {
    vec![
        inbound("spiffe://cluster.local/ns/demo/sa/web"),
        outbound("demo", "api", 80, "/"),
        endpoints("demo", "api", 80, &[backend.port()]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becomes_ready_shows_config_and_exits_cleanly_on_sigterm() {
    let mut op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut proxy = ProxyProcess::start(&op.uri()).await;

    // Subscribed but no config yet: alive, not ready.
    let sub = op.expect_subscribe().await;
    assert_eq!(
        (sub.pod_namespace.as_str(), sub.pod_name.as_str()),
        ("demo", "web-0")
    );
    assert_eq!(sub.service_account, "web");
    proxy.admin_until("/live", |s, _| s == 200).await;
    let body = proxy.admin_until("/ready", |s, _| s == 503).await;
    assert!(body.starts_with("not ready: "), "{body}");

    op.push(full_state("n1", "v1", config_v1(backend().await)))
        .await;
    let ack = op.expect_ack().await;
    assert_eq!(ack.version, "v1");

    proxy.admin_until("/ready", |s, _| s == 200).await;
    let config = proxy.admin_until("/config", |s, _| s == 200).await;
    let json: serde_json::Value = serde_json::from_str(&config).expect("JSON /config");
    assert_eq!(json["version"], "v1");
    assert_eq!(json["control"]["connected"], true);
    assert_eq!(
        json["identity"]["id"],
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    assert_eq!(
        json["config"]["inbound"]["identity"],
        "spiffe://cluster.local/ns/demo/sa/web"
    );

    let metrics = proxy.admin_until("/metrics", |s, _| s == 200).await;
    assert!(
        metrics.contains("weft_proxy_control_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_proxy_control_config_updates_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weft_proxy_config_info{version="v1"} 1"#),
        "{metrics}"
    );
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");

    let status = proxy.sigterm().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    let log = proxy.log();
    assert!(log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_away_mid_traffic_fails_no_request() {
    let op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let backend = backend().await;
    op.reply_on_subscribe(full_state("n1", "v1", config_v1(backend)));
    let mut proxy = ProxyProcess::start(&op.uri()).await;
    proxy.admin_until("/ready", |s, _| s == 200).await;

    let expected = format!("backend-{}", backend.port());
    let host = "api.demo.svc.cluster.local";
    let send = |n: usize| {
        let outbound = proxy.outbound;
        let expected = expected.clone();
        async move {
            for i in 0..n {
                let (status, body) = http_get(outbound, "/hello", host)
                    .await
                    .unwrap_or_else(|e| panic!("request {i}: {e}"));
                assert_eq!(
                    (status, body.as_str()),
                    (200, expected.as_str()),
                    "request {i}"
                );
            }
        }
    };
    send(20).await;

    // The operator goes away: traffic keeps flowing with the last config.
    let addr = op.stop().await;
    proxy
        .admin_until("/config", |_, body| body.contains(r#""connected": false"#))
        .await;
    send(50).await;
    // Still ready: it holds a certificate and a config.
    proxy.admin_until("/ready", |s, _| s == 200).await;

    // Back: the proxy resubscribes with what it holds, and traffic still flows.
    let mut op = start_operator(addr).await;
    op.reply_on_subscribe(full_state("n2", "v1", config_v1(backend)));
    let sub = op.expect_subscribe().await;
    assert_eq!(sub.known_versions.len(), 3, "{:?}", sub.known_versions);
    op.expect_ack().await;
    send(20).await;

    proxy.stops_cleanly().await;
}

/// A backend that reports each request on `arrived` and answers only once `release` is set.
async fn gated_backend(
    arrived: tokio::sync::mpsc::Sender<()>,
    release: tokio::sync::watch::Receiver<bool>,
) -> SocketAddr {
    http_backend(move |mut stream| {
        let arrived = arrived.clone();
        let mut release = release.clone();
        async move {
            let _ = arrived.send(()).await;
            let _ = release.wait_for(|r| *r).await;
            let resp = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow";
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_in_flight_requests() {
    let op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel(4);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let backend = gated_backend(arrived_tx, release_rx).await;
    op.reply_on_subscribe(full_state("n1", "v1", config_v1(backend)));
    let mut proxy = ProxyProcess::start(&op.uri()).await;
    proxy.admin_until("/ready", |s, _| s == 200).await;

    // One request in flight, held by the backend.
    let outbound = proxy.outbound;
    let in_flight =
        tokio::spawn(
            async move { http_get(outbound, "/slow", "api.demo.svc.cluster.local").await },
        );
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .expect("request reached the backend");

    // SIGTERM: the listener closes, the in-flight request is allowed to finish.
    let pid = proxy.child.id().expect("running");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    tokio::time::timeout(WAIT, async {
        let mut interval = tokio::time::interval(Duration::from_millis(20));
        loop {
            interval.tick().await;
            if TcpStream::connect(outbound).await.is_err() {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("outbound still accepting; log:\n{}", proxy.log()));

    let _ = release.send(true);
    let (status, body) = in_flight
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("in-flight request failed: {e}; log:\n{}", proxy.log()));
    assert_eq!((status, body.as_str()), (200, "slow"));
    let exit = tokio::time::timeout(WAIT, proxy.child.wait())
        .await
        .expect("proxy exits after draining")
        .expect("wait");
    assert_eq!(exit.code(), Some(0), "log:\n{}", proxy.log());
}
