//! The admin server: `GET /ready`, `GET /live`, `GET /metrics`, `GET /config`, `GET /state`.
//!
//! HTTP/1.1 only (it is scraped by kubelet and Prometheus). What it reports comes from an
//! [`AdminSource`], so the server knows nothing about identity, discovery or the data plane.
//!
//! `/config` is bounded in memory whatever the mesh size (issue #19): without a query it streams
//! the whole dump resource by resource through a small bounded channel (so a slow reader holds
//! the writer back, and at most a few chunks of [`STREAM_CHUNK`] bytes exist at once), byte for
//! byte the document that used to be rendered in one piece; with `?kind=` it answers a summary
//! with counts or one page of outbound services or endpoint sets (see [`ConfigQuery`]).
//!
//! The admin port is reachable from the pod network (docs/security.md, "admin-port reader"), so
//! what a client can hold is bounded too: at most `max_connections` ([`MAX_CONNECTIONS`] by
//! default) connections are served at once (further ones wait in the listen backlog, so the data plane's sockets and memory are
//! never at stake), a connection that sends no request head for [`HEADER_READ_TIMEOUT`] is
//! closed, at most [`MAX_FULL_DUMPS`] whole `/config` dumps are written at once (a further one is
//! a `503` pointing at the pages), and a dump whose reader stops reading for [`STREAM_STALL`] is
//! abandoned (the connection is broken, never ended as if the document were whole).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// How long a client may take to send its request head (also how long an idle keep-alive
/// connection is kept).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once by default (`WEFT_PROXY_ADMIN_MAX_CONNECTIONS`); further
/// ones wait in the listen backlog until one ends. Kubelet's probes and a Prometheus scrape
/// need one each, for a moment; a client holding this many idle connections delays them by up
/// to [`HEADER_READ_TIMEOUT`], so the limit is well above what legitimate readers use while
/// bounding what a flood costs (docs/proxy.md gives the measured cost per connection).
pub const MAX_CONNECTIONS: usize = 512;
/// Whole `/config` dumps written at once (each holds a blocking thread while it is read).
pub const MAX_FULL_DUMPS: usize = 2;
/// A whole `/config` dump whose reader takes no chunk for this long is abandoned.
pub const STREAM_STALL: Duration = Duration::from_secs(30);

/// `/config` streams its body in chunks of about this many bytes.
pub const STREAM_CHUNK: usize = 64 * 1024;
/// Chunks of a streamed `/config` that may wait for the reader (backpressure beyond this).
const STREAM_QUEUE: usize = 2;
/// A `/config` page's size when `limit` is not given, and the largest `limit` accepted.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
pub const PAGE_LIMIT_MAX: usize = 1000;

/// Content type of the Prometheus/OpenMetrics text exposition.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server reports. Implemented by the process wiring ([`crate::app`]).
pub trait AdminSource: Send + Sync + 'static {
    /// `Ok(())` when the proxy may receive traffic; otherwise why not (e.g. "no certificate yet").
    fn readiness(&self) -> Result<(), String>;
    /// Appends the metrics in Prometheus text format, without the trailing `# EOF` line.
    fn encode_metrics(&self, out: &mut String);
    /// The config in force and what the process reports beside it, for `/config`.
    fn config_dump(&self) -> ConfigDump;
    /// The data plane's live state (retry budgets, per-endpoint load estimates), as JSON: kept
    /// apart from `/config`, because it is not config and survives config pushes.
    fn state_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// What `/config` reports: the config in force (shared, so taking it copies nothing) and the
/// document's other top-level members (`version`, `control`, `identity`: small).
pub struct ConfigDump {
    pub head: serde_json::Map<String, Value>,
    pub config: Arc<dyn ConfigLists>,
}

/// The config as `/config` shows it: its small members, and its two lists (which grow with the
/// mesh) one resource at a time. Implemented by [`crate::config::Config`] (in `config.rs`: this
/// module depends on nothing else in the crate).
pub trait ConfigLists: Send + Sync + 'static {
    /// The config's version.
    fn version(&self) -> &str;
    /// The config as JSON without `outbound` and `endpoints`.
    fn head_json(&self) -> Value;
    fn outbound_len(&self) -> usize;
    fn endpoints_len(&self) -> usize;
    /// Hands the outbound services from position `offset` on, in order, as JSON, to `f` until
    /// it returns `false`.
    fn each_outbound(&self, offset: usize, f: &mut dyn FnMut(Value) -> bool);
    /// The same for the endpoint sets, with their names.
    fn each_endpoints(&self, offset: usize, f: &mut dyn FnMut(&str, Value) -> bool);
}

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin listener: {0}")]
    Accept(#[source] std::io::Error),
}

/// Serves the admin API on `listener` until `shutdown` completes; then stops accepting and
/// returns (admin requests are short; open connections are dropped).
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    let dumps = Arc::new(Semaphore::new(MAX_FULL_DUMPS));
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept(), if conns.len() < max_connections => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::debug!(error = %e, "admin accept");
                    continue;
                }
                Err(e) => return Err(AdminError::Accept(e)),
            },
            // Reap finished connection tasks so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let source = Arc::clone(&source);
        conns.spawn(serve_conn(stream, peer, source, Arc::clone(&dumps)));
    }
    conns.shutdown().await;
    Ok(())
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(24) // EMFILE: too many open files; retry later
        || e.raw_os_error() == Some(23) // ENFILE
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    source: Arc<dyn AdminSource>,
    dumps: Arc<Semaphore>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let source = Arc::clone(&source);
        let dumps = Arc::clone(&dumps);
        async move { Ok::<_, Infallible>(handle_with(&req, source.as_ref(), Some(dumps)).await) }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "admin connection");
    }
}

/// Answers one admin request. A full `/config` is written by a task of its own, so this must
/// run inside a Tokio runtime. No limit on concurrent dumps (the server's [`MAX_FULL_DUMPS`]
/// applies to requests it serves).
pub async fn handle<B>(req: &Request<B>, source: &dyn AdminSource) -> Response<AdminBody> {
    handle_with(req, source, None).await
}

/// [`handle`], a whole `/config` dump taking a permit of `dumps` (a `503` when none is left).
async fn handle_with<B>(
    req: &Request<B>,
    source: &dyn AdminSource,
    dumps: Option<Arc<Semaphore>>,
) -> Response<AdminBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => match source.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => {
            let mut out = String::with_capacity(4096);
            source.encode_metrics(&mut out);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("# EOF\n");
            with_type(StatusCode::OK, METRICS_CONTENT_TYPE, out)
        }
        "/config" => match ConfigQuery::parse(req.uri().query()) {
            Ok(ConfigQuery::Full) => {
                let permit = match dumps.map(Semaphore::try_acquire_owned) {
                    Some(Err(_)) => return dumps_busy(),
                    Some(Ok(permit)) => Some(permit),
                    None => None,
                };
                stream_config(source.config_dump(), permit).await
            }
            Ok(query) => json(&query.answer(source.config_dump()), "config"),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("bad /config query: {e}\n")),
        },
        "/state" => json(&source.state_json(), "state"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /ready, /live, /metrics, /config or /state\n",
        ),
    }
}

fn json(value: &Value, what: &str) -> Response<AdminBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(StatusCode::OK, "application/json", body)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render {what}: {e}\n"),
        ),
    }
}

/// The answer while [`MAX_FULL_DUMPS`] dumps are being written.
fn dumps_busy() -> Response<AdminBody> {
    let mut resp = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{MAX_FULL_DUMPS} whole config dumps are being written; retry, or read \
             /config?kind=summary and the pages (?kind=outbound|endpoints&offset=N&limit=M)\n"
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut resp = Response::new(AdminBody(BodyInner::Full(Full::new(body.into()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

/// The body of an admin response: whole, or streamed from a writer task (`/config`).
pub struct AdminBody(BodyInner);

enum BodyInner {
    Full(Full<Bytes>),
    /// The first chunks (already received), then the rest from the writer, which sets the flag
    /// once it has written the whole document.
    Stream(
        VecDeque<Bytes>,
        mpsc::Receiver<Result<Bytes, std::io::Error>>,
        Arc<AtomicBool>,
    ),
}

fn abandoned() -> std::io::Error {
    std::io::Error::other("the config dump was abandoned before its end")
}

impl Body for AdminBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.get_mut().0 {
            BodyInner::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never: Infallible| match never {}),
            // The writer ends the stream by dropping its sender after the last chunk, or aborts
            // it (an error, or dropping its sender early: stalled reader, panic), so the client
            // sees a broken response, never a well-formed truncated one.
            BodyInner::Stream(first, rx, complete) => match first.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => rx.poll_recv(cx).map(|c| match c {
                    Some(r) => Some(r.map(Frame::data)),
                    None if complete.load(Ordering::Acquire) => None,
                    None => Some(Err(abandoned())),
                }),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyInner::Full(full) => full.is_end_stream(),
            BodyInner::Stream(..) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyInner::Full(full) => full.size_hint(),
            BodyInner::Stream(..) => SizeHint::default(),
        }
    }
}

/// What a `/config` query asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigQuery {
    /// No query: the whole dump, streamed.
    Full,
    /// `?kind=summary`: the dump without its resource lists, with their counts.
    Summary,
    /// `?kind=outbound|endpoints[&offset=N][&limit=M]`: resources `offset..offset+limit` of one
    /// list, in the order of the full dump, with the list's `total` and the `next` offset
    /// (`null` on the last page).
    Page {
        kind: PageKind,
        offset: usize,
        limit: usize,
    },
}

/// The resource lists `/config` pages through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    Outbound,
    Endpoints,
}

impl PageKind {
    fn name(self) -> &'static str {
        match self {
            PageKind::Outbound => "outbound",
            PageKind::Endpoints => "endpoints",
        }
    }
}

impl ConfigQuery {
    /// Parses the query string of a `/config` request. Unknown or repeated parameters, values
    /// that are not plain numbers and limits outside `1..=PAGE_LIMIT_MAX` are errors (400).
    pub fn parse(query: Option<&str>) -> Result<ConfigQuery, String> {
        let query = query.unwrap_or("");
        if query.is_empty() {
            return Ok(ConfigQuery::Full);
        }
        let (mut kind, mut offset, mut limit) = (None, None, None);
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "kind" => &mut kind,
                "offset" => &mut offset,
                "limit" => &mut limit,
                _ => return Err(format!("unknown parameter {:?}", truncated(key))),
            };
            if slot.replace(value).is_some() {
                return Err(format!("parameter {key} given twice"));
            }
        }
        let number = |name: &str, value: Option<&str>, default: usize| match value {
            None => Ok(default),
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse::<usize>()
                .map_err(|_| format!("{name} {:?} is too large", truncated(v))),
            Some(v) => Err(format!("{name} {:?} is not a number", truncated(v))),
        };
        let kind = match kind {
            Some("summary") if offset.is_none() && limit.is_none() => {
                return Ok(ConfigQuery::Summary)
            }
            Some("summary") => return Err("kind=summary takes no offset or limit".into()),
            Some("outbound") => PageKind::Outbound,
            Some("endpoints") => PageKind::Endpoints,
            Some(other) => {
                return Err(format!(
                    "kind {:?}: expected summary, outbound or endpoints",
                    truncated(other)
                ))
            }
            None => return Err("offset and limit need kind=outbound or kind=endpoints".into()),
        };
        let offset = number("offset", offset, 0)?;
        let limit = number("limit", limit, PAGE_LIMIT_DEFAULT)?;
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(format!("limit {limit} is outside 1..={PAGE_LIMIT_MAX}"));
        }
        Ok(ConfigQuery::Page {
            kind,
            offset,
            limit,
        })
    }

    /// The answer to a summary or page query (bounded: at most `PAGE_LIMIT_MAX` resources).
    fn answer(&self, dump: ConfigDump) -> Value {
        let config = &dump.config;
        match *self {
            ConfigQuery::Full | ConfigQuery::Summary => {
                let mut head = dump.head;
                let mut summary = config.head_json();
                if let Value::Object(members) = &mut summary {
                    let resolved = members
                        .get("resolved_ips")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    members.insert(
                        "counts".into(),
                        serde_json::json!({
                            "outbound": config.outbound_len(),
                            "endpoints": config.endpoints_len(),
                            "resolved_ips": resolved,
                        }),
                    );
                }
                head.insert("config".into(), summary);
                Value::Object(head)
            }
            ConfigQuery::Page {
                kind,
                offset,
                limit,
            } => {
                let mut items = Vec::new();
                let total = match kind {
                    PageKind::Outbound => {
                        config.each_outbound(offset, &mut |svc| {
                            items.push(svc);
                            items.len() < limit
                        });
                        config.outbound_len()
                    }
                    PageKind::Endpoints => {
                        config.each_endpoints(offset, &mut |name, set| {
                            items.push(serde_json::json!({"name": name, "set": set}));
                            items.len() < limit
                        });
                        config.endpoints_len()
                    }
                };
                let end = offset.saturating_add(items.len());
                serde_json::json!({
                    "version": config.version(),
                    "kind": kind.name(),
                    "offset": offset,
                    "limit": limit,
                    "total": total,
                    "items": items,
                    "next": (end < total).then_some(end),
                })
            }
        }
    }
}

/// At most 64 characters of client input, for an error message.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Streams the whole `/config` dump: the same bytes `serde_json::to_vec_pretty` renders for
/// `{..head, "config": <the config as JSON>}` plus a newline, written member by member and
/// resource by resource on a blocking thread, so memory stays a few chunks whatever the mesh
/// size. A dump that fits in one chunk is answered whole, with a `Content-Length`. `permit`
/// (one of the server's [`MAX_FULL_DUMPS`]) is held until the writer is done.
async fn stream_config(
    dump: ConfigDump,
    permit: Option<OwnedSemaphorePermit>,
) -> Response<AdminBody> {
    let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
    let complete = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&complete);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = Pretty::new(tx, runtime);
        match write_dump(&mut out, &dump).and_then(|()| out.flush()) {
            Ok(()) => done.store(true, Ordering::Release),
            Err(Stop::Closed) => {}
            Err(Stop::Stalled) => tracing::info!(
                stall_seconds = STREAM_STALL.as_secs(),
                "admin /config dump abandoned: the reader stopped reading"
            ),
        }
    });
    // Up to two chunks are taken here: if the writer is done after the first, the answer is
    // whole; otherwise both lead the stream.
    let mut first = VecDeque::with_capacity(2);
    while first.len() < 2 {
        match rx.recv().await {
            Some(Ok(chunk)) => first.push_back(chunk),
            Some(Err(e)) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot render config: {e}\n"),
                )
            }
            None if complete.load(Ordering::Acquire) => {
                let whole = first.pop_front().unwrap_or_default();
                return with_type(StatusCode::OK, "application/json", whole);
            }
            None => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot render config: {}\n", abandoned()),
                )
            }
        }
    }
    let mut resp = Response::new(AdminBody(BodyInner::Stream(first, rx, complete)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Why the writer stopped before the end.
enum Stop {
    /// The client went away.
    Closed,
    /// The client took no chunk for [`STREAM_STALL`].
    Stalled,
}

/// Writes JSON as `serde_json`'s pretty printer does (two spaces per level, `"key": value`),
/// a value at a time, sending full chunks down a bounded channel (blocking while it is full).
struct Pretty {
    buf: Vec<u8>,
    scratch: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// The runtime the reader runs on, to wait for room with a deadline (the writer runs on a
    /// blocking thread, outside any async context, where `block_on` is allowed).
    runtime: tokio::runtime::Handle,
}

impl Pretty {
    fn new(
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Pretty {
            buf: Vec::with_capacity(STREAM_CHUNK + STREAM_CHUNK / 4),
            scratch: Vec::new(),
            tx,
            runtime,
        }
    }

    fn raw(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn newline(&mut self, depth: usize) {
        self.buf.push(b'\n');
        self.buf.resize(self.buf.len() + 2 * depth, b' ');
    }

    fn key(&mut self, key: &str) {
        // A `&str` always serializes; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, key);
        self.raw(": ");
    }

    /// `value` pretty-printed at nesting `depth`. A `serde_json::Value` keeps object members
    /// sorted, exactly as in a document rendered whole.
    fn value(&mut self, value: &Value, depth: usize) {
        self.scratch.clear();
        // A `Value` always serializes; writing to a Vec cannot fail.
        let _ = serde_json::to_writer_pretty(&mut self.scratch, value);
        // Pretty JSON escapes newlines inside strings, so each raw '\n' starts a new line.
        for (i, line) in self.scratch.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.buf.push(b'\n');
                self.buf.resize(self.buf.len() + 2 * depth, b' ');
            }
            self.buf.extend_from_slice(line);
        }
        if self.scratch.capacity() > STREAM_CHUNK {
            self.scratch = Vec::new();
        }
    }

    /// Sends the buffer once it holds a chunk; blocks while the reader is behind.
    fn maybe_send(&mut self) -> Result<(), Stop> {
        if self.buf.len() >= STREAM_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Stop> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(STREAM_CHUNK + STREAM_CHUNK / 4),
        ));
        let send = tokio::time::timeout(STREAM_STALL, self.tx.send(Ok(chunk)));
        match self.runtime.block_on(send) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Closed),
            Err(_) => Err(Stop::Stalled),
        }
    }
}

/// A member of the `config` object.
enum ConfigMember<'a> {
    Small(&'a Value),
    Outbound,
    Endpoints,
}

fn write_dump(out: &mut Pretty, dump: &ConfigDump) -> Result<(), Stop> {
    let config_head = dump.config.head_json();
    let mut members: Vec<(&str, ConfigMember<'_>)> = vec![
        ("outbound", ConfigMember::Outbound),
        ("endpoints", ConfigMember::Endpoints),
    ];
    if let Value::Object(head) = &config_head {
        members.extend(
            head.iter()
                .map(|(k, v)| (k.as_str(), ConfigMember::Small(v))),
        );
    }
    members.sort_by(|a, b| a.0.cmp(b.0));
    let mut top: Vec<(&str, Option<&Value>)> = dump
        .head
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v)))
        .collect();
    top.push(("config", None));
    top.sort_by(|a, b| a.0.cmp(b.0));

    out.raw("{");
    for (i, (key, value)) in top.iter().enumerate() {
        out.raw(if i == 0 { "" } else { "," });
        out.newline(1);
        out.key(key);
        match value {
            Some(value) => out.value(value, 1),
            None => write_config(out, dump.config.as_ref(), &members)?,
        }
        out.maybe_send()?;
    }
    out.newline(0);
    out.raw("}\n");
    Ok(())
}

fn write_config(
    out: &mut Pretty,
    config: &dyn ConfigLists,
    members: &[(&str, ConfigMember<'_>)],
) -> Result<(), Stop> {
    out.raw("{");
    for (i, (key, member)) in members.iter().enumerate() {
        out.raw(if i == 0 { "" } else { "," });
        out.newline(2);
        out.key(key);
        let (mut written, mut stop) = (0usize, None);
        match member {
            ConfigMember::Small(value) => out.value(value, 2),
            ConfigMember::Outbound => {
                out.raw("[");
                config.each_outbound(0, &mut |svc| {
                    out.raw(if written == 0 { "" } else { "," });
                    written += 1;
                    out.newline(3);
                    out.value(&svc, 3);
                    stop = out.maybe_send().err();
                    stop.is_none()
                });
                if written > 0 {
                    out.newline(2);
                }
                out.raw("]");
            }
            ConfigMember::Endpoints => {
                out.raw("{");
                config.each_endpoints(0, &mut |name, set| {
                    out.raw(if written == 0 { "" } else { "," });
                    written += 1;
                    out.newline(3);
                    out.key(name);
                    out.value(&set, 3);
                    stop = out.maybe_send().err();
                    stop.is_none()
                });
                if written > 0 {
                    out.newline(2);
                }
                out.raw("}");
            }
        }
        if let Some(stop) = stop {
            return Err(stop);
        }
    }
    out.newline(1);
    out.raw("}");
    Ok(())
}

/// Removes a trailing `# EOF` line from an OpenMetrics encoding, so that several registries
/// can be concatenated into one exposition.
pub fn strip_eof(out: &mut String) {
    let trimmed_len = out.trim_end_matches('\n').len();
    if out[..trimmed_len].ends_with("# EOF") {
        out.truncate(trimmed_len - "# EOF".len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        ready: Result<(), String>,
    }

    impl AdminSource for Fixed {
        fn readiness(&self) -> Result<(), String> {
            self.ready.clone()
        }
        fn encode_metrics(&self, out: &mut String) {
            out.push_str("# TYPE x counter\nx_total 1\n");
        }
        fn config_dump(&self) -> ConfigDump {
            let mut head = serde_json::Map::new();
            head.insert("version".into(), "v1".into());
            ConfigDump {
                head,
                config: Arc::new(Empty),
            }
        }
    }

    struct Empty;

    impl ConfigLists for Empty {
        fn version(&self) -> &str {
            "v1"
        }
        fn head_json(&self) -> Value {
            serde_json::json!({"version": "v1"})
        }
        fn outbound_len(&self) -> usize {
            0
        }
        fn endpoints_len(&self) -> usize {
            0
        }
        fn each_outbound(&self, _: usize, _: &mut dyn FnMut(Value) -> bool) {}
        fn each_endpoints(&self, _: usize, _: &mut dyn FnMut(&str, Value) -> bool) {}
    }

    #[tokio::test]
    async fn an_empty_config_is_answered_whole() {
        use http_body_util::BodyExt;
        let ok = Fixed { ready: Ok(()) };
        let resp = handle(&get("/config"), &ok).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.map(|c| c.to_bytes());
        let body: Value = serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_default();
        assert_eq!(body["config"]["outbound"], serde_json::json!([]));
        assert_eq!(body["config"]["endpoints"], serde_json::json!({}));
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap_or_default()
    }

    #[tokio::test]
    async fn ready_reports_reason_until_ready() {
        let not = Fixed {
            ready: Err("no certificate yet".into()),
        };
        assert_eq!(
            handle(&get("/ready"), &not).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let ok = Fixed { ready: Ok(()) };
        assert_eq!(handle(&get("/ready"), &ok).await.status(), StatusCode::OK);
        assert_eq!(handle(&get("/live"), &not).await.status(), StatusCode::OK);
        assert_eq!(
            handle(&get("/nope"), &ok).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn only_get_and_head() {
        let ok = Fixed { ready: Ok(()) };
        let req = Request::post("/ready").body(()).unwrap_or_default();
        let resp = handle(&req, &ok).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            resp.headers().get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"GET, HEAD"[..])
        );
    }

    #[tokio::test]
    async fn state_is_served_as_json_apart_from_config() {
        let ok = Fixed { ready: Ok(()) };
        let resp = handle(&get("/state"), &ok).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }

    #[test]
    fn config_queries_parse_or_fail_closed() {
        use ConfigQuery::*;
        assert_eq!(ConfigQuery::parse(None), Ok(Full));
        assert_eq!(ConfigQuery::parse(Some("")), Ok(Full));
        assert_eq!(ConfigQuery::parse(Some("kind=summary")), Ok(Summary));
        assert_eq!(
            ConfigQuery::parse(Some("kind=outbound")),
            Ok(Page {
                kind: PageKind::Outbound,
                offset: 0,
                limit: PAGE_LIMIT_DEFAULT
            })
        );
        assert_eq!(
            ConfigQuery::parse(Some("limit=7&kind=endpoints&offset=14")),
            Ok(Page {
                kind: PageKind::Endpoints,
                offset: 14,
                limit: 7
            })
        );
        for bad in [
            "kind=nope",
            "kind=outbound&offset=-1",
            "kind=outbound&offset=1e3",
            "kind=outbound&offset=",
            "kind=outbound&offset=99999999999999999999999999",
            "kind=outbound&limit=0",
            "kind=outbound&limit=1001",
            "kind=outbound&kind=endpoints",
            "kind=outbound&cursor=abc",
            "offset=3",
            "kind=summary&limit=3",
        ] {
            assert!(ConfigQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn strip_eof_allows_concatenation() {
        let mut s = String::from("a 1\n# EOF\n");
        strip_eof(&mut s);
        assert_eq!(s, "a 1\n");
        let mut s = String::from("a 1\n");
        strip_eof(&mut s);
        assert_eq!(s, "a 1\n");
    }
}
