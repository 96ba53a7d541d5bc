//! weft's workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//!
//! Every place that names an identity (certificate SANs, authorization sources, the operator's
//! reserved identity, CLI output) builds or parses it here, so a malformed identity is an error
//! at the edge rather than a string that silently never matches.

use std::fmt;

/// A weft SPIFFE identity: a Kubernetes service account in a trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// Trust domain (`cluster.local` by default).
    pub trust_domain: String,
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
}

/// A string that is not a weft SPIFFE ID.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
pub struct InvalidSpiffeId(pub String);

/// The URI scheme prefix of every SPIFFE ID.
pub const SCHEME: &str = "spiffe://";

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl SpiffeId {
    /// Builds an identity; segments must be lowercase DNS-style names.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, InvalidSpiffeId> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        if [trust_domain, namespace, service_account]
            .iter()
            .all(|s| valid_segment(s))
        {
            Ok(id)
        } else {
            Err(InvalidSpiffeId(id.to_string()))
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` exactly (no query, fragment or extra segments).
    pub fn parse(s: &str) -> Result<Self, InvalidSpiffeId> {
        let err = || InvalidSpiffeId(s.to_owned());
        let rest = s.strip_prefix(SCHEME).ok_or_else(err)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err());
        };
        Self::new(td, ns, sa).map_err(|_| err())
    }

    /// True when `uri` looks like a SPIFFE ID (any trust domain or path): used to pick the URI
    /// SAN of a certificate before parsing it.
    pub fn is_spiffe_uri(uri: &str) -> bool {
        uri.starts_with(SCHEME)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = InvalidSpiffeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_lookalikes() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(SpiffeId::new("cluster.local", "default", "web"), Ok(id));
        for bad in [
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "http://cluster.local/ns/a/sa/b",
            "*",
            "",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
