//! The mesh model: weft's own view of the cluster objects the compiler reads.
//!
//! Sources (the Kubernetes API, a manifests directory) feed it with [`Model::upsert`] and
//! [`Model::remove`]; the compiler (`crate::compile`) reads it. Nothing here does I/O except
//! [`manifests`], which reads a directory into [`ClusterObject`]s.
//!
//! The model keeps indexes (pods by IP, endpoint sources by service, splits by apex, traffic
//! targets by destination) up to date on every change so that incremental recompilation can
//! find what a change affects without scanning the whole cluster.

pub mod gateway;
pub mod grpc;
mod k8s;
pub mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use weft_smi::hub;

pub use gateway::{from_gateway_http_route, HttpRoute, RouteKind, ServiceParent};
pub use grpc::from_gateway_grpc_route;
pub use k8s::{
    from_k8s_endpoint_slice, from_k8s_endpoints, from_k8s_namespace, from_k8s_pod,
    from_k8s_service, from_k8s_service_account,
};

/// Pod label set by the injector: its presence means the pod runs a weft proxy.
pub const PROXY_VERSION_LABEL: &str = "weft.io/proxy-version";
/// Namespace or pod annotation selecting the default inbound policy.
pub const DEFAULT_INBOUND_POLICY_ANNOTATION: &str = "weft.io/default-inbound-policy";
/// EndpointSlice label naming the service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Errors reading a cluster object into the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("object has no `kind`")]
    MissingKind,
    #[error("object has no `apiVersion`")]
    MissingApiVersion,
    #[error("unsupported kind {api_version}/{kind}")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("invalid {kind}: {source}")]
    Invalid {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} has no metadata.name")]
    MissingName { kind: String },
    #[error("invalid SMI object: {0}")]
    Smi(String),
    #[error("invalid {kind} {name}: {message}")]
    Field {
        kind: String,
        name: String,
        message: String,
    },
}

/// The kinds of object the model holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    Namespace,
    ServiceAccount,
    Pod,
    Service,
    EndpointSlice,
    Endpoints,
    TrafficSplit,
    TrafficTarget,
    HTTPRouteGroup,
    TCPRoute,
    UDPRoute,
    /// Gateway API `gateway.networking.k8s.io/v1` HTTPRoute (GAMMA: parentRefs naming Services).
    HTTPRoute,
    /// Gateway API `gateway.networking.k8s.io/v1` GRPCRoute, held in the HTTPRoute form
    /// ([`grpc`]).
    GRPCRoute,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::TrafficSplit => "TrafficSplit",
            Kind::TrafficTarget => "TrafficTarget",
            Kind::HTTPRouteGroup => "HTTPRouteGroup",
            Kind::TCPRoute => "TCPRoute",
            Kind::UDPRoute => "UDPRoute",
            Kind::HTTPRoute => "HTTPRoute",
            Kind::GRPCRoute => "GRPCRoute",
        }
    }

    /// True for the Gateway API kinds (which get per-parent status).
    pub fn is_gateway_api(self) -> bool {
        matches!(self, Kind::HTTPRoute | Kind::GRPCRoute)
    }

    /// True for the SMI kinds (which get status conditions).
    pub fn is_smi(self) -> bool {
        matches!(
            self,
            Kind::TrafficSplit
                | Kind::TrafficTarget
                | Kind::HTTPRouteGroup
                | Kind::TCPRoute
                | Kind::UDPRoute
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A namespaced name. Ordered by namespace, then name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Identifies one object in the model. `namespace` is empty for Namespaces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.namespace.clone(), self.name.clone())
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Layer-4 protocol of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum L4Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl L4Protocol {
    pub fn parse(s: Option<&str>) -> L4Protocol {
        match s {
            Some("UDP") => L4Protocol::Udp,
            Some("SCTP") => L4Protocol::Sctp,
            _ => L4Protocol::Tcp,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: L4Protocol,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// `status.podIP` (the first of `status.podIPs` when only that is set).
    pub ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.serviceAccountName`, `default` when unset.
    pub service_account: String,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// Has the [`PROXY_VERSION_LABEL`] label.
    pub meshed: bool,
    pub container_ports: Vec<ContainerPort>,
    /// The `httpGet` readiness, liveness and startup probes of its containers.
    pub http_probes: Vec<HttpProbe>,
    /// `<kind>/<name>` of the owning workload ([`crate::inject::workload_of`]), when known.
    pub workload: Option<String>,
}

/// Which kubelet probe an [`HttpProbe`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ProbeKind {
    Readiness,
    Liveness,
    Startup,
}

/// A container port named by number or by container-port name (a probe's `port`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// A container's `httpGet` probe: the kubelet sends plaintext (or, for `HTTPS`, TLS)
/// `GET <path>` requests from the node, without a mesh identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HttpProbe {
    pub kind: ProbeKind,
    pub port: PortRef,
    /// The request path (`/` when unset), without the query string.
    pub path: String,
    /// `true` for `scheme: HTTPS`.
    pub https: bool,
}

impl Pod {
    /// The container port a probe targets (`None` for an unknown port name).
    pub fn resolve_probe_port(&self, port: &PortRef) -> Option<u16> {
        match port {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => self
                .container_ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == L4Protocol::Tcp)
                .map(|p| p.port),
        }
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.namespace.clone(), self.name.clone())
    }

    /// The pod's service account as a namespaced name.
    pub fn service_account_ref(&self) -> ObjectRef {
        ObjectRef::new(self.namespace.clone(), self.service_account.clone())
    }

    /// Resolves a service's targetPort against this pod's container ports.
    pub fn resolve_target_port(&self, target: &TargetPort, protocol: L4Protocol) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self
                .container_ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol)
                .map(|p| p.port),
        }
    }
}

/// A Service's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: L4Protocol,
    pub app_protocol: Option<String>,
    pub target_port: TargetPort,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`), without `None`.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; `None` for services without one (endpoints managed by hand).
    pub selector: Option<BTreeMap<String, String>>,
    pub annotations: BTreeMap<String, String>,
}

impl Service {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.namespace.clone(), self.name.clone())
    }

    /// True when the selector is set, non-empty, and matches every label.
    pub fn selects(&self, pod: &Pod) -> bool {
        match &self.selector {
            Some(sel) if !sel.is_empty() && pod.namespace == self.namespace => sel
                .iter()
                .all(|(k, v)| pod.labels.get(k).map(String::as_str) == Some(v.as_str())),
            _ => false,
        }
    }
}

/// Where an [`EndpointGroup`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum EndpointSource {
    EndpointSlice,
    Endpoints,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: L4Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointAddress {
    pub ip: IpAddr,
    pub ready: bool,
    /// `targetRef` when it names a Pod.
    pub pod: Option<ObjectRef>,
}

/// A set of addresses sharing a set of ports (an EndpointSlice, or one subset of an Endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointSubset {
    pub ports: Vec<EndpointPort>,
    pub addresses: Vec<EndpointAddress>,
}

/// An EndpointSlice or an Endpoints object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointGroup {
    pub source: EndpointSource,
    pub namespace: String,
    pub name: String,
    /// The service it belongs to (slice label or the Endpoints' own name).
    pub service: Option<String>,
    pub subsets: Vec<EndpointSubset>,
}

impl EndpointGroup {
    pub fn key(&self) -> ObjectKey {
        let kind = match self.source {
            EndpointSource::EndpointSlice => Kind::EndpointSlice,
            EndpointSource::Endpoints => Kind::Endpoints,
        };
        ObjectKey::new(kind, self.namespace.clone(), self.name.clone())
    }
}

/// Any object the model holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterObject {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    Pod(Pod),
    Service(Service),
    /// An EndpointSlice or Endpoints (see [`EndpointGroup::source`]).
    Endpoints(EndpointGroup),
    Smi(hub::SmiObject),
    /// A Gateway API HTTPRoute, or a GRPCRoute in the HTTPRoute form ([`HttpRoute::kind`]).
    HttpRoute(HttpRoute),
}

impl ClusterObject {
    /// Parses any supported kind from its JSON (or YAML-as-JSON) form: core v1 Namespace,
    /// ServiceAccount, Pod, Service, Endpoints; discovery.k8s.io v1 and v1beta1 EndpointSlice;
    /// every served SMI version (via `weft_smi`).
    pub fn from_value(value: &serde_json::Value) -> Result<ClusterObject, ModelError> {
        k8s::from_value(value)
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            ClusterObject::Namespace(n) => ObjectKey::new(Kind::Namespace, "", n.name.clone()),
            ClusterObject::ServiceAccount(s) => {
                ObjectKey::new(Kind::ServiceAccount, s.namespace.clone(), s.name.clone())
            }
            ClusterObject::Pod(p) => ObjectKey::new(Kind::Pod, p.namespace.clone(), p.name.clone()),
            ClusterObject::Service(s) => {
                ObjectKey::new(Kind::Service, s.namespace.clone(), s.name.clone())
            }
            ClusterObject::Endpoints(e) => e.key(),
            ClusterObject::Smi(o) => smi_key(o),
            ClusterObject::HttpRoute(r) => r.key(),
        }
    }
}

/// The model key of an SMI object.
pub fn smi_key(o: &hub::SmiObject) -> ObjectKey {
    let kind = match o {
        hub::SmiObject::TrafficSplit(_) => Kind::TrafficSplit,
        hub::SmiObject::TrafficTarget(_) => Kind::TrafficTarget,
        hub::SmiObject::HTTPRouteGroup(_) => Kind::HTTPRouteGroup,
        hub::SmiObject::PortRoute(r) => match r.kind {
            hub::RouteKind::UDPRoute => Kind::UDPRoute,
            _ => Kind::TCPRoute,
        },
    };
    let m = o.meta();
    ObjectKey::new(kind, m.namespace.clone(), m.name.clone())
}

fn add_index<K: Ord, V: Ord>(index: &mut BTreeMap<K, BTreeSet<V>>, k: K, v: V) {
    index.entry(k).or_default().insert(v);
}

fn remove_index<K: Ord, V: Ord>(index: &mut BTreeMap<K, BTreeSet<V>>, k: &K, v: &V) {
    if let Some(set) = index.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            index.remove(k);
        }
    }
}

/// The whole mesh as the compiler sees it.
///
/// Objects are stored in ordered maps so that every iteration is deterministic.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub namespaces: BTreeMap<String, Namespace>,
    pub service_accounts: BTreeMap<ObjectRef, ServiceAccount>,
    pub pods: BTreeMap<ObjectRef, Arc<Pod>>,
    pub services: BTreeMap<ObjectRef, Arc<Service>>,
    pub endpoint_groups: BTreeMap<ObjectKey, Arc<EndpointGroup>>,
    pub splits: BTreeMap<ObjectRef, hub::TrafficSplit>,
    pub targets: BTreeMap<ObjectRef, hub::TrafficTarget>,
    pub http_routes: BTreeMap<ObjectRef, hub::HttpRouteGroup>,
    pub tcp_routes: BTreeMap<ObjectRef, hub::PortRoute>,
    pub udp_routes: BTreeMap<ObjectRef, hub::PortRoute>,
    /// Gateway API HTTPRoutes (`gateway.networking.k8s.io/v1`), by namespace/name.
    pub gateway_routes: BTreeMap<ObjectRef, Arc<HttpRoute>>,
    /// Gateway API GRPCRoutes (`gateway.networking.k8s.io/v1`) in the HTTPRoute form, by
    /// namespace/name (a separate map: a GRPCRoute may have an HTTPRoute's name).
    pub grpc_routes: BTreeMap<ObjectRef, Arc<HttpRoute>>,
    /// When true, a service with no EndpointSlice/Endpoints gets endpoints derived from the
    /// ready pods its selector matches (as the endpoints controller would). Set by the
    /// manifests source; off for a real cluster, where the controller writes EndpointSlices.
    pub derive_endpoints_from_pods: bool,

    pods_by_ip: BTreeMap<IpAddr, BTreeSet<ObjectRef>>,
    pods_by_sa: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    groups_by_service: BTreeMap<ObjectRef, BTreeSet<ObjectKey>>,
    splits_by_apex: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    targets_by_destination: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// HTTPRoutes and GRPCRoutes (keys of both kinds) by parent Service.
    gateway_routes_by_parent: BTreeMap<ObjectRef, BTreeSet<ObjectKey>>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a model from a list of objects (later objects replace earlier ones with the same key).
    pub fn from_objects(objects: impl IntoIterator<Item = ClusterObject>) -> Self {
        let mut m = Model::new();
        for o in objects {
            m.upsert(o);
        }
        m
    }

    /// Adds or replaces an object; returns its key.
    pub fn upsert(&mut self, object: ClusterObject) -> ObjectKey {
        let key = object.key();
        self.remove(&key);
        match object {
            ClusterObject::Namespace(n) => {
                self.namespaces.insert(n.name.clone(), n);
            }
            ClusterObject::ServiceAccount(s) => {
                self.service_accounts.insert(key.object_ref(), s);
            }
            ClusterObject::Pod(p) => {
                let r = key.object_ref();
                if let Some(ip) = p.ip {
                    add_index(&mut self.pods_by_ip, ip, r.clone());
                }
                add_index(&mut self.pods_by_sa, p.service_account_ref(), r.clone());
                self.pods.insert(r, Arc::new(p));
            }
            ClusterObject::Service(s) => {
                self.services.insert(key.object_ref(), Arc::new(s));
            }
            ClusterObject::Endpoints(e) => {
                if let Some(svc) = &e.service {
                    add_index(
                        &mut self.groups_by_service,
                        ObjectRef::new(e.namespace.clone(), svc.clone()),
                        key.clone(),
                    );
                }
                self.endpoint_groups.insert(key.clone(), Arc::new(e));
            }
            ClusterObject::Smi(o) => {
                let r = key.object_ref();
                match o {
                    hub::SmiObject::TrafficSplit(s) => {
                        add_index(
                            &mut self.splits_by_apex,
                            ObjectRef::new(r.namespace.clone(), s.service.clone()),
                            r.clone(),
                        );
                        self.splits.insert(r, s);
                    }
                    hub::SmiObject::TrafficTarget(t) => {
                        add_index(
                            &mut self.targets_by_destination,
                            destination_ref(&t),
                            r.clone(),
                        );
                        self.targets.insert(r, t);
                    }
                    hub::SmiObject::HTTPRouteGroup(g) => {
                        self.http_routes.insert(r, g);
                    }
                    hub::SmiObject::PortRoute(p) => {
                        if p.kind == hub::RouteKind::UDPRoute {
                            self.udp_routes.insert(r, p);
                        } else {
                            self.tcp_routes.insert(r, p);
                        }
                    }
                }
            }
            ClusterObject::HttpRoute(route) => {
                for parent in route.service_parents() {
                    add_index(
                        &mut self.gateway_routes_by_parent,
                        parent.service,
                        key.clone(),
                    );
                }
                let map = match route.kind {
                    RouteKind::Http => &mut self.gateway_routes,
                    RouteKind::Grpc => &mut self.grpc_routes,
                };
                map.insert(key.object_ref(), Arc::new(route));
            }
        }
        key
    }

    /// Removes an object; returns whether it was present.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let r = key.object_ref();
        match key.kind {
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::ServiceAccount => self.service_accounts.remove(&r).is_some(),
            Kind::Pod => match self.pods.remove(&r) {
                Some(p) => {
                    if let Some(ip) = p.ip {
                        remove_index(&mut self.pods_by_ip, &ip, &r);
                    }
                    remove_index(&mut self.pods_by_sa, &p.service_account_ref(), &r);
                    true
                }
                None => false,
            },
            Kind::Service => self.services.remove(&r).is_some(),
            Kind::EndpointSlice | Kind::Endpoints => match self.endpoint_groups.remove(key) {
                Some(e) => {
                    if let Some(svc) = &e.service {
                        remove_index(
                            &mut self.groups_by_service,
                            &ObjectRef::new(e.namespace.clone(), svc.clone()),
                            key,
                        );
                    }
                    true
                }
                None => false,
            },
            Kind::TrafficSplit => match self.splits.remove(&r) {
                Some(s) => {
                    remove_index(
                        &mut self.splits_by_apex,
                        &ObjectRef::new(r.namespace.clone(), s.service.clone()),
                        &r,
                    );
                    true
                }
                None => false,
            },
            Kind::TrafficTarget => match self.targets.remove(&r) {
                Some(t) => {
                    remove_index(&mut self.targets_by_destination, &destination_ref(&t), &r);
                    true
                }
                None => false,
            },
            Kind::HTTPRouteGroup => self.http_routes.remove(&r).is_some(),
            Kind::TCPRoute => self.tcp_routes.remove(&r).is_some(),
            Kind::UDPRoute => self.udp_routes.remove(&r).is_some(),
            Kind::HTTPRoute | Kind::GRPCRoute => {
                let map = if key.kind == Kind::GRPCRoute {
                    &mut self.grpc_routes
                } else {
                    &mut self.gateway_routes
                };
                match map.remove(&r) {
                    Some(route) => {
                        for parent in route.service_parents() {
                            remove_index(&mut self.gateway_routes_by_parent, &parent.service, key);
                        }
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// Pods whose `status.podIP` is `ip`.
    pub fn pods_with_ip(&self, ip: &IpAddr) -> impl Iterator<Item = &ObjectRef> {
        self.pods_by_ip.get(ip).into_iter().flatten()
    }

    /// Pods running as the given service account.
    pub fn pods_with_service_account(&self, sa: &ObjectRef) -> impl Iterator<Item = &ObjectRef> {
        self.pods_by_sa.get(sa).into_iter().flatten()
    }

    /// Pods in a namespace, in name order.
    pub fn pods_in_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
        self.pods
            .range(ObjectRef::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, p)| p)
    }

    /// Services in a namespace, in name order.
    pub fn services_in_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.services
            .range(ObjectRef::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, s)| s)
    }

    /// Splits in a namespace, in name order.
    pub fn splits_in_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ObjectRef, &'a hub::TrafficSplit)> + 'a {
        self.splits
            .range(ObjectRef::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
    }

    /// TrafficTargets in a namespace, in name order.
    pub fn targets_in_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ObjectRef, &'a hub::TrafficTarget)> + 'a {
        self.targets
            .range(ObjectRef::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
    }

    /// EndpointSlices/Endpoints that belong to a service.
    pub fn endpoint_groups_for(&self, service: &ObjectRef) -> impl Iterator<Item = &EndpointGroup> {
        self.groups_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.endpoint_groups.get(k).map(|g| g.as_ref()))
    }

    /// True when some EndpointSlice/Endpoints names the service.
    pub fn has_endpoint_groups(&self, service: &ObjectRef) -> bool {
        self.groups_by_service.contains_key(service)
    }

    /// Splits whose apex (root) is the service.
    pub fn splits_for_apex(&self, apex: &ObjectRef) -> impl Iterator<Item = &ObjectRef> {
        self.splits_by_apex.get(apex).into_iter().flatten()
    }

    /// Every apex named by some split.
    pub fn apexes(&self) -> impl Iterator<Item = &ObjectRef> {
        self.splits_by_apex.keys()
    }

    /// HTTPRoutes and GRPCRoutes with a parentRef naming the Service (in any namespace:
    /// producer and consumer routes alike), in kind, then namespace/name order.
    pub fn gateway_routes_for_parent(
        &self,
        service: &ObjectRef,
    ) -> impl Iterator<Item = &ObjectKey> {
        self.gateway_routes_by_parent
            .get(service)
            .into_iter()
            .flatten()
    }

    /// The HTTPRoute or GRPCRoute (in the HTTPRoute form) of a model key.
    pub fn gateway_route(&self, key: &ObjectKey) -> Option<&Arc<HttpRoute>> {
        match key.kind {
            Kind::HTTPRoute => self.gateway_routes.get(&key.object_ref()),
            Kind::GRPCRoute => self.grpc_routes.get(&key.object_ref()),
            _ => None,
        }
    }

    /// Every HTTPRoute, then every GRPCRoute.
    pub fn all_gateway_routes(&self) -> impl Iterator<Item = &Arc<HttpRoute>> {
        self.gateway_routes
            .values()
            .chain(self.grpc_routes.values())
    }

    /// Every Service named as a parent by some HTTPRoute or GRPCRoute.
    pub fn gateway_parents(&self) -> impl Iterator<Item = &ObjectRef> {
        self.gateway_routes_by_parent.keys()
    }

    /// TrafficTargets whose destination is the service account.
    pub fn targets_for_destination(&self, sa: &ObjectRef) -> impl Iterator<Item = &ObjectRef> {
        self.targets_by_destination.get(sa).into_iter().flatten()
    }

    /// True when the service account is the destination of some TrafficTarget.
    pub fn is_destination(&self, sa: &ObjectRef) -> bool {
        self.targets_by_destination.contains_key(sa)
    }
}

/// The destination service account of a TrafficTarget as a namespaced name.
pub fn destination_ref(t: &hub::TrafficTarget) -> ObjectRef {
    let ns = if t.destination.namespace.is_empty() {
        t.meta.namespace.clone()
    } else {
        t.destination.namespace.clone()
    };
    ObjectRef::new(ns, t.destination.name.clone())
}
