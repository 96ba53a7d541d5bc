//! Prometheus metrics of the data plane (and a few set by the control and identity parts).
//!
//! Cardinality is bounded: labels carry service authorities, route names, backend service
//! names, authorization names, status classes and SPIFFE identities (all bounded by the cluster's
//! configuration), never pod IPs, paths or request ids.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
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
        self.as_str() == other.as_str()
    }
}

impl Eq for LabelValue {}

impl Hash for LabelValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
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
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
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
        let mut registry = Registry::with_prefix("weft_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
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
        Metrics {
            registry,
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

    /// Counts a request and observes its latency. Building `labels` from config `Arc<str>`s and
    /// static strings keeps this free of allocations once the series exist.
    pub fn request(&self, labels: RequestLabels, latency: Duration) {
        self.requests.get_or_create(&labels).inc();
        let RequestLabels {
            direction,
            authority,
            route,
            backend,
            ..
        } = labels;
        self.latency
            .get_or_create(&LatencyLabels {
                direction,
                authority,
                route,
                backend,
            })
            .observe(latency.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_name_one_series_whatever_their_variant() {
        let m = Metrics::new();
        for authority in [
            LabelValue::Shared(Arc::from("api.demo")),
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
        assert!(text.contains("weft_proxy_requests_total{direction=\"outbound\",authority=\"api.demo\",route=\"r\",backend=\"api\",status_class=\"2xx\",peer=\"\"} 3"), "{text}");
        assert!(text.contains("weft_proxy_requests_total{direction=\"inbound\",authority=\":65535\",route=\"default\",backend=\"\",status_class=\"2xx\",peer=\"a-rather-long-spiffe-identity-that-does-not-fit\"} 1"), "{text}");
        assert!(text.contains("weft_proxy_request_duration_seconds_count{direction=\"outbound\",authority=\"api.demo\",route=\"r\",backend=\"api\"} 3"), "{text}");
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
}
