//! The compiler: from the mesh model (SMI objects and cluster state) to per-proxy config.
//!
//! Translation is pure: [`compile`] and [`Compiler::update`] read a [`Model`] and return a
//! [`Compiled`] snapshot; nothing here does I/O (`weft_manifests::compile_dir` reads a directory and
//! calls it, for the CLI). The rules it implements are in `docs/compile.md`.
//!
//! # Output
//!
//! Every meshed pod gets a [`ProxyConfig`]: its own `inbound` resource plus every service's
//! `outbound:<svc>.<ns>` and every service port's `endpoints:<svc>.<ns>:<port>`. The outbound
//! and endpoints resources are the same for every proxy and are shared ([`SharedResources`],
//! behind an `Arc`), never copied per proxy.
//!
//! One exception, Gateway API consumer routes (an HTTPRoute in namespace `N` whose parent is a
//! Service in another namespace): they apply to proxies of pods in `N` only. For each such
//! namespace the compiler builds a consumer variant of the Service's resource,
//! `outbound:<svc>.<ns>@<N>` (same content shape), and one set of shared resources for the
//! namespace, in which the variant replaces `outbound:<svc>.<ns>` (a copy-on-write clone of
//! the shared set: one chunk copied per variant). Proxies in `N` get that set; every other
//! proxy the shared one. Nothing of this exists while no consumer route is in force.
//!
//! # Versions
//!
//! A resource's version is a content hash ([`content_version`]). A proxy's config version is
//! a hash over its `(name, version)` pairs: the inbound pair and a digest of the shared pairs
//! (a wrapping sum of per-pair sha256 values, so it updates in O(1) per changed resource).
//! Same input, same output, byte for byte, whatever the order objects were added in.
//!
//! # Incremental use (the runtime)
//!
//! ```no_run
//! use weft_core::compile::{ChangedKeys, CompileOptions, Compiler};
//! use weft_core::model::{Model, ObjectRef};
//! let mut model = Model::new();
//! let mut compiler = Compiler::new(CompileOptions::default());
//! let snapshot = compiler.full(&model);
//! // ... later, for each batch of watch events:
//! let mut changed = ChangedKeys::default();
//! // changed.insert(model.upsert(object));  or: model.remove(&key); changed.insert(key);
//! let snapshot = compiler.update(&model, &changed);
//! let config = snapshot.proxy_or_default(&ObjectRef::new("demo", "web-0"), "web");
//! ```

pub mod analysis;
pub mod gateway;
pub mod reliability;
pub mod report;
pub mod rules;
mod types;
mod units;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use weft_smi::hub;

use crate::model::{destination_ref, Kind, Model, ObjectKey, ObjectRef};

pub use report::CompileReport;
pub use types::*;
pub use units::{
    ACCEPTED, ANY_CLIENT, CONFLICTED, PROBE_AUTHORIZATION, RESOLVED_REFS, RETRIES_ANNOTATION,
    RETRY_BUDGET_ANNOTATION, RETRY_NON_IDEMPOTENT_ANNOTATION, TIMEOUT_ANNOTATION,
};

/// Settings of a compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// SPIFFE trust domain (`spiffe://<trust_domain>/ns/<ns>/sa/<sa>`).
    pub trust_domain: String,
    /// The cluster's DNS domain (`<svc>.<ns>.svc.<cluster_domain>`).
    pub cluster_domain: String,
    /// Mesh-wide default inbound policy (namespace and pod annotations override it).
    pub default_inbound_policy: DefaultPolicy,
    /// The proxies' inbound (mTLS) port.
    pub proxy_inbound_port: u16,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            default_inbound_policy: DefaultPolicy::Allow,
            proxy_inbound_port: 4143,
        }
    }
}

/// A proxy is named by its pod.
pub type ProxyKey = ObjectRef;

/// A problem worth an Event on an object (always of type Warning).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Event {
    pub object: ObjectKey,
    pub reason: String,
    pub message: String,
}

/// A contiguous, name-ordered run of shared resources (see [`SharedResources`]).
type Chunk = BTreeMap<Arc<str>, Arc<VersionedResource>>;

/// A chunk is split in two when it grows past this many resources.
const MAX_CHUNK: usize = 256;

/// The resources every proxy shares: all OutboundServices and EndpointSets.
///
/// Stored as name-ordered chunks behind `Arc`s, so that a snapshot which changes one resource
/// copies one chunk (at most [`MAX_CHUNK`] entries) and the list of chunk pointers, not the
/// whole set. The digest of every `(name, version)` pair is updated in O(1) per change.
#[derive(Clone, Debug, Default)]
pub struct SharedResources {
    /// Non-empty chunks, in name order: every name of chunk `i` sorts before chunk `i + 1`.
    chunks: Vec<Arc<Chunk>>,
    len: usize,
    digest: u128,
}

impl SharedResources {
    /// The chunk that holds (or would hold) `name`.
    fn chunk_index(&self, name: &str) -> usize {
        self.chunks
            .partition_point(|c| c.keys().next().is_some_and(|k| &**k <= name))
            .saturating_sub(1)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<VersionedResource>> {
        self.chunks.get(self.chunk_index(name))?.get(name)
    }

    /// Resources in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<VersionedResource>> {
        self.chunks.iter().flat_map(|c| c.values())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Digest of every `(name, version)` pair.
    pub fn digest(&self) -> String {
        format!("{:032x}", self.digest)
    }

    fn insert(&mut self, r: Arc<VersionedResource>) -> bool {
        let add = pair_hash(&r.name, &r.version);
        if self.chunks.is_empty() {
            self.chunks.push(Arc::default());
        }
        let i = self.chunk_index(&r.name);
        let chunk = Arc::make_mut(&mut self.chunks[i]);
        let version = r.version.clone();
        let changed = match chunk.insert(Arc::from(r.name.as_str()), r) {
            Some(old) => {
                self.digest = self
                    .digest
                    .wrapping_sub(pair_hash(&old.name, &old.version))
                    .wrapping_add(add);
                old.version != version
            }
            None => {
                self.digest = self.digest.wrapping_add(add);
                self.len += 1;
                true
            }
        };
        if chunk.len() > MAX_CHUNK {
            if let Some(mid) = chunk.keys().nth(chunk.len() / 2).cloned() {
                let tail = chunk.split_off(&mid);
                self.chunks.insert(i + 1, Arc::new(tail));
            }
        }
        changed
    }

    fn remove(&mut self, name: &str) -> bool {
        let i = self.chunk_index(name);
        let Some(chunk) = self.chunks.get_mut(i).filter(|c| c.contains_key(name)) else {
            return false;
        };
        let chunk = Arc::make_mut(chunk);
        match chunk.remove(name) {
            Some(old) => {
                self.digest = self.digest.wrapping_sub(pair_hash(&old.name, &old.version));
                self.len -= 1;
                if chunk.is_empty() {
                    self.chunks.remove(i);
                }
                true
            }
            None => false,
        }
    }
}

fn pair_hash(name: &str, version: &str) -> u128 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(version.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b)
}

/// One proxy's whole config.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub proxy: ProxyKey,
    /// Content hash of the whole config (16 hex characters).
    pub version: String,
    /// The pod's `inbound` resource.
    pub inbound: Arc<VersionedResource>,
    /// Every outbound and endpoints resource.
    pub shared: Arc<SharedResources>,
}

impl ProxyConfig {
    fn new(
        proxy: ProxyKey,
        inbound: Arc<VersionedResource>,
        shared: Arc<SharedResources>,
    ) -> ProxyConfig {
        let mut h = Sha256::new();
        h.update(inbound.name.as_bytes());
        h.update([0]);
        h.update(inbound.version.as_bytes());
        h.update([0]);
        h.update(shared.digest.to_be_bytes());
        ProxyConfig {
            proxy,
            version: short_hex(&h.finalize()),
            inbound,
            shared,
        }
    }

    /// Every resource: `inbound` first, then the shared ones in name order.
    pub fn resources(&self) -> impl Iterator<Item = &Arc<VersionedResource>> {
        std::iter::once(&self.inbound).chain(self.shared.iter())
    }

    /// A resource by name.
    pub fn get(&self, name: &str) -> Option<&Arc<VersionedResource>> {
        if name == INBOUND_NAME {
            Some(&self.inbound)
        } else {
            self.shared.get(name)
        }
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        1 + self.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Resource name to version.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.resources()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    }
}

/// The proxies of a [`Compiled`] snapshot, in pod order. Each [`ProxyConfig`] is assembled
/// on access (an `Arc` of the pod's inbound resource, an `Arc` of the shared set, and a
/// version hashed from the two), which costs O(1).
#[derive(Clone, Copy, Debug)]
pub struct Proxies<'a> {
    inbound: &'a BTreeMap<ProxyKey, Arc<VersionedResource>>,
    shared: &'a Arc<SharedResources>,
    consumer: &'a BTreeMap<String, Arc<SharedResources>>,
}

impl<'a> Proxies<'a> {
    pub fn len(&self) -> usize {
        self.inbound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty()
    }

    pub fn contains_key(&self, key: &ProxyKey) -> bool {
        self.inbound.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &'a ProxyKey> + 'a {
        self.inbound.keys()
    }

    pub fn get(&self, key: &ProxyKey) -> Option<Arc<ProxyConfig>> {
        let inbound = self.inbound.get(key)?;
        Some(Arc::new(ProxyConfig::new(
            key.clone(),
            inbound.clone(),
            shared_for(self.shared, self.consumer, &key.namespace).clone(),
        )))
    }

    /// `(pod, config)` in pod order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a ProxyKey, Arc<ProxyConfig>)> + 'a {
        let shared = self.shared;
        let consumer = self.consumer;
        self.inbound.iter().map(move |(k, inbound)| {
            (
                k,
                Arc::new(ProxyConfig::new(
                    k.clone(),
                    inbound.clone(),
                    shared_for(shared, consumer, &k.namespace).clone(),
                )),
            )
        })
    }
}

/// The shared resources of proxies in `namespace`: its consumer set when it has one.
fn shared_for<'a>(
    shared: &'a Arc<SharedResources>,
    consumer: &'a BTreeMap<String, Arc<SharedResources>>,
    namespace: &str,
) -> &'a Arc<SharedResources> {
    consumer.get(namespace).unwrap_or(shared)
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum UnitId {
    Namespace(String),
    Outbound(ObjectRef),
    Inbound(ObjectRef),
    Target(ObjectRef),
    Route(ObjectKey),
}

/// A compiled snapshot: every proxy's config, statuses of every SMI object, problems.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    opts: CompileOptions,
    shared: Arc<SharedResources>,
    /// Per namespace with Gateway API consumer routes in force: the shared resources with the
    /// consumer variants in place of the producer resources (see the module header).
    consumer_shared: Arc<BTreeMap<String, Arc<SharedResources>>>,
    /// Each meshed pod's inbound resource; its [`ProxyConfig`] is that plus `shared`, built
    /// on demand in O(1) (so a shared change touches no per-proxy state).
    proxies: Arc<BTreeMap<ProxyKey, Arc<VersionedResource>>>,
    statuses: Arc<BTreeMap<ObjectKey, Vec<hub::Condition>>>,
    /// Gateway API routes' `status.parents[]` (weft's entries only).
    route_parents: Arc<BTreeMap<ObjectKey, Vec<gateway::RouteParentStatus>>>,
    events: Arc<BTreeMap<UnitId, Vec<Event>>>,
    namespace_defaults: Arc<BTreeMap<String, DefaultPolicy>>,
    destinations: Arc<BTreeSet<ObjectRef>>,
    /// Increases with every compilation by the same [`Compiler`].
    seq: u64,
    /// What changed since the snapshot `seq - 1`.
    changes: Arc<SnapshotChanges>,
}

/// What one snapshot changed relative to the one compiled just before it (by the same
/// [`Compiler`]), so that a consumer holding a small part of the snapshot (an on-demand
/// discovery stream) can tell in O(its part) whether it is affected, without rebuilding it.
///
/// Conservative: a name listed may be unchanged in the end, never the other way round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotChanges {
    /// Anything may have changed (a full compilation, or a change of the defaults a pod the
    /// model does not know gets): consumers must rebuild what they hold.
    pub all: bool,
    /// Shared resources (consumer variants `...@<ns>` included, and then their base name too)
    /// added, changed or removed.
    pub names: HashSet<String>,
    /// Addresses whose resolution may have changed, old and new: ClusterIPs of OutboundServices
    /// (and consumer variants) and IPs of meshed endpoints of EndpointSets added, changed or
    /// removed (on-demand discovery resolves a meshed pod's IP to a set that holds it).
    pub addresses: HashSet<IpAddr>,
    /// Meshed pods whose inbound resource changed, appeared or went away.
    pub proxies: HashSet<ProxyKey>,
}

impl SnapshotChanges {
    /// Records `old -> new` of one shared resource (either side absent).
    fn resource(&mut self, old: Option<&VersionedResource>, new: Option<&VersionedResource>) {
        for r in old.into_iter().chain(new) {
            self.names.insert(r.name.clone());
            // A consumer variant `outbound:<svc>.<ns>@<consumer>` is also a change of what
            // `outbound:<svc>.<ns>` stands for in the consumer namespace.
            if let Some((base, _)) = r.name.split_once('@') {
                self.names.insert(base.to_string());
            }
            match &r.resource {
                ResourceKind::Outbound(o) => self.addresses.extend(o.cluster_ips.iter().copied()),
                ResourceKind::Endpoints(set) => {
                    self.addresses.extend(set.meshed().map(|e| e.ip));
                }
                ResourceKind::Inbound(_) => {}
            }
        }
    }
}

impl Compiled {
    /// The sequence number of this snapshot: one more than the snapshot it was compiled from.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What changed since snapshot [`seq`](Self::seq)` - 1`.
    pub fn changes(&self) -> &SnapshotChanges {
        &self.changes
    }

    /// Whether `self` and `other` have the very same statuses, route parents and problems
    /// (shared, not compared: O(1)). A compilation that changed none of them keeps them shared.
    pub fn same_statuses(&self, other: &Compiled) -> bool {
        Arc::ptr_eq(&self.statuses, &other.statuses)
            && Arc::ptr_eq(&self.route_parents, &other.route_parents)
            && Arc::ptr_eq(&self.events, &other.events)
    }

    /// The config of a known meshed pod.
    pub fn proxy(&self, key: &ProxyKey) -> Option<Arc<ProxyConfig>> {
        self.proxies().get(key)
    }

    /// The config of a pod, or, for a pod the model does not know (yet), a valid default: the
    /// namespace's default inbound policy (deny when its service account is the destination
    /// of a TrafficTarget) and every outbound service.
    pub fn proxy_or_default(&self, key: &ProxyKey, service_account: &str) -> Arc<ProxyConfig> {
        if let Some(p) = self.proxy(key) {
            return p;
        }
        let sa = ObjectRef::new(key.namespace.clone(), service_account);
        let default_policy = if self.destinations.contains(&sa) {
            DefaultPolicy::Deny
        } else {
            self.namespace_defaults
                .get(&key.namespace)
                .copied()
                .unwrap_or(self.opts.default_inbound_policy)
        };
        let inbound = InboundPolicy {
            identity: spiffe_id(&self.opts.trust_domain, &key.namespace, service_account),
            default_policy,
            ports: Vec::new(),
        };
        let r = VersionedResource::new(INBOUND_NAME.into(), ResourceKind::Inbound(inbound));
        Arc::new(ProxyConfig::new(
            key.clone(),
            Arc::new(r),
            shared_for(&self.shared, &self.consumer_shared, &key.namespace).clone(),
        ))
    }

    /// Every known proxy's config, by pod.
    pub fn proxies(&self) -> Proxies<'_> {
        Proxies {
            inbound: &self.proxies,
            shared: &self.shared,
            consumer: &self.consumer_shared,
        }
    }

    /// The shared resources of proxies in a namespace with Gateway API consumer routes in force
    /// (`None`: that namespace's proxies get [`Compiled::shared`]).
    pub fn consumer_shared(&self, namespace: &str) -> Option<&Arc<SharedResources>> {
        self.consumer_shared.get(namespace)
    }

    /// The shared outbound and endpoints resources.
    pub fn shared(&self) -> &Arc<SharedResources> {
        &self.shared
    }

    /// Status conditions of every SMI object in the model (`Accepted`, `ResolvedRefs`, and
    /// `Conflicted` for TrafficSplits).
    pub fn route_parents(&self) -> &BTreeMap<ObjectKey, Vec<gateway::RouteParentStatus>> {
        &self.route_parents
    }

    /// Status conditions of every SMI object, by object.
    pub fn statuses(&self) -> &BTreeMap<ObjectKey, Vec<hub::Condition>> {
        &self.statuses
    }

    /// Problems to report as Warning Events, sorted.
    pub fn events(&self) -> Vec<&Event> {
        let mut v: Vec<&Event> = self.events.values().flatten().collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn options(&self) -> &CompileOptions {
        &self.opts
    }
}

/// Keys of the objects that changed (added, modified or removed) since the last update.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangedKeys(pub BTreeSet<ObjectKey>);

impl ChangedKeys {
    pub fn insert(&mut self, key: ObjectKey) {
        self.0.insert(key);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<ObjectKey> for ChangedKeys {
    fn from_iter<T: IntoIterator<Item = ObjectKey>>(iter: T) -> Self {
        ChangedKeys(iter.into_iter().collect())
    }
}

/// What the last update did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpdateStats {
    pub full: bool,
    /// Shared resources added or whose version changed.
    pub resources_changed: usize,
    pub resources_removed: usize,
    /// Proxies whose config version changed (or that appeared or went away).
    pub proxies_changed: usize,
    #[serde(skip)]
    pub duration: Duration,
}

#[derive(Default)]
struct Dirty {
    outbound: BTreeSet<ObjectRef>,
    endpoints: BTreeSet<ObjectRef>,
    inbound: BTreeSet<ObjectRef>,
    targets: BTreeSet<ObjectRef>,
    routes: BTreeSet<ObjectKey>,
    globals: bool,
}

/// Compiles the model once.
pub fn compile(model: &Model, opts: &CompileOptions) -> Compiled {
    let mut c = Compiler::new(opts.clone());
    let out = c.full(model);
    Arc::unwrap_or_clone(out)
}

/// Keeps the last output and recompiles only what a change affects.
#[derive(Debug, Default)]
pub struct Compiler {
    opts: CompileOptions,
    current: Arc<Compiled>,
    stats: UpdateStats,
    // What each unit produced last time.
    outbound_statuses: BTreeMap<ObjectRef, Vec<ObjectKey>>,
    endpoint_names: BTreeMap<ObjectRef, Vec<String>>,
    // Reverse dependencies seen so far (only ever grow between full compiles: a stale entry
    // costs a needless recompute, never a missed one).
    backend_index: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    route_index: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    pod_index: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    ip_index: BTreeMap<IpAddr, BTreeSet<ObjectRef>>,
    // Where objects pointed last time (for changes that move them).
    split_apex: BTreeMap<ObjectRef, ObjectRef>,
    target_dest: BTreeMap<ObjectRef, ObjectRef>,
    group_service: BTreeMap<ObjectKey, ObjectRef>,
    pod_ip: BTreeMap<ObjectRef, IpAddr>,
    /// Parent Services of each HTTPRoute and GRPCRoute, by route key.
    gateway_parents: BTreeMap<ObjectKey, Vec<ObjectRef>>,
    // Gateway API consumer variants: by consumer namespace, by Service; and the consumer
    // namespaces each Service has variants for.
    consumer_variants: BTreeMap<String, BTreeMap<ObjectRef, Arc<VersionedResource>>>,
    consumer_of: BTreeMap<ObjectRef, BTreeSet<String>>,
}

impl Compiler {
    pub fn new(opts: CompileOptions) -> Compiler {
        Compiler {
            current: Arc::new(Compiled {
                opts: opts.clone(),
                ..Compiled::default()
            }),
            opts,
            ..Compiler::default()
        }
    }

    /// The last output.
    pub fn current(&self) -> Arc<Compiled> {
        self.current.clone()
    }

    /// What the last [`Compiler::update`] or [`Compiler::full`] did.
    pub fn last_stats(&self) -> &UpdateStats {
        &self.stats
    }

    /// Recompiles everything from scratch.
    pub fn full(&mut self, model: &Model) -> Arc<Compiled> {
        let start = Instant::now();
        let seq = self.current.seq;
        *self = Compiler::new(self.opts.clone());
        Arc::make_mut(&mut self.current).seq = seq;
        let mut dirty = Dirty {
            globals: true,
            ..Dirty::default()
        };
        dirty.outbound.extend(model.services.keys().cloned());
        dirty.outbound.extend(model.apexes().cloned());
        dirty.outbound.extend(model.gateway_parents().cloned());
        dirty.endpoints.extend(model.services.keys().cloned());
        dirty.inbound.extend(model.pods.keys().cloned());
        dirty.targets.extend(model.targets.keys().cloned());
        for (kind, map) in [
            (Kind::TCPRoute, &model.tcp_routes),
            (Kind::UDPRoute, &model.udp_routes),
        ] {
            dirty.routes.extend(
                map.keys()
                    .map(|r| ObjectKey::new(kind, r.namespace.clone(), r.name.clone())),
            );
        }
        dirty.routes.extend(
            model
                .http_routes
                .keys()
                .map(|r| ObjectKey::new(Kind::HTTPRouteGroup, r.namespace.clone(), r.name.clone())),
        );
        dirty
            .routes
            .extend(model.all_gateway_routes().map(|r| r.key()));
        // `globals` makes the snapshot's changes `all`.
        let out = self.apply(model, dirty);
        self.record_pointers(model, None);
        self.stats.full = true;
        self.stats.duration = start.elapsed();
        out
    }

    /// Recompiles what the changed objects affect and returns the new snapshot. `model` must
    /// already contain the changes (and no longer contain removed objects).
    pub fn update(&mut self, model: &Model, changed: &ChangedKeys) -> Arc<Compiled> {
        let start = Instant::now();
        let mut d = Dirty::default();
        for key in &changed.0 {
            let r = key.object_ref();
            match key.kind {
                Kind::Namespace => {
                    d.globals = true;
                    d.inbound
                        .extend(model.pods_in_namespace(&key.name).map(|p| p.object_ref()));
                    // Its reliability annotations are every Service's defaults.
                    d.outbound.extend(
                        model
                            .services_in_namespace(&key.name)
                            .map(|s| s.object_ref()),
                    );
                }
                Kind::ServiceAccount => {}
                Kind::Pod => {
                    d.inbound.insert(r.clone());
                    d.endpoints
                        .extend(self.pod_index.get(&r).into_iter().flatten().cloned());
                    let ips = self
                        .pod_ip
                        .get(&r)
                        .copied()
                        .into_iter()
                        .chain(model.pods.get(&r).and_then(|p| p.ip));
                    for ip in ips {
                        d.endpoints
                            .extend(self.ip_index.get(&ip).into_iter().flatten().cloned());
                    }
                    if let Some(p) = model.pods.get(&r) {
                        if model.derive_endpoints_from_pods {
                            d.endpoints.extend(
                                model
                                    .services_in_namespace(&p.namespace)
                                    .filter(|s| s.selects(p))
                                    .map(|s| s.object_ref()),
                            );
                        }
                    }
                }
                Kind::Service => {
                    d.outbound.insert(r.clone());
                    d.outbound
                        .extend(self.backend_index.get(&r).into_iter().flatten().cloned());
                    for (_, s) in model.splits_in_namespace(&r.namespace) {
                        if s.backends.iter().any(|b| b.service == r.name) {
                            d.outbound
                                .insert(ObjectRef::new(r.namespace.clone(), s.service.clone()));
                        }
                    }
                    d.endpoints.insert(r.clone());
                    // HTTPRoutes whose parent or backend it is: their status depends on it.
                    d.routes.extend(gateway_routes_reading(model, &r));
                    d.inbound.extend(
                        model
                            .pods_in_namespace(&r.namespace)
                            .filter(|p| p.meshed)
                            .map(|p| p.object_ref()),
                    );
                }
                Kind::EndpointSlice | Kind::Endpoints => {
                    d.endpoints.extend(self.group_service.get(key).cloned());
                    if let Some(g) = model.endpoint_groups.get(key) {
                        if let Some(s) = &g.service {
                            d.endpoints
                                .insert(ObjectRef::new(g.namespace.clone(), s.clone()));
                        }
                    }
                }
                Kind::TrafficSplit => {
                    let apexes: Vec<ObjectRef> =
                        self.split_apex
                            .get(&r)
                            .cloned()
                            .into_iter()
                            .chain(
                                model.splits.get(&r).map(|s| {
                                    ObjectRef::new(r.namespace.clone(), s.service.clone())
                                }),
                            )
                            .collect();
                    for apex in apexes {
                        // An HTTPRoute's status names the splits it overrides.
                        d.routes
                            .extend(model.gateway_routes_for_parent(&apex).cloned());
                        d.outbound.insert(apex);
                    }
                }
                Kind::HTTPRoute | Kind::GRPCRoute => {
                    d.routes.insert(key.clone());
                    let parents: BTreeSet<ObjectRef> =
                        self.gateway_parents
                            .get(key)
                            .into_iter()
                            .flatten()
                            .cloned()
                            .chain(
                                model.gateway_route(key).into_iter().flat_map(|g| {
                                    g.service_parents().into_iter().map(|p| p.service)
                                }),
                            )
                            .collect();
                    for p in parents {
                        // Of an HTTPRoute and a GRPCRoute on the same port only one is in force:
                        // the other routes on its parents may change status.
                        d.routes
                            .extend(model.gateway_routes_for_parent(&p).cloned());
                        d.outbound.insert(p);
                    }
                }
                Kind::TrafficTarget => {
                    d.globals = true;
                    d.targets.insert(r.clone());
                    let dests = self
                        .target_dest
                        .get(&r)
                        .cloned()
                        .into_iter()
                        .chain(model.targets.get(&r).map(destination_ref));
                    for sa in dests {
                        d.inbound
                            .extend(model.pods_with_service_account(&sa).cloned());
                    }
                }
                Kind::HTTPRouteGroup | Kind::TCPRoute | Kind::UDPRoute => {
                    d.routes.insert(key.clone());
                    d.outbound
                        .extend(self.route_index.get(&r).into_iter().flatten().cloned());
                    for (_, s) in model.splits_in_namespace(&r.namespace) {
                        if s.matches.iter().any(|m| m.name == r.name) {
                            d.outbound
                                .insert(ObjectRef::new(r.namespace.clone(), s.service.clone()));
                        }
                    }
                    for (tref, t) in model.targets_in_namespace(&r.namespace) {
                        d.targets.insert(tref.clone());
                        if t.rules.iter().any(|rule| rule.name == r.name) {
                            d.inbound.extend(
                                model
                                    .pods_with_service_account(&destination_ref(t))
                                    .cloned(),
                            );
                        }
                    }
                }
            }
        }
        self.stats = UpdateStats::default();
        let out = self.apply(model, d);
        self.record_pointers(model, Some(changed));
        self.stats.duration = start.elapsed();
        out
    }

    fn record_pointers(&mut self, model: &Model, changed: Option<&ChangedKeys>) {
        let all;
        let keys: Box<dyn Iterator<Item = &ObjectKey>> = match changed {
            Some(c) => Box::new(c.0.iter()),
            None => {
                all =
                    model
                        .splits
                        .keys()
                        .map(|r| {
                            ObjectKey::new(Kind::TrafficSplit, r.namespace.clone(), r.name.clone())
                        })
                        .chain(model.targets.keys().map(|r| {
                            ObjectKey::new(Kind::TrafficTarget, r.namespace.clone(), r.name.clone())
                        }))
                        .chain(model.endpoint_groups.keys().cloned())
                        .chain(model.all_gateway_routes().map(|r| r.key()))
                        .chain(model.pods.keys().map(|r| {
                            ObjectKey::new(Kind::Pod, r.namespace.clone(), r.name.clone())
                        }))
                        .collect::<Vec<_>>();
                Box::new(all.iter())
            }
        };
        for key in keys {
            let r = key.object_ref();
            match key.kind {
                Kind::TrafficSplit => match model.splits.get(&r) {
                    Some(s) => {
                        self.split_apex.insert(
                            r.clone(),
                            ObjectRef::new(r.namespace.clone(), s.service.clone()),
                        );
                    }
                    None => {
                        self.split_apex.remove(&r);
                    }
                },
                Kind::TrafficTarget => match model.targets.get(&r) {
                    Some(t) => {
                        self.target_dest.insert(r, destination_ref(t));
                    }
                    None => {
                        self.target_dest.remove(&r);
                    }
                },
                Kind::EndpointSlice | Kind::Endpoints => {
                    match model.endpoint_groups.get(key).and_then(|g| {
                        g.service
                            .as_ref()
                            .map(|s| ObjectRef::new(g.namespace.clone(), s.clone()))
                    }) {
                        Some(s) => {
                            self.group_service.insert(key.clone(), s);
                        }
                        None => {
                            self.group_service.remove(key);
                        }
                    }
                }
                Kind::HTTPRoute | Kind::GRPCRoute => match model.gateway_route(key) {
                    Some(g) => {
                        let parents = g.service_parents().into_iter().map(|p| p.service).collect();
                        self.gateway_parents.insert(key.clone(), parents);
                    }
                    None => {
                        self.gateway_parents.remove(key);
                    }
                },
                Kind::Pod => match model.pods.get(&r).and_then(|p| p.ip) {
                    Some(ip) => {
                        self.pod_ip.insert(r, ip);
                    }
                    None => {
                        self.pod_ip.remove(&r);
                    }
                },
                _ => {}
            }
        }
    }

    fn apply(&mut self, model: &Model, d: Dirty) -> Arc<Compiled> {
        let opts = self.opts.clone();
        let prev = self.current.clone();
        let mut next = Compiled::clone(&prev);
        let mut shared_changed = false;
        // Consumer namespaces whose variants changed.
        let mut consumer_dirty: BTreeSet<String> = BTreeSet::new();
        let mut changes = SnapshotChanges {
            all: d.globals,
            ..SnapshotChanges::default()
        };

        if !d.outbound.is_empty() || !d.endpoints.is_empty() {
            let shared = &mut next.shared;
            let statuses = &mut next.statuses;
            let events = &mut next.events;
            for apex in &d.outbound {
                let unit = units::outbound(model, apex);
                for b in &unit.backends {
                    self.backend_index
                        .entry(b.clone())
                        .or_default()
                        .insert(apex.clone());
                }
                for r in &unit.routes {
                    self.route_index
                        .entry(r.clone())
                        .or_default()
                        .insert(apex.clone());
                }
                let keys: Vec<ObjectKey> = unit.statuses.iter().map(|(k, _)| k.clone()).collect();
                for old in self.outbound_statuses.remove(apex).unwrap_or_default() {
                    if !keys.contains(&old) {
                        cow_remove(statuses, &old);
                    }
                }
                for (k, v) in unit.statuses {
                    cow_insert(statuses, k, v);
                }
                if !keys.is_empty() {
                    self.outbound_statuses.insert(apex.clone(), keys);
                }
                set_events(events, UnitId::Outbound(apex.clone()), unit.events);
                self.consumer_variants_of(model, apex, &mut consumer_dirty, &mut changes);
                let name = outbound_name(&apex.namespace, &apex.name);
                let old = shared.get(&name).cloned();
                match unit.resource {
                    Some(o) => {
                        let r = VersionedResource::new(name.clone(), ResourceKind::Outbound(o));
                        if shared_insert(shared, r) {
                            self.stats.resources_changed += 1;
                            shared_changed = true;
                            changes.resource(old.as_deref(), shared.get(&name).map(|r| &**r));
                        }
                    }
                    None => {
                        if old.is_some() && Arc::make_mut(shared).remove(&name) {
                            self.stats.resources_removed += 1;
                            shared_changed = true;
                            changes.resource(old.as_deref(), None);
                        }
                    }
                }
            }
            for svc in &d.endpoints {
                let unit = units::endpoints(model, &opts, svc);
                for p in &unit.pods {
                    self.pod_index
                        .entry(p.clone())
                        .or_default()
                        .insert(svc.clone());
                }
                for ip in &unit.ips {
                    self.ip_index.entry(*ip).or_default().insert(svc.clone());
                }
                let mut names = Vec::with_capacity(unit.sets.len());
                for (port, set) in unit.sets {
                    let name = endpoints_name(&svc.namespace, &svc.name, port);
                    names.push(name.clone());
                    let r = VersionedResource::new(name.clone(), ResourceKind::Endpoints(set));
                    let before = shared.get(&name).cloned();
                    if shared_insert(shared, r) {
                        self.stats.resources_changed += 1;
                        shared_changed = true;
                        changes.resource(before.as_deref(), shared.get(&name).map(|r| &**r));
                    }
                }
                for old in self.endpoint_names.remove(svc).unwrap_or_default() {
                    let gone = shared.get(&old).cloned();
                    if !names.contains(&old) && gone.is_some() && Arc::make_mut(shared).remove(&old)
                    {
                        self.stats.resources_removed += 1;
                        shared_changed = true;
                        changes.resource(gone.as_deref(), None);
                    }
                }
                if !names.is_empty() {
                    self.endpoint_names.insert(svc.clone(), names);
                }
            }
        }

        // Consumer namespaces' shared sets follow the shared set and their variants.
        if shared_changed {
            consumer_dirty.extend(self.consumer_variants.keys().cloned());
            consumer_dirty.extend(next.consumer_shared.keys().cloned());
        }
        for ns in &consumer_dirty {
            match self.consumer_variants.get(ns) {
                Some(variants) => {
                    let mut set = SharedResources::clone(&next.shared);
                    for (apex, r) in variants {
                        set.remove(&outbound_name(&apex.namespace, &apex.name));
                        set.insert(r.clone());
                    }
                    Arc::make_mut(&mut next.consumer_shared).insert(ns.clone(), Arc::new(set));
                }
                None => {
                    cow_remove(&mut next.consumer_shared, ns);
                }
            }
        }

        if !d.targets.is_empty() || !d.routes.is_empty() {
            let statuses = &mut next.statuses;
            let events = &mut next.events;
            for tref in &d.targets {
                let key = ObjectKey::new(
                    Kind::TrafficTarget,
                    tref.namespace.clone(),
                    tref.name.clone(),
                );
                match model.targets.get(tref) {
                    Some(t) => {
                        let (conds, evs) = units::target_status(model, tref, t);
                        cow_insert(statuses, key, conds);
                        set_events(events, UnitId::Target(tref.clone()), evs);
                    }
                    None => {
                        cow_remove(statuses, &key);
                        cow_remove(events, &UnitId::Target(tref.clone()));
                    }
                }
            }
            for key in d.routes.iter().filter(|k| k.kind.is_gateway_api()) {
                match model.gateway_route(key) {
                    Some(route) => {
                        let parents =
                            gateway::route_status(model, route, units::service_port_protocol);
                        cow_insert(&mut next.route_parents, key.clone(), parents);
                    }
                    None => {
                        cow_remove(&mut next.route_parents, key);
                    }
                }
            }
            for key in d.routes.iter().filter(|k| !k.kind.is_gateway_api()) {
                let (conds, evs) = units::route_status(key, model);
                if conds.is_empty() {
                    cow_remove(statuses, key);
                } else {
                    cow_insert(statuses, key.clone(), conds);
                }
                set_events(events, UnitId::Route(key.clone()), evs);
            }
        }

        if d.globals {
            next.namespace_defaults = Arc::new(
                model
                    .namespaces
                    .keys()
                    .map(|n| (n.clone(), units::namespace_default(model, &opts, n)))
                    .collect(),
            );
            next.destinations = Arc::new(model.targets.values().map(destination_ref).collect());
            // Invalid reliability annotations of Namespaces: reported once per Namespace,
            // whether or not it has Services.
            let gone: Vec<UnitId> = next
                .events
                .keys()
                .filter(|u| matches!(u, UnitId::Namespace(n) if !model.namespaces.contains_key(n)))
                .cloned()
                .collect();
            for u in &gone {
                cow_remove(&mut next.events, u);
            }
            for n in model.namespaces.values() {
                set_events(
                    &mut next.events,
                    UnitId::Namespace(n.name.clone()),
                    units::namespace_events(n),
                );
            }
        }

        // Proxies: only inbound resources are per proxy; a shared change touches none of them.
        let events = &mut next.events;
        let mut inbound_changed = 0usize;
        let mut removed = 0usize;
        for pref in &d.inbound {
            match model.pods.get(pref).filter(|p| p.meshed) {
                Some(pod) => {
                    let mut evs = Vec::new();
                    let policy = units::inbound(
                        model,
                        &opts,
                        &pod.namespace,
                        &pod.service_account,
                        Some(pod),
                        &mut evs,
                    );
                    set_events(events, UnitId::Inbound(pref.clone()), evs);
                    let inbound =
                        VersionedResource::new(INBOUND_NAME.into(), ResourceKind::Inbound(policy));
                    let same = next
                        .proxies
                        .get(pref)
                        .is_some_and(|old| old.version == inbound.version);
                    if !same {
                        Arc::make_mut(&mut next.proxies).insert(pref.clone(), Arc::new(inbound));
                        inbound_changed += 1;
                        changes.proxies.insert(pref.clone());
                    }
                }
                None => {
                    cow_remove(events, &UnitId::Inbound(pref.clone()));
                    if cow_remove(&mut next.proxies, pref) {
                        removed += 1;
                        changes.proxies.insert(pref.clone());
                    }
                }
            }
        }
        // A proxy's version hashes its inbound version and the shared digest: when the shared
        // set changed, every proxy has a new version.
        let changed_proxies = if shared_changed {
            next.proxies.len() + removed
        } else if !consumer_dirty.is_empty() {
            // Every proxy of those namespaces, plus inbound changes elsewhere (a proxy counted
            // twice at most: a figure for logs, not a decision).
            next.proxies
                .keys()
                .filter(|k| consumer_dirty.contains(&k.namespace))
                .count()
                + inbound_changed
                + removed
        } else {
            inbound_changed + removed
        };
        self.stats.proxies_changed = changed_proxies;
        next.seq = prev.seq + 1;
        next.changes = Arc::new(changes);
        let out = Arc::new(next);
        self.current = out.clone();
        out
    }
}

impl Compiler {
    /// Recompiles the consumer variants of Service `apex` (one per namespace with a consumer
    /// route in force on it) and drops those no longer in force; the namespaces whose variants
    /// changed go into `dirty`.
    fn consumer_variants_of(
        &mut self,
        model: &Model,
        apex: &ObjectRef,
        dirty: &mut BTreeSet<String>,
        changes: &mut SnapshotChanges,
    ) {
        let mut now = BTreeSet::new();
        for ns in gateway::consumer_namespaces(model, apex) {
            let Some((o, backends)) = units::outbound_consumer(model, apex, &ns) else {
                continue;
            };
            for b in backends {
                self.backend_index
                    .entry(b)
                    .or_default()
                    .insert(apex.clone());
            }
            let r = VersionedResource::new(
                consumer_outbound_name(&apex.namespace, &apex.name, &ns),
                ResourceKind::Outbound(o),
            );
            let variants = self.consumer_variants.entry(ns.clone()).or_default();
            if variants.get(apex).map(|old| &old.version) != Some(&r.version) {
                changes.resource(variants.get(apex).map(|old| &**old), Some(&r));
                variants.insert(apex.clone(), Arc::new(r));
                dirty.insert(ns.clone());
            }
            now.insert(ns);
        }
        for old in self.consumer_of.remove(apex).unwrap_or_default() {
            if now.contains(&old) {
                continue;
            }
            if let Some(variants) = self.consumer_variants.get_mut(&old) {
                if let Some(gone) = variants.remove(apex) {
                    changes.resource(Some(&gone), None);
                }
                if variants.is_empty() {
                    self.consumer_variants.remove(&old);
                }
            }
            dirty.insert(old);
        }
        if !now.is_empty() {
            self.consumer_of.insert(apex.clone(), now);
        }
    }
}

/// HTTPRoutes and GRPCRoutes whose status reads the Service (as parent or backend).
fn gateway_routes_reading(model: &Model, svc: &ObjectRef) -> Vec<ObjectKey> {
    model
        .all_gateway_routes()
        .filter(|g| gateway::reads_service(g, svc))
        .map(|g| g.key())
        .collect()
}

fn set_events(events: &mut Arc<BTreeMap<UnitId, Vec<Event>>>, unit: UnitId, evs: Vec<Event>) {
    if evs.is_empty() {
        cow_remove(events, &unit);
    } else {
        cow_insert(events, unit, evs);
    }
}

/// Inserts into a shared map, copying it only when the value changes.
fn cow_insert<K: Ord + Clone, V: PartialEq + Clone>(
    map: &mut Arc<BTreeMap<K, V>>,
    k: K,
    v: V,
) -> bool {
    if map.get(&k) == Some(&v) {
        return false;
    }
    Arc::make_mut(map).insert(k, v);
    true
}

/// Removes from a shared map, copying it only when the key is present.
fn cow_remove<K: Ord + Clone, V: Clone>(map: &mut Arc<BTreeMap<K, V>>, k: &K) -> bool {
    if !map.contains_key(k) {
        return false;
    }
    Arc::make_mut(map).remove(k);
    true
}

/// Inserts a resource into the shared set, copying the set only when the version changes.
fn shared_insert(shared: &mut Arc<SharedResources>, r: VersionedResource) -> bool {
    if shared
        .get(&r.name)
        .is_some_and(|old| old.version == r.version)
    {
        return false;
    }
    Arc::make_mut(shared).insert(Arc::new(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, n: usize) -> Arc<VersionedResource> {
        Arc::new(VersionedResource::new(
            name.to_string(),
            ResourceKind::Endpoints(EndpointSet {
                endpoints: vec![Endpoint {
                    ip: IpAddr::from([10, 0, 0, 1]),
                    port: u16::try_from(n % 60_000 + 1).unwrap_or(1),
                    identity: String::new(),
                    inbound_port: 0,
                    pod: String::new(),
                    workload: String::new(),
                }],
            }),
        ))
    }

    /// Chunked storage behaves as one ordered map; snapshots share untouched chunks; the digest
    /// depends only on the content.
    #[test]
    fn shared_resources_chunks_behave_as_one_ordered_map() {
        let mut s = SharedResources::default();
        let mut want = BTreeMap::new();
        // Insert in a scrambled order, enough for many chunk splits.
        for i in 0..(MAX_CHUNK * 5) {
            let k = (i * 7919) % (MAX_CHUNK * 5);
            let name = format!("endpoints:svc-{k:05}.ns:80");
            assert!(s.insert(res(&name, k)));
            want.insert(name, k);
        }
        assert!(s.chunks.len() > 4);
        assert!(s
            .chunks
            .iter()
            .all(|c| !c.is_empty() && c.len() <= MAX_CHUNK));
        let names: Vec<&str> = s.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, want.keys().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(s.len(), want.len());
        for name in want.keys() {
            assert_eq!(s.get(name).map(|r| r.name.as_str()), Some(name.as_str()));
        }
        assert!(s.get("endpoints:zzz").is_none() && s.get("a").is_none());

        // A snapshot that changes one resource copies one chunk only.
        let before = s.clone();
        let name = "endpoints:svc-00300.ns:80";
        assert!(!s.insert(res(name, 300)));
        assert!(s.insert(res(name, 301)));
        let copied = s
            .chunks
            .iter()
            .zip(&before.chunks)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert_eq!(copied, 1);
        assert_ne!(s.digest(), before.digest());

        // Removing everything in any order empties it; the digest matches a fresh build.
        let mut fresh = SharedResources::default();
        for (i, name) in want.keys().enumerate() {
            if i % 2 == 0 {
                assert!(s.remove(name));
                assert!(!s.remove(name));
            } else {
                let n = if name == "endpoints:svc-00300.ns:80" {
                    301
                } else {
                    want[name]
                };
                fresh.insert(res(name, n));
            }
        }
        assert_eq!(s.len(), fresh.len());
        assert_eq!(s.digest(), fresh.digest());
        let a: Vec<String> = s.iter().map(|r| r.version.clone()).collect();
        let b: Vec<String> = fresh.iter().map(|r| r.version.clone()).collect();
        assert_eq!(a, b);
        for name in want.keys() {
            s.remove(name);
        }
        assert!(s.is_empty() && s.chunks.is_empty());
        assert_eq!(s.digest(), SharedResources::default().digest());
    }
}
