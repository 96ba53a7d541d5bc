//! HTTP/1.1 upgrades (WebSocket) through the mesh with real sockets on loopback: a client
//! speaking raw HTTP/1.1 to the outbound proxy, mTLS to the server proxy, and an app that answers
//! the WebSocket handshake with `101` and then echoes bytes.

mod dataplane_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dataplane_support::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::transport::NoIdentity;
use weft_proxy_api::v1;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const API: &str = "spiffe://cluster.local/ns/demo/sa/api";
/// The key/accept pair of RFC 6455 section 1.3.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Bounds every wait of these tests (a hang fails instead of blocking the suite).
const WAIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {WAIT:?}"),
    }
}

/// A request as the app received it: path and headers (names lower-case).
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

fn seen(log: &SeenLog) -> Vec<Seen> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Reads an HTTP/1 head (up to `\r\n\r\n`); returns it and any bytes read past it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        assert!(buf.len() < 64 * 1024, "head too long");
        let n = ok(within("reading a head", s.read(&mut chunk)).await);
        assert!(n > 0, "EOF before the end of the head: {:?}", buf);
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_head(head: &str) -> (String, HashMap<String, String>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (first, headers)
}

/// An app written against raw sockets, so the proxies are the only HTTP implementation on the
/// path. For an `Upgrade: websocket` request it answers `101` with the accept value for the
/// RFC's sample key, and in the same write a greeting; then it echoes every byte and, when the
/// client closes its side, says `bye` and closes. `/refuse` gets `426`, anything else `200`.
async fn ws_app(ip: &str) -> (SocketAddr, SeenLog) {
    let l = ok(TcpListener::bind(format!("{ip}:0")).await);
    let addr = ok(l.local_addr());
    let log: SeenLog = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = log2.clone();
            tokio::spawn(async move {
                let (head, rest) = read_head(&mut s).await;
                let (line, headers) = parse_head(&head);
                let mut parts = line.split(' ');
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                if let Ok(mut l) = log.lock() {
                    l.push(Seen {
                        method,
                        path: path.clone(),
                        headers: headers.clone(),
                    });
                }
                let upgrade = headers.get("upgrade").map(String::as_str);
                if upgrade == Some("websocket") && path == "/refuse" {
                    let _ = s
                        .write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 7\r\nconnection: close\r\n\r\nrefused")
                        .await;
                    return;
                }
                if upgrade == Some("websocket") {
                    let accept = match headers.get("sec-websocket-key").map(String::as_str) {
                        Some(WS_KEY) => WS_ACCEPT,
                        _ => "unknown-key",
                    };
                    let answer = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\nhello from app"
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if s.write_all(&rest).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.write_all(b"bye").await;
                    let _ = w.shutdown().await;
                    return;
                }
                let body = format!("plain:{path}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, log)
}

/// Opens a connection to `proxy` and sends a WebSocket handshake for `path`; returns the stream,
/// the response head and the bytes that followed it.
async fn handshake(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    upgrade: &str,
) -> (TcpStream, String, Vec<u8>) {
    let mut s = ok(TcpStream::connect(proxy).await);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: {upgrade}\r\nConnection: keep-alive, Upgrade\r\nKeep-Alive: timeout=5\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    ok(s.write_all(req.as_bytes()).await);
    let (head, rest) = read_head(&mut s).await;
    (s, head, rest)
}

/// Sends a plain GET on an already open connection and returns the status line and body.
async fn plain_get(s: &mut TcpStream, host: &str, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    ok(s.write_all(req.as_bytes()).await);
    let (head, mut body) = read_head(s).await;
    let (status, headers) = parse_head(&head);
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = ok(within("reading a body", s.read(&mut chunk)).await);
        assert!(n > 0, "EOF in the body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Checks the `101`, reads the app's greeting, echoes a WebSocket frame and 256 KiB both ways at
/// once, then closes the client side and expects the app's `bye` and EOF.
async fn exercise_websocket(mut s: TcpStream, head: &str, mut rest: Vec<u8>) -> usize {
    let (status, headers) = parse_head(head);
    assert!(status.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        headers.get("sec-websocket-accept").map(String::as_str),
        Some(WS_ACCEPT),
        "{head}"
    );
    assert_eq!(
        headers.get("upgrade").map(String::as_str),
        Some("websocket")
    );
    assert!(
        headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{head}"
    );
    // A 1xx has no body framing.
    assert!(
        !headers.contains_key("content-length") && !headers.contains_key("transfer-encoding"),
        "{head}"
    );

    let greeting = b"hello from app";
    while rest.len() < greeting.len() {
        let mut chunk = [0u8; 64];
        let n = ok(within("greeting", s.read(&mut chunk)).await);
        assert!(n > 0, "EOF before the greeting");
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&rest[..greeting.len()], greeting);
    let mut echoed = rest[greeting.len()..].to_vec();

    // A masked WebSocket text frame "ping", then a large payload: both directions at once.
    let mut sent = vec![
        0x81,
        0x84,
        1,
        2,
        3,
        4,
        b'p' ^ 1,
        b'i' ^ 2,
        b'n' ^ 3,
        b'g' ^ 4,
    ];
    sent.extend((0..256 * 1024).map(pattern_byte));
    let (mut r, mut w) = s.into_split();
    let payload = sent.clone();
    let writer = tokio::spawn(async move {
        ok(w.write_all(&payload).await);
        w
    });
    while echoed.len() < sent.len() {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = ok(within("echo", r.read(&mut chunk)).await);
        assert!(n > 0, "EOF after {} echoed bytes", echoed.len());
        echoed.extend_from_slice(&chunk[..n]);
    }
    assert!(echoed == sent, "echo differs");
    let mut w = ok(within("writer", writer).await);

    // The client closes its side: the close travels to the app, which answers and closes.
    ok(w.shutdown().await);
    let mut tail = Vec::new();
    ok(within("close", r.read_to_end(&mut tail)).await);
    assert_eq!(tail, b"bye");
    sent.len()
}

/// Polls `cond` on the metrics text until it holds (the splice records its bytes when both
/// directions are closed, just after the client saw its EOF).
async fn eventually_metrics(metrics: &weft_proxy::metrics::Metrics, cond: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = metrics.encode();
        if cond(&text) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric_value(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn inbound_policy(app_port: u16) -> Arc<weft_proxy::config::Config> {
    config(vec![res(
        "inbound",
        v1::resource::Kind::Inbound(v1::InboundPolicy {
            identity: API.into(),
            default_policy: v1::DefaultPolicy::Deny as i32,
            ports: vec![v1::InboundPort {
                limits: None,
                port: u32::from(app_port),
                protocol: v1::Protocol::Http1 as i32,
                restricted: true,
                authorizations: vec![v1::Authorization {
                    name: "demo/web-to-api".into(),
                    clients: mesh_clients(&[WEB]),
                    all_traffic: false,
                    http_routes: vec![
                        v1::HttpMatch {
                            name: "websocket".into(),
                            path_regex: "/chat|/refuse".into(),
                            methods: vec!["GET".into()],
                            headers: vec![v1::HeaderMatch {
                                name: "upgrade".into(),
                                value_regex: "websocket".into(),
                            }],
                            ..Default::default()
                        },
                        v1::HttpMatch {
                            name: "plain".into(),
                            path_regex: "/plain".into(),
                            methods: vec!["GET".into()],
                            headers: vec![],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
            }],
        }),
    )])
}

fn api_service(
    app: SocketAddr,
    identity: &str,
    inbound_port: u16,
) -> Arc<weft_proxy::config::Config> {
    config(vec![
        outbound(
            "demo",
            "api",
            9090,
            v1::Protocol::Http1,
            vec![v1::Route {
                name: "default".into(),
                matches: vec![],
                backends: vec![weighted("api", 1, "endpoints:api.demo:9090")],
                ..Default::default()
            }],
            None,
        ),
        endpoints(
            "endpoints:api.demo:9090",
            vec![endpoint(app, identity, inbound_port)],
        ),
    ])
}

struct Mesh {
    client: Proxy,
    server: Proxy,
    app: SocketAddr,
    seen: SeenLog,
}

/// Client proxy (as `web`) → mTLS → server proxy (as `api`) → app, on 127.0.0.`last`.
async fn mesh(last: u8) -> Mesh {
    let ca = TestCa::new();
    let ip = format!("127.0.0.{last}");
    let (app, seen) = ws_app(&ip).await;
    let server = start_inbound(&ip, inbound_policy(app.port()), ca.identity(API)).await;
    let client = start_outbound(api_service(app, API, server.addr.port()), ca.identity(WEB)).await;
    Mesh {
        client,
        server,
        app,
        seen,
    }
}

#[tokio::test]
async fn websocket_through_two_proxies_over_mtls() {
    let m = mesh(7).await;
    let (s, head, rest) = handshake(m.client.addr, "api.demo:9090", "/chat", "websocket").await;
    let sent = exercise_websocket(s, &head, rest).await;

    // The app saw the handshake as the client sent it, minus the other hop-by-hop headers,
    // plus the client's identity asserted by the server proxy.
    let log = seen(&m.seen);
    assert_eq!(log.len(), 1, "{log:?}");
    let h = &log[0].headers;
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str()),
        ("GET", "/chat")
    );
    assert_eq!(h.get("upgrade").map(String::as_str), Some("websocket"));
    assert_eq!(h.get("connection").map(String::as_str), Some("upgrade"));
    assert_eq!(h.get("sec-websocket-key").map(String::as_str), Some(WS_KEY));
    assert_eq!(
        h.get("sec-websocket-version").map(String::as_str),
        Some("13")
    );
    assert_eq!(h.get("host").map(String::as_str), Some("api.demo:9090"));
    assert_eq!(h.get("x-weft-client-id").map(String::as_str), Some(WEB));
    assert!(!h.contains_key("keep-alive"), "{h:?}");

    // Both proxies counted the request as a 1xx and the bytes that went through the splice.
    eventually_metrics(&m.client.metrics, |t| {
        metric_value(
            t,
            "weft_proxy_tcp_bytes_total{direction=\"outbound\",authority=\"api.demo\",flow=\"client_to_server\"}",
        ) >= sent as u64
            && metric_value(
                t,
                "weft_proxy_tcp_bytes_total{direction=\"outbound\",authority=\"api.demo\",flow=\"server_to_client\"}",
            ) >= sent as u64
    })
    .await;
    let text = m.client.metrics.encode();
    assert!(
        text.contains(&format!("weft_proxy_requests_total{{direction=\"outbound\",authority=\"api.demo\",route=\"default\",backend=\"api\",status_class=\"1xx\",peer=\"{API}\"}} 1")),
        "{text}"
    );
    let port = m.app.port();
    eventually_metrics(&m.server.metrics, |t| {
        metric_value(
            t,
            &format!("weft_proxy_tcp_bytes_total{{direction=\"inbound\",authority=\":{port}\",flow=\"client_to_server\"}}"),
        ) >= sent as u64
    })
    .await;
    let text = m.server.metrics.encode();
    assert!(
        text.contains(&format!("weft_proxy_requests_total{{direction=\"inbound\",authority=\":{port}\",route=\"demo/web-to-api\",backend=\"\",status_class=\"1xx\",peer=\"{WEB}\"}} 1")),
        "{text}"
    );

    // Ordinary requests on the same proxies still take the pooled path.
    let c = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = ok(Request::get(format!("http://{}/plain", m.client.addr))
        .header("host", "api.demo:9090")
        .body(Full::new(Bytes::new())));
    let rsp = ok(within("plain request", c.request(req)).await);
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = ok(rsp.into_body().collect().await).to_bytes();
    assert_eq!(&body[..], b"plain:/plain");
    let log = seen(&m.seen);
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        log[1].headers.get("x-weft-client-id").map(String::as_str),
        Some(WEB)
    );
    assert!(!log[1].headers.contains_key("upgrade"));
}

#[tokio::test]
async fn denied_upgrade_gets_403_and_is_not_spliced() {
    let m = mesh(8).await;
    // The path is not covered by the TrafficTarget.
    let (mut s, head, rest) =
        handshake(m.client.addr, "api.demo:9090", "/admin", "websocket").await;
    let (status, headers) = parse_head(&head);
    assert!(status.starts_with("HTTP/1.1 403"), "{head}");
    let reason = headers
        .get("x-weft-deny-reason")
        .cloned()
        .unwrap_or_default();
    assert!(reason.contains(WEB) && reason.contains("/admin"), "{head}");
    // The connection still speaks HTTP: nothing was spliced.
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = rest;
    while body.len() < len {
        let mut chunk = [0u8; 1024];
        let n = ok(within("403 body", s.read(&mut chunk)).await);
        assert!(n > 0);
        body.extend_from_slice(&chunk[..n]);
    }
    let (status, body) = plain_get(&mut s, "api.demo:9090", "/plain").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "plain:/plain");

    // The header match holds too: an upgrade to another protocol is not covered.
    let (_s, head, _) = handshake(m.client.addr, "api.demo:9090", "/chat", "smtp").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    // The app only ever saw the plain request.
    let log = seen(&m.seen);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].path, "/plain");
    let text = m.server.metrics.encode();
    assert!(
        text.contains("authorization=\"none\",decision=\"deny\",protocol=\"http\"} 2"),
        "{text}"
    );
    assert!(
        !text.contains("weft_proxy_tcp_bytes_total{direction=\"inbound\""),
        "{text}"
    );
}

#[tokio::test]
async fn refused_upgrade_is_an_ordinary_response() {
    let m = mesh(9).await;
    let (mut s, head, rest) =
        handshake(m.client.addr, "api.demo:9090", "/refuse", "websocket").await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    let mut body = rest;
    while body.len() < 7 {
        let mut chunk = [0u8; 64];
        let n = ok(within("426 body", s.read(&mut chunk)).await);
        assert!(n > 0);
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body, b"refused");
    // The client's connection goes on with HTTP.
    let (status, body) = plain_get(&mut s, "api.demo:9090", "/plain").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "plain:/plain");
    let text = m.client.metrics.encode();
    assert!(text.contains("status_class=\"4xx\""), "{text}");
}

#[tokio::test]
async fn upgrade_to_an_unmeshed_endpoint_and_connect_refused() {
    let (app, seen_log) = ws_app("127.0.0.10").await;
    let proxy = start_outbound(api_service(app, "", 0), Arc::new(NoIdentity)).await;
    let (s, head, rest) = handshake(proxy.addr, "api.demo:9090", "/chat", "websocket").await;
    exercise_websocket(s, &head, rest).await;
    let log = seen(&seen_log);
    assert_eq!(log.len(), 1);
    assert!(!log[0].headers.contains_key("x-weft-client-id"));

    // CONNECT is not proxied: a clear 501.
    let mut s = ok(TcpStream::connect(proxy.addr).await);
    ok(
        s.write_all(b"CONNECT api.demo:9090 HTTP/1.1\r\nHost: api.demo:9090\r\n\r\n")
            .await,
    );
    let (head, _) = read_head(&mut s).await;
    let (status, headers) = parse_head(&head);
    assert!(status.starts_with("HTTP/1.1 501"), "{head}");
    assert!(
        headers
            .get("x-weft-error")
            .is_some_and(|v| v.contains("CONNECT")),
        "{head}"
    );

    // Over HTTP/2 as well.
    let stream = ok(TcpStream::connect(proxy.addr).await);
    let (mut sender, conn) = ok(
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
            .await,
    );
    tokio::spawn(conn);
    let req = ok(Request::connect("api.demo:9090").body(Full::new(Bytes::new())));
    let rsp = ok(within("HTTP/2 CONNECT", sender.send_request(req)).await);
    assert_eq!(rsp.status(), StatusCode::NOT_IMPLEMENTED);
    assert!(rsp.headers().contains_key("x-weft-error"));
    assert_eq!(seen(&seen_log).len(), 1);
}

#[tokio::test]
async fn shutdown_lets_spliced_connections_run_until_the_grace_ends() {
    let (app, _) = ws_app("127.0.0.11").await;
    let proxy = start_outbound_with_grace(
        api_service(app, "", 0),
        Arc::new(NoIdentity),
        Duration::from_secs(3),
    )
    .await;
    let addr = proxy.addr;
    let (mut s, head, mut rest) = handshake(addr, "api.demo:9090", "/chat", "websocket").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    while rest.len() < 14 {
        let mut chunk = [0u8; 64];
        let n = ok(within("greeting", s.read(&mut chunk)).await);
        assert!(n > 0);
        rest.extend_from_slice(&chunk[..n]);
    }
    let stopped = tokio::spawn(proxy.shutdown());
    // Draining: the listener is closed...
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...but the spliced connection still works during the grace period...
    ok(s.write_all(b"still there").await);
    let mut buf = [0u8; 11];
    ok(within("echo while draining", s.read_exact(&mut buf)).await);
    assert_eq!(&buf, b"still there");
    // ...and is closed when it ends; then the proxy has finished.
    let mut rest = Vec::new();
    let _ = within("close at the deadline", s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
    ok(within("proxy stopped", stopped).await);
}
