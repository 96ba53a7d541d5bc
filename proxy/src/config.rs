//! The proxy's own configuration types, converted once from the proxy API's resources.
//!
//! Proto types stay at the edge: a [`Store`] validates a whole resource set and either returns a
//! fully compiled [`Config`] (regexes compiled, endpoint sets resolved, lookup indexes built) or a
//! typed [`ConfigError`] naming the offending resource, so the control client can NACK and keep
//! the last good config. The store caches each converted resource by name and version, so a push
//! converts only what changed, and hands every config the live state of the services and
//! endpoints it names ([`crate::state`]): a config is a snapshot, not the state.
//! [`Config::from_resources`] converts a set from scratch (a fresh store). The live config is
//! shared as `tokio::sync::watch::Receiver<Arc<Config>>`.
//!
//! Decisions:
//! - A route backend that names an unknown endpoint set is accepted and has no endpoints: requests
//!   routed to it get `503` ("no endpoints"). Endpoints arrive as separate resources and may lag
//!   the route; rejecting the whole update would be less robust.
//! - A backend with an `unavailable_reason` (the operator could not resolve it) keeps its weight
//!   and never has endpoints: requests routed to it get its `unavailable_status` (`503` when 0;
//!   Gateway API routes say `500`) with that reason. Its share is never given to the other
//!   backends.
//! - Gateway API filters, `direct_status` and route timeouts are compiled here
//!   ([`crate::filter`]); a value the proxy cannot apply as written is a [`ConfigError`] (NACK),
//!   never half-applied.
//! - A missing `inbound` resource means the default inbound policy (allow).
//! - Unknown protocol enum values mean "detect"; `DEFAULT_POLICY_UNSPECIFIED` means allow; an
//!   unknown default-policy value fails closed (deny).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::{Serialize, Serializer};
use weft_common::SpiffeId;
use weft_proxy_api::v1;

pub use crate::accrual::{FailureAccrual, StatusSet};
use crate::balance::Load;
use crate::fast_map::FastMap;
use crate::filter::{
    self, Filter, HeaderModifier, PathModifier, Redirect, RouteTimeouts, UrlRewrite,
};
pub use crate::state::RetryBudget;
use crate::state::{EndpointView, ServiceView, StateBuilder, StateRegistry};

/// The application protocol of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect HTTP/1, HTTP/2 prior knowledge or opaque TCP per connection.
    #[default]
    Detect,
    Http1,
    Http2,
    Grpc,
    Opaque,
    Udp,
}

impl Protocol {
    fn from_proto(value: i32) -> Protocol {
        match v1::Protocol::try_from(value) {
            Ok(v1::Protocol::Detect) | Err(_) => Protocol::Detect,
            Ok(v1::Protocol::Http1) => Protocol::Http1,
            Ok(v1::Protocol::Http2) => Protocol::Http2,
            Ok(v1::Protocol::Grpc) => Protocol::Grpc,
            Ok(v1::Protocol::Opaque) => Protocol::Opaque,
            Ok(v1::Protocol::Udp) => Protocol::Udp,
        }
    }
}

/// What an inbound port allows when it is not restricted by authorizations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Everyone, meshed or not.
    #[default]
    Allow,
    /// Any client with a mesh identity (mTLS).
    Mesh,
    /// Nothing but what authorizations allow.
    Deny,
}

impl DefaultPolicy {
    fn from_proto(value: i32) -> DefaultPolicy {
        match v1::DefaultPolicy::try_from(value) {
            Ok(v1::DefaultPolicy::Unspecified) | Ok(v1::DefaultPolicy::Allow) => {
                DefaultPolicy::Allow
            }
            Ok(v1::DefaultPolicy::Mesh) => DefaultPolicy::Mesh,
            Ok(v1::DefaultPolicy::Deny) | Err(_) => DefaultPolicy::Deny,
        }
    }
}

fn ser_regex<S: Serializer>(re: &Option<Regex>, s: S) -> Result<S::Ok, S::Error> {
    match re {
        Some(re) => s.serialize_some(re.as_str()),
        None => s.serialize_none(),
    }
}

fn ser_regex_req<S: Serializer>(re: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(re.as_str())
}

fn ser_header_name<S: Serializer>(name: &http::HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

fn ser_methods<S: Serializer>(m: &Option<Vec<http::Method>>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        None => s.serialize_none(),
        Some(list) => s.collect_seq(list.iter().map(|m| m.as_str())),
    }
}

fn ser_duration_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

/// One HTTP match (one SMI HTTPRouteGroup match): every condition that is set must hold.
#[derive(Clone, Debug, Serialize)]
pub struct HttpMatch {
    pub name: Arc<str>,
    /// Compiled as `^(?:re)`: anchored at the start of the path only. `None`: any path.
    #[serde(serialize_with = "ser_regex")]
    pub path: Option<Regex>,
    /// `None`: any method (empty list or `*` in the proto).
    #[serde(serialize_with = "ser_methods")]
    pub methods: Option<Vec<http::Method>>,
    /// All must match.
    pub headers: Vec<HeaderMatch>,
    /// All must match (Gateway API `queryParams`).
    pub query_params: Vec<QueryParamMatch>,
}

/// A query parameter condition: the first occurrence of `name` (compared exactly, after
/// percent-decoding) is present and its percent-decoded value matches `^(?:re)$`.
#[derive(Clone, Debug, Serialize)]
pub struct QueryParamMatch {
    pub name: String,
    #[serde(serialize_with = "ser_regex_req")]
    pub value: Regex,
}

/// A header condition: some value of the header matches `^(?:re)$`.
#[derive(Clone, Debug, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "ser_header_name")]
    pub name: http::HeaderName,
    #[serde(serialize_with = "ser_regex_req")]
    pub value: Regex,
}

/// What may reach this pod.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InboundPolicy {
    /// The pod's own SPIFFE identity (empty before the control plane answers).
    pub identity: String,
    pub default_policy: DefaultPolicy,
    /// By port number.
    pub ports: BTreeMap<u16, InboundPort>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InboundPort {
    pub port: u16,
    pub protocol: Protocol,
    /// Only `authorizations` allow traffic, whatever the default policy.
    pub restricted: bool,
    pub authorizations: Vec<Authorization>,
    /// What protects the application on this port (`None`: nothing limited).
    pub limits: Option<InboundLimits>,
}

/// Load shedding and local rate limits of an inbound port, for this pod's proxy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InboundLimits {
    /// 0: unlimited.
    pub max_concurrent_requests: u32,
    pub max_pending_requests: u32,
    #[serde(serialize_with = "ser_duration_ms_plain", rename = "queue_timeout_ms")]
    pub queue_timeout: Duration,
    pub rate_limit: Option<RateLimit>,
    pub rate_limit_per_identity: Option<RateLimit>,
}

/// A token bucket: `burst` requests at once, refilled at `requests_per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

/// Who an authorization admits: the typed `Authorization.clients` choice of the proxy API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clients {
    /// Clients that present one of these mesh identities over mTLS.
    Mesh(MeshClients),
    /// Every client, with or without an identity: the kubelet's plaintext probes
    /// (`KubeletProbes` on the wire), limited by the authorization's `http_routes`.
    AnyClient,
}

/// A set of mesh identities, each a valid SPIFFE ID (kept in canonical form, so a peer's
/// certificate identity is looked up without parsing or allocating).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshClients {
    ids: HashSet<String>,
}

impl MeshClients {
    pub fn new(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        MeshClients {
            ids: ids.into_iter().map(|id| id.to_string()).collect(),
        }
    }

    /// True when `peer` (a certificate's SPIFFE ID) is one of the identities.
    pub fn contains(&self, peer: &str) -> bool {
        self.ids.contains(peer)
    }

    /// The identities, sorted.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }
}

impl Serialize for MeshClients {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.ids())
    }
}

/// One TrafficTarget's grant on a port (or the operator's grant to the kubelet's probes).
#[derive(Clone, Debug, Serialize)]
pub struct Authorization {
    /// `<namespace>/<name>` of the TrafficTarget, or the operator's name for a probe grant (a
    /// label for metrics and reasons: nothing is decided by it).
    pub name: Arc<str>,
    pub clients: Clients,
    /// Every connection and request on the port.
    pub all_traffic: bool,
    /// HTTP requests matching any of these.
    pub http_routes: Vec<HttpMatch>,
}

impl Authorization {
    /// True when `peer` (its mTLS identity, `None` for a plaintext client) is a client this
    /// authorization admits.
    pub fn admits(&self, peer: Option<&str>) -> bool {
        match &self.clients {
            Clients::AnyClient => true,
            Clients::Mesh(ids) => peer.is_some_and(|id| ids.contains(id)),
        }
    }
}

/// Timeouts, retries, failure accrual and load shedding for requests to a service
/// (docs/reliability.md). [`Default`] is the policy of a service the operator sent none for:
/// the defaults of [`weft_common::reliability`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrafficPolicy {
    /// `None`: no timeout.
    #[serde(serialize_with = "ser_duration_ms", rename = "request_timeout_ms")]
    pub request_timeout: Option<Duration>,
    pub max_retries: u32,
    /// Retries allowed as a fraction of requests.
    pub retry_budget_ratio: f64,
    pub retry_non_idempotent: bool,
    /// Retries allowed per second whatever the ratio.
    pub retry_budget_min_per_second: u32,
    /// `None`: each attempt may use what is left of the request's time.
    #[serde(serialize_with = "ser_duration_ms", rename = "per_try_timeout_ms")]
    pub per_try_timeout: Option<Duration>,
    pub retry_statuses: StatusSet,
    pub retry_grpc_codes: Vec<u32>,
    pub failure_accrual: FailureAccrual,
    /// 0: unlimited.
    pub max_concurrent_requests: u32,
    pub max_pending_requests: u32,
    /// 0: unlimited.
    pub max_requests_per_endpoint: u32,
    #[serde(serialize_with = "ser_duration_ms_plain", rename = "queue_timeout_ms")]
    pub queue_timeout: Duration,
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        use weft_common::reliability as d;
        TrafficPolicy {
            request_timeout: None,
            max_retries: 0,
            retry_budget_ratio: d::RETRY_BUDGET_RATIO,
            retry_non_idempotent: false,
            retry_budget_min_per_second: d::RETRY_BUDGET_MIN_PER_SECOND,
            per_try_timeout: None,
            retry_statuses: StatusSet::from_pairs(d::RETRY_STATUSES),
            retry_grpc_codes: d::RETRY_GRPC_CODES.to_vec(),
            failure_accrual: FailureAccrual::default(),
            max_concurrent_requests: d::MAX_CONCURRENT_REQUESTS,
            max_pending_requests: d::MAX_PENDING_REQUESTS,
            max_requests_per_endpoint: d::MAX_REQUESTS_PER_ENDPOINT,
            queue_timeout: Duration::from_millis(d::QUEUE_TIMEOUT_MS),
        }
    }
}

fn ser_duration_ms_plain<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A service this pod may call.
#[derive(Clone, Debug, Serialize)]
pub struct OutboundService {
    pub namespace: String,
    pub name: String,
    /// `<name>.<namespace>`: the metrics label and the canonical authority.
    pub authority: Arc<str>,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<OutboundPort>,
    pub policy: TrafficPolicy,
    /// Retries left for this service: live state, kept across pushes (see [`crate::state`]).
    #[serde(skip)]
    pub retry_budget: Arc<RetryBudget>,
    /// Requests in flight and waiting (load shedding): live state, kept across pushes.
    #[serde(skip)]
    pub limiter: Arc<crate::state::Limiter>,
}

impl OutboundService {
    /// The service port `port`, if the service has it.
    pub fn port(&self, port: u16) -> Option<&OutboundPort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The port used when a request names the service without a port: the only port, or port 80.
    pub fn default_port(&self) -> Option<&OutboundPort> {
        if self.ports.len() == 1 {
            self.ports.first()
        } else {
            self.port(80)
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct OutboundPort {
    pub port: u16,
    pub protocol: Protocol,
    /// In order; the first matching route wins.
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Route {
    /// `split:<namespace>/<name>`, `httproute:<namespace>/<name>/<rule>` or `default`.
    pub name: Arc<str>,
    /// Empty: every request.
    pub matches: Vec<HttpMatch>,
    pub backends: Vec<Backend>,
    /// Sum of the backends' weights (0: no backend can be chosen).
    pub total_weight: u64,
    /// Applied in order to every request that takes the route, before a backend is chosen
    /// ([`crate::filter`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// The proxy answers every request that takes the route with this status itself.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_status_opt"
    )]
    pub direct_status: Option<http::StatusCode>,
    /// `Some`: replaces the service's request and per-try timeouts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
}

fn ser_status_opt<S: Serializer>(s_: &Option<http::StatusCode>, s: S) -> Result<S::Ok, S::Error> {
    match s_ {
        Some(c) => s.serialize_some(&c.as_u16()),
        None => s.serialize_none(),
    }
}

fn ser_status<S: Serializer>(c: &http::StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(c.as_u16())
}

#[derive(Clone, Debug, Serialize)]
pub struct Backend {
    /// The backend service's name, for metrics.
    pub service: Arc<str>,
    pub weight: u64,
    pub endpoint_set: Arc<str>,
    /// Resolved from `endpoint_set`; empty when the set is unknown or the backend is
    /// `unavailable`.
    #[serde(skip)]
    pub endpoints: Arc<EndpointSet>,
    /// Why the backend cannot be used (the operator could not resolve it). It keeps its weight:
    /// requests routed to it are answered 503 with this reason, never sent elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<Arc<str>>,
    /// The status answered when the backend is `unavailable` (503 unless the operator says
    /// otherwise: Gateway API routes use 500).
    #[serde(serialize_with = "ser_status")]
    pub unavailable_status: http::StatusCode,
    /// Applied in order to requests sent to this backend, after the route's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

impl Backend {
    /// The reason given (503) when a request routed to this backend finds no endpoint: the
    /// operator's reason when the backend is unavailable, else "no endpoints".
    pub fn no_endpoints_reason(&self) -> String {
        match &self.unavailable {
            Some(reason) => reason.to_string(),
            None => format!("backend {} has no endpoints", self.service),
        }
    }

    /// The status of that answer: the backend's `unavailable_status` when it is unavailable,
    /// else 503.
    pub fn no_endpoints_status(&self) -> http::StatusCode {
        match &self.unavailable {
            Some(_) => self.unavailable_status,
            None => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    /// The application's address on the pod (`ip:targetPort`).
    pub addr: SocketAddr,
    /// Expected identity of the pod's proxy; `None` when not meshed.
    pub identity: Option<Arc<str>>,
    /// The pod proxy's inbound port (mTLS) when meshed.
    pub inbound_port: Option<u16>,
    pub pod: Arc<str>,
    /// `<kind>/<name>` of the pod's owning workload; empty when unknown.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub workload: Arc<str>,
    /// Its outbound metric labels (`server_id`, `dst_pod`, `dst_<kind>`), built once here.
    #[serde(skip)]
    pub dst: Arc<crate::metrics::DstEndpoint>,
    /// Load estimate for balancing: live state, kept across pushes while the endpoint stays in
    /// its set (see [`crate::state`]).
    #[serde(skip)]
    pub load: Arc<Load>,
}

impl Endpoint {
    /// Where to connect and what to carry: `Some((ip:inbound_port, identity))` when meshed.
    pub fn mesh_target(&self) -> Option<(SocketAddr, &Arc<str>)> {
        match (&self.identity, self.inbound_port) {
            (Some(id), Some(port)) => Some((SocketAddr::new(self.addr.ip(), port), id)),
            _ => None,
        }
    }
}

/// What is known about a pod IP: how to reach its proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    pub identity: Arc<str>,
    pub inbound_port: u16,
}

/// The compiled configuration in force.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Config {
    /// Content hash from the control plane; empty for the defaults.
    pub version: String,
    pub inbound: Arc<InboundPolicy>,
    /// Outbound services by namespace, then name (nested so that a lookup by `&str` allocates
    /// nothing: it runs once per outbound request).
    #[serde(skip)]
    pub services: FastMap<String, FastMap<String, Arc<OutboundService>>>,
    /// Outbound services by ClusterIP:port.
    #[serde(skip)]
    pub by_cluster_ip: FastMap<SocketAddr, Arc<OutboundService>>,
    /// Endpoint sets by resource name.
    #[serde(skip)]
    pub endpoint_sets: HashMap<String, Arc<EndpointSet>>,
    /// Meshed pod IPs (from all endpoint sets), for transparent connections to pod IPs.
    #[serde(skip)]
    pub pods: HashMap<IpAddr, PodIdentity>,
    /// On-demand discovery: addresses the operator answered for (`ip:<address>` resources),
    /// whether or not a Service has them (a Service that does is in `by_cluster_ip`).
    #[serde(rename = "resolved_ips", skip_serializing_if = "BTreeSet::is_empty")]
    pub resolved_ips: BTreeSet<IpAddr>,
    /// For `/config`: services sorted by authority.
    #[serde(rename = "outbound")]
    outbound_sorted: Vec<Arc<OutboundService>>,
    #[serde(rename = "endpoints")]
    endpoint_sets_sorted: BTreeMap<String, Arc<EndpointSet>>,
}

/// Why a resource set was rejected. Every variant names the resource.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("resource {resource:?} has no kind")]
    MissingKind { resource: String },
    #[error("resource {resource:?}: match {name:?}: invalid path_regex {regex:?}: {source}")]
    InvalidPathRegex {
        resource: String,
        name: String,
        regex: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("resource {resource:?}: match {name:?}: invalid value_regex {regex:?} for header {header:?}: {source}")]
    InvalidHeaderRegex {
        resource: String,
        name: String,
        header: String,
        regex: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("resource {resource:?}: match {name:?}: invalid value_regex {regex:?} for query parameter {param:?}: {source}")]
    InvalidQueryRegex {
        resource: String,
        name: String,
        param: String,
        regex: String,
        #[source]
        source: Box<regex::Error>,
    },
    /// A route filter, status or timeout the proxy cannot apply as written (an unknown
    /// redirect status, an invalid header name or value, ...): refused, never half-applied.
    #[error("resource {resource:?}: route {route:?}: {reason}")]
    InvalidRoute {
        resource: String,
        route: String,
        reason: String,
    },
    #[error("resource {resource:?}: match {name:?}: invalid header name {header:?}")]
    InvalidHeaderName {
        resource: String,
        name: String,
        header: String,
    },
    #[error("resource {resource:?}: match {name:?}: invalid method {method:?}")]
    InvalidMethod {
        resource: String,
        name: String,
        method: String,
    },
    /// A client identity that is not a SPIFFE ID: it could never match a peer, so the
    /// authorization would silently admit less than it says; the update is refused instead.
    #[error("resource {resource:?}: authorization {authorization:?}: {source}")]
    InvalidIdentity {
        resource: String,
        authorization: String,
        #[source]
        source: weft_common::spiffe::InvalidSpiffeId,
    },
    #[error("resource {resource:?}: invalid IP address of {len} bytes (want 4 or 16)")]
    InvalidIp { resource: String, len: usize },
    #[error("resource {resource:?}: invalid port {port}")]
    InvalidPort { resource: String, port: u32 },
    #[error("resource {resource:?}: more than one inbound policy (also {other:?})")]
    DuplicateInbound { resource: String, other: String },
    /// A port listed twice: the second entry would silently replace the first (a restricted
    /// port followed by an open one would open it), so the whole policy is refused.
    #[error("resource {resource:?}: inbound port {port} listed twice")]
    DuplicateInboundPort { resource: String, port: u16 },
}

impl ConfigError {
    /// The name of the offending resource (for `Nack.resource_names`).
    pub fn resource(&self) -> &str {
        match self {
            ConfigError::MissingKind { resource }
            | ConfigError::InvalidPathRegex { resource, .. }
            | ConfigError::InvalidHeaderRegex { resource, .. }
            | ConfigError::InvalidQueryRegex { resource, .. }
            | ConfigError::InvalidRoute { resource, .. }
            | ConfigError::InvalidHeaderName { resource, .. }
            | ConfigError::InvalidMethod { resource, .. }
            | ConfigError::InvalidIdentity { resource, .. }
            | ConfigError::InvalidIp { resource, .. }
            | ConfigError::InvalidPort { resource, .. }
            | ConfigError::DuplicateInbound { resource, .. }
            | ConfigError::DuplicateInboundPort { resource, .. } => resource,
        }
    }
}

fn ip_from_bytes(resource: &str, bytes: &[u8]) -> Result<IpAddr, ConfigError> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(b)));
    }
    if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(b)));
    }
    Err(ConfigError::InvalidIp {
        resource: resource.to_string(),
        len: bytes.len(),
    })
}

fn port(resource: &str, port: u32) -> Result<u16, ConfigError> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::InvalidPort {
            resource: resource.to_string(),
            port,
        }),
    }
}

/// Compiles a path regex the way SMI defines it: anchored at the start only. The regex must
/// also compile on its own, so that it cannot close the anchoring group (`a)|(.*` would
/// otherwise become `^(?:a)|(.*)`, matching anything anywhere); the operator checks the same.
pub fn compile_path_regex(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(re)?;
    Regex::new(&format!("^(?:{re})"))
}

/// Compiles a header value regex: anchored at both ends (and valid on its own, as above).
pub fn compile_header_regex(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(re)?;
    Regex::new(&format!("^(?:{re})$"))
}

/// The method an older operator wrote for "any method"; an empty list means the same.
const ANY_METHOD: &str = "*";

/// The methods of a match: `None` (any) for an empty list or one holding [`ANY_METHOD`]. Every
/// other entry must be a valid HTTP method token (case-insensitive), even next to
/// [`ANY_METHOD`]: a match naming something that is not a method is refused (NACK), never
/// accepted as written.
fn http_methods(
    resource: &str,
    m: &v1::HttpMatch,
) -> Result<Option<Vec<http::Method>>, ConfigError> {
    let mut any = m.methods.is_empty();
    let mut out = Vec::with_capacity(m.methods.len());
    for method in &m.methods {
        if method == ANY_METHOD {
            any = true;
            continue;
        }
        let parsed =
            http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                ConfigError::InvalidMethod {
                    resource: resource.to_string(),
                    name: m.name.clone(),
                    method: method.clone(),
                }
            })?;
        out.push(parsed);
    }
    Ok((!any).then_some(out))
}

impl HttpMatch {
    /// Converts one match of resource `resource` (path and header regexes compiled, methods
    /// and header names checked).
    pub fn from_proto(resource: &str, m: &v1::HttpMatch) -> Result<HttpMatch, ConfigError> {
        http_match(resource, m)
    }
}

fn http_match(resource: &str, m: &v1::HttpMatch) -> Result<HttpMatch, ConfigError> {
    let path = if m.path_regex.is_empty() {
        None
    } else {
        Some(
            compile_path_regex(&m.path_regex).map_err(|e| ConfigError::InvalidPathRegex {
                resource: resource.to_string(),
                name: m.name.clone(),
                regex: m.path_regex.clone(),
                source: Box::new(e),
            })?,
        )
    };
    let methods = http_methods(resource, m)?;
    let mut headers = Vec::with_capacity(m.headers.len());
    for h in &m.headers {
        let name =
            http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ConfigError::InvalidHeaderName {
                    resource: resource.to_string(),
                    name: m.name.clone(),
                    header: h.name.clone(),
                }
            })?;
        let value =
            compile_header_regex(&h.value_regex).map_err(|e| ConfigError::InvalidHeaderRegex {
                resource: resource.to_string(),
                name: m.name.clone(),
                header: h.name.clone(),
                regex: h.value_regex.clone(),
                source: Box::new(e),
            })?;
        headers.push(HeaderMatch { name, value });
    }
    let mut query_params = Vec::with_capacity(m.query_params.len());
    for q in &m.query_params {
        let value =
            compile_header_regex(&q.value_regex).map_err(|e| ConfigError::InvalidQueryRegex {
                resource: resource.to_string(),
                name: m.name.clone(),
                param: q.name.clone(),
                regex: q.value_regex.clone(),
                source: Box::new(e),
            })?;
        query_params.push(QueryParamMatch {
            name: q.name.clone(),
            value,
        });
    }
    Ok(HttpMatch {
        name: Arc::from(m.name.as_str()),
        path,
        methods,
        headers,
        query_params,
    })
}

/// Converts a route's (or backend's) filters; every value is checked here, once.
fn filters(
    resource: &str,
    route: &str,
    list: &[v1::RouteFilter],
) -> Result<Vec<Filter>, ConfigError> {
    use v1::route_filter::Kind;
    let bad = |reason: String| ConfigError::InvalidRoute {
        resource: resource.to_string(),
        route: route.to_string(),
        reason,
    };
    let mut out = Vec::with_capacity(list.len());
    for f in list {
        out.push(match &f.kind {
            None => return Err(bad("a filter of no kind the proxy knows".to_string())),
            Some(Kind::RequestHeaderModifier(m)) => {
                Filter::RequestHeaderModifier(header_modifier(m).map_err(bad)?)
            }
            Some(Kind::ResponseHeaderModifier(m)) => {
                Filter::ResponseHeaderModifier(header_modifier(m).map_err(bad)?)
            }
            Some(Kind::RequestRedirect(r)) => Filter::RequestRedirect(redirect(r).map_err(bad)?),
            Some(Kind::UrlRewrite(w)) => Filter::UrlRewrite(UrlRewrite {
                hostname: hostname(&w.hostname).map_err(bad)?,
                path: w
                    .path
                    .as_ref()
                    .map(path_modifier)
                    .transpose()
                    .map_err(bad)?,
            }),
        });
    }
    Ok(out)
}

fn header_name(name: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))
}

fn header_modifier(m: &v1::HeaderModifier) -> Result<HeaderModifier, String> {
    let pair = |h: &v1::HeaderValue| {
        let name = header_name(&h.name)?;
        let value = http::HeaderValue::from_str(&h.value)
            .map_err(|_| format!("invalid value {:?} for header {:?}", h.value, h.name))?;
        Ok::<_, String>((name, value))
    };
    Ok(HeaderModifier {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()?,
    })
}

/// A hostname for a redirect or rewrite: empty is none; otherwise a valid host with no port,
/// userinfo or path.
fn hostname(h: &str) -> Result<Option<http::uri::Authority>, String> {
    if h.is_empty() {
        return Ok(None);
    }
    let bad = || format!("invalid hostname {h:?}");
    if h.contains(['@', ':', '/']) {
        return Err(bad());
    }
    http::uri::Authority::try_from(h)
        .map(Some)
        .map_err(|_| bad())
}

/// A path for a rewrite or redirect: absolute, a valid URI path, no query or fragment.
fn uri_path(p: &str) -> Result<(), String> {
    let valid = p.starts_with('/')
        && !p.contains(['?', '#'])
        && http::uri::PathAndQuery::try_from(p).is_ok();
    if valid {
        Ok(())
    } else {
        Err(format!("invalid path {p:?}"))
    }
}

fn path_modifier(m: &v1::PathModifier) -> Result<PathModifier, String> {
    use v1::path_modifier::Kind;
    match &m.kind {
        None => Err("a path modifier of no kind".to_string()),
        // Empty means `/` (Gateway API's table: `/foo` with prefix `/foo` and an empty
        // replacement becomes `/`).
        Some(Kind::ReplaceFullPath(p)) => {
            let p = if p.is_empty() { "/" } else { p.as_str() };
            uri_path(p)?;
            Ok(PathModifier::ReplaceFullPath(p.to_string()))
        }
        Some(Kind::ReplacePrefixMatch(p)) => {
            if !p.is_empty() {
                uri_path(p)?;
            }
            uri_path(&m.matched_prefix)
                .map_err(|e| format!("replace_prefix_match needs the matched prefix: {e}"))?;
            Ok(PathModifier::prefix(&m.matched_prefix, p))
        }
    }
}

fn redirect(r: &v1::RequestRedirect) -> Result<Redirect, String> {
    let scheme = match r.scheme.as_str() {
        "" => None,
        s => {
            Some(filter::Scheme::parse(s).ok_or_else(|| format!("invalid redirect scheme {s:?}"))?)
        }
    };
    let port = match r.port {
        0 => None,
        p => Some(
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("invalid redirect port {p}"))?,
        ),
    };
    let status = match r.status_code {
        0 => filter::DEFAULT_REDIRECT_STATUS,
        c => u16::try_from(c)
            .ok()
            .filter(|c| filter::REDIRECT_STATUSES.contains(c))
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .ok_or_else(|| {
                format!("invalid redirect status {c} (want 301, 302, 303, 307 or 308)")
            })?,
    };
    Ok(Redirect {
        scheme,
        hostname: hostname(&r.hostname)?.map(|a| a.as_str().to_string()),
        port,
        path: r.path.as_ref().map(path_modifier).transpose()?,
        status,
    })
}

/// A status the proxy answers itself: 0 is `default`; otherwise 400..=599.
fn answer_status(
    code: u32,
    default: Option<http::StatusCode>,
) -> Result<Option<http::StatusCode>, String> {
    if code == 0 {
        return Ok(default);
    }
    u16::try_from(code)
        .ok()
        .filter(|c| (400..=599).contains(c))
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .map(Some)
        .ok_or_else(|| format!("invalid status {code} (want 400 to 599)"))
}

fn route_timeouts(t: Option<&v1::RouteTimeouts>) -> Option<RouteTimeouts> {
    t.map(|t| RouteTimeouts {
        request: millis(t.request_ms),
        backend_request: millis(t.backend_request_ms),
    })
}

fn mesh_clients<'a>(
    resource: &str,
    a: &v1::Authorization,
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<MeshClients, ConfigError> {
    let ids = ids
        .into_iter()
        .map(|id| {
            SpiffeId::parse(id).map_err(|source| ConfigError::InvalidIdentity {
                resource: resource.to_string(),
                authorization: a.name.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MeshClients::new(ids))
}

/// Who an authorization admits: the typed `clients` choice; only when an (older) operator left
/// it unset, the deprecated `sources` list ([`deprecated_sources`]).
fn authorization_clients(resource: &str, a: &v1::Authorization) -> Result<Clients, ConfigError> {
    use v1::authorization::Clients as Wire;
    match &a.clients {
        Some(Wire::Mesh(m)) => Ok(Clients::Mesh(mesh_clients(resource, a, &m.identities)?)),
        Some(Wire::Probes(v1::KubeletProbes {})) => Ok(Clients::AnyClient),
        None => deprecated_sources(resource, a),
    }
}

/// Version skew (an operator one minor version older): the untyped `sources`, where `"*"` meant
/// any client (the kubelet's probes) and every other entry is a SPIFFE ID. The one place that
/// reads the deprecated field.
#[allow(deprecated)]
fn deprecated_sources(resource: &str, a: &v1::Authorization) -> Result<Clients, ConfigError> {
    const ANY_SOURCE: &str = "*";
    let ids = mesh_clients(resource, a, a.sources.iter().filter(|s| *s != ANY_SOURCE))?;
    if a.sources.iter().any(|s| s == ANY_SOURCE) {
        Ok(Clients::AnyClient)
    } else {
        Ok(Clients::Mesh(ids))
    }
}

fn inbound_policy(resource: &str, p: &v1::InboundPolicy) -> Result<InboundPolicy, ConfigError> {
    let mut ports = BTreeMap::new();
    for ip in &p.ports {
        let number = port(resource, ip.port)?;
        let mut authorizations = Vec::with_capacity(ip.authorizations.len());
        for a in &ip.authorizations {
            let http_routes = a
                .http_routes
                .iter()
                .map(|m| http_match(resource, m))
                .collect::<Result<Vec<_>, _>>()?;
            authorizations.push(Authorization {
                name: Arc::from(a.name.as_str()),
                clients: authorization_clients(resource, a)?,
                all_traffic: a.all_traffic,
                http_routes,
            });
        }
        let previous = ports.insert(
            number,
            InboundPort {
                port: number,
                protocol: Protocol::from_proto(ip.protocol),
                restricted: ip.restricted,
                authorizations,
                limits: inbound_limits(ip.limits.as_ref()),
            },
        );
        if previous.is_some() {
            return Err(ConfigError::DuplicateInboundPort {
                resource: resource.to_string(),
                port: number,
            });
        }
    }
    Ok(InboundPolicy {
        identity: p.identity.clone(),
        default_policy: DefaultPolicy::from_proto(p.default_policy),
        ports,
    })
}

fn endpoint_set(
    resource: &Arc<str>,
    s: &v1::EndpointSet,
    state: &mut StateBuilder<'_>,
) -> Result<EndpointSet, ConfigError> {
    let mut endpoints = Vec::with_capacity(s.endpoints.len());
    for e in &s.endpoints {
        let ip = ip_from_bytes(resource, &e.ip)?;
        let app_port = port(resource, e.port)?;
        let identity = (!e.identity.is_empty()).then(|| Arc::from(e.identity.as_str()));
        let inbound_port = if e.inbound_port == 0 {
            None
        } else {
            Some(port(resource, e.inbound_port)?)
        };
        let addr = SocketAddr::new(ip, app_port);
        let dst = Arc::new(crate::metrics::DstEndpoint::new(
            identity.as_ref(),
            &e.pod,
            &e.workload,
        ));
        endpoints.push(Endpoint {
            addr,
            identity,
            inbound_port,
            pod: Arc::from(e.pod.as_str()),
            workload: Arc::from(e.workload.as_str()),
            dst,
            load: state.load(resource, addr),
        });
    }
    Ok(EndpointSet { endpoints })
}

fn finite_ratio(r: f64) -> f64 {
    if r.is_finite() && r > 0.0 {
        r.min(1.0)
    } else {
        0.0
    }
}

/// The statuses of `ranges`, or `default` when there are none (the proto's rule for empty lists).
fn status_set(ranges: &[v1::StatusRange], default: &[(u16, u16)]) -> StatusSet {
    if ranges.is_empty() {
        return StatusSet::from_pairs(default);
    }
    StatusSet(
        ranges
            .iter()
            .filter_map(|r| {
                let lo = u16::try_from(r.min).ok()?;
                let hi = u16::try_from(r.max).ok()?;
                (lo <= hi).then_some((lo, hi))
            })
            .collect(),
    )
}

fn codes(codes: &[u32], default: &[u32]) -> Vec<u32> {
    if codes.is_empty() {
        default.to_vec()
    } else {
        codes.to_vec()
    }
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn failure_accrual(a: Option<&v1::FailureAccrual>) -> FailureAccrual {
    let Some(a) = a else {
        return FailureAccrual::default();
    };
    let d = FailureAccrual::default();
    let min_backoff = millis(a.min_backoff_ms).unwrap_or(d.min_backoff);
    FailureAccrual {
        consecutive_failures: a.consecutive_failures,
        min_success_rate: finite_ratio(a.min_success_rate),
        window: millis(a.window_ms).unwrap_or(d.window),
        min_requests: a.min_requests,
        min_backoff,
        max_backoff: millis(a.max_backoff_ms)
            .unwrap_or(d.max_backoff)
            .max(min_backoff),
        failure_statuses: status_set(
            &a.failure_statuses,
            weft_common::reliability::FAILURE_STATUSES,
        ),
        failure_grpc_codes: codes(
            &a.failure_grpc_codes,
            weft_common::reliability::FAILURE_GRPC_CODES,
        ),
    }
}

fn traffic_policy(p: Option<&v1::TrafficPolicy>) -> TrafficPolicy {
    let Some(p) = p else {
        return TrafficPolicy::default();
    };
    TrafficPolicy {
        request_timeout: millis(p.request_timeout_ms),
        max_retries: p.max_retries,
        retry_budget_ratio: finite_ratio(p.retry_budget_ratio),
        retry_non_idempotent: p.retry_non_idempotent,
        retry_budget_min_per_second: p.retry_budget_min_per_second,
        per_try_timeout: millis(p.per_try_timeout_ms),
        retry_statuses: status_set(&p.retry_statuses, weft_common::reliability::RETRY_STATUSES),
        retry_grpc_codes: codes(
            &p.retry_grpc_codes,
            weft_common::reliability::RETRY_GRPC_CODES,
        ),
        failure_accrual: failure_accrual(p.failure_accrual.as_ref()),
        max_concurrent_requests: p.max_concurrent_requests,
        max_pending_requests: p.max_pending_requests,
        max_requests_per_endpoint: p.max_requests_per_endpoint,
        queue_timeout: millis(p.queue_timeout_ms).unwrap_or(Duration::from_millis(
            weft_common::reliability::QUEUE_TIMEOUT_MS,
        )),
    }
}

fn inbound_limits(l: Option<&v1::InboundLimits>) -> Option<InboundLimits> {
    let l = l?;
    let rate = |r: &Option<v1::RateLimit>| {
        r.as_ref().and_then(|r| {
            let rps = finite_positive(r.requests_per_second)?;
            let burst = if r.burst > 0 {
                r.burst
            } else {
                // One second's worth, at least one request.
                u32::try_from(rps.ceil() as u64).unwrap_or(u32::MAX).max(1)
            };
            Some(RateLimit {
                requests_per_second: rps,
                burst,
            })
        })
    };
    Some(InboundLimits {
        max_concurrent_requests: l.max_concurrent_requests,
        max_pending_requests: l.max_pending_requests,
        queue_timeout: millis(l.queue_timeout_ms).unwrap_or(Duration::from_millis(
            weft_common::reliability::QUEUE_TIMEOUT_MS,
        )),
        rate_limit: rate(&l.rate_limit),
        rate_limit_per_identity: rate(&l.rate_limit_per_identity),
    })
}

fn finite_positive(x: f64) -> Option<f64> {
    (x.is_finite() && x > 0.0).then_some(x)
}

/// Converts an outbound service; its backends are not resolved yet (see [`link`]).
fn outbound_service(
    resource: &str,
    s: &v1::OutboundService,
    empty: &Arc<EndpointSet>,
    state: &mut StateBuilder<'_>,
) -> Result<OutboundService, ConfigError> {
    let cluster_ips = s
        .cluster_ips
        .iter()
        .map(|b| ip_from_bytes(resource, b))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = Vec::with_capacity(s.ports.len());
    for p in &s.ports {
        let number = port(resource, p.port)?;
        let mut routes = Vec::with_capacity(p.routes.len());
        for r in &p.routes {
            let matches = r
                .matches
                .iter()
                .map(|m| http_match(resource, m))
                .collect::<Result<Vec<_>, _>>()?;
            let bad = |reason: String| ConfigError::InvalidRoute {
                resource: resource.to_string(),
                route: r.name.clone(),
                reason,
            };
            let backends = r
                .backends
                .iter()
                .map(|b| {
                    Ok(Backend {
                        service: Arc::from(b.service.as_str()),
                        weight: b.weight,
                        endpoint_set: Arc::from(b.endpoint_set.as_str()),
                        endpoints: empty.clone(),
                        unavailable: (!b.unavailable_reason.is_empty())
                            .then(|| Arc::from(b.unavailable_reason.as_str())),
                        unavailable_status: answer_status(
                            b.unavailable_status,
                            Some(http::StatusCode::SERVICE_UNAVAILABLE),
                        )
                        .map_err(|e| {
                            bad(format!("backend {}: unavailable_status: {e}", b.service))
                        })?
                        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
                        filters: filters(resource, &r.name, &b.filters)?,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let total_weight = backends
                .iter()
                .fold(0u64, |acc, b| acc.saturating_add(b.weight));
            routes.push(Route {
                name: Arc::from(r.name.as_str()),
                matches,
                backends,
                total_weight,
                filters: filters(resource, &r.name, &r.filters)?,
                direct_status: answer_status(r.direct_status, None)
                    .map_err(|e| bad(format!("direct_status: {e}")))?,
                timeouts: route_timeouts(r.timeouts.as_ref()),
            });
        }
        ports.push(OutboundPort {
            port: number,
            protocol: Protocol::from_proto(p.protocol),
            routes,
        });
    }
    let policy = traffic_policy(s.policy.as_ref());
    let retry_budget = state.budget(&s.namespace, &s.name, policy.retry_budget_ratio);
    let limiter = state.limiter(&s.namespace, &s.name);
    Ok(OutboundService {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        authority: Arc::from(format!("{}.{}", s.name, s.namespace)),
        cluster_ips,
        ports,
        policy,
        retry_budget,
        limiter,
    })
}

/// The endpoints a backend gets from `sets`: none when it is unavailable (whatever set it
/// names) or names an unknown set.
fn resolve<'a>(
    b: &Backend,
    sets: &'a HashMap<String, Arc<EndpointSet>>,
    empty: &'a Arc<EndpointSet>,
) -> &'a Arc<EndpointSet> {
    if b.unavailable.is_some() {
        return empty;
    }
    sets.get(&*b.endpoint_set).unwrap_or(empty)
}

/// True when every backend of `svc` already holds the endpoint set it resolves to in `sets`.
fn is_linked(
    svc: &OutboundService,
    sets: &HashMap<String, Arc<EndpointSet>>,
    empty: &Arc<EndpointSet>,
) -> bool {
    svc.ports
        .iter()
        .flat_map(|p| &p.routes)
        .flat_map(|r| &r.backends)
        .all(|b| Arc::ptr_eq(&b.endpoints, resolve(b, sets, empty)))
}

/// Resolves every backend of `svc` against `sets`.
fn link(
    mut svc: OutboundService,
    sets: &HashMap<String, Arc<EndpointSet>>,
    empty: &Arc<EndpointSet>,
) -> OutboundService {
    for b in svc
        .ports
        .iter_mut()
        .flat_map(|p| &mut p.routes)
        .flat_map(|r| &mut r.backends)
    {
        b.endpoints = resolve(b, sets, empty).clone();
    }
    svc
}

/// A converted resource, as the config in force holds it.
#[derive(Clone, Debug)]
enum Converted {
    Inbound(Arc<InboundPolicy>),
    /// With its backends resolved against the endpoint sets of the config in force.
    Outbound(Arc<OutboundService>),
    /// With the load estimates of its endpoints.
    Endpoints(Arc<EndpointSet>),
}

#[derive(Clone, Debug)]
struct Cached {
    version: String,
    converted: Converted,
}

/// What the last applied update did, resource by resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Resources converted from the proto (new, or their version changed).
    pub converted: usize,
    /// Outbound services whose conversion was kept but whose backends were resolved again
    /// (an endpoint set they use changed).
    pub relinked: usize,
    /// Resources whose converted form was kept as it was (same object).
    pub reused: usize,
}

/// The proxy's converted config and live state across pushes: the one place where resource sets
/// become [`Config`]s.
///
/// Converted resources are cached by name and version (the version is a content hash): an update
/// converts only the resources whose version changed, re-resolves the outbound services whose
/// endpoint sets changed, and keeps every other converted object as it was. Live state (retry
/// budgets, per-endpoint load estimates) comes from a [`StateRegistry`] keyed by service and
/// endpoint: kept for what the new config still names, dropped for what it no longer names.
///
/// An update is applied atomically or not at all: on error neither the cache nor the registry
/// changes, so the previous config and its state stay in force.
#[derive(Debug)]
pub struct Store {
    cache: HashMap<String, Cached>,
    state: StateRegistry,
    /// The one empty endpoint set (unknown or unavailable backends), shared so that a backend
    /// left without endpoints is recognised as already resolved.
    empty: Arc<EndpointSet>,
    last: UpdateStats,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            cache: HashMap::new(),
            state: StateRegistry::default(),
            empty: Arc::new(EndpointSet::default()),
            last: UpdateStats::default(),
        }
    }
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The live state of the config last applied.
    pub fn state(&self) -> &StateRegistry {
        &self.state
    }

    /// What the last applied update converted and kept.
    pub fn last_update(&self) -> UpdateStats {
        self.last
    }

    fn cached(&self, name: &str, r: &v1::Resource) -> Option<&Converted> {
        // An empty version is no content hash: always convert.
        if r.version.is_empty() {
            return None;
        }
        self.cache
            .get(name)
            .filter(|c| c.version == r.version)
            .map(|c| &c.converted)
    }

    /// Validates and compiles a complete resource set (as held by the control client after
    /// applying a response), reusing what is unchanged since the last applied update. On error
    /// nothing is applied: the store is left as it was.
    pub fn update(
        &mut self,
        version: &str,
        resources: &BTreeMap<String, v1::Resource>,
    ) -> Result<Config, ConfigError> {
        use v1::resource::Kind;

        let mut state = StateBuilder::new(&self.state);
        let mut cache = HashMap::with_capacity(resources.len());
        let mut stats = UpdateStats::default();
        let empty = &self.empty;

        // Endpoint sets first: outbound routes resolve against them.
        let mut endpoint_sets = HashMap::new();
        let mut pods = HashMap::new();
        for (name, r) in resources {
            let Some(Kind::Endpoints(proto)) = &r.kind else {
                continue;
            };
            let set_name: Arc<str> = Arc::from(name.as_str());
            let set = match self.cached(name, r) {
                Some(Converted::Endpoints(set)) => {
                    stats.reused += 1;
                    for e in &set.endpoints {
                        state.keep_load(&set_name, e.addr, &e.load);
                    }
                    set.clone()
                }
                _ => {
                    stats.converted += 1;
                    Arc::new(endpoint_set(&set_name, proto, &mut state)?)
                }
            };
            for e in &set.endpoints {
                if let (Some(id), Some(port)) = (&e.identity, e.inbound_port) {
                    pods.insert(
                        e.addr.ip(),
                        PodIdentity {
                            identity: id.clone(),
                            inbound_port: port,
                        },
                    );
                }
            }
            endpoint_sets.insert(name.clone(), set.clone());
            cache.insert(
                name.clone(),
                Cached {
                    version: r.version.clone(),
                    converted: Converted::Endpoints(set),
                },
            );
        }

        let mut inbound: Option<(String, Arc<InboundPolicy>)> = None;
        let mut resolved_ips = BTreeSet::new();
        let mut services = FastMap::<String, FastMap<_, _>>::default();
        let mut by_cluster_ip = FastMap::default();
        for (name, r) in resources {
            let converted = match &r.kind {
                None => {
                    return Err(ConfigError::MissingKind {
                        resource: name.clone(),
                    })
                }
                Some(Kind::Endpoints(_)) => continue,
                // The name was checked when the response was applied; the Service it names (if
                // any) comes as its own resource.
                Some(Kind::Ip(_)) => {
                    if let Some(addr) = weft_proxy_api::names::parse_ip_name(name) {
                        resolved_ips.insert(addr);
                    }
                    continue;
                }
                Some(Kind::Inbound(p)) => {
                    if let Some((other, _)) = &inbound {
                        return Err(ConfigError::DuplicateInbound {
                            resource: name.clone(),
                            other: other.clone(),
                        });
                    }
                    let policy = match self.cached(name, r) {
                        Some(Converted::Inbound(policy)) => {
                            stats.reused += 1;
                            policy.clone()
                        }
                        _ => {
                            stats.converted += 1;
                            Arc::new(inbound_policy(name, p)?)
                        }
                    };
                    inbound = Some((name.clone(), policy.clone()));
                    Converted::Inbound(policy)
                }
                Some(Kind::Outbound(s)) => {
                    let svc = match self.cached(name, r) {
                        Some(Converted::Outbound(svc)) => {
                            state.keep_budget(&svc.namespace, &svc.name, &svc.retry_budget);
                            state.keep_limiter(&svc.namespace, &svc.name, &svc.limiter);
                            if is_linked(svc, &endpoint_sets, empty) {
                                stats.reused += 1;
                                svc.clone()
                            } else {
                                stats.relinked += 1;
                                Arc::new(link(OutboundService::clone(svc), &endpoint_sets, empty))
                            }
                        }
                        _ => {
                            stats.converted += 1;
                            let svc = outbound_service(name, s, empty, &mut state)?;
                            Arc::new(link(svc, &endpoint_sets, empty))
                        }
                    };
                    for ip in &svc.cluster_ips {
                        for p in &svc.ports {
                            by_cluster_ip.insert(SocketAddr::new(*ip, p.port), svc.clone());
                        }
                    }
                    services
                        .entry(svc.namespace.clone())
                        .or_default()
                        .insert(svc.name.clone(), svc.clone());
                    Converted::Outbound(svc)
                }
            };
            cache.insert(
                name.clone(),
                Cached {
                    version: r.version.clone(),
                    converted,
                },
            );
        }

        let mut outbound_sorted: Vec<_> = services
            .values()
            .flat_map(|by_name: &FastMap<String, Arc<OutboundService>>| by_name.values().cloned())
            .collect();
        outbound_sorted.sort_by(|a, b| a.authority.cmp(&b.authority));
        let endpoint_sets_sorted = endpoint_sets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let config = Config {
            version: version.to_string(),
            inbound: inbound.map(|(_, p)| p).unwrap_or_default(),
            services,
            by_cluster_ip,
            endpoint_sets,
            pods,
            resolved_ips,
            outbound_sorted,
            endpoint_sets_sorted,
        };

        // Commit: the new cache and registry replace the old ones (dropping what is gone).
        self.state = state.finish();
        self.cache = cache;
        self.last = stats;
        Ok(config)
    }
}

/// The live state a config holds, as `GET /state` reports it: retry budgets by service
/// authority, load estimates by endpoint set.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StateView {
    pub services: BTreeMap<String, ServiceView>,
    pub endpoints: BTreeMap<String, Vec<EndpointView>>,
}

impl Config {
    /// Validates and compiles a complete resource set from scratch (fresh live state). On error
    /// nothing is applied. The control client uses a [`Store`] instead, which keeps state.
    pub fn from_resources(
        version: &str,
        resources: &BTreeMap<String, v1::Resource>,
    ) -> Result<Config, ConfigError> {
        Store::new().update(version, resources)
    }

    /// The live state this config's services and endpoints hold right now.
    pub fn state_view(&self) -> StateView {
        StateView {
            services: self
                .outbound_sorted
                .iter()
                .map(|s| {
                    (
                        s.authority.to_string(),
                        ServiceView {
                            retry_budget_milli: s.retry_budget.balance_milli(),
                        },
                    )
                })
                .collect(),
            endpoints: self
                .endpoint_sets_sorted
                .iter()
                .map(|(name, set)| {
                    let eps = set
                        .endpoints
                        .iter()
                        .map(|e| EndpointView {
                            addr: e.addr,
                            ewma_ns: e.load.ewma_nanos(),
                            pending: e.load.pending(),
                        })
                        .collect();
                    (name.clone(), eps)
                })
                .collect(),
        }
    }

    /// The outbound service `<name>.<namespace>`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<OutboundService>> {
        self.services.get(namespace)?.get(name)
    }

    /// The outbound service whose ClusterIP:port is `addr`.
    pub fn service_by_addr(&self, addr: SocketAddr) -> Option<&Arc<OutboundService>> {
        self.by_cluster_ip.get(&addr)
    }

    /// The meshed pod at `ip`, if any endpoint set names it.
    pub fn pod(&self, ip: IpAddr) -> Option<&PodIdentity> {
        self.pods.get(&ip)
    }

    /// The config as JSON (for the admin server's `GET /config`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// [`Config::to_json`] without its two large members, `outbound` and `endpoints` (which
    /// grow with the mesh): what the admin `/config` writes first, before it streams those
    /// resource by resource.
    pub fn json_head(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Head<'a> {
            version: &'a str,
            inbound: &'a InboundPolicy,
            #[serde(skip_serializing_if = "no_ips")]
            resolved_ips: &'a BTreeSet<IpAddr>,
        }
        fn no_ips(ips: &&BTreeSet<IpAddr>) -> bool {
            ips.is_empty()
        }
        serde_json::to_value(Head {
            version: &self.version,
            inbound: &self.inbound,
            resolved_ips: &self.resolved_ips,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// The outbound services sorted by authority, as `/config` lists them.
    pub fn outbound_sorted(&self) -> &[Arc<OutboundService>] {
        &self.outbound_sorted
    }

    /// The endpoint sets by resource name, as `/config` lists them.
    pub fn endpoint_sets_sorted(&self) -> &BTreeMap<String, Arc<EndpointSet>> {
        &self.endpoint_sets_sorted
    }
}

/// `/config` reads the config through this: its lists one resource at a time, so a dump of any
/// size is streamed (crate::admin).
impl crate::admin::ConfigLists for Config {
    fn version(&self) -> &str {
        &self.version
    }
    fn head_json(&self) -> serde_json::Value {
        self.json_head()
    }
    fn outbound_len(&self) -> usize {
        self.outbound_sorted.len()
    }
    fn endpoints_len(&self) -> usize {
        self.endpoint_sets_sorted.len()
    }
    fn each_outbound(&self, offset: usize, f: &mut dyn FnMut(serde_json::Value) -> bool) {
        for svc in self.outbound_sorted.iter().skip(offset) {
            if !f(serde_json::to_value(svc).unwrap_or(serde_json::Value::Null)) {
                return;
            }
        }
    }
    fn each_endpoints(&self, offset: usize, f: &mut dyn FnMut(&str, serde_json::Value) -> bool) {
        for (name, set) in self.endpoint_sets_sorted.iter().skip(offset) {
            if !f(
                name,
                serde_json::to_value(set).unwrap_or(serde_json::Value::Null),
            ) {
                return;
            }
        }
    }
}

/// A fresh watch channel holding the default config: what the proxy serves before the control
/// plane answers.
pub fn channel() -> (
    tokio::sync::watch::Sender<Arc<Config>>,
    tokio::sync::watch::Receiver<Arc<Config>>,
) {
    tokio::sync::watch::channel(Arc::new(Config::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::resource::Kind;

    fn res(name: &str, kind: Kind) -> (String, v1::Resource) {
        (
            name.to_string(),
            v1::Resource {
                name: name.to_string(),
                version: "1".to_string(),
                kind: Some(kind),
            },
        )
    }

    fn mesh(ids: &[&str]) -> v1::authorization::Clients {
        v1::authorization::Clients::Mesh(v1::MeshClients {
            identities: ids.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn sample() -> BTreeMap<String, v1::Resource> {
        let m = v1::HttpMatch {
            name: "v2-users".into(),
            path_regex: "/api".into(),
            methods: vec!["GET".into()],
            headers: vec![v1::HeaderMatch {
                name: "X-User".into(),
                value_regex: "beta.*".into(),
            }],
            ..Default::default()
        };
        [
            res(
                "inbound",
                Kind::Inbound(v1::InboundPolicy {
                    identity: "spiffe://cluster.local/ns/demo/sa/api".into(),
                    default_policy: v1::DefaultPolicy::Mesh as i32,
                    ports: vec![v1::InboundPort {
                        limits: None,
                        port: 8080,
                        protocol: v1::Protocol::Http1 as i32,
                        restricted: true,
                        authorizations: vec![v1::Authorization {
                            name: "demo/web-to-api".into(),
                            clients: Some(mesh(&["spiffe://cluster.local/ns/demo/sa/web"])),
                            all_traffic: false,
                            http_routes: vec![m.clone()],
                            ..Default::default()
                        }],
                    }],
                }),
            ),
            res(
                "outbound:api.demo",
                Kind::Outbound(v1::OutboundService {
                    namespace: "demo".into(),
                    name: "api".into(),
                    cluster_ips: vec![vec![10, 96, 0, 10]],
                    ports: vec![v1::OutboundPort {
                        port: 80,
                        protocol: 0,
                        routes: vec![
                            v1::Route {
                                name: "split:demo/ab".into(),
                                matches: vec![m],
                                backends: vec![v1::WeightedBackend {
                                    service: "api-v2".into(),
                                    weight: 1,
                                    endpoint_set: "endpoints:api-v2.demo:80".into(),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            },
                            v1::Route {
                                name: "default".into(),
                                matches: vec![],
                                backends: vec![v1::WeightedBackend {
                                    service: "api".into(),
                                    weight: 1,
                                    endpoint_set: "endpoints:api.demo:80".into(),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            },
                        ],
                    }],
                    policy: Some(v1::TrafficPolicy {
                        request_timeout_ms: 1500,
                        max_retries: 2,
                        retry_budget_ratio: 0.2,
                        retry_non_idempotent: false,
                        ..Default::default()
                    }),
                }),
            ),
            res(
                "endpoints:api.demo:80",
                Kind::Endpoints(v1::EndpointSet {
                    endpoints: vec![v1::Endpoint {
                        ip: vec![127, 0, 0, 2],
                        port: 8080,
                        identity: "spiffe://cluster.local/ns/demo/sa/api".into(),
                        inbound_port: 4143,
                        pod: "demo/api-0".into(),
                        workload: "statefulset/api".into(),
                    }],
                }),
            ),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn converts_and_indexes() {
        let cfg = Config::from_resources("v1", &sample()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.version, "v1");
        assert_eq!(cfg.inbound.default_policy, DefaultPolicy::Mesh);
        let port = &cfg.inbound.ports[&8080];
        assert!(port.restricted);
        assert_eq!(port.protocol, Protocol::Http1);
        let svc = cfg.service("demo", "api").map(|s| s.authority.to_string());
        assert_eq!(svc.as_deref(), Some("api.demo"));
        let by_ip = cfg.service_by_addr("10.96.0.10:80".parse().unwrap_or_else(|_| unreachable!()));
        assert!(by_ip.is_some());
        let svc = cfg
            .service("demo", "api")
            .cloned()
            .unwrap_or_else(|| panic!());
        assert_eq!(
            svc.policy.request_timeout,
            Some(Duration::from_millis(1500))
        );
        let routes = &svc.ports[0].routes;
        // Unknown endpoint set: accepted, no endpoints.
        assert!(routes[0].backends[0].endpoints.endpoints.is_empty());
        assert_eq!(routes[1].backends[0].endpoints.endpoints.len(), 1);
        assert_eq!(routes[1].total_weight, 1);
        let m = &routes[0].matches[0];
        assert!(m.path.as_ref().is_some_and(|re| re.is_match("/api/users")));
        assert!(!m.path.as_ref().is_some_and(|re| re.is_match("/v1/api")));
        assert!(m.headers[0].value.is_match("beta-1"));
        assert!(!m.headers[0].value.is_match("not-beta"));
        assert_eq!(m.headers[0].name.as_str(), "x-user");
        let pod = cfg.pod("127.0.0.2".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(pod.map(|p| p.inbound_port), Some(4143));
        let json = cfg.to_json();
        assert_eq!(json["version"], "v1");
        assert_eq!(json["outbound"][0]["authority"], "api.demo");
    }

    #[test]
    fn rejects_invalid_regex_with_resource_name() {
        let mut r = sample();
        if let Some(Kind::Outbound(s)) =
            r.get_mut("outbound:api.demo").and_then(|r| r.kind.as_mut())
        {
            s.ports[0].routes[0].matches[0].path_regex = "/(unclosed".into();
        }
        let err = Config::from_resources("v2", &r).err();
        let err = err.unwrap_or_else(|| panic!("accepted an invalid regex"));
        assert_eq!(err.resource(), "outbound:api.demo");
        assert!(err.to_string().contains("path_regex"), "{err}");
    }

    /// A regex that would close the anchoring group is rejected (the update is NACKed), never
    /// compiled into one that matches any value.
    #[test]
    fn rejects_regex_that_escapes_its_anchors() {
        assert!(compile_header_regex("admin)|(.*").is_err());
        assert!(compile_path_regex("/a)|(/b").is_err());
        assert!(compile_header_regex("admin").is_ok_and(|re| !re.is_match("x-admin")));
        let mut r = sample();
        if let Some(Kind::Outbound(s)) =
            r.get_mut("outbound:api.demo").and_then(|r| r.kind.as_mut())
        {
            s.ports[0].routes[0].matches[0].headers[0].value_regex = "beta)|(.*".into();
        }
        let err = Config::from_resources("v2", &r).err();
        assert!(
            matches!(err, Some(ConfigError::InvalidHeaderRegex { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_bad_ip_length() {
        let mut r = sample();
        if let Some(Kind::Endpoints(s)) = r
            .get_mut("endpoints:api.demo:80")
            .and_then(|r| r.kind.as_mut())
        {
            s.endpoints[0].ip = vec![1, 2, 3];
        }
        let err = Config::from_resources("v2", &r).err();
        assert!(matches!(err, Some(ConfigError::InvalidIp { len: 3, .. })));
    }

    #[test]
    fn defaults_allow_and_have_no_services() {
        let cfg = Config::default();
        assert_eq!(cfg.inbound.default_policy, DefaultPolicy::Allow);
        assert!(cfg.services.is_empty());
        let empty = Config::from_resources("v0", &BTreeMap::new());
        assert!(empty.is_ok_and(|c| c.inbound.default_policy == DefaultPolicy::Allow));
    }

    #[test]
    fn retry_budget_reserve_and_deposits() {
        let b = RetryBudget::new(0.5);
        for _ in 0..RetryBudget::RESERVE {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        b.deposit();
        assert!(!b.try_withdraw());
        b.deposit();
        assert!(b.try_withdraw());
        let none = RetryBudget::new(0.0);
        none.deposit();
        assert!(none.try_withdraw());
    }

    /// Version skew: an operator one minor version older sends only the deprecated `sources`
    /// (`"*"` for the kubelet's probes); the proxy reads them as before.
    #[test]
    #[allow(deprecated)]
    fn any_client_source_admits_every_peer() {
        let mut r = sample();
        if let Some(v1::Resource {
            kind: Some(Kind::Inbound(p)),
            ..
        }) = r.get_mut("inbound")
        {
            p.ports[0].authorizations.push(v1::Authorization {
                name: "probe".into(),
                sources: vec!["*".into()],
                clients: None,
                all_traffic: false,
                http_routes: vec![v1::HttpMatch {
                    name: "probe".into(),
                    path_regex: "/healthz$".into(),
                    methods: vec!["GET".into(), "HEAD".into()],
                    headers: vec![],
                    ..Default::default()
                }],
            });
        }
        let cfg = Config::from_resources("v1", &r).unwrap_or_else(|e| panic!("{e}"));
        let authz = &cfg.inbound.ports[&8080].authorizations;
        let probe = authz.iter().find(|a| &*a.name == "probe");
        assert!(probe.is_some_and(|a| a.admits(None) && a.admits(Some("spiffe://x/ns/a/sa/b"))));
        let web = authz.iter().find(|a| &*a.name == "demo/web-to-api");
        assert!(web.is_some_and(|a| !a.admits(None)
            && !a.admits(Some("spiffe://cluster.local/ns/demo/sa/other"))
            && a.admits(Some("spiffe://cluster.local/ns/demo/sa/web"))));
    }

    fn with_version(mut r: v1::Resource, version: &str) -> v1::Resource {
        r.version = version.to_string();
        r
    }

    /// `sample()` plus a second service `web.demo` with its own endpoint set.
    fn two_services() -> BTreeMap<String, v1::Resource> {
        let mut r = sample();
        let mut web = r["outbound:api.demo"].clone();
        web.name = "outbound:web.demo".into();
        if let Some(Kind::Outbound(s)) = web.kind.as_mut() {
            s.name = "web".into();
            s.cluster_ips = vec![vec![10, 96, 0, 11]];
            s.ports[0].routes.truncate(1);
            s.ports[0].routes[0].backends[0].endpoint_set = "endpoints:web.demo:80".into();
        }
        let mut eps = r["endpoints:api.demo:80"].clone();
        eps.name = "endpoints:web.demo:80".into();
        if let Some(Kind::Endpoints(e)) = eps.kind.as_mut() {
            e.endpoints[0].ip = vec![127, 0, 0, 3];
        }
        r.insert(web.name.clone(), web);
        r.insert(eps.name.clone(), eps);
        r
    }

    fn svc<'c>(cfg: &'c Config, name: &str) -> &'c Arc<OutboundService> {
        cfg.service("demo", name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    fn endpoints_of(svc: &OutboundService) -> &Arc<EndpointSet> {
        &svc.ports[0]
            .routes
            .last()
            .unwrap_or_else(|| panic!())
            .backends[0]
            .endpoints
    }

    /// Uses a config's live state the way requests do: deposits, a retry, a latency sample.
    fn use_state(svc: &OutboundService) {
        for _ in 0..7 {
            svc.retry_budget.deposit();
        }
        assert!(svc.retry_budget.try_withdraw());
        endpoints_of(svc).endpoints[0]
            .load
            .observe(Duration::from_millis(500));
    }

    #[test]
    fn a_push_converting_nothing_new_keeps_every_object_and_its_state() {
        let mut store = Store::new();
        let first = store
            .update("v1", &two_services())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.last_update().converted, 5);
        use_state(svc(&first, "api"));
        let budget = svc(&first, "api").retry_budget.balance_milli();
        let ewma = endpoints_of(svc(&first, "api")).endpoints[0]
            .load
            .ewma_nanos();

        let second = store
            .update("v2", &two_services())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store.last_update(),
            UpdateStats {
                converted: 0,
                relinked: 0,
                reused: 5
            }
        );
        assert_eq!(second.version, "v2");
        for name in ["api", "web"] {
            assert!(Arc::ptr_eq(svc(&first, name), svc(&second, name)), "{name}");
        }
        assert!(Arc::ptr_eq(&first.inbound, &second.inbound));
        assert_eq!(svc(&second, "api").retry_budget.balance_milli(), budget);
        let load = &endpoints_of(svc(&second, "api")).endpoints[0].load;
        assert_eq!(load.ewma_nanos(), ewma);
        assert_eq!(ewma, 500_000_000.0);
    }

    #[test]
    fn an_endpoint_change_for_one_service_keeps_the_others_state() {
        let mut store = Store::new();
        let r = two_services();
        let first = store.update("v1", &r).unwrap_or_else(|e| panic!("{e}"));
        use_state(svc(&first, "api"));
        use_state(svc(&first, "web"));
        let web_budget = svc(&first, "web").retry_budget.balance_milli();
        assert_ne!(web_budget, RetryBudget::RESERVE * 1000);

        // web.demo gains an endpoint; its first endpoint stays.
        let mut changed = r.clone();
        let eps = changed
            .get_mut("endpoints:web.demo:80")
            .unwrap_or_else(|| panic!());
        eps.version = "2".into();
        if let Some(Kind::Endpoints(e)) = eps.kind.as_mut() {
            let mut added = e.endpoints[0].clone();
            added.ip = vec![127, 0, 0, 4];
            e.endpoints.push(added);
        }
        let second = store
            .update("v2", &changed)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store.last_update(),
            UpdateStats {
                converted: 1,
                relinked: 1,
                reused: 3
            }
        );
        // The other service: the same object, the same budget and estimates.
        assert!(Arc::ptr_eq(svc(&first, "api"), svc(&second, "api")));
        // The changed service: re-resolved, not re-converted; its budget and the estimate of
        // its remaining endpoint are kept, the new endpoint starts fresh.
        let (web1, web2) = (svc(&first, "web"), svc(&second, "web"));
        assert!(!Arc::ptr_eq(web1, web2));
        assert!(Arc::ptr_eq(&web1.retry_budget, &web2.retry_budget));
        assert_eq!(web2.retry_budget.balance_milli(), web_budget);
        let (old, new) = (endpoints_of(web1), endpoints_of(web2));
        assert_eq!(new.endpoints.len(), 2);
        assert!(Arc::ptr_eq(&old.endpoints[0].load, &new.endpoints[0].load));
        assert_eq!(new.endpoints[0].load.ewma_nanos(), 500_000_000.0);
        assert_eq!(
            new.endpoints[1].load.ewma_nanos(),
            crate::balance::DEFAULT_RTT.as_nanos() as f64
        );
        // The route regexes were not compiled again.
        let re = |s: &OutboundService| s.ports[0].routes[0].matches[0].path.clone();
        assert_eq!(
            re(web1).map(|r| r.as_str().to_string()),
            re(web2).map(|r| r.as_str().to_string())
        );
    }

    #[test]
    fn a_removed_service_and_its_endpoints_are_freed() {
        let mut store = Store::new();
        let r = two_services();
        let first = store.update("v1", &r).unwrap_or_else(|e| panic!("{e}"));
        let budget = Arc::downgrade(&svc(&first, "web").retry_budget);
        let load = Arc::downgrade(&endpoints_of(svc(&first, "web")).endpoints[0].load);
        assert_eq!(
            (store.state().services(), store.state().endpoints()),
            (2, 2)
        );

        let mut fewer = r.clone();
        fewer.remove("outbound:web.demo");
        fewer.remove("endpoints:web.demo:80");
        let second = store.update("v2", &fewer).unwrap_or_else(|e| panic!("{e}"));
        assert!(second.service("demo", "web").is_none());
        assert_eq!(
            (store.state().services(), store.state().endpoints()),
            (1, 1)
        );
        assert!(store.state().budget("demo", "web").is_none());
        // Once the old config is gone (requests finished), nothing holds the state.
        drop(first);
        assert!(budget.upgrade().is_none());
        assert!(load.upgrade().is_none());
        // Added back: fresh state.
        let third = store.update("v3", &r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            svc(&third, "web").retry_budget.balance_milli(),
            RetryBudget::RESERVE * 1000
        );
    }

    #[test]
    fn a_rejected_update_leaves_the_store_as_it_was() {
        let mut store = Store::new();
        let r = two_services();
        let first = store.update("v1", &r).unwrap_or_else(|e| panic!("{e}"));
        let mut bad = r.clone();
        bad.remove("outbound:web.demo");
        let api = bad.get_mut("outbound:api.demo").unwrap_or_else(|| panic!());
        *api = with_version(api.clone(), "2");
        if let Some(Kind::Outbound(s)) = api.kind.as_mut() {
            s.ports[0].routes[0].matches[0].path_regex = "/(unclosed".into();
        }
        let err = store.update("v2", &bad).err();
        assert!(
            matches!(err, Some(ConfigError::InvalidPathRegex { .. })),
            "{err:?}"
        );
        // web.demo's state is still there; the next good update reuses everything.
        assert_eq!(store.state().services(), 2);
        let again = store.update("v3", &r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.last_update().converted, 0);
        assert!(Arc::ptr_eq(svc(&first, "web"), svc(&again, "web")));
    }

    #[test]
    fn a_changed_retry_ratio_keeps_the_balance() {
        let mut store = Store::new();
        let r = two_services();
        let first = store.update("v1", &r).unwrap_or_else(|e| panic!("{e}"));
        use_state(svc(&first, "api"));
        let mut changed = r.clone();
        let api = changed
            .get_mut("outbound:api.demo")
            .unwrap_or_else(|| panic!());
        api.version = "2".into();
        if let Some(Kind::Outbound(s)) = api.kind.as_mut() {
            s.policy = Some(v1::TrafficPolicy {
                retry_budget_ratio: 0.0,
                ..Default::default()
            });
        }
        let second = store
            .update("v2", &changed)
            .unwrap_or_else(|e| panic!("{e}"));
        let api = svc(&second, "api");
        assert_eq!(api.policy.retry_budget_ratio, 0.0);
        assert!(Arc::ptr_eq(
            &svc(&first, "api").retry_budget,
            &api.retry_budget
        ));
        let balance = api.retry_budget.balance_milli();
        api.retry_budget.deposit();
        assert_eq!(api.retry_budget.balance_milli(), balance);
    }

    fn inbound_with(authz: v1::Authorization) -> BTreeMap<String, v1::Resource> {
        let mut r = sample();
        if let Some(v1::Resource {
            kind: Some(Kind::Inbound(p)),
            ..
        }) = r.get_mut("inbound")
        {
            p.ports[0].authorizations.push(authz);
        }
        r
    }

    #[test]
    fn typed_clients_admit_mesh_identities_or_any_client() {
        let probe = v1::Authorization {
            name: "kubelet".into(),
            clients: Some(v1::authorization::Clients::Probes(v1::KubeletProbes {})),
            http_routes: vec![v1::HttpMatch {
                name: "probe".into(),
                path_regex: "/healthz$".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let cfg =
            Config::from_resources("v1", &inbound_with(probe)).unwrap_or_else(|e| panic!("{e}"));
        let authz = &cfg.inbound.ports[&8080].authorizations;
        assert_eq!(authz[1].clients, Clients::AnyClient);
        assert!(authz[1].admits(None));
        let Clients::Mesh(ids) = &authz[0].clients else {
            panic!("{:?}", authz[0].clients)
        };
        assert_eq!(ids.ids(), ["spiffe://cluster.local/ns/demo/sa/web"]);
        assert!(!authz[0].admits(None));
        assert!(authz[0].admits(Some("spiffe://cluster.local/ns/demo/sa/web")));
        // An empty identity list admits nobody.
        let nobody = v1::Authorization {
            name: "demo/nobody".into(),
            clients: Some(mesh(&[])),
            all_traffic: true,
            ..Default::default()
        };
        let cfg =
            Config::from_resources("v1", &inbound_with(nobody)).unwrap_or_else(|e| panic!("{e}"));
        let a = &cfg.inbound.ports[&8080].authorizations[1];
        assert!(!a.admits(None) && !a.admits(Some("spiffe://cluster.local/ns/demo/sa/web")));
    }

    /// `clients`, when set, is what counts: the deprecated `sources` beside it is ignored.
    #[test]
    #[allow(deprecated)]
    fn typed_clients_win_over_deprecated_sources() {
        let both = v1::Authorization {
            name: "demo/both".into(),
            sources: vec!["*".into()],
            clients: Some(mesh(&["spiffe://cluster.local/ns/demo/sa/web"])),
            all_traffic: true,
            ..Default::default()
        };
        let cfg =
            Config::from_resources("v1", &inbound_with(both)).unwrap_or_else(|e| panic!("{e}"));
        let a = &cfg.inbound.ports[&8080].authorizations[1];
        assert!(!a.admits(None));
        assert!(a.admits(Some("spiffe://cluster.local/ns/demo/sa/web")));
    }

    /// A malformed identity could never match a peer: the update is refused (typed or not).
    #[test]
    #[allow(deprecated)]
    fn a_malformed_identity_is_rejected() {
        for authz in [
            v1::Authorization {
                name: "demo/typo".into(),
                clients: Some(mesh(&["spiffe://cluster.local/ns/demo/web"])),
                ..Default::default()
            },
            v1::Authorization {
                name: "demo/typo".into(),
                sources: vec!["web".into()],
                ..Default::default()
            },
        ] {
            let err = Config::from_resources("v1", &inbound_with(authz)).err();
            let err = err.unwrap_or_else(|| panic!("accepted a malformed identity"));
            assert!(matches!(err, ConfigError::InvalidIdentity { .. }), "{err}");
            assert_eq!(err.resource(), "inbound");
        }
    }

    /// Regression (#14): a method that is not an HTTP method token is refused even next to
    /// `*` (it used to be accepted as "any method").
    #[test]
    fn an_invalid_method_is_rejected_even_beside_the_wildcard() {
        let with_methods = |methods: &[&str]| {
            let mut r = sample();
            if let Some(Kind::Outbound(s)) =
                r.get_mut("outbound:api.demo").and_then(|r| r.kind.as_mut())
            {
                s.ports[0].routes[0].matches[0].methods =
                    methods.iter().map(|m| m.to_string()).collect();
            }
            Config::from_resources("v1", &r)
        };
        for bad in [&["*", "G ET"][..], &["GET", ""], &["G(ET"]] {
            let err = with_methods(bad).err();
            assert!(
                matches!(err, Some(ConfigError::InvalidMethod { .. })),
                "{bad:?}: {err:?}"
            );
        }
        for (ok, any) in [(&["*"][..], true), (&[], true), (&["get", "PATCH"], false)] {
            let cfg = with_methods(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            let m = &svc(&cfg, "api").ports[0].routes[0].matches[0];
            assert_eq!(m.methods.is_none(), any, "{ok:?}");
        }
    }

    #[test]
    fn state_view_reports_budgets_and_estimates() {
        let cfg = Config::from_resources("v1", &sample()).unwrap_or_else(|e| panic!("{e}"));
        use_state(svc(&cfg, "api"));
        let view = cfg.state_view();
        assert_eq!(
            view.services["api.demo"].retry_budget_milli,
            svc(&cfg, "api").retry_budget.balance_milli()
        );
        let eps = &view.endpoints["endpoints:api.demo:80"];
        assert_eq!(eps[0].ewma_ns, 500_000_000.0);
        assert_eq!(eps[0].pending, 0);
    }

    #[test]
    fn unspecified_default_policy_is_allow() {
        assert_eq!(DefaultPolicy::from_proto(0), DefaultPolicy::Allow);
        assert_eq!(DefaultPolicy::from_proto(99), DefaultPolicy::Deny);
        assert_eq!(Protocol::from_proto(99), Protocol::Detect);
    }

    fn gateway_service(route: v1::Route) -> BTreeMap<String, v1::Resource> {
        [res(
            "outbound:api.demo",
            Kind::Outbound(v1::OutboundService {
                namespace: "demo".into(),
                name: "api".into(),
                ports: vec![v1::OutboundPort {
                    port: 80,
                    routes: vec![route],
                    ..Default::default()
                }],
                ..Default::default()
            }),
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn gateway_fields_convert_with_their_defaults() {
        use v1::route_filter::Kind as F;
        let route = v1::Route {
            name: "httproute:demo/r/0".into(),
            filters: vec![v1::RouteFilter {
                kind: Some(F::RequestRedirect(v1::RequestRedirect {
                    path: Some(v1::PathModifier {
                        kind: Some(v1::path_modifier::Kind::ReplacePrefixMatch("/new/".into())),
                        matched_prefix: "/old/".into(),
                    }),
                    ..Default::default()
                })),
            }],
            backends: vec![v1::WeightedBackend {
                service: "other/api".into(),
                weight: 1,
                unavailable_reason: "not found".into(),
                ..Default::default()
            }],
            timeouts: Some(v1::RouteTimeouts {
                request_ms: 0,
                backend_request_ms: 250,
            }),
            ..Default::default()
        };
        let cfg =
            Config::from_resources("v", &gateway_service(route)).unwrap_or_else(|e| panic!("{e}"));
        let r = &cfg.services["demo"]["api"].ports[0].routes[0];
        match &r.filters[..] {
            [Filter::RequestRedirect(rd)] => {
                assert_eq!(rd.status, http::StatusCode::FOUND);
                assert_eq!(rd.path, Some(PathModifier::prefix("/old", "/new")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.timeouts,
            Some(RouteTimeouts {
                request: None,
                backend_request: Some(Duration::from_millis(250)),
            })
        );
        assert_eq!(r.direct_status, None);
        assert_eq!(
            r.backends[0].no_endpoints_status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        let _ = cfg.to_json();
    }

    #[test]
    fn invalid_gateway_values_are_refused_with_the_resource() {
        use v1::route_filter::Kind as F;
        let bad = [
            v1::Route {
                direct_status: 200,
                ..Default::default()
            },
            v1::Route {
                backends: vec![v1::WeightedBackend {
                    unavailable_status: 1000,
                    ..Default::default()
                }],
                ..Default::default()
            },
            v1::Route {
                filters: vec![v1::RouteFilter {
                    kind: Some(F::RequestRedirect(v1::RequestRedirect {
                        port: 70_000,
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            },
            v1::Route {
                filters: vec![v1::RouteFilter {
                    kind: Some(F::UrlRewrite(v1::UrlRewrite {
                        hostname: "host:80".into(),
                        path: None,
                    })),
                }],
                ..Default::default()
            },
            v1::Route {
                filters: vec![v1::RouteFilter {
                    kind: Some(F::UrlRewrite(v1::UrlRewrite {
                        hostname: String::new(),
                        path: Some(v1::PathModifier {
                            kind: Some(v1::path_modifier::Kind::ReplacePrefixMatch("/x".into())),
                            matched_prefix: String::new(),
                        }),
                    })),
                }],
                ..Default::default()
            },
        ];
        for route in bad {
            match Config::from_resources("v", &gateway_service(route.clone())) {
                Err(e @ ConfigError::InvalidRoute { .. }) => {
                    assert_eq!(e.resource(), "outbound:api.demo")
                }
                other => panic!("{route:?}: {other:?}"),
            }
        }
    }
    mod admin_dump {
        //! `/config` over a real config: the streamed dump equals the document rendered whole,
        //! and pages list every resource once.
        use super::*;
        use crate::admin::{self, AdminSource};
        use serde_json::Value;

        fn get(path: &str) -> http::Request<()> {
            http::Request::get(path).body(()).unwrap_or_default()
        }

        async fn body_of(resp: http::Response<admin::AdminBody>) -> Vec<u8> {
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
            fn config_dump(&self) -> admin::ConfigDump {
                let head = serde_json::json!({
                    "version": "v7",
                    "control": {"connected": true, "last_error": null},
                    "identity": {"id": "spiffe://x", "expiry_unix_seconds": 5},
                });
                admin::ConfigDump {
                    head: match head {
                        Value::Object(m) => m,
                        _ => serde_json::Map::new(),
                    },
                    config: Arc::clone(&self.0) as Arc<dyn admin::ConfigLists>,
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
                whole.insert("config".into(), source.0.to_json());
                let mut want = serde_json::to_vec_pretty(&Value::Object(whole)).unwrap_or_default();
                want.push(b'\n');
                let got = body_of(admin::handle(&get("/config"), &source).await).await;
                if n == 2000 {
                    assert!(got.len() > 4 * admin::STREAM_CHUNK, "{}", got.len());
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
                    let resp = admin::handle(
                        &get(&format!("/config?kind={kind}&offset={o}&limit=100")),
                        &source,
                    )
                    .await;
                    assert_eq!(resp.status(), http::StatusCode::OK);
                    let page: Value =
                        serde_json::from_slice(&body_of(resp).await).unwrap_or_default();
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
            let resp = admin::handle(&get("/config?kind=summary"), &source).await;
            let summary: Value = serde_json::from_slice(&body_of(resp).await).unwrap_or_default();
            assert_eq!(summary["config"]["counts"]["outbound"], 250);
            assert_eq!(summary["config"]["counts"]["endpoints"], 250);
            assert_eq!(summary["version"], "v7");
            let resp = admin::handle(&get("/config?kind=outbound&offset=x"), &source).await;
            assert_eq!(resp.status(), http::StatusCode::BAD_REQUEST);
        }
    }
}
