//! Issue #16 across two proxies, as in a cluster: a client's outbound proxy talks mTLS to the
//! inbound proxy of each endpoint, which forwards to its app. With the policy an unannotated
//! Service gets (the defaults) plus `weft.io/retries: 2`:
//! - an app that dies behind its live proxy (the proxy answers 502 at once) is avoided, and the
//!   requests that reach it are retried elsewhere;
//! - a deadline set by the caller travels through both proxies, bounds the app, and stops the
//!   client proxy's retries.
//!
//! Counts, statuses and headers only: no timing asserts.

mod dataplane_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dataplane_support::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use weft_proxy::config::Config;
use weft_proxy_api::v1;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const API: &str = "spiffe://cluster.local/ns/demo/sa/api";

type TestClient = Client<HttpConnector, Full<Bytes>>;

/// The client side: `api.demo:8080` over `endpoints`, the default policy with 2 retries.
fn client_config(endpoints_: Vec<v1::Endpoint>) -> Arc<Config> {
    config(vec![
        outbound(
            "demo",
            "api",
            8080,
            v1::Protocol::Http1,
            vec![v1::Route {
                name: "default".into(),
                matches: vec![],
                backends: vec![weighted("api", 1, "endpoints:api.demo:8080")],
                ..Default::default()
            }],
            Some(v1::TrafficPolicy {
                max_retries: 2,
                request_timeout_ms: 10_000,
                ..Default::default()
            }),
        ),
        endpoints("endpoints:api.demo:8080", endpoints_),
    ])
}

/// An app that accepts connections and closes them at once: it crashed, its proxy is alive.
/// Counts the connections that reached it.
async fn crashing_app(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = ok(TcpListener::bind(format!("{ip}:0")).await);
    let addr = ok(l.local_addr());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, hits)
}

/// An app that takes `delay` to answer 200 and records the deadline header of each request.
async fn slow_app(ip: &str, delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let l = ok(TcpListener::bind(format!("{ip}:0")).await);
    let addr = ok(l.local_addr());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let deadline = req
                            .headers()
                            .get("weft-timeout-ms")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        s.lock().unwrap_or_else(|e| e.into_inner()).push(deadline);
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slow"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn get(c: &TestClient, proxy: SocketAddr, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut b = Request::builder()
        .uri(format!("http://{proxy}/"))
        .header("host", "api.demo:8080");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let rsp = ok(ok(tokio::time::timeout(
        Duration::from_secs(30),
        c.request(ok(b.body(Full::new(Bytes::new())))),
    )
    .await));
    let status = rsp.status();
    let mut reason = rsp
        .headers()
        .get("weft-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if status != StatusCode::OK && reason.is_empty() {
        let body = ok(rsp.into_body().collect().await).to_bytes();
        reason = String::from_utf8_lossy(&body).into_owned();
    }
    (status, reason)
}

/// Before #16, a dead app behind a live proxy looked like the fastest endpoint: 3,481 of
/// 6,001 requests failed while a healthy endpoint sat idle. Now: with the defaults (a failure
/// is charged to the balancer's estimate at once; 5 consecutive failures eject) and 2 retries,
/// no request fails, and the crashed app sees a small number of the connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_dead_behind_its_live_proxy_is_avoided_with_the_defaults() {
    let ca = TestCa::new();
    let mut eps = Vec::new();
    let mut servers = Vec::new();
    for (i, ip) in ["127.0.0.21", "127.0.0.22"].iter().enumerate() {
        let app = backend(&format!("{ip}:0"), if i == 0 { "a" } else { "b" }, false).await;
        let server = start_inbound(ip, open_inbound(API, app), ca.identity(API)).await;
        eps.push(endpoint(app, API, server.addr.port()));
        servers.push(server);
    }
    let (dead_app, dead_hits) = crashing_app("127.0.0.23").await;
    let dead_server =
        start_inbound("127.0.0.23", open_inbound(API, dead_app), ca.identity(API)).await;
    eps.push(endpoint(dead_app, API, dead_server.addr.port()));
    let client_proxy = start_outbound(client_config(eps), ca.identity(WEB)).await;

    let c: TestClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut failed = Vec::new();
    for i in 0..600 {
        let (status, reason) = get(&c, client_proxy.addr, &[]).await;
        if status != StatusCode::OK {
            failed.push((i, status, reason));
        }
    }
    let dead = dead_hits.load(Ordering::SeqCst);
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(dead <= 30, "the crashed app got {dead} of 600 requests");
    eprintln!("the crashed app got {dead} of 600 requests");
}

/// The caller gives 300 ms; the app takes 2 s; the client proxy would retry a 504 twice. The
/// inbound proxy stops waiting for the app when the deadline passes, the client proxy does not
/// retry (no time left), and the app saw one request, told at most 300 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_crosses_two_proxies_and_stops_retries() {
    let ca = TestCa::new();
    let (app, seen) = slow_app("127.0.0.24", Duration::from_secs(2)).await;
    let server = start_inbound("127.0.0.24", open_inbound(API, app), ca.identity(API)).await;
    let client_proxy = start_outbound(
        client_config(vec![endpoint(app, API, server.addr.port())]),
        ca.identity(WEB),
    )
    .await;
    let c: TestClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());

    let (status, reason) = get(&c, client_proxy.addr, &[("weft-timeout-ms", "300")]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reason}");
    assert_eq!(reason, "deadline");
    // Whichever proxy noticed first, nothing was retried: the app saw exactly one request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(seen.len(), 1, "the app saw {seen:?}");
    let told: u64 = seen[0]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(told <= 300, "the app was told {told} ms");

    // Without a deadline, the same request waits for the app (the service timeout is 10 s).
    let (status, _) = get(&c, client_proxy.addr, &[]).await;
    assert_eq!(status, StatusCode::OK);
}
