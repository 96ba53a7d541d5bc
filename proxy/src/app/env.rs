//! The proxy's typed configuration, read from `WEFT_PROXY_*` environment variables.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::control_tls::ControlPeer;
use crate::identity::TrustAnchors;

/// Where the operator's discovery (and identity) API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlAddr {
    /// `http://host:port` of the first entry, as given to tonic (the connections are made by
    /// [`crate::control_tls::ControlConnector`] to every entry of `targets`).
    pub uri: String,
    /// The host part of the first entry (a DNS name or an IP address, without brackets).
    pub host: String,
    /// Every entry (`WEFT_PROXY_CONTROL_ADDR` is a comma-separated list of `host:port`, all
    /// with the same scheme): the operator replicas, failed over between.
    pub targets: Vec<crate::control_tls::ControlTarget>,
    /// True when the operator is reached over TLS (trust anchors are configured).
    pub tls: bool,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Everything the proxy process needs to start.
#[derive(Clone, Debug)]
pub struct ProxyEnv {
    pub control_addr: ControlAddr,
    pub pod_namespace: String,
    pub pod_name: String,
    pub service_account: String,
    pub token_file: PathBuf,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app_ip: IpAddr,
    pub trust_domain: String,
    pub shutdown_grace: Duration,
    /// `WEFT_PROXY_MEMORY_QUIET` (default 5s, `off` to disable): how often the proxy looks for a
    /// quiet spell after load to return freed heap to the kernel (`crate::memory`).
    pub memory_quiet: Option<Duration>,
    pub threads: usize,
    pub log_filter: String,
    pub log_format: LogFormat,
    /// `WEFT_PROXY_TRUST_ANCHORS` / `WEFT_PROXY_TRUST_ANCHORS_FILE`: when set, TLS to the
    /// operator verified against them, and the roots for peers.
    pub trust_anchors: Option<TrustAnchors>,
    /// Who the operator must prove to be over TLS (set iff `trust_anchors` is).
    pub control_peer: Option<ControlPeer>,
    /// `WEFT_PROXY_WORKLOAD`: `<kind>/<name>` of the workload owning the pod (set by the
    /// injector; labels the Linkerd-compatible metrics). Kept as given; parsed by
    /// [`crate::metrics::PodMeta::new`], which ignores what it cannot read.
    pub workload: Option<String>,
    /// `WEFT_PROXY_TRACE_COLLECTOR`: OTLP/gRPC endpoint spans are exported to (`docs/tracing.md`);
    /// none: tracing off, requests forwarded untouched.
    pub trace_collector: Option<String>,
    /// `WEFT_PROXY_TRACE_SERVICE_NAME`: `service.name` of the spans; default
    /// [`ProxyEnv::trace_service_name`].
    pub trace_service_name: Option<String>,
    /// `WEFT_PROXY_DISCOVERY_MODE=on-demand` (default `push-all`): declare on-demand discovery
    /// (docs/proxy.md, "On-demand discovery").
    pub on_demand: bool,
    /// `WEFT_PROXY_OUTBOUND_SERVICES`: comma-separated `<svc>.<ns>` watched from the start
    /// (on demand only; the injector copies the pod's `weft.io/outbound-services` annotation).
    pub outbound_services: Vec<String>,
    /// `WEFT_PROXY_ON_DEMAND_WAIT` (default 2s): how long a request for an unknown destination
    /// waits for the control plane.
    pub on_demand_wait: Duration,
    /// `WEFT_PROXY_ON_DEMAND_IDLE` (default 10m): a destination not used for this long is
    /// dropped.
    pub on_demand_idle: Duration,
    /// `WEFT_PROXY_HTTP1_IDLE_TIMEOUT` (default 1h, [`crate::http::idle`]): how long an idle
    /// HTTP/1 keep-alive connection from a client (the app, or an unmeshed caller) is kept.
    pub http1_idle: Duration,
    /// `WEFT_PROXY_ADMIN_MAX_CONNECTIONS` (default [`crate::admin::MAX_CONNECTIONS`]): admin
    /// connections served at once; further ones wait in the listen backlog.
    pub admin_max_connections: usize,
    /// `WEFT_PROXY_TAP_ADDR`: the tap listener (`None`: `off`). docs/tap.md.
    pub tap_addr: Option<SocketAddr>,
    /// True when `WEFT_PROXY_TAP_ADDR` was not set: a failure to bind the default address
    /// (several proxies on one host) turns tap off with a warning instead of stopping the proxy.
    pub tap_addr_defaulted: bool,
    /// `WEFT_PROXY_TAP_IDENTITY` (default `WEFT_PROXY_CONTROL_IDENTITY`): who may tap; `None`:
    /// nobody.
    pub tap_identity: Option<String>,
    /// `WEFT_PROXY_TAP_REDACT`: more header names whose values tap never reports.
    pub tap_redact: Vec<String>,
}

/// A bad or missing environment variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("{name} is required")]
    Missing { name: &'static str },
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

pub const CONTROL_ADDR: &str = "WEFT_PROXY_CONTROL_ADDR";
pub const POD: &str = "WEFT_PROXY_POD";
pub const SERVICE_ACCOUNT: &str = "WEFT_PROXY_SERVICE_ACCOUNT";
pub const TOKEN_FILE: &str = "WEFT_PROXY_TOKEN_FILE";
pub const INBOUND_ADDR: &str = "WEFT_PROXY_INBOUND_ADDR";
pub const OUTBOUND_ADDR: &str = "WEFT_PROXY_OUTBOUND_ADDR";
pub const ADMIN_ADDR: &str = "WEFT_PROXY_ADMIN_ADDR";
pub const ADMIN_MAX_CONNECTIONS: &str = "WEFT_PROXY_ADMIN_MAX_CONNECTIONS";
pub const APP_IP: &str = "WEFT_PROXY_APP_IP";
pub const TRUST_DOMAIN: &str = "WEFT_PROXY_TRUST_DOMAIN";
pub const SHUTDOWN_GRACE: &str = "WEFT_PROXY_SHUTDOWN_GRACE";
pub const THREADS: &str = "WEFT_PROXY_THREADS";
pub const LOG: &str = "WEFT_LOG";
pub const LOG_FORMAT: &str = "WEFT_PROXY_LOG_FORMAT";
pub const TRUST_ANCHORS: &str = "WEFT_PROXY_TRUST_ANCHORS";
pub const TRUST_ANCHORS_FILE: &str = "WEFT_PROXY_TRUST_ANCHORS_FILE";
pub const CONTROL_IDENTITY: &str = "WEFT_PROXY_CONTROL_IDENTITY";
pub const WORKLOAD: &str = "WEFT_PROXY_WORKLOAD";
pub const TRACE_COLLECTOR: &str = "WEFT_PROXY_TRACE_COLLECTOR";
pub const TRACE_SERVICE_NAME: &str = "WEFT_PROXY_TRACE_SERVICE_NAME";
pub const DISCOVERY_MODE: &str = "WEFT_PROXY_DISCOVERY_MODE";
pub const OUTBOUND_SERVICES: &str = "WEFT_PROXY_OUTBOUND_SERVICES";
pub const ON_DEMAND_WAIT: &str = "WEFT_PROXY_ON_DEMAND_WAIT";
pub const ON_DEMAND_IDLE: &str = "WEFT_PROXY_ON_DEMAND_IDLE";
pub const HTTP1_IDLE_TIMEOUT: &str = "WEFT_PROXY_HTTP1_IDLE_TIMEOUT";
pub const TAP_ADDR: &str = "WEFT_PROXY_TAP_ADDR";
pub const TAP_IDENTITY: &str = "WEFT_PROXY_TAP_IDENTITY";
pub const MEMORY_QUIET: &str = "WEFT_PROXY_MEMORY_QUIET";
pub const TAP_REDACT: &str = "WEFT_PROXY_TAP_REDACT";

impl ProxyEnv {
    /// Reads the process environment.
    pub fn from_process_env() -> Result<Self, EnvError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the given variables (tests pass their own).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, EnvError> {
        let vars: HashMap<String, String> = vars.into_iter().collect();
        let get = |name: &'static str| -> Option<&str> {
            vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
        };
        let required = |name: &'static str| get(name).ok_or(EnvError::Missing { name });

        let (mut control_addr, https) = parse_control_addr(required(CONTROL_ADDR)?)?;
        let trust_anchors = match (get(TRUST_ANCHORS), get(TRUST_ANCHORS_FILE)) {
            (Some(_), Some(_)) => return Err(invalid(
                TRUST_ANCHORS_FILE,
                get(TRUST_ANCHORS_FILE).unwrap_or_default(),
                "set either WEFT_PROXY_TRUST_ANCHORS or WEFT_PROXY_TRUST_ANCHORS_FILE, not both",
            )),
            (Some(pem), None) => Some(
                TrustAnchors::from_pem(pem)
                    .map_err(|e| invalid(TRUST_ANCHORS, "<PEM>", &e.to_string()))?,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| invalid(TRUST_ANCHORS_FILE, path, &format!("cannot read: {e}")))?;
                Some(
                    TrustAnchors::from_pem(&pem)
                        .map_err(|e| invalid(TRUST_ANCHORS_FILE, path, &e.to_string()))?,
                )
            }
            (None, None) => None,
        };
        let control_identity = match get(CONTROL_IDENTITY) {
            None => None,
            Some(v) if is_spiffe_id(v) => Some(v.to_string()),
            Some(v) => {
                return Err(invalid(
                    CONTROL_IDENTITY,
                    v,
                    "expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
                ))
            }
        };
        // #18 tap: who may tap this proxy (the operator, unless told otherwise).
        let tap_identity = match get(TAP_IDENTITY) {
            None => control_identity.clone(),
            Some(v) if is_spiffe_id(v) => Some(v.to_string()),
            Some(v) => {
                return Err(invalid(
                    TAP_IDENTITY,
                    v,
                    "expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
                ))
            }
        };
        let tap_addr = match get(TAP_ADDR) {
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            v => Some(parse_socket_addr(TAP_ADDR, v, crate::tap::DEFAULT_ADDR)?),
        };
        let mut tap_redact = Vec::new();
        for name in get(TAP_REDACT).unwrap_or_default().split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(TAP_REDACT, &name, "not a header name"));
            }
            tap_redact.push(name);
        }
        let control_peer = match (&trust_anchors, control_identity) {
            (None, _) if https => {
                return Err(invalid(
                    CONTROL_ADDR,
                    required(CONTROL_ADDR)?,
                    "https:// needs WEFT_PROXY_TRUST_ANCHORS (or _FILE) to verify the operator",
                ))
            }
            (None, _) => None,
            (Some(_), Some(id)) => Some(ControlPeer::Identity(id)),
            (Some(_), None)
                if control_addr
                    .targets
                    .iter()
                    .any(|t| t.host.parse::<IpAddr>().is_ok()) =>
            {
                return Err(invalid(
                    CONTROL_ADDR,
                    required(CONTROL_ADDR)?,
                    "the host is an IP address: set WEFT_PROXY_CONTROL_IDENTITY to the operator's \
                     SPIFFE ID so that its certificate can be checked",
                ))
            }
            (Some(_), None) => Some(ControlPeer::DnsName(control_addr.host.clone())),
        };
        control_addr.tls = trust_anchors.is_some();
        let (pod_namespace, pod_name) = parse_pod(required(POD)?)?;
        let service_account = get(SERVICE_ACCOUNT).unwrap_or("default").to_string();
        if !is_dns_label(&service_account) && !is_dns_subdomain(&service_account) {
            return Err(invalid(
                SERVICE_ACCOUNT,
                &service_account,
                "not a valid service account name",
            ));
        }
        let token_file = PathBuf::from(required(TOKEN_FILE)?);
        let inbound_addr = parse_socket_addr(INBOUND_ADDR, get(INBOUND_ADDR), "0.0.0.0:4143")?;
        let outbound_addr = parse_socket_addr(OUTBOUND_ADDR, get(OUTBOUND_ADDR), "127.0.0.1:4140")?;
        let admin_addr = parse_socket_addr(ADMIN_ADDR, get(ADMIN_ADDR), "0.0.0.0:4191")?;
        let app_ip = match get(APP_IP) {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(v) => v
                .parse()
                .map_err(|e| invalid(APP_IP, v, &format!("not an IP address: {e}")))?,
        };
        let trust_domain = get(TRUST_DOMAIN).unwrap_or("cluster.local").to_string();
        if !is_dns_subdomain(&trust_domain) {
            return Err(invalid(TRUST_DOMAIN, &trust_domain, "not a DNS name"));
        }
        let shutdown_grace = match get(SHUTDOWN_GRACE) {
            None => Duration::from_secs(10),
            Some(v) => parse_duration(v).ok_or_else(|| {
                invalid(
                    SHUTDOWN_GRACE,
                    v,
                    "expected a duration such as 10s, 500ms, 1m or a number of seconds",
                )
            })?,
        };
        let memory_quiet = match get(MEMORY_QUIET) {
            None => Some(crate::memory::QUIET_INTERVAL),
            Some("off") => None,
            Some(v) => match parse_duration(v) {
                Some(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(3600) => {
                    Some(d)
                }
                _ => {
                    return Err(invalid(
                        MEMORY_QUIET,
                        v,
                        "expected off or a duration from 100ms to 1h, such as 5s",
                    ))
                }
            },
        };
        let threads = match get(THREADS) {
            None => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => return Err(invalid(THREADS, v, "expected a number from 1 to 64")),
            },
        };
        let admin_max_connections = match get(ADMIN_MAX_CONNECTIONS) {
            None => crate::admin::MAX_CONNECTIONS,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=65_536).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        ADMIN_MAX_CONNECTIONS,
                        v,
                        "expected a number from 1 to 65536",
                    ))
                }
            },
        };
        let log_filter = get(LOG).unwrap_or("info").to_string();
        let log_format = match get(LOG_FORMAT) {
            None | Some("plain") | Some("text") => LogFormat::Plain,
            Some("json") => LogFormat::Json,
            Some(v) => return Err(invalid(LOG_FORMAT, v, "expected `plain` or `json`")),
        };
        let workload = get(WORKLOAD).map(str::to_string);
        let trace_collector = get(TRACE_COLLECTOR)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        if let Some(c) = &trace_collector {
            // Plaintext only: TLS to the collector is not supported (docs/tracing.md).
            let plain_url = c
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty())
                && !c.chars().any(|ch| ch.is_whitespace() || ch.is_control());
            if !plain_url {
                return Err(invalid(
                    TRACE_COLLECTOR,
                    c,
                    "expected a plaintext OTLP/gRPC endpoint, e.g. `http://collector.tracing:4317`",
                ));
            }
        }
        let trace_service_name = get(TRACE_SERVICE_NAME)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let on_demand = match get(DISCOVERY_MODE) {
            None | Some("push-all") => false,
            Some("on-demand") => true,
            Some(v) => {
                return Err(invalid(
                    DISCOVERY_MODE,
                    v,
                    "expected `push-all` or `on-demand`",
                ))
            }
        };
        let outbound_services = get(OUTBOUND_SERVICES)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let duration = |name: &'static str, default: Duration| match get(name) {
            None => Ok(default),
            Some(v) => parse_duration(v).ok_or_else(|| {
                invalid(name, v, "expected a duration such as 2s, 500ms, 10m or 1h")
            }),
        };
        let on_demand_wait = duration(ON_DEMAND_WAIT, crate::ondemand::DEFAULT_WAIT)?;
        let on_demand_idle = duration(ON_DEMAND_IDLE, crate::ondemand::DEFAULT_IDLE)?;
        let http1_idle = match get(HTTP1_IDLE_TIMEOUT) {
            None => weft_common::reliability::HTTP1_IDLE_TIMEOUT,
            Some(v) => weft_common::reliability::http1_idle_timeout(v)
                .map_err(|reason| invalid(HTTP1_IDLE_TIMEOUT, v, &reason))?,
        };
        Ok(Self {
            http1_idle,
            tap_addr_defaulted: get(TAP_ADDR).is_none(),
            tap_addr,
            tap_identity,
            tap_redact,
            workload,
            trace_collector,
            trace_service_name,
            on_demand,
            outbound_services,
            on_demand_wait,
            on_demand_idle,
            control_addr,
            pod_namespace,
            pod_name,
            service_account,
            token_file,
            inbound_addr,
            outbound_addr,
            admin_addr,
            admin_max_connections,
            app_ip,
            trust_domain,
            shutdown_grace,
            memory_quiet,
            threads,
            log_filter,
            log_format,
            trust_anchors,
            control_peer,
        })
    }

    /// `service.name` of this proxy's spans: `WEFT_PROXY_TRACE_SERVICE_NAME`, else the workload's
    /// name (`WEFT_PROXY_WORKLOAD` `<kind>/<name>`), else the pod's name; with the namespace as
    /// `<name>.<namespace>`.
    pub fn trace_service_name(&self) -> String {
        if let Some(name) = &self.trace_service_name {
            return name.clone();
        }
        let name = self
            .workload
            .as_deref()
            .and_then(|w| w.split_once('/').map(|(_, n)| n))
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.pod_name);
        format!("{name}.{}", self.pod_namespace)
    }

    /// This proxy's SPIFFE identity.
    pub fn spiffe_id(&self) -> String {
        weft_common::SpiffeId {
            trust_domain: self.trust_domain.clone(),
            namespace: self.pod_namespace.clone(),
            service_account: self.service_account.clone(),
        }
        .to_string()
    }
}

fn invalid(name: &'static str, value: &str, reason: &str) -> EnvError {
    EnvError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>`, nothing more (the one SPIFFE ID parser), with a namespace
/// that is a DNS label as Kubernetes requires.
fn is_spiffe_id(v: &str) -> bool {
    weft_common::SpiffeId::parse(v).is_ok_and(|id| is_dns_label(&id.namespace))
}

/// Accepts `host:port`, `http://host:port` or `https://host:port`; the second value is true for
/// `https://` (which then requires trust anchors).
/// Parses `WEFT_PROXY_CONTROL_ADDR`: one `[scheme://]host:port`, or several separated by commas
/// (every entry with the same scheme).
fn parse_control_addr(v: &str) -> Result<(ControlAddr, bool), EnvError> {
    let mut entries = v.split(',').map(str::trim).filter(|e| !e.is_empty());
    let Some(first) = entries.next() else {
        return Err(invalid(CONTROL_ADDR, v, "expected host:port"));
    };
    let (mut addr, tls) = parse_control_entry(v, first)?;
    for entry in entries {
        let (more, more_tls) = parse_control_entry(v, entry)?;
        if more_tls != tls {
            return Err(invalid(
                CONTROL_ADDR,
                v,
                "every entry must use the same scheme (http:// or https://)",
            ));
        }
        for target in more.targets {
            if !addr.targets.contains(&target) {
                addr.targets.push(target);
            }
        }
    }
    if addr.targets.len() > MAX_CONTROL_ADDRS {
        return Err(invalid(
            CONTROL_ADDR,
            v,
            &format!("at most {MAX_CONTROL_ADDRS} entries"),
        ));
    }
    Ok((addr, tls))
}

/// Most entries `WEFT_PROXY_CONTROL_ADDR` may list.
const MAX_CONTROL_ADDRS: usize = 16;

/// One entry of `WEFT_PROXY_CONTROL_ADDR` (`whole` is the variable's value, for errors).
fn parse_control_entry(whole: &str, v: &str) -> Result<(ControlAddr, bool), EnvError> {
    let (tls, rest) = if let Some(rest) = v.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = v.strip_prefix("http://") {
        (false, rest)
    } else if v.contains("://") {
        return Err(invalid(
            CONTROL_ADDR,
            whole,
            "scheme must be http:// (plaintext) or https:// (TLS)",
        ));
    } else {
        (false, v)
    };
    let authority = rest.trim_end_matches('/');
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|e| invalid(CONTROL_ADDR, whole, &format!("not host:port: {e}")))?;
    if parsed.port_u16().is_none() || authority.contains('/') {
        return Err(invalid(CONTROL_ADDR, whole, "expected host:port"));
    }
    let host = parsed
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let target = crate::control_tls::ControlTarget {
        host: host.clone(),
        port: parsed.port_u16().unwrap_or_default(),
    };
    Ok((
        ControlAddr {
            uri: format!("http://{authority}"),
            host,
            targets: vec![target],
            tls,
        },
        tls,
    ))
}

fn parse_pod(v: &str) -> Result<(String, String), EnvError> {
    let Some((ns, name)) = v.split_once('/') else {
        return Err(invalid(POD, v, "expected namespace/name"));
    };
    if !is_dns_label(ns) {
        return Err(invalid(POD, v, "namespace is not a DNS label"));
    }
    if !is_dns_subdomain(name) {
        return Err(invalid(POD, v, "pod name is not a DNS subdomain"));
    }
    Ok((ns.to_string(), name.to_string()))
}

fn parse_socket_addr(
    name: &'static str,
    v: Option<&str>,
    default: &str,
) -> Result<SocketAddr, EnvError> {
    let v = v.unwrap_or(default);
    v.parse()
        .map_err(|e| invalid(name, v, &format!("expected ip:port: {e}")))
}

/// `10s`, `500ms`, `1.5m`, `1h`, or a bare number of seconds: the one duration parser
/// ([`weft_common::duration`]).
fn parse_duration(v: &str) -> Option<Duration> {
    weft_common::duration::parse_or_seconds(v).ok()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            (CONTROL_ADDR, "127.0.0.1:8086"),
            (POD, "demo/web-0"),
            (TOKEN_FILE, "/var/run/token"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, val) in extra {
            v.retain(|(name, _)| name != k);
            v.push((k.to_string(), val.to_string()));
        }
        v
    }

    #[test]
    fn trace_collector_and_service_name() {
        let env = ProxyEnv::from_vars(vars(&[])).unwrap();
        assert_eq!(env.trace_collector, None);
        assert_eq!(env.trace_service_name(), "web-0.demo");
        let env = ProxyEnv::from_vars(vars(&[
            (TRACE_COLLECTOR, " http://otel.tracing:4317 "),
            (WORKLOAD, "deployment/web"),
        ]))
        .unwrap();
        assert_eq!(
            env.trace_collector.as_deref(),
            Some("http://otel.tracing:4317")
        );
        assert_eq!(env.trace_service_name(), "web.demo");
        let env = ProxyEnv::from_vars(vars(&[(TRACE_SERVICE_NAME, "frontend")])).unwrap();
        assert_eq!(env.trace_service_name(), "frontend");
        assert_eq!(
            ProxyEnv::from_vars(vars(&[(TRACE_COLLECTOR, "")]))
                .unwrap()
                .trace_collector,
            None
        );
        for bad in [
            "otel:4317",
            "https://otel:4317",
            "http://",
            "http://a b:4317",
        ] {
            assert!(
                ProxyEnv::from_vars(vars(&[(TRACE_COLLECTOR, bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let env = ProxyEnv::from_vars(vars(&[])).unwrap();
        assert_eq!(env.control_addr.uri, "http://127.0.0.1:8086");
        assert!(!env.control_addr.tls);
        assert_eq!(
            (env.pod_namespace.as_str(), env.pod_name.as_str()),
            ("demo", "web-0")
        );
        assert_eq!(env.service_account, "default");
        assert_eq!(env.inbound_addr.to_string(), "0.0.0.0:4143");
        assert_eq!(env.outbound_addr.to_string(), "127.0.0.1:4140");
        assert_eq!(env.admin_addr.to_string(), "0.0.0.0:4191");
        assert_eq!(env.app_ip.to_string(), "127.0.0.1");
        assert_eq!(env.trust_domain, "cluster.local");
        assert_eq!(env.shutdown_grace, Duration::from_secs(10));
        assert_eq!(env.memory_quiet, Some(Duration::from_secs(5)));
        assert_eq!(env.threads, 1);
        assert_eq!(env.http1_idle, Duration::from_secs(3600));
        assert_eq!(env.spiffe_id(), "spiffe://cluster.local/ns/demo/sa/default");
    }

    #[test]
    fn http1_idle_timeout_takes_hours() {
        let env = ProxyEnv::from_vars(vars(&[(HTTP1_IDLE_TIMEOUT, "2h")])).unwrap();
        assert_eq!(env.http1_idle, Duration::from_secs(7200));
        let env = ProxyEnv::from_vars(vars(&[(HTTP1_IDLE_TIMEOUT, "90s")])).unwrap();
        assert_eq!(env.http1_idle, Duration::from_secs(90));
    }

    #[test]
    fn missing_required_is_named() {
        let mut v = vars(&[]);
        v.retain(|(k, _)| k != POD);
        assert_eq!(
            ProxyEnv::from_vars(v).unwrap_err(),
            EnvError::Missing { name: POD }
        );
        let err = ProxyEnv::from_vars(vars(&[(POD, "")])).unwrap_err();
        assert_eq!(err.to_string(), "WEFT_PROXY_POD is required");
    }

    #[test]
    fn bad_values_are_explained() {
        for (name, value) in [
            (POD, "no-slash"),
            (POD, "Demo/web"),
            (CONTROL_ADDR, "ftp://x:1"),
            (CONTROL_ADDR, "operator"),
            (ADMIN_ADDR, "localhost:4191"),
            (APP_IP, "nope"),
            (SHUTDOWN_GRACE, "ten"),
            (MEMORY_QUIET, "1ms"),
            (MEMORY_QUIET, "never"),
            (THREADS, "0"),
            (LOG_FORMAT, "xml"),
            (HTTP1_IDLE_TIMEOUT, "0"),
            (HTTP1_IDLE_TIMEOUT, "900ms"),
            (HTTP1_IDLE_TIMEOUT, "1d"),
        ] {
            let err = ProxyEnv::from_vars(vars(&[(name, value)])).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(name), "{msg}");
            assert!(matches!(err, EnvError::Invalid { .. }), "{msg}");
        }
    }

    #[test]
    fn control_addr_lists_replicas() {
        let env = ProxyEnv::from_vars(vars(&[(
            CONTROL_ADDR,
            "op-a.weft:8086, http://op-b.weft:8086,op-a.weft:8086",
        )]))
        .unwrap();
        assert_eq!(env.control_addr.uri, "http://op-a.weft:8086");
        let targets: Vec<String> = env
            .control_addr
            .targets
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(targets, ["op-a.weft:8086", "op-b.weft:8086"]);
        for bad in ["http://a:1,https://b:1", "a:1,b", ",", "a:1,ftp://b:1"] {
            let err = ProxyEnv::from_vars(vars(&[(CONTROL_ADDR, bad)])).unwrap_err();
            assert!(matches!(err, EnvError::Invalid { .. }), "{bad}: {err}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("op-{i}:8086")).collect();
        assert!(ProxyEnv::from_vars(vars(&[(CONTROL_ADDR, &many.join(","))])).is_err());
        // Over TLS without WEFT_PROXY_CONTROL_IDENTITY every entry needs a DNS name.
        assert!(with_anchors(&[
            (TRUST_ANCHORS, ANCHORS),
            (CONTROL_ADDR, "https://op-a.weft:8086,https://10.0.0.2:8086"),
        ])
        .is_err());
        let env = with_anchors(&[
            (TRUST_ANCHORS, ANCHORS),
            (
                CONTROL_ADDR,
                "https://op-a.weft:8086,https://op-b.weft:8086",
            ),
        ])
        .unwrap();
        assert_eq!(env.control_addr.targets.len(), 2);
    }

    #[test]
    fn overrides() {
        let env = with_anchors(&[
            (TRUST_ANCHORS, ANCHORS),
            (CONTROL_ADDR, "https://weft-operator.weft.svc:8086"),
            (SERVICE_ACCOUNT, "web"),
            (SHUTDOWN_GRACE, "500ms"),
            (MEMORY_QUIET, "off"),
            (THREADS, "2"),
            (LOG_FORMAT, "json"),
            (TRUST_DOMAIN, "example.org"),
        ])
        .unwrap();
        assert!(env.control_addr.tls);
        assert_eq!(env.control_addr.uri, "http://weft-operator.weft.svc:8086");
        assert_eq!(env.shutdown_grace, Duration::from_millis(500));
        assert_eq!(env.memory_quiet, None);
        assert_eq!(env.threads, 2);
        assert_eq!(env.log_format, LogFormat::Json);
        assert_eq!(env.spiffe_id(), "spiffe://example.org/ns/demo/sa/web");
    }

    const ANCHORS: &str = "__ANCHORS__";

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn with_anchors(extra: &[(&str, &str)]) -> Result<ProxyEnv, EnvError> {
        let pem = ca_pem();
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (*k, if *v == ANCHORS { pem.as_str() } else { *v }))
            .collect();
        ProxyEnv::from_vars(vars(&extra))
    }

    #[test]
    fn trust_anchors_turn_on_tls_to_the_operator() {
        // DNS host: the operator's certificate must carry that DNS name.
        let env = with_anchors(&[
            (
                CONTROL_ADDR,
                "weft-discovery.weft-system.svc.cluster.local:8086",
            ),
            (TRUST_ANCHORS, ANCHORS),
        ])
        .unwrap();
        assert!(env.control_addr.tls);
        assert_eq!(
            env.control_peer,
            Some(ControlPeer::DnsName(
                "weft-discovery.weft-system.svc.cluster.local".into()
            ))
        );
        // IP host: the SPIFFE ID must be given.
        let err = with_anchors(&[(TRUST_ANCHORS, ANCHORS)]).unwrap_err();
        assert!(err.to_string().contains(CONTROL_IDENTITY), "{err}");
        let id = "spiffe://cluster.local/ns/weft-system/sa/weft-operator";
        let env = with_anchors(&[(TRUST_ANCHORS, ANCHORS), (CONTROL_IDENTITY, id)]).unwrap();
        assert_eq!(env.control_peer, Some(ControlPeer::Identity(id.into())));
        assert_eq!(env.trust_anchors.map(|a| a.certificates().len()), Some(1));
        // From a file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, ca_pem()).unwrap();
        let path = path.display().to_string();
        let env = with_anchors(&[(TRUST_ANCHORS_FILE, &path), (CONTROL_IDENTITY, id)]).unwrap();
        assert!(env.control_addr.tls);
        // No anchors: plaintext, as before.
        let env = ProxyEnv::from_vars(vars(&[])).unwrap();
        assert!(!env.control_addr.tls && env.control_peer.is_none());
    }

    #[test]
    fn bad_trust_anchors_are_explained() {
        let id = "spiffe://cluster.local/ns/weft-system/sa/weft-operator";
        for (extra, name) in [
            (
                vec![(TRUST_ANCHORS, "not pem"), (CONTROL_IDENTITY, id)],
                TRUST_ANCHORS,
            ),
            (
                vec![
                    (
                        TRUST_ANCHORS,
                        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    ),
                    (CONTROL_IDENTITY, id),
                ],
                TRUST_ANCHORS,
            ),
            (
                vec![
                    (TRUST_ANCHORS_FILE, "/nonexistent/ca.crt"),
                    (CONTROL_IDENTITY, id),
                ],
                TRUST_ANCHORS_FILE,
            ),
            (
                vec![
                    (TRUST_ANCHORS, ANCHORS),
                    (CONTROL_IDENTITY, "weft-operator"),
                ],
                CONTROL_IDENTITY,
            ),
            (
                vec![(CONTROL_ADDR, "https://weft-discovery.weft-system.svc:8086")],
                CONTROL_ADDR,
            ),
        ] {
            let err = with_anchors(&extra).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(name), "{msg}");
        }
    }
}
