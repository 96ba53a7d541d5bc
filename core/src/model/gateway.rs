//! Gateway API objects in the model: `gateway.networking.k8s.io/v1` HTTPRoute (and GRPCRoute,
//! converted to the HTTPRoute form by `super::grpc`), with the types of the `gateway-api` crate
//! (generated from the upstream CRDs) as its spec.
//!
//! Only what GAMMA (Gateway API for service mesh) gives a mesh to do is read here: a parentRef
//! that names a core Service ([`ServiceParent`]). Parents of other kinds (Gateways) belong to
//! other controllers and are left alone. What the compiler makes of a route is decided in
//! `crate::compile::gateway`.

use gateway_api::httproutes as gw;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_smi::hub;

use super::{ModelError, ObjectKey, ObjectRef};

/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The one version weft reads (the standard channel's `v1`).
pub const API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// Which Gateway API kind a model [`HttpRoute`] was read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// An HTTPRoute: the spec is as written.
    #[default]
    Http,
    /// A GRPCRoute, converted to the HTTPRoute form by [`super::grpc::from_gateway_grpc_route`].
    Grpc,
}

impl RouteKind {
    /// The model kind of routes of this kind.
    pub fn model_kind(self) -> super::Kind {
        match self {
            RouteKind::Http => super::Kind::HTTPRoute,
            RouteKind::Grpc => super::Kind::GRPCRoute,
        }
    }

    /// The Gateway API kind (`HTTPRoute`, `GRPCRoute`).
    pub fn as_str(self) -> &'static str {
        self.model_kind().as_str()
    }

    /// The prefix of the proxy's route names for rules of routes of this kind
    /// (`httproute`, `grpcroute`), so that the two kinds' rules never share a name.
    pub fn route_name_prefix(self) -> &'static str {
        match self {
            RouteKind::Http => "httproute",
            RouteKind::Grpc => "grpcroute",
        }
    }
}

/// A Gateway API HTTPRoute (or GRPCRoute in the HTTPRoute form) as the model holds it: its
/// identity and generation (the same [`hub::Meta`] SMI objects have, so that age ordering is one
/// function), its spec, and the kind it was read from.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRoute {
    pub meta: hub::Meta,
    pub spec: gw::HttpRouteSpec,
    pub kind: RouteKind,
}

// The spec holds strings, integers and enums only (no floats): equality is total.
impl Eq for HttpRoute {}

/// A parentRef of an HTTPRoute that names a core Service (`group: ""`, `kind: Service`).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceParent {
    /// Position in `spec.parentRefs`.
    pub index: usize,
    /// The Service (the parentRef's namespace, else the route's).
    pub service: ObjectRef,
    /// The parentRef as written, echoed in `status.parents[].parentRef`.
    pub reference: gw::HttpRouteParentRefs,
}

impl HttpRoute {
    /// The route's namespaced name.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.meta.namespace.clone(), self.meta.name.clone())
    }

    /// The route's model key (`HTTPRoute` or `GRPCRoute`).
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.kind.model_kind(),
            self.meta.namespace.clone(),
            self.meta.name.clone(),
        )
    }

    /// The parentRefs that name a core Service, in spec order.
    pub fn service_parents(&self) -> Vec<ServiceParent> {
        self.spec
            .parent_refs
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, p)| is_service_parent(p))
            .map(|(index, p)| ServiceParent {
                index,
                service: ObjectRef::new(
                    p.namespace
                        .clone()
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| self.meta.namespace.clone()),
                    p.name.clone(),
                ),
                reference: p.clone(),
            })
            .collect()
    }
}

/// Whether a group names the core API group (`""`, or `core` as some tools write it).
pub fn is_core_group(group: Option<&str>) -> bool {
    matches!(group, Some("") | Some("core"))
}

/// Whether a parentRef names a Service. A parentRef's group defaults to the Gateway API group
/// and its kind to `Gateway`, so a Service parent says both.
pub fn is_service_parent(p: &gw::HttpRouteParentRefs) -> bool {
    is_core_group(p.group.as_deref()) && p.kind.as_deref() == Some("Service")
}

pub(super) fn meta_of(meta: &ObjectMeta, kind: &str) -> Result<hub::Meta, ModelError> {
    let name = match &meta.name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => return Err(ModelError::MissingName { kind: kind.into() }),
    };
    let creation_timestamp = meta
        .creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    Ok(hub::Meta {
        namespace: meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        name,
        generation: meta.generation,
        creation_timestamp,
        uid: meta.uid.clone(),
        api_version: API_VERSION.to_string(),
    })
}

/// A model [`HttpRoute`] from the `gateway-api` crate's HTTPRoute (a watch's typed object, or
/// a manifest parsed into it).
pub fn from_gateway_http_route(route: &gw::HttpRoute) -> Result<HttpRoute, ModelError> {
    Ok(HttpRoute {
        meta: meta_of(&route.metadata, "HTTPRoute")?,
        spec: route.spec.clone(),
        kind: RouteKind::Http,
    })
}
