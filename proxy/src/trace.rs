//! W3C Trace Context through the proxy, and optional OTLP span export (issue #18,
//! `docs/tracing.md`).
//!
//! The proxy never starts a trace: the app decides (as Linkerd). When a collector is configured
//! (`WEFT_PROXY_TRACE_COLLECTOR`) and an HTTP request carries exactly one valid, sampled
//! `traceparent`, the proxy opens a span (server span on inbound, client span on outbound) whose
//! parent is the incoming parent-id, and forwards `traceparent` with its own span id as the new
//! parent-id, so that app → outbound proxy → inbound proxy → app links up. `tracestate` is
//! forwarded unchanged. Everything else (no collector, no or an invalid `traceparent`, an
//! unsampled one) is forwarded exactly as received and records nothing; without a collector the
//! request path does no tracing work at all, not even the header look-up.
//!
//! Finished spans go to a bounded queue ([`QUEUE_CAPACITY`]); a full queue drops the span and
//! counts it in `weft_proxy_trace_spans_dropped_total{reason="queue_full"}`. One task exports
//! them off the request path in batches over OTLP/gRPC, with a timeout per export and backoff
//! after a failure (a failed batch is dropped and counted with `reason="export_failed"`), and
//! flushes what is queued on graceful shutdown.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Request, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header (forwarded unchanged; copied onto our spans).
pub const TRACESTATE: &str = "tracestate";

/// Spans waiting for export; beyond this a finished span is dropped and counted.
pub const QUEUE_CAPACITY: usize = 2048;
/// Most spans in one export request.
pub const MAX_BATCH: usize = 512;
/// A partial batch waits at most this long before it is exported.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Bound on one export request (connect included).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff after a failed export doubles from the first value up to the second.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(10));
/// Bound on the final flush at shutdown.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// Longest `tracestate` copied onto a span (the W3C limit is 512 characters).
const MAX_TRACESTATE: usize = 512;

/// Which side of the proxy a span belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A server span: the request came in to the local app.
    Inbound,
    /// A client span: the local app's request going out.
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A parsed, valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }
}

fn hex_nibble(c: u8) -> Option<u8> {
    // Lowercase only, as the specification requires.
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_bytes<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (hex_nibble(pair[0])? << 4) | hex_nibble(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value per W3C Trace Context level 1: `version-traceid-parentid-flags`,
/// lowercase hex; version `ff`, all-zero ids and wrong lengths are invalid; a version above `00`
/// may carry more fields after a `-`. Never panics.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_bytes::<1>(value.get(0..2)?)?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value.get(55) != Some(&b'-') {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_bytes::<16>(&value[3..35])?;
    let parent_id = hex_bytes::<8>(&value[36..52])?;
    let flags = hex_bytes::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// The single valid `traceparent` of `headers`; several values are treated as none.
fn traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    parse_traceparent(first.as_bytes())
}

fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> String {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    for b in trace_id {
        let _ = write!(s, "{b:02x}");
    }
    s.push('-');
    for b in span_id {
        let _ = write!(s, "{b:02x}");
    }
    let _ = write!(s, "-{:02x}", flags & 0x01);
    s
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Settings of the exporter, from the environment (`WEFT_PROXY_TRACE_*`, `docs/proxy.md`).
#[derive(Clone, Debug)]
pub struct TraceSettings {
    /// The OTLP/gRPC endpoint, plaintext, e.g. `http://otel-collector.tracing:4317`.
    pub collector: String,
    /// `service.name` of the proxy's spans.
    pub service_name: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

struct Inner {
    queue: mpsc::Sender<Span>,
    dropped: Family<DropLabels, Counter>,
    exported: Counter,
}

impl Inner {
    fn drop_spans(&self, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
    }
}

/// The proxy's handle on tracing: disabled (the default) or exporting to a collector. Cloning
/// shares the queue.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("exporting", &self.inner.is_some())
            .finish()
    }
}

/// The export task; [`Exporter::shutdown`] flushes what is queued.
pub struct Exporter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Stops the exporter after one last export of the queued spans, bounded by
    /// [`SHUTDOWN_FLUSH`].
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(SHUTDOWN_FLUSH, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("trace export did not flush within the shutdown bound");
            task.abort();
        }
    }
}

impl Tracer {
    /// Tracing off: requests are forwarded untouched.
    pub fn disabled() -> Self {
        Tracer::default()
    }

    /// Whether spans are recorded and exported.
    pub fn exporting(&self) -> bool {
        self.inner.is_some()
    }

    /// A tracer exporting to `settings.collector`, and its export task. Fails only on an
    /// endpoint that is not a URI; an unreachable collector costs spans, never requests.
    pub fn exporting_to(settings: TraceSettings) -> Result<(Tracer, Exporter), String> {
        Self::exporting_with_queue(settings, QUEUE_CAPACITY)
    }

    fn exporting_with_queue(
        settings: TraceSettings,
        capacity: usize,
    ) -> Result<(Tracer, Exporter), String> {
        let endpoint = tonic::transport::Endpoint::from_shared(settings.collector.clone())
            .map_err(|e| format!("WEFT_PROXY_TRACE_COLLECTOR {:?}: {e}", settings.collector))?
            .connect_timeout(EXPORT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT);
        let channel = endpoint.connect_lazy();
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let inner = Arc::new(Inner {
            queue: tx,
            dropped: Family::default(),
            exported: Counter::default(),
        });
        // Both series exist from the start, so that rate() over them works from zero.
        for reason in ["queue_full", "export_failed"] {
            inner.drop_spans(reason, 0);
        }
        let (stop, stop_rx) = watch::channel(false);
        let resource = resource(&settings);
        let task = tokio::spawn(export_loop(
            TraceServiceClient::new(channel),
            rx,
            stop_rx,
            resource,
            inner.clone(),
        ));
        Ok((Tracer { inner: Some(inner) }, Exporter { stop, task }))
    }

    /// Registers `weft_proxy_trace_spans_dropped_total` and `..._exported_total` (only when
    /// exporting).
    pub fn register(&self, registry: &mut Registry) {
        if let Some(inner) = &self.inner {
            registry.register(
                "weft_proxy_trace_spans_dropped",
                "Finished spans not exported: the queue was full, or the export failed",
                inner.dropped.clone(),
            );
            registry.register(
                "weft_proxy_trace_spans_exported",
                "Spans accepted by the trace collector",
                inner.exported.clone(),
            );
        }
    }

    /// Opens a span for `req` when exporting and it carries one valid sampled `traceparent`,
    /// and rewrites that header with the new span as parent. Otherwise leaves `req` untouched.
    pub fn start<B>(&self, req: &mut Request<B>, direction: Direction) -> Option<ActiveSpan> {
        let inner = self.inner.as_ref()?;
        let parent = traceparent(req.headers())?;
        if !parent.sampled() {
            return None;
        }
        let span_id = new_span_id();
        let value = format_traceparent(&parent.trace_id, &span_id, parent.flags);
        let value = HeaderValue::from_str(&value).ok()?;
        req.headers_mut().insert(TRACEPARENT, value);
        let trace_state = req
            .headers()
            .get(TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .filter(|s| s.len() <= MAX_TRACESTATE)
            .unwrap_or_default()
            .to_string();
        Some(ActiveSpan {
            inner: inner.clone(),
            parent,
            span_id,
            trace_state,
            direction,
            method: req.method().as_str().to_string(),
            started_wall: SystemTime::now(),
            started: Instant::now(),
            noted: Arc::new(Mutex::new(Noted::default())),
        })
    }
}

/// What the request's handling learned that the span reports (outbound: route and server).
#[derive(Default, Debug)]
struct Noted {
    route: Option<String>,
    peer: Option<Arc<str>>,
}

tokio::task_local! {
    static NOTED: Arc<Mutex<Noted>>;
}

/// Tells the span of the request being handled (if any) its route and peer identity. Costs a
/// task-local look-up when the request has no span.
pub fn note(route: &str, peer: Option<&Arc<str>>) {
    let _ = NOTED.try_with(|n| {
        if let Ok(mut n) = n.lock() {
            if !route.is_empty() {
                n.route = Some(route.to_string());
            }
            if let Some(p) = peer {
                n.peer = Some(p.clone());
            }
        }
    });
}

/// A span opened by [`Tracer::start`]; [`ActiveSpan::finish`] queues it for export.
pub struct ActiveSpan {
    inner: Arc<Inner>,
    parent: TraceParent,
    span_id: [u8; 8],
    trace_state: String,
    direction: Direction,
    method: String,
    started_wall: SystemTime,
    started: Instant,
    noted: Arc<Mutex<Noted>>,
}

impl ActiveSpan {
    /// Runs `fut` with this span as the one [`note`] reaches.
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        NOTED.scope(self.noted.clone(), fut).await
    }

    /// Tells the span its peer identity directly (inbound: the mTLS client's).
    pub fn set_peer(&self, peer: Option<&Arc<str>>) {
        if let (Some(p), Ok(mut n)) = (peer, self.noted.lock()) {
            n.peer = Some(p.clone());
        }
    }

    /// Ends the span at the response head with `status` and queues it; a full queue drops it
    /// (counted). Never blocks.
    pub fn finish(self, status: StatusCode) {
        let end = self.started_wall + self.started.elapsed();
        let (route, peer) = match self.noted.lock() {
            Ok(mut n) => (n.route.take(), n.peer.take()),
            Err(_) => (None, None),
        };
        let mut attributes = vec![
            kv("http.request.method", self.method.clone()),
            kv_int("http.response.status_code", i64::from(status.as_u16())),
            kv("weft.direction", self.direction.as_str()),
        ];
        if let Some(route) = &route {
            attributes.push(kv("http.route", route.as_str()));
        }
        if let Some(peer) = peer {
            let key = match self.direction {
                Direction::Inbound => "weft.client.id",
                Direction::Outbound => "weft.server.id",
            };
            attributes.push(kv(key, &*peer));
        }
        // OpenTelemetry's HTTP conventions: a client span fails on 4xx and 5xx, a server span
        // on 5xx only.
        let failed = match self.direction {
            Direction::Inbound => status.is_server_error(),
            Direction::Outbound => status.is_client_error() || status.is_server_error(),
        };
        let (kind, name) = match self.direction {
            Direction::Inbound => (span::SpanKind::Server, self.method),
            Direction::Outbound => (
                span::SpanKind::Client,
                match route {
                    Some(r) => format!("{} {r}", self.method),
                    None => self.method,
                },
            ),
        };
        let span = Span {
            trace_id: self.parent.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: self.trace_state,
            parent_span_id: self.parent.parent_id.to_vec(),
            flags: u32::from(self.parent.flags & 0x01),
            name,
            kind: kind as i32,
            start_time_unix_nano: unix_nanos(self.started_wall),
            end_time_unix_nano: unix_nanos(end),
            attributes,
            status: Some(Status {
                message: String::new(),
                code: if failed {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
            }),
            ..Default::default()
        };
        if self.inner.queue.try_send(span).is_err() {
            self.inner.drop_spans("queue_full", 1);
        }
    }
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn resource(settings: &TraceSettings) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", settings.service_name.as_str()),
            kv("k8s.pod.name", settings.pod_name.as_str()),
            kv("k8s.namespace.name", settings.pod_namespace.as_str()),
        ],
        ..Default::default()
    }
}

async fn export_loop(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    mut rx: mpsc::Receiver<Span>,
    mut stop: watch::Receiver<bool>,
    resource: Resource,
    inner: Arc<Inner>,
) {
    let mut backoff = BACKOFF.0;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let failures = AtomicU64::new(0);
    loop {
        // After a failure, wait out the backoff (spans pile up in the bounded queue meanwhile).
        if let Some(at) = retry_at.take() {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                _ = stop.changed() => {}
            }
        }
        let stopping = *stop.borrow();
        let mut batch = Vec::new();
        if !stopping {
            // Wait for a first span, then fill the batch for at most BATCH_DELAY.
            tokio::select! {
                first = rx.recv() => match first {
                    Some(s) => batch.push(s),
                    None => return,
                },
                _ = stop.changed() => {}
            }
            if !batch.is_empty() {
                let until = tokio::time::Instant::now() + BATCH_DELAY;
                while batch.len() < MAX_BATCH {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(s) => batch.push(s),
                            None => break,
                        },
                        () = tokio::time::sleep_until(until) => break,
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        let stopping = *stop.borrow();
        if stopping {
            while batch.len() < QUEUE_CAPACITY {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "weft-proxy".to_string(),
                            version: env!("CARGO_PKG_VERSION").to_string(),
                            ..Default::default()
                        }),
                        spans: batch,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
                Ok(Ok(_)) => {
                    inner.exported.inc_by(n);
                    backoff = BACKOFF.0;
                }
                outcome => {
                    inner.drop_spans("export_failed", n);
                    let error = match outcome {
                        Ok(Err(status)) => status.to_string(),
                        _ => "timed out".to_string(),
                    };
                    // Logged at debug after the first: a dead collector must not flood logs.
                    if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(%error, spans = n, "trace export failed; spans dropped");
                    } else {
                        tracing::debug!(%error, spans = n, "trace export failed; spans dropped");
                    }
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example() {
        let tp = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(tp.sampled());
        let again = format_traceparent(&tp.trace_id, &tp.parent_id, tp.flags);
        assert_eq!(again, VALID);
    }

    #[test]
    fn invalid_values_are_none() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
        // A later version may add fields after a dash.
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        )
        .is_some());
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..120 {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        b"0123456789abcdef-fF\xff"[(seed % 20) as usize]
                    })
                    .collect();
                let _ = parse_traceparent(&bytes);
            }
        }
    }

    /// A collector that accepts connections and never answers: the exporter hangs in an export
    /// (bounded by EXPORT_TIMEOUT), the queue fills, and further spans are dropped and counted
    /// while `finish` never blocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let (tracer, _exporter) = Tracer::exporting_with_queue(
            TraceSettings {
                collector: format!("http://{addr}"),
                service_name: "t".into(),
                pod_namespace: "ns".into(),
                pod_name: "p".into(),
            },
            4,
        )
        .unwrap();
        let inner = tracer.inner.clone().unwrap();
        let full = || {
            inner
                .dropped
                .get_or_create(&DropLabels {
                    reason: "queue_full",
                })
                .get()
        };
        let finished = tokio::time::timeout(Duration::from_secs(20), async {
            let mut n = 0u64;
            while full() == 0 {
                let mut req = Request::builder()
                    .header(TRACEPARENT, VALID)
                    .body(())
                    .unwrap();
                let span = tracer.start(&mut req, Direction::Inbound).unwrap();
                span.finish(StatusCode::OK);
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
        .await;
        assert!(finished.is_ok(), "the queue never filled");
        assert_eq!(full(), 1);
        held.abort();
    }

    #[test]
    fn a_disabled_tracer_leaves_requests_untouched() {
        let mut req = Request::builder()
            .header(TRACEPARENT, VALID)
            .body(())
            .unwrap();
        assert!(Tracer::disabled()
            .start(&mut req, Direction::Outbound)
            .is_none());
        assert_eq!(req.headers()[TRACEPARENT], VALID);
    }
}
