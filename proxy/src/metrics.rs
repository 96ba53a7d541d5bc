//! Prometheus metrics of the data plane (and a few set by the control and identity parts).
//!
//! Cardinality is bounded: labels carry service authorities, route names, backend service
//! names, authorization names, status classes and SPIFFE identities (all bounded by the cluster's
//! configuration), never pod IPs, paths or request ids.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Traffic direction label values.
pub const INBOUND: &str = "inbound";
pub const OUTBOUND: &str = "outbound";

/// Longest value [`LabelValue::inline`] stores without allocating.
const INLINE_CAP: usize = 22;

/// A label value that is cheap to build on the request path: a static string, a shared
/// `Arc<str>` from the config (a reference-count bump), or a short string stored inline.
///
/// Equality and hashing are by content, so the same text always names the same series whichever
/// variant carries it.
#[derive(Clone, Debug)]
pub enum LabelValue {
    Static(&'static str),
    Shared(Arc<str>),
    Inline { len: u8, buf: [u8; INLINE_CAP] },
}

impl LabelValue {
    /// The empty value.
    pub const EMPTY: LabelValue = LabelValue::Static("");

    /// The text's bytes, without re-checking an inline value's UTF-8 (what equality and hashing
    /// use on the request path).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            LabelValue::Static(s) => s.as_bytes(),
            LabelValue::Shared(s) => s.as_bytes(),
            LabelValue::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or_default(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            LabelValue::Static(s) => s,
            LabelValue::Shared(s) => s,
            LabelValue::Inline { len, buf } => {
                std::str::from_utf8(buf.get(..usize::from(*len)).unwrap_or_default())
                    .unwrap_or_default()
            }
        }
    }

    /// `s` inline if it is short enough, otherwise shared (allocates).
    pub fn inline(s: &str) -> Self {
        let mut buf = [0u8; INLINE_CAP];
        match (buf.get_mut(..s.len()), u8::try_from(s.len())) {
            (Some(dst), Ok(len)) => {
                dst.copy_from_slice(s.as_bytes());
                LabelValue::Inline { len, buf }
            }
            _ => LabelValue::Shared(Arc::from(s)),
        }
    }

    /// `:<port>`, without allocating.
    pub fn port(port: u16) -> Self {
        use std::io::Write;
        let mut buf = [0u8; INLINE_CAP];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // ":65535" always fits.
        let len = match write!(cursor, ":{port}") {
            Ok(()) => u8::try_from(cursor.position()).unwrap_or(0),
            Err(_) => 0,
        };
        LabelValue::Inline { len, buf }
    }
}

impl Default for LabelValue {
    fn default() -> Self {
        LabelValue::EMPTY
    }
}

impl PartialEq for LabelValue {
    fn eq(&self, other: &Self) -> bool {
        // A series lookup compares a request's labels with the stored ones; values from the
        // configuration are the same `Arc` (or static) on both sides, equal without a look at
        // their bytes.
        match (self, other) {
            (LabelValue::Shared(a), LabelValue::Shared(b)) if Arc::ptr_eq(a, b) => true,
            (LabelValue::Static(a), LabelValue::Static(b)) if std::ptr::eq(*a, *b) => true,
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for LabelValue {}

impl Hash for LabelValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: the bytes, then a terminator, so that adjacent values cannot run
        // into each other.
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

/// The per-process seed of [`Hashed`].
static LABEL_HASHER: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

/// A label set with its hash computed once, with foldhash, when it is built.
///
/// prometheus-client's `Family` keys a standard `HashMap` (SipHash); hashing every label value
/// through SipHash on each series lookup cost ~10 % of a proxied request's instructions (issue
/// #20, `docs/benchmarks.md`). Wrapped, the family's SipHash hashes this one `u64`, and a
/// request's labels are hashed once by foldhash however many families it touches. Label values
/// come from the configuration and from verified mesh identities, never from what a client
/// sends, and equal hashes still compare every label, so the fast hash opens no collision
/// attack on the series maps.
#[derive(Clone, Debug)]
pub struct Hashed<L> {
    hash: u64,
    labels: L,
}

impl<L: Hash> Hashed<L> {
    pub fn new(labels: L) -> Self {
        Hashed {
            hash: LABEL_HASHER.hash_one(&labels),
            labels,
        }
    }
}

impl<L> Hashed<L> {
    pub fn into_labels(self) -> L {
        self.labels
    }
}

impl<L: PartialEq> PartialEq for Hashed<L> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.labels == other.labels
    }
}

impl<L: Eq> Eq for Hashed<L> {}

impl<L> Hash for Hashed<L> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<L: EncodeLabelSet> EncodeLabelSet for Hashed<L> {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.labels.encode(encoder)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl From<&'static str> for LabelValue {
    fn from(s: &'static str) -> Self {
        LabelValue::Static(s)
    }
}

impl From<Arc<str>> for LabelValue {
    fn from(s: Arc<str>) -> Self {
        LabelValue::Shared(s)
    }
}

impl From<&Arc<str>> for LabelValue {
    fn from(s: &Arc<str>) -> Self {
        LabelValue::Shared(s.clone())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    /// `<service>.<namespace>` outbound; `:<port>` inbound.
    pub authority: LabelValue,
    /// Route name outbound; authorization name (or `default`) inbound.
    pub route: LabelValue,
    /// Backend service outbound; empty inbound.
    pub backend: LabelValue,
    /// `1xx` … `5xx`.
    pub status_class: &'static str,
    /// Client identity inbound (or `unauthenticated`); expected server identity outbound.
    pub peer: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: &'static str,
    pub authority: LabelValue,
    pub route: LabelValue,
    pub backend: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
    /// Service authority, `:<port>` inbound, or `passthrough`.
    pub authority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpBytesLabels {
    pub direction: &'static str,
    pub authority: String,
    /// `client_to_server` or `server_to_client`.
    pub flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The TrafficTarget (`<namespace>/<name>`) that allowed, or `default` / `none`.
    pub authorization: LabelValue,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// `http` or `tcp`.
    pub protocol: &'static str,
}

/// A request refused or failed because of the client (never counted as an upstream failure).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientErrorLabels {
    pub direction: &'static str,
    /// `bad_path`, `duplicate_host`, `bad_target` (refused before routing, `400`) or
    /// `request_body` (the client's body could not be read: bad chunk, early end; `400`).
    pub reason: &'static str,
}

// #16 inbound
/// A request to the local app refused by the inbound port's limits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundShedLabels {
    /// `:<port>`.
    pub authority: LabelValue,
    /// `concurrency`, `pending` or `queue-timeout` (the `weft-reason` header).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundRateLimitLabels {
    pub authority: LabelValue,
    /// `total` (the port's bucket) or `identity` (the caller's).
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundDeadlineLabels {
    pub authority: LabelValue,
    /// `arrival` (expired when it arrived: the app was not called), `queue` (ran out waiting
    /// for a slot) or `app` (ran out while the app worked on it).
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundPortLabels {
    pub authority: LabelValue,
}
// end #16 inbound

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms … ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The proxy's metrics. One instance per process, shared as `Arc<Metrics>`.
pub struct Metrics {
    /// Tells this instance's memoized series from another's ([`Metrics::series`]).
    id: u64,
    registry: Registry,
    compat_registry: Registry,
    requests: Family<Hashed<RequestLabels>, Counter>,
    latency: Family<Hashed<LatencyLabels>, Histogram, fn() -> Histogram>,
    tcp_connections: Family<TcpLabels, Counter>,
    tcp_open: Family<TcpLabels, Gauge>,
    tcp_bytes: Family<TcpBytesLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    config_info: Family<VersionLabels, Gauge>,
    config_version: Mutex<String>,
    nacks: Counter,
    cert_expiry: Gauge<i64, std::sync::atomic::AtomicI64>,
    retries: Family<LatencyLabels, Counter>,
    client_errors: Family<ClientErrorLabels, Counter>,
    // #16 inbound
    inbound_shed: Family<InboundShedLabels, Counter>,
    inbound_rate_limited: Family<InboundRateLimitLabels, Counter>,
    inbound_deadline_exceeded: Family<InboundDeadlineLabels, Counter>,
    inbound_in_flight: Family<InboundPortLabels, Gauge>,
    // end #16 inbound
    // #16 outbound
    retries_skipped: Family<AuthorityLabels, Counter>,
    outbound_ejections: Family<OutboundLabels, Counter>,
    outbound_ejected: Family<OutboundLabels, Gauge>,
    outbound_retry_after: Family<OutboundLabels, Counter>,
    outbound_shed: Family<ShedLabels, Counter>,
    outbound_deadline_exceeded: Family<AuthorityLabels, Counter>,
    // end #16 outbound
    // #18 Linkerd-compatible families (unprefixed: their names are what dashboards query)
    pod: Pod,
    request_total: Family<TrafficLabels, Counter>,
    response_total: Family<Hashed<ResponseLabels>, Counter>,
    response_latency_ms: Family<TrafficLabels, Histogram, fn() -> Histogram>,
    // end #18
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::for_pod(PodMeta::default())
    }

    /// The metrics of the proxy of `pod` (its namespace, name and owning workload label the
    /// Linkerd-compatible families).
    pub fn for_pod(pod: PodMeta) -> Self {
        let mut registry = Registry::with_prefix("weft_proxy");
        // #18: the Linkerd-compatible families, unprefixed, in a registry of their own.
        let mut compat_registry = Registry::default();
        let request_total = Family::<TrafficLabels, Counter>::default();
        let response_total = Family::<Hashed<ResponseLabels>, Counter>::default();
        let response_latency_ms =
            Family::<TrafficLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                response_latency_ms_histogram,
            );
        compat_registry.register(
            "request",
            "HTTP requests (Linkerd-compatible: counted when the response head is sent)",
            request_total.clone(),
        );
        compat_registry.register(
            "response",
            "HTTP responses by classification, status_code and grpc_status (Linkerd-compatible: counted when the response stream ends)",
            response_total.clone(),
        );
        compat_registry.register(
            "response_latency_ms",
            "Time from the request head to the response head, in milliseconds (Linkerd-compatible buckets)",
            response_latency_ms.clone(),
        );
        compat_registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        // end #18
        let requests = Family::<Hashed<RequestLabels>, Counter>::default();
        let latency =
            Family::<Hashed<LatencyLabels>, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let tcp_connections = Family::<TcpLabels, Counter>::default();
        let tcp_open = Family::<TcpLabels, Gauge>::default();
        let tcp_bytes = Family::<TcpBytesLabels, Counter>::default();
        let authz = Family::<AuthzLabels, Counter>::default();
        let config_info = Family::<VersionLabels, Gauge>::default();
        let nacks = Counter::default();
        let cert_expiry = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        let retries = Family::<LatencyLabels, Counter>::default();
        let client_errors = Family::<ClientErrorLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by direction, authority, route, backend, status class and peer",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "HTTP request latency until response headers",
            latency.clone(),
        );
        registry.register(
            "tcp_connections",
            "TCP connections handled",
            tcp_connections.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "TCP connections open now",
            tcp_open.clone(),
        );
        registry.register("tcp_bytes", "Bytes relayed", tcp_bytes.clone());
        registry.register(
            "authorizations",
            "Inbound authorization decisions by authorization name",
            authz.clone(),
        );
        registry.register(
            "config_info",
            "The config version in force (value 1)",
            config_info.clone(),
        );
        registry.register("config_nacks", "Config updates rejected", nacks.clone());
        registry.register(
            "identity_cert_expiry_timestamp_seconds",
            "Expiry of the proxy's certificate (Unix time)",
            cert_expiry.clone(),
        );
        registry.register("retries", "Requests retried", retries.clone());
        registry.register(
            "client_errors",
            "Requests refused or failed because of the client (bad path, duplicate Host, unreadable request body)",
            client_errors.clone(),
        );
        // #16 inbound
        let inbound_shed = Family::<InboundShedLabels, Counter>::default();
        let inbound_rate_limited = Family::<InboundRateLimitLabels, Counter>::default();
        let inbound_deadline_exceeded = Family::<InboundDeadlineLabels, Counter>::default();
        let inbound_in_flight = Family::<InboundPortLabels, Gauge>::default();
        registry.register(
            "inbound_shed_requests",
            "Inbound requests answered 503 by the port's concurrency limit, by reason",
            inbound_shed.clone(),
        );
        registry.register(
            "inbound_rate_limited_requests",
            "Inbound requests answered 429 by a local rate limit, by bucket scope (total or identity)",
            inbound_rate_limited.clone(),
        );
        registry.register(
            "inbound_deadline_exceeded_requests",
            "Inbound requests answered 504 (gRPC: DEADLINE_EXCEEDED) because their deadline ran out, by stage",
            inbound_deadline_exceeded.clone(),
        );
        registry.register(
            "inbound_in_flight_requests",
            "Inbound requests in flight to the app now, per port",
            inbound_in_flight.clone(),
        );
        // end #16 inbound
        // #16 outbound
        let retries_skipped = Family::<AuthorityLabels, Counter>::default();
        let outbound_ejections = Family::<OutboundLabels, Counter>::default();
        let outbound_ejected = Family::<OutboundLabels, Gauge>::default();
        let outbound_retry_after = Family::<OutboundLabels, Counter>::default();
        let outbound_shed = Family::<ShedLabels, Counter>::default();
        let outbound_deadline_exceeded = Family::<AuthorityLabels, Counter>::default();
        registry.register(
            "retries_skipped",
            "Outbound retries refused by the service's retry budget",
            retries_skipped.clone(),
        );
        registry.register(
            "outbound_ejections",
            "Endpoints ejected by failure accrual, by service and backend",
            outbound_ejections.clone(),
        );
        registry.register(
            "outbound_ejected_endpoints",
            "Endpoints ejected now (until a probe succeeds), by service and backend",
            outbound_ejected.clone(),
        );
        registry.register(
            "outbound_retry_after_backoffs",
            "Endpoints backed off for a 429 / RESOURCE_EXHAUSTED answer (Retry-After)",
            outbound_retry_after.clone(),
        );
        registry.register(
            "outbound_shed",
            "Outbound requests answered 503 without being sent, by service and reason",
            outbound_shed.clone(),
        );
        registry.register(
            "outbound_deadline_exceeded",
            "Outbound requests answered 504 because their deadline passed",
            outbound_deadline_exceeded.clone(),
        );
        // end #16 outbound
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            compat_registry,
            pod: Pod(Arc::new(pod)),
            request_total,
            response_total,
            response_latency_ms,
            requests,
            latency,
            tcp_connections,
            tcp_open,
            tcp_bytes,
            authz,
            config_info,
            config_version: Mutex::new(String::new()),
            nacks,
            cert_expiry,
            retries,
            client_errors,
            // #16 inbound
            inbound_shed,
            inbound_rate_limited,
            inbound_deadline_exceeded,
            inbound_in_flight,
            // end #16 inbound
            // #16 outbound
            retries_skipped,
            outbound_ejections,
            outbound_ejected,
            outbound_retry_after,
            outbound_shed,
            outbound_deadline_exceeded,
            // end #16 outbound
        }
    }

    // #16 inbound
    /// Counts a request shed by an inbound port's concurrency limit.
    pub fn inbound_shed(&self, authority: LabelValue, reason: &'static str) {
        self.inbound_shed
            .get_or_create(&InboundShedLabels { authority, reason })
            .inc();
    }

    /// Counts a request refused by an inbound rate limit (`scope`: `total` or `identity`).
    pub fn inbound_rate_limited(&self, authority: LabelValue, scope: &'static str) {
        self.inbound_rate_limited
            .get_or_create(&InboundRateLimitLabels { authority, scope })
            .inc();
    }

    /// Counts an inbound request whose deadline ran out (`stage`: see [`InboundDeadlineLabels`]).
    pub fn inbound_deadline_exceeded(&self, authority: LabelValue, stage: &'static str) {
        self.inbound_deadline_exceeded
            .get_or_create(&InboundDeadlineLabels { authority, stage })
            .inc();
    }

    /// The in-flight gauge of an inbound port (kept by the port's limiter).
    pub fn inbound_in_flight(&self, authority: LabelValue) -> Gauge {
        self.inbound_in_flight
            .get_or_create_owned(&InboundPortLabels { authority })
    }

    /// Drops the in-flight gauge of a port that left the policy.
    pub fn inbound_forget_port(&self, authority: &LabelValue) {
        self.inbound_in_flight.remove(&InboundPortLabels {
            authority: authority.clone(),
        });
    }
    // end #16 inbound

    /// The registry, to register more metrics before serving or to encode.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        crate::admin::strip_eof(&mut out);
        let mut compat = String::with_capacity(4 * 1024);
        if prometheus_client::encoding::text::encode(&mut compat, &self.compat_registry).is_ok() {
            out.push_str(&compat);
        }
        out
    }

    /// Records the config version now in force (set by the control client).
    pub fn set_config_version(&self, version: &str) {
        let mut current = match self.config_version.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *current == version {
            return;
        }
        self.config_info.clear();
        self.config_info
            .get_or_create(&VersionLabels {
                version: version.to_string(),
            })
            .set(1);
        *current = version.to_string();
    }

    /// Counts a rejected config update (set by the control client).
    pub fn inc_nack(&self) {
        self.nacks.inc();
    }

    /// Records the certificate's expiry as Unix seconds (set by the identity part).
    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    /// Counts a request and observes its latency, without the per-thread memo (the proxies
    /// count through [`Metrics::series`]).
    #[cfg(test)]
    pub fn request(&self, labels: RequestLabels, latency: Duration) {
        let (requests, histogram) = self.request_series(labels);
        count_request(&requests, &histogram, latency);
    }

    /// The `requests` counter and `request_duration_seconds` histogram of `labels`.
    fn request_series(&self, labels: RequestLabels) -> (Counter, Histogram) {
        let labels = Hashed::new(labels);
        let requests = self.requests.get_or_create(&labels).clone();
        let RequestLabels {
            direction,
            authority,
            route,
            backend,
            ..
        } = labels.into_labels();
        let latency = self
            .latency
            .get_or_create(&Hashed::new(LatencyLabels {
                direction,
                authority,
                route,
                backend,
            }))
            .clone();
        (requests, latency)
    }

    pub fn retry(&self, labels: &LatencyLabels) {
        self.retries.get_or_create(labels).inc();
    }

    /// Counts a request refused or failed because of the client (see [`ClientErrorLabels`]).
    pub fn client_error(&self, direction: &'static str, reason: &'static str) {
        self.client_errors
            .get_or_create(&ClientErrorLabels { direction, reason })
            .inc();
    }

    // #16 outbound

    /// A retry of a request to `authority` refused by its retry budget.
    pub fn retry_skipped(&self, authority: impl Into<LabelValue>) {
        self.retries_skipped
            .get_or_create(&AuthorityLabels {
                authority: authority.into(),
            })
            .inc();
    }

    /// An endpoint of `labels` ejected (again, after a failed probe, too).
    pub fn ejection(&self, labels: &OutboundLabels) {
        self.outbound_ejections.get_or_create(labels).inc();
    }

    /// Counts an endpoint of `labels` as ejected until the guard is dropped.
    pub fn ejected(&self, labels: &OutboundLabels) -> EjectedGuard {
        let gauge = self.outbound_ejected.get_or_create_owned(labels);
        gauge.inc();
        EjectedGuard { gauge }
    }

    /// An endpoint of `labels` backed off for its `Retry-After`.
    pub fn retry_after_backoff(&self, labels: &OutboundLabels) {
        self.outbound_retry_after.get_or_create(labels).inc();
    }

    /// A request to `authority` shed (answered 503 unsent) for `reason`.
    pub fn shed(&self, authority: impl Into<LabelValue>, reason: &'static str) {
        self.outbound_shed
            .get_or_create(&ShedLabels {
                authority: authority.into(),
                reason,
            })
            .inc();
    }

    /// A request to `authority` answered 504 because its deadline passed.
    pub fn deadline_exceeded(&self, authority: impl Into<LabelValue>) {
        self.outbound_deadline_exceeded
            .get_or_create(&AuthorityLabels {
                authority: authority.into(),
            })
            .inc();
    }

    // end #16 outbound

    pub fn authorization(
        &self,
        authorization: impl Into<LabelValue>,
        allowed: bool,
        protocol: &'static str,
    ) {
        self.authz
            .get_or_create(&AuthzLabels {
                authorization: authorization.into(),
                decision: if allowed { "allow" } else { "deny" },
                protocol,
            })
            .inc();
    }

    /// Counts a TCP connection as opened; the guard marks it closed.
    pub fn tcp_open(&self, direction: &'static str, authority: &str) -> TcpGuard {
        let labels = TcpLabels {
            direction,
            authority: authority.to_string(),
        };
        self.tcp_connections.get_or_create(&labels).inc();
        let open = self.tcp_open.get_or_create_owned(&labels);
        open.inc();
        TcpGuard { open }
    }

    pub fn tcp_bytes(&self, direction: &'static str, authority: &str, up: u64, down: u64) {
        for (flow, n) in [("client_to_server", up), ("server_to_client", down)] {
            self.tcp_bytes
                .get_or_create(&TcpBytesLabels {
                    direction,
                    authority: authority.to_string(),
                    flow,
                })
                .inc_by(n);
        }
    }
}

// #16 outbound

/// Outbound failure accrual labels: the service and the backend (never an endpoint address).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    pub authority: LabelValue,
    pub backend: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityLabels {
    pub authority: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub authority: LabelValue,
    /// `concurrency`, `pending`, `queue-timeout` or `ejected`.
    pub reason: &'static str,
}

/// Counts an endpoint as ejected while it lives.
#[derive(Debug)]
pub struct EjectedGuard {
    gauge: Gauge,
}

impl Drop for EjectedGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

// end #16 outbound

/// Decrements the open-connections gauge when dropped.
#[derive(Debug)]
pub struct TcpGuard {
    open: Gauge,
}

impl Drop for TcpGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// `2xx` etc. for a status code.
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

// #18 Linkerd-compatible families

/// `response_latency_ms` bucket bounds: Linkerd's, in milliseconds, so that dashboards and
/// `histogram_quantile` queries written for Linkerd read the same buckets.
pub const LATENCY_BOUNDS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1_000.0, 2_000.0, 3_000.0, 4_000.0, 5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0,
];

fn response_latency_ms_histogram() -> Histogram {
    Histogram::new(LATENCY_BOUNDS_MS)
}

/// `classification` label values.
pub const SUCCESS: &str = "success";
pub const FAILURE: &str = "failure";

/// The kind of workload that owns the proxy's pod: its label name is the kind's, as Linkerd's
/// (`deployment="web"`, `statefulset="db"`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    /// The label name (and the kind as `WEFT_PROXY_WORKLOAD` spells it).
    pub fn label(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
            WorkloadKind::ReplicaSet => "replicaset",
            WorkloadKind::Job => "k8s_job",
            WorkloadKind::CronJob => "cronjob",
        }
    }

    /// The outbound label of a destination of this kind (`dst_deployment`, …).
    pub fn dst_label(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "dst_deployment",
            WorkloadKind::StatefulSet => "dst_statefulset",
            WorkloadKind::DaemonSet => "dst_daemonset",
            WorkloadKind::ReplicaSet => "dst_replicaset",
            WorkloadKind::Job => "dst_k8s_job",
            WorkloadKind::CronJob => "dst_cronjob",
        }
    }

    /// Parses a kind as `WEFT_PROXY_WORKLOAD` or a Kubernetes `kind` spells it (any case).
    pub fn parse(kind: &str) -> Option<Self> {
        Some(match kind.to_ascii_lowercase().as_str() {
            "deployment" => WorkloadKind::Deployment,
            "statefulset" => WorkloadKind::StatefulSet,
            "daemonset" => WorkloadKind::DaemonSet,
            "replicaset" => WorkloadKind::ReplicaSet,
            "job" | "k8s_job" => WorkloadKind::Job,
            "cronjob" => WorkloadKind::CronJob,
            _ => return None,
        })
    }
}

/// Who the proxy is: the pod labels of the Linkerd-compatible families, fixed for the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub pod: String,
    /// The owning workload; `None` when unknown (no workload label then).
    pub workload: Option<(WorkloadKind, String)>,
}

impl PodMeta {
    /// From the pod's namespace and name and `WEFT_PROXY_WORKLOAD` (`<kind>/<name>`, set by the
    /// injector). Without it (or when it does not parse), a pod named as a Deployment's pods
    /// are (`<deployment>-<pod-template-hash>-<5 chars>`) is labelled with that Deployment;
    /// otherwise there is no workload label.
    pub fn new(namespace: &str, pod: &str, workload: Option<&str>) -> Self {
        let parsed = workload.and_then(|w| {
            let (kind, name) = w.trim().split_once('/')?;
            let kind = WorkloadKind::parse(kind)?;
            valid_name(name).then(|| (kind, name.to_string()))
        });
        PodMeta {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            workload: parsed.or_else(|| {
                deployment_of_pod_name(pod).map(|d| (WorkloadKind::Deployment, d.to_string()))
            }),
        }
    }
}

/// A DNS-1123 name as Kubernetes allows for workloads (bounded, no odd characters in labels).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `web` for `web-5d8f7c9b4-x2k9p`: Kubernetes names a Deployment's pods
/// `<deployment>-<pod-template-hash>-<suffix>`, the hash and the 5-character suffix drawn from
/// `bcdfghjklmnpqrstvwxz2456789`.
fn deployment_of_pod_name(pod: &str) -> Option<&str> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let from_alphabet = |s: &str| s.bytes().all(|b| ALPHABET.contains(&b));
    let (rest, suffix) = pod.rsplit_once('-')?;
    let (name, hash) = rest.rsplit_once('-')?;
    (suffix.len() == 5
        && (6..=10).contains(&hash.len())
        && from_alphabet(suffix)
        && from_alphabet(hash)
        && valid_name(name))
    .then_some(name)
}

/// The process's [`PodMeta`], compared by identity (one per process) so that hashing a series'
/// labels on the request path does not hash the pod's names.
#[derive(Clone, Debug)]
struct Pod(Arc<PodMeta>);

impl PartialEq for Pod {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Pod {}

impl Hash for Pod {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// The outbound labels of one endpoint (`server_id`, `dst_pod`, `dst_<kind>`), built once per
/// endpoint when a config arrives ([`DstEndpoint::new`]) and shared by every request to it: the
/// request path clones an `Arc`, never formats a label.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct DstEndpoint {
    /// The server's expected SPIFFE identity; empty when the endpoint is not meshed.
    pub server_id: LabelValue,
    /// The endpoint pod's name (without its namespace); empty when unknown.
    pub pod: LabelValue,
    /// The pod's owning workload (from the endpoint's `workload`, else the pod-name rule of
    /// [`PodMeta::new`]).
    pub workload: Option<(WorkloadKind, LabelValue)>,
}

impl DstEndpoint {
    /// From an endpoint's config: `identity` (empty: not meshed), `pod` (`<namespace>/<name>`)
    /// and `workload` (`<kind>/<name>`), all from the operator (bounded by the cluster).
    pub fn new(identity: Option<&Arc<str>>, pod: &str, workload: &str) -> Self {
        let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
        let meta = PodMeta::new(namespace, name, (!workload.is_empty()).then_some(workload));
        DstEndpoint {
            server_id: identity.map_or(LabelValue::EMPTY, LabelValue::from),
            pod: if valid_name(name) {
                LabelValue::Shared(Arc::from(name))
            } else {
                LabelValue::EMPTY
            },
            workload: meta
                .workload
                .map(|(kind, name)| (kind, LabelValue::Shared(Arc::from(name.as_str())))),
        }
    }

    /// Whether requests to it go over mTLS (the endpoint is meshed).
    pub fn tls(&self) -> bool {
        !self.server_id.as_str().is_empty()
    }
}

/// `tls` label values.
const TLS_TRUE: &str = "true";
const TLS_FALSE: &str = "false";

/// Labels of `request_total` and `response_latency_ms`, hashed once when built (a request's
/// three lookups share the hash).
pub type TrafficLabels = Hashed<Traffic>;

/// The label values of [`TrafficLabels`]. Empty values are left out of the exposition (`dst_*`
/// inbound, the workload label when unknown), as Linkerd does.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Traffic {
    pod: Pod,
    direction: &'static str,
    /// Outbound `<service>.<namespace>` (the service addressed), inbound `:<port>`; never the
    /// request's Host (unbounded).
    authority: LabelValue,
    /// Outbound: the namespace and name of the service the request went to (a TrafficSplit's
    /// backend, not its apex). Empty inbound.
    dst_namespace: LabelValue,
    dst_service: LabelValue,
    /// `true`: inbound, the client presented a mesh identity over mTLS; outbound, the request
    /// went to a meshed endpoint over mTLS.
    tls: &'static str,
    /// Inbound: the client's SPIFFE ID (empty when none).
    client_id: LabelValue,
    /// Outbound: the endpoint the request went to (`None` when none was reached).
    dst: Option<Arc<DstEndpoint>>,
}

/// Labels of `response_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ResponseLabels {
    traffic: TrafficLabels,
    classification: &'static str,
    status_code: u16,
    /// The gRPC status code, for gRPC responses only.
    grpc_status: Option<u16>,
}

fn encode_pair(
    encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    key: &str,
    value: &str,
) -> Result<(), std::fmt::Error> {
    if value.is_empty() {
        return Ok(());
    }
    prometheus_client::encoding::EncodeLabel::encode(&(key, value), encoder.encode_label())
}

impl EncodeLabelSet for Traffic {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        encode_pair(encoder, "direction", self.direction)?;
        encode_pair(encoder, "authority", self.authority.as_str())?;
        encode_pair(encoder, "dst_namespace", self.dst_namespace.as_str())?;
        encode_pair(encoder, "dst_service", self.dst_service.as_str())?;
        if let Some(dst) = &self.dst {
            encode_pair(encoder, "dst_pod", dst.pod.as_str())?;
            if let Some((kind, name)) = &dst.workload {
                encode_pair(encoder, kind.dst_label(), name.as_str())?;
            }
            encode_pair(encoder, "server_id", dst.server_id.as_str())?;
        }
        let pod = &self.pod.0;
        encode_pair(encoder, "namespace", &pod.namespace)?;
        encode_pair(encoder, "pod", &pod.pod)?;
        if let Some((kind, name)) = &pod.workload {
            encode_pair(encoder, kind.label(), name)?;
        }
        encode_pair(encoder, "tls", self.tls)?;
        encode_pair(encoder, "client_id", self.client_id.as_str())?;
        Ok(())
    }
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.traffic.encode(encoder)?;
        encode_pair(encoder, "classification", self.classification)?;
        let mut code = itoa_u16(self.status_code);
        encode_pair(encoder, "status_code", code.as_str())?;
        if let Some(grpc) = self.grpc_status {
            code = itoa_u16(grpc);
            encode_pair(encoder, "grpc_status", code.as_str())?;
        }
        Ok(())
    }
}

fn itoa_u16(n: u16) -> LabelValue {
    use std::io::Write;
    let mut buf = [0u8; INLINE_CAP];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let len = match write!(cursor, "{n}") {
        Ok(()) => u8::try_from(cursor.position()).unwrap_or(0),
        Err(_) => 0,
    };
    LabelValue::Inline { len, buf }
}

/// A response's outcome, for `response_total` (see [`crate::classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: http::StatusCode,
    pub grpc_status: Option<u16>,
    pub classification: &'static str,
}

impl Metrics {
    /// The labels of a request of `direction` to `authority`; `dst` is the destination
    /// service's `(namespace, name)` outbound. No identities (`tls="false"`): see
    /// [`Metrics::inbound_traffic`] and [`Metrics::outbound_traffic`].
    pub fn traffic(
        &self,
        direction: &'static str,
        authority: LabelValue,
        dst: Option<(LabelValue, LabelValue)>,
    ) -> TrafficLabels {
        Hashed::new(self.traffic_values(direction, authority, dst))
    }

    fn traffic_values(
        &self,
        direction: &'static str,
        authority: LabelValue,
        dst: Option<(LabelValue, LabelValue)>,
    ) -> Traffic {
        let (dst_namespace, dst_service) = dst.unwrap_or_default();
        Traffic {
            pod: self.pod.clone(),
            direction,
            authority,
            dst_namespace,
            dst_service,
            tls: TLS_FALSE,
            client_id: LabelValue::EMPTY,
            dst: None,
        }
    }

    /// The labels of an inbound request to `:<port>` from `client_id` (the mTLS peer's mesh
    /// identity; `None`: plaintext or no identity, `tls="false"`).
    pub fn inbound_traffic(
        &self,
        authority: LabelValue,
        client_id: Option<&Arc<str>>,
    ) -> TrafficLabels {
        let mut labels = self.traffic_values(INBOUND, authority, None);
        if let Some(id) = client_id {
            labels.tls = TLS_TRUE;
            labels.client_id = LabelValue::from(id);
        }
        Hashed::new(labels)
    }

    /// The labels of an outbound request to `authority`, sent to service `dst` and reached
    /// endpoint `endpoint` (`None` when the proxy answered without reaching one).
    pub fn outbound_traffic(
        &self,
        authority: LabelValue,
        dst: Option<(LabelValue, LabelValue)>,
        endpoint: Option<Arc<DstEndpoint>>,
    ) -> TrafficLabels {
        let mut labels = self.traffic_values(OUTBOUND, authority, dst);
        if let Some(ep) = endpoint {
            if ep.tls() {
                labels.tls = TLS_TRUE;
            }
            labels.dst = Some(ep);
        }
        Hashed::new(labels)
    }

    /// Counts a request in `request_total` and observes its time to response head, without the
    /// per-thread memo (the proxies count through [`Metrics::series`]).
    #[cfg(test)]
    pub fn compat_request(&self, labels: &TrafficLabels, latency: Duration) {
        count_compat_request(
            &self.request_total.get_or_create(labels),
            &self.response_latency_ms.get_or_create(labels),
            latency,
        );
    }

    /// Counts a finished response in `response_total`.
    pub fn compat_response(&self, traffic: TrafficLabels, outcome: Outcome) {
        self.response_counter(traffic, outcome).inc();
    }

    fn response_counter(&self, traffic: TrafficLabels, outcome: Outcome) -> Counter {
        self.response_total
            .get_or_create(&Hashed::new(ResponseLabels {
                traffic,
                classification: outcome.classification,
                status_code: outcome.status.as_u16(),
                grpc_status: outcome.grpc_status,
            }))
            .clone()
    }
}

// end #18

// Issue #20: a request's series, looked up once per label set and per thread.
//
// A proxied request counts in five series (`requests`, `request_duration_seconds`,
// `request_total`, `response_latency_ms`, `response_total`). Looking each up in its family
// hashes the labels, takes the family's lock, probes its map and compares every label: about
// 3,000 instructions a request, a tenth of a proxied request's (counted, docs/benchmarks.md).
// Requests of a connection mostly repeat the same labels, so the handles of the series (a
// reference to the same counter or histogram the family holds: the exposition is unchanged)
// are kept per thread, keyed by what the labels are built from, and a request with the same
// key reuses them: a few pointer comparisons instead of five lookups.

/// What a request's series are built from; equal keys (of one [`Metrics`]) build equal labels.
/// The caller's label builder must be a function of these fields alone.
#[derive(Clone, Copy, Debug)]
pub struct SeriesKey<'a> {
    pub direction: &'static str,
    pub authority: &'a LabelValue,
    pub route: &'a LabelValue,
    pub backend: &'a LabelValue,
    pub status_class: &'static str,
    /// Outbound: the endpoint reached (compared by identity: the same `Arc` from the config).
    pub endpoint: Option<&'a Arc<DstEndpoint>>,
    /// Inbound: the client's mesh identity.
    pub client: Option<&'a Arc<str>>,
}

/// A memoized key (owning its values, so an `Arc` compared by identity stays alive).
struct OwnedSeriesKey {
    metrics: u64,
    direction: &'static str,
    authority: LabelValue,
    route: LabelValue,
    backend: LabelValue,
    status_class: &'static str,
    endpoint: Option<Arc<DstEndpoint>>,
    client: Option<Arc<str>>,
}

impl OwnedSeriesKey {
    fn new(metrics: u64, key: &SeriesKey<'_>) -> Self {
        OwnedSeriesKey {
            metrics,
            direction: key.direction,
            authority: key.authority.clone(),
            route: key.route.clone(),
            backend: key.backend.clone(),
            status_class: key.status_class,
            endpoint: key.endpoint.cloned(),
            client: key.client.cloned(),
        }
    }

    fn matches(&self, metrics: u64, key: &SeriesKey<'_>) -> bool {
        let endpoint = match (&self.endpoint, key.endpoint) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.metrics == metrics
            && endpoint
            && self.status_class == key.status_class
            && self.direction == key.direction
            && self.authority == *key.authority
            && self.route == *key.route
            && self.backend == *key.backend
            && self.client.as_ref() == key.client
    }
}

/// Counts a request in `requests` and observes its latency, in seconds, in
/// `request_duration_seconds`.
fn count_request(requests: &Counter, duration: &Histogram, latency: Duration) {
    requests.inc();
    duration.observe(latency.as_secs_f64());
}

/// Counts a request in `request_total` and observes its latency, in milliseconds (Linkerd's
/// unit), in `response_latency_ms`.
fn count_compat_request(request_total: &Counter, latency_ms: &Histogram, latency: Duration) {
    request_total.inc();
    latency_ms.observe(latency.as_secs_f64() * 1000.0);
}

/// How many series a thread keeps (replaced in turn when full).
const SERIES_MEMO: usize = 16;

/// A response outcome's `response_total` counters kept per series (more are looked up).
const RESPONSES_MEMO: usize = 4;

#[derive(Default)]
struct SeriesMemo {
    entries: Vec<(OwnedSeriesKey, Series)>,
    next: usize,
}

thread_local! {
    static SERIES: RefCell<SeriesMemo> = RefCell::new(SeriesMemo::default());
}

/// The series of one request's labels: counting through it is counting in the families.
#[derive(Clone)]
pub struct Series(Arc<SeriesHandles>);

struct SeriesHandles {
    requests: Counter,
    latency: Histogram,
    request_total: Counter,
    response_latency_ms: Histogram,
    traffic: TrafficLabels,
    responses: Mutex<Vec<(Outcome, Counter)>>,
}

impl Series {
    /// Counts the request (its response head is ready) and observes its latency: `requests`
    /// and `request_duration_seconds`, `request_total` and `response_latency_ms`.
    pub fn observe(&self, latency: Duration) {
        let h = &self.0;
        count_request(&h.requests, &h.latency, latency);
        count_compat_request(&h.request_total, &h.response_latency_ms, latency);
    }

    /// Counts the finished response in `response_total`.
    pub fn respond(&self, metrics: &Metrics, outcome: Outcome) {
        let h = &self.0;
        let Ok(mut responses) = h.responses.lock() else {
            return metrics.compat_response(h.traffic.clone(), outcome);
        };
        if let Some((_, counter)) = responses.iter().find(|(o, _)| *o == outcome) {
            counter.inc();
            return;
        }
        let counter = metrics.response_counter(h.traffic.clone(), outcome);
        counter.inc();
        if responses.len() < RESPONSES_MEMO {
            responses.push((outcome, counter));
        }
    }
}

impl Metrics {
    /// The series of a request (see [`Series`]), built by `labels` unless this thread has them
    /// for an equal `key` already. `labels` must build what `key` names: the request's labels
    /// and its Linkerd-compatible traffic labels.
    pub fn series(
        &self,
        key: SeriesKey<'_>,
        labels: impl FnOnce() -> (RequestLabels, TrafficLabels),
    ) -> Series {
        let found = SERIES
            .try_with(|memo| {
                let memo = memo.try_borrow().ok()?;
                memo.entries
                    .iter()
                    .find(|(k, _)| k.matches(self.id, &key))
                    .map(|(_, s)| s.clone())
            })
            .ok()
            .flatten();
        if let Some(series) = found {
            return series;
        }
        let (request, traffic) = labels();
        debug_assert!(
            request.direction == key.direction
                && request.authority == *key.authority
                && request.route == *key.route
                && request.backend == *key.backend
                && request.status_class == key.status_class,
            "a series key names other labels than its builder's"
        );
        let series = self.build_series(request, traffic);
        let _ = SERIES.try_with(|memo| {
            let Ok(mut memo) = memo.try_borrow_mut() else {
                return;
            };
            let entry = (OwnedSeriesKey::new(self.id, &key), series.clone());
            if memo.entries.len() < SERIES_MEMO {
                memo.entries.push(entry);
            } else {
                let i = memo.next % SERIES_MEMO;
                memo.next = i + 1;
                if let Some(slot) = memo.entries.get_mut(i) {
                    *slot = entry;
                }
            }
        });
        series
    }

    /// The series of `request` and `traffic`, looked up in the families (not memoized).
    fn build_series(&self, request: RequestLabels, traffic: TrafficLabels) -> Series {
        let (requests, latency) = self.request_series(request);
        let request_total = self.request_total.get_or_create(&traffic).clone();
        let response_latency_ms = self.response_latency_ms.get_or_create(&traffic).clone();
        Series(Arc::new(SeriesHandles {
            requests,
            latency,
            request_total,
            response_latency_ms,
            traffic,
            responses: Mutex::new(Vec::new()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outbound request's series through [`Metrics::series`], built the way
    /// `outbound::record` builds them.
    fn outbound_series(
        m: &Metrics,
        authority: &LabelValue,
        status_class: &'static str,
        endpoint: Option<&Arc<DstEndpoint>>,
    ) -> Series {
        let route = LabelValue::from("r");
        let key = SeriesKey {
            direction: OUTBOUND,
            authority,
            route: &route,
            backend: &LabelValue::EMPTY,
            status_class,
            endpoint,
            client: None,
        };
        m.series(key, || {
            let request = RequestLabels {
                direction: OUTBOUND,
                authority: authority.clone(),
                route: route.clone(),
                backend: LabelValue::EMPTY,
                status_class,
                peer: endpoint.map_or(LabelValue::EMPTY, |e| e.server_id.clone()),
            };
            let traffic = m.outbound_traffic(authority.clone(), None, endpoint.cloned());
            (request, traffic)
        })
    }

    #[test]
    fn memoized_series_count_in_the_families_as_lookups_do() {
        let ok = Outcome {
            status: http::StatusCode::OK,
            grpc_status: None,
            classification: SUCCESS,
        };
        let a = Metrics::new();
        let b = Metrics::new();
        let server: Arc<str> = Arc::from("spiffe://cluster.local/ns/demo/sa/api");
        let api = Arc::new(DstEndpoint::new(Some(&server), "demo/api-0", ""));
        // The same endpoint rebuilt by a config push: another `Arc`, the same series.
        let api_again = Arc::new(DstEndpoint::new(Some(&server), "demo/api-0", ""));
        // More keys than a thread keeps, in turn, three times over: every request counts in its
        // own series whether its handles were kept or looked up again.
        let authorities: Vec<LabelValue> = (0..SERIES_MEMO + 3)
            .map(|i| LabelValue::Shared(Arc::from(format!("svc-{i}.demo"))))
            .collect();
        for _ in 0..3 {
            for authority in &authorities {
                let s = outbound_series(&a, authority, "2xx", Some(&api));
                s.observe(Duration::from_millis(1));
                s.respond(&a, ok);
            }
        }
        let hot = &authorities[0];
        for endpoint in [Some(&api), Some(&api_again), Some(&api), None] {
            outbound_series(&a, hot, "2xx", endpoint).observe(Duration::from_millis(2));
        }
        // A 5xx is another series of `requests`; the same one of `request_total`.
        let failed = outbound_series(&a, hot, "5xx", Some(&api));
        failed.observe(Duration::from_millis(3));
        failed.respond(
            &a,
            Outcome {
                status: http::StatusCode::BAD_GATEWAY,
                grpc_status: None,
                classification: FAILURE,
            },
        );
        // Another proxy's metrics on the same thread keep their own counts.
        outbound_series(&b, hot, "2xx", Some(&api)).observe(Duration::from_millis(1));

        let text = a.encode();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
                .to_string()
        };
        let id = "server_id=\"spiffe://cluster.local/ns/demo/sa/api\"";
        assert!(line("weft_proxy_requests_total{direction=\"outbound\",authority=\"svc-1.demo\",route=\"r\",backend=\"\",status_class=\"2xx\"").ends_with(" 3"), "{text}");
        assert!(line("weft_proxy_requests_total{direction=\"outbound\",authority=\"svc-0.demo\",route=\"r\",backend=\"\",status_class=\"2xx\",peer=\"spiffe").ends_with(" 6"), "{text}");
        assert!(line("weft_proxy_requests_total{direction=\"outbound\",authority=\"svc-0.demo\",route=\"r\",backend=\"\",status_class=\"2xx\",peer=\"\"}").ends_with(" 1"), "{text}");
        assert!(line("weft_proxy_requests_total{direction=\"outbound\",authority=\"svc-0.demo\",route=\"r\",backend=\"\",status_class=\"5xx\"").ends_with(" 1"), "{text}");
        assert!(line("weft_proxy_request_duration_seconds_count{direction=\"outbound\",authority=\"svc-0.demo\"").ends_with(" 8"), "{text}");
        let last = format!("svc-{}.demo", SERIES_MEMO + 2);
        assert!(
            line(&format!(
                "request_total{{direction=\"outbound\",authority=\"{last}\",dst_pod=\"api-0\",{id}"
            ))
            .ends_with(" 3"),
            "{text}"
        );
        assert!(line(&format!("request_total{{direction=\"outbound\",authority=\"svc-0.demo\",dst_pod=\"api-0\",{id}")).ends_with(" 7"), "{text}");
        assert!(line(&format!("response_total{{direction=\"outbound\",authority=\"{last}\",dst_pod=\"api-0\",{id},tls=\"true\",classification=\"success\",status_code=\"200\"")).ends_with(" 3"), "{text}");
        assert!(line(&format!("response_total{{direction=\"outbound\",authority=\"svc-0.demo\",dst_pod=\"api-0\",{id},tls=\"true\",classification=\"failure\",status_code=\"502\"")).ends_with(" 1"), "{text}");
        assert!(line("response_latency_ms_count{direction=\"outbound\",authority=\"svc-0.demo\",tls=\"false\"}").ends_with(" 1"), "{text}");
        let other = b.encode();
        assert!(other.contains("weft_proxy_request_duration_seconds_count{direction=\"outbound\",authority=\"svc-0.demo\",route=\"r\",backend=\"\"} 1"), "{other}");
        assert!(!other.contains("svc-1.demo"), "{other}");
    }

    #[test]
    fn label_values_name_one_series_whatever_their_variant() {
        let m = Metrics::new();
        for authority in [
            LabelValue::Shared(Arc::from("api.demo")),
            // Another `Arc` with the same text: the same series.
            LabelValue::Shared(Arc::from(String::from("api.demo"))),
            LabelValue::Static("api.demo"),
            LabelValue::inline("api.demo"),
        ] {
            m.request(
                RequestLabels {
                    direction: OUTBOUND,
                    authority,
                    route: "r".into(),
                    backend: "api".into(),
                    status_class: "2xx",
                    peer: LabelValue::EMPTY,
                },
                Duration::from_millis(1),
            );
        }
        m.request(
            RequestLabels {
                direction: INBOUND,
                authority: LabelValue::port(65535),
                route: "default".into(),
                backend: LabelValue::EMPTY,
                status_class: "2xx",
                peer: LabelValue::inline("a-rather-long-spiffe-identity-that-does-not-fit"),
            },
            Duration::from_millis(1),
        );
        let text = m.encode();
        assert!(text.contains("weft_proxy_requests_total{direction=\"outbound\",authority=\"api.demo\",route=\"r\",backend=\"api\",status_class=\"2xx\",peer=\"\"} 4"), "{text}");
        assert!(text.contains("weft_proxy_requests_total{direction=\"inbound\",authority=\":65535\",route=\"default\",backend=\"\",status_class=\"2xx\",peer=\"a-rather-long-spiffe-identity-that-does-not-fit\"} 1"), "{text}");
        assert!(text.contains("weft_proxy_request_duration_seconds_count{direction=\"outbound\",authority=\"api.demo\",route=\"r\",backend=\"api\"} 4"), "{text}");
    }

    #[test]
    fn encodes_requests_and_info() {
        let m = Metrics::new();
        m.set_config_version("abc");
        m.set_config_version("def");
        m.inc_nack();
        m.set_cert_expiry(1_700_000_000);
        m.request(
            RequestLabels {
                direction: OUTBOUND,
                authority: LabelValue::Shared(Arc::from("api.demo")),
                route: "default".into(),
                backend: "api".into(),
                status_class: status_class(http::StatusCode::OK),
                peer: LabelValue::EMPTY,
            },
            Duration::from_millis(3),
        );
        m.authorization("demo/tt", false, "http");
        {
            let _g = m.tcp_open(INBOUND, ":9000");
            m.tcp_bytes(INBOUND, ":9000", 10, 20);
        }
        let text = m.encode();
        assert!(
            text.contains("weft_proxy_config_info{version=\"def\"} 1"),
            "{text}"
        );
        assert!(!text.contains("version=\"abc\""), "{text}");
        assert!(text.contains("weft_proxy_config_nacks_total 1"), "{text}");
        assert!(text.contains("weft_proxy_requests_total{direction=\"outbound\",authority=\"api.demo\",route=\"default\",backend=\"api\",status_class=\"2xx\",peer=\"\"} 1"), "{text}");
        assert!(text.contains("decision=\"deny\""), "{text}");
        assert!(
            text.contains(
                "weft_proxy_tcp_open_connections{direction=\"inbound\",authority=\":9000\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("weft_proxy_identity_cert_expiry_timestamp_seconds 1700000000"),
            "{text}"
        );
    }

    #[test]
    fn linkerd_families_carry_the_pod_and_leave_empty_labels_out() {
        let m = Metrics::for_pod(PodMeta::new(
            "demo",
            "web-5d8f7c9b4-x2k9p",
            Some("deployment/web"),
        ));
        let inbound = m.traffic(INBOUND, LabelValue::port(8080), None);
        m.compat_request(&inbound, Duration::from_millis(7));
        m.compat_response(
            inbound.clone(),
            Outcome {
                status: http::StatusCode::OK,
                grpc_status: Some(14),
                classification: FAILURE,
            },
        );
        let outbound = m.traffic(
            OUTBOUND,
            "api.demo".into(),
            Some(("demo".into(), "api-v2".into())),
        );
        m.compat_response(
            outbound,
            Outcome {
                status: http::StatusCode::INTERNAL_SERVER_ERROR,
                grpc_status: None,
                classification: FAILURE,
            },
        );
        let text = m.encode();
        let pod = "namespace=\"demo\",pod=\"web-5d8f7c9b4-x2k9p\",deployment=\"web\",tls=\"false\"";
        assert!(
            text.contains(&format!(
                "request_total{{direction=\"inbound\",authority=\":8080\",{pod}}} 1"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("response_total{{direction=\"inbound\",authority=\":8080\",{pod},classification=\"failure\",status_code=\"200\",grpc_status=\"14\"}} 1")), "{text}");
        assert!(text.contains(&format!("response_total{{direction=\"outbound\",authority=\"api.demo\",dst_namespace=\"demo\",dst_service=\"api-v2\",{pod},classification=\"failure\",status_code=\"500\"}} 1")), "{text}");
        // 7 ms: in the 10 ms bucket, not the 5 ms one (Linkerd's bounds, in milliseconds).
        assert!(text.contains(&format!("response_latency_ms_bucket{{le=\"5.0\",direction=\"inbound\",authority=\":8080\",{pod}}} 0")), "{text}");
        assert!(text.contains(&format!("response_latency_ms_bucket{{le=\"10.0\",direction=\"inbound\",authority=\":8080\",{pod}}} 1")), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(
            text.contains("weft_build_info{component=\"proxy\",version=\""),
            "{text}"
        );
        // One exposition: a single trailing EOF.
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }

    #[test]
    fn caller_and_callee_labels_name_identities_pods_and_workloads() {
        let m = Metrics::for_pod(PodMeta::new("demo", "web-0", Some("deployment/web")));
        let client: Arc<str> = Arc::from("spiffe://cluster.local/ns/demo/sa/batch");
        let meshed = m.inbound_traffic(LabelValue::port(8080), Some(&client));
        m.compat_request(&meshed, Duration::from_millis(1));
        let plain = m.inbound_traffic(LabelValue::port(8080), None);
        m.compat_request(&plain, Duration::from_millis(1));
        let server: Arc<str> = Arc::from("spiffe://cluster.local/ns/demo/sa/api");
        // The endpoint's labels, built once from its config, shared by every request.
        let api = Arc::new(DstEndpoint::new(
            Some(&server),
            "demo/api-v1-7c9b4d5f8-x2k9p",
            "deployment/api-v1",
        ));
        let db = Arc::new(DstEndpoint::new(None, "demo/db-0", "statefulset/db"));
        let dst = || Some((LabelValue::from("demo"), LabelValue::from("api-v1")));
        for _ in 0..2 {
            let out = m.outbound_traffic("api.demo".into(), dst(), Some(api.clone()));
            m.compat_request(&out, Duration::from_millis(1));
        }
        // The same endpoint rebuilt by a config push names the same series.
        let again = Arc::new(DstEndpoint::new(
            Some(&server),
            "demo/api-v1-7c9b4d5f8-x2k9p",
            "deployment/api-v1",
        ));
        m.compat_request(
            &m.outbound_traffic("api.demo".into(), dst(), Some(again)),
            Duration::from_millis(1),
        );
        m.compat_request(
            &m.outbound_traffic("db.demo".into(), None, Some(db)),
            Duration::from_millis(1),
        );
        let text = m.encode();
        let me = "namespace=\"demo\",pod=\"web-0\",deployment=\"web\"";
        assert!(text.contains(&format!("request_total{{direction=\"inbound\",authority=\":8080\",{me},tls=\"true\",client_id=\"spiffe://cluster.local/ns/demo/sa/batch\"}} 1")), "{text}");
        assert!(
            text.contains(&format!(
                "request_total{{direction=\"inbound\",authority=\":8080\",{me},tls=\"false\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("request_total{{direction=\"outbound\",authority=\"api.demo\",dst_namespace=\"demo\",dst_service=\"api-v1\",dst_pod=\"api-v1-7c9b4d5f8-x2k9p\",dst_deployment=\"api-v1\",server_id=\"spiffe://cluster.local/ns/demo/sa/api\",{me},tls=\"true\"}} 3")), "{text}");
        assert!(text.contains(&format!("request_total{{direction=\"outbound\",authority=\"db.demo\",dst_pod=\"db-0\",dst_statefulset=\"db\",{me},tls=\"false\"}} 1")), "{text}");
    }

    #[test]
    fn endpoint_labels_are_bounded_and_fall_back_to_the_pod_name_rule() {
        let e = DstEndpoint::new(None, "demo/web-5d8f7c9b4-x2k9p", "");
        assert_eq!(e.pod.as_str(), "web-5d8f7c9b4-x2k9p");
        assert_eq!(
            e.workload,
            Some((WorkloadKind::Deployment, LabelValue::from("web")))
        );
        assert!(!e.tls());
        // Odd names from a hostile config are left out, not exported.
        let bad = DstEndpoint::new(None, "demo/Bad Pod\"", "deployment/Bad\"");
        assert_eq!(bad.pod.as_str(), "");
        assert_eq!(bad.workload, None);
    }

    #[test]
    fn the_workload_label_comes_from_the_injector_or_a_deployment_pod_name() {
        let w = |ns: &str, pod: &str, env: Option<&str>| PodMeta::new(ns, pod, env).workload;
        assert_eq!(
            w("db", "db-0", Some("StatefulSet/db")),
            Some((WorkloadKind::StatefulSet, "db".into()))
        );
        assert_eq!(
            w("d", "web-5d8f7c9b4-x2k9p", None),
            Some((WorkloadKind::Deployment, "web".into()))
        );
        // Unreadable env: the pod-name rule, else nothing.
        assert_eq!(
            w("d", "web-5d8f7c9b4-x2k9p", Some("pod/web")),
            Some((WorkloadKind::Deployment, "web".into()))
        );
        assert_eq!(w("d", "api-v1", Some("deployment/Bad Name")), None);
        assert_eq!(w("d", "api-v1", None), None);
        assert_eq!(w("d", "db-0", None), None);
    }
}
