//! The inbound proxy under attack (issue #13), with real sockets on loopback: in-process
//! inbound and outbound proxies, small apps, mTLS identities from a test CA.
//!
//! - The transport header only reaches the pod's listed application ports, never the proxy's
//!   own listeners, and only from a client with a verified mesh certificate.
//! - The app never sees an `x-weft-client-id` the proxy did not set, whatever the timing,
//!   method case or transport hint.
//! - A client that drips its request head is closed.
//! - Legitimate traffic still flows.

mod dataplane_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dataplane_support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use weft_proxy::config::Config;
use weft_proxy::inbound::{self, InboundSettings};
use weft_proxy::metrics::Metrics;
use weft_proxy::transport::{self, Hint, MeshIdentity, NoIdentity, TransportHeader};
use weft_proxy_api::v1;

const API: &str = "spiffe://cluster.local/ns/demo/sa/api";
const OTHER: &str = "spiffe://cluster.local/ns/demo/sa/other";
const ADMIN: &str = "spiffe://cluster.local/ns/demo/sa/admin";

/// An upper bound for anything the proxy must do within its 10 s head timeout.
const BOUND: Duration = Duration::from_secs(20);

fn port(port: u16, protocol: v1::Protocol) -> v1::InboundPort {
    v1::InboundPort {
        limits: None,
        port: u32::from(port),
        protocol: protocol as i32,
        restricted: false,
        authorizations: vec![],
    }
}

/// A policy for the pod `api`: `ports`, unrestricted, default allow (everyone).
fn policy(ports: Vec<v1::InboundPort>) -> Arc<Config> {
    config(vec![res(
        "inbound",
        v1::resource::Kind::Inbound(v1::InboundPolicy {
            identity: API.into(),
            default_policy: v1::DefaultPolicy::Allow as i32,
            ports,
        }),
    )])
}

fn default_route(backends: Vec<v1::WeightedBackend>) -> v1::Route {
    v1::Route {
        name: "default".into(),
        matches: vec![],
        backends,
        ..Default::default()
    }
}

struct Inbound {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _config: watch::Sender<Arc<Config>>,
    _stop: oneshot::Sender<()>,
}

/// An inbound proxy on `ip` for which `reserved` are the proxy's other listener ports.
async fn start(
    ip: &str,
    cfg: Arc<Config>,
    identity: Arc<dyn MeshIdentity>,
    reserved: Vec<u16>,
) -> Inbound {
    let listener = ok(TcpListener::bind(format!("{ip}:0")).await);
    let addr = ok(listener.local_addr());
    let (tx, rx) = watch::channel(cfg);
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let settings = InboundSettings {
        app_ip: addr.ip(),
        drain_grace: Duration::from_secs(1),
        ..Default::default()
    };
    let m = metrics.clone();
    tokio::spawn(async move {
        let _ = inbound::serve_reserving(listener, settings, reserved, rx, identity, m, async {
            let _ = stopped.await;
        })
        .await;
    });
    Inbound {
        addr,
        metrics,
        _config: tx,
        _stop: stop,
    }
}

/// Echoes every byte back.
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

/// A server-speaks-first app: greets, then echoes.
async fn greeting_server(addr: &str) -> SocketAddr {
    let l = ok(TcpListener::bind(addr).await);
    let local = ok(l.local_addr());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if s.write_all(b"220 hello\r\n").await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    local
}

/// Reads until the peer closes (or fails), within [`BOUND`]; panics if it stays open.
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    assert!(
        tokio::time::timeout(BOUND, read).await.is_ok(),
        "the connection was not closed"
    );
    out
}

/// The status code and `x-client-id` (what the app saw in `x-weft-client-id`) of the one
/// HTTP/1.1 response in `raw` (the app closes: `connection: close`).
fn response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let client = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-client-id")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, client)
}

/// An HTTP/1.1 request carrying a forged caller identity.
fn forged(method: &str) -> Vec<u8> {
    format!(
        "{method} / HTTP/1.1\r\nhost: api.demo\r\nx-weft-client-id: {ADMIN}\r\n\
         connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `first`, pauses, sends `rest`, returns everything read until the connection closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    first: &[u8],
    pause: Duration,
    rest: &[u8],
) -> Vec<u8> {
    let _ = s.write_all(first).await;
    tokio::time::sleep(pause).await;
    let _ = s.write_all(rest).await;
    read_until_closed(s).await
}

fn refused(metrics: &Metrics, reason: &str) -> bool {
    metrics.encode().contains(&format!(
        "authorization=\"refused:{reason}\",decision=\"deny\""
    ))
}

/// A TLS client config that trusts the mesh CA but presents no certificate.
fn anonymous(identity: &Arc<dyn MeshIdentity>) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*identity
        .client_config()
        .unwrap_or_else(|| panic!("client config")))
    .clone();
    cfg.client_auth_cert_resolver = Arc::new(NoClientCert);
    Arc::new(cfg)
}

#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
    fn has_certs(&self) -> bool {
        false
    }
}

/// The attack of issue #13: a pod with another identity opens mTLS to `client`'s inbound port
/// and names, in the transport header, `client`'s own outbound port (which would call `web` as
/// `client`), an admin-like listener of the proxy, or a port the pod never declared. Each is
/// refused, for every hint, even when the policy lists the proxy's ports; the app's declared
/// port still works for the same caller.
#[tokio::test]
async fn transport_header_reaches_only_the_apps_listed_ports() {
    let ca = TestCa::new();
    // The outbound proxy listens on 127.0.0.1, so the pod does too.
    let ip = "127.0.0.1";
    // The pod's app, on its declared port, and a service on a port it does not declare.
    let app = backend(&format!("{ip}:0"), "app", false).await;
    let undeclared = backend(&format!("{ip}:0"), "undeclared", false).await;
    // The pod's outbound proxy: it routes `web.demo` to the `web` app (which would answer 200
    // to anyone reaching it through this pod).
    let web = backend("127.0.13.2:0", "web", false).await;
    let outbound_cfg = config(vec![
        outbound(
            "demo",
            "web",
            80,
            v1::Protocol::Http1,
            vec![default_route(vec![weighted("web", 1, "endpoints:web")])],
            None,
        ),
        endpoints("endpoints:web", vec![endpoint(web, "", 0)]),
    ]);
    let client_outbound = start_outbound(outbound_cfg, ca.identity(API)).await;
    // An admin-like listener of the proxy.
    let admin = backend(&format!("{ip}:0"), "admin", false).await;
    let cfg = policy(vec![
        port(app.port(), v1::Protocol::Detect),
        // Listed by mistake: still never a target.
        port(client_outbound.addr.port(), v1::Protocol::Detect),
        port(admin.port(), v1::Protocol::Http1),
    ]);
    let reserved = vec![client_outbound.addr.port(), admin.port()];
    let server = start(ip, cfg, ca.identity(API), reserved).await;
    let other = ca.identity(OTHER);

    // Sanity: the outbound proxy does call `web` when reached.
    let mut s = ok(TcpStream::connect(client_outbound.addr).await);
    let got = exchange(
        &mut s,
        b"",
        Duration::ZERO,
        &forged("GET").replace_host("web.demo"),
    )
    .await;
    assert_eq!(response(&got).0, 200, "{}", String::from_utf8_lossy(&got));

    for target in [client_outbound.addr.port(), admin.port(), undeclared.port()] {
        for hint in [Hint::Detect, Hint::Opaque, Hint::Http1, Hint::Http2] {
            let header = TransportHeader { port: target, hint };
            let mut tls = ok(transport::connect_mesh(&*other, server.addr, API, header).await);
            let request = forged("GET").replace_host("web.demo");
            let got = exchange(&mut tls, &request, Duration::ZERO, b"").await;
            assert!(
                got.is_empty(),
                "port {target} hint {hint:?}: {}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    assert!(refused(&server.metrics, "proxy_port"));
    assert!(refused(&server.metrics, "unlisted_port"));

    // The same caller reaches the declared port, and the app learns who it really is.
    let header = TransportHeader {
        port: app.port(),
        hint: Hint::Detect,
    };
    let mut tls = ok(transport::connect_mesh(&*other, server.addr, API, header).await);
    let got = exchange(&mut tls, &forged("GET"), Duration::ZERO, b"").await;
    assert_eq!(response(&got), (200, OTHER.to_string()));
}

trait ReplaceHost {
    fn replace_host(self, host: &str) -> Vec<u8>;
}

impl ReplaceHost for Vec<u8> {
    fn replace_host(self, host: &str) -> Vec<u8> {
        String::from_utf8_lossy(&self)
            .replace("host: api.demo", &format!("host: {host}"))
            .into_bytes()
    }
}

/// TLS to the inbound port without a client certificate, or with one from another CA, never
/// gets its transport header read: the connection is closed, even for a listed port that
/// admits everyone in plaintext.
#[tokio::test]
async fn mesh_connections_need_a_verified_client_certificate() {
    let ca = TestCa::new();
    let ip = "127.0.13.3";
    let app = echo_server(&format!("{ip}:0")).await;
    let cfg = policy(vec![port(app.port(), v1::Protocol::Opaque)]);
    let identity = ca.identity(API);
    let server = start(ip, cfg, identity.clone(), vec![]).await;
    let name = identity
        .server_name_for(API)
        .unwrap_or_else(|| panic!("server name"));
    let header = TransportHeader {
        port: app.port(),
        hint: Hint::Opaque,
    };

    // No client certificate.
    let connector = tokio_rustls::TlsConnector::from(anonymous(&identity));
    let tcp = ok(TcpStream::connect(server.addr).await);
    let mut tls = ok(connector.connect(name.clone(), tcp).await);
    let _ = header.write(&mut tls).await;
    let got = exchange(&mut tls, b"hello", Duration::ZERO, b"").await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(refused(&server.metrics, "no_client_certificate"));

    // A certificate from another CA: the handshake fails or the connection is closed.
    let foreign = TestCa::new().identity(API);
    let connector = tokio_rustls::TlsConnector::from(
        foreign
            .client_config()
            .unwrap_or_else(|| panic!("client config")),
    );
    let tcp = ok(TcpStream::connect(server.addr).await);
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = header.write(&mut tls).await;
        let got = exchange(&mut tls, b"hello", Duration::ZERO, b"").await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }

    // With a mesh certificate the same connection works.
    let mut tls = ok(transport::connect_mesh(&*ca.identity(OTHER), server.addr, API, header).await);
    ok(tls.write_all(b"hello").await);
    let mut buf = [0u8; 5];
    ok(tokio::time::timeout(BOUND, tls.read_exact(&mut buf))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string())));
    assert_eq!(&buf, b"hello");
}

/// Plaintext clients on a port of unknown protocol cannot smuggle `x-weft-client-id` to the
/// app: not by pausing after the first byte, not before it, not with a lower-case method, not
/// by dripping the request line byte by byte.
#[tokio::test]
async fn plaintext_clients_cannot_forge_the_caller_identity() {
    let ip = "127.0.13.4";
    let app = backend(&format!("{ip}:0"), "app", false).await;
    let cfg = policy(vec![port(app.port(), v1::Protocol::Detect)]);
    let server = start(ip, cfg, Arc::new(NoIdentity), vec![]).await;

    let pause = Duration::from_millis(1500);
    let req = forged("GET");
    let cases: Vec<(&str, Vec<u8>, Duration, Vec<u8>)> = vec![
        (
            "pause after the first byte",
            req[..1].to_vec(),
            pause,
            req[1..].to_vec(),
        ),
        ("pause before the first byte", vec![], pause, req.clone()),
        ("lower-case method", forged("get"), Duration::ZERO, vec![]),
        ("odd method token", forged("x-get"), Duration::ZERO, vec![]),
        (
            "leading empty line, then a pause",
            b"\r\n".to_vec(),
            pause,
            req.clone(),
        ),
    ];
    for (what, first, pause, rest) in cases {
        let mut s = ok(TcpStream::connect(server.addr).await);
        let got = exchange(&mut s, &first, pause, &rest).await;
        let (status, client) = response(&got);
        assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&got));
        assert_eq!(client, "", "{what}: the app saw a forged identity");
    }

    // Byte by byte, slowly (but within the head timeout): still HTTP.
    let mut s = ok(TcpStream::connect(server.addr).await);
    for b in &req {
        ok(s.write_all(&[*b]).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = read_until_closed(&mut s).await;
    assert_eq!(response(&got), (200, String::new()));
}

/// A meshed client's hint is only a hint: hint `0` (opaque) on an HTTP port, or on a port of
/// unknown protocol, does not make the proxy relay an HTTP request with a forged identity; the
/// app sees the client's verified identity.
#[tokio::test]
async fn meshed_clients_cannot_forge_the_caller_identity_with_hints() {
    let ca = TestCa::new();
    let ip = "127.0.13.5";
    let http_app = backend(&format!("{ip}:0"), "http", false).await;
    let grpc_rules_app = backend(&format!("{ip}:0"), "rules", false).await;
    let detect_app = backend(&format!("{ip}:0"), "detect", false).await;
    let mut with_rules = port(grpc_rules_app.port(), v1::Protocol::Detect);
    with_rules.restricted = true;
    with_rules.authorizations = vec![v1::Authorization {
        name: "demo/other-reads".into(),
        clients: mesh_clients(&[OTHER]),
        all_traffic: false,
        http_routes: vec![v1::HttpMatch {
            name: "all".into(),
            path_regex: "/".into(),
            methods: vec!["*".into()],
            headers: vec![],
            ..Default::default()
        }],
        ..Default::default()
    }];
    let cfg = policy(vec![
        port(http_app.port(), v1::Protocol::Http1),
        with_rules,
        port(detect_app.port(), v1::Protocol::Detect),
    ]);
    let server = start(ip, cfg, ca.identity(API), vec![]).await;
    let other = ca.identity(OTHER);

    for app in [http_app, grpc_rules_app, detect_app] {
        for (hint, pause) in [
            (Hint::Opaque, Duration::ZERO),
            (Hint::Opaque, Duration::from_millis(1500)),
            (Hint::Detect, Duration::from_millis(1500)),
        ] {
            let header = TransportHeader {
                port: app.port(),
                hint,
            };
            let mut tls = ok(transport::connect_mesh(&*other, server.addr, API, header).await);
            let req = forged("get");
            let got = exchange(&mut tls, &req[..1], pause, &req[1..]).await;
            assert_eq!(
                response(&got),
                (200, OTHER.to_string()),
                "port {} hint {hint:?} pause {pause:?}: {}",
                app.port(),
                String::from_utf8_lossy(&got)
            );
        }
    }
}

/// Slowloris: clients dripping a request head from their first byte are closed (within the
/// 10 s head timeout), on plaintext and mesh paths, on HTTP ports and ports of unknown
/// protocol; none becomes an opaque relay. Silence on an HTTP port is closed too.
#[tokio::test]
async fn dripping_clients_are_closed() {
    let ca = TestCa::new();
    let ip = "127.0.13.6";
    let detect_app = backend(&format!("{ip}:0"), "detect", false).await;
    let http_app = backend(&format!("{ip}:0"), "http", false).await;
    // Single-port policies, for the plaintext (non-redirected) path.
    let detect_only = start(
        ip,
        policy(vec![port(detect_app.port(), v1::Protocol::Detect)]),
        ca.identity(API),
        vec![],
    )
    .await;
    let http_only = start(
        ip,
        policy(vec![port(http_app.port(), v1::Protocol::Http1)]),
        ca.identity(API),
        vec![],
    )
    .await;
    let other = ca.identity(OTHER);

    async fn drip<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        mut s: S,
        silent: bool,
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut s);
            let dripping = async {
                if silent {
                    return std::future::pending::<()>().await;
                }
                for b in b"GET / HTTP/1.1\r\nhost: api.demo\r\nx-a: "
                    .iter()
                    .chain(std::iter::repeat(&b'a'))
                {
                    if w.write_all(&[*b]).await.is_err() {
                        return std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            tokio::select! {
                got = read_until_closed(&mut r) => got,
                () = dripping => Vec::new(),
            }
        })
    }

    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(drip(ok(TcpStream::connect(detect_only.addr).await), false).await);
        tasks.push(drip(ok(TcpStream::connect(http_only.addr).await), false).await);
        tasks.push(drip(ok(TcpStream::connect(http_only.addr).await), true).await);
        for target in [detect_app.port(), http_app.port()] {
            let inbound = if target == http_app.port() {
                http_only.addr
            } else {
                detect_only.addr
            };
            for hint in [Hint::Detect, Hint::Opaque] {
                let header = TransportHeader { port: target, hint };
                let tls = ok(transport::connect_mesh(&*other, inbound, API, header).await);
                tasks.push(drip(tls, false).await);
            }
        }
    }
    for t in tasks {
        let got = ok(t.await);
        // Closed without an answer from the app.
        assert!(
            !String::from_utf8_lossy(&got).contains("x-backend"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(refused(&detect_only.metrics, "head_timeout"));
    assert!(refused(&http_only.metrics, "head_timeout"));
}

/// Legitimate traffic: meshed HTTP through two proxies, meshed opaque TCP on an opaque port,
/// plaintext HTTP and opaque bytes on a port of unknown protocol, a server-speaks-first
/// protocol, and non-HTTP bytes on an HTTP port get a 400.
#[tokio::test]
async fn legitimate_traffic_still_flows() {
    let ca = TestCa::new();
    let ip = "127.0.13.7";
    let http_app = backend(&format!("{ip}:0"), "api", false).await;
    let echo = echo_server(&format!("{ip}:0")).await;
    let server = start(
        ip,
        policy(vec![
            port(http_app.port(), v1::Protocol::Http1),
            port(echo.port(), v1::Protocol::Opaque),
        ]),
        ca.identity(API),
        vec![],
    )
    .await;
    // Meshed HTTP through an outbound proxy: the app sees the client's identity.
    let cfg = config(vec![
        outbound(
            "demo",
            "api",
            80,
            v1::Protocol::Http1,
            vec![default_route(vec![weighted("api", 1, "endpoints:api")])],
            None,
        ),
        endpoints(
            "endpoints:api",
            vec![endpoint(http_app, API, server.addr.port())],
        ),
    ]);
    let client_proxy = start_outbound(cfg, ca.identity(OTHER)).await;
    let mut s = ok(TcpStream::connect(client_proxy.addr).await);
    let got = exchange(&mut s, &forged("GET"), Duration::ZERO, b"").await;
    assert_eq!(response(&got), (200, OTHER.to_string()));

    // Meshed opaque TCP on an opaque port.
    let header = TransportHeader {
        port: echo.port(),
        hint: Hint::Opaque,
    };
    let mut tls = ok(transport::connect_mesh(&*ca.identity(OTHER), server.addr, API, header).await);
    ok(tls.write_all(b"\x00raw bytes").await);
    let mut buf = [0u8; 10];
    ok(tls.read_exact(&mut buf).await);
    assert_eq!(&buf, b"\x00raw bytes");

    // Plaintext on a single port of unknown protocol: HTTP, binary, server-speaks-first.
    let detect_app = backend(&format!("{ip}:0"), "detect", false).await;
    let plain = start(
        ip,
        policy(vec![port(detect_app.port(), v1::Protocol::Detect)]),
        Arc::new(NoIdentity),
        vec![],
    )
    .await;
    let mut s = ok(TcpStream::connect(plain.addr).await);
    let got = exchange(&mut s, &forged("GET"), Duration::ZERO, b"").await;
    assert_eq!(response(&got), (200, String::new()));

    let echo_plain = start(
        ip,
        policy(vec![port(echo.port(), v1::Protocol::Detect)]),
        Arc::new(NoIdentity),
        vec![],
    )
    .await;
    let mut s = ok(TcpStream::connect(echo_plain.addr).await);
    ok(s.write_all(b"*1\r\n$4\r\nPING\r\n").await);
    let mut buf = [0u8; 14];
    ok(s.read_exact(&mut buf).await);
    assert_eq!(&buf, b"*1\r\n$4\r\nPING\r\n");

    let greeter = greeting_server(&format!("{ip}:0")).await;
    let greet_plain = start(
        ip,
        policy(vec![port(greeter.port(), v1::Protocol::Detect)]),
        Arc::new(NoIdentity),
        vec![],
    )
    .await;
    let mut s = ok(TcpStream::connect(greet_plain.addr).await);
    let mut buf = [0u8; 11];
    ok(tokio::time::timeout(BOUND, s.read_exact(&mut buf))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string())));
    assert_eq!(&buf, b"220 hello\r\n");
    ok(s.write_all(b"EHLO mail.example\r\n").await);
    let mut buf = [0u8; 19];
    ok(s.read_exact(&mut buf).await);
    assert_eq!(&buf, b"EHLO mail.example\r\n");

    // Bytes that cannot be HTTP on an HTTP port: 400, closed, nothing relayed.
    let http_plain = start(
        ip,
        policy(vec![port(http_app.port(), v1::Protocol::Http1)]),
        Arc::new(NoIdentity),
        vec![],
    )
    .await;
    let mut s = ok(TcpStream::connect(http_plain.addr).await);
    let got = exchange(&mut s, b"\x00binary", Duration::ZERO, b"").await;
    assert_eq!(response(&got).0, 400, "{}", String::from_utf8_lossy(&got));
    assert!(refused(&http_plain.metrics, "not_http"));
}
