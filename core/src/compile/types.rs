//! The compiler's output types: weft's own mirror of `weft.proxy.v1` (see
//! `proxy-api/proto/weft/proxy/v1/discovery.proto`), serialisable for `weft compile` and
//! converted to the proto types at the edge (`super::proto`).

use std::net::IpAddr;

use serde::Serialize;
use sha2::{Digest, Sha256};
pub use weft_common::SpiffeId;

/// The application protocol of a port (proto `Protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The proxy detects HTTP/1, HTTP/2 or opaque TCP per connection.
    #[default]
    Detect,
    Http1,
    Http2,
    Grpc,
    Opaque,
    Udp,
}

/// Traffic allowed when no TrafficTarget names the destination (proto `DefaultPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Everything, meshed or not.
    #[default]
    Allow,
    /// Only clients with a mesh identity.
    Mesh,
    /// Only what authorizations allow.
    Deny,
}

impl DefaultPolicy {
    /// Parses the value of `weft.io/default-inbound-policy`.
    pub fn parse(s: &str) -> Option<DefaultPolicy> {
        match s.trim() {
            "allow" => Some(DefaultPolicy::Allow),
            "mesh" => Some(DefaultPolicy::Mesh),
            "deny" => Some(DefaultPolicy::Deny),
            _ => None,
        }
    }
}

/// One HTTP request match. `path_regex` is the user's regex verbatim: the proxy compiles it
/// as `^(?:<re>)` (anchored at the start of the path only); header value regexes are compiled
/// as `^(?:<re>)$`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HttpMatch {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path_regex: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Gateway API `queryParams`: all must match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HeaderMatch {
    /// Lower-case.
    pub name: String,
    pub value_regex: String,
}

/// A query parameter match (proto `QueryParamMatch`): the first parameter called `name` (exact,
/// case-sensitive) must match `value_regex` whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct QueryParamMatch {
    pub name: String,
    pub value_regex: String,
}

/// What may reach a pod (proto `InboundPolicy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InboundPolicy {
    pub identity: String,
    pub default_policy: DefaultPolicy,
    pub ports: Vec<InboundPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InboundPort {
    pub port: u16,
    pub protocol: Protocol,
    /// Only `authorizations` allow traffic on this port, whatever the default.
    pub restricted: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorizations: Vec<Authorization>,
    /// Load shedding and rate limits protecting the application on this port.
    #[serde(skip_serializing_if = "InboundLimits::is_unlimited")]
    pub limits: InboundLimits,
}

/// One TrafficTarget's grant on a port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Authorization {
    /// `<namespace>/<name>` of the TrafficTarget.
    pub name: String,
    /// Who is admitted. `weft compile` prints it in the deprecated untyped form, as `sources`
    /// ([`Clients::legacy_sources`]).
    #[serde(rename = "sources", serialize_with = "ser_legacy_sources")]
    pub clients: Clients,
    pub all_traffic: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<HttpMatch>,
}

/// Who an authorization admits: a typed choice, not strings with magic values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clients {
    /// Clients presenting one of these mesh identities over mTLS (a TrafficTarget's sources),
    /// in the order of their string form, without duplicates.
    Mesh(Vec<SpiffeId>),
    /// The kubelet's plaintext HTTP probes: any client, authenticated or not, limited by the
    /// authorization's routes to the pod's probe paths.
    KubeletProbes,
}

impl Default for Clients {
    /// No client.
    fn default() -> Self {
        Clients::Mesh(Vec::new())
    }
}

/// The deprecated untyped source that admitted any client (proto `Authorization.sources`,
/// which proxies of the previous minor version read): the form of [`Clients::KubeletProbes`].
pub const LEGACY_ANY_CLIENT: &str = "*";

impl Clients {
    /// Mesh clients with these identities, sorted by their string form and deduplicated.
    pub fn mesh(ids: impl IntoIterator<Item = SpiffeId>) -> Clients {
        let mut ids: Vec<(String, SpiffeId)> =
            ids.into_iter().map(|i| (i.to_string(), i)).collect();
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        ids.dedup_by(|a, b| a.0 == b.0);
        Clients::Mesh(ids.into_iter().map(|(_, i)| i).collect())
    }

    /// Whether no client is admitted.
    pub fn is_empty(&self) -> bool {
        matches!(self, Clients::Mesh(ids) if ids.is_empty())
    }

    /// The one mapping to the deprecated untyped form: the SPIFFE IDs, or
    /// [`LEGACY_ANY_CLIENT`] for the kubelet's probes.
    pub fn legacy_sources(&self) -> Vec<String> {
        match self {
            Clients::Mesh(ids) => ids.iter().map(SpiffeId::to_string).collect(),
            Clients::KubeletProbes => vec![LEGACY_ANY_CLIENT.to_string()],
        }
    }
}

fn ser_legacy_sources<S: serde::Serializer>(c: &Clients, s: S) -> Result<S::Ok, S::Error> {
    c.legacy_sources().serialize(s)
}

/// Where requests to one service go (proto `OutboundService`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OutboundService {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<OutboundPort>,
    pub policy: TrafficPolicy,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OutboundPort {
    pub port: u16,
    pub protocol: Protocol,
    /// First matching route wins; always ends with the catch-all `default` route.
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Route {
    /// `split:<namespace>/<name>` or `default`.
    pub name: String,
    /// Empty: every request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    pub backends: Vec<WeightedBackend>,
    /// Applied in order to requests taking this route (Gateway API rule filters).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// Non-zero: the proxy answers with this status itself and `backends` is empty (the 404 of
    /// a Gateway API route for requests that match none of its rules).
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub direct_status: u16,
    /// Gateway API `timeouts`; `None`: the service's [`TrafficPolicy`] applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

/// One Gateway API filter in the proxy's form (proto `RouteFilter`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(RequestRedirect),
    UrlRewrite(UrlRewrite),
}

/// Header edits: remove, then set, then add (proto `HeaderModifier`). Names are lower-case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderModifier {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderValue {
    /// Lower-case.
    pub name: String,
    pub value: String,
}

/// Answer with a redirect (proto `RequestRedirect`); empty or zero fields keep the request's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestRedirect {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// 301, 302, 303, 307 or 308; 0 means 302.
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub status_code: u16,
}

/// Rewrite before forwarding (proto `UrlRewrite`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UrlRewrite {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// A path rewrite (proto `PathModifier`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replace `matched_prefix` (the PathPrefix of the match that selected the route) with
    /// `replacement`, on segment boundaries.
    ReplacePrefixMatch {
        matched_prefix: String,
        replacement: String,
    },
}

/// Gateway API route `timeouts` (proto `RouteTimeouts`); 0 means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouteTimeouts {
    pub request_ms: u64,
    pub backend_request_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WeightedBackend {
    pub service: String,
    /// Relative weight; 0 receives no traffic.
    pub weight: u64,
    /// Name of the EndpointSet resource with the backend's endpoints for this port; empty
    /// when the backend cannot be used (then `unavailable_reason` says why).
    pub endpoint_set: String,
    /// Set when the backend cannot be used (its Service does not exist, or lacks this port): it
    /// keeps its weight and the proxy answers its share of requests 503 with this reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unavailable_reason: String,
    /// Applied to requests sent to this backend after the route's (Gateway API backendRef
    /// filters).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// Status for requests chosen while unavailable; 0 means 503 (SMI). Gateway API: 500.
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub unavailable_status: u16,
}

/// Timeouts, retries, failure accrual and load shedding from Service and Namespace annotations
/// (proto `TrafficPolicy`; docs/reliability.md). Always the effective values: the defaults of
/// [`weft_common::reliability`] where nothing is annotated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrafficPolicy {
    /// 0: no timeout.
    pub request_timeout_ms: u64,
    /// 0: no retries.
    pub max_retries: u32,
    pub retry_budget_ratio: f64,
    pub retry_non_idempotent: bool,
    pub retry_budget_min_per_second: u32,
    /// 0: none.
    pub per_try_timeout_ms: u64,
    pub retry_statuses: Vec<StatusRange>,
    pub retry_grpc_codes: Vec<u32>,
    pub failure_accrual: FailureAccrual,
    /// 0: unlimited.
    pub max_concurrent_requests: u32,
    pub max_pending_requests: u32,
    /// 0: unlimited.
    pub max_requests_per_endpoint: u32,
    pub queue_timeout_ms: u64,
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        use weft_common::reliability as d;
        TrafficPolicy {
            request_timeout_ms: 0,
            max_retries: 0,
            retry_budget_ratio: d::RETRY_BUDGET_RATIO,
            retry_non_idempotent: false,
            retry_budget_min_per_second: d::RETRY_BUDGET_MIN_PER_SECOND,
            per_try_timeout_ms: 0,
            retry_statuses: StatusRange::list(d::RETRY_STATUSES),
            retry_grpc_codes: d::RETRY_GRPC_CODES.to_vec(),
            failure_accrual: FailureAccrual::default(),
            max_concurrent_requests: d::MAX_CONCURRENT_REQUESTS,
            max_pending_requests: d::MAX_PENDING_REQUESTS,
            max_requests_per_endpoint: d::MAX_REQUESTS_PER_ENDPOINT,
            queue_timeout_ms: d::QUEUE_TIMEOUT_MS,
        }
    }
}

/// An inclusive range of HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct StatusRange {
    pub min: u16,
    pub max: u16,
}

impl StatusRange {
    pub fn list(ranges: &[(u16, u16)]) -> Vec<StatusRange> {
        ranges
            .iter()
            .map(|&(min, max)| StatusRange { min, max })
            .collect()
    }
}

/// Per-endpoint circuit breaking (proto `FailureAccrual`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureAccrual {
    /// 0: never by consecutive failures.
    pub consecutive_failures: u32,
    /// 0: never by success rate.
    pub min_success_rate: f64,
    pub window_ms: u64,
    pub min_requests: u32,
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub failure_statuses: Vec<StatusRange>,
    pub failure_grpc_codes: Vec<u32>,
}

impl Default for FailureAccrual {
    fn default() -> Self {
        use weft_common::reliability as d;
        FailureAccrual {
            consecutive_failures: d::ACCRUAL_CONSECUTIVE_FAILURES,
            min_success_rate: d::ACCRUAL_MIN_SUCCESS_RATE,
            window_ms: d::ACCRUAL_WINDOW_MS,
            min_requests: d::ACCRUAL_MIN_REQUESTS,
            min_backoff_ms: d::ACCRUAL_MIN_BACKOFF_MS,
            max_backoff_ms: d::ACCRUAL_MAX_BACKOFF_MS,
            failure_statuses: StatusRange::list(d::FAILURE_STATUSES),
            failure_grpc_codes: d::FAILURE_GRPC_CODES.to_vec(),
        }
    }
}

/// Load shedding and local rate limits of an inbound port (proto `InboundLimits`), per pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InboundLimits {
    /// 0: unlimited.
    pub max_concurrent_requests: u32,
    pub max_pending_requests: u32,
    /// 0: the default ([`weft_common::reliability::QUEUE_TIMEOUT_MS`]).
    pub queue_timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_identity: Option<RateLimit>,
}

impl InboundLimits {
    /// Whether nothing is limited (the proto then carries no `limits`).
    pub fn is_unlimited(&self) -> bool {
        self.max_concurrent_requests == 0
            && self.rate_limit.is_none()
            && self.rate_limit_per_identity.is_none()
    }
}

/// A token bucket.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RateLimit {
    pub requests_per_second: f64,
    /// 0: one second's worth.
    pub burst: u32,
}

/// Default `weft.io/retry-budget`.
pub const DEFAULT_RETRY_BUDGET: f64 = weft_common::reliability::RETRY_BUDGET_RATIO;

/// The endpoints of one service port (proto `EndpointSet`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    /// The endpoints that are meshed pods (a proxy reaches them over mTLS at `inbound_port`).
    pub fn meshed(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| !e.identity.is_empty() && e.inbound_port != 0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The application's port on the pod (the backend's targetPort).
    pub port: u16,
    /// SPIFFE identity of the pod's proxy; empty when not meshed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// Set for meshed pods: connect over mTLS to `ip:inbound_port`.
    #[serde(skip_serializing_if = "is_zero")]
    pub inbound_port: u16,
    /// `<namespace>/<pod>`, when known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// `<kind>/<name>` of the pod's owning workload ([`crate::inject::workload_of`]), when known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workload: String,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

/// The payload of a resource. Resources live behind `Arc`s (one per resource), so the size of
/// the largest variant (an OutboundService with its TrafficPolicy) costs nothing per copy.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)]
pub enum ResourceKind {
    Inbound(InboundPolicy),
    Outbound(OutboundService),
    Endpoints(EndpointSet),
}

/// A named, versioned piece of a proxy's config (proto `Resource`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VersionedResource {
    pub name: String,
    /// Content hash of `resource` (16 hex characters).
    pub version: String,
    pub resource: ResourceKind,
}

impl VersionedResource {
    /// Wraps a resource, computing its version from its canonical encoding.
    pub fn new(name: String, resource: ResourceKind) -> VersionedResource {
        let version = content_version(&resource);
        VersionedResource {
            name,
            version,
            resource,
        }
    }
}

/// The version of a resource: sha256 of its canonical encoding (its serde JSON: struct fields in
/// declaration order, lists in the compiler's sorted order, no maps with unordered keys), as the
/// first 16 hex characters. The wire encoding is the operator's business and is done once, to
/// send the resource.
pub fn content_version(resource: &ResourceKind) -> String {
    let mut h = Sha256::new();
    // Serialising these plain data types cannot fail; an empty encoding would still be a
    // deterministic version.
    h.update(serde_json::to_vec(resource).unwrap_or_default());
    short_hex(&h.finalize())
}

pub(crate) fn short_hex(bytes: &[u8]) -> String {
    let mut s = hex::encode(bytes);
    s.truncate(16);
    s
}

// The Discovery protocol's resource names: their home is `weft_common::names` (shared with
// `weft-proxy-api`); these adapters take the core's (namespace, service) argument order.

/// Resource name of a service's OutboundService (`outbound:<service>.<namespace>`).
pub fn outbound_name(namespace: &str, service: &str) -> String {
    weft_common::names::outbound_name(service, namespace)
}

/// The consumer variant of `outbound_name(namespace, service)` for proxies in namespace
/// `consumer` (Gateway API consumer routes): `outbound:<svc>.<ns>@<consumer>`.
pub fn consumer_outbound_name(namespace: &str, service: &str, consumer: &str) -> String {
    format!("{}@{consumer}", outbound_name(namespace, service))
}

/// Resource name of a service port's EndpointSet (`endpoints:<service>.<namespace>:<port>`).
pub fn endpoints_name(namespace: &str, service: &str, port: u16) -> String {
    weft_common::names::endpoints_name(service, namespace, u32::from(port))
}

/// Resource name of the pod's InboundPolicy.
pub const INBOUND_NAME: &str = weft_common::names::INBOUND;

/// SPIFFE ID of a service account ([`weft_common::SpiffeId`]; not validated here: names come
/// from the API server).
pub fn spiffe(trust_domain: &str, namespace: &str, service_account: &str) -> SpiffeId {
    SpiffeId {
        trust_domain: trust_domain.to_owned(),
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
    }
}

/// [`spiffe`] in its string form, as the proxy config carries endpoint and proxy identities.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    spiffe(trust_domain, namespace, service_account).to_string()
}
