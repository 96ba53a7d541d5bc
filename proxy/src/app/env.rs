//! The proxy's typed configuration, read from `WEFT_PROXY_*` environment variables.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Where the operator's discovery (and identity) API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlAddr {
    /// `http://host:port` or `https://host:port`, as given to tonic.
    pub uri: String,
    /// True when the operator is reached over TLS.
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
    pub threads: usize,
    pub log_filter: String,
    pub log_format: LogFormat,
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
pub const APP_IP: &str = "WEFT_PROXY_APP_IP";
pub const TRUST_DOMAIN: &str = "WEFT_PROXY_TRUST_DOMAIN";
pub const SHUTDOWN_GRACE: &str = "WEFT_PROXY_SHUTDOWN_GRACE";
pub const THREADS: &str = "WEFT_PROXY_THREADS";
pub const LOG: &str = "WEFT_LOG";
pub const LOG_FORMAT: &str = "WEFT_PROXY_LOG_FORMAT";

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

        let control_addr = parse_control_addr(required(CONTROL_ADDR)?)?;
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
        let threads = match get(THREADS) {
            None => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => return Err(invalid(THREADS, v, "expected a number from 1 to 64")),
            },
        };
        let log_filter = get(LOG).unwrap_or("info").to_string();
        let log_format = match get(LOG_FORMAT) {
            None | Some("plain") | Some("text") => LogFormat::Plain,
            Some("json") => LogFormat::Json,
            Some(v) => return Err(invalid(LOG_FORMAT, v, "expected `plain` or `json`")),
        };
        Ok(Self {
            control_addr,
            pod_namespace,
            pod_name,
            service_account,
            token_file,
            inbound_addr,
            outbound_addr,
            admin_addr,
            app_ip,
            trust_domain,
            shutdown_grace,
            threads,
            log_filter,
            log_format,
        })
    }

    /// This proxy's SPIFFE identity.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.pod_namespace, self.service_account
        )
    }
}

fn invalid(name: &'static str, value: &str, reason: &str) -> EnvError {
    EnvError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Accepts `host:port`, `http://host:port` (plaintext h2c) or `https://host:port` (TLS).
fn parse_control_addr(v: &str) -> Result<ControlAddr, EnvError> {
    let (tls, rest) = if let Some(rest) = v.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = v.strip_prefix("http://") {
        (false, rest)
    } else if v.contains("://") {
        return Err(invalid(
            CONTROL_ADDR,
            v,
            "scheme must be http:// (plaintext) or https:// (TLS)",
        ));
    } else {
        (false, v)
    };
    let authority = rest.trim_end_matches('/');
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|e| invalid(CONTROL_ADDR, v, &format!("not host:port: {e}")))?;
    if parsed.port_u16().is_none() || authority.contains('/') {
        return Err(invalid(CONTROL_ADDR, v, "expected host:port"));
    }
    let scheme = if tls { "https" } else { "http" };
    Ok(ControlAddr {
        uri: format!("{scheme}://{authority}"),
        tls,
    })
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

/// `10s`, `500ms`, `1m`, or a bare number of seconds.
fn parse_duration(v: &str) -> Option<Duration> {
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
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
        assert_eq!(env.threads, 1);
        assert_eq!(env.spiffe_id(), "spiffe://cluster.local/ns/demo/sa/default");
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
            (THREADS, "0"),
            (LOG_FORMAT, "xml"),
        ] {
            let err = ProxyEnv::from_vars(vars(&[(name, value)])).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(name), "{msg}");
            assert!(matches!(err, EnvError::Invalid { .. }), "{msg}");
        }
    }

    #[test]
    fn overrides() {
        let env = ProxyEnv::from_vars(vars(&[
            (CONTROL_ADDR, "https://weft-operator.weft.svc:8086"),
            (SERVICE_ACCOUNT, "web"),
            (SHUTDOWN_GRACE, "500ms"),
            (THREADS, "2"),
            (LOG_FORMAT, "json"),
            (TRUST_DOMAIN, "example.org"),
        ]))
        .unwrap();
        assert!(env.control_addr.tls);
        assert_eq!(env.control_addr.uri, "https://weft-operator.weft.svc:8086");
        assert_eq!(env.shutdown_grace, Duration::from_millis(500));
        assert_eq!(env.threads, 2);
        assert_eq!(env.log_format, LogFormat::Json);
        assert_eq!(env.spiffe_id(), "spiffe://example.org/ns/demo/sa/web");
    }
}
