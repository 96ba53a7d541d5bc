//! Issue #19, "memory given back, and bounded debug output": the real `weft-proxy` binary, fed
//! by a fake operator, holds a mesh of 1,500 Services, then the operator removes all but a few.
//! The proxy keeps serving the ones left, and its admin `/config` — streamed whole, or paged with
//! `?kind=outbound|endpoints&offset=&limit=` — lists every resource exactly once, before and
//! after the removal; a bad query is a 400 and a reader that goes away mid-stream harms nothing.
//!
//! No RSS or timing asserts: the memory figures are in docs/benchmarks.md (the `memory_burst`
//! example).

mod control_support;
mod process_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use control_support::*;
use process_support::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proxy_api::v1;

const SERVICES: usize = 1500;
const KEPT: usize = 5;

/// `outbound:<name>.demo` on port 80 with its endpoint set, both on `ports`.
fn service(name: &str, ports: &[u16]) -> [v1::Resource; 2] {
    [
        outbound("demo", name, 80, "^/api"),
        endpoints("demo", name, 80, ports),
    ]
}

fn name(i: usize) -> String {
    format!("svc-{i:04}")
}

/// `GET path` on the admin listener, with a chunked body decoded.
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.read_to_end(&mut buf),
    )
    .await
    .expect("admin answered in time")
    .expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = &buf[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (status, body.to_vec());
    }
    let (mut out, mut rest) = (Vec::new(), body);
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).expect("hex"), 16)
            .expect("chunk size");
        rest = &rest[line + 2..];
        if size == 0 {
            return (status, out);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

async fn admin_json(admin: SocketAddr, path: &str) -> Value {
    let (status, body) = admin_get(admin, path).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {} bytes", body.len()))
}

/// Pages through one list with `limit`; returns each item's key in page order.
async fn paged(admin: SocketAddr, kind: &str, key: &str, limit: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut offset = Some(0);
    let mut version = None;
    while let Some(o) = offset {
        let page = admin_json(
            admin,
            &format!("/config?kind={kind}&offset={o}&limit={limit}"),
        )
        .await;
        assert!(
            page["items"].as_array().is_some_and(|i| i.len() <= limit),
            "{page}"
        );
        if let Some(v) = &version {
            assert_eq!(&page["version"], v, "the config changed while paging");
        }
        version = Some(page["version"].clone());
        for item in page["items"].as_array().into_iter().flatten() {
            keys.push(item[key].as_str().expect("key").to_string());
        }
        offset = page["next"].as_u64().map(|n| n as usize);
    }
    keys
}

/// The full dump and the pages agree, and each lists every resource exactly once.
async fn check_config(admin: SocketAddr, services: usize) {
    let full = admin_json(admin, "/config").await;
    let outbound: Vec<String> = full["config"]["outbound"]
        .as_array()
        .expect("outbound list")
        .iter()
        .map(|s| s["authority"].as_str().expect("authority").to_string())
        .collect();
    let endpoints: Vec<String> = full["config"]["endpoints"]
        .as_object()
        .expect("endpoints map")
        .keys()
        .cloned()
        .collect();
    let want: BTreeSet<String> = (0..services).map(|i| format!("{}.demo", name(i))).collect();
    assert_eq!(outbound.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(outbound.len(), services, "a service is listed twice");
    assert_eq!(endpoints.len(), services);

    let summary = admin_json(admin, "/config?kind=summary").await;
    assert_eq!(
        summary["config"]["counts"]["outbound"], services,
        "{summary}"
    );
    assert_eq!(
        summary["config"]["counts"]["endpoints"], services,
        "{summary}"
    );
    assert_eq!(summary["version"], full["version"]);
    assert!(summary["config"].get("outbound").is_none(), "{summary}");

    let pages = paged(admin, "outbound", "authority", 333).await;
    assert_eq!(pages, outbound, "pages differ from the full dump");
    let pages = paged(admin, "endpoints", "name", 1000).await;
    assert_eq!(pages, endpoints, "pages differ from the full dump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_pages_and_streams_every_resource_once_before_and_after_a_large_removal() {
    let mut op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let proxy = ProxyProcess::start(&op.uri()).await;
    let app = backend().await;

    op.expect_subscribe().await;
    let mut resources = vec![inbound("spiffe://cluster.local/ns/demo/sa/client")];
    for i in 0..SERVICES {
        resources.extend(service(&name(i), &[app.port()]));
    }
    op.push(full_state("n1", "v1", resources)).await;
    assert_eq!(op.expect_ack().await.version, "v1");
    check_config(proxy.admin, SERVICES).await;
    let (status, body) = http_get(proxy.outbound, "/", &format!("{}.demo", name(0)))
        .await
        .expect("request through the proxy");
    assert_eq!(status, 200, "{body}");

    // A reader that goes away after the first bytes of a large dump.
    {
        let mut stream = tokio::net::TcpStream::connect(proxy.admin)
            .await
            .expect("connect");
        stream
            .write_all(b"GET /config HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .expect("write");
        let mut some = [0u8; 1024];
        let n = stream.read(&mut some).await.expect("read");
        assert!(String::from_utf8_lossy(&some[..n]).starts_with("HTTP/1.1 200"));
    }

    // Remove all but KEPT services.
    let removed: Vec<String> = (KEPT..SERVICES)
        .flat_map(|i| {
            [
                format!("outbound:{}.demo", name(i)),
                format!("endpoints:{}.demo:80", name(i)),
            ]
        })
        .collect();
    op.push(incremental(
        "n2",
        "v2",
        vec![],
        removed.iter().map(String::as_str).collect(),
    ))
    .await;
    assert_eq!(op.expect_ack().await.version, "v2");
    proxy
        .admin_until("/config?kind=summary", |_, body| {
            body.contains("\"version\": \"v2\"")
        })
        .await;
    check_config(proxy.admin, KEPT).await;
    for i in 0..KEPT {
        let (status, body) = http_get(proxy.outbound, "/", &format!("{}.demo", name(i)))
            .await
            .expect("request through the proxy");
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = http_get(proxy.outbound, "/", &format!("{}.demo", name(KEPT)))
        .await
        .expect("request through the proxy");
    assert_ne!(status, 200, "a removed service is still routed");

    // Bad queries: a 400 naming the problem, and the proxy keeps answering.
    for bad in [
        "kind=outbound&offset=abc",
        "kind=outbound&offset=-1",
        "kind=outbound&offset=184467440737095516160",
        "kind=outbound&limit=0",
        "kind=outbound&limit=100000",
        "kind=routes",
        "offset=5",
        "kind=outbound&kind=outbound",
        "cursor=%00%ff",
    ] {
        let (status, body) = admin_get(proxy.admin, &format!("/config?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    // An offset past the end is an empty last page.
    let page = admin_json(proxy.admin, "/config?kind=outbound&offset=4000").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "{page}");
    assert!(page["next"].is_null(), "{page}");
    let (status, _) = admin_get(proxy.admin, "/live").await;
    assert_eq!(status, 200);
    assert!(
        !proxy.log().contains("panicked"),
        "proxy log:\n{}",
        proxy.log()
    );
}
