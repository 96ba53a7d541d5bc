//! Conversion of the compiler's output (`weft_core::compile` types) into `weft_proxy_api::v1`
//! messages (the wire format). A resource is converted once, when it is encoded to be sent
//! (`super::encode`); its version is the core's content hash and needs no protobuf.

use std::net::IpAddr;

use weft_proxy_api::v1 as pb;

use crate::compile::*;

/// A core type's wire message.
pub trait ToProto {
    type Proto;
    fn to_proto(&self) -> Self::Proto;
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

impl ToProto for Protocol {
    type Proto = pb::Protocol;
    fn to_proto(&self) -> pb::Protocol {
        let p = self;
        match *p {
            Protocol::Detect => pb::Protocol::Detect,
            Protocol::Http1 => pb::Protocol::Http1,
            Protocol::Http2 => pb::Protocol::Http2,
            Protocol::Grpc => pb::Protocol::Grpc,
            Protocol::Opaque => pb::Protocol::Opaque,
            Protocol::Udp => pb::Protocol::Udp,
        }
    }
}

impl ToProto for DefaultPolicy {
    type Proto = pb::DefaultPolicy;
    fn to_proto(&self) -> pb::DefaultPolicy {
        let p = self;
        match *p {
            DefaultPolicy::Allow => pb::DefaultPolicy::Allow,
            DefaultPolicy::Mesh => pb::DefaultPolicy::Mesh,
            DefaultPolicy::Deny => pb::DefaultPolicy::Deny,
        }
    }
}

impl ToProto for HttpMatch {
    type Proto = pb::HttpMatch;
    fn to_proto(&self) -> pb::HttpMatch {
        let m = self;
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
            query_params: m
                .query_params
                .iter()
                .map(|q| pb::QueryParamMatch {
                    name: q.name.clone(),
                    value_regex: q.value_regex.clone(),
                })
                .collect(),
        }
    }
}

impl ToProto for HeaderModifier {
    type Proto = pb::HeaderModifier;
    fn to_proto(&self) -> pb::HeaderModifier {
        let values = |v: &[HeaderValue]| {
            v.iter()
                .map(|h| pb::HeaderValue {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect()
        };
        pb::HeaderModifier {
            set: values(&self.set),
            add: values(&self.add),
            remove: self.remove.clone(),
        }
    }
}

impl ToProto for PathModifier {
    type Proto = pb::PathModifier;
    fn to_proto(&self) -> pb::PathModifier {
        use pb::path_modifier::Kind;
        match self {
            PathModifier::ReplaceFullPath(p) => pb::PathModifier {
                kind: Some(Kind::ReplaceFullPath(p.clone())),
                matched_prefix: String::new(),
            },
            PathModifier::ReplacePrefixMatch {
                matched_prefix,
                replacement,
            } => pb::PathModifier {
                kind: Some(Kind::ReplacePrefixMatch(replacement.clone())),
                matched_prefix: matched_prefix.clone(),
            },
        }
    }
}

impl ToProto for RouteFilter {
    type Proto = pb::RouteFilter;
    fn to_proto(&self) -> pb::RouteFilter {
        use pb::route_filter::Kind;
        let kind = match self {
            RouteFilter::RequestHeaderModifier(m) => Kind::RequestHeaderModifier(m.to_proto()),
            RouteFilter::ResponseHeaderModifier(m) => Kind::ResponseHeaderModifier(m.to_proto()),
            RouteFilter::RequestRedirect(r) => Kind::RequestRedirect(pb::RequestRedirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                port: u32::from(r.port),
                path: r.path.as_ref().map(ToProto::to_proto),
                status_code: u32::from(r.status_code),
            }),
            RouteFilter::UrlRewrite(r) => Kind::UrlRewrite(pb::UrlRewrite {
                hostname: r.hostname.clone(),
                path: r.path.as_ref().map(ToProto::to_proto),
            }),
        };
        pb::RouteFilter { kind: Some(kind) }
    }
}

impl ToProto for InboundPolicy {
    type Proto = pb::InboundPolicy;
    fn to_proto(&self) -> pb::InboundPolicy {
        let p = self;
        pb::InboundPolicy {
            identity: p.identity.clone(),
            default_policy: p.default_policy.to_proto() as i32,
            ports: p
                .ports
                .iter()
                .map(|port| pb::InboundPort {
                    port: u32::from(port.port),
                    protocol: port.protocol.to_proto() as i32,
                    restricted: port.restricted,
                    authorizations: port.authorizations.iter().map(ToProto::to_proto).collect(),
                    limits: (!port.limits.is_unlimited()).then(|| port.limits.to_proto()),
                })
                .collect(),
        }
    }
}

/// The one conversion of who an authorization admits: the typed `clients` choice and, for
/// proxies of the previous minor version, the deprecated untyped `sources` from the same value
/// (`"*"` for the kubelet's probes).
impl ToProto for Authorization {
    type Proto = pb::Authorization;
    #[allow(deprecated)]
    fn to_proto(&self) -> pb::Authorization {
        let clients = match &self.clients {
            Clients::Mesh(ids) => pb::authorization::Clients::Mesh(pb::MeshClients {
                identities: ids.iter().map(ToString::to_string).collect(),
            }),
            Clients::KubeletProbes => pb::authorization::Clients::Probes(pb::KubeletProbes {}),
        };
        pb::Authorization {
            name: self.name.clone(),
            sources: self.clients.legacy_sources(),
            clients: Some(clients),
            all_traffic: self.all_traffic,
            http_routes: self.http_routes.iter().map(ToProto::to_proto).collect(),
        }
    }
}

impl ToProto for TrafficPolicy {
    type Proto = pb::TrafficPolicy;
    fn to_proto(&self) -> pb::TrafficPolicy {
        let p = self;
        pb::TrafficPolicy {
            request_timeout_ms: p.request_timeout_ms,
            max_retries: p.max_retries,
            retry_budget_ratio: p.retry_budget_ratio,
            retry_non_idempotent: p.retry_non_idempotent,
            retry_budget_min_per_second: p.retry_budget_min_per_second,
            per_try_timeout_ms: p.per_try_timeout_ms,
            retry_statuses: status_ranges(&p.retry_statuses),
            retry_grpc_codes: p.retry_grpc_codes.clone(),
            failure_accrual: Some(p.failure_accrual.to_proto()),
            max_concurrent_requests: p.max_concurrent_requests,
            max_pending_requests: p.max_pending_requests,
            max_requests_per_endpoint: p.max_requests_per_endpoint,
            queue_timeout_ms: p.queue_timeout_ms,
        }
    }
}

fn status_ranges(r: &[StatusRange]) -> Vec<pb::StatusRange> {
    r.iter()
        .map(|r| pb::StatusRange {
            min: u32::from(r.min),
            max: u32::from(r.max),
        })
        .collect()
}

impl ToProto for FailureAccrual {
    type Proto = pb::FailureAccrual;
    fn to_proto(&self) -> pb::FailureAccrual {
        let a = self;
        pb::FailureAccrual {
            consecutive_failures: a.consecutive_failures,
            min_success_rate: a.min_success_rate,
            window_ms: a.window_ms,
            min_requests: a.min_requests,
            min_backoff_ms: a.min_backoff_ms,
            max_backoff_ms: a.max_backoff_ms,
            failure_statuses: status_ranges(&a.failure_statuses),
            failure_grpc_codes: a.failure_grpc_codes.clone(),
        }
    }
}

impl ToProto for InboundLimits {
    type Proto = pb::InboundLimits;
    fn to_proto(&self) -> pb::InboundLimits {
        let l = self;
        let rate = |r: &Option<RateLimit>| {
            r.map(|r| pb::RateLimit {
                requests_per_second: r.requests_per_second,
                burst: r.burst,
            })
        };
        pb::InboundLimits {
            max_concurrent_requests: l.max_concurrent_requests,
            max_pending_requests: l.max_pending_requests,
            queue_timeout_ms: l.queue_timeout_ms,
            rate_limit: rate(&l.rate_limit),
            rate_limit_per_identity: rate(&l.rate_limit_per_identity),
        }
    }
}

impl ToProto for OutboundService {
    type Proto = pb::OutboundService;
    fn to_proto(&self) -> pb::OutboundService {
        let o = self;
        pb::OutboundService {
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            cluster_ips: o.cluster_ips.iter().map(ip_bytes).collect(),
            ports: o
                .ports
                .iter()
                .map(|p| pb::OutboundPort {
                    port: u32::from(p.port),
                    protocol: p.protocol.to_proto() as i32,
                    routes: p
                        .routes
                        .iter()
                        .map(|r| pb::Route {
                            name: r.name.clone(),
                            matches: r.matches.iter().map(ToProto::to_proto).collect(),
                            backends: r
                                .backends
                                .iter()
                                .map(|b| pb::WeightedBackend {
                                    service: b.service.clone(),
                                    weight: b.weight,
                                    endpoint_set: b.endpoint_set.clone(),
                                    unavailable_reason: b.unavailable_reason.clone(),
                                    filters: b.filters.iter().map(ToProto::to_proto).collect(),
                                    unavailable_status: u32::from(b.unavailable_status),
                                })
                                .collect(),
                            filters: r.filters.iter().map(ToProto::to_proto).collect(),
                            direct_status: u32::from(r.direct_status),
                            timeouts: r.timeouts.map(|t| pb::RouteTimeouts {
                                request_ms: t.request_ms,
                                backend_request_ms: t.backend_request_ms,
                            }),
                        })
                        .collect(),
                })
                .collect(),
            policy: Some(o.policy.to_proto()),
        }
    }
}

impl ToProto for EndpointSet {
    type Proto = pb::EndpointSet;
    fn to_proto(&self) -> pb::EndpointSet {
        let s = self;
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
                    workload: e.workload.clone(),
                })
                .collect(),
        }
    }
}

impl ToProto for ResourceKind {
    type Proto = pb::resource::Kind;
    fn to_proto(&self) -> pb::resource::Kind {
        match self {
            ResourceKind::Inbound(p) => pb::resource::Kind::Inbound(p.to_proto()),
            ResourceKind::Outbound(o) => pb::resource::Kind::Outbound(o.to_proto()),
            ResourceKind::Endpoints(e) => pb::resource::Kind::Endpoints(e.to_proto()),
        }
    }
}

impl ToProto for VersionedResource {
    type Proto = pb::Resource;
    /// The resource as the proto message sent to proxies.
    fn to_proto(&self) -> pb::Resource {
        pb::Resource {
            name: self.name.clone(),
            version: self.version.clone(),
            kind: Some(self.resource.to_proto()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The core names resources without depending on proxy-api; the names must be the wire's.
    #[test]
    fn core_names_are_the_wire_names() {
        use weft_proxy_api::names;
        assert_eq!(INBOUND_NAME, names::INBOUND);
        assert_eq!(
            outbound_name("shop", "web"),
            names::outbound_name("web", "shop")
        );
        assert_eq!(
            endpoints_name("shop", "web", 8080),
            names::endpoints_name("web", "shop", 8080)
        );
    }

    /// The typed choice and the deprecated sources come from one value, so a proxy of either
    /// minor version admits the same clients.
    #[test]
    #[allow(deprecated)]
    fn authorization_sets_typed_clients_and_legacy_sources_from_one_value() {
        let mesh = Authorization {
            name: "demo/t".into(),
            clients: Clients::mesh([
                spiffe("cluster.local", "demo", "web"),
                spiffe("cluster.local", "demo", "client"),
                spiffe("cluster.local", "demo", "web"),
            ]),
            all_traffic: true,
            http_routes: Vec::new(),
        }
        .to_proto();
        let ids = vec![
            "spiffe://cluster.local/ns/demo/sa/client".to_string(),
            "spiffe://cluster.local/ns/demo/sa/web".to_string(),
        ];
        assert_eq!(
            mesh.clients,
            Some(pb::authorization::Clients::Mesh(pb::MeshClients {
                identities: ids.clone()
            }))
        );
        assert_eq!(mesh.sources, ids);

        let probes = Authorization {
            name: "probe".into(),
            clients: Clients::KubeletProbes,
            all_traffic: false,
            http_routes: Vec::new(),
        }
        .to_proto();
        assert_eq!(
            probes.clients,
            Some(pb::authorization::Clients::Probes(pb::KubeletProbes {}))
        );
        assert_eq!(probes.sources, vec!["*".to_string()]);
    }
}
