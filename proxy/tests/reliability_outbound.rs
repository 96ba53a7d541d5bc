//! Issue #16, client side: failure accrual, fair balancing, load shedding, deadlines and safe
//! retries, through a real outbound proxy on loopback to real HTTP backends (scripted per test:
//! what they answer, how long they take, what they saw). Every assertion is a count, a status or
//! a header: no timing asserts.

mod dataplane_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dataplane_support::*;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use weft_proxy::transport::NoIdentity;
use weft_proxy_api::v1;

type ClientBody = BoxBody<Bytes, Infallible>;
type TestClient = Client<HttpConnector, ClientBody>;

fn client(http2: bool) -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(HttpConnector::new())
}

/// What a scripted backend answers to its `n`-th request (from 0).
#[derive(Clone, Debug)]
struct Reply {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: vec![],
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

/// A backend that answers per its script and records what it saw.
#[derive(Clone)]
struct Scripted {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    /// Body length of every request, in order.
    bodies: Arc<Mutex<Vec<usize>>>,
    /// `weft-timeout-ms` of every request that had one.
    deadlines: Arc<Mutex<Vec<u64>>>,
    /// When set, every request gets `502` at once (its app died behind its live proxy).
    dead: Arc<AtomicBool>,
}

impl Scripted {
    async fn start(ip: &str, http2: bool, script: Script) -> Scripted {
        let listener = ok(TcpListener::bind(format!("{ip}:0")).await);
        let s = Scripted {
            addr: ok(listener.local_addr()),
            hits: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            bodies: Arc::default(),
            deadlines: Arc::default(),
            dead: Arc::default(),
        };
        let me = s.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        let script = script.clone();
                        async move { Ok::<_, Infallible>(me.answer(req, &*script).await) }
                    });
                    let io = TokioIo::new(stream);
                    if http2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        s
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
        script: &(dyn Fn(usize) -> Reply + Send + Sync),
    ) -> Response<Full<Bytes>> {
        let n = self.hits.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(ms) = req
            .headers()
            .get("weft-timeout-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            ok(self.deadlines.lock()).push(ms);
        }
        let reply = if self.dead.load(Ordering::SeqCst) {
            Reply::status(502)
        } else {
            script(n)
        };
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        ok(self.bodies.lock()).push(body.len());
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut b = Response::builder().status(reply.status);
        for (k, v) in &reply.headers {
            b = b.header(*k, v.as_str());
        }
        ok(b.body(Full::new(Bytes::from(self.addr.to_string()))))
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn always(status: u16) -> Script {
    Arc::new(move |_| Reply::status(status))
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

fn full(body: &'static [u8]) -> ClientBody {
    Full::new(Bytes::from_static(body)).boxed()
}

/// A body of `chunks` frames of `size` bytes and no length: sent chunked.
fn chunked(chunks: usize, size: usize) -> ClientBody {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..chunks)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; size]))))
        .collect();
    StreamBody::new(tokio_stream::iter(frames)).boxed()
}

async fn send(
    c: &TestClient,
    proxy: SocketAddr,
    host: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: ClientBody,
) -> Answer {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}/"))
        .header("host", host);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let rsp = ok(ok(tokio::time::timeout(
        Duration::from_secs(30),
        c.request(ok(b.body(body))),
    )
    .await));
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let body =
        String::from_utf8_lossy(&ok(rsp.into_body().collect().await).to_bytes()).into_owned();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(c: &TestClient, proxy: SocketAddr, host: &str) -> Answer {
    send(c, proxy, host, "GET", &[], full(b"")).await
}

/// One service `<name>.demo` on port 80 over `backends`, with `policy`.
fn service(
    name: &str,
    protocol: v1::Protocol,
    backends: &[&Scripted],
    policy: v1::TrafficPolicy,
) -> Arc<weft_proxy::config::Config> {
    let set = format!("endpoints:{name}.demo:80");
    config(vec![
        outbound(
            "demo",
            name,
            80,
            protocol,
            vec![v1::Route {
                name: "default".into(),
                matches: vec![],
                backends: vec![weighted(name, 1, &set)],
                ..Default::default()
            }],
            Some(policy),
        ),
        endpoints(
            &set,
            backends.iter().map(|b| endpoint(b.addr, "", 0)).collect(),
        ),
    ])
}

fn reason(a: &Answer) -> &str {
    a.headers
        .get("weft-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// (a) One of three endpoints answers 502 at once (its app died behind a live proxy): it is
/// ejected, nearly every request succeeds, it gets few requests, and when it comes back a probe
/// restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_failing_endpoint_is_ejected_and_restored_by_a_probe() {
    let good1 = Scripted::start("127.0.0.2", false, always(200)).await;
    let good2 = Scripted::start("127.0.0.3", false, always(200)).await;
    let dying = Scripted::start("127.0.0.4", false, always(200)).await;
    dying.dead.store(true, Ordering::SeqCst);
    let policy = v1::TrafficPolicy {
        max_retries: 2,
        // One failure ejects: the balancer alone already keeps the fast-failing endpoint at
        // ~0.1 % (its failures are charged 1 s), so it would take long to fail 5 times in a row
        // (the default); here the ejection and its probes are what is under test.
        failure_accrual: Some(v1::FailureAccrual {
            consecutive_failures: 1,
            min_backoff_ms: 200,
            max_backoff_ms: 1_000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let proxy = start_outbound(
        service(
            "api",
            v1::Protocol::Http1,
            &[&good1, &good2, &dying],
            policy,
        ),
        Arc::new(NoIdentity),
    )
    .await;
    let c = client(false);
    let mut failed = 0;
    for _ in 0..1_000 {
        if get(&c, proxy.addr, "api.demo").await.status != StatusCode::OK {
            failed += 1;
        }
    }
    let dead_hits = dying.hits();
    // Before: the dead endpoint looked fastest and got most of 6,001 requests.
    assert!(failed <= 10, "{failed} of 1,000 failed");
    assert!(
        dead_hits <= 30,
        "the dead endpoint got {dead_hits} of 1,000"
    );
    let text = proxy.metrics.encode();
    assert!(
        text.contains(
            "weft_proxy_outbound_ejected_endpoints{authority=\"api.demo\",backend=\"api\"} 1"
        ),
        "{text}"
    );

    // It comes back: a probe (after at most 1.25 s) restores it and it gets its share again.
    dying.dead.store(false, Ordering::SeqCst);
    let before = dying.hits();
    let mut sent = 0;
    while dying.hits() < before + 50 && sent < 5_000 {
        let a = get(&c, proxy.addr, "api.demo").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        dying.hits() >= before + 50,
        "the restored endpoint got {} of {sent} requests",
        dying.hits() - before
    );
    let text = proxy.metrics.encode();
    assert!(
        text.contains(
            "weft_proxy_outbound_ejected_endpoints{authority=\"api.demo\",backend=\"api\"} 0"
        ),
        "{text}"
    );
}

/// (a') When every endpoint is ejected: a fast 503 that says so, `weft-reason: ejected`.
#[tokio::test]
async fn all_endpoints_ejected_answers_a_clear_503() {
    let dead = Scripted::start("127.0.0.2", false, always(502)).await;
    let policy = v1::TrafficPolicy {
        failure_accrual: Some(v1::FailureAccrual {
            consecutive_failures: 2,
            min_backoff_ms: 60_000,
            max_backoff_ms: 60_000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let proxy = start_outbound(
        service("api", v1::Protocol::Http1, &[&dead], policy),
        Arc::new(NoIdentity),
    )
    .await;
    let c = client(false);
    for _ in 0..2 {
        assert_eq!(
            get(&c, proxy.addr, "api.demo").await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    for _ in 0..5 {
        let a = get(&c, proxy.addr, "api.demo").await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reason(&a), "ejected");
        assert!(
            a.body
                .contains("api.demo: 1 of 1 endpoints of backend api are ejected")
                && a.body.contains("next probe is due in"),
            "{}",
            a.body
        );
    }
    assert_eq!(dead.hits(), 2);
    assert!(proxy
        .metrics
        .encode()
        .contains("weft_proxy_outbound_shed_total{authority=\"api.demo\",reason=\"ejected\"} 5"));
}

fn share_bound(n: usize) -> (usize, usize) {
    // 50 % ± 6 binomial standard deviations (sqrt(n / 4)): n = 2,000 gives 866..=1,134. The
    // choices are not quite independent (the balancer follows measured latency, and a busy test
    // host makes one backend slower for a while), so the spread is somewhat above binomial;
    // the old balancer settled far outside (810 / 1,190 measured, ~95/5 in the cluster).
    let sd = (n as f64 / 4.0).sqrt();
    let half = n as f64 / 2.0;
    (
        (half - 6.0 * sd) as usize,
        (half + 6.0 * sd).ceil() as usize,
    )
}

/// (b) Two identical endpoints get equal shares, sequentially and concurrently. One runtime
/// thread for the proxy and both backends, so that the host's scheduling treats the two backends
/// alike (on a busy host, a backend whose connection sits on a starved worker thread *is*
/// slower, and a latency-aware balancer rightly gives it less).
#[tokio::test]
async fn identical_endpoints_get_equal_shares() {
    let a = Scripted::start("127.0.0.2", false, always(200)).await;
    let b = Scripted::start("127.0.0.3", false, always(200)).await;
    let proxy = start_outbound(
        service(
            "api",
            v1::Protocol::Http1,
            &[&a, &b],
            v1::TrafficPolicy::default(),
        ),
        Arc::new(NoIdentity),
    )
    .await;
    let c = client(false);
    let n = 2_000;
    for _ in 0..n {
        assert_eq!(get(&c, proxy.addr, "api.demo").await.status, StatusCode::OK);
    }
    let (lo, hi) = share_bound(n);
    let first = a.hits();
    eprintln!("sequential shares: {first} / {}", b.hits());
    assert_eq!(first + b.hits(), n);
    assert!(
        (lo..=hi).contains(&first),
        "sequential: {first} / {} (bound {lo}..={hi})",
        b.hits()
    );

    // Concurrently: 16 clients, 125 requests each.
    let (a0, b0) = (a.hits(), b.hits());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            for _ in 0..125 {
                assert_eq!(get(&c, addr, "api.demo").await.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        ok(t.await);
    }
    let (da, db) = (a.hits() - a0, b.hits() - b0);
    eprintln!("concurrent shares: {da} / {db}");
    assert_eq!(da + db, n);
    assert!(
        (lo..=hi).contains(&da),
        "concurrent: {da} / {db} (bound {lo}..={hi})"
    );
}

/// (c) `max_concurrent_requests: 2` with no queue and a slow backend: of 10 concurrent
/// requests, the admitted ones succeed, the rest get a fast 503 with `weft-reason`, and the
/// backend never sees more than 2 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_service_sheds_with_a_reason() {
    let slow = Scripted::start(
        "127.0.0.2",
        false,
        Arc::new(|_| Reply::status(200).after(Duration::from_millis(1_500))),
    )
    .await;
    let policy = v1::TrafficPolicy {
        max_concurrent_requests: 2,
        max_pending_requests: 0,
        ..Default::default()
    };
    let proxy = start_outbound(
        service("slow", v1::Protocol::Http1, &[&slow], policy),
        Arc::new(NoIdentity),
    )
    .await;
    let c = client(false);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = c.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(
            async move { get(&c, addr, "slow.demo").await },
        ));
    }
    let (mut admitted, mut shed) = (0, 0);
    for t in tasks {
        let a = ok(t.await);
        match a.status {
            StatusCode::OK => admitted += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reason(&a), "concurrency", "{}", a.body);
                assert!(a.body.contains("max-concurrent-requests"), "{}", a.body);
                shed += 1;
            }
            s => panic!("unexpected {s}: {}", a.body),
        }
    }
    assert_eq!(admitted + shed, 10);
    assert!(
        shed >= 1 && admitted >= 2,
        "{admitted} admitted, {shed} shed"
    );
    assert_eq!(slow.hits(), admitted);
    assert!(slow.max_in_flight.load(Ordering::SeqCst) <= 2);
    let text = proxy.metrics.encode();
    assert!(
        text.contains(&format!(
            "weft_proxy_outbound_shed_total{{authority=\"slow.demo\",reason=\"concurrency\"}} {shed}"
        )),
        "{text}"
    );
}

/// (d) A request with 300 ms left to a backend that takes 2 s, with 3 retries: one attempt,
/// which carries at most 300 ms, then a 504 `weft-reason: deadline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_every_attempt_and_retry() {
    let slow = Scripted::start(
        "127.0.0.2",
        false,
        Arc::new(|_| Reply::status(200).after(Duration::from_secs(2))),
    )
    .await;
    let policy = v1::TrafficPolicy {
        max_retries: 3,
        ..Default::default()
    };
    let proxy = start_outbound(
        service("slow", v1::Protocol::Http1, &[&slow], policy),
        Arc::new(NoIdentity),
    )
    .await;
    let c = client(false);
    let a = send(
        &c,
        proxy.addr,
        "slow.demo",
        "GET",
        &[("weft-timeout-ms", "300")],
        full(b""),
    )
    .await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    assert_eq!(reason(&a), "deadline");
    assert_eq!(slow.hits(), 1);
    let seen = ok(slow.deadlines.lock()).clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0] <= 300, "{seen:?}");
    assert!(proxy
        .metrics
        .encode()
        .contains("weft_proxy_outbound_deadline_exceeded_total{authority=\"slow.demo\"} 1"));
}

/// (e) A chunked 10 KiB POST (retry-non-idempotent) is retried after a 503 with its whole
/// body; a chunked 100 KiB one is sent once.
#[tokio::test]
async fn chunked_bodies_are_retried_up_to_the_buffer() {
    let flaky = Scripted::start(
        "127.0.0.2",
        false,
        Arc::new(|n| Reply::status(if n % 2 == 0 { 503 } else { 200 })),
    )
    .await;
    let policy = v1::TrafficPolicy {
        max_retries: 1,
        retry_non_idempotent: true,
        retry_statuses: vec![v1::StatusRange { min: 503, max: 503 }],
        ..Default::default()
    };
    let proxy = start_outbound(
        service("api", v1::Protocol::Http1, &[&flaky], policy),
        Arc::new(NoIdentity),
    )
    .await;
    let c = client(false);
    let a = send(&c, proxy.addr, "api.demo", "POST", &[], chunked(10, 1024)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(*ok(flaky.bodies.lock()), vec![10_240, 10_240]);

    let a = send(&c, proxy.addr, "api.demo", "POST", &[], chunked(100, 1024)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(*ok(flaky.bodies.lock()), vec![10_240, 10_240, 102_400]);
}

/// (f) A gRPC answer `grpc-status: 14` (UNAVAILABLE, trailers-only) is retried.
#[tokio::test]
async fn grpc_unavailable_is_retried() {
    let flaky = Scripted::start(
        "127.0.0.2",
        true,
        Arc::new(|n| {
            Reply::status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", if n == 0 { "14" } else { "0" })
        }),
    )
    .await;
    let policy = v1::TrafficPolicy {
        max_retries: 2,
        retry_non_idempotent: true,
        ..Default::default()
    };
    let proxy = start_outbound(
        service("grpc", v1::Protocol::Grpc, &[&flaky], policy),
        Arc::new(NoIdentity),
    )
    .await;
    // HTTP/2 with the service in `:authority`, as a gRPC client in explicit mode sends it.
    let stream = ok(tokio::net::TcpStream::connect(proxy.addr).await);
    let (mut sender, conn) = ok(
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, ClientBody>(TokioIo::new(stream))
            .await,
    );
    tokio::spawn(conn);
    let req = ok(Request::builder()
        .method("POST")
        .uri("http://grpc.demo/demo.Api/Get")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(b"\0\0\0\0\0")));
    let rsp = ok(ok(tokio::time::timeout(
        Duration::from_secs(30),
        sender.send_request(req),
    )
    .await));
    let a = Answer {
        status: rsp.status(),
        headers: rsp.headers().clone(),
        body: String::new(),
    };
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("0")
    );
    assert_eq!(flaky.hits(), 2);
}

/// (g) A 429 with `Retry-After: 2` backs that endpoint off: the next requests all go to the
/// other one.
#[tokio::test]
async fn retry_after_backs_an_endpoint_off() {
    let busy = Scripted::start(
        "127.0.0.2",
        false,
        Arc::new(|n| {
            if n == 0 {
                Reply::status(429).header("retry-after", "2")
            } else {
                Reply::status(200)
            }
        }),
    )
    .await;
    let other = Scripted::start("127.0.0.3", false, always(200)).await;
    let proxy = start_outbound(
        service(
            "api",
            v1::Protocol::Http1,
            &[&busy, &other],
            v1::TrafficPolicy::default(),
        ),
        Arc::new(NoIdentity),
    )
    .await;
    let c = client(false);
    // Until the busy one has said 429 (each request has even odds of reaching it).
    let mut sent = 0;
    while busy.hits() == 0 && sent < 200 {
        get(&c, proxy.addr, "api.demo").await;
        sent += 1;
    }
    assert_eq!(busy.hits(), 1);
    let before = other.hits();
    for _ in 0..20 {
        assert_eq!(get(&c, proxy.addr, "api.demo").await.status, StatusCode::OK);
    }
    assert_eq!(busy.hits(), 1, "the backed-off endpoint got requests");
    assert_eq!(other.hits(), before + 20);
    assert!(proxy.metrics.encode().contains(
        "weft_proxy_outbound_retry_after_backoffs_total{authority=\"api.demo\",backend=\"api\"} 1"
    ));
}
