//! Data-plane tests with real sockets on loopback: outbound and inbound proxies, small hyper
//! backends, configs built directly from proto resources.

mod dataplane_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dataplane_support::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_proxy::config::Config;
use weft_proxy::transport::{self, Hint, NoIdentity, TransportHeader};
use weft_proxy_api::v1;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const API: &str = "spiffe://cluster.local/ns/demo/sa/api";

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client(http2: bool) -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(HttpConnector::new())
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
    trailers: Option<http::HeaderMap>,
}

async fn send(c: &TestClient, proxy: SocketAddr, host: &str, method: &str, path: &str) -> Answer {
    send_with(c, proxy, host, method, path, &[]).await
}

async fn send_with(
    c: &TestClient,
    proxy: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let req = ok(b.body(Full::new(Bytes::from_static(b"ping"))));
    send_req(c, req).await
}

async fn send_req(c: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let rsp = ok(tokio::time::timeout(Duration::from_secs(20), c.request(req)).await);
    let rsp = ok(rsp);
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let collected = ok(rsp.into_body().collect().await);
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Answer {
        status,
        headers,
        body,
        trailers,
    }
}

/// A fresh HTTP/2 (prior knowledge) connection to `proxy`, driven by a task of its own.
async fn h2_connect(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = ok(tokio::net::TcpStream::connect(proxy).await);
    let (sender, conn) = ok(
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
            .await,
    );
    tokio::spawn(conn);
    sender
}

/// Sends one HTTP/2 (prior knowledge) request over a fresh connection to `proxy`, with the
/// service authority in the URI (`:authority`), as an explicit-mode h2 client would.
async fn send_h2(proxy: SocketAddr, uri: &str, method: &str, headers: &[(&str, &str)]) -> Answer {
    let mut sender = h2_connect(proxy).await;
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let req = ok(b.body(Full::new(Bytes::from_static(b"ping"))));
    let rsp = ok(ok(tokio::time::timeout(
        Duration::from_secs(20),
        sender.send_request(req),
    )
    .await));
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let collected = ok(rsp.into_body().collect().await);
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Answer {
        status,
        headers,
        body,
        trailers,
    }
}

fn default_route(backends: Vec<v1::WeightedBackend>) -> v1::Route {
    v1::Route {
        name: "default".into(),
        matches: vec![],
        backends,
        ..Default::default()
    }
}

#[tokio::test]
async fn weighted_split_is_per_request_over_keepalive() {
    let v1_addr = backend("127.0.0.2:0", "v1", false).await;
    let v2_addr = backend("127.0.0.3:0", "v2", false).await;
    let cfg = config(vec![
        outbound(
            "demo",
            "web",
            80,
            v1::Protocol::Detect,
            vec![v1::Route {
                name: "split:demo/canary".into(),
                matches: vec![],
                backends: vec![
                    weighted("web-v1", 900, "endpoints:web-v1.demo:80"),
                    weighted("web-v2", 100, "endpoints:web-v2.demo:80"),
                    weighted("web-v3", 0, "endpoints:web-v1.demo:80"),
                ],
                ..Default::default()
            }],
            None,
        ),
        endpoints("endpoints:web-v1.demo:80", vec![endpoint(v1_addr, "", 0)]),
        endpoints("endpoints:web-v2.demo:80", vec![endpoint(v2_addr, "", 0)]),
    ]);
    let proxy = start_outbound(cfg, Arc::new(NoIdentity)).await;
    // One client, keep-alive: every request travels the same connection to the proxy.
    let c = client(false);
    let mut v1_count = 0u32;
    let n = 1000;
    for _ in 0..n {
        let a = send(&c, proxy.addr, "web.demo.svc.cluster.local.", "GET", "/").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        match a.body.as_str() {
            "v1" => v1_count += 1,
            "v2" => {}
            other => panic!("unexpected backend {other}"),
        }
    }
    let share = f64::from(v1_count) / f64::from(n);
    assert!((0.85..=0.95).contains(&share), "v1 share {share}");
    let text = proxy.metrics.encode();
    assert!(
        text.contains("authority=\"web.demo\",route=\"split:demo/canary\",backend=\"web-v2\""),
        "{text}"
    );
}

#[tokio::test]
async fn ab_split_by_header_and_explicit_authority_forms() {
    let v1_addr = backend("127.0.0.2:0", "v1", false).await;
    let v2_addr = backend("127.0.0.3:0", "v2", false).await;
    let cfg = config(vec![
        outbound(
            "demo",
            "web",
            8080,
            v1::Protocol::Http1,
            vec![
                v1::Route {
                    name: "split:demo/ab".into(),
                    matches: vec![v1::HttpMatch {
                        name: "beta".into(),
                        path_regex: "/app".into(),
                        methods: vec!["GET".into()],
                        headers: vec![v1::HeaderMatch {
                            name: "x-beta".into(),
                            value_regex: "yes|1".into(),
                        }],
                        ..Default::default()
                    }],
                    backends: vec![weighted("web-v2", 1, "endpoints:web-v2.demo:8080")],
                    ..Default::default()
                },
                default_route(vec![weighted("web", 1, "endpoints:web-v1.demo:8080")]),
            ],
            None,
        ),
        endpoints("endpoints:web-v1.demo:8080", vec![endpoint(v1_addr, "", 0)]),
        endpoints("endpoints:web-v2.demo:8080", vec![endpoint(v2_addr, "", 0)]),
    ]);
    let proxy = start_outbound(cfg, Arc::new(NoIdentity)).await;
    let c = client(false);
    let h = |v: &'static str| [("x-beta", v)];
    let a = send_with(&c, proxy.addr, "web.demo:8080", "GET", "/app/x", &h("yes")).await;
    assert_eq!(a.body, "v2");
    let a = send_with(&c, proxy.addr, "web.demo:8080", "GET", "/app/x", &h("no")).await;
    assert_eq!(a.body, "v1");
    let a = send_with(&c, proxy.addr, "web.demo:8080", "POST", "/app", &h("1")).await;
    assert_eq!(a.body, "v1");
    let a = send_with(
        &c,
        proxy.addr,
        "web.demo.svc:8080",
        "GET",
        "/other",
        &h("1"),
    )
    .await;
    assert_eq!(a.body, "v1");
    // The only port is used when the authority names none.
    let a = send_with(&c, proxy.addr, "web.demo", "GET", "/app", &h("1")).await;
    assert_eq!(a.body, "v2");
}

#[tokio::test]
async fn proxy_errors_503_502_504() {
    let slow = backend("127.0.0.2:0", "slow", false).await;
    // A port with nothing listening.
    let refused = {
        let l = ok(TcpListener::bind("127.0.0.3:0").await);
        ok(l.local_addr())
    };
    let cfg = config(vec![
        outbound(
            "demo",
            "slow",
            80,
            v1::Protocol::Detect,
            vec![default_route(vec![weighted(
                "slow",
                1,
                "endpoints:slow.demo:80",
            )])],
            Some(v1::TrafficPolicy {
                request_timeout_ms: 300,
                max_retries: 0,
                retry_budget_ratio: 0.0,
                retry_non_idempotent: false,
                ..Default::default()
            }),
        ),
        outbound(
            "demo",
            "down",
            80,
            v1::Protocol::Detect,
            vec![default_route(vec![weighted(
                "down",
                1,
                "endpoints:down.demo:80",
            )])],
            None,
        ),
        outbound(
            "demo",
            "empty",
            80,
            v1::Protocol::Detect,
            vec![default_route(vec![weighted(
                "empty",
                1,
                "endpoints:missing",
            )])],
            None,
        ),
        endpoints("endpoints:slow.demo:80", vec![endpoint(slow, "", 0)]),
        endpoints("endpoints:down.demo:80", vec![endpoint(refused, "", 0)]),
    ]);
    let proxy = start_outbound(cfg, Arc::new(NoIdentity)).await;
    let c = client(false);

    let a = send(&c, proxy.addr, "nope.demo", "GET", "/").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.body.contains("unknown service nope.demo"), "{}", a.body);
    assert!(a.headers.contains_key("x-weft-error"));

    let a = send(&c, proxy.addr, "empty.demo", "GET", "/").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.body.contains("no endpoints"), "{}", a.body);

    let a = send(&c, proxy.addr, "down.demo", "GET", "/").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);

    let a = send(&c, proxy.addr, "slow.demo", "GET", "/slow").await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);

    // The proxy is still fine.
    let a = send(&c, proxy.addr, "slow.demo", "GET", "/").await;
    assert_eq!(a.body, "slow");

    // Malformed request: 400 from the HTTP/1 parser.
    let mut s = ok(tokio::net::TcpStream::connect(proxy.addr).await);
    ok(s.write_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        .await);
    let mut buf = vec![0u8; 64];
    let n = ok(s.read(&mut buf).await);
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Oversized headers: 431.
    let mut s = ok(tokio::net::TcpStream::connect(proxy.addr).await);
    let big = "x".repeat(80 * 1024);
    let req = format!("GET / HTTP/1.1\r\nhost: slow.demo\r\nx-big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let n = ok(s.read(&mut buf).await);
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

fn inbound_policy(app_port: u16, default: v1::DefaultPolicy, restricted: bool) -> Arc<Config> {
    config(vec![res(
        "inbound",
        v1::resource::Kind::Inbound(v1::InboundPolicy {
            identity: API.into(),
            default_policy: default as i32,
            ports: vec![v1::InboundPort {
                limits: None,
                port: u32::from(app_port),
                protocol: v1::Protocol::Grpc as i32,
                restricted,
                authorizations: vec![v1::Authorization {
                    name: "demo/web-to-api".into(),
                    clients: mesh_clients(&[WEB]),
                    all_traffic: false,
                    http_routes: vec![v1::HttpMatch {
                        name: "grpc".into(),
                        path_regex: "/trailers|/allowed".into(),
                        methods: vec!["*".into()],
                        headers: vec![],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }],
        }),
    )])
}

/// The client proxy's config for `api.demo:9090` (`protocol`): one backend, whose one endpoint
/// is `app` behind the server proxy `api` at `inbound_port`.
fn api_over_the_mesh(protocol: v1::Protocol, app: SocketAddr, inbound_port: u16) -> Arc<Config> {
    config(vec![
        outbound(
            "demo",
            "api",
            9090,
            protocol,
            vec![default_route(vec![weighted(
                "api",
                1,
                "endpoints:api.demo:9090",
            )])],
            None,
        ),
        endpoints(
            "endpoints:api.demo:9090",
            vec![endpoint(app, API, inbound_port)],
        ),
    ])
}

#[tokio::test]
async fn two_proxies_mtls_http2_trailers_and_authorization() {
    let ca = TestCa::new();
    let app = backend("127.0.0.4:0", "api", true).await;
    let server = start_inbound(
        "127.0.0.4",
        inbound_policy(app.port(), v1::DefaultPolicy::Allow, true),
        ca.identity(API),
    )
    .await;
    let cfg = api_over_the_mesh(v1::Protocol::Grpc, app, server.addr.port());
    let client_proxy = start_outbound(cfg, ca.identity(WEB)).await;

    for http2 in [true, false] {
        let c = client(false);
        // gRPC-like: HTTP/2 end to end with trailers (or HTTP/1.1 from the app's client).
        let a = if http2 {
            send_h2(
                client_proxy.addr,
                "http://api.demo:9090/trailers",
                "POST",
                &[("te", "trailers")],
            )
            .await
        } else {
            send(&c, client_proxy.addr, "api.demo:9090", "POST", "/trailers").await
        };
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body, "api:4");
        let trailers = a.trailers.unwrap_or_default();
        if http2 {
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..])
            );
        }
        // The server proxy told the app who the client is.
        assert_eq!(
            a.headers.get("x-client-id").map(|v| v.as_bytes()),
            Some(WEB.as_bytes())
        );
        // Not covered by the TrafficTarget: 403 with a reason.
        let a = if http2 {
            send_h2(client_proxy.addr, "http://api.demo:9090/admin", "GET", &[]).await
        } else {
            send(&c, client_proxy.addr, "api.demo:9090", "GET", "/admin").await
        };
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        let reason = a
            .headers
            .get("x-weft-deny-reason")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            reason.contains(WEB) && reason.contains("/admin"),
            "{reason}"
        );
    }

    // An unmeshed client talking plaintext to the restricted port is denied.
    let c = client(false);
    let a = send(&c, server.addr, "api.demo", "GET", "/allowed").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Opening the port to everyone (unrestricted, default allow) lets it in.
    ok(server
        .config
        .send(inbound_policy(app.port(), v1::DefaultPolicy::Allow, false)));
    let a = send(&c, server.addr, "api.demo", "GET", "/allowed").await;
    assert_eq!(a.status, StatusCode::OK);
    // With default mesh, unauthenticated clients are denied again.
    ok(server
        .config
        .send(inbound_policy(app.port(), v1::DefaultPolicy::Mesh, false)));
    let a = send(&c, server.addr, "api.demo", "GET", "/allowed").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    let text = server.metrics.encode();
    assert!(
        text.contains("authorization=\"demo/web-to-api\",decision=\"allow\""),
        "{text}"
    );
    assert!(text.contains("decision=\"deny\""), "{text}");
}

/// Many requests at once over one HTTP/2 client connection, through both proxies and the mTLS
/// mesh link between them, with request bodies of 66-113 KB and answers of 70-211 KB (6.8 MB of
/// answers in all, more than the 5 MiB connection window hyper advertises): every answer
/// arrives whole, byte for byte, and every request body reached the app whole.
#[tokio::test]
async fn concurrent_http2_streams_with_large_bodies_cross_the_mesh_whole() {
    let ca = TestCa::new();
    let app = backend("127.0.0.4:0", "api", false).await;
    let server = start_inbound("127.0.0.4", open_inbound(API, app), ca.identity(API)).await;
    let cfg = api_over_the_mesh(v1::Protocol::Http1, app, server.addr.port());
    let client_proxy = start_outbound(cfg, ca.identity(WEB)).await;

    let sender = h2_connect(client_proxy.addr).await;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..48usize {
        let mut sender = sender.clone();
        let (down, up) = (70_000 + i * 3_001, 66_000 + i * 1_009);
        requests.spawn(async move {
            let req = ok(Request::builder()
                .method("POST")
                .uri(format!("http://api.demo:9090/bytes/{down}"))
                .body(Full::new(Bytes::from(vec![7u8; up]))));
            let rsp = ok(ok(tokio::time::timeout(
                Duration::from_secs(30),
                sender.send_request(req),
            )
            .await));
            assert_eq!(rsp.status(), StatusCode::OK, "request {i}");
            assert_eq!(
                rsp.headers().get("x-request-bytes").map(|v| v.as_bytes()),
                Some(up.to_string().as_bytes()),
                "request {i}: the app got the whole request body"
            );
            let body =
                ok(tokio::time::timeout(Duration::from_secs(30), rsp.into_body().collect()).await);
            let body = ok(body).to_bytes();
            assert_eq!(body.len(), down, "request {i}");
            assert!(
                body.iter().enumerate().all(|(k, b)| *b == pattern_byte(k)),
                "request {i}: the body arrived altered"
            );
        });
    }
    while let Some(r) = requests.join_next().await {
        ok(r);
    }
}

/// An HTTP/1 app whose answer to `/head/N` carries an `x-big` header of N bytes.
async fn big_head_app(addr: &str) -> SocketAddr {
    let listener = ok(TcpListener::bind(addr).await);
    let local = ok(listener.local_addr());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let n: usize = req
                        .uri()
                        .path()
                        .strip_prefix("/head/")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    async move {
                        http::Response::builder()
                            .header("x-big", "y".repeat(n))
                            .body(Full::new(Bytes::from_static(b"big head")))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    local
}

#[tokio::test]
async fn response_heads_over_32_kib_are_502_from_apps_and_over_the_mesh() {
    // One limit on response heads (weft_proxy::http::MAX_RESPONSE_HEAD_BYTES) whichever way the
    // answer comes: from an unmeshed endpoint (HTTP/1), from an app through the server proxy and
    // the mesh link (HTTP/2 with mTLS). It bounds the buffer each pooled upstream connection
    // keeps (issue #20).
    let ca = TestCa::new();
    let app = big_head_app("127.0.0.6:0").await;
    let server = start_inbound("127.0.0.6", open_inbound(API, app), ca.identity(API)).await;
    let route = |name: &str| {
        outbound(
            "demo",
            name,
            80,
            v1::Protocol::Http1,
            vec![default_route(vec![weighted(
                name,
                1,
                &format!("endpoints:{name}.demo:80"),
            )])],
            None,
        )
    };
    let cfg = config(vec![
        route("plain"),
        route("meshed"),
        endpoints("endpoints:plain.demo:80", vec![endpoint(app, "", 0)]),
        endpoints(
            "endpoints:meshed.demo:80",
            vec![endpoint(app, API, server.addr.port())],
        ),
    ]);
    let client_proxy = start_outbound(cfg, ca.identity(WEB)).await;
    let c = client(false);
    for host in ["plain.demo", "meshed.demo"] {
        let a = send(&c, client_proxy.addr, host, "GET", "/head/30000").await;
        assert_eq!(a.status, StatusCode::OK, "{host}: {}", a.body);
        assert_eq!(
            a.headers.get("x-big").map(|v| v.len()),
            Some(30_000),
            "{host}"
        );
        let a = send(&c, client_proxy.addr, host, "GET", "/head/40000").await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{host}: {}", a.body);
        assert!(a.headers.contains_key("x-weft-error"), "{host}");
        // The connection that refused it does not hold back the next answer.
        let a = send(&c, client_proxy.addr, host, "GET", "/head/100").await;
        assert_eq!(a.status, StatusCode::OK, "{host}: {}", a.body);
    }
}

async fn echo_server(addr: &str) -> SocketAddr {
    let l = ok(TcpListener::bind(addr).await);
    let local = ok(l.local_addr());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    local
}

#[tokio::test]
async fn opaque_tcp_over_mtls_is_authorized_per_connection() {
    let ca = TestCa::new();
    let echo = echo_server("127.0.0.5:0").await;
    let policy = |all_traffic: bool| {
        config(vec![res(
            "inbound",
            v1::resource::Kind::Inbound(v1::InboundPolicy {
                identity: API.into(),
                default_policy: v1::DefaultPolicy::Deny as i32,
                ports: vec![v1::InboundPort {
                    limits: None,
                    port: u32::from(echo.port()),
                    protocol: v1::Protocol::Opaque as i32,
                    restricted: true,
                    authorizations: vec![v1::Authorization {
                        name: "demo/tcp".into(),
                        clients: mesh_clients(&[WEB]),
                        all_traffic,
                        http_routes: vec![],
                        ..Default::default()
                    }],
                }],
            }),
        )])
    };
    let server = start_inbound("127.0.0.5", policy(true), ca.identity(API)).await;
    let web = ca.identity(WEB);
    let header = TransportHeader {
        port: echo.port(),
        hint: Hint::Opaque,
    };
    let mut tls = ok(transport::connect_mesh(&*web, server.addr, API, header).await);
    ok(tls.write_all(b"hello through the mesh").await);
    let mut buf = [0u8; 22];
    ok(tls.read_exact(&mut buf).await);
    assert_eq!(&buf, b"hello through the mesh");

    // A client connecting as the wrong identity is refused by the client side check.
    let wrong = transport::connect_mesh(&*web, server.addr, WEB, header).await;
    assert!(wrong.is_err());

    // Without an all-traffic grant the connection is closed.
    ok(server.config.send(policy(false)));
    let mut tls = ok(transport::connect_mesh(&*web, server.addr, API, header).await);
    let _ = tls.write_all(b"x").await;
    let n = tls.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn plaintext_opaque_to_single_inbound_port() {
    let echo = echo_server("127.0.0.6:0").await;
    // A port of unknown protocol: bytes that cannot be HTTP are relayed. (A port declared
    // HTTP/gRPC or with HTTP rules serves HTTP only; see inbound_trust.rs.)
    let cfg = config(vec![res(
        "inbound",
        v1::resource::Kind::Inbound(v1::InboundPolicy {
            identity: API.into(),
            default_policy: v1::DefaultPolicy::Allow as i32,
            ports: vec![v1::InboundPort {
                limits: None,
                port: u32::from(echo.port()),
                protocol: v1::Protocol::Detect as i32,
                restricted: false,
                authorizations: vec![],
            }],
        }),
    )]);
    let server = start_inbound("127.0.0.6", cfg, Arc::new(NoIdentity)).await;
    let mut s = ok(tokio::net::TcpStream::connect(server.addr).await);
    ok(s.write_all(b"\x00binary").await);
    let mut buf = [0u8; 7];
    ok(s.read_exact(&mut buf).await);
    assert_eq!(&buf, b"\x00binary");
}
