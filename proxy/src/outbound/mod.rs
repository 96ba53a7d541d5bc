//! The outbound proxy: the local app's requests to services.
//!
//! Transparent connections (redirected by iptables, `SO_ORIGINAL_DST` set) are routed by their
//! original destination: a Service ClusterIP:port (HTTP routed per request, opaque TCP per
//! connection), a meshed pod IP (tunnelled over mTLS to its proxy), or anything else (passed
//! through as is). Explicit connections (to the listener itself) are HTTP routed per request by
//! `Host` / `:authority` / absolute-form URI.
//!
//! HTTP/1.1 upgrade requests (WebSocket, ...) are routed like any request, then sent on a
//! dedicated connection to the chosen endpoint (mTLS with hint `detect` to a meshed one, plain
//! TCP otherwise) and spliced on `101`; see [`crate::http::upgrade`]. CONNECT gets `501`.

mod body;
mod pick;
// Public for the benchmark's mesh floor (`examples/mesh_floor.rs`).
pub mod pool;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use weft_common::reliability::MAX_RETRY_BODY_BYTES;

use crate::accrual::{self, Outcome};
use crate::classify;
use crate::config::{Backend, Config, Endpoint, OutboundService, Protocol, TrafficPolicy};
use crate::filter;
use crate::http::deadline;
use crate::http::upgrade::{self, Splice};
use crate::http::{self as h, Body, PlainClients};
use crate::metrics::{
    self, DstEndpoint, LabelValue, LatencyLabels, Metrics, OutboundLabels, RequestLabels,
    SeriesKey, OUTBOUND,
};
use crate::ondemand::{self, Demand};
use crate::route::{self, RequestInfo};
use crate::shed::{self, Shed};
use crate::trace::{self, Tracer};
use crate::transport::{self, Detected, Drain, Hint, MeshIdentity, TransportHeader};
use pick::{Picked, Unpicked};

pub use pool::{MeshPool, PoolError};

/// Grace period for in-flight work when the listener shuts down.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

struct Shared {
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    plain: PlainClients,
    mesh: MeshPool,
    tracer: Tracer,
    tap: crate::tap::Tap,
    /// On-demand discovery: unknown destinations are watched and waited for.
    demand: Option<Arc<Demand>>,
    /// How long an idle HTTP/1 keep-alive connection is kept.
    http1_idle: Duration,
}

/// What the outbound listener does besides routing: tracing and on-demand discovery (both off by
/// default).
pub struct Extras {
    /// Client spans for traced requests (`docs/tracing.md`).
    pub tracer: Tracer,
    /// On-demand discovery (see [`crate::ondemand`]).
    pub demand: Option<Arc<Demand>>,
    /// Requests reported to `weft tap` (docs/tap.md).
    pub tap: crate::tap::Tap,
    /// How long an idle HTTP/1 keep-alive connection from the app is kept
    /// (`WEFT_PROXY_HTTP1_IDLE_TIMEOUT`, [`h::idle`]).
    pub http1_idle: Duration,
}

impl Default for Extras {
    fn default() -> Self {
        Self {
            tracer: Tracer::disabled(),
            demand: None,
            tap: crate::tap::Tap::default(),
            http1_idle: h::idle::KEEP_ALIVE_IDLE_TIMEOUT,
        }
    }
}

/// Serves the outbound listener until `shutdown` resolves, then drains for [`DRAIN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with_grace(listener, config, identity, metrics, shutdown, DRAIN_GRACE).await
}

/// [`serve`] with an explicit drain grace period.
pub async fn serve_with_grace(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    serve_with(
        listener,
        config,
        identity,
        metrics,
        shutdown,
        grace,
        Extras::default(),
    )
    .await
}

/// [`serve_with_grace`] with client spans for traced requests (`docs/tracing.md`).
pub async fn serve_traced(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    tracer: Tracer,
) -> std::io::Result<()> {
    let extras = Extras {
        tracer,
        ..Extras::default()
    };
    serve_with(listener, config, identity, metrics, shutdown, grace, extras).await
}

/// [`serve_with_grace`] with [`Extras`].
pub async fn serve_with(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    identity: Arc<dyn MeshIdentity>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    extras: Extras,
) -> std::io::Result<()> {
    let Extras {
        tracer,
        demand,
        tap,
        http1_idle,
    } = extras;
    let shared = Arc::new(Shared {
        config,
        identity,
        metrics,
        plain: PlainClients::new(),
        mesh: MeshPool::default(),
        tracer,
        demand,
        tap,
        http1_idle,
    });
    transport::serve_loop(listener, shutdown, grace, move |stream, _peer, drain| {
        let shared = shared.clone();
        async move { handle_connection(shared, stream, drain).await }
    })
    .await
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream, drain: Drain) {
    match transport::original_dst(&stream) {
        Some(dst) => transparent(shared, stream, dst, drain).await,
        None => {
            // Explicit mode only ever serves HTTP: a client slow to send its first request is
            // given the header-read time, not the detection time meant for server-first TCP.
            let (detected, io) = match transport::detect(stream, h::HEADER_READ_TIMEOUT).await {
                Ok(x) => x,
                Err(_) => return,
            };
            match detected {
                Detected::Http1 | Detected::Http2 => {
                    serve_http(shared, io, detected == Detected::Http2, None, drain).await
                }
                // Explicit mode has no destination for opaque bytes.
                Detected::Opaque => {}
            }
        }
    }
}

async fn transparent(shared: Arc<Shared>, stream: TcpStream, dst: SocketAddr, drain: Drain) {
    let mut config = shared.config.borrow().clone();
    if let Some(demand) = shared.demand.as_ref().filter(|d| d.served()) {
        // On demand: an address is routed only once the operator said what it is.
        let ip = dst.ip();
        let name = ondemand::ip_name(ip);
        let known = |c: &Config| {
            (c.resolved_ips.contains(&ip) || c.service_by_addr(dst).is_some()).then_some(())
        };
        if known(&config).is_some() {
            demand.touch(&name);
        } else if demand.resolve(&shared.config, &name, known).await.is_some() {
            config = shared.config.borrow().clone();
        } else {
            tracing::info!(%dst, wait_ms = demand.wait.as_millis() as u64,
                "connection closed: the control plane did not resolve the address in time");
            return;
        }
    }
    if let Some(svc) = config.service_by_addr(dst) {
        let protocol = svc
            .port(dst.port())
            .map_or(Protocol::Detect, |p| p.protocol);
        let svc = svc.clone();
        if matches!(protocol, Protocol::Opaque | Protocol::Udp) {
            return tcp_to_service(&shared, stream, &svc, dst.port()).await;
        }
        // A port declared HTTP waits for its client like any HTTP server; only undeclared ports
        // give up after the short detection timeout (server-speaks-first protocols).
        let detect_timeout = match protocol {
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => h::HEADER_READ_TIMEOUT,
            _ => transport::DETECT_TIMEOUT,
        };
        match transport::detect(stream, detect_timeout).await {
            Ok((Detected::Opaque, io)) => tcp_to_service(&shared, io, &svc, dst.port()).await,
            Ok((d, io)) => serve_http(shared, io, d == Detected::Http2, Some(dst), drain).await,
            Err(_) => {}
        }
    } else if let Some(pod) = config.pod(dst.ip()).cloned() {
        // A meshed pod addressed directly: tunnel the bytes; its proxy detects the protocol.
        let addr = SocketAddr::new(dst.ip(), pod.inbound_port);
        let header = TransportHeader {
            port: dst.port(),
            hint: Hint::Detect,
        };
        let authority = "pod";
        match transport::connect_mesh(&*shared.identity, addr, &pod.identity, header).await {
            Ok(upstream) => relay(&shared, stream, upstream, authority).await,
            Err(e) => tracing::debug!(%dst, error = %e, "pod tunnel failed"),
        }
    } else {
        match transport::connect(dst).await {
            Ok(upstream) => relay(&shared, stream, upstream, "passthrough").await,
            Err(e) => tracing::debug!(%dst, error = %e, "passthrough failed"),
        }
    }
}

async fn relay<A, B>(shared: &Shared, a: A, b: B, authority: &str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _guard = shared.metrics.tcp_open(OUTBOUND, authority);
    let (up, down) = transport::relay(a, b).await;
    shared.metrics.tcp_bytes(OUTBOUND, authority, up, down);
}

/// Opaque TCP to a service: the first route without HTTP matches, a backend by weight (per
/// connection), an endpoint by P2C.
async fn tcp_to_service<A>(shared: &Shared, io: A, svc: &OutboundService, port: u16)
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let Some(port_cfg) = svc.port(port) else {
        return;
    };
    let Some(backend) = route::select_tcp_route(&port_cfg.routes).and_then(route::choose_backend)
    else {
        tracing::debug!(service = %svc.authority, "no TCP route or backend");
        return;
    };
    let picked = pick::pick(
        backend,
        svc.policy.max_requests_per_endpoint,
        None,
        false,
        Instant::now(),
    );
    let Ok(Picked {
        ep,
        in_flight: _in_flight,
        ..
    }) = picked
    else {
        tracing::debug!(service = %svc.authority, backend = %backend.service, "no endpoint to connect to");
        return;
    };
    let started = Instant::now();
    match ep.mesh_target() {
        Some((addr, identity)) => {
            let header = TransportHeader {
                port: ep.addr.port(),
                hint: Hint::Opaque,
            };
            match transport::connect_mesh(&*shared.identity, addr, identity, header).await {
                Ok(upstream) => {
                    ep.load.observe(started.elapsed());
                    relay(shared, io, upstream, &svc.authority).await
                }
                Err(e) => {
                    ep.load.observe_failure();
                    tracing::debug!(error = %e, "TCP connect to endpoint failed");
                }
            }
        }
        None => match transport::connect(ep.addr).await {
            Ok(upstream) => {
                ep.load.observe(started.elapsed());
                relay(shared, io, upstream, &svc.authority).await
            }
            Err(e) => {
                ep.load.observe_failure();
                tracing::debug!(error = %e, "TCP connect to endpoint failed");
            }
        },
    }
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    io: I,
    http2: bool,
    dst: Option<SocketAddr>,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = shared.http1_idle;
    h::serve_downstream(io, http2, idle, drain, move |req: Request<Incoming>| {
        let shared = shared.clone();
        // Boxed: every async level below holds the request by value, most of them twice (an
        // async fn keeps its arguments for its whole life beside the locals it moves them to),
        // and hyper moves the whole per-request future into its connection's in-flight slot
        // (issue #20, docs/benchmarks.md "The floor under one hop").
        let req = Box::new(req);
        async move {
            // #18 tap: one relaxed load when nobody taps.
            let tapped = shared.tap.is_active().then(|| {
                let local = shared.tap.local_id();
                shared.tap.begin(
                    crate::tap::Direction::Outbound,
                    &req,
                    local.as_deref(),
                    None,
                )
            });
            let rsp = handle_request(&shared, req, dst, http2).await;
            crate::tap::Tap::finish(tapped.flatten(), rsp)
        }
    })
    .await;
}

/// Metric label values of a request; cloning bumps reference counts only.
#[derive(Clone)]
struct Labels {
    authority: LabelValue,
    route: LabelValue,
    backend: LabelValue,
}

fn record(
    shared: &Shared,
    labels: &Labels,
    peer: Option<Arc<DstEndpoint>>,
    rsp: Response<Body>,
    started: Instant,
) -> Response<Body> {
    let mut rsp = rsp;
    crate::tap::TapMeta::attach(&shared.tap, &mut rsp, || crate::tap::TapMeta {
        route: labels.route.as_str().to_string(),
        backend: labels.backend.as_str().to_string(),
        server_id: peer
            .as_deref()
            .map(|d| d.server_id.as_str())
            .filter(|id| !id.is_empty())
            .map(str::to_string),
    });
    if shared.tracer.exporting() {
        let server_id: Option<Arc<str>> = peer
            .as_deref()
            .map(|d| d.server_id.as_str())
            .filter(|id| !id.is_empty())
            .map(Arc::from);
        trace::note(labels.route.as_str(), server_id.as_ref());
    }
    let status_class = metrics::status_class(rsp.status());
    let key = SeriesKey {
        direction: OUTBOUND,
        authority: &labels.authority,
        route: &labels.route,
        backend: &labels.backend,
        status_class,
        endpoint: peer.as_ref(),
        client: None,
    };
    // The labels are built only when this thread has no series for the key (issue #20).
    let series = shared.metrics.series(key, || {
        // #18: the Linkerd-compatible families; the destination is the backend service chosen.
        let dst =
            route::split_once_byte(labels.authority.as_str(), b'.').map(|(service, namespace)| {
                match labels.backend.as_str() {
                    "" => (LabelValue::inline(namespace), LabelValue::inline(service)),
                    // A Gateway API backendRef to another namespace is labelled `<namespace>/<name>`.
                    b => match route::split_once_byte(b, b'/') {
                        Some((ns, name)) => (LabelValue::inline(ns), LabelValue::inline(name)),
                        None => (LabelValue::inline(namespace), labels.backend.clone()),
                    },
                }
            });
        let request = RequestLabels {
            direction: OUTBOUND,
            authority: labels.authority.clone(),
            route: labels.route.clone(),
            backend: labels.backend.clone(),
            status_class,
            peer: peer
                .as_ref()
                .map_or(LabelValue::EMPTY, |p| p.server_id.clone()),
        };
        let traffic = shared
            .metrics
            .outbound_traffic(labels.authority.clone(), dst, peer.clone());
        (request, traffic)
    });
    // One clock read for both families' latency.
    let latency = started.elapsed();
    classify::observe(&shared.metrics, series, rsp, latency)
}

/// A traced request (sampled `traceparent`, collector configured) gets a client span around its
/// handling, as the parent of what the destination sees (`docs/tracing.md`).
async fn handle_request(
    shared: &Shared,
    mut req: Box<Request<Incoming>>,
    dst: Option<SocketAddr>,
    downstream_h2: bool,
) -> Response<Body> {
    let Some(span) = shared.tracer.start(&mut req, trace::Direction::Outbound) else {
        return handle_untraced(shared, req, dst, downstream_h2).await;
    };
    // Boxed: the traced path is rare, and an unboxed second copy of the request's state would
    // double the size of every request's future (moved by hyper's connection poll, issue #20).
    let rsp = span
        .scope(Box::pin(handle_untraced(shared, req, dst, downstream_h2)))
        .await;
    span.finish(rsp.status());
    rsp
}

async fn handle_untraced(
    shared: &Shared,
    mut req: Box<Request<Incoming>>,
    dst: Option<SocketAddr>,
    downstream_h2: bool,
) -> Response<Body> {
    let started = Instant::now();
    // Routing sees the request as the app will read it, and the upstream gets exactly that.
    if let Some(rsp) = h::reject_bad_request(&mut req, &shared.metrics, OUTBOUND) {
        let labels = Labels {
            authority: "unknown".into(),
            route: LabelValue::EMPTY,
            backend: LabelValue::EMPTY,
        };
        return record(shared, &labels, None, rsp, started);
    }
    let authority = route::request_authority(&req);
    let scheme = req.uri().scheme().cloned();
    let (a, sc) = (authority, scheme.as_ref());
    let mut config = shared.config.borrow().clone();
    let mut waited = None;
    if let Some(demand) = shared.demand.as_ref().filter(|d| d.served()) {
        if let Some(name) = watch_name(dst, authority) {
            if resolve_destination(&config, dst, a, sc).is_ok() {
                demand.touch(&name);
            } else {
                let found = |c: &Config| resolve_destination(c, dst, a, sc).is_ok().then_some(());
                // Boxed: a rare wait, kept out of every request's future (issue #20).
                let resolving = Box::pin(demand.resolve(&shared.config, &name, found));
                if resolving.await.is_none() {
                    waited = Some(demand.wait);
                }
                config = shared.config.borrow().clone();
            }
        }
    }
    let resolved = resolve_destination(&config, dst, a, sc).map_err(|reason| match waited {
        Some(wait) => format!(
            "{reason} (on-demand discovery: the control plane did not resolve it within {}ms)",
            wait.as_millis()
        ),
        None => reason,
    });
    let (svc, port) = match resolved {
        Ok(x) => x,
        Err(reason) => {
            let labels = Labels {
                authority: "unknown".into(),
                route: LabelValue::EMPTY,
                backend: LabelValue::EMPTY,
            };
            let rsp = h::error(StatusCode::SERVICE_UNAVAILABLE, &reason);
            return record(shared, &labels, None, rsp, started);
        }
    };
    if req.method() == Method::CONNECT {
        let labels = Labels {
            authority: (&svc.authority).into(),
            route: LabelValue::EMPTY,
            backend: LabelValue::EMPTY,
        };
        let rsp = h::error(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT is not supported by weft-proxy",
        );
        return record(shared, &labels, None, rsp, started);
    }
    svc.retry_budget.deposit();
    let Some(route) = route::select_route(&port.routes, &RequestInfo::from_request(&req)) else {
        let labels = Labels {
            authority: (&svc.authority).into(),
            route: LabelValue::EMPTY,
            backend: LabelValue::EMPTY,
        };
        let rsp = h::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no route of {} matches the request", svc.authority),
        );
        return record(shared, &labels, None, rsp, started);
    };
    let route_labels = || Labels {
        authority: (&svc.authority).into(),
        route: (&route.name).into(),
        backend: LabelValue::EMPTY,
    };
    if let Some(status) = route.direct_status {
        let rsp = shed::refuse(
            status,
            NO_ROUTE,
            &format!(
                "route {} of {} answers every request it takes with {status}; nothing sent",
                route.name, svc.authority
            ),
        );
        return record(shared, &route_labels(), None, rsp, started);
    }
    // The route's timeouts replace the service's; the client's own deadline still bounds both.
    let (request_timeout, per_try_timeout) = match route.timeouts {
        Some(t) => (t.request, t.backend_request),
        None => (svc.policy.request_timeout, svc.policy.per_try_timeout),
    };
    let deadline = Deadline::of(req.headers(), request_timeout, started);
    // Filters are applied once, here: every attempt (retries included) sends the same request.
    let received = filter::Received {
        service_port: port.port,
    };
    if !route.filters.is_empty() {
        if let Some(mut rsp) = filter::apply_request(&route.filters, &mut req, received) {
            filter::apply_response(&route.filters, rsp.headers_mut());
            return record(shared, &route_labels(), None, rsp, started);
        }
    }
    let Some(backend) = route::choose_backend(route) else {
        let labels = Labels {
            authority: (&svc.authority).into(),
            route: (&route.name).into(),
            backend: LabelValue::EMPTY,
        };
        let rsp = h::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "route {} of {} has no backend with weight",
                route.name, svc.authority
            ),
        );
        return record(shared, &labels, None, rsp, started);
    };
    let app_h2 = match port.protocol {
        Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Http1 => false,
        _ => downstream_h2,
    };
    let labels = Labels {
        authority: (&svc.authority).into(),
        route: (&route.name).into(),
        backend: (&backend.service).into(),
    };
    // The client sees the backend's response edits, then the route's.
    let respond = |mut rsp: Response<Body>, peer: Option<Arc<DstEndpoint>>| {
        filter::apply_response(&backend.filters, rsp.headers_mut());
        filter::apply_response(&route.filters, rsp.headers_mut());
        record(shared, &labels, peer, rsp, started)
    };
    if !backend.filters.is_empty() {
        if let Some(rsp) = filter::apply_request(&backend.filters, &mut req, received) {
            return respond(rsp, None);
        }
    }
    let policy = &svc.policy;
    let wait = deadline
        .left()
        .map_or(policy.queue_timeout, |l| l.min(policy.queue_timeout));
    let _permit = match svc
        .limiter
        .acquire(
            policy.max_concurrent_requests,
            policy.max_pending_requests,
            wait,
        )
        .await
    {
        Ok(p) => p,
        Err(why) => {
            shared.metrics.shed(&svc.authority, why.reason());
            let message = match why {
                Shed::Concurrency => format!(
                    "{}: {} requests in flight from this proxy (weft.io/max-concurrent-requests), none may wait; not sent",
                    svc.authority, policy.max_concurrent_requests
                ),
                Shed::Pending => format!(
                    "{}: {} requests in flight and {} waiting (weft.io/max-pending-requests); not sent",
                    svc.authority, policy.max_concurrent_requests, policy.max_pending_requests
                ),
                Shed::QueueTimeout => format!(
                    "{}: no slot of {} freed within {} ms (weft.io/queue-timeout or the request's deadline); not sent",
                    svc.authority,
                    policy.max_concurrent_requests,
                    wait.as_millis()
                ),
            };
            let rsp = shed::refuse(StatusCode::SERVICE_UNAVAILABLE, why.reason(), &message);
            return respond(rsp, None);
        }
    };
    let (rsp, peer) = if upgrade::wants_upgrade(&req) {
        let timeout = request_timeout.unwrap_or(upgrade::HANDSHAKE_TIMEOUT);
        // Boxed: connecting and splicing are rare and large (issue #20).
        Box::pin(forward_upgrade(shared, *req, svc, backend, timeout)).await
    } else {
        let attempt = Attempts {
            app_h2,
            deadline,
            per_try_timeout,
        };
        forward(shared, req, svc, backend, &labels, attempt).await
    };
    respond(rsp, peer)
}

/// The `weft-reason` of a route's direct answer (`direct_status`).
pub const NO_ROUTE: &str = "no-route";

/// How the attempts of one request are sent.
#[derive(Clone, Copy, Debug)]
struct Attempts {
    app_h2: bool,
    deadline: Deadline,
    /// Each attempt's own limit (the route's `backend_request_ms`, else the service's).
    per_try_timeout: Option<Duration>,
}

/// The service and port a request goes to: by its transparent destination, else by its
/// authority (explicit mode). The error is the reason answered with the 503.
fn resolve_destination<'c>(
    config: &'c Config,
    dst: Option<SocketAddr>,
    authority: Option<&str>,
    scheme: Option<&http::uri::Scheme>,
) -> Result<(&'c Arc<OutboundService>, &'c crate::config::OutboundPort), String> {
    match dst {
        Some(dst) => config
            .service_by_addr(dst)
            .and_then(|svc| svc.port(dst.port()).map(|p| (svc, p)))
            .ok_or_else(|| format!("no service at {dst}")),
        None => match authority {
            None => Err("request has no Host header or authority".to_string()),
            Some(authority) => {
                route::resolve_authority(config, authority, scheme).map_err(|e| e.to_string())
            }
        },
    }
}

/// On demand: the name to watch for a request's destination.
fn watch_name(dst: Option<SocketAddr>, authority: Option<&str>) -> Option<String> {
    if let Some(dst) = dst {
        return Some(ondemand::ip_name(dst.ip()));
    }
    match route::parse_authority(authority?).ok()? {
        route::Target::Service {
            name, namespace, ..
        } => Some(ondemand::service_name(&name, &namespace)),
        route::Target::Addr(ip, _) => Some(ondemand::ip_name(ip)),
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request's head, kept to build a retry.
struct Head {
    method: Method,
    uri: http::Uri,
    version: Version,
    headers: http::HeaderMap,
}

impl Head {
    fn of(parts: &http::request::Parts) -> Self {
        Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn request(&self, body: Bytes) -> Request<Body> {
        let mut req = Request::new(if body.is_empty() {
            h::empty()
        } else {
            h::full(body)
        });
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A request whose body is buffered (can be replayed), copied while it is sent (can be
/// replayed if it ended within [`MAX_RETRY_BODY_BYTES`]), or streaming (one attempt). Requests
/// stay boxed: the per-request futures hold them across awaits, and every move of an unboxed
/// one is a copy into memory the proxy has not touched since this connection's last request
/// (issue #20, docs/benchmarks.md).
enum Prepared {
    Replayable {
        head: Box<Head>,
        body: Bytes,
    },
    Teed {
        head: Box<Head>,
        capture: Arc<body::Capture>,
        first: Option<Box<Request<Body>>>,
    },
    Once(Option<Box<Request<Body>>>),
}

impl Prepared {
    fn take(&mut self) -> Option<Box<Request<Body>>> {
        match self {
            Prepared::Replayable { head, body } => Some(Box::new(head.request(body.clone()))),
            Prepared::Teed {
                head,
                capture,
                first,
            } => match first.take() {
                Some(req) => Some(req),
                None => capture.replay().map(|b| Box::new(head.request(b))),
            },
            Prepared::Once(req) => req.take(),
        }
    }

    /// Whether another attempt can be sent.
    fn replayable(&self) -> bool {
        match self {
            Prepared::Replayable { .. } => true,
            Prepared::Teed { capture, first, .. } => first.is_none() && capture.ready(),
            Prepared::Once(_) => false,
        }
    }
}

/// A prepared request, and whether its streamed body failed on the client's side.
type Ready = (Prepared, h::ClientBodyFailed);

/// Prepares the request for one or more attempts. `Err` when a buffered body could not be read
/// from the client.
///
/// A retryable request (retries on, and an idempotent method or `retry_non_idempotent`) with a
/// body of known length up to [`MAX_RETRY_BODY_BYTES`] is buffered before it is sent; one of
/// unknown length is copied while it is sent ([`body::Tee`]); a longer one streams, once.
async fn prepare(req: Box<Request<Incoming>>, policy: &TrafficPolicy) -> Result<Ready, StatusCode> {
    match prepare_now(req, policy) {
        Ok(ready) => Ok(ready),
        // Boxed: only a retryable request with a body still to read waits here, and the wait's
        // state would otherwise be part of every request's future (issue #20).
        Err(req) => Box::pin(buffer(req)).await,
    }
}

/// [`prepare`] for every request that needs no wait: all but a retryable one with a body of
/// known length still to read, which comes back as it came.
fn prepare_now(
    req: Box<Request<Incoming>>,
    policy: &TrafficPolicy,
) -> Result<Ready, Box<Request<Incoming>>> {
    let retryable =
        policy.max_retries > 0 && (idempotent(req.method()) || policy.retry_non_idempotent);
    let upper = req.body().size_hint().upper();
    let ended = req.body().is_end_stream();
    let fits = |n: u64| n <= MAX_RETRY_BODY_BYTES;
    if retryable && !ended && upper.is_some_and(fits) {
        return Err(req);
    }
    let (mut head, body) = req.into_parts();
    h::strip_hop_by_hop(&mut head.headers);
    if !retryable || upper.is_some_and(|n| !fits(n)) {
        let (req, failed) = h::watch_body(Request::from_parts(head, body));
        return Ok((Prepared::Once(Some(Box::new(req))), failed));
    }
    if ended {
        // Nothing to read (a GET): replayable as it is, without a wait.
        let ready = Prepared::Replayable {
            head: Box::new(Head::of(&head)),
            body: Bytes::new(),
        };
        return Ok((ready, h::ClientBodyFailed::default()));
    }
    // Of unknown length: copied while it is sent.
    let kept = Box::new(Head::of(&head));
    let (req, failed) = h::watch_body(Request::from_parts(head, body));
    let capture = body::Capture::new(MAX_RETRY_BODY_BYTES);
    let req = req.map(|b| h::boxed(body::Tee::new(b, capture.clone())));
    let ready = Prepared::Teed {
        head: kept,
        capture,
        first: Some(Box::new(req)),
    };
    Ok((ready, failed))
}

/// Reads a retryable request's body of known length (at most [`MAX_RETRY_BODY_BYTES`]).
async fn buffer(req: Box<Request<Incoming>>) -> Result<Ready, StatusCode> {
    let (mut head, body) = req.into_parts();
    h::strip_hop_by_hop(&mut head.headers);
    match http_body_util::Limited::new(body, MAX_RETRY_BODY_BYTES as usize)
        .collect()
        .await
    {
        Ok(collected) => {
            // A body with trailers cannot be replayed faithfully from bytes alone.
            if collected.trailers().is_some() {
                let bytes = collected.to_bytes();
                let req = Request::from_parts(head, h::full(bytes));
                return Ok((
                    Prepared::Once(Some(Box::new(req))),
                    h::ClientBodyFailed::default(),
                ));
            }
            Ok((
                Prepared::Replayable {
                    head: Box::new(Head::of(&head)),
                    body: collected.to_bytes(),
                },
                h::ClientBodyFailed::default(),
            ))
        }
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

/// Whether `rsp` is worth another attempt under `policy`: a status in `retry_statuses`, or a
/// `grpc-status` (trailers-only answer) in `retry_grpc_codes`.
fn retry_on(policy: &TrafficPolicy, rsp: &Response<Body>) -> bool {
    policy.retry_statuses.contains(rsp.status().as_u16())
        || accrual::grpc_status(rsp.headers()).is_some_and(|c| policy.retry_grpc_codes.contains(&c))
}

/// When a request must be answered by: the smaller of what it carries (`grpc-timeout`,
/// `weft-timeout-ms`) and the service's timeout, from when the proxy received it.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    /// When the proxy received the request.
    received: Instant,
    at: Option<Instant>,
    /// The request's own deadline is the binding one: running out of it is not the endpoint's
    /// fault.
    from_client: bool,
}

impl Deadline {
    fn of(headers: &http::HeaderMap, timeout: Option<Duration>, received: Instant) -> Self {
        let client = deadline::remaining(headers);
        let limit = deadline::effective(headers, timeout);
        Deadline {
            received,
            at: limit.and_then(|d| received.checked_add(d)),
            from_client: client.is_some() && client == limit,
        }
    }

    /// Time left now (`None`: no deadline). The clock is read only when there is a deadline.
    fn left(&self) -> Option<Duration> {
        self.at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// The `504` of a request whose deadline passed.
fn deadline_exceeded(shared: &Shared, svc: &OutboundService, received: Instant) -> Response<Body> {
    shared.metrics.deadline_exceeded(&svc.authority);
    shed::refuse(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline",
        &format!(
            "{}: the request's deadline passed after {} ms (weft-timeout-ms, grpc-timeout, weft.io/timeout or the route's timeouts)",
            svc.authority,
            received.elapsed().as_millis()
        ),
    )
}

/// Sends the request to an endpoint of `backend`, within its deadline, each attempt within
/// `per_try_timeout`, with budgeted retries to (preferably) another endpoint. Returns the
/// response and the endpoint's identity (if meshed).
async fn forward(
    shared: &Shared,
    req: Box<Request<Incoming>>,
    svc: &OutboundService,
    backend: &Backend,
    labels: &Labels,
    how: Attempts,
) -> (Response<Body>, Option<Arc<DstEndpoint>>) {
    let Attempts {
        app_h2,
        deadline,
        per_try_timeout,
    } = how;
    let received = deadline.received;
    let policy = &svc.policy;
    // Pinned where it is made: awaiting it by value moved the whole (~1 KiB) future, a copy
    // into memory this connection's last request left cold (issue #20, docs/benchmarks.md).
    let attempts = std::pin::pin!(async {
        let (mut prepared, body) = match prepare(req, policy).await {
            Ok(p) => p,
            Err(status) => {
                shared.metrics.client_error(OUTBOUND, "request_body");
                return (
                    h::error(status, "the request body could not be read from the client"),
                    None,
                );
            }
        };
        let mut attempt = 0u32;
        let mut avoid = None;
        loop {
            let left = deadline.left();
            if left == Some(Duration::ZERO) {
                return (deadline_exceeded(shared, svc, received), None);
            }
            let Some(mut req) = prepared.take() else {
                return (
                    h::error(StatusCode::BAD_GATEWAY, "request could not be retried"),
                    None,
                );
            };
            let limit = match (left, per_try_timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(t) = limit {
                deadline::set_remaining(req.headers_mut(), t);
            }
            // Running out of the client's own time says nothing about the endpoint.
            let charge = !(deadline.from_client && limit == left);
            let a = attempt_once(
                shared,
                req,
                svc,
                backend,
                app_h2,
                &body,
                Limit { limit, charge },
                avoid,
            )
            .await;
            let can_retry = a.sent
                && attempt < policy.max_retries
                && retry_on(policy, &a.rsp)
                && prepared.replayable()
                && deadline.left() != Some(Duration::ZERO);
            if !can_retry {
                if a.rsp.status() == StatusCode::GATEWAY_TIMEOUT && !charge {
                    return (deadline_exceeded(shared, svc, received), a.peer);
                }
                return (a.rsp, a.peer);
            }
            if !svc
                .retry_budget
                .try_withdraw_with_floor(policy.retry_budget_min_per_second)
            {
                shared.metrics.retry_skipped(&svc.authority);
                return (a.rsp, a.peer);
            }
            attempt += 1;
            avoid = a.addr;
            shared.metrics.retry(&LatencyLabels {
                direction: OUTBOUND,
                authority: labels.authority.clone(),
                route: labels.route.clone(),
                backend: labels.backend.clone(),
            });
        }
    });
    match deadline.at {
        Some(at) => match tokio::time::timeout_at(at.into(), attempts).await {
            Ok(r) => r,
            Err(_) => (deadline_exceeded(shared, svc, received), None),
        },
        None => attempts.await,
    }
}

/// The 503 for a backend with no endpoints (or one the operator could not resolve: its reason).
fn no_endpoints(backend: &Backend) -> Response<Body> {
    h::error(
        backend.no_endpoints_status(),
        &backend.no_endpoints_reason(),
    )
}

/// The fast answer when no endpoint of `backend` can take the request.
fn unpicked(
    shared: &Shared,
    svc: &OutboundService,
    backend: &Backend,
    why: Unpicked,
) -> Response<Body> {
    let now = Instant::now();
    match why {
        Unpicked::NoEndpoints => no_endpoints(backend),
        Unpicked::Ejected {
            ejected,
            total,
            next_probe,
        } => {
            shared.metrics.shed(&svc.authority, "ejected");
            let next = match next_probe {
                Some(t) => format!(
                    "the next probe is due in {} ms",
                    t.saturating_duration_since(now).as_millis()
                ),
                None => "a probe is in flight".to_string(),
            };
            shed::refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "ejected",
                &format!(
                    "{}: {ejected} of {total} endpoints of backend {} are ejected after failures (failure accrual); {next}",
                    svc.authority, backend.service
                ),
            )
        }
        Unpicked::BackingOff { until } => {
            shared.metrics.shed(&svc.authority, "rate-limit");
            let left = until.saturating_duration_since(now);
            let mut rsp = shed::refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limit",
                &format!(
                    "{}: every endpoint of backend {} asked to back off (429 / RESOURCE_EXHAUSTED); the first is free again in {} ms",
                    svc.authority,
                    backend.service,
                    left.as_millis()
                ),
            );
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            rsp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            rsp
        }
        Unpicked::Full { max } => {
            shared.metrics.shed(&svc.authority, "concurrency");
            shed::refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "concurrency",
                &format!(
                    "{}: every endpoint of backend {} has {max} requests in flight from this proxy (weft.io/max-requests-per-endpoint)",
                    svc.authority, backend.service
                ),
            )
        }
    }
}

/// The time limit of one attempt, and whether running out of it counts against the endpoint.
#[derive(Clone, Copy, Debug)]
struct Limit {
    limit: Option<Duration>,
    charge: bool,
}

/// What one attempt gave.
struct Attempt {
    rsp: Response<Body>,
    peer: Option<Arc<DstEndpoint>>,
    /// The endpoint it went to.
    addr: Option<SocketAddr>,
    /// Whether it reached an endpoint at all (not refused by the proxy itself).
    sent: bool,
}

#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    shared: &Shared,
    req: Box<Request<Body>>,
    svc: &OutboundService,
    backend: &Backend,
    app_h2: bool,
    body: &h::ClientBodyFailed,
    limit: Limit,
    avoid: Option<SocketAddr>,
) -> Attempt {
    let policy = &svc.policy;
    // One clock read for the pick and the start of the attempt.
    let started = Instant::now();
    let picked = match pick::pick(
        backend,
        policy.max_requests_per_endpoint,
        avoid,
        true,
        started,
    ) {
        Ok(p) => p,
        Err(why) => {
            return Attempt {
                rsp: unpicked(shared, svc, backend, why),
                peer: None,
                addr: None,
                sent: false,
            }
        }
    };
    let Picked {
        ep,
        in_flight: _in_flight,
        mut probe,
    } = picked;
    let peer = Some(ep.dst.clone());
    let send = async {
        match ep.mesh_target() {
            Some((addr, identity)) => send_mesh(shared, req, ep, addr, identity, app_h2).await,
            None => match shared.plain.send(ep.addr, req, app_h2).await {
                Ok(rsp) => Ok(rsp.map(h::boxed)),
                Err(e @ h::PlainError::Target(_)) => Err((StatusCode::BAD_REQUEST, e.to_string())),
                Err(e) => Err((
                    StatusCode::BAD_GATEWAY,
                    format!("{} ({}): {e}", backend.service, ep.pod),
                )),
            },
        }
    };
    let result = match limit.limit {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "{} ({}) did not answer within {} ms",
                    backend.service,
                    ep.pod,
                    t.as_millis()
                ),
            )),
        },
        None => send.await,
    };
    // One clock read for the attempt's latency and the breaker's record.
    let done = Instant::now();
    let took = done.saturating_duration_since(started);
    let accrual = &policy.failure_accrual;
    let olabels = OutboundLabels {
        authority: (&svc.authority).into(),
        backend: (&backend.service).into(),
    };
    let ctx = accrual::Ctx {
        policy: accrual,
        metrics: &shared.metrics,
        labels: &olabels,
    };
    let (outcome, rsp) = match result {
        Ok(mut rsp) => {
            let outcome = accrual::classify(rsp.status(), rsp.headers(), accrual);
            if outcome == Outcome::Failure {
                // A fast error is not a fast success.
                ep.load.observe_failure();
            } else {
                ep.load.observe_ended(took, done);
            }
            h::strip_hop_by_hop(rsp.headers_mut());
            (outcome, rsp)
        }
        Err((status, reason)) => {
            let outcome = if body.failed() || status == StatusCode::BAD_REQUEST {
                // The client's own body failing is not the endpoint's fault.
                Outcome::Unknown
            } else if status == StatusCode::GATEWAY_TIMEOUT && !limit.charge {
                ep.load.observe_ended(took, done);
                Outcome::Unknown
            } else {
                ep.load.observe_failure();
                Outcome::Failure
            };
            (
                outcome,
                h::forward_error(body, &shared.metrics, OUTBOUND, status, &reason),
            )
        }
    };
    ep.load.breaker.record(outcome, probe.is_some(), done, ctx);
    if let Some(p) = &mut probe {
        if outcome != Outcome::Unknown {
            p.decided();
        }
        if outcome == Outcome::Success {
            // Restored: it competes from its probe's latency, not from its old penalties.
            ep.load.reset(took);
        }
    }
    Attempt {
        rsp,
        peer,
        addr: Some(ep.addr),
        sent: true,
    }
}

async fn send_mesh(
    shared: &Shared,
    mut req: Box<Request<Body>>,
    ep: &Endpoint,
    addr: SocketAddr,
    identity: &Arc<str>,
    app_h2: bool,
) -> Result<Response<Body>, (StatusCode, String)> {
    let hint = if app_h2 { Hint::Http2 } else { Hint::Http1 };
    let mut sender = shared
        .mesh
        .sender(&*shared.identity, addr, identity, ep.addr.port(), hint)
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("{} ({identity}): {e}", ep.pod),
            )
        })?;
    // Keep the original authority in the URI: it travels as `:authority` on the link.
    // Parsed straight from the header (one copy), or the URI's own (a reference-count bump).
    let from_request = match req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
    {
        Some(host) => http::uri::Authority::try_from(host).ok(),
        None => req.uri().authority().cloned(),
    };
    let bad_target = |e: http::Error| (StatusCode::BAD_REQUEST, format!("bad request target: {e}"));
    let authority = match from_request {
        Some(a) => a,
        None => h::addr_authority(ep.addr).map_err(bad_target)?,
    };
    h::set_upstream_authority(&mut req, authority).map_err(bad_target)?;
    *req.version_mut() = Version::HTTP_2;
    // `h2`'s header table may keep these values as long as the connection lives.
    h::detach::detach(req.headers_mut());
    sender
        .send_request(*req)
        .await
        .map(|rsp| rsp.map(h::boxed))
        .map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("{} ({identity}): {e}", ep.pod),
            )
        })
}

/// Forwards an HTTP/1.1 upgrade request to an endpoint of `backend` on a connection of its own
/// (never retried), within the service's `weft.io/timeout` or [`upgrade::HANDSHAKE_TIMEOUT`].
/// On `101` the downstream and upstream connections are spliced; any other answer is returned
/// as is. Returns the response and the endpoint's identity (if meshed).
async fn forward_upgrade(
    shared: &Shared,
    mut req: Request<Incoming>,
    svc: &OutboundService,
    backend: &Backend,
    timeout: Duration,
) -> (Response<Body>, Option<Arc<DstEndpoint>>) {
    let picked = pick::pick(
        backend,
        svc.policy.max_requests_per_endpoint,
        None,
        false,
        Instant::now(),
    );
    let ep = match picked {
        // The upgraded connection counts as in flight from the splice on (below).
        Ok(Picked { ep, .. }) => ep,
        Err(why) => return (unpicked(shared, svc, backend, why), None),
    };
    let peer = Some(ep.dst.clone());
    let downstream = hyper::upgrade::on(&mut req);
    let (mut head, body) = req.into_parts();
    upgrade::keep_upgrade_headers(&mut head.headers);
    let mut req = Request::from_parts(head, h::boxed(body));
    upgrade::set_origin_form(&mut req);

    let started = Instant::now();
    let attempt = async {
        let _in_flight = ep.load.start();
        match ep.mesh_target() {
            Some((addr, identity)) => {
                // The server proxy detects HTTP/1.1 and serves it with upgrades.
                let header = TransportHeader {
                    port: ep.addr.port(),
                    hint: Hint::Detect,
                };
                let io = transport::connect_mesh(&*shared.identity, addr, identity, header).await?;
                upgrade::send(io, req).await
            }
            None => upgrade::send(transport::connect(ep.addr).await?, req).await,
        }
    };
    let mut rsp = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(rsp)) => {
            ep.load.observe(started.elapsed());
            rsp
        }
        Ok(Err(e)) => {
            ep.load.observe_failure();
            return (
                h::error(
                    StatusCode::BAD_GATEWAY,
                    &format!("{} ({}): {e}", backend.service, ep.pod),
                ),
                peer,
            );
        }
        Err(_) => {
            return (
                h::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "{} did not answer the upgrade within {} ms",
                        svc.authority,
                        timeout.as_millis()
                    ),
                ),
                peer,
            )
        }
    };
    if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
        h::strip_hop_by_hop(rsp.headers_mut());
        return (rsp.map(h::boxed), peer);
    }
    let upstream = hyper::upgrade::on(&mut rsp);
    upgrade::keep_upgrade_headers(rsp.headers_mut());
    let metrics = shared.metrics.clone();
    let authority = svc.authority.clone();
    let load = ep.load.clone();
    let mut rsp = rsp.map(h::boxed);
    Splice::attach(&mut rsp, async move {
        // An upgraded connection counts as a request in flight for balancing while it lasts.
        let _in_flight = load.start();
        let _open = metrics.tcp_open(OUTBOUND, &authority);
        match upgrade::splice(downstream, upstream).await {
            Ok((up, down)) => metrics.tcp_bytes(OUTBOUND, &authority, up, down),
            Err(e) => tracing::debug!(service = %authority, error = %e, "upgrade not spliced"),
        }
    });
    (rsp, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns (a future, here), without calling it.
    fn output_size<T, R>(_: impl FnOnce(T) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    type S = &'static Shared;

    /// Every request's future is moved by hyper's connection poll: the rare paths (tracing,
    /// on-demand waits, upgrades, connecting to a peer proxy) are boxed so that it stays small
    /// (issue #20). Sizes of a debug build, which are larger than a release build's;
    /// `--nocapture` prints them.
    #[test]
    fn per_request_futures_stay_small() {
        type Args = (S, Box<Request<Incoming>>, Option<SocketAddr>, bool);
        let request = output_size(|(s, r, d, h): Args| handle_request(s, r, d, h));
        let untraced = output_size(|(s, r, d, h): Args| handle_untraced(s, r, d, h));
        type AttemptArgs = (
            S,
            Box<Request<Body>>,
            &'static OutboundService,
            &'static Backend,
            bool,
            &'static h::ClientBodyFailed,
            Limit,
            Option<SocketAddr>,
        );
        let attempt = output_size(|(s, r, v, b, h, f, l, a): AttemptArgs| {
            attempt_once(s, r, v, b, h, f, l, a)
        });
        let mesh = output_size(
            |(s, r, e, a, i, h): (
                S,
                Box<Request<Body>>,
                &'static Endpoint,
                SocketAddr,
                &'static Arc<str>,
                bool,
            )| send_mesh(s, r, e, a, i, h),
        );
        eprintln!(
            "outbound handle_request: {request} bytes, handle_untraced: {untraced}, \
             attempt_once: {attempt}, send_mesh: {mesh}"
        );
        // Unboxed, the traced path's copy of `handle_untraced` made it more than twice as large.
        assert!(request < 2 * untraced, "{request} vs {untraced}");
        // With the request by value, each async level held its 240-264 bytes, most of them
        // twice: 5,040 bytes in all, against 2,816 with it boxed (2026-12-04).
        assert!(request < 3584, "{request}");
        // Unboxed, connecting to a peer proxy (TCP, TLS, HTTP/2 handshakes) made `send_mesh`
        // several KiB, and every attempt with it.
        assert!(mesh < 2048, "{mesh}");
        assert!(attempt < 4096, "{attempt}");
    }
}
