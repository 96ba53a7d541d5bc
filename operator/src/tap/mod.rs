//! Tap fan-in (`weft tap`, `weft top`; docs/tap.md): the operator opens the tap port of every
//! proxy the user's target selects, over mTLS with a client certificate it issues itself for its
//! own identity ([`cert::TapClientCert`]), merges their event streams, applies the user's limit
//! and streams newline-delimited JSON back.
//!
//! Who may ask: in `--manifests` mode `GET /tap` on the admin port with
//! `Authorization: Bearer <--admin-token-file>` (no token file: 403 for everyone); in a cluster,
//! the aggregated API group `tap.weft.io` ([`api::TapGroup`]), after the API server's RBAC check.
//!
//! Bounded: at most [`MAX_PROXIES`] proxies per tap, [`MAX_TAPS`] taps at once, an idle tap
//! (no event for [`IDLE_TIMEOUT`]) ends, and everything stops when the user goes away.

pub mod api;
pub mod cert;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use weft_proxy_api::tap_v1::{tap_client::TapClient, tap_event, Direction, ObserveRequest};

use crate::model::Pod;
use crate::respond::{text, Body};
use cert::TapClientCert;

/// The proxies' tap port (`WEFT_PROXY_TAP_ADDR` default; the injector declares it).
pub const PROXY_TAP_PORT: u16 = 4190;
/// Proxies one tap reads at most.
pub const MAX_PROXIES: usize = 32;
/// User taps open at once on this operator.
pub const MAX_TAPS: usize = 8;
/// A tap with no event for this long ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests one tap reports at most (the default of `max`, and its cap).
pub const MAX_REQUESTS: u32 = 10_000;
/// Requests per second asked of each proxy (the proxy caps it too).
pub const REQUESTS_PER_SECOND: u32 = 100;
/// Time to connect to one proxy's tap port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines buffered between the proxies and the user.
const MERGE_BUFFER: usize = 256;

/// A pod as tap needs it: where its proxy is and who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapPod {
    pub namespace: String,
    pub name: String,
    pub ip: Option<IpAddr>,
    pub service_account: String,
    pub meshed: bool,
    /// `<kind>/<name>` of its owning workload (`deployment/api`), when known.
    pub workload: Option<String>,
}

/// The pods of the operator's model, kept up to date by the reconciler.
#[derive(Debug, Default)]
pub struct TapDirectory {
    pods: RwLock<Arc<Vec<TapPod>>>,
}

impl TapDirectory {
    pub fn new() -> Arc<Self> {
        Arc::new(TapDirectory::default())
    }

    /// Replaces the pods.
    pub fn publish<'a>(&self, pods: impl IntoIterator<Item = &'a Pod>) {
        let list: Vec<TapPod> = pods
            .into_iter()
            .map(|p| TapPod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ip: p.ip,
                service_account: p.service_account.clone(),
                meshed: p.meshed,
                workload: p.workload.clone(),
            })
            .collect();
        *self.pods.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
    }

    fn all(&self) -> Arc<Vec<TapPod>> {
        Arc::clone(&self.pods.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What to tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Namespace(String),
    Pod {
        namespace: String,
        name: String,
    },
    /// A workload (`deployment`, `statefulset`, ...): its pods are named `<name>-<suffix>`.
    Workload {
        namespace: String,
        kind: String,
        name: String,
    },
}

impl Target {
    /// `ns/NAME`, `pod/NAME`, `deploy/NAME` (`deployment`, `sts`, `statefulset`, `ds`,
    /// `daemonset`, `job`) in `namespace`.
    pub fn parse(resource: &str, namespace: &str) -> Result<Target, String> {
        let (kind, name) = resource.split_once('/').ok_or_else(|| {
            format!("resource {resource:?}: expected KIND/NAME (deploy/api, pod/x, ns/demo)")
        })?;
        if name.is_empty() || name.len() > 253 {
            return Err(format!("resource {resource:?}: bad name"));
        }
        Ok(match kind.to_ascii_lowercase().as_str() {
            "ns" | "namespace" | "namespaces" => Target::Namespace(name.to_string()),
            "po" | "pod" | "pods" => Target::Pod {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            k @ ("deploy" | "deployment" | "deployments" | "sts" | "statefulset"
            | "statefulsets" | "ds" | "daemonset" | "daemonsets" | "job" | "jobs") => {
                Target::Workload {
                    namespace: namespace.to_string(),
                    kind: k.to_string(),
                    name: name.to_string(),
                }
            }
            other => return Err(format!("resource kind {other:?} cannot be tapped")),
        })
    }

    fn selects(&self, pod: &TapPod) -> bool {
        match self {
            Target::Namespace(ns) => pod.namespace == *ns,
            Target::Pod { namespace, name } => pod.namespace == *namespace && pod.name == *name,
            Target::Workload {
                namespace,
                kind,
                name,
            } => {
                pod.namespace == *namespace
                    && match &pod.workload {
                        // The pod's owner decides: `deploy/web` never selects the pods of
                        // Deployment `web-v1` (RBAC allowed the one named, not its prefix).
                        Some(w) => *w == format!("{}/{name}", workload_kind(kind)),
                        // No owner known (a bare pod, a manifests-mode pod): by name.
                        None => pod
                            .name
                            .strip_prefix(name.as_str())
                            .is_some_and(|rest| rest.starts_with('-')),
                    }
            }
        }
    }
}

/// The kind of a workload as [`weft_core::inject::workload_of`] names it (`deployment`), from
/// how a user or a URL names it (`deploy`, `deployments`).
fn workload_kind(kind: &str) -> &str {
    match kind {
        "deploy" | "deployment" | "deployments" => "deployment",
        "sts" | "statefulset" | "statefulsets" => "statefulset",
        "ds" | "daemonset" | "daemonsets" => "daemonset",
        "job" | "jobs" => "job",
        other => other,
    }
}

/// A user's tap: target, filters, limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapQuery {
    pub target: Target,
    pub direction: Direction,
    /// Destination authority or service (`api`, `api.demo.svc.cluster.local`).
    pub to: String,
    pub path: String,
    pub method: String,
    pub max: u32,
}

impl TapQuery {
    /// Reads the filters from a query string (`to`, `path`, `method`, `direction`, `max`); the
    /// target from `resource` and `namespace` unless `target` is given.
    pub fn from_query(query: &str, target: Option<Target>) -> Result<TapQuery, String> {
        let mut resource = None;
        let mut namespace = "default".to_string();
        let mut q = TapQuery {
            target: Target::Namespace(String::new()),
            direction: Direction::Unspecified,
            to: String::new(),
            path: String::new(),
            method: String::new(),
            max: MAX_REQUESTS,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            match k {
                "resource" => resource = Some(v),
                "namespace" => namespace = v,
                "to" => q.to = v,
                "path" => q.path = v,
                "method" => q.method = v,
                "direction" => {
                    q.direction = match v.as_str() {
                        "" | "any" => Direction::Unspecified,
                        "inbound" => Direction::Inbound,
                        "outbound" => Direction::Outbound,
                        _ => return Err(format!("direction {v:?}: inbound, outbound or any")),
                    }
                }
                "max" => {
                    q.max = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("max {v:?}: a positive number"))?
                        .min(MAX_REQUESTS)
                }
                // Kubernetes clients add these; they mean nothing here.
                "watch" | "timeoutSeconds" | "pretty" => {}
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        q.target = match target {
            Some(t) => t,
            None => Target::parse(
                resource.as_deref().unwrap_or(&format!("ns/{namespace}")),
                &namespace,
            )?,
        };
        Ok(q)
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

/// The operator's tap fan-in.
pub struct Tapper {
    directory: Arc<TapDirectory>,
    cert: Arc<TapClientCert>,
    trust_domain: String,
    taps: Arc<Semaphore>,
    /// The proxies' tap port (tests may point elsewhere).
    proxy_port: u16,
    /// `--admin-token-file`'s token: `GET /tap` on the admin port needs it.
    admin_token: Option<String>,
}

impl std::fmt::Debug for Tapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tapper").finish_non_exhaustive()
    }
}

impl Tapper {
    pub fn new(
        directory: Arc<TapDirectory>,
        cert: Arc<TapClientCert>,
        trust_domain: String,
        proxy_port: u16,
        admin_token: Option<String>,
    ) -> Self {
        Tapper {
            directory,
            cert,
            trust_domain,
            taps: Arc::new(Semaphore::new(MAX_TAPS)),
            proxy_port,
            admin_token,
        }
    }

    /// The meshed pods with an IP that `target` selects (sorted), at most [`MAX_PROXIES`].
    pub fn resolve(&self, target: &Target) -> Result<Vec<TapPod>, String> {
        let mut pods: Vec<TapPod> = self
            .directory
            .all()
            .iter()
            .filter(|p| p.meshed && p.ip.is_some() && target.selects(p))
            .cloned()
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        if pods.is_empty() {
            return Err(format!("no meshed pod with an IP matches {target:?}"));
        }
        if pods.len() > MAX_PROXIES {
            return Err(format!(
                "{} pods match; a tap reads at most {MAX_PROXIES}: narrow the target",
                pods.len()
            ));
        }
        Ok(pods)
    }

    /// `GET /tap` on the admin port: the bearer token, then [`Tapper::open`].
    pub async fn admin(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let Some(expected) = self.admin_token.as_deref() else {
            return text(
                StatusCode::FORBIDDEN,
                "tap is off on the admin port: the operator has no --admin-token-file\n",
            );
        };
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            return text(
                StatusCode::FORBIDDEN,
                "tap needs Authorization: Bearer <the operator's admin token>\n",
            );
        }
        match TapQuery::from_query(req.uri().query().unwrap_or(""), None) {
            Ok(q) => self.open(q),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }

    /// Starts a tap: one task per proxy, merged into an NDJSON response body.
    pub fn open(&self, query: TapQuery) -> Response<Body> {
        let Ok(permit) = Arc::clone(&self.taps).try_acquire_owned() else {
            return text(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{MAX_TAPS} taps are open on this operator; retry later\n"),
            );
        };
        let pods = match self.resolve(&query.target) {
            Ok(p) => p,
            Err(e) => return text(StatusCode::NOT_FOUND, format!("{e}\n")),
        };
        let (lines_tx, lines_rx) = mpsc::channel::<Bytes>(MERGE_BUFFER);
        let mut proxies = JoinSet::new();
        for pod in pods {
            let tx = lines_tx.clone();
            let cert = Arc::clone(&self.cert);
            let expected = format!(
                "spiffe://{}/ns/{}/sa/{}",
                self.trust_domain, pod.namespace, pod.service_account
            );
            let port = self.proxy_port;
            let request = ObserveRequest {
                direction: query.direction as i32,
                authority: query.to.clone(),
                path_prefix: query.path.clone(),
                method: query.method.clone(),
                requests_per_second: REQUESTS_PER_SECOND,
                max_requests: query.max,
            };
            proxies.spawn(async move {
                let proxy = format!("{}/{}", pod.namespace, pod.name);
                if let Err(e) = observe(&pod, port, cert, expected, request, &tx).await {
                    let line = serde_json::json!({"type": "error", "proxy": proxy, "error": e});
                    let _ = tx.send(ndjson(&line)).await;
                }
            });
        }
        drop(lines_tx);
        let (body_tx, body_rx) = mpsc::channel::<Bytes>(MERGE_BUFFER);
        tokio::spawn(merge(lines_rx, body_tx, query.max, proxies, permit));
        let stream = futures::stream::unfold(body_rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(http_body::Frame::data(b)), rx))
        });
        let body = http_body_util::StreamBody::new(stream)
            .map_err(|never| match never {})
            .boxed();
        let mut rsp = Response::new(body);
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        rsp
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn ndjson(value: &serde_json::Value) -> Bytes {
    let mut v = serde_json::to_vec(value).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Forwards lines to the user until `max` requests ended, the proxies are all done, the tap is
/// idle for [`IDLE_TIMEOUT`], or the user went away (then every proxy stream is dropped).
async fn merge(
    mut lines: mpsc::Receiver<Bytes>,
    body: mpsc::Sender<Bytes>,
    max: u32,
    mut proxies: JoinSet<()>,
    _permit: OwnedSemaphorePermit,
) {
    let mut ended = 0u32;
    loop {
        let line = tokio::select! {
            () = body.closed() => break,
            line = tokio::time::timeout(IDLE_TIMEOUT, lines.recv()) => line,
        };
        let Ok(Some(line)) = line else { break };
        // Quotes inside header values are escaped, so only the event's own field matches.
        let is_end = memchr_contains(&line, b"\"type\":\"response\"");
        if body.send(line).await.is_err() {
            break;
        }
        if is_end {
            ended += 1;
            if ended >= max {
                break;
            }
        }
    }
    proxies.abort_all();
}

fn memchr_contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// One proxy's events, as NDJSON lines, into `tx`.
async fn observe(
    pod: &TapPod,
    port: u16,
    cert: Arc<TapClientCert>,
    expected: String,
    request: ObserveRequest,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let ip = pod.ip.ok_or("the pod has no IP")?;
    let addr = SocketAddr::new(ip, port);
    let config = Arc::new(cert.client_config(expected.clone())?);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = Arc::clone(&config);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from("tap.weft.invalid")
                .map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| format!("tap port {addr}: connect timed out"))?
        .map_err(|e| format!("tap port {addr} (expected {expected}): {e}"))?;
    let mut stream = TapClient::new(channel)
        .observe(request)
        .await
        .map_err(|s| format!("{addr}: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if tx.send(ndjson(&event_json(&event))).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => return Err(format!("{addr}: {:?}: {}", s.code(), s.message())),
        }
    }
}

fn direction_name(d: i32) -> &'static str {
    match Direction::try_from(d) {
        Ok(Direction::Inbound) => "inbound",
        Ok(Direction::Outbound) => "outbound",
        _ => "unknown",
    }
}

/// The JSON line of one event (docs/tap.md names every field).
pub fn event_json(e: &weft_proxy_api::tap_v1::TapEvent) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": e.id,
        "proxy": e.proxy,
        "direction": direction_name(e.direction),
        "client_id": e.client_id,
        "server_id": e.server_id,
        "tls": e.tls,
        "route": e.route,
        "backend": e.backend,
    });
    let extra = match &e.event {
        Some(tap_event::Event::RequestInit(r)) => serde_json::json!({
            "type": "request",
            "method": r.method,
            "scheme": r.scheme,
            "authority": r.authority,
            "path": r.path,
            "headers": r.headers.iter().map(|h| [h.name.clone(), h.value.clone()]).collect::<Vec<_>>(),
        }),
        Some(tap_event::Event::ResponseEnd(r)) => serde_json::json!({
            "type": "response",
            "status": r.status,
            "grpc_status": r.grpc_status,
            "latency_head_ms": r.latency_head_micros as f64 / 1000.0,
            "latency_ms": r.latency_end_micros as f64 / 1000.0,
            "response_bytes": r.response_bytes,
            "end": r.end,
            "classification": r.classification,
        }),
        None => serde_json::json!({"type": "unknown"}),
    };
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_queries() {
        let q = TapQuery::from_query(
            "resource=deploy%2Fapi&namespace=demo&path=%2Fitems&max=5&to=api",
            None,
        )
        .unwrap();
        assert_eq!(q.path, "/items");
        assert_eq!(q.max, 5);
        let pod = |name: &str| TapPod {
            namespace: "demo".into(),
            name: name.into(),
            ip: None,
            service_account: "api".into(),
            meshed: true,
            workload: None,
        };
        assert!(q.target.selects(&pod("api-7d9f-abcde")));
        assert!(!q.target.selects(&pod("apix-0")));
        // With the owner known, the owner decides, not the name.
        let owned = |name: &str, workload: &str| TapPod {
            workload: Some(workload.into()),
            ..pod(name)
        };
        assert!(q.target.selects(&owned("api-7d9f-abcde", "deployment/api")));
        assert!(!q
            .target
            .selects(&owned("api-v2-7d9f-abcde", "deployment/api-v2")));
        assert!(!q.target.selects(&owned("api-0", "statefulset/api")));
        assert!(TapQuery::from_query("max=0", None).is_err());
        assert!(TapQuery::from_query("evil=1", None).is_err());
        assert!(Target::parse("svc/x", "d").is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
