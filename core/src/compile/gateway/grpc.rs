//! GRPCRoute's hooks in the Gateway API compiler: which of a Service's ports a route may attach
//! to because of its kind. GRPCRoutes reach the compiler in the HTTPRoute form
//! (`crate::model::grpc`); everything else about them is decided as for HTTPRoutes.
//!
//! * A GRPCRoute attaches only to ports that can carry gRPC: protocol `Grpc`, `Http2`, or
//!   detected per connection (`Detect`). A port marked HTTP/1 (`http`, `http1` by name or
//!   `appProtocol`) cannot carry gRPC, and opaque/UDP ports carry no HTTP at all.
//! * GEP-1016 ("cross serving"): an HTTPRoute and a GRPCRoute attached to the same Service port
//!   (the mesh has no hostnames, so every pair intersects) are not both accepted there. On each
//!   port, the oldest route that would be accepted there (creation timestamp, then name; on a
//!   tie of both, the HTTPRoute) decides the kind: routes of the other kind lose that port.
//!   Only routes in the same namespace as the route judged are compared (the routes that apply
//!   to the same callers). A route that loses every port is `Accepted=False`, reason
//!   `Conflicted`; one that loses some ports is in force on the others.

use std::cmp::Ordering;

use super::{analyze_route, attach, PortProtocol};
use crate::compile::rules;
use crate::compile::types::Protocol;
use crate::model::gateway::{HttpRoute, RouteKind, ServiceParent};
use crate::model::{Model, ObjectRef, Service};
use crate::reason::Reason;

/// Whether routes of `kind` may attach to a port of protocol `p` (beyond it carrying HTTP,
/// which `attach` checks).
fn kind_carried(kind: RouteKind, p: Protocol) -> bool {
    match kind {
        RouteKind::Http => true,
        RouteKind::Grpc => matches!(p, Protocol::Grpc | Protocol::Http2 | Protocol::Detect),
    }
}

fn port_protocol_of(svc: &Service, port: u16, port_protocol: PortProtocol) -> Option<Protocol> {
    svc.ports.iter().find(|p| p.port == port).map(port_protocol)
}

/// Which route wins a port between two routes: the older, then the name that sorts first, then
/// the HTTPRoute.
fn older(a: &HttpRoute, b: &HttpRoute) -> Ordering {
    rules::split_order(&a.meta, &b.meta).then(a.kind.cmp(&b.kind))
}

/// The ports of `svc` that `route` (another route than the one judged) would be accepted on
/// before cross-kind precedence: its Service parents naming `svc`, attached, kind-filtered,
/// and only when it uses nothing weft refuses.
fn candidate_ports(
    route: &HttpRoute,
    svc: &Service,
    svc_ref: &ObjectRef,
    port_protocol: PortProtocol,
) -> Vec<u16> {
    if !analyze_route(route).problems.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for parent in route
        .service_parents()
        .into_iter()
        .filter(|p| &p.service == svc_ref)
    {
        let mut ports = Vec::new();
        if attach(svc, &parent.reference, port_protocol, &mut ports).is_ok() {
            out.extend(ports.into_iter().filter(|&port| {
                port_protocol_of(svc, port, port_protocol)
                    .is_some_and(|p| kind_carried(route.kind, p))
            }));
        }
    }
    out
}

/// Narrows `ports` (where `route` attaches to `parent` as an HTTPRoute would) to the ports its
/// kind may use; `Err` when none is left.
pub(super) fn kind_ports(
    model: &Model,
    route: &HttpRoute,
    parent: &ServiceParent,
    port_protocol: PortProtocol,
    ports: &mut Vec<u16>,
) -> Result<(), (Reason, String)> {
    let svc_ref = &parent.service;
    let Some(svc) = model.services.get(svc_ref) else {
        return Ok(());
    };
    if route.kind == RouteKind::Grpc {
        ports.retain(|&port| {
            port_protocol_of(svc, port, port_protocol).is_some_and(|p| kind_carried(route.kind, p))
        });
        if ports.is_empty() {
            return Err((
                Reason::NoMatchingParent,
                format!(
                    "Service {svc_ref} has no port that can carry gRPC matching this parentRef: \
                     a GRPCRoute attaches to ports whose protocol is gRPC or HTTP/2 (name or \
                     appProtocol grpc, http2, h2c) or detected (no protocol hint), not to \
                     HTTP/1 ports (http, http1)"
                ),
            ));
        }
    }
    // Routes of the other kind in the same namespace on this Service: none is the usual case.
    let others: Vec<&HttpRoute> = model
        .gateway_routes_for_parent(svc_ref)
        .filter(|k| k.kind != route.kind.model_kind() && k.namespace == route.meta.namespace)
        .filter_map(|k| model.gateway_route(k))
        .map(|r| r.as_ref())
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let same: Vec<&HttpRoute> = model
        .gateway_routes_for_parent(svc_ref)
        .filter(|k| k.kind == route.kind.model_kind() && k.namespace == route.meta.namespace)
        .filter_map(|k| model.gateway_route(k))
        .map(|r| r.as_ref())
        .filter(|r| r.meta.name != route.meta.name)
        .collect();
    let candidates: Vec<(&HttpRoute, Vec<u16>)> = others
        .into_iter()
        .chain(same)
        .map(|r| (r, candidate_ports(r, svc, svc_ref, port_protocol)))
        .filter(|(_, ports)| !ports.is_empty())
        .collect();
    let mut lost: Vec<(u16, &HttpRoute)> = Vec::new();
    for &port in ports.iter() {
        let oldest = candidates
            .iter()
            .filter(|(_, ps)| ps.contains(&port))
            .map(|(r, _)| *r)
            .min_by(|a, b| older(a, b));
        if let Some(winner) = oldest {
            if winner.kind != route.kind && older(winner, route) == Ordering::Less {
                lost.push((port, winner));
            }
        }
    }
    if lost.is_empty() {
        return Ok(());
    }
    ports.retain(|p| !lost.iter().any(|(l, _)| l == p));
    if ports.is_empty() {
        return Err((
            Reason::Conflicted,
            format!(
                "not in force: {} on Service {svc_ref} (Gateway API GEP-1016: of an HTTPRoute and \
                 a GRPCRoute on the same Service port, only the older is accepted)",
                lost.iter()
                    .map(|(port, w)| format!(
                        "port {port} is taken by the older {} {}",
                        w.kind.as_str(),
                        w.object_ref()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(())
}
