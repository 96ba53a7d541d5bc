//! Issue #16, inbound: the server-side proxy protects its app. The real `weft-proxy` binary on
//! loopback (config and certificate from a fake operator) in front of a real app that counts
//! what reaches it; callers are plaintext clients (unauthenticated) and mTLS clients with mesh
//! identities certified by the same operator.
//!
//! Nothing here measures time: the app holds requests behind a gate that the test opens, and
//! the tests assert statuses, `weft-reason` headers, what the app saw, and metrics. The one
//! rate (5/s) is checked against the number of tokens that could have been refilled while the
//! requests were sent, so a slow machine cannot fail it and a broken limiter cannot pass it.

mod control_support;
mod process_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use control_support::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use process_support::{free_port, proxy_command, spawn_proxy, start_operator, Spawned, TOKEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::watch;
use weft_proxy::identity::{Identity, IdentityConfig, RenewPolicy};
use weft_proxy::transport::{self, Hint, TransportHeader};
use weft_proxy_api::v1;

/// The proxy's own identity (pod `demo/web-0`, service account `web`).
const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

// ---------------------------------------------------------------------------------------------
// The app behind the proxy.

#[derive(Default)]
struct Seen {
    current: AtomicUsize,
    max: AtomicUsize,
    total: AtomicUsize,
    /// `weft-timeout-ms` and `grpc-timeout` of each request (`None`: absent).
    deadlines: Mutex<Vec<(Option<String>, Option<String>)>>,
}

impl Seen {
    fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
    fn deadlines(&self) -> Vec<(Option<String>, Option<String>)> {
        self.deadlines.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

struct InFlight(Arc<Seen>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An app on 127.0.0.1 (the proxy's default app address) that counts the requests it is
/// working on. `/gate` waits until the test opens the gate, `/sleep` takes 2 s, anything else
/// answers at once; every answer is `200 ok`.
struct App {
    port: u16,
    seen: Arc<Seen>,
    gate: watch::Sender<bool>,
}

impl App {
    async fn start(http2: bool) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Seen::default());
        let (gate, open) = watch::channel(false);
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = s.clone();
                let open = open.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let mut open = open.clone();
                        async move {
                            seen.total.fetch_add(1, Ordering::SeqCst);
                            let now = seen.current.fetch_add(1, Ordering::SeqCst) + 1;
                            seen.max.fetch_max(now, Ordering::SeqCst);
                            let _in_flight = InFlight(seen.clone());
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            };
                            if let Ok(mut d) = seen.deadlines.lock() {
                                d.push((header("weft-timeout-ms"), header("grpc-timeout")));
                            }
                            match req.uri().path() {
                                "/gate" => {
                                    let _ = open.wait_for(|o| *o).await;
                                }
                                "/sleep" => tokio::time::sleep(Duration::from_secs(2)).await,
                                _ => {}
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                        }
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
        App { port, seen, gate }
    }

    fn open_gate(&self) {
        let _ = self.gate.send(true);
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy, its operator, and callers.

/// The real `weft-proxy` binary, with its inbound listener known to the test.
struct Proxy {
    _child: Child,
    admin: SocketAddr,
    inbound: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    async fn start(control: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = proxy_command(control, dir.path());
        cmd.env("WEFT_PROXY_APP_IP", "127.0.0.1");
        let Spawned { child, bound, log } = spawn_proxy(cmd).await;
        Proxy {
            _child: child,
            admin: bound.admin,
            inbound: bound.inbound,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until `GET path` on the admin listener answers 200 with a body that `want` accepts.
    async fn admin_until(&self, path: &str, want: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let a = plain(self.admin, path, &[]).await;
                if a.status == 200 && want(&a.body) {
                    return a.body;
                }
                last = a.body;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "GET {path} never matched; last:\n{last}\nproxy log:\n{}",
                self.log()
            )
        })
    }

    /// Waits until the metrics contain `line`.
    async fn metric(&self, line: &str) {
        self.admin_until("/metrics", |m| m.lines().any(|l| l == line))
            .await;
    }
}

/// A fake operator and the proxy it configures, ready with config `v1`.
struct Mesh {
    op: FakeOperator,
    proxy: Proxy,
}

impl Mesh {
    async fn start(resources: Vec<v1::Resource>) -> Mesh {
        let mut op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
        let proxy = Proxy::start(&op.uri()).await;
        op.expect_subscribe().await;
        let mut mesh = Mesh { op, proxy };
        mesh.push("v1", resources).await;
        mesh.proxy.admin_until("/ready", |_| true).await;
        mesh
    }

    /// Pushes a full state and waits until the proxy has it in force.
    async fn push(&mut self, version: &str, resources: Vec<v1::Resource>) {
        self.op
            .push(full_state(&format!("n-{version}"), version, resources))
            .await;
        let ack = self.op.expect_ack().await;
        assert_eq!(ack.version, version, "log:\n{}", self.proxy.log());
        let want = format!("\"version\":\"{version}\"");
        self.proxy
            .admin_until("/config", |c| c.replace(' ', "").contains(&want))
            .await;
    }

    /// A mesh identity certified by the operator: `spiffe://cluster.local/ns/demo/sa/<sa>`.
    async fn caller(&self, sa: &str) -> Caller {
        let token = tempfile::NamedTempFile::new().expect("token file");
        std::fs::write(token.path(), TOKEN).expect("write token");
        let cfg = IdentityConfig {
            control_addr: self.op.uri(),
            token_file: token.path().to_path_buf(),
            pod_namespace: "demo".into(),
            pod_name: format!("{sa}-0"),
            service_account: sa.into(),
            trust_domain: "cluster.local".into(),
            trust_anchors: None,
        };
        let channel = tonic::transport::Endpoint::from_shared(self.op.uri())
            .expect("operator uri")
            .connect_lazy();
        let policy = RenewPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..RenewPolicy::default()
        };
        let (identity, driver) = Identity::with_policy(cfg, channel, policy);
        tokio::spawn(driver);
        tokio::time::timeout(WAIT, identity.ready())
            .await
            .expect("caller certified");
        Caller {
            identity,
            _token: token,
        }
    }
}

struct Caller {
    identity: Identity,
    _token: tempfile::NamedTempFile,
}

impl Caller {
    /// An mTLS connection to the proxy's inbound listener for the app's `port`.
    async fn connect(&self, proxy: &Proxy, port: u16, hint: Hint) -> transport::MeshStream {
        let header = TransportHeader { port, hint };
        transport::connect_mesh(&self.identity, proxy.inbound, WEB, header)
            .await
            .unwrap_or_else(|e| panic!("mTLS to the proxy: {e}"))
    }

    /// One HTTP/1.1 request over mTLS (hint `Detect`: the proxy reads the request head; hints
    /// `Http1`/`Http2` announce HTTP/2 from a client proxy).
    async fn get(&self, proxy: &Proxy, port: u16, path: &str, headers: &[(&str, &str)]) -> Answer {
        let tls = self.connect(proxy, port, Hint::Detect).await;
        exchange(tls, path, headers).await
    }
}

/// A response: status, headers (names lower case), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (`Connection: close`) on `io`; the whole response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let req = format!("GET {path} HTTP/1.1\r\nhost: web.demo\r\n{extra}connection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("response within the test's bound");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// One plaintext HTTP/1.1 request: an unauthenticated caller.
async fn plain(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    exchange(tcp, path, headers).await
}

/// Polls `cond` until it holds, within [`WAIT`].
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let ok = tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "never happened: {what}");
}

// ---------------------------------------------------------------------------------------------
// Config.

fn policy(ports: Vec<v1::InboundPort>) -> v1::Resource {
    v1::Resource {
        name: "inbound".into(),
        version: format!("in-{ports:?}"),
        kind: Some(v1::resource::Kind::Inbound(v1::InboundPolicy {
            identity: WEB.into(),
            default_policy: v1::DefaultPolicy::Allow as i32,
            ports,
        })),
    }
}

fn app_port(
    port: u16,
    protocol: v1::Protocol,
    limits: Option<v1::InboundLimits>,
) -> v1::InboundPort {
    v1::InboundPort {
        port: u32::from(port),
        protocol: protocol as i32,
        restricted: false,
        authorizations: vec![],
        limits,
    }
}

fn concurrency(max: u32, pending: u32) -> v1::InboundLimits {
    v1::InboundLimits {
        max_concurrent_requests: max,
        max_pending_requests: pending,
        ..Default::default()
    }
}

fn rate(requests_per_second: f64, burst: u32) -> Option<v1::RateLimit> {
    Some(v1::RateLimit {
        requests_per_second,
        burst,
    })
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// (a) `max_concurrent_requests: 2`, no queue: of 8 requests at once to a slow app, exactly 2
/// reach it; the other 6 get a fast `503` with `weft-reason: concurrency` while the 2 are still
/// held (so they were not queued), and the in-flight gauge says 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_lets_exactly_the_limit_reach_the_app_and_sheds_the_rest() {
    let app = App::start(false).await;
    let mesh = Mesh::start(vec![policy(vec![app_port(
        app.port,
        v1::Protocol::Http1,
        Some(concurrency(2, 0)),
    )])])
    .await;
    let inbound = mesh.proxy.inbound;
    let answered = Arc::new(AtomicUsize::new(0));
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let answered = answered.clone();
            tokio::spawn(async move {
                let a = plain(inbound, "/gate", &[]).await;
                answered.fetch_add(1, Ordering::SeqCst);
                a
            })
        })
        .collect();
    eventually("2 requests at the app and 6 answered", || {
        app.seen.current() == 2 && answered.load(Ordering::SeqCst) == 6
    })
    .await;
    let port = app.port;
    mesh.proxy
        .metric(&format!(
            "weft_proxy_inbound_in_flight_requests{{authority=\":{port}\"}} 2"
        ))
        .await;
    app.open_gate();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.expect("request task"));
    }
    assert_eq!(count(&answers, 200), 2, "{answers:?}");
    assert_eq!(count(&answers, 503), 6, "{answers:?}");
    for a in answers.iter().filter(|a| a.status == 503) {
        assert_eq!(a.header("weft-reason"), Some("concurrency"), "{a:?}");
    }
    assert_eq!(app.seen.max(), 2);
    assert_eq!(app.seen.total(), 2);
    mesh.proxy
        .metric(&format!(
            "weft_proxy_inbound_shed_requests_total{{authority=\":{port}\",reason=\"concurrency\"}} 6"
        ))
        .await;
    mesh.proxy
        .metric(&format!(
            "weft_proxy_inbound_in_flight_requests{{authority=\":{port}\"}} 0"
        ))
        .await;
    // Slots are free again.
    assert_eq!(plain(inbound, "/", &[]).await.status, 200);
}

/// (b) A port's rate limit of 5/s, burst 5: of 20 requests at once, 5 (plus whatever the
/// bucket refilled while they were being sent) reach the app; the rest get `429` with a
/// `Retry-After` of at least 1 s and `weft-reason: rate-limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_rate_limit_answers_429_with_retry_after_beyond_the_burst() {
    let app = App::start(false).await;
    let limits = v1::InboundLimits {
        rate_limit: rate(5.0, 5),
        ..Default::default()
    };
    let mesh = Mesh::start(vec![policy(vec![app_port(
        app.port,
        v1::Protocol::Http1,
        Some(limits),
    )])])
    .await;
    let inbound = mesh.proxy.inbound;
    let started = Instant::now();
    let requests: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { plain(inbound, "/", &[]).await }))
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.expect("request task"));
    }
    // Tokens the bucket can have refilled while the requests were sent (0 on a quick run).
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    let ok = count(&answers, 200);
    let limited = count(&answers, 429);
    assert_eq!(ok + limited, 20, "{answers:?}");
    assert!(
        (5..=5 + refilled).contains(&ok),
        "{ok} OK (refill allowance {refilled}): {answers:?}"
    );
    assert_eq!(app.seen.total(), ok);
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_eq!(a.header("weft-reason"), Some("rate-limit"), "{a:?}");
        let retry: u64 = a
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no whole-seconds Retry-After: {a:?}"));
        assert!(retry >= 1, "{a:?}");
    }
    let port = app.port;
    mesh.proxy
        .metric(&format!(
            "weft_proxy_inbound_rate_limited_requests_total{{authority=\":{port}\",scope=\"total\"}} {limited}"
        ))
        .await;
}

/// (c) Per calling identity: `a` exhausts its bucket and gets `429`, `b` is still served; a
/// caller that authorization denies gets `403` and spends no token (the port's total bucket
/// would otherwise be empty before `a` and `b` start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_rate_limit_isolates_callers_and_denied_callers_spend_nothing() {
    let app = App::start(false).await;
    let a_id = "spiffe://cluster.local/ns/demo/sa/a";
    let b_id = "spiffe://cluster.local/ns/demo/sa/b";
    let mut port = app_port(
        app.port,
        v1::Protocol::Http1,
        Some(v1::InboundLimits {
            // Slow refills (one token per 20 s): no refill during the test.
            rate_limit: rate(0.05, 5),
            rate_limit_per_identity: rate(0.05, 3),
            ..Default::default()
        }),
    );
    port.restricted = true;
    port.authorizations = vec![v1::Authorization {
        name: "demo/callers".into(),
        all_traffic: true,
        clients: Some(v1::authorization::Clients::Mesh(v1::MeshClients {
            identities: vec![a_id.into(), b_id.into()],
        })),
        ..Default::default()
    }];
    let mesh = Mesh::start(vec![policy(vec![port])]).await;
    let a = mesh.caller("a").await;
    let b = mesh.caller("b").await;
    let c = mesh.caller("c").await;
    let proxy = &mesh.proxy;

    // Denied callers, authenticated or not: 403, never 429, 5 times each.
    for _ in 0..5 {
        let denied = c.get(proxy, app.port, "/", &[]).await;
        assert_eq!(denied.status, 403, "{denied:?}");
        let anonymous = plain(proxy.inbound, "/", &[]).await;
        assert_eq!(anonymous.status, 403, "{anonymous:?}");
    }
    // a: its burst of 3, then 429 for the caller.
    for _ in 0..3 {
        let ok = a.get(proxy, app.port, "/", &[]).await;
        assert_eq!(ok.status, 200, "{ok:?}");
    }
    let limited = a.get(proxy, app.port, "/", &[]).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.header("weft-reason"), Some("rate-limit"));
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(retry >= 1, "{limited:?}");
    // b is unaffected by a.
    for _ in 0..2 {
        let ok = b.get(proxy, app.port, "/", &[]).await;
        assert_eq!(ok.status, 200, "{ok:?}");
    }
    assert_eq!(app.seen.total(), 5);
    let p = app.port;
    proxy
        .metric(&format!(
            "weft_proxy_inbound_rate_limited_requests_total{{authority=\":{p}\",scope=\"identity\"}} 1"
        ))
        .await;
    // The port's bucket (5) is now empty: b's next request (b has a token left) is refused by
    // it.
    let total = b.get(proxy, app.port, "/", &[]).await;
    assert_eq!(total.status, 429, "{total:?}");
    proxy
        .metric(&format!(
            "weft_proxy_inbound_rate_limited_requests_total{{authority=\":{p}\",scope=\"total\"}} 1"
        ))
        .await;
    assert_eq!(app.seen.total(), 5);
}

/// (d) Deadlines at the server side: `weft-timeout-ms: 200` to an app that takes 2 s is
/// answered `504` (`weft-reason: deadline`), and the app was told at most 200 ms; an expired
/// deadline (`0`) is answered `504` without calling the app; a gRPC request with
/// `grpc-timeout: 200m` gets a trailers-only `DEADLINE_EXCEEDED` (grpc-status 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_bound_the_app_and_travel_on_rewritten() {
    let app = App::start(false).await;
    let grpc_app = App::start(true).await;
    let mesh = Mesh::start(vec![policy(vec![
        app_port(app.port, v1::Protocol::Http1, None),
        app_port(grpc_app.port, v1::Protocol::Grpc, None),
    ])])
    .await;
    let caller = mesh.caller("a").await;
    let proxy = &mesh.proxy;

    let late = caller
        .get(proxy, app.port, "/sleep", &[("weft-timeout-ms", "200")])
        .await;
    assert_eq!(late.status, 504, "{late:?}");
    assert_eq!(late.header("weft-reason"), Some("deadline"), "{late:?}");
    eventually("the app saw the request", || app.seen.total() == 1).await;
    let seen = app.seen.deadlines();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let told: u64 = seen[0]
        .0
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the app was not told the deadline: {seen:?}"));
    assert!(told <= 200, "{seen:?}");

    let expired = caller
        .get(proxy, app.port, "/", &[("weft-timeout-ms", "0")])
        .await;
    assert_eq!(expired.status, 504, "{expired:?}");
    assert_eq!(expired.header("weft-reason"), Some("deadline"));
    assert_eq!(app.seen.total(), 1, "the app saw the expired request");

    // A request without a deadline is not bounded and gets none.
    let free = caller.get(proxy, app.port, "/", &[]).await;
    assert_eq!(free.status, 200, "{free:?}");
    assert_eq!(app.seen.deadlines().last(), Some(&(None, None)));

    // gRPC over HTTP/2.
    let tls = caller.connect(proxy, grpc_app.port, Hint::Http2).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::post("http://web.demo/sleep")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "200m")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let rsp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("gRPC answer in time")
        .expect("gRPC answer");
    assert_eq!(rsp.status(), 200, "{rsp:?}");
    assert_eq!(
        rsp.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"4"[..]),
        "{rsp:?}"
    );
    assert_eq!(
        rsp.headers().get("weft-reason").map(|v| v.as_bytes()),
        Some(&b"deadline"[..])
    );
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    assert!(body.is_empty(), "a trailers-only response has no body");
    eventually("the gRPC app saw the request", || {
        grpc_app.seen.total() == 1
    })
    .await;
    let seen = grpc_app.seen.deadlines();
    let (weft, grpc) = seen.last().cloned().unwrap_or_default();
    let weft: u64 = weft.and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    assert!(weft <= 200, "{seen:?}");
    let grpc = grpc
        .and_then(|v| weft_proxy::http::deadline::parse_grpc_timeout(v.as_bytes()))
        .unwrap_or(Duration::MAX);
    assert!(grpc <= Duration::from_millis(200), "{seen:?}");

    let p = app.port;
    proxy
        .metric(&format!(
            "weft_proxy_inbound_deadline_exceeded_requests_total{{authority=\":{p}\",stage=\"app\"}} 1"
        ))
        .await;
    proxy
        .metric(&format!(
            "weft_proxy_inbound_deadline_exceeded_requests_total{{authority=\":{p}\",stage=\"arrival\"}} 1"
        ))
        .await;
}

/// (e) A push that keeps a port's limit does not reset it: with `max_concurrent_requests: 1`
/// and a request held at the app, a push of another config version still sheds the next
/// request; a push that raises the limit to 2 lets exactly one more in, and the two held
/// requests still count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_keeps_the_in_flight_count() {
    let app = App::start(false).await;
    let limited = |max| {
        policy(vec![app_port(
            app.port,
            v1::Protocol::Http1,
            Some(concurrency(max, 0)),
        )])
    };
    let mut mesh = Mesh::start(vec![limited(1)]).await;
    let inbound = mesh.proxy.inbound;
    let held = tokio::spawn(async move { plain(inbound, "/gate", &[]).await });
    eventually("1 request at the app", || app.seen.current() == 1).await;

    // Another version, the same limit (a new service appeared elsewhere).
    mesh.push(
        "v2",
        vec![
            limited(1),
            outbound("demo", "api", 80, "/"),
            endpoints("demo", "api", 80, &[free_port().await]),
        ],
    )
    .await;
    let shed = plain(inbound, "/", &[]).await;
    assert_eq!(shed.status, 503, "{shed:?}");
    assert_eq!(shed.header("weft-reason"), Some("concurrency"));

    // The limit raised to 2: one more (not two more) gets in.
    mesh.push("v3", vec![limited(2)]).await;
    let second = tokio::spawn(async move { plain(inbound, "/gate", &[]).await });
    eventually("2 requests at the app", || app.seen.current() == 2).await;
    let shed = plain(inbound, "/", &[]).await;
    assert_eq!(shed.status, 503, "{shed:?}");

    app.open_gate();
    assert_eq!(held.await.expect("task").status, 200);
    assert_eq!(second.await.expect("task").status, 200);
    assert_eq!(app.seen.max(), 2);
    let port = app.port;
    mesh.proxy
        .metric(&format!(
            "weft_proxy_inbound_in_flight_requests{{authority=\":{port}\"}} 0"
        ))
        .await;
    assert_eq!(plain(inbound, "/", &[]).await.status, 200);
}

/// The bounded queue: with one slot (held) and one queue place, of two more requests one waits
/// and is served once the slot frees, the other gets `503 pending` at once; a waiting request
/// gets `503 queue-timeout` when the queue timeout runs out, and `504 deadline` when its own
/// deadline is shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_queue_waits_for_a_slot_and_sheds_beyond_it() {
    let app = App::start(false).await;
    let queued = |queue_timeout_ms| {
        policy(vec![app_port(
            app.port,
            v1::Protocol::Http1,
            Some(v1::InboundLimits {
                queue_timeout_ms,
                ..concurrency(1, 1)
            }),
        )])
    };
    let mut mesh = Mesh::start(vec![queued(60_000)]).await;
    let inbound = mesh.proxy.inbound;
    let held = tokio::spawn(async move { plain(inbound, "/gate", &[]).await });
    eventually("1 request at the app", || app.seen.current() == 1).await;

    let answered = Arc::new(AtomicUsize::new(0));
    let two: Vec<_> = (0..2)
        .map(|_| {
            let answered = answered.clone();
            tokio::spawn(async move {
                let a = plain(inbound, "/", &[]).await;
                answered.fetch_add(1, Ordering::SeqCst);
                a
            })
        })
        .collect();
    // One of the two is shed at once; the other waits (the slot is still held).
    eventually("one of the two answered", || {
        answered.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(app.seen.total(), 1);
    app.open_gate();
    assert_eq!(held.await.expect("task").status, 200);
    let mut answers = Vec::new();
    for r in two {
        answers.push(r.await.expect("task"));
    }
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    let shed: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(shed.len(), 1, "{answers:?}");
    assert_eq!(shed[0].header("weft-reason"), Some("pending"));
    assert_eq!(app.seen.max(), 1);
    assert_eq!(app.seen.total(), 2);

    // A short queue timeout; the slot held again.
    mesh.push("v2", vec![queued(100)]).await;
    let _ = app.gate.send(false);
    let held = tokio::spawn(async move { plain(inbound, "/gate", &[]).await });
    eventually("1 request at the app", || app.seen.current() == 1).await;
    let timed_out = plain(inbound, "/", &[]).await;
    assert_eq!(timed_out.status, 503, "{timed_out:?}");
    assert_eq!(timed_out.header("weft-reason"), Some("queue-timeout"));
    // A deadline shorter than the queue timeout: the deadline answers.
    mesh.push("v3", vec![queued(60_000)]).await;
    let late = plain(inbound, "/", &[("weft-timeout-ms", "100")]).await;
    assert_eq!(late.status, 504, "{late:?}");
    assert_eq!(late.header("weft-reason"), Some("deadline"));
    app.open_gate();
    assert_eq!(held.await.expect("task").status, 200);
    assert_eq!(app.seen.total(), 3);
    let port = app.port;
    for line in [
        format!("weft_proxy_inbound_shed_requests_total{{authority=\":{port}\",reason=\"pending\"}} 1"),
        format!("weft_proxy_inbound_shed_requests_total{{authority=\":{port}\",reason=\"queue-timeout\"}} 1"),
        format!("weft_proxy_inbound_deadline_exceeded_requests_total{{authority=\":{port}\",stage=\"queue\"}} 1"),
    ] {
        mesh.proxy.metric(&line).await;
    }
}
