//! Issue #18, tracing (`docs/tracing.md`) across two proxies on loopback, as in a cluster: the
//! caller's outbound proxy talks mTLS to the destination's inbound proxy, which forwards to its
//! app; both export spans to a fake OTLP/gRPC collector (the standard `TraceService`).
//!
//! - a sampled `traceparent` reaches the app with the same trace id and, as parent, the inbound
//!   proxy's span; the collector gets the client span (parent: the caller's span) and the server
//!   span (parent: the client span) with method, status, route, direction, identities and the
//!   pod's resource attributes; `tracestate` arrives unchanged;
//! - unsampled and invalid `traceparent`s are forwarded byte for byte and produce no span;
//!   a request without one gets none;
//! - without a collector nothing is touched;
//! - with a dead collector every request still succeeds and the lost spans are counted.
//!
//! "No span" is shown without timing: each proxy exports its spans in the order they finished,
//! so once a later sampled request's spans have arrived, an earlier span would have too.

mod dataplane_support;
mod trace_support;

use std::convert::Infallible;
use std::net::SocketAddr;
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
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtelStatus;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use trace_support::*;
use weft_proxy::config::Config;
use weft_proxy::inbound::{self, InboundSettings};
use weft_proxy::metrics::Metrics;
use weft_proxy::outbound;
use weft_proxy::trace::{Exporter, TraceSettings, Tracer};
use weft_proxy::transport::MeshIdentity;
use weft_proxy_api::v1;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const API: &str = "spiffe://cluster.local/ns/demo/sa/api";
/// The caller's (the web app's) span.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn traceparent(trace: &str, flags: &str) -> String {
    format!("00-{trace}-{CALLER_SPAN}-{flags}")
}

/// What the app saw of each request: (path, traceparent, tracestate).
type Seen = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

/// The destination app: records the trace headers; `/missing` answers 404, the rest 200.
async fn app(ip: &str) -> (SocketAddr, Seen) {
    let l = ok(TcpListener::bind(format!("{ip}:0")).await);
    let addr = ok(l.local_addr());
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let path = req.uri().path().to_string();
                        s.lock().unwrap_or_else(|e| e.into_inner()).push((
                            path.clone(),
                            h("traceparent"),
                            h("tracestate"),
                        ));
                        let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if path == "/missing" {
                            *rsp.status_mut() = StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(rsp)
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

fn seen_at(seen: &Seen, path: &str) -> (Option<String>, Option<String>) {
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let found: Vec<_> = seen.iter().filter(|(p, _, _)| p == path).collect();
    assert_eq!(found.len(), 1, "the app saw {path} {} times", found.len());
    (found[0].1.clone(), found[0].2.clone())
}

fn client_config(ep: v1::Endpoint) -> Arc<Config> {
    config(vec![
        outbound(
            "demo",
            "api",
            8080,
            v1::Protocol::Http1,
            vec![v1::Route {
                name: "api-default".into(),
                matches: vec![],
                backends: vec![weighted("api", 1, "endpoints:api.demo:8080")],
                ..Default::default()
            }],
            None,
        ),
        endpoints("endpoints:api.demo:8080", vec![ep]),
    ])
}

fn tracer(collector: Option<&str>, pod: &str) -> (Tracer, Option<Exporter>) {
    match collector {
        None => (Tracer::disabled(), None),
        Some(c) => {
            let (t, e) = ok(Tracer::exporting_to(TraceSettings {
                collector: c.to_string(),
                service_name: format!("{}.demo", pod.trim_end_matches("-0")),
                pod_namespace: "demo".into(),
                pod_name: pod.into(),
            }));
            (t, Some(e))
        }
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

async fn inbound_proxy(
    ip: &str,
    config: Arc<Config>,
    identity: Arc<dyn MeshIdentity>,
    tracer: Tracer,
) -> Running {
    let listener = ok(TcpListener::bind(format!("{ip}:0")).await);
    let addr = ok(listener.local_addr());
    let (_tx, rx) = watch::channel(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let settings = InboundSettings {
        app_ip: addr.ip(),
        drain_grace: Duration::from_secs(1),
        tracer,
        ..InboundSettings::default()
    };
    let done = tokio::spawn(async move {
        let _tx = _tx;
        let _ = inbound::serve(
            listener,
            settings,
            rx,
            identity,
            Arc::new(Metrics::new()),
            async {
                let _ = stopped.await;
            },
        )
        .await;
    });
    Running { stop, done, addr }
}

async fn outbound_proxy(
    config: Arc<Config>,
    identity: Arc<dyn MeshIdentity>,
    tracer: Tracer,
) -> Running {
    let listener = ok(TcpListener::bind("127.0.0.1:0").await);
    let addr = ok(listener.local_addr());
    let (_tx, rx) = watch::channel(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let _tx = _tx;
        let _ = outbound::serve_traced(
            listener,
            rx,
            identity,
            Arc::new(Metrics::new()),
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
            tracer,
        )
        .await;
    });
    Running { stop, done, addr }
}

/// The two proxies and the app, each proxy exporting to `collector` (none: tracing off).
struct Mesh {
    client: Running,
    server: Running,
    seen: Seen,
    tracers: (Tracer, Tracer),
    exporters: Vec<Exporter>,
}

impl Mesh {
    async fn start(ip: &str, collector: Option<&str>) -> Mesh {
        let ca = TestCa::new();
        let (app_addr, seen) = app(ip).await;
        let (server_tracer, server_exp) = tracer(collector, "api-0");
        let (client_tracer, client_exp) = tracer(collector, "web-0");
        let server = inbound_proxy(
            ip,
            open_inbound(API, app_addr),
            ca.identity(API),
            server_tracer.clone(),
        )
        .await;
        let client = outbound_proxy(
            client_config(endpoint(app_addr, API, server.addr.port())),
            ca.identity(WEB),
            client_tracer.clone(),
        )
        .await;
        Mesh {
            client,
            server,
            seen,
            tracers: (client_tracer, server_tracer),
            exporters: client_exp.into_iter().chain(server_exp).collect(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> StatusCode {
        let c: TestClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut b = Request::builder()
            .uri(format!("http://{}{path}", self.client.addr))
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
        let _ = rsp.into_body().collect().await;
        status
    }

    /// The text of both tracers' counters.
    fn trace_metrics(&self) -> String {
        let mut registry = Registry::default();
        self.tracers.0.register(&mut registry);
        let mut sub = Registry::default();
        self.tracers.1.register(&mut sub);
        let mut out = String::new();
        ok(prometheus_client::encoding::text::encode(
            &mut out, &registry,
        ));
        ok(prometheus_client::encoding::text::encode(&mut out, &sub));
        out
    }

    async fn shutdown(self) {
        for r in [self.client, self.server] {
            let _ = r.stop.send(());
            let _ = r.done.await;
        }
        for e in self.exporters {
            e.shutdown().await;
        }
    }
}

/// The sum of `weft_proxy_trace_spans_dropped_total` series in `text`.
fn dropped(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("weft_proxy_trace_spans_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_request_links_app_outbound_inbound_and_app() {
    let collector = FakeCollector::start().await;
    let mesh = Mesh::start("127.0.0.51", Some(&collector.uri())).await;

    let tp = traceparent(TRACE, "01");
    let status = mesh
        .get(
            "/missing",
            &[("traceparent", &tp), ("tracestate", "vendor=abc,other=x")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let spans = collector.wait_for(TRACE, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Client as i32)
        .expect("a client span");
    let server = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("a server span");

    // The chain: caller's span -> outbound proxy's client span -> inbound proxy's server span
    // -> the app's parent.
    assert_eq!(client.parent_id(), CALLER_SPAN);
    assert_eq!(server.parent_id(), client.span_id());
    assert_ne!(server.span_id(), client.span_id());
    let (app_tp, app_ts) = seen_at(&mesh.seen, "/missing");
    assert_eq!(
        app_tp.as_deref(),
        Some(format!("00-{TRACE}-{}-01", server.span_id()).as_str())
    );
    assert_eq!(app_ts.as_deref(), Some("vendor=abc,other=x"));

    for s in [client, server] {
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("404"));
        assert_eq!(s.span.trace_state, "vendor=abc,other=x");
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
    }
    assert_eq!(client.attr("weft.direction").as_deref(), Some("outbound"));
    assert_eq!(client.attr("http.route").as_deref(), Some("api-default"));
    assert_eq!(client.attr("weft.server.id").as_deref(), Some(API));
    assert_eq!(client.span.name, "GET api-default");
    // A client span fails on 4xx, a server span only on 5xx.
    let code = |s: &Received| s.span.status.as_ref().map(|st| st.code);
    assert_eq!(code(client), Some(OtelStatus::Error as i32));
    assert_eq!(code(server), Some(OtelStatus::Unset as i32));
    assert_eq!(server.attr("weft.direction").as_deref(), Some("inbound"));
    assert_eq!(server.attr("weft.client.id").as_deref(), Some(WEB));

    assert_eq!(client.resource["service.name"], "web.demo");
    assert_eq!(client.resource["k8s.pod.name"], "web-0");
    assert_eq!(server.resource["service.name"], "api.demo");
    assert_eq!(server.resource["k8s.pod.name"], "api-0");
    assert_eq!(server.resource["k8s.namespace.name"], "demo");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_invalid_and_absent_traceparents_pass_unchanged_and_record_nothing() {
    let collector = FakeCollector::start().await;
    let mesh = Mesh::start("127.0.0.52", Some(&collector.uri())).await;

    let unsampled = traceparent("11111111111111111111111111111111", "00");
    let invalid = [
        // wrong length
        "00-22222222222222222222222222222222-00f067aa0ba902b7-1".to_string(),
        // version ff
        "ff-33333333333333333333333333333333-00f067aa0ba902b7-01".to_string(),
        // all-zero trace id, all-zero parent id
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
        "00-44444444444444444444444444444444-0000000000000000-01".to_string(),
        // uppercase hex, version 00 with extra fields
        "00-55555555555555555555555555555555-00F067AA0BA902B7-01".to_string(),
        "00-66666666666666666666666666666666-00f067aa0ba902b7-01-x".to_string(),
        "garbage".to_string(),
    ];
    let mut cases = vec![("/unsampled".to_string(), unsampled.clone())];
    for (i, v) in invalid.iter().enumerate() {
        cases.push((format!("/invalid-{i}"), v.clone()));
    }
    for (path, tp) in &cases {
        let status = mesh
            .get(path, &[("traceparent", tp), ("tracestate", "k=v")])
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    assert_eq!(mesh.get("/absent", &[]).await, StatusCode::OK);

    // Byte for byte at the app.
    for (path, tp) in &cases {
        let (app_tp, app_ts) = seen_at(&mesh.seen, path);
        assert_eq!(app_tp.as_deref(), Some(tp.as_str()), "{path}");
        assert_eq!(app_ts.as_deref(), Some("k=v"), "{path}");
    }
    // The proxy never starts a trace.
    assert_eq!(seen_at(&mesh.seen, "/absent"), (None, None));

    // A sampled request after them: once its two spans are in, the earlier ones would be too.
    let marker = "77777777777777777777777777777777";
    let tp = traceparent(marker, "01");
    assert_eq!(
        mesh.get("/marker", &[("traceparent", &tp)]).await,
        StatusCode::OK
    );
    collector.wait_for(marker, 2).await;
    let all = collector.spans();
    assert_eq!(
        all.len(),
        2,
        "only the sampled request has spans: {:#?}",
        all.iter().map(Received::trace_id).collect::<Vec<_>>()
    );
    assert_eq!(dropped(&mesh.trace_metrics()), 0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_the_traceparent_is_forwarded_untouched() {
    let mesh = Mesh::start("127.0.0.53", None).await;
    let tp = traceparent(TRACE, "01");
    assert_eq!(
        mesh.get("/plain", &[("traceparent", &tp), ("tracestate", "a=b")])
            .await,
        StatusCode::OK
    );
    assert_eq!(
        seen_at(&mesh.seen, "/plain"),
        (Some(tp), Some("a=b".to_string()))
    );
    // Nothing registered, nothing counted.
    assert_eq!(
        mesh.trace_metrics()
            .lines()
            .filter(|l| l.starts_with("weft_"))
            .count(),
        0
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_loses_no_request_and_counts_the_lost_spans() {
    let dead = dead_collector().await;
    let mesh = Mesh::start("127.0.0.54", Some(&dead)).await;
    for i in 0..40u32 {
        let trace = format!("{:032x}", 0xabc000 + i);
        let tp = traceparent(&trace, "01");
        let status = mesh.get(&format!("/r{i}"), &[("traceparent", &tp)]).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        // The app still gets a linked traceparent (the proxies' spans are lost, not the context).
        let (app_tp, _) = seen_at(&mesh.seen, &format!("/r{i}"));
        let app_tp = app_tp.unwrap_or_default();
        assert!(app_tp.starts_with(&format!("00-{trace}-")), "{app_tp}");
        assert!(!app_tp.contains(CALLER_SPAN), "{app_tp}");
    }
    // Both proxies' spans (80) fail to export and are counted.
    let counted = tokio::time::timeout(WAIT, async {
        loop {
            let n = dropped(&mesh.trace_metrics());
            if n >= 80 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let text = mesh.trace_metrics();
    assert!(counted.is_ok(), "lost spans not counted:\n{text}");
    assert!(
        text.contains(r#"weft_proxy_trace_spans_dropped_total{reason="export_failed"}"#),
        "{text}"
    );
    mesh.shutdown().await;
}

/// Process CPU time (user + system) in clock ticks, from `/proc/self/stat`.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are the 12th and 13th after the `)`.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Not a test: the request-path cost of tracing (docs/benchmarks.md, *Tracing*). Sequential
/// requests through outbound → mTLS → inbound → app, in three modes, rounds interleaved:
/// tracing off with a `traceparent`; exporting, no `traceparent`; exporting, sampled. Prints
/// the median per-request latency and the process CPU per request of each mode.
/// `cargo test -p weft-proxy --test tracing_mesh bench_trace_overhead -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_trace_overhead() {
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rounds = 3;
    let collector = FakeCollector::start().await;
    let off = Mesh::start("127.0.0.55", None).await;
    let on = Mesh::start("127.0.0.56", Some(&collector.uri())).await;
    let c: TestClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let tp = traceparent(TRACE, "01");
    let modes: [(&str, &Mesh, bool); 3] = [
        ("tracing off, traceparent sent", &off, true),
        ("exporting, no traceparent", &on, false),
        ("exporting, sampled traceparent", &on, true),
    ];
    let mut results: Vec<(Vec<Duration>, u64)> = vec![(Vec::new(), 0); 3];
    for round in 0..=rounds {
        for (i, (_, mesh, traced)) in modes.iter().enumerate() {
            let ticks = cpu_ticks();
            let mut lat = Vec::with_capacity(requests);
            for _ in 0..requests {
                let mut b = Request::builder()
                    .uri(format!("http://{}/bench", mesh.client.addr))
                    .header("host", "api.demo:8080");
                if *traced {
                    b = b.header("traceparent", &tp);
                }
                let t = std::time::Instant::now();
                let rsp = ok(c.request(ok(b.body(Full::new(Bytes::new())))).await);
                let _ = rsp.into_body().collect().await;
                lat.push(t.elapsed());
            }
            // Round 0 warms up.
            if round > 0 {
                results[i].0.extend(lat);
                results[i].1 += cpu_ticks() - ticks;
            }
        }
    }
    let tick_us = 1_000_000.0 / 100.0; // USER_HZ is 100 on Linux.
    for (i, (name, _, _)) in modes.iter().enumerate() {
        let (lat, ticks) = &mut results[i];
        lat.sort();
        let n = lat.len();
        let q = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)];
        println!(
            "{name}: p50 {:?}, p99 {:?}, CPU {:.1} µs/request ({n} requests)",
            q(0.5),
            q(0.99),
            *ticks as f64 * tick_us / n as f64
        );
    }
    // The client proxy and the app run in this process too; the per-request CPU is the whole
    // chain's (client, both proxies, app, collector).
    let exported = collector.spans().len();
    println!("spans received by the collector: {exported}");
    off.shutdown().await;
    on.shutdown().await;
}
