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
//!
//! An authorized HTTP request then passes the app's protection ([`limits`], issue #16): an
//! expired deadline is answered `504` at once, then the caller's and the port's rate limits
//! (`429`), then the port's concurrency limit with its bounded queue (`503`); the request goes to
//! the app bounded by its deadline (`504`), with the time left rewritten in its headers. See
//! `docs/reliability.md`, section *inbound*.

pub mod limits;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Config, InboundPort, Protocol};
use crate::http::deadline;
use crate::http::upgrade::{self, Splice};
use crate::http::{self as h, Body, PlainClients};
use crate::metrics::{self, LabelValue, Metrics, RequestLabels, SeriesKey, INBOUND};
use crate::route::{self, Decision, RequestInfo};
use crate::trace::{self, Tracer};
use crate::transport::{
    self, Drain, Head, Hint, MeshIdentity, PrefixedIo, Sniff, Sniffer, TransportHeader,
};
use limits::{Limited, Limiters, Permit, Shed};
use weft_common::reliability::REASON_HEADER;

/// Grace period for in-flight work when the listener shuts down.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Settings of the inbound side.
#[derive(Clone, Debug)]
pub struct InboundSettings {
    /// Where the app listens (`WEFT_PROXY_APP_IP`).
    pub app_ip: IpAddr,
    /// Time in-flight connections get to finish on shutdown.
    pub drain_grace: Duration,
    /// Server spans of traced requests (`docs/tracing.md`); disabled by default.
    pub tracer: Tracer,
    /// How long an idle HTTP/1 keep-alive connection is kept (`WEFT_PROXY_HTTP1_IDLE_TIMEOUT`,
    /// [`h::idle`]).
    pub http1_idle: Duration,
}

impl Default for InboundSettings {
    fn default() -> Self {
        InboundSettings {
            app_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            drain_grace: DRAIN_GRACE,
            tracer: Tracer::disabled(),
            http1_idle: h::idle::KEEP_ALIVE_IDLE_TIMEOUT,
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
    /// Concurrency and rate limits per port, kept across config pushes.
    limiters: Limiters,
    tap: crate::tap::Tap,
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
    let tap = crate::tap::Tap::default();
    serve_tapped(
        listener, settings, reserved, config, identity, metrics, tap, shutdown,
    )
    .await
}

/// [`serve_reserving`], reporting requests to `tap` (`weft tap`; docs/tap.md).
#[allow(clippy::too_many_arguments)]
pub async fn serve_tapped(
    listener: TcpListener,
    settings: InboundSettings,
    reserved: impl IntoIterator<Item = u16>,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    tap: crate::tap::Tap,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let grace = settings.drain_grace;
    let mut reserved: BTreeSet<u16> = reserved.into_iter().filter(|p| *p != 0).collect();
    reserved.insert(listener.local_addr()?.port());
    let shared = Arc::new(Shared {
        settings,
        reserved,
        limiters: Limiters::new(metrics.clone(), config.clone()),
        config,
        identity,
        metrics,
        plain: PlainClients::new(),
        tap,
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
    // Built once per connection, cloned per request (a reference-count bump, issue #20): the
    // `x-weft-client-id` value.
    let conn = Arc::new(ConnValues {
        client_id: client_id_value(peer.as_deref()),
    });
    let idle = shared.settings.http1_idle;
    h::serve_downstream(
        io,
        downstream_h2,
        idle,
        drain,
        move |req: Request<Incoming>| {
            let shared = shared.clone();
            let peer = peer.clone();
            let conn = conn.clone();
            // Boxed: the async levels below hold the request across awaits, and hyper moves the
            // whole per-request future (issue #20, as in the outbound proxy).
            let req = Box::new(req);
            async move {
                // #18 tap: one relaxed load when nobody taps.
                let tapped = shared.tap.is_active().then(|| {
                    let local = shared.tap_local_id();
                    shared.tap.begin(
                        crate::tap::Direction::Inbound,
                        &req,
                        peer.as_deref(),
                        local.as_deref(),
                    )
                });
                let rsp = handle_request(&shared, req, port, peer, &conn, app_h2).await;
                crate::tap::Tap::finish(tapped.flatten(), rsp)
            }
        },
    )
    .await;
}

/// A traced request (sampled `traceparent`, collector configured) gets a server span around its
/// handling, as the parent of what the app sees (`docs/tracing.md`).
async fn handle_request(
    shared: &Shared,
    mut req: Box<Request<Incoming>>,
    port: u16,
    peer: Option<Arc<str>>,
    conn: &ConnValues,
    app_h2: bool,
) -> Response<Body> {
    let Some(span) = shared
        .settings
        .tracer
        .start(&mut req, trace::Direction::Inbound)
    else {
        return handle_untraced(shared, req, port, peer, conn, app_h2).await;
    };
    span.set_peer(peer.as_ref());
    let rsp = handle_untraced(shared, req, port, peer, conn, app_h2).await;
    span.finish(rsp.status());
    rsp
}

async fn handle_untraced(
    shared: &Shared,
    mut req: Box<Request<Incoming>>,
    port: u16,
    peer: Option<Arc<str>>,
    conn: &ConnValues,
    app_h2: bool,
) -> Response<Body> {
    let started = Instant::now();
    if let Some(rsp) = h::reject_bad_request(&mut req, &shared.metrics, INBOUND) {
        return record(shared, port, "none".into(), peer.as_ref(), rsp, started);
    }
    let config = shared.config.borrow().clone();
    let decision = if config.inbound.ports.contains_key(&port) {
        route::authorize_http(
            &config.inbound,
            port,
            peer.as_deref(),
            &RequestInfo::from_request(&req),
        )
    } else {
        // The policy no longer lists the port (a config update since the connection began).
        Decision::Deny(format!("port {port} is not one of the app's ports"))
    };
    let authorization = match decision {
        Decision::Allow(by) => by,
        Decision::Deny(reason) => {
            shared.metrics.authorization("none", false, "http");
            let rsp = h::forbidden(&reason);
            return record(shared, port, "none".into(), peer.as_ref(), rsp, started);
        }
    };
    let authz_name: LabelValue =
        authorization.map_or(LabelValue::Static("default"), LabelValue::from);
    shared
        .metrics
        .authorization(authz_name.clone(), true, "http");

    if req.method() == Method::CONNECT {
        let rsp = h::error(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT is not supported by weft-proxy",
        );
        return record(shared, port, authz_name, peer.as_ref(), rsp, started);
    }

    // Authorized: now the app's protection (docs/reliability.md, inbound).
    let (permit, deadline) = match admit(shared, port, peer.as_ref(), &req).await {
        Ok(admitted) => admitted,
        Err(rsp) => {
            return record(shared, port, authz_name, peer.as_ref(), rsp, started);
        }
    };

    if upgrade::wants_upgrade(&req) {
        upgrade::keep_upgrade_headers(req.headers_mut());
        set_client_id(&mut req, conn.client_id.as_ref());
        // Boxed: connecting and splicing are rare and large (issue #20).
        let rsp = Box::pin(forward_upgrade(shared, *req, port)).await;
        // The slot is held until the app answers the upgrade, not for the tunnel's life.
        drop(permit);
        return record(shared, port, authz_name, peer.as_ref(), rsp, started);
    }
    h::strip_hop_by_hop(req.headers_mut());
    set_client_id(&mut req, conn.client_id.as_ref());
    let grpc = is_grpc(req.headers());
    if let Some(deadline) = deadline {
        // What is left after the wait for a slot travels on to the app.
        deadline::set_remaining(
            req.headers_mut(),
            deadline.saturating_duration_since(tokio::time::Instant::now()),
        );
    }
    let app = SocketAddr::new(shared.settings.app_ip, port);
    let (req, body) = h::watch_body(*req);
    let call = shared.plain.send(app, Box::new(req), app_h2);
    let answered = match deadline {
        Some(at) => tokio::time::timeout_at(at, call).await.ok(),
        None => Some(call.await),
    };
    let rsp = match answered {
        Some(Ok(mut rsp)) => {
            h::strip_hop_by_hop(rsp.headers_mut());
            rsp.map(|b| limits::hold_until_done(b, permit))
        }
        None => {
            shared
                .metrics
                .inbound_deadline_exceeded(LabelValue::port(port), "app");
            deadline_exceeded(grpc, "the app did not answer within the request's deadline")
        }
        Some(Err(e @ h::PlainError::Target(_))) => {
            h::error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Some(Err(e)) => h::forward_error(
            &body,
            &shared.metrics,
            INBOUND,
            StatusCode::BAD_GATEWAY,
            &format!("app on port {port} unreachable: {e}"),
        ),
    };
    record(shared, port, authz_name, peer.as_ref(), rsp, started)
}

/// The protection of the app, for an authorized request, in this order (each check costs the
/// request nothing it has not passed):
/// 1. a deadline that has already run out: `504` (gRPC: `DEADLINE_EXCEEDED`), the app is not
///    called and no token is spent;
/// 2. the caller's rate limit, then the port's: `429` with `Retry-After`;
/// 3. a slot under the port's concurrency limit, waiting in the bounded queue for at most the
///    queue timeout (or the request's deadline, if sooner): `503`, or `504` when the deadline
///    ran out first.
///
/// Every answer carries `weft-reason`. On success: the slot, held until the response is done,
/// and the request's deadline, if it carries one.
async fn admit<B>(
    shared: &Shared,
    port: u16,
    peer: Option<&Arc<str>>,
    req: &Request<B>,
) -> Result<(Permit, Option<tokio::time::Instant>), Response<Body>> {
    let arrived = tokio::time::Instant::now();
    let grpc = is_grpc(req.headers());
    let remaining = deadline::remaining(req.headers());
    if remaining.is_some_and(|d| d.is_zero()) {
        shared
            .metrics
            .inbound_deadline_exceeded(LabelValue::port(port), "arrival");
        return Err(deadline_exceeded(
            grpc,
            "the request's deadline had run out when it arrived",
        ));
    }
    let state = shared.limiters.port(port);
    if let Err(limited) = state.rate_limit(peer) {
        shared
            .metrics
            .inbound_rate_limited(LabelValue::port(port), limited.scope.label());
        return Err(rate_limited(grpc, port, limited));
    }
    match state.acquire(remaining).await {
        Ok(permit) => Ok((permit, remaining.map(|r| arrived + r))),
        Err(Some(shed)) => {
            shared
                .metrics
                .inbound_shed(LabelValue::port(port), shed.reason());
            Err(shed_answer(grpc, port, shed))
        }
        Err(None) => {
            shared
                .metrics
                .inbound_deadline_exceeded(LabelValue::port(port), "queue");
            Err(deadline_exceeded(
                grpc,
                "the request's deadline ran out while it waited for a slot",
            ))
        }
    }
}

/// gRPC status codes of the proxy's own answers.
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_UNAVAILABLE: u32 = 14;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An answer of the proxy's own with `weft-reason: reason`: `status` and `message` for HTTP;
/// for gRPC a trailers-only response (HTTP 200, `grpc-status: grpc_code`), which gRPC clients
/// read as that status rather than as a transport failure.
fn local_answer(
    grpc: bool,
    status: StatusCode,
    grpc_code: u32,
    reason: &'static str,
    message: &str,
) -> Response<Body> {
    let mut rsp = if grpc {
        let mut rsp = Response::new(h::empty());
        let headers = rsp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(grpc_code));
        // Our messages are plain ASCII without `%`: valid grpc-message values as they are.
        if let Ok(v) = HeaderValue::from_str(message) {
            headers.insert("grpc-message", v);
        }
        rsp
    } else {
        h::error(status, message)
    };
    rsp.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason));
    rsp
}

fn deadline_exceeded(grpc: bool, message: &str) -> Response<Body> {
    local_answer(
        grpc,
        StatusCode::GATEWAY_TIMEOUT,
        GRPC_DEADLINE_EXCEEDED,
        "deadline",
        message,
    )
}

fn rate_limited(grpc: bool, port: u16, limited: Limited) -> Response<Body> {
    let message = match limited.scope {
        limits::Scope::Total => format!("port {port}: rate limit of the port reached"),
        limits::Scope::Identity => format!("port {port}: rate limit of the caller reached"),
    };
    let mut rsp = local_answer(
        grpc,
        StatusCode::TOO_MANY_REQUESTS,
        GRPC_RESOURCE_EXHAUSTED,
        "rate-limit",
        &message,
    );
    rsp.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(limited.retry_after_secs()),
    );
    rsp
}

fn shed_answer(grpc: bool, port: u16, shed: Shed) -> Response<Body> {
    let message = match shed {
        Shed::Concurrency => format!("port {port}: concurrency limit reached"),
        Shed::Pending => format!("port {port}: concurrency limit reached and queue full"),
        Shed::QueueTimeout => format!("port {port}: no slot free within the queue timeout"),
    };
    local_answer(
        grpc,
        StatusCode::SERVICE_UNAVAILABLE,
        GRPC_UNAVAILABLE,
        shed.reason(),
        &message,
    )
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
    rsp: Response<Body>,
    started: Instant,
) -> Response<Body> {
    let mut rsp = rsp;
    crate::tap::TapMeta::attach(&shared.tap, &mut rsp, || crate::tap::TapMeta {
        route: authorization.as_str().to_string(),
        ..Default::default()
    });
    let authority = LabelValue::port(port);
    let status_class = metrics::status_class(rsp.status());
    let key = SeriesKey {
        direction: INBOUND,
        authority: &authority,
        route: &authorization,
        backend: &LabelValue::EMPTY,
        status_class,
        endpoint: None,
        client: peer,
    };
    // The labels are built only when this thread has no series for the key (issue #20).
    let series = shared.metrics.series(key, || {
        let request = RequestLabels {
            direction: INBOUND,
            authority: authority.clone(),
            route: authorization.clone(),
            backend: LabelValue::EMPTY,
            status_class,
            peer: peer.map_or(LabelValue::Static("unauthenticated"), LabelValue::from),
        };
        // #18: the Linkerd-compatible families.
        (
            request,
            shared.metrics.inbound_traffic(authority.clone(), peer),
        )
    });
    // One clock read for both families' latency.
    let latency = started.elapsed();
    crate::classify::observe(&shared.metrics, series, rsp, latency)
}

impl Shared {
    /// This proxy's identity (the server of an inbound request), for tap events.
    fn tap_local_id(&self) -> Option<String> {
        self.tap.local_id()
    }
}

/// What every request of one downstream connection shares, built when it opens.
struct ConnValues {
    /// The mTLS peer's identity as an `x-weft-client-id` value.
    client_id: Option<HeaderValue>,
}

/// The `x-weft-client-id` value of a connection's mTLS peer, if any (and a valid header value).
fn client_id_value(peer: Option<&str>) -> Option<HeaderValue> {
    peer.and_then(|p| HeaderValue::from_str(p).ok())
}

/// Only the proxy may assert the client's identity: drops any `x-weft-client-id` the request
/// carried and sets the mTLS peer's (see [`client_id_value`]), if any.
fn set_client_id<B>(req: &mut Request<B>, id: Option<&HeaderValue>) {
    req.headers_mut().remove(h::CLIENT_ID);
    if let Some(id) = id {
        req.headers_mut().insert(h::CLIENT_ID, id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns (a future, here), without calling it.
    fn output_size<T, R>(_: impl FnOnce(T) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every request's future is moved by hyper's connection poll: the rare path of upgrades
    /// (connecting, splicing) is boxed so that it stays small (issue #20). Sizes of a debug
    /// build, which are larger than a release build's; `--nocapture` prints them.
    #[test]
    fn per_request_futures_stay_small() {
        type Args = (
            &'static Shared,
            Box<Request<Incoming>>,
            u16,
            Option<Arc<str>>,
            &'static ConnValues,
            bool,
        );
        let request = output_size(|(s, r, p, i, c, h): Args| handle_request(s, r, p, i, c, h));
        let untraced = output_size(|(s, r, p, i, c, h): Args| handle_untraced(s, r, p, i, c, h));
        eprintln!("inbound handle_request: {request} bytes, handle_untraced: {untraced} bytes");
        // Unboxed, `forward_upgrade` made `handle_untraced` 2.7 KiB.
        assert!(untraced < 2048, "{untraced}");
        // The request boxed (as outbound): 2,688 bytes by value, 1,440 boxed (2026-12-04).
        assert!(request < 2048, "{request}");
    }

    fn header<'r>(rsp: &'r Response<Body>, name: &str) -> Option<&'r str> {
        rsp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn local_answers_name_their_reason_for_http_and_grpc() {
        let limited = Limited {
            scope: limits::Scope::Identity,
            retry_after: Duration::from_millis(1500),
        };
        let http = rate_limited(false, 8080, limited);
        assert_eq!(http.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&http, "weft-reason"), Some("rate-limit"));
        assert_eq!(header(&http, "retry-after"), Some("2"));
        let grpc = rate_limited(true, 8080, limited);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(header(&grpc, "grpc-status"), Some("8"));
        assert_eq!(header(&grpc, "content-type"), Some("application/grpc"));
        assert_eq!(header(&grpc, "retry-after"), Some("2"));

        for (shed, reason) in [
            (Shed::Concurrency, "concurrency"),
            (Shed::Pending, "pending"),
            (Shed::QueueTimeout, "queue-timeout"),
        ] {
            let http = shed_answer(false, 8080, shed);
            assert_eq!(http.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(header(&http, "weft-reason"), Some(reason));
            let grpc = shed_answer(true, 8080, shed);
            assert_eq!(header(&grpc, "grpc-status"), Some("14"));
            assert_eq!(header(&grpc, "weft-reason"), Some(reason));
        }

        let http = deadline_exceeded(false, "late");
        assert_eq!(http.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(header(&http, "weft-reason"), Some("deadline"));
        let grpc = deadline_exceeded(true, "late");
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(header(&grpc, "grpc-status"), Some("4"));
        assert_eq!(header(&grpc, "grpc-message"), Some("late"));
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let mut h = http::HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&h));
    }
}
