//! Measures encoded sizes of Discovery responses for a realistic proxy config: a proxy that may
//! call 100 services, each with 2 ports and 3 endpoints, one of them split across 2 backends.
//!
//! Print the numbers with:
//! `cargo test -p weft-proxy-api --test sizes -- --nocapture`

mod support;

use std::collections::BTreeMap;

use prost::Message;
use support::{full_state_response, incremental_response, versioned_resource};
use weft_proxy_api::discovery::{known_versions, ResourceMap};
use weft_proxy_api::names::{endpoints_name, outbound_name, INBOUND};
use weft_proxy_api::v1::{
    authorization, resource::Kind, Authorization, DefaultPolicy, Endpoint, EndpointSet,
    FailureAccrual, HttpMatch, InboundPolicy, InboundPort, MeshClients, OutboundPort,
    OutboundService, Protocol, Resource, Route, StatusRange, TrafficPolicy, WeightedBackend,
};

const NS: &str = "demo";
const SERVICES: usize = 100;
/// (service port, target port, protocol)
const PORTS: [(u32, u32, Protocol); 2] =
    [(80, 8080, Protocol::Http1), (9090, 9090, Protocol::Grpc)];
const INBOUND_PORT: u32 = 4143;

fn identity(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

fn endpoint_set(service: &str, index: usize, port: u32, target_port: u32) -> Resource {
    let subnet = u8::try_from(index % 250).unwrap_or(0);
    let endpoints = (0..3u8)
        .map(|i| Endpoint {
            ip: vec![10, 1, subnet, 10 + i],
            port: target_port,
            identity: identity(service),
            inbound_port: INBOUND_PORT,
            pod: format!("{NS}/{service}-7d9f8c6b5-{i}xqz"),
            workload: format!("deployment/{service}"),
        })
        .collect();
    versioned_resource(
        endpoints_name(service, NS, port),
        Kind::Endpoints(EndpointSet { endpoints }),
    )
}

fn route_to(name: &str, backends: &[(&str, u64)], port: u32) -> Route {
    Route {
        name: name.into(),
        matches: Vec::new(),
        backends: backends
            .iter()
            .map(|(svc, weight)| WeightedBackend {
                service: (*svc).into(),
                weight: *weight,
                endpoint_set: endpoints_name(svc, NS, port),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn outbound(service: &str, index: usize, split: bool) -> Resource {
    let ports = PORTS
        .iter()
        .map(|(port, _, protocol)| {
            let mut routes = Vec::new();
            if split {
                routes.push(Route {
                    matches: vec![HttpMatch {
                        name: "api".into(),
                        path_regex: "/api/.*".into(),
                        methods: vec!["GET".into(), "POST".into()],
                        headers: Vec::new(),
                        ..Default::default()
                    }],
                    ..route_to(
                        &format!("split:{NS}/{service}-rollout"),
                        &[
                            (&format!("{service}-v1"), 900),
                            (&format!("{service}-v2"), 100),
                        ],
                        *port,
                    )
                });
            }
            routes.push(route_to("default", &[(service, 1)], *port));
            OutboundPort {
                port: *port,
                protocol: *protocol as i32,
                routes,
            }
        })
        .collect();
    versioned_resource(
        outbound_name(service, NS),
        Kind::Outbound(OutboundService {
            namespace: NS.into(),
            name: service.into(),
            cluster_ips: vec![vec![10, 96, u8::try_from(index % 250).unwrap_or(0), 7]],
            ports,
            policy: Some(TrafficPolicy {
                request_timeout_ms: 5_000,
                max_retries: 2,
                retry_budget_ratio: 0.2,
                retry_non_idempotent: false,
                // What the operator sends for an unannotated Service: the defaults, explicit.
                retry_budget_min_per_second: 10,
                per_try_timeout_ms: 0,
                retry_statuses: vec![StatusRange { min: 502, max: 504 }],
                retry_grpc_codes: vec![14],
                failure_accrual: Some(FailureAccrual {
                    consecutive_failures: 5,
                    min_success_rate: 0.0,
                    window_ms: 10_000,
                    min_requests: 20,
                    min_backoff_ms: 1_000,
                    max_backoff_ms: 60_000,
                    failure_statuses: vec![StatusRange { min: 500, max: 599 }],
                    failure_grpc_codes: vec![2, 4, 13, 14, 15],
                }),
                max_concurrent_requests: 10_000,
                max_pending_requests: 1_000,
                max_requests_per_endpoint: 0,
                queue_timeout_ms: 1_000,
            }),
        }),
    )
}

fn inbound() -> Resource {
    // An operator sends both the typed choice and its deprecated untyped form.
    #[allow(deprecated)]
    let authorization = |name: &str, sources: &[&str]| Authorization {
        name: format!("{NS}/{name}"),
        sources: sources.iter().map(|s| identity(s)).collect(),
        clients: Some(authorization::Clients::Mesh(MeshClients {
            identities: sources.iter().map(|s| identity(s)).collect(),
        })),
        all_traffic: false,
        http_routes: vec![HttpMatch {
            name: "read".into(),
            path_regex: "/.*".into(),
            methods: vec!["GET".into()],
            headers: Vec::new(),
            ..Default::default()
        }],
    };
    versioned_resource(
        INBOUND,
        Kind::Inbound(InboundPolicy {
            identity: identity("web"),
            default_policy: DefaultPolicy::Mesh as i32,
            ports: PORTS
                .iter()
                .map(|(_, target, protocol)| InboundPort {
                    port: *target,
                    protocol: *protocol as i32,
                    restricted: true,
                    authorizations: vec![
                        authorization("frontend-to-web", &["frontend"]),
                        authorization("ops-to-web", &["prometheus", "ops"]),
                    ],
                    limits: None,
                })
                .collect(),
        }),
    )
}

/// Endpoint sets per service port: the same three pods serve both ports.
fn endpoint_sets(service: &str, index: usize) -> Vec<Resource> {
    PORTS
        .iter()
        .map(|(port, target, _)| endpoint_set(service, index, *port, *target))
        .collect()
}

fn config() -> ResourceMap {
    let mut resources = vec![inbound()];
    for index in 0..SERVICES {
        let service = format!("svc-{index:03}");
        let split = index == 0;
        resources.push(outbound(&service, index, split));
        resources.extend(endpoint_sets(&service, index));
        if split {
            for backend in [format!("{service}-v1"), format!("{service}-v2")] {
                resources.extend(endpoint_sets(&backend, index));
            }
        }
    }
    resources.into_iter().map(|r| (r.name.clone(), r)).collect()
}

#[test]
fn measured_sizes() {
    let full = config();
    let first = full_state_response(&full, &BTreeMap::new(), "1");

    // One endpoint of one service port changes IP.
    let mut changed = full.clone();
    let name = endpoints_name("svc-042", NS, 80);
    let Some(Resource {
        kind: Some(Kind::Endpoints(set)),
        ..
    }) = changed.get(&name).cloned()
    else {
        panic!("{name} missing");
    };
    let mut set = set;
    set.endpoints[1].ip = vec![10, 1, 200, 200];
    changed.insert(
        name.clone(),
        versioned_resource(&name, Kind::Endpoints(set)),
    );
    let update = incremental_response(&full, &changed, "2").unwrap_or_else(|| panic!("no diff"));
    assert_eq!(update.resources.len(), 1);
    assert!(update.removed.is_empty());

    // Reconnect (e.g. after a control-plane restart) when nothing changed.
    let reconnect = full_state_response(&full, &known_versions(&full), "3");
    assert!(reconnect.resources.is_empty());
    assert_eq!(reconnect.unchanged.len(), full.len());

    // What a state-of-the-world protocol would resend for the same change: every endpoint set.
    let sotw = weft_proxy_api::v1::DiscoveryResponse {
        nonce: "2".into(),
        version: update.version.clone(),
        resources: changed
            .values()
            .filter(|r| matches!(r.kind, Some(Kind::Endpoints(_))))
            .cloned()
            .collect(),
        ..Default::default()
    };

    let sizes = [
        ("full state (first response)", first.encoded_len()),
        ("one endpoint changed (incremental)", update.encoded_len()),
        (
            "same change, state-of-the-world style (all endpoint sets)",
            sotw.encoded_len(),
        ),
        (
            "reconnect, nothing changed (full state, all unchanged)",
            reconnect.encoded_len(),
        ),
    ];
    println!("resources: {}", full.len());
    for (what, bytes) in sizes {
        println!("{what}: {bytes} bytes");
    }
    assert!(update.encoded_len() * 100 < first.encoded_len());
}
