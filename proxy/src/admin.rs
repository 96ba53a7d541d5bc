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

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub config: Arc<Config>,
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
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
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
        conns.spawn(serve_conn(stream, peer, source));
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

async fn serve_conn(stream: tokio::net::TcpStream, peer: SocketAddr, source: Arc<dyn AdminSource>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let source = Arc::clone(&source);
        async move { Ok::<_, Infallible>(handle(&req, source.as_ref()).await) }
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
/// run inside a Tokio runtime.
pub async fn handle<B>(req: &Request<B>, source: &dyn AdminSource) -> Response<AdminBody> {
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
            Ok(ConfigQuery::Full) => stream_config(source.config_dump()).await,
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
    /// The first chunks (already received), then the rest from the writer.
    Stream(
        VecDeque<Bytes>,
        mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ),
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
            // The writer ends the stream by dropping its sender, or aborts it with an error (so
            // the client sees a broken response, never a well-formed truncated one).
            BodyInner::Stream(first, rx) => match first.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data))),
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
                let mut summary = config.json_head();
                if let Value::Object(members) = &mut summary {
                    members.insert(
                        "counts".into(),
                        serde_json::json!({
                            "outbound": config.outbound_sorted().len(),
                            "endpoints": config.endpoint_sets_sorted().len(),
                            "resolved_ips": config.resolved_ips.len(),
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
                let (total, items): (usize, Vec<Value>) = match kind {
                    PageKind::Outbound => {
                        let all = config.outbound_sorted();
                        let page = all.iter().skip(offset).take(limit);
                        (all.len(), page.map(to_value).collect())
                    }
                    PageKind::Endpoints => {
                        let all = config.endpoint_sets_sorted();
                        let page = all.iter().skip(offset).take(limit);
                        let items = page
                            .map(|(name, set)| {
                                serde_json::json!({"name": name, "set": to_value(set)})
                            })
                            .collect();
                        (all.len(), items)
                    }
                };
                let end = offset.saturating_add(items.len());
                serde_json::json!({
                    "version": config.version,
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

fn to_value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// At most 64 characters of client input, for an error message.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Streams the whole `/config` dump: the same bytes `serde_json::to_vec_pretty` renders for
/// `{..head, "config": config.to_json()}` plus a newline, written member by member and resource
/// by resource, so memory stays a few chunks whatever the mesh size. A dump that fits in one
/// chunk is answered whole, with a `Content-Length`, as before streaming existed.
async fn stream_config(dump: ConfigDump) -> Response<AdminBody> {
    let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(async move {
        let mut out = Pretty::new(tx);
        match write_dump(&mut out, &dump).await {
            Ok(()) => {
                let _ = out.flush().await;
            }
            Err(DumpError::Closed) => {}
            Err(DumpError::Json(e)) => {
                tracing::warn!(error = %e, "cannot render /config");
                let _ = out.tx.send(Err(std::io::Error::other(e))).await;
            }
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
            None => {
                let whole = first.pop_front().unwrap_or_default();
                return with_type(StatusCode::OK, "application/json", whole);
            }
        }
    }
    let mut resp = Response::new(AdminBody(BodyInner::Stream(first, rx)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

enum DumpError {
    /// The client went away.
    Closed,
    Json(serde_json::Error),
}

impl From<serde_json::Error> for DumpError {
    fn from(e: serde_json::Error) -> Self {
        DumpError::Json(e)
    }
}

/// Writes JSON as `serde_json`'s pretty printer does (two spaces per level, `"key": value`),
/// a value at a time, sending full chunks down a bounded channel.
struct Pretty {
    buf: Vec<u8>,
    scratch: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Pretty {
    fn new(tx: mpsc::Sender<Result<Bytes, std::io::Error>>) -> Self {
        Pretty {
            buf: Vec::with_capacity(STREAM_CHUNK + STREAM_CHUNK / 4),
            scratch: Vec::new(),
            tx,
        }
    }

    fn raw(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn newline(&mut self, depth: usize) {
        self.buf.push(b'\n');
        self.buf.resize(self.buf.len() + 2 * depth, b' ');
    }

    fn key(&mut self, key: &str) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut self.buf, key)?;
        self.raw(": ");
        Ok(())
    }

    /// `value` pretty-printed at nesting `depth`. It goes through `serde_json::Value` first so
    /// that object members are sorted exactly as in a document rendered whole.
    fn value(&mut self, value: &impl Serialize, depth: usize) -> Result<(), serde_json::Error> {
        let value = serde_json::to_value(value)?;
        self.scratch.clear();
        serde_json::to_writer_pretty(&mut self.scratch, &value)?;
        // Pretty JSON escapes newlines inside strings, so each raw '\n' starts a new line.
        for line in self.scratch.split(|&b| b == b'\n').enumerate() {
            if line.0 > 0 {
                self.buf.push(b'\n');
                self.buf.resize(self.buf.len() + 2 * depth, b' ');
            }
            self.buf.extend_from_slice(line.1);
        }
        if self.scratch.capacity() > STREAM_CHUNK {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// Sends the buffer once it holds a chunk; waits while the reader is behind.
    async fn maybe_send(&mut self) -> Result<(), DumpError> {
        if self.buf.len() >= STREAM_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DumpError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(STREAM_CHUNK + STREAM_CHUNK / 4),
        ));
        self.tx.send(Ok(chunk)).await.map_err(|_| DumpError::Closed)
    }
}

/// A member of the `config` object.
enum ConfigMember<'a> {
    Small(&'a Value),
    Outbound,
    Endpoints,
}

async fn write_dump(out: &mut Pretty, dump: &ConfigDump) -> Result<(), DumpError> {
    let config = &dump.config;
    let config_head = config.json_head();
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
        out.key(key)?;
        match value {
            Some(value) => out.value(value, 1)?,
            None => write_config(out, config, &members).await?,
        }
        out.maybe_send().await?;
    }
    out.newline(0);
    out.raw("}\n");
    Ok(())
}

async fn write_config(
    out: &mut Pretty,
    config: &Config,
    members: &[(&str, ConfigMember<'_>)],
) -> Result<(), DumpError> {
    out.raw("{");
    for (i, (key, member)) in members.iter().enumerate() {
        out.raw(if i == 0 { "" } else { "," });
        out.newline(2);
        out.key(key)?;
        match member {
            ConfigMember::Small(value) => out.value(value, 2)?,
            ConfigMember::Outbound => {
                let all = config.outbound_sorted();
                if all.is_empty() {
                    out.raw("[]");
                } else {
                    out.raw("[");
                    for (i, svc) in all.iter().enumerate() {
                        out.raw(if i == 0 { "" } else { "," });
                        out.newline(3);
                        out.value(svc, 3)?;
                        out.maybe_send().await?;
                    }
                    out.newline(2);
                    out.raw("]");
                }
            }
            ConfigMember::Endpoints => {
                let all = config.endpoint_sets_sorted();
                if all.is_empty() {
                    out.raw("{}");
                } else {
                    out.raw("{");
                    for (i, (name, set)) in all.iter().enumerate() {
                        out.raw(if i == 0 { "" } else { "," });
                        out.newline(3);
                        out.key(name)?;
                        out.value(set, 3)?;
                        out.maybe_send().await?;
                    }
                    out.newline(2);
                    out.raw("}");
                }
            }
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
                config: Arc::new(Config::default()),
            }
        }
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

    async fn body_of(resp: Response<AdminBody>) -> Vec<u8> {
        use http_body_util::BodyExt;
        resp.into_body()
            .collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default()
    }

    /// A config as the control plane sends it: `n` services with an endpoint set each, strings
    /// that need escaping, and an inbound policy.
    fn big_config(n: usize) -> Config {
        use std::collections::BTreeMap;
        use weft_proxy_api::v1;
        use weft_proxy_api::v1::resource::Kind;
        let mut resources = BTreeMap::new();
        let mut add = |name: String, kind: Kind| {
            resources.insert(
                name.clone(),
                v1::Resource {
                    name,
                    version: "1".into(),
                    kind: Some(kind),
                },
            );
        };
        add(
            "inbound".into(),
            Kind::Inbound(v1::InboundPolicy {
                identity: "spiffe://cluster.local/ns/demo/sa/api\n\"x\"".into(),
                ..Default::default()
            }),
        );
        for i in 0..n {
            let set = format!("endpoints:svc-{i}.demo:80");
            add(
                set.clone(),
                Kind::Endpoints(v1::EndpointSet {
                    endpoints: (1..=3)
                        .map(|e| v1::Endpoint {
                            ip: vec![10, 1, (i % 250) as u8, e],
                            port: 8080,
                            ..Default::default()
                        })
                        .collect(),
                }),
            );
            add(
                format!("outbound:svc-{i}.demo"),
                Kind::Outbound(v1::OutboundService {
                    namespace: "demo".into(),
                    name: format!("svc-{i}"),
                    cluster_ips: vec![vec![10, 96, (i / 250) as u8, (i % 250) as u8]],
                    ports: vec![v1::OutboundPort {
                        port: 80,
                        routes: vec![v1::Route {
                            name: "default".into(),
                            backends: vec![v1::WeightedBackend {
                                service: format!("svc-{i}"),
                                weight: 1,
                                endpoint_set: set,
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            );
        }
        Config::from_resources("v7", &resources).unwrap_or_else(|e| panic!("{e}"))
    }

    struct Big(Arc<Config>);

    impl AdminSource for Big {
        fn readiness(&self) -> Result<(), String> {
            Ok(())
        }
        fn encode_metrics(&self, _: &mut String) {}
        fn config_dump(&self) -> ConfigDump {
            let head = serde_json::json!({
                "version": "v7",
                "control": {"connected": true, "last_error": null},
                "identity": {"id": "spiffe://x", "expiry_unix_seconds": 5},
            });
            ConfigDump {
                head: match head {
                    Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                },
                config: Arc::clone(&self.0),
            }
        }
    }

    /// The streamed dump is byte for byte the document rendered whole (what consumers parsed
    /// before), over several chunks, and for an empty config too.
    #[tokio::test]
    async fn streamed_config_equals_the_whole_document() {
        for n in [0, 1, 2000] {
            let source = Big(Arc::new(big_config(n)));
            let dump = source.config_dump();
            let mut whole = dump.head.clone();
            whole.insert("config".into(), dump.config.to_json());
            let mut want = serde_json::to_vec_pretty(&Value::Object(whole)).unwrap_or_default();
            want.push(b'\n');
            let got = body_of(handle(&get("/config"), &source).await).await;
            if n == 2000 {
                assert!(got.len() > 4 * STREAM_CHUNK, "{}", got.len());
            }
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[tokio::test]
    async fn pages_cover_every_resource_once() {
        let source = Big(Arc::new(big_config(250)));
        for (kind, key) in [("outbound", "authority"), ("endpoints", "name")] {
            let mut seen = Vec::new();
            let mut offset = Some(0);
            while let Some(o) = offset {
                let resp = handle(
                    &get(&format!("/config?kind={kind}&offset={o}&limit=100")),
                    &source,
                )
                .await;
                assert_eq!(resp.status(), StatusCode::OK);
                let page: Value = serde_json::from_slice(&body_of(resp).await).unwrap_or_default();
                assert_eq!(page["total"], 250);
                for item in page["items"].as_array().into_iter().flatten() {
                    seen.push(item[key].as_str().unwrap_or_default().to_string());
                }
                offset = page["next"].as_u64().map(|n| n as usize);
            }
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!((seen.len(), unique.len()), (250, 250), "{kind}");
        }
        let resp = handle(&get("/config?kind=summary"), &source).await;
        let summary: Value = serde_json::from_slice(&body_of(resp).await).unwrap_or_default();
        assert_eq!(summary["config"]["counts"]["outbound"], 250);
        assert_eq!(summary["config"]["counts"]["endpoints"], 250);
        assert_eq!(summary["version"], "v7");
        let resp = handle(&get("/config?kind=outbound&offset=x"), &source).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
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
