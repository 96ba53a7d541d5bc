//! Tap: a live view of the requests through this proxy (`weft tap`, `weft top`; docs/tap.md).
//!
//! - [`Tap`] is the hub the data plane reports to. With no tap open, a request pays one relaxed
//!   atomic load ([`Tap::is_active`]) and nothing else. With taps open, the request's head is
//!   matched against each tap's filters and rate limit, and events go to each tap through a
//!   bounded channel with `try_send`: a slow tapper loses events (counted in
//!   `weft_proxy_tap_events_dropped_total`), the request never waits for it.
//! - [`serve`] is the `weft.tap.v1.Tap` gRPC service on its own listener, over mTLS with the
//!   proxy's mesh certificate. Only a client whose verified certificate carries the operator's
//!   SPIFFE identity (`WEFT_PROXY_TAP_IDENTITY`, default `WEFT_PROXY_CONTROL_IDENTITY`) may
//!   observe: without a configured identity nobody may (fail closed); a client without a
//!   certificate fails the handshake; any other identity gets `PERMISSION_DENIED`.
//!
//! Bodies are never captured (only their byte count). Header values of [`ALWAYS_REDACTED`] and
//! of the configured list (`WEFT_PROXY_TAP_REDACT`) are replaced by [`REDACTED`] before an event
//! exists.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::Stream;
use weft_proxy_api::tap_v1::{self as pb, tap_event, tap_server, ObserveRequest, TapEvent};

pub use weft_proxy_api::tap_v1::Direction;

use crate::http::{Body, BoxError};
use crate::identity::Identity;

/// `WEFT_PROXY_TAP_ADDR` default.
pub const DEFAULT_ADDR: &str = "0.0.0.0:4190";
/// Taps open at once on one proxy; one more is refused with `RESOURCE_EXHAUSTED`.
pub const MAX_TAPS: usize = 8;
/// Requests per second one tap may report (the cap of `requests_per_second`, and its default).
pub const MAX_REQUESTS_PER_SECOND: u32 = 100;
/// Requests one tap may report before its stream ends (cap and default of `max_requests`).
pub const MAX_REQUESTS: u32 = 10_000;
/// Events buffered per tap; beyond, events are dropped and counted.
pub const EVENT_BUFFER: usize = 256;
/// Headers reported per request (the rest are left out) and bytes per header value.
pub const MAX_HEADERS: usize = 32;
pub const MAX_HEADER_VALUE: usize = 512;
/// The value reported for a redacted header.
pub const REDACTED: &str = "<redacted>";
/// Headers whose values are never reported, whatever the configuration.
pub const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];
/// Connections the tap listener serves at once, and the time a client has to finish TLS.
const MAX_CONNECTIONS: usize = 16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The hub of one proxy's taps. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Tap {
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("active", &self.hub.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Tap {
    fn default() -> Self {
        Tap::new(String::new(), &[])
    }
}

struct Hub {
    /// Taps open plus tapped requests in flight; the one load the request path pays when it is
    /// zero. (A tapped request counts until its end, so that its end event is complete even
    /// after its tap reached its limit.)
    active: AtomicUsize,
    subs: Mutex<Vec<Arc<Sub>>>,
    next_sub: AtomicU64,
    next_request: AtomicU64,
    dropped: Counter,
    /// Lowercase header names whose values are redacted.
    redact: BTreeSet<String>,
    /// `namespace/pod` of this proxy.
    proxy: String,
    /// This proxy's identity, once known (events carry its SPIFFE ID).
    local: std::sync::OnceLock<Identity>,
}

impl Hub {
    fn remove(&self, id: u64) {
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        let before = subs.len();
        subs.retain(|s| s.id != id);
        if subs.len() != before {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One open tap: its filters, its rate limit and its channel.
struct Sub {
    id: u64,
    direction: Direction,
    authority: String,
    path_prefix: String,
    method: String,
    tx: mpsc::Sender<TapEvent>,
    limit: Mutex<Bucket>,
}

struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
    remaining: u32,
}

impl Sub {
    fn matches(&self, direction: Direction, method: &str, authority: &str, path: &str) -> bool {
        if self.direction != Direction::Unspecified && self.direction != direction {
            return false;
        }
        if !self.method.is_empty() && !self.method.eq_ignore_ascii_case(method) {
            return false;
        }
        if !self.path_prefix.is_empty() && !path.starts_with(&self.path_prefix) {
            return false;
        }
        if !self.authority.is_empty() {
            let host = strip_port(authority);
            let ok = host.eq_ignore_ascii_case(&self.authority)
                || (host.len() > self.authority.len()
                    && host.as_bytes()[self.authority.len()] == b'.'
                    && host[..self.authority.len()].eq_ignore_ascii_case(&self.authority));
            if !ok {
                return false;
            }
        }
        true
    }

    /// Takes one request from the rate limit; the second value is true when this was the last
    /// one the tap may report.
    fn admit(&self, now: Instant) -> (bool, bool) {
        let mut b = self.limit.lock().unwrap_or_else(PoisonError::into_inner);
        if b.remaining == 0 {
            return (false, true);
        }
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * b.rate).min(b.rate.max(1.0));
        if b.tokens < 1.0 {
            return (false, false);
        }
        b.tokens -= 1.0;
        b.remaining -= 1;
        (true, b.remaining == 0)
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| h.trim_start_matches('['));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// What the data plane learned while handling a request, for its events (set on the response's
/// extensions by the listeners when a tap is active).
#[derive(Clone, Debug, Default)]
pub struct TapMeta {
    pub route: String,
    pub backend: String,
    /// Outbound: the serving proxy's identity, when the hop was mTLS.
    pub server_id: Option<String>,
}

impl TapMeta {
    /// Attaches `meta` to `rsp` when a tap is open (nothing otherwise).
    pub fn attach<B>(tap: &Tap, rsp: &mut Response<B>, meta: impl FnOnce() -> TapMeta) {
        if tap.is_active() {
            rsp.extensions_mut().insert(meta());
        }
    }
}

/// A request some tap reports: its id and the taps to tell about its end.
pub struct Pending {
    hub: Arc<Hub>,
    subs: Vec<Arc<Sub>>,
    base: TapEvent,
    started: Instant,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.hub.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tap {
    /// A hub for proxy `proxy` (`namespace/pod`), redacting `extra_redact` on top of
    /// [`ALWAYS_REDACTED`].
    pub fn new(proxy: String, extra_redact: &[String]) -> Tap {
        let redact = ALWAYS_REDACTED
            .iter()
            .map(|s| s.to_string())
            .chain(extra_redact.iter().map(|s| s.trim().to_ascii_lowercase()))
            .filter(|s| !s.is_empty())
            .collect();
        Tap {
            hub: Arc::new(Hub {
                active: AtomicUsize::new(0),
                subs: Mutex::new(Vec::new()),
                next_sub: AtomicU64::new(1),
                next_request: AtomicU64::new(1),
                dropped: Counter::default(),
                redact,
                proxy,
                local: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sets this proxy's identity (the one its events carry as its own side).
    pub fn set_identity(&self, identity: Identity) {
        let _ = self.hub.local.set(identity);
    }

    /// This proxy's SPIFFE ID, when it holds a certificate.
    pub fn local_id(&self) -> Option<String> {
        self.hub.local.get().and_then(Identity::local_identity)
    }

    /// True when some tap is open: the whole cost of tap on the request path when none is.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.hub.active.load(Ordering::Relaxed) != 0
    }

    /// Registers `weft_proxy_tap_events_dropped_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_proxy_tap_events_dropped",
            "Tap events dropped because the tapper read too slowly (its bounded buffer was full)",
            self.hub.dropped.clone(),
        );
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.hub.dropped.get()
    }

    /// Opens a tap with `req`'s filters and limits (capped); `None` when [`MAX_TAPS`] are open.
    pub fn subscribe(&self, req: &ObserveRequest) -> Option<Subscription> {
        let cap = |v: u32, max: u32| if v == 0 || v > max { max } else { v };
        let rate = f64::from(cap(req.requests_per_second, MAX_REQUESTS_PER_SECOND));
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let id = self.hub.next_sub.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Sub {
            id,
            direction: req.direction(),
            authority: strip_port(req.authority.trim()).to_ascii_lowercase(),
            path_prefix: req.path_prefix.clone(),
            method: req.method.trim().to_string(),
            tx,
            limit: Mutex::new(Bucket {
                rate,
                tokens: rate.max(1.0),
                last: Instant::now(),
                remaining: cap(req.max_requests, MAX_REQUESTS),
            }),
        });
        let mut subs = self.hub.subs.lock().unwrap_or_else(PoisonError::into_inner);
        if subs.len() >= MAX_TAPS {
            return None;
        }
        subs.push(sub);
        self.hub.active.fetch_add(1, Ordering::Relaxed);
        Some(Subscription {
            rx,
            hub: Arc::clone(&self.hub),
            id,
        })
    }

    /// Reports a request's head to the taps that want it; call only when [`Tap::is_active`].
    /// `client_id`/`server_id`: the identities known when the request arrives.
    pub fn begin<B>(
        &self,
        direction: Direction,
        req: &Request<B>,
        client_id: Option<&str>,
        server_id: Option<&str>,
    ) -> Option<Pending> {
        if !self.is_active() {
            return None;
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let method = req.method().as_str();
        let path = req.uri().path();
        let now = Instant::now();
        let mut chosen = Vec::new();
        {
            let mut subs = self.hub.subs.lock().unwrap_or_else(PoisonError::into_inner);
            let mut finished = Vec::new();
            for sub in subs.iter() {
                if sub.tx.is_closed() {
                    finished.push(sub.id);
                    continue;
                }
                if !sub.matches(direction, method, authority, path) {
                    continue;
                }
                let (take, last) = sub.admit(now);
                if take {
                    chosen.push(Arc::clone(sub));
                }
                if last {
                    finished.push(sub.id);
                }
            }
            if !finished.is_empty() {
                let before = subs.len();
                subs.retain(|s| !finished.contains(&s.id));
                self.hub
                    .active
                    .fetch_sub(before - subs.len(), Ordering::Relaxed);
            }
        }
        if chosen.is_empty() {
            return None;
        }
        let base = TapEvent {
            id: self.hub.next_request.fetch_add(1, Ordering::Relaxed),
            direction: direction as i32,
            client_id: client_id.unwrap_or_default().to_string(),
            server_id: server_id.unwrap_or_default().to_string(),
            tls: false,
            route: String::new(),
            backend: String::new(),
            proxy: self.hub.proxy.clone(),
            event: None,
        };
        let init = pb::RequestInit {
            method: method.to_string(),
            scheme: req
                .uri()
                .scheme_str()
                .map(str::to_string)
                .unwrap_or_else(|| "http".to_string()),
            authority: authority.to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or(path, |p| p.as_str())
                .to_string(),
            headers: self.headers(req.headers()),
        };
        let mut event = base.clone();
        event.tls = direction == Direction::Inbound && client_id.is_some();
        event.event = Some(tap_event::Event::RequestInit(init));
        send(&self.hub, &chosen, event);
        self.hub.active.fetch_add(1, Ordering::Relaxed);
        Some(Pending {
            hub: Arc::clone(&self.hub),
            subs: chosen,
            base,
            started: now,
        })
    }

    fn headers(&self, headers: &http::HeaderMap) -> Vec<pb::Header> {
        headers
            .iter()
            .take(MAX_HEADERS)
            .map(|(name, value)| {
                let value = if self.hub.redact.contains(name.as_str()) {
                    REDACTED.to_string()
                } else {
                    let v = String::from_utf8_lossy(value.as_bytes());
                    let mut end = v.len().min(MAX_HEADER_VALUE);
                    while !v.is_char_boundary(end) {
                        end -= 1;
                    }
                    v[..end].to_string()
                };
                pb::Header {
                    name: name.as_str().to_string(),
                    value,
                }
            })
            .collect()
    }

    /// Follows `rsp` to its end for `pending` (a no-op without one): the end event carries the
    /// status, latencies and byte count, and the route, backend and peer the listener attached
    /// ([`TapMeta`]).
    pub fn finish(pending: Option<Pending>, mut rsp: Response<Body>) -> Response<Body> {
        let Some(mut pending) = pending else {
            return rsp;
        };
        if let Some(meta) = rsp.extensions_mut().remove::<TapMeta>() {
            pending.base.route = meta.route;
            pending.base.backend = meta.backend;
            if let Some(server) = meta.server_id {
                pending.base.tls = true;
                pending.base.server_id = server;
            }
        }
        if pending.base.direction == Direction::Inbound as i32 {
            pending.base.tls = !pending.base.client_id.is_empty();
        }
        let status = rsp.status().as_u16();
        let grpc_status = crate::classify::grpc_status(rsp.headers()).map(u32::from);
        let grpc = crate::classify::is_grpc(rsp.headers());
        let head = pending.started.elapsed();
        rsp.map(|inner| {
            crate::http::boxed(TapBody {
                inner,
                end: Some(EndState {
                    pending,
                    status: status.into(),
                    grpc_status,
                    grpc,
                    head,
                    bytes: 0,
                }),
            })
        })
    }
}

fn send(hub: &Hub, subs: &[Arc<Sub>], event: TapEvent) {
    for sub in subs {
        match sub.tx.try_send(event.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                hub.dropped.inc();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

struct EndState {
    pending: Pending,
    status: u32,
    grpc_status: Option<u32>,
    grpc: bool,
    head: Duration,
    bytes: u64,
}

impl EndState {
    fn emit(self, end: &str) {
        let mut event = self.pending.base.clone();
        let how = match end {
            "error" => crate::classify::End::Error,
            "dropped" => crate::classify::End::Dropped,
            _ => crate::classify::End::Complete,
        };
        let classification = crate::classify::classify(
            http::StatusCode::from_u16(u16::try_from(self.status).unwrap_or(0))
                .unwrap_or(http::StatusCode::OK),
            self.grpc,
            self.grpc_status.and_then(|s| u16::try_from(s).ok()),
            how,
        );
        event.event = Some(tap_event::Event::ResponseEnd(pb::ResponseEnd {
            status: self.status,
            grpc_status: self.grpc_status,
            latency_head_micros: micros(self.head),
            latency_end_micros: micros(self.pending.started.elapsed()),
            response_bytes: self.bytes,
            end: end.to_string(),
            classification: classification.to_string(),
        }));
        send(&self.pending.hub, &self.pending.subs, event);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The response body, counted and watched to its end for a tapped request.
struct TapBody {
    inner: Body,
    end: Option<EndState>,
}

impl http_body::Body for TapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(end) = self.end.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        end.bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        if let Some(s) = crate::classify::grpc_status(trailers) {
                            end.grpc_status = Some(u32::from(s));
                        }
                    }
                }
                if self.inner.is_end_stream() {
                    if let Some(end) = self.end.take() {
                        end.emit("complete");
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(end) = self.end.take() {
                    end.emit("error");
                }
            }
            Poll::Ready(None) => {
                if let Some(end) = self.end.take() {
                    end.emit("complete");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TapBody {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            // An empty body that was never polled is complete; anything else was cut short.
            let how = if self.inner.is_end_stream() {
                "complete"
            } else {
                "dropped"
            };
            end.emit(how);
        }
    }
}

/// An open tap's events; closing it (dropping) frees its slot at once.
pub struct Subscription {
    rx: mpsc::Receiver<TapEvent>,
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

impl Stream for Subscription {
    type Item = Result<TapEvent, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|e| e.map(Ok))
    }
}

/// The gRPC service of one connection: `authorized` when its client proved the tap identity.
struct TapService {
    tap: Tap,
    authorized: bool,
}

#[tonic::async_trait]
impl tap_server::Tap for TapService {
    type ObserveStream = Subscription;

    async fn observe(
        &self,
        request: tonic::Request<ObserveRequest>,
    ) -> Result<tonic::Response<Subscription>, tonic::Status> {
        if !self.authorized {
            return Err(tonic::Status::permission_denied(
                "only the operator's identity may tap this proxy",
            ));
        }
        match self.tap.subscribe(request.get_ref()) {
            Some(sub) => Ok(tonic::Response::new(sub)),
            None => Err(tonic::Status::resource_exhausted(format!(
                "{MAX_TAPS} taps are already open on this proxy"
            ))),
        }
    }
}

/// Who may tap: the SPIFFE ID a client certificate must carry (`None`: nobody).
pub fn authorized(allowed: Option<&str>, peer: Option<&str>) -> bool {
    matches!((allowed, peer), (Some(a), Some(p)) if a == p)
}

/// Serves the tap listener until `shutdown`: mTLS with the proxy's mesh certificate (a client
/// certificate chaining to the mesh trust anchors is required), then `weft.tap.v1.Tap` for a
/// client whose identity is `allowed`, `PERMISSION_DENIED` for any other.
pub async fn serve(
    listener: TcpListener,
    tap: Tap,
    identity: Identity,
    allowed: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let allowed: Option<Arc<str>> = allowed.map(Arc::from);
    if allowed.is_none() {
        tracing::info!(
            "tap: no WEFT_PROXY_TAP_IDENTITY or WEFT_PROXY_CONTROL_IDENTITY; every tap is refused"
        );
    }
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer_addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "tap accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(peer = %peer_addr, "tap: too many connections; closed");
            continue;
        };
        let tap = tap.clone();
        let identity = identity.clone();
        let allowed = allowed.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(tcp, peer_addr, tap, identity, allowed).await;
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer_addr: SocketAddr,
    tap: Tap,
    identity: Identity,
    allowed: Option<Arc<str>>,
) {
    let mut config = (*identity.mesh_server_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(peer = %peer_addr, error = %e, "tap: TLS handshake refused");
            return;
        }
        Err(_) => return,
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(crate::identity::peer_identity);
    let ok = authorized(allowed.as_deref(), peer.as_deref());
    if !ok {
        tracing::info!(peer = %peer_addr, identity = ?peer, "tap: identity not allowed to tap");
    }
    let svc = tap_server::TapServer::new(TapService {
        tap,
        authorized: ok,
    });
    let hyper_svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut svc = svc.clone();
        async move { tonic::codegen::Service::call(&mut svc, req).await }
    });
    let io = hyper_util::rt::TokioIo::new(tls);
    if let Err(e) = crate::http::http2_server()
        .serve_connection(io, hyper_svc)
        .await
    {
        tracing::debug!(peer = %peer_addr, error = %e, "tap connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", "Bearer secret")
            .header("cookie", "a=b")
            .header("x-private", "p")
            .header("x-ok", "fine")
            .body(())
            .unwrap()
    }

    #[test]
    fn no_tap_no_event_and_redaction_when_tapped() {
        let tap = Tap::new("demo/a".into(), &["X-Private".into()]);
        assert!(!tap.is_active());
        assert!(tap
            .begin(Direction::Inbound, &req("GET", "/x"), None, None)
            .is_none());
        let mut sub = tap
            .subscribe(&ObserveRequest {
                path_prefix: "/items".into(),
                ..Default::default()
            })
            .unwrap();
        assert!(tap.is_active());
        assert!(tap
            .begin(Direction::Inbound, &req("GET", "/other"), None, None)
            .is_none());
        let p = tap.begin(
            Direction::Inbound,
            &req("GET", "http://api.demo:8080/items?a=1"),
            Some("spiffe://c/ns/a/sa/b"),
            Some("spiffe://c/ns/a/sa/s"),
        );
        assert!(p.is_some());
        let ev = sub.rx.try_recv().unwrap();
        let Some(tap_event::Event::RequestInit(init)) = ev.event else {
            panic!("request init")
        };
        assert_eq!(init.path, "/items?a=1");
        let value = |n: &str| {
            init.headers
                .iter()
                .find(|h| h.name == n)
                .map(|h| h.value.clone())
        };
        assert_eq!(value("authorization").as_deref(), Some(REDACTED));
        assert_eq!(value("cookie").as_deref(), Some(REDACTED));
        assert_eq!(value("x-private").as_deref(), Some(REDACTED));
        assert_eq!(value("x-ok").as_deref(), Some("fine"));
        drop(p);
        drop(sub);
        assert!(!tap.is_active(), "closing a tap frees its slot");
    }

    #[test]
    fn filters_limits_and_caps() {
        let tap = Tap::default();
        let sub = tap
            .subscribe(&ObserveRequest {
                authority: "api".into(),
                method: "post".into(),
                direction: Direction::Outbound as i32,
                max_requests: 1,
                ..Default::default()
            })
            .unwrap();
        let r = req("POST", "http://api.demo.svc.cluster.local:8080/");
        assert!(tap.begin(Direction::Inbound, &r, None, None).is_none());
        assert!(tap
            .begin(
                Direction::Outbound,
                &req("GET", "http://api.demo/"),
                None,
                None
            )
            .is_none());
        assert!(tap
            .begin(
                Direction::Outbound,
                &req("POST", "http://apix.demo/"),
                None,
                None
            )
            .is_none());
        let pending = tap.begin(Direction::Outbound, &r, None, None);
        assert!(pending.is_some());
        // max_requests reached: the tap stops taking requests and frees its slot once its last
        // request ended.
        assert!(tap.is_active(), "the tapped request is still in flight");
        drop(pending);
        assert!(!tap.is_active());
        assert!(tap.begin(Direction::Outbound, &r, None, None).is_none());
        drop(sub);
        let subs: Vec<_> = (0..MAX_TAPS)
            .map(|_| tap.subscribe(&ObserveRequest::default()).unwrap())
            .collect();
        assert!(tap.subscribe(&ObserveRequest::default()).is_none());
        drop(subs);
        assert!(tap.subscribe(&ObserveRequest::default()).is_some());
    }

    #[test]
    fn only_the_configured_identity_may_tap() {
        assert!(authorized(
            Some("spiffe://c/ns/w/sa/op"),
            Some("spiffe://c/ns/w/sa/op")
        ));
        assert!(!authorized(
            Some("spiffe://c/ns/w/sa/op"),
            Some("spiffe://c/ns/w/sa/x")
        ));
        assert!(!authorized(Some("spiffe://c/ns/w/sa/op"), None));
        assert!(!authorized(None, Some("spiffe://c/ns/w/sa/op")));
    }
}
