//! The admin HTTP server: `/ready`, `/live`, `/metrics`, `/proxies`, `/status`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// The runtime's clock: rescan progress follows paused time in tests.
use tokio::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::discovery::ProxyRegistry;
use crate::shutdown::Shutdown;
use crate::status::StatusBoard;

/// Readiness and source problems of the runtime.
#[derive(Debug, Default)]
pub struct Health {
    compiled: AtomicBool,
    serving: AtomicBool,
    /// Source (e.g. manifest file) → error that keeps its last good objects in force.
    source_errors: Mutex<BTreeMap<String, String>>,
    /// Kubernetes: SMI kinds (CRD name) not watched now → why.
    unwatched_kinds: Mutex<BTreeMap<String, String>>,
    /// Manifests: progress of the directory rescans.
    rescans: Mutex<Rescans>,
}

/// Progress of the manifests source's rescans.
#[derive(Debug, Default)]
struct Rescans {
    /// Set once the source reports rescans (manifests mode).
    tracked: bool,
    /// When the rescan in progress started.
    running_since: Option<Instant>,
    last_finished: Option<Instant>,
    last_duration: Option<Duration>,
    completed: u64,
    /// A rescan running longer than this makes the source stuck.
    stuck_after: Duration,
}

/// What `GET /status` says about the source's rescans.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RescanReport {
    /// Why the source is stuck (then `/ready` answers 503), if it is.
    pub stuck: Option<String>,
    /// How long the rescan in progress has been running.
    pub running_seconds: Option<f64>,
    /// How long the last completed rescan took.
    pub last_duration_seconds: Option<f64>,
    /// How long ago the last rescan completed.
    pub last_completed_seconds_ago: Option<f64>,
    pub completed: u64,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first snapshot was compiled and published.
    pub fn set_compiled(&self) {
        self.compiled.store(true, Ordering::SeqCst);
    }

    /// The discovery server accepts streams (or stopped accepting them).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Compiled, serving, and the source is not stuck.
    pub fn is_ready(&self) -> bool {
        self.compiled.load(Ordering::SeqCst)
            && self.serving.load(Ordering::SeqCst)
            && self.stuck().is_none()
    }

    /// Starts tracking the source's rescans: one running longer than `stuck_after` makes the
    /// source stuck.
    pub fn track_rescans(&self, stuck_after: Duration) {
        if let Ok(mut r) = self.rescans.lock() {
            r.tracked = true;
            r.stuck_after = stuck_after;
        }
    }

    /// A rescan of the source started.
    pub fn rescan_started(&self) {
        if let Ok(mut r) = self.rescans.lock() {
            r.running_since = Some(Instant::now());
        }
    }

    /// The rescan in progress finished.
    pub fn rescan_finished(&self) {
        if let Ok(mut r) = self.rescans.lock() {
            let now = Instant::now();
            r.last_duration = r.running_since.take().map(|s| now.duration_since(s));
            r.last_finished = Some(now);
            r.completed += 1;
        }
    }

    /// Why the source is stuck, if it is: a rescan that has run longer than its bound (it may
    /// be blocked on the filesystem; the last compiled config stays served meanwhile).
    pub fn stuck(&self) -> Option<String> {
        let r = self.rescans.lock().ok()?;
        let running = r.running_since?.elapsed();
        (r.tracked && running > r.stuck_after).then(|| {
            format!(
                "manifests rescan running for {} s (bound {} s); the last compiled config stays in force",
                running.as_secs(),
                r.stuck_after.as_secs()
            )
        })
    }

    /// The rescans' progress, when the source reports it.
    pub fn rescans(&self) -> Option<RescanReport> {
        let stuck = self.stuck();
        let r = self.rescans.lock().ok()?;
        r.tracked.then(|| RescanReport {
            stuck,
            running_seconds: r.running_since.map(|s| s.elapsed().as_secs_f64()),
            last_duration_seconds: r.last_duration.map(|d| d.as_secs_f64()),
            last_completed_seconds_ago: r.last_finished.map(|f| f.elapsed().as_secs_f64()),
            completed: r.completed,
        })
    }

    /// Replaces the set of current source errors.
    pub fn set_source_errors(&self, errors: BTreeMap<String, String>) {
        if let Ok(mut e) = self.source_errors.lock() {
            *e = errors;
        }
    }

    pub fn source_errors(&self) -> BTreeMap<String, String> {
        self.source_errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Replaces the set of SMI kinds that are not watched (CRD name → why).
    pub fn set_unwatched_kinds(&self, kinds: BTreeMap<String, String>) {
        if let Ok(mut k) = self.unwatched_kinds.lock() {
            *k = kinds;
        }
    }

    pub fn unwatched_kinds(&self) -> BTreeMap<String, String> {
        self.unwatched_kinds
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }
}

/// Everything the admin server reports on.
#[derive(Clone)]
pub struct AdminState {
    pub health: Arc<Health>,
    pub metrics: Arc<Registry>,
    pub proxies: Arc<ProxyRegistry>,
    pub status: Arc<StatusBoard>,
    /// Tap fan-in (`GET /tap`, #18); `None`: no identity issuer, `/tap` answers 403.
    pub tap: Option<Arc<crate::tap::Tapper>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusReport {
    ready: bool,
    source_errors: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rescans: Option<RescanReport>,
    unwatched_kinds: BTreeMap<String, String>,
    objects: serde_json::Value,
}

pub use crate::respond::Body;
pub(crate) use crate::respond::{json, text};

/// Answers one admin request.
pub fn handle(state: &AdminState, req: &Request<impl Sized>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if let Some(stuck) = state.health.stuck() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {stuck}\n"),
                )
            } else if state.health.is_ready() {
                let errors = state.health.source_errors();
                let mut body = String::from("ready\n");
                for (source, error) in errors {
                    body.push_str(&format!("warning: {source}: {error}\n"));
                }
                for (crd, why) in state.health.unwatched_kinds() {
                    body.push_str(&format!("warning: SMI kind {crd} not watched: {why}\n"));
                }
                text(StatusCode::OK, body)
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &state.metrics) {
                Ok(()) => {
                    let mut resp = text(StatusCode::OK, out);
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    resp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/proxies" => json(StatusCode::OK, &state.proxies.list()),
        "/status" => json(
            StatusCode::OK,
            &StatusReport {
                ready: state.health.is_ready(),
                source_errors: state.health.source_errors(),
                rescans: state.health.rescans(),
                unwatched_kinds: state.health.unwatched_kinds(),
                objects: state.status.to_json(),
            },
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: Shutdown) {
    let state = Arc::new(state);
    serve_http(listener, None, shutdown, move |req| {
        let state = state.clone();
        async move {
            if req.uri().path() == "/tap" && req.method() == Method::GET {
                return match &state.tap {
                    Some(tap) => tap.admin(req).await,
                    None => text(
                        StatusCode::FORBIDDEN,
                        "tap is off: the operator has no identity issuer\n",
                    ),
                };
            }
            handle(&state, &req)
        }
    })
    .await
}

/// Largest request body the operator's HTTP servers read.
pub(crate) const MAX_BODY: usize = 8 * 1024 * 1024;

/// Reads a request body, at most [`MAX_BODY`] bytes.
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, String> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading request body: {e}"))
}

/// Connections one [`serve_http`] listener serves at once; further ones wait in the listen
/// backlog until one ends, so a flood costs the operator no socket (the discovery server, which
/// proxies need, has its own listener and is not behind this limit).
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client of a [`serve_http`] listener may take to send a request head, and how long
/// an idle keep-alive connection is kept.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries after a failed accept: from 50 ms doubling up to 1 s, jittered.
const ACCEPT_RETRY: weft_common::Backoff =
    weft_common::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// A minimal HTTP/1.1 server (optionally over TLS) with graceful shutdown, bounded for clients
/// on the pod network: at most [`MAX_CONNECTIONS`] at once, [`HEADER_READ_TIMEOUT`] for a
/// request head (and an idle connection), 10 s for a TLS handshake.
pub(crate) async fn serve_http<F, Fut>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: Shutdown,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut stop = shutdown.clone();
    // Accept errors in a row (out of file descriptors, ...): retried with backoff.
    let mut failing: u32 = 0;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = stop.triggered() => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return, // never closed
            },
        };
        let accepted = tokio::select! {
            _ = stop.triggered() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer): (_, SocketAddr) = match accepted {
            Ok(a) => {
                failing = 0;
                a
            }
            Err(e) => {
                let delay = ACCEPT_RETRY.delay(failing);
                failing = failing.saturating_add(1);
                tracing::debug!(error = %e, retry_in = ?delay, "accept failed");
                tokio::select! {
                    _ = stop.triggered() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        let handler = handler.clone();
        let tls = tls.clone();
        let mut conn_stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = conn_stop.triggered() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = conn_stop.triggered() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AdminState {
        AdminState {
            health: Arc::new(Health::new()),
            metrics: Arc::new(Registry::default()),
            proxies: Arc::new(ProxyRegistry::new()),
            status: Arc::new(StatusBoard::new()),
            tap: None,
        }
    }

    async fn get(state: &AdminState, path: &str) -> (StatusCode, String) {
        let req = Request::get(path).body(()).unwrap();
        let resp = handle(state, &req);
        let code = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_and_status_name_the_smi_kinds_not_watched() {
        let s = state();
        s.health.set_compiled();
        s.health.set_serving(true);
        assert_eq!(get(&s, "/ready").await, (StatusCode::OK, "ready\n".into()));
        s.health.set_unwatched_kinds(BTreeMap::from([(
            "trafficsplits.split.smi-spec.io".to_string(),
            "not served".to_string(),
        )]));
        let (code, body) = get(&s, "/ready").await;
        assert_eq!(code, StatusCode::OK, "the rest is served");
        assert_eq!(
            body,
            "ready\nwarning: SMI kind trafficsplits.split.smi-spec.io not watched: not served\n"
        );
        let (_, body) = get(&s, "/status").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["unwatchedKinds"],
            serde_json::json!({"trafficsplits.split.smi-spec.io": "not served"})
        );
        s.health.set_unwatched_kinds(BTreeMap::new());
        assert_eq!(get(&s, "/ready").await.1, "ready\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_rescan_makes_ready_fail_and_status_say_so() {
        let s = state();
        s.health.set_compiled();
        s.health.set_serving(true);
        s.health.track_rescans(Duration::from_millis(50));
        s.health.rescan_started();
        s.health.rescan_finished();
        assert_eq!(get(&s, "/ready").await.0, StatusCode::OK);
        let (_, body) = get(&s, "/status").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["rescans"]["completed"], 1);
        assert!(v["rescans"]["stuck"].is_null(), "{v}");

        // A rescan that does not finish within its bound: not ready, and /status says why.
        s.health.rescan_started();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let (code, body) = get(&s, "/ready").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("manifests rescan running for"), "{body}");
        let (_, body) = get(&s, "/status").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], false);
        assert!(
            v["rescans"]["stuck"]
                .as_str()
                .unwrap_or("")
                .contains("rescan running"),
            "{v}"
        );
        // It finishes: ready again.
        s.health.rescan_finished();
        assert_eq!(get(&s, "/ready").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn source_errors_are_warnings_on_ready() {
        let s = state();
        s.health.set_compiled();
        s.health.set_serving(true);
        s.health.set_source_errors(BTreeMap::from([(
            "x.yaml".to_string(),
            "skipped: not a regular file (FIFO); not read".to_string(),
        )]));
        let (code, body) = get(&s, "/ready").await;
        assert_eq!(code, StatusCode::OK, "the last good config is in force");
        assert_eq!(
            body,
            "ready\nwarning: x.yaml: skipped: not a regular file (FIFO); not read\n"
        );
    }
}
