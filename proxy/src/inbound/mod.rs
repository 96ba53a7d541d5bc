//! The inbound proxy: traffic to the local app, authorized against the pod's policy.
//!
//! A connection is forwarded only to one of the pod's application ports: a port listed in the
//! pod's inbound policy, never one of the proxy's own listeners (inbound, outbound, admin), even
//! if listed. Anything else is refused: the connection is closed, counted in
//! `authorizations_total{authorization="refused:<reason>",decision="deny"}` and logged at debug.
//!
//! - mTLS from another proxy (first byte `0x16` on the inbound port, not redirected): the client
//!   must present a certificate that verifies against the trust anchors and carries a mesh
//!   identity, else the connection is closed before the transport header is read. Then the
//!   transport header names the target port and a hint.
//! - Plaintext from unmeshed clients: with transparent redirection the target port is the
//!   original destination port (`SO_ORIGINAL_DST`; a loopback original destination is refused);
//!   without it, the pod's single inbound port if its policy lists exactly one, else the
//!   connection is closed. The client has no identity, so only ports whose policy admits
//!   unauthenticated clients serve it.
//!
//! The protocol is the inbound proxy's decision, from the port's policy; a client's hint can
//! never make an HTTP port opaque:
//! - HTTP ports (declared `http`/`http2`/`grpc`, or with HTTP rules in an authorization): HTTP
//!   only. Hints `2`/`3` (HTTP/2 from a client proxy) are served directly; otherwise the proxy
//!   reads the request head itself; bytes that cannot be HTTP get `400` and are closed.
//! - Opaque ports (declared `opaque`): bytes are relayed (hints `2`/`3` are still served as
//!   HTTP); the app gets no `x-weft-client-id` and must not trust one it finds.
//! - Other ports (protocol unknown): [`transport::sniff`] decides. Anything that could be an
//!   HTTP request is served as HTTP; only bytes that cannot be HTTP are relayed. A client silent
//!   for [`transport::DETECT_TIMEOUT`] (or a meshed client's hint `0`) gets a relay for
//!   server-speaks-first protocols, but its first bytes are still held back until they are known
//!   not to be HTTP; HTTP there is served as HTTP if the app has not spoken, else closed.
//!
//! On every detection path a request head (or bytes that cannot be HTTP) must arrive within
//! [`transport::HEAD_TIMEOUT`]; then the connection is closed, never relayed.
//!
//! HTTP/1.1 upgrade requests (WebSocket, ...) are authorized like any request, then forwarded to
//! the app on a connection of their own and spliced on `101` (see [`crate::http::upgrade`]).
//! CONNECT gets `501`.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Config, InboundPort, Protocol};
use crate::http::upgrade::{self, Splice};
use crate::http::{self as h, Body, PlainClients};
use crate::metrics::{self, LabelValue, Metrics, RequestLabels, INBOUND};
use crate::route::{self, Decision, RequestInfo};
use crate::transport::{
    self, Drain, Head, Hint, MeshIdentity, PrefixedIo, Sniff, Sniffer, TransportHeader,
};

/// Grace period for in-flight work when the listener shuts down.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Settings of the inbound side.
#[derive(Clone, Debug)]
pub struct InboundSettings {
    /// Where the app listens (`WEFT_PROXY_APP_IP`).
    pub app_ip: IpAddr,
    /// Time in-flight connections get to finish on shutdown.
    pub drain_grace: Duration,
}

impl Default for InboundSettings {
    fn default() -> Self {
        InboundSettings {
            app_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            drain_grace: DRAIN_GRACE,
        }
    }
}

/// Why a connection was refused before any authorization (the `refused:<reason>` metric label).
mod refused {
    pub const UNLISTED_PORT: &str = "refused:unlisted_port";
    pub const PROXY_PORT: &str = "refused:proxy_port";
    pub const LOOPBACK_DESTINATION: &str = "refused:loopback_destination";
    pub const NO_CLIENT_CERTIFICATE: &str = "refused:no_client_certificate";
    pub const NO_MESH_IDENTITY: &str = "refused:no_mesh_identity";
    pub const NOT_HTTP: &str = "refused:not_http";
    pub const HEAD_TIMEOUT: &str = "refused:head_timeout";
    pub const HTTP_AFTER_SERVER_BYTES: &str = "refused:http_after_server_bytes";
}

struct Shared {
    settings: InboundSettings,
    /// The proxy's own listener ports: never a target.
    reserved: BTreeSet<u16>,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    plain: PlainClients,
}

/// How a port's bytes are treated, from its policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// HTTP only: declared HTTP/1, HTTP/2 or gRPC, or with HTTP rules.
    Http,
    /// Declared opaque (or UDP): relayed.
    Opaque,
    /// Unknown: detected per connection.
    Detect,
}

fn mode(port: &InboundPort) -> Mode {
    let http_rules = port
        .authorizations
        .iter()
        .any(|a| !a.all_traffic && !a.http_routes.is_empty());
    match port.protocol {
        Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => Mode::Http,
        _ if http_rules => Mode::Http,
        Protocol::Opaque | Protocol::Udp => Mode::Opaque,
        Protocol::Detect => Mode::Detect,
    }
}

/// What the connection may reach.
#[derive(Clone, Copy, Debug)]
struct Target {
    port: u16,
    mode: Mode,
    protocol: Protocol,
}

impl Target {
    /// Whether the app speaks HTTP/2 on this port: its declared protocol, else the client's.
    fn app_h2(&self, downstream_h2: bool) -> bool {
        match self.protocol {
            Protocol::Http2 | Protocol::Grpc => true,
            Protocol::Http1 => false,
            _ => downstream_h2,
        }
    }
}

impl Shared {
    /// The target for `port`, if it is one of the app's ports.
    fn target(&self, port: u16) -> Result<Target, &'static str> {
        if self.reserved.contains(&port) {
            return Err(refused::PROXY_PORT);
        }
        let config = self.config.borrow();
        let p = config
            .inbound
            .ports
            .get(&port)
            .ok_or(refused::UNLISTED_PORT)?;
        Ok(Target {
            port,
            mode: mode(p),
            protocol: p.protocol,
        })
    }

    fn refuse(&self, reason: &'static str, port: Option<u16>, peer: Option<&str>) {
        self.metrics
            .authorization(LabelValue::Static(reason), false, "tcp");
        tracing::debug!(?port, ?peer, reason, "inbound connection refused");
    }
}

/// Serves the inbound listener until `shutdown` resolves, then drains. The listener's own port
/// is never a target; see [`serve_reserving`] for the proxy's other ports.
pub async fn serve(
    listener: TcpListener,
    settings: InboundSettings,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_reserving(listener, settings, [], config, identity, metrics, shutdown).await
}

/// [`serve`], and `reserved` (the proxy's outbound and admin ports) are never a target either,
/// whatever the policy lists.
pub async fn serve_reserving(
    listener: TcpListener,
    settings: InboundSettings,
    reserved: impl IntoIterator<Item = u16>,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let grace = settings.drain_grace;
    let mut reserved: BTreeSet<u16> = reserved.into_iter().filter(|p| *p != 0).collect();
    reserved.insert(listener.local_addr()?.port());
    let shared = Arc::new(Shared {
        settings,
        reserved,
        config,
        identity,
        metrics,
        plain: PlainClients::new(),
    });
    transport::serve_loop(listener, shutdown, grace, move |stream, _peer, drain| {
        let shared = shared.clone();
        async move { handle_connection(shared, stream, drain).await }
    })
    .await
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream, drain: Drain) {
    let start = tokio::time::Instant::now();
    if let Some(dst) = transport::original_dst(&stream) {
        // Redirected app traffic from an unmeshed client (an app's own TLS included).
        if dst.ip().is_loopback() {
            return shared.refuse(refused::LOOPBACK_DESTINATION, Some(dst.port()), None);
        }
        return plaintext(shared, stream, dst.port(), start, drain).await;
    }
    // Mesh clients start with a TLS ClientHello at once; a client silent for DETECT_TIMEOUT is
    // plaintext (a server-speaks-first protocol).
    let mut first = [0u8; 1];
    match tokio::time::timeout(transport::DETECT_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => return mesh(shared, stream, drain).await,
        Ok(Ok(1)) | Err(_) => {}
        Ok(_) => return,
    }
    let single = {
        let config = shared.config.borrow();
        let ports = &config.inbound.ports;
        (ports.len() == 1)
            .then(|| ports.keys().next().copied())
            .flatten()
    };
    match single {
        Some(port) => plaintext(shared, stream, port, start, drain).await,
        None => tracing::debug!("plaintext connection without a target port: closed"),
    }
}

async fn mesh(shared: Arc<Shared>, stream: TcpStream, drain: Drain) {
    let Some(server) = shared.identity.server_config() else {
        tracing::debug!("mTLS connection before a certificate is held: closed");
        return;
    };
    let deadline = tokio::time::Instant::now() + transport::HANDSHAKE_TIMEOUT;
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let Ok(Ok(mut tls)) = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await else {
        tracing::debug!("mTLS handshake failed");
        return;
    };
    // The transport header is part of the mesh protocol: only a verified mesh identity may
    // send one.
    let peer: Arc<str> = match tls.get_ref().1.peer_certificates() {
        None => return shared.refuse(refused::NO_CLIENT_CERTIFICATE, None, None),
        Some(certs) => match shared.identity.peer_identity(certs) {
            Some(id) => Arc::from(id),
            None => return shared.refuse(refused::NO_MESH_IDENTITY, None, None),
        },
    };
    let header = match tokio::time::timeout_at(deadline, TransportHeader::read(&mut tls)).await {
        Ok(Ok(header)) => header,
        Ok(Err(e)) => return tracing::debug!(peer = %peer, error = %e, "bad transport header"),
        Err(_) => return tracing::debug!(peer = %peer, "transport header timed out"),
    };
    let target = match shared.target(header.port) {
        Ok(t) => t,
        Err(reason) => return shared.refuse(reason, Some(header.port), Some(&peer)),
    };
    let peer = Some(peer);
    let start = tokio::time::Instant::now();
    match (target.mode, header.hint) {
        // HTTP/2 from the client proxy: the proxy serves it (and sets the client's identity).
        (_, Hint::Http1 | Hint::Http2) => {
            let app_h2 = target.app_h2(header.hint == Hint::Http2);
            serve_http(shared, tls, target.port, peer, true, app_h2, drain).await
        }
        (Mode::Opaque, _) => tcp(&shared, tls, target.port, peer).await,
        (Mode::Http, _) => detect_and_serve(shared, tls, target, peer, None, start, drain).await,
        (Mode::Detect, Hint::Detect) => {
            let silence = Some(start + transport::DETECT_TIMEOUT);
            detect_and_serve(shared, tls, target, peer, silence, start, drain).await
        }
        // The client proxy found no HTTP (or was told the port is opaque): relay at once, but
        // the app still never receives an HTTP request the proxy did not serve.
        (Mode::Detect, Hint::Opaque) => guarded(shared, tls, target, peer, drain).await,
    }
}

async fn plaintext(
    shared: Arc<Shared>,
    stream: TcpStream,
    port: u16,
    start: tokio::time::Instant,
    drain: Drain,
) {
    let target = match shared.target(port) {
        Ok(t) => t,
        Err(reason) => return shared.refuse(reason, Some(port), None),
    };
    match target.mode {
        Mode::Opaque => tcp(&shared, stream, port, None).await,
        Mode::Http => detect_and_serve(shared, stream, target, None, None, start, drain).await,
        Mode::Detect => {
            let silence = Some(start + transport::DETECT_TIMEOUT);
            detect_and_serve(shared, stream, target, None, silence, start, drain).await
        }
    }
}

/// Reads the client's first bytes (see [`transport::read_head`]) and serves them by what they
/// are and what the port is. `silence` (ports of unknown protocol only): when nothing arrived
/// by then, the connection is relayed as server-speaks-first ([`guarded`]).
async fn detect_and_serve<I>(
    shared: Arc<Shared>,
    mut io: I,
    target: Target,
    peer: Option<Arc<str>>,
    silence: Option<tokio::time::Instant>,
    start: tokio::time::Instant,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = start + transport::HEAD_TIMEOUT;
    let head = match transport::read_head(&mut io, &mut buf, silence, deadline).await {
        Ok(head) => head,
        Err(e) => return tracing::debug!(error = %e, "reading the first bytes failed"),
    };
    let port = target.port;
    match head {
        Head::Http1 => {
            let io = PrefixedIo::new(buf, io);
            serve_http(shared, io, port, peer, false, target.app_h2(false), drain).await
        }
        Head::Http2 => {
            let io = PrefixedIo::new(buf, io);
            serve_http(shared, io, port, peer, true, target.app_h2(true), drain).await
        }
        Head::Silent => guarded(shared, io, target, peer, drain).await,
        Head::NotHttp | Head::Eof if target.mode == Mode::Detect => {
            tcp(&shared, PrefixedIo::new(buf, io), port, peer).await
        }
        Head::NotHttp => {
            shared.refuse(refused::NOT_HTTP, Some(port), peer.as_deref());
            bad_request(io, port).await
        }
        Head::Eof => {}
        Head::TimedOut => {
            shared.refuse(refused::HEAD_TIMEOUT, Some(port), peer.as_deref());
            // A partial request head (the bytes so far could be HTTP) is answered as the HTTP
            // servers answer one: `408`, then close. A client that sent nothing gets nothing.
            if !buf.is_empty() {
                request_timeout(io).await
            }
        }
    }
}

/// Answers bytes that are not HTTP on an HTTP port with a bare `400`, then closes.
async fn bad_request<I: AsyncWrite + Unpin>(io: I, port: u16) {
    let rsp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\
         x-weft-error: port {port} serves HTTP only\r\n\r\n"
    );
    answer_and_close(io, &rsp).await
}

/// Answers a request head that did not arrive within [`transport::HEAD_TIMEOUT`] with `408`,
/// then closes.
async fn request_timeout<I: AsyncWrite + Unpin>(io: I) {
    let rsp = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\
         x-weft-error: request head not received within {} s\r\n\r\n",
        transport::HEAD_TIMEOUT.as_secs()
    );
    answer_and_close(io, &rsp).await
}

/// Writes `rsp` (a whole response) and closes, bounded by one second.
async fn answer_and_close<I: AsyncWrite + Unpin>(mut io: I, rsp: &str) {
    let write = async {
        io.write_all(rsp.as_bytes()).await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// A relay for a client that has not spoken first (server-speaks-first protocols) on a port of
/// unknown protocol. The app's bytes flow at once; the client's first bytes are held back until
/// [`transport::sniff`] decides, within [`transport::HEAD_TIMEOUT`] from the first of them:
/// bytes that cannot be HTTP are relayed from then on; an HTTP request is served as HTTP (the
/// app connection is dropped) if the app has sent nothing yet, else the connection is closed.
async fn guarded<I>(
    shared: Arc<Shared>,
    mut io: I,
    target: Target,
    peer: Option<Arc<str>>,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let port = target.port;
    let decision = {
        let config = shared.config.borrow();
        route::authorize_tcp(&config.inbound, port, peer.as_deref())
    };
    if !decision.is_allowed() {
        // No relay for this client; it may still speak HTTP (authorized per request).
        let start = tokio::time::Instant::now();
        return Box::pin(detect_and_serve(
            shared, io, target, peer, None, start, drain,
        ))
        .await;
    }
    let app_addr = SocketAddr::new(shared.settings.app_ip, port);
    let mut app = match transport::connect(app_addr).await {
        Ok(app) => app,
        Err(e) => return tracing::debug!(error = %e, "connect to app failed"),
    };
    let mut buf = BytesMut::with_capacity(1024);
    let mut from_app = vec![0u8; 16 * 1024];
    let mut app_spoke = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    enum Event {
        Client(std::io::Result<usize>),
        App(std::io::Result<usize>),
        Timeout,
    }
    let mut sniffer = Sniffer::default();
    let head = loop {
        match sniffer.feed(&buf) {
            Sniff::NotHttp => break Head::NotHttp,
            Sniff::Http2 => break Head::Http2,
            Sniff::Http1 { head: true } => break Head::Http1,
            Sniff::NeedMore | Sniff::Http1 { head: false } => {}
        }
        buf.reserve(1024);
        let event = tokio::select! {
            r = io.read_buf(&mut buf) => Event::Client(r),
            r = app.read(&mut from_app) => Event::App(r),
            () = sleep_until(deadline) => Event::Timeout,
        };
        match event {
            Event::Client(Ok(0)) => {
                break match sniffer.feed(&buf) {
                    Sniff::Http1 { .. } => Head::Http1,
                    _ => Head::Eof,
                }
            }
            Event::Client(Ok(_)) => {
                deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + transport::HEAD_TIMEOUT);
            }
            Event::App(Ok(n)) if n > 0 => {
                app_spoke = true;
                if io.write_all(&from_app[..n]).await.is_err() {
                    return;
                }
            }
            // The app closed (or failed) before the client's bytes were known: close too.
            Event::App(_) | Event::Client(Err(_)) => return,
            Event::Timeout => {
                shared.refuse(refused::HEAD_TIMEOUT, Some(port), peer.as_deref());
                if !app_spoke {
                    request_timeout(io).await;
                }
                return;
            }
        }
    };
    match head {
        Head::NotHttp | Head::Eof => {
            shared
                .metrics
                .authorization(allowed_by(&decision), true, "tcp");
            let authority = format!(":{port}");
            let _guard = shared.metrics.tcp_open(INBOUND, &authority);
            let early = buf.len() as u64;
            if app.write_all(&buf).await.is_err() {
                return;
            }
            let (up, down) = transport::relay(io, app).await;
            shared
                .metrics
                .tcp_bytes(INBOUND, &authority, up + early, down);
        }
        Head::Http1 | Head::Http2 if !app_spoke => {
            drop(app);
            let h2 = head == Head::Http2;
            let io = PrefixedIo::new(buf, io);
            serve_http(shared, io, port, peer, h2, target.app_h2(h2), drain).await
        }
        _ => shared.refuse(
            refused::HTTP_AFTER_SERVER_BYTES,
            Some(port),
            peer.as_deref(),
        ),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn allowed_by(decision: &Decision) -> LabelValue {
    match decision {
        Decision::Allow(Some(by)) => LabelValue::from(by.clone()),
        _ => LabelValue::Static("default"),
    }
}

async fn tcp<I>(shared: &Shared, io: I, port: u16, peer: Option<Arc<str>>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let decision = {
        let config = shared.config.borrow();
        route::authorize_tcp(&config.inbound, port, peer.as_deref())
    };
    let authority = format!(":{port}");
    match decision {
        Decision::Deny(reason) => {
            shared.metrics.authorization("none", false, "tcp");
            tracing::debug!(port, peer = ?peer, %reason, "TCP connection denied");
        }
        Decision::Allow(by) => {
            shared.metrics.authorization(
                by.clone()
                    .map_or(LabelValue::Static("default"), LabelValue::from),
                true,
                "tcp",
            );
            let app = SocketAddr::new(shared.settings.app_ip, port);
            match transport::connect(app).await {
                Ok(upstream) => {
                    let _guard = shared.metrics.tcp_open(INBOUND, &authority);
                    let (up, down) = transport::relay(io, upstream).await;
                    shared.metrics.tcp_bytes(INBOUND, &authority, up, down);
                }
                Err(e) => tracing::debug!(error = %e, "connect to app failed"),
            }
        }
    }
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    io: I,
    port: u16,
    peer: Option<Arc<str>>,
    downstream_h2: bool,
    app_h2: bool,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    h::serve_downstream(io, downstream_h2, drain, move |req: Request<Incoming>| {
        let shared = shared.clone();
        let peer = peer.clone();
        async move { handle_request(&shared, req, port, peer, app_h2).await }
    })
    .await;
}

async fn handle_request(
    shared: &Shared,
    mut req: Request<Incoming>,
    port: u16,
    peer: Option<Arc<str>>,
    app_h2: bool,
) -> Response<Body> {
    let started = Instant::now();
    if let Some(rsp) = h::reject_bad_request(&mut req, &shared.metrics, INBOUND) {
        record(
            shared,
            port,
            "none".into(),
            peer.as_ref(),
            rsp.status(),
            started,
        );
        return rsp;
    }
    let decision = {
        let config = shared.config.borrow();
        if config.inbound.ports.contains_key(&port) {
            route::authorize_http(
                &config.inbound,
                port,
                peer.as_deref(),
                &RequestInfo::from_request(&req),
            )
        } else {
            // The policy no longer lists the port (a config update since the connection began).
            Decision::Deny(format!("port {port} is not one of the app's ports"))
        }
    };
    let authorization = match decision {
        Decision::Allow(by) => by,
        Decision::Deny(reason) => {
            shared.metrics.authorization("none", false, "http");
            let rsp = h::forbidden(&reason);
            record(
                shared,
                port,
                "none".into(),
                peer.as_ref(),
                rsp.status(),
                started,
            );
            return rsp;
        }
    };
    let authz_name: LabelValue =
        authorization.map_or(LabelValue::Static("default"), LabelValue::from);
    shared
        .metrics
        .authorization(authz_name.clone(), true, "http");

    let connect = req.method() == Method::CONNECT;
    let wants_upgrade = !connect && upgrade::wants_upgrade(&req);
    if connect || wants_upgrade {
        let rsp = if connect {
            h::error(
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not supported by weft-proxy",
            )
        } else {
            upgrade::keep_upgrade_headers(req.headers_mut());
            set_client_id(&mut req, peer.as_deref());
            forward_upgrade(shared, req, port).await
        };
        record(
            shared,
            port,
            authz_name,
            peer.as_ref(),
            rsp.status(),
            started,
        );
        return rsp;
    }
    h::strip_hop_by_hop(req.headers_mut());
    set_client_id(&mut req, peer.as_deref());
    let app = SocketAddr::new(shared.settings.app_ip, port).to_string();
    let rsp = match h::set_upstream_uri(&mut req, &app) {
        Err(e) => h::error(StatusCode::BAD_REQUEST, &format!("bad request target: {e}")),
        Ok(()) => {
            *req.version_mut() = if app_h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            let (req, body) = h::watch_body(req);
            match shared.plain.get(app_h2).request(req).await {
                Ok(mut rsp) => {
                    h::strip_hop_by_hop(rsp.headers_mut());
                    rsp.map(h::boxed)
                }
                Err(e) => h::forward_error(
                    &body,
                    &shared.metrics,
                    INBOUND,
                    StatusCode::BAD_GATEWAY,
                    &format!("app on port {port} unreachable: {e}"),
                ),
            }
        }
    };
    record(
        shared,
        port,
        authz_name,
        peer.as_ref(),
        rsp.status(),
        started,
    );
    rsp
}

/// Forwards an authorized HTTP/1.1 upgrade request to the app on a connection of its own (the
/// app speaks HTTP/1.1 for it whatever the port's declared protocol); on `101` the connections
/// are spliced, any other answer is returned as is.
async fn forward_upgrade(shared: &Shared, mut req: Request<Incoming>, port: u16) -> Response<Body> {
    let downstream = hyper::upgrade::on(&mut req);
    let mut req = req.map(h::boxed);
    upgrade::set_origin_form(&mut req);
    let app = SocketAddr::new(shared.settings.app_ip, port);
    let attempt = async { upgrade::send(transport::connect(app).await?, req).await };
    let mut rsp = match tokio::time::timeout(upgrade::HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok(rsp)) => rsp,
        Ok(Err(e)) => {
            return h::error(
                StatusCode::BAD_GATEWAY,
                &format!("app on port {port} unreachable: {e}"),
            )
        }
        Err(_) => {
            return h::error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "app on port {port} did not answer the upgrade within {} s",
                    upgrade::HANDSHAKE_TIMEOUT.as_secs()
                ),
            )
        }
    };
    if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
        h::strip_hop_by_hop(rsp.headers_mut());
        return rsp.map(h::boxed);
    }
    let upstream = hyper::upgrade::on(&mut rsp);
    upgrade::keep_upgrade_headers(rsp.headers_mut());
    let metrics = shared.metrics.clone();
    let mut rsp = rsp.map(h::boxed);
    Splice::attach(&mut rsp, async move {
        let authority = format!(":{port}");
        let _open = metrics.tcp_open(INBOUND, &authority);
        match upgrade::splice(downstream, upstream).await {
            Ok((up, down)) => metrics.tcp_bytes(INBOUND, &authority, up, down),
            Err(e) => tracing::debug!(port, error = %e, "upgrade not spliced"),
        }
    });
    rsp
}

fn record(
    shared: &Shared,
    port: u16,
    authorization: LabelValue,
    peer: Option<&Arc<str>>,
    status: StatusCode,
    started: Instant,
) {
    shared.metrics.request(
        RequestLabels {
            direction: INBOUND,
            authority: LabelValue::port(port),
            route: authorization,
            backend: LabelValue::EMPTY,
            status_class: metrics::status_class(status),
            peer: peer.map_or(LabelValue::Static("unauthenticated"), LabelValue::from),
        },
        started.elapsed(),
    );
}

/// Only the proxy may assert the client's identity: drops any `x-weft-client-id` the request
/// carried and sets the mTLS peer's, if any.
fn set_client_id<B>(req: &mut Request<B>, peer: Option<&str>) {
    req.headers_mut().remove(h::CLIENT_ID);
    if let Some(id) = peer.and_then(|p| HeaderValue::from_str(p).ok()) {
        req.headers_mut().insert(h::CLIENT_ID, id);
    }
}
