//! Resource names of the Discovery protocol (see `Resource` in `discovery.proto`):
//!
//! - `inbound`: the pod's `InboundPolicy` (exactly one);
//! - `outbound:<service>.<namespace>`: one `OutboundService` per service the proxy may call;
//! - `endpoints:<service>.<namespace>:<port>`: one `EndpointSet` per service port;
//! - `ip:<address>`: one `IpResolution` per address a proxy watches (on-demand discovery; the
//!   address in its canonical text form, so that one address has one name).
//!
//! Service names and namespaces are DNS labels (no `.` or `:`), so names parse unambiguously.

use std::fmt;

/// Name of the single `InboundPolicy` resource.
pub const INBOUND: &str = "inbound";
/// Prefix of `OutboundService` resource names.
pub const OUTBOUND_PREFIX: &str = "outbound:";
/// Prefix of `EndpointSet` resource names.
pub const ENDPOINTS_PREFIX: &str = "endpoints:";

/// Prefix of `IpResolution` resource names (and of watched addresses).
pub const IP_PREFIX: &str = "ip:";

/// `ip:<address>` (canonical text form).
pub fn ip_name(addr: std::net::IpAddr) -> String {
    format!("{IP_PREFIX}{addr}")
}

/// The address of an `ip:<address>` name; `None` when `name` is not one, or the address is not
/// in canonical form (`ip:010.0.0.1`, `ip:::ffff:10.0.0.1` style variants name nothing).
pub fn parse_ip_name(name: &str) -> Option<std::net::IpAddr> {
    let rest = name.strip_prefix(IP_PREFIX)?;
    let addr: std::net::IpAddr = rest.parse().ok()?;
    (addr.to_string() == rest).then_some(addr)
}

/// `outbound:<service>.<namespace>`
pub fn outbound_name(service: &str, namespace: &str) -> String {
    format!("{OUTBOUND_PREFIX}{service}.{namespace}")
}

/// `endpoints:<service>.<namespace>:<port>` (`port` is the service port).
pub fn endpoints_name(service: &str, namespace: &str, port: u32) -> String {
    format!("{ENDPOINTS_PREFIX}{service}.{namespace}:{port}")
}

/// A parsed resource name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceName<'a> {
    /// `inbound`
    Inbound,
    /// `outbound:<service>.<namespace>`
    Outbound {
        /// Service name.
        service: &'a str,
        /// Service namespace.
        namespace: &'a str,
    },
    /// `endpoints:<service>.<namespace>:<port>`
    Endpoints {
        /// Service name.
        service: &'a str,
        /// Service namespace.
        namespace: &'a str,
        /// Service port.
        port: u32,
    },
}

/// Why a resource name does not follow the naming scheme.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name has none of the known prefixes (possibly a kind added by a newer operator).
    #[error("unknown resource name {0:?}")]
    UnknownKind(String),
    /// The name has a known prefix but a malformed rest.
    #[error("malformed resource name {0:?}: {1}")]
    Malformed(String, &'static str),
}

fn is_label(s: &str) -> bool {
    !s.is_empty() && !s.contains(['.', ':', '/'])
}

fn service_and_namespace<'a>(name: &str, rest: &'a str) -> Result<(&'a str, &'a str), NameError> {
    let (service, namespace) = rest
        .split_once('.')
        .ok_or_else(|| NameError::Malformed(name.to_owned(), "expected <service>.<namespace>"))?;
    if !is_label(service) || !is_label(namespace) {
        return Err(NameError::Malformed(
            name.to_owned(),
            "service and namespace must be non-empty DNS labels",
        ));
    }
    Ok((service, namespace))
}

impl<'a> ResourceName<'a> {
    /// Parses a resource name.
    pub fn parse(name: &'a str) -> Result<Self, NameError> {
        if name == INBOUND {
            return Ok(Self::Inbound);
        }
        if let Some(rest) = name.strip_prefix(OUTBOUND_PREFIX) {
            let (service, namespace) = service_and_namespace(name, rest)?;
            return Ok(Self::Outbound { service, namespace });
        }
        if let Some(rest) = name.strip_prefix(ENDPOINTS_PREFIX) {
            let (svc_ns, port) = rest.rsplit_once(':').ok_or_else(|| {
                NameError::Malformed(name.to_owned(), "expected <service>.<namespace>:<port>")
            })?;
            let port = port
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| NameError::Malformed(name.to_owned(), "port must be 1-65535"))?;
            let (service, namespace) = service_and_namespace(name, svc_ns)?;
            return Ok(Self::Endpoints {
                service,
                namespace,
                port,
            });
        }
        Err(NameError::UnknownKind(name.to_owned()))
    }
}

impl fmt::Display for ResourceName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inbound => f.write_str(INBOUND),
            Self::Outbound { service, namespace } => {
                write!(f, "{OUTBOUND_PREFIX}{service}.{namespace}")
            }
            Self::Endpoints {
                service,
                namespace,
                port,
            } => write!(f, "{ENDPOINTS_PREFIX}{service}.{namespace}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_and_parser_round_trip() {
        let out = outbound_name("api", "demo");
        assert_eq!(out, "outbound:api.demo");
        assert_eq!(
            ResourceName::parse(&out),
            Ok(ResourceName::Outbound {
                service: "api",
                namespace: "demo"
            })
        );
        let eps = endpoints_name("api", "demo", 8080);
        assert_eq!(eps, "endpoints:api.demo:8080");
        let parsed = ResourceName::parse(&eps);
        assert_eq!(
            parsed,
            Ok(ResourceName::Endpoints {
                service: "api",
                namespace: "demo",
                port: 8080
            })
        );
        assert_eq!(parsed.map(|p| p.to_string()), Ok(eps));
        assert_eq!(ResourceName::parse(INBOUND), Ok(ResourceName::Inbound));
    }

    #[test]
    fn ip_names_are_canonical() {
        let addr: std::net::IpAddr = "10.96.0.10".parse().unwrap();
        assert_eq!(ip_name(addr), "ip:10.96.0.10");
        assert_eq!(parse_ip_name("ip:10.96.0.10"), Some(addr));
        assert_eq!(parse_ip_name("ip:fd00::1"), "fd00::1".parse().ok());
        for bad in [
            "ip:",
            "ip:x",
            "ip:10.96.0.010",
            "ip:FD00::1",
            "outbound:a.b",
            "10.0.0.1",
        ] {
            assert_eq!(parse_ip_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "outbound:api",
            "outbound:.demo",
            "outbound:api.",
            "outbound:a.b.c",
            "endpoints:api.demo",
            "endpoints:api.demo:0",
            "endpoints:api.demo:70000",
            "endpoints:api.demo:http",
            "endpoints:api:80",
        ] {
            assert!(
                matches!(ResourceName::parse(bad), Err(NameError::Malformed(..))),
                "{bad} should be malformed"
            );
        }
        assert!(matches!(
            ResourceName::parse("routes:x"),
            Err(NameError::UnknownKind(_))
        ));
    }
}
