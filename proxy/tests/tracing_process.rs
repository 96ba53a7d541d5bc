//! Issue #18, tracing (`docs/tracing.md`) in the real `weft-proxy` binary: configured by
//! `WEFT_PROXY_TRACE_COLLECTOR`, the outbound proxy's client span reaches a fake OTLP/gRPC
//! collector with the pod's resource attributes, and a span still queued when SIGTERM arrives is
//! flushed before the process exits. A bad collector value stops the proxy at start.

mod control_support;
mod process_support;
mod trace_support;

use std::net::SocketAddr;

use control_support::WAIT;
use control_support::*;
use process_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trace_support::FakeCollector;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_a_client_span_and_flushes_it_on_sigterm() {
    let collector = FakeCollector::start().await;
    let mut op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let uri = collector.uri();
    let mut proxy = ProxyProcess::start_with_env(
        &op.uri(),
        &[
            ("WEFT_PROXY_TRACE_COLLECTOR", uri.as_str()),
            ("WEFT_PROXY_WORKLOAD", "deployment/web"),
        ],
    )
    .await;
    let _ = op.expect_subscribe().await;
    op.push(full_state(
        "n1",
        "v1",
        vec![
            inbound("spiffe://cluster.local/ns/demo/sa/web"),
            outbound("demo", "api", 80, "/"),
            endpoints("demo", "api", 80, &[backend().await.port()]),
        ],
    ))
    .await;
    let _ = op.expect_ack().await;
    proxy.admin_until("/ready", |s, _| s == 200).await;
    let metrics = proxy.admin_until("/metrics", |s, _| s == 200).await;
    assert!(
        metrics.contains(r#"weft_proxy_trace_spans_dropped_total{reason="queue_full"} 0"#),
        "{metrics}"
    );

    // One traced request through the outbound listener.
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    let req = format!(
        "GET / HTTP/1.1\r\nHost: api.demo:80\r\ntraceparent: 00-{TRACE}-b7ad6b7169203331-01\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut rsp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rsp))
        .await
        .expect("response in time")
        .expect("read");
    let rsp = String::from_utf8_lossy(&rsp);
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");

    // Stopped at once: the exporter is still batching (up to 1 s); the span goes out in the
    // shutdown flush.
    let status = proxy.sigterm().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    let spans = collector.wait_for(TRACE, 1).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.parent_id(), "b7ad6b7169203331");
    assert_eq!(span.attr("weft.direction").as_deref(), Some("outbound"));
    assert_eq!(
        span.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(span.resource["service.name"], "web.demo");
    assert_eq!(span.resource["k8s.pod.name"], "web-0");
    assert_eq!(span.resource["k8s.namespace.name"], "demo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_not_a_url_stops_the_proxy_at_start() {
    let op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut proxy = ProxyProcess::start_to_fail(
        &op.uri(),
        &[("WEFT_PROXY_TRACE_COLLECTOR", "collector.tracing:4317")],
    );
    let status = tokio::time::timeout(WAIT, proxy.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(2), "exit code of a configuration error");
    // The child's stderr is read by a task: give it until the line is in.
    let said = tokio::time::timeout(WAIT, async {
        while !proxy.log().contains("WEFT_PROXY_TRACE_COLLECTOR") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(said.is_ok(), "log:\n{}", proxy.log());
}
