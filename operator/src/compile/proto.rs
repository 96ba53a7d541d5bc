//! Conversion of the compiler's output into `weft_proxy_api::v1` messages (the wire format).

use std::net::IpAddr;

use weft_proxy_api::v1 as pb;

use super::types::*;

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

impl From<Protocol> for pb::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Detect => pb::Protocol::Detect,
            Protocol::Http1 => pb::Protocol::Http1,
            Protocol::Http2 => pb::Protocol::Http2,
            Protocol::Grpc => pb::Protocol::Grpc,
            Protocol::Opaque => pb::Protocol::Opaque,
            Protocol::Udp => pb::Protocol::Udp,
        }
    }
}

impl From<DefaultPolicy> for pb::DefaultPolicy {
    fn from(p: DefaultPolicy) -> Self {
        match p {
            DefaultPolicy::Allow => pb::DefaultPolicy::Allow,
            DefaultPolicy::Mesh => pb::DefaultPolicy::Mesh,
            DefaultPolicy::Deny => pb::DefaultPolicy::Deny,
        }
    }
}

impl From<&HttpMatch> for pb::HttpMatch {
    fn from(m: &HttpMatch) -> Self {
        pb::HttpMatch {
            name: m.name.clone(),
            path_regex: m.path_regex.clone(),
            methods: m.methods.clone(),
            headers: m
                .headers
                .iter()
                .map(|h| pb::HeaderMatch {
                    name: h.name.clone(),
                    value_regex: h.value_regex.clone(),
                })
                .collect(),
        }
    }
}

impl From<&InboundPolicy> for pb::InboundPolicy {
    fn from(p: &InboundPolicy) -> Self {
        pb::InboundPolicy {
            identity: p.identity.clone(),
            default_policy: pb::DefaultPolicy::from(p.default_policy) as i32,
            ports: p
                .ports
                .iter()
                .map(|port| pb::InboundPort {
                    port: u32::from(port.port),
                    protocol: pb::Protocol::from(port.protocol) as i32,
                    restricted: port.restricted,
                    authorizations: port
                        .authorizations
                        .iter()
                        .map(|a| {
                            // TODO(#14): set the typed `clients` choice; `sources` is deprecated.
                            #[allow(deprecated)]
                            pb::Authorization {
                                name: a.name.clone(),
                                sources: a.sources.clone(),
                                clients: None,
                                all_traffic: a.all_traffic,
                                http_routes: a.http_routes.iter().map(Into::into).collect(),
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<&TrafficPolicy> for pb::TrafficPolicy {
    fn from(p: &TrafficPolicy) -> Self {
        pb::TrafficPolicy {
            request_timeout_ms: p.request_timeout_ms,
            max_retries: p.max_retries,
            retry_budget_ratio: p.retry_budget_ratio,
            retry_non_idempotent: p.retry_non_idempotent,
        }
    }
}

impl From<&OutboundService> for pb::OutboundService {
    fn from(o: &OutboundService) -> Self {
        pb::OutboundService {
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            cluster_ips: o.cluster_ips.iter().map(ip_bytes).collect(),
            ports: o
                .ports
                .iter()
                .map(|p| pb::OutboundPort {
                    port: u32::from(p.port),
                    protocol: pb::Protocol::from(p.protocol) as i32,
                    routes: p
                        .routes
                        .iter()
                        .map(|r| pb::Route {
                            name: r.name.clone(),
                            matches: r.matches.iter().map(Into::into).collect(),
                            backends: r
                                .backends
                                .iter()
                                .map(|b| pb::WeightedBackend {
                                    service: b.service.clone(),
                                    weight: b.weight,
                                    endpoint_set: b.endpoint_set.clone(),
                                    unavailable_reason: b.unavailable_reason.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            policy: Some((&o.policy).into()),
        }
    }
}

impl From<&EndpointSet> for pb::EndpointSet {
    fn from(s: &EndpointSet) -> Self {
        pb::EndpointSet {
            endpoints: s
                .endpoints
                .iter()
                .map(|e| pb::Endpoint {
                    ip: ip_bytes(&e.ip),
                    port: u32::from(e.port),
                    identity: e.identity.clone(),
                    inbound_port: u32::from(e.inbound_port),
                    pod: e.pod.clone(),
                })
                .collect(),
        }
    }
}

impl From<&ResourceKind> for pb::resource::Kind {
    fn from(k: &ResourceKind) -> Self {
        match k {
            ResourceKind::Inbound(p) => pb::resource::Kind::Inbound(p.into()),
            ResourceKind::Outbound(o) => pb::resource::Kind::Outbound(o.into()),
            ResourceKind::Endpoints(e) => pb::resource::Kind::Endpoints(e.into()),
        }
    }
}

impl VersionedResource {
    /// The resource as the proto message sent to proxies.
    pub fn to_proto(&self) -> pb::Resource {
        pb::Resource {
            name: self.name.clone(),
            version: self.version.clone(),
            kind: Some((&self.resource).into()),
        }
    }
}

/// The canonical encoding of a resource payload: its proto encoding (prost writes fields in
/// tag order and these messages have no maps, so equal values encode to equal bytes).
pub(crate) fn canonical_bytes(k: &ResourceKind) -> Vec<u8> {
    use prost::Message;
    let msg = pb::Resource {
        name: String::new(),
        version: String::new(),
        kind: Some(k.into()),
    };
    msg.encode_to_vec()
}
