//! The inbound proxy: traffic to the local app, authorized against the pod's policy.
//!
//! - mTLS from another proxy (first byte `0x16` on the inbound port): handshake, read the client's
//!   identity and the transport header (target port, hint), then serve HTTP/2 (per-request
//!   authorization) or relay opaque TCP (per-connection authorization).
//! - Plaintext from unmeshed clients: with transparent redirection the target port is the
//!   original destination port (`SO_ORIGINAL_DST`); without it, the pod's single inbound port if
//!   its policy lists exactly one, else the connection is closed. The client has no identity, so
//!   only ports whose policy admits unauthenticated clients serve it.
//!
//! HTTP/1.1 upgrade requests (WebSocket, ...) are authorized like any request, then forwarded to
//! the app on a connection of their own and spliced on `101` (see [`crate::http::upgrade`]).
//! CONNECT gets `501`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Config, Protocol};
use crate::http::upgrade::{self, Splice};
use crate::http::{self as h, Body, PlainClients};
use crate::metrics::{self, LabelValue, Metrics, RequestLabels, INBOUND};
use crate::route::{self, Decision, RequestInfo};
use crate::transport::{self, Detected, Drain, Hint, MeshIdentity, TransportHeader};

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

struct Shared {
    settings: InboundSettings,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    plain: PlainClients,
}

/// Serves the inbound listener until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    settings: InboundSettings,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let grace = settings.drain_grace;
    let shared = Arc::new(Shared {
        settings,
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
    if let Some(dst) = transport::original_dst(&stream) {
        // Redirected app traffic from an unmeshed client.
        return plaintext(shared, stream, dst.port(), drain).await;
    }
    let mut first = [0u8; 1];
    match tokio::time::timeout(transport::DETECT_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] == 0x16 {
        return mesh(shared, stream, drain).await;
    }
    let single = {
        let config = shared.config.borrow();
        let ports = &config.inbound.ports;
        (ports.len() == 1)
            .then(|| ports.keys().next().copied())
            .flatten()
    };
    match single {
        Some(port) => plaintext(shared, stream, port, drain).await,
        None => tracing::debug!("plaintext connection without a target port: closed"),
    }
}

async fn mesh(shared: Arc<Shared>, stream: TcpStream, drain: Drain) {
    let Some(server) = shared.identity.server_config() else {
        tracing::debug!("mTLS connection before a certificate is held: closed");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let handshake = async {
        let mut tls = acceptor.accept(stream).await.ok()?;
        let header = TransportHeader::read(&mut tls).await.ok()?;
        Some((tls, header))
    };
    let Ok(Some((tls, header))) =
        tokio::time::timeout(transport::HANDSHAKE_TIMEOUT, handshake).await
    else {
        tracing::debug!("mTLS handshake or transport header failed");
        return;
    };
    let peer: Option<Arc<str>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| shared.identity.peer_identity(certs))
        .map(Arc::from);
    match header.hint {
        Hint::Opaque => tcp(&shared, tls, header.port, peer).await,
        Hint::Http1 | Hint::Http2 => {
            serve_http(
                shared,
                tls,
                header.port,
                peer,
                true,
                header.hint == Hint::Http2,
                drain,
            )
            .await
        }
        Hint::Detect => detect_and_serve(shared, tls, header.port, peer, drain).await,
    }
}

async fn plaintext(shared: Arc<Shared>, stream: TcpStream, port: u16, drain: Drain) {
    detect_and_serve(shared, stream, port, None, drain).await
}

async fn detect_and_serve<I>(
    shared: Arc<Shared>,
    io: I,
    port: u16,
    peer: Option<Arc<str>>,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok((detected, io)) = transport::detect(io, transport::DETECT_TIMEOUT).await else {
        return;
    };
    // The port's declared protocol says what the app speaks; otherwise the client's version.
    let declared = shared
        .config
        .borrow()
        .inbound
        .ports
        .get(&port)
        .map(|p| p.protocol);
    let app_h2 = |downstream_h2: bool| match declared {
        Some(Protocol::Http2 | Protocol::Grpc) => true,
        Some(Protocol::Http1) => false,
        _ => downstream_h2,
    };
    match detected {
        Detected::Http1 => serve_http(shared, io, port, peer, false, app_h2(false), drain).await,
        Detected::Http2 => serve_http(shared, io, port, peer, true, app_h2(true), drain).await,
        Detected::Opaque => tcp(&shared, io, port, peer).await,
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
        route::authorize_http(
            &config.inbound,
            port,
            peer.as_deref(),
            &RequestInfo::from_request(&req),
        )
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
