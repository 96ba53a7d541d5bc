//! On-demand discovery: what a proxy that watches names holds (protocol points 6-8 of
//! `discovery.proto`).
//!
//! A stream served on demand keeps a bounded set of watched names. For each snapshot it builds
//! a [`View`]: the pod's `inbound` resource, plus for every watched `outbound:<svc>.<ns>` that
//! OutboundService (its consumer variant for the pod's namespace when one is in force) and the
//! EndpointSets its routes name, plus for every watched `ip:<address>` an `IpResolution`
//! resource and the resources of the Service at that ClusterIP (or, for a meshed pod's IP, an
//! EndpointSet that holds the pod, so the proxy knows its identity). The view's version is a
//! hash of its `(name, version)` pairs, so a change to anything the proxy does not watch leaves
//! it unchanged and the stream sends nothing. Building a view costs O(watched), never O(mesh);
//! the address index (ClusterIPs and meshed pods' IPs, O(mesh)) is built once per snapshot and
//! shared by every stream.
//!
//! A view also records what it depends on ([`Deps`]: every resource name it looked up, found
//! or not, and every address it resolved). A new snapshot whose [`SnapshotChanges`] touch none
//! of them cannot change the view, so the stream keeps it without rebuilding it: a change costs
//! each unaffected stream a few hash look-ups.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use weft_proxy_api::names::{self, ResourceName};
use weft_proxy_api::v1;

use crate::compile::{
    ProxyConfig, ProxyKey, ResourceKind, SharedResources, SnapshotChanges, VersionedResource,
};

/// Names one stream may watch; further names are ignored (the proxy's bounded wait then ends
/// in a 503 for them: fail closed).
pub const MAX_WATCHED: usize = 1024;

/// How the operator serves proxies (`--discovery-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiscoveryMode {
    /// Every proxy gets every Service and endpoint set (the behaviour before on-demand
    /// discovery); `Subscribe.on_demand` is ignored.
    #[default]
    PushAll,
    /// Proxies that declare `Subscribe.on_demand` get only what they watch; the others get
    /// everything.
    OnDemand,
}

/// Whether `name` may be watched: `outbound:<svc>.<ns>` or `ip:<address>` (canonical).
pub fn valid_watch_name(name: &str) -> bool {
    names::parse_ip_name(name).is_some()
        || matches!(ResourceName::parse(name), Ok(ResourceName::Outbound { .. }))
}

/// The watched names of one stream (bounded by [`MAX_WATCHED`]).
#[derive(Debug, Default)]
pub struct Watched {
    names: BTreeSet<String>,
    /// Names refused (invalid or over the limit), for the registry.
    pub ignored: u64,
}

impl Watched {
    /// Adds `names`; returns whether the set changed.
    pub fn watch<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) -> bool {
        let mut changed = false;
        for name in names {
            if self.names.contains(name) {
                continue;
            }
            if !valid_watch_name(name) || self.names.len() >= MAX_WATCHED {
                self.ignored += 1;
                continue;
            }
            self.names.insert(name.clone());
            changed = true;
        }
        changed
    }

    /// Removes `names`; returns whether the set changed.
    pub fn unwatch<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) -> bool {
        let mut changed = false;
        for name in names {
            changed |= self.names.remove(name);
        }
        changed
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One resource of a view.
#[derive(Clone, Debug)]
pub enum Item {
    /// The pod's inbound resource or a shared outbound/endpoints resource.
    Resource(Arc<VersionedResource>),
    /// An `ip:<address>` resolution, encoded for this stream.
    Ip {
        version: String,
        proto: Box<v1::Resource>,
    },
}

impl Item {
    pub fn version(&self) -> &str {
        match self {
            Item::Resource(r) => &r.version,
            Item::Ip { version, .. } => version,
        }
    }
}

/// What an on-demand proxy holds for one snapshot.
#[derive(Debug)]
pub struct View {
    pub items: BTreeMap<String, Item>,
    /// Hash of every `(name, version)` pair (16 hex characters).
    pub version: String,
    /// What the view was built from.
    pub deps: Deps,
}

/// What a view depends on besides the pod's inbound resource: a snapshot that changes none of
/// these leaves the view as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deps {
    /// Shared resource names looked up (found or not).
    names: Box<[String]>,
    /// Addresses resolved (`ip:` watches).
    ips: Box<[IpAddr]>,
}

impl Deps {
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// Whether `changes` (from the snapshot the view was built from to the next one) may change
    /// the view of proxy `key`.
    pub fn affected_by(&self, changes: &SnapshotChanges, key: &ProxyKey) -> bool {
        changes.all
            || changes.proxies.contains(key)
            || self.names.iter().any(|n| changes.names.contains(n))
            || self.ips.iter().any(|a| changes.addresses.contains(a))
    }
}

impl View {
    /// Name to version.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.items
            .iter()
            .map(|(n, i)| (n.clone(), i.version().to_string()))
            .collect()
    }
}

/// The view of `proxy` for the names in `watched`.
pub fn view(proxy: &ProxyConfig, watched: &Watched, ips: &IpIndexCache) -> View {
    let mut items = BTreeMap::new();
    items.insert(
        proxy.inbound.name.clone(),
        Item::Resource(proxy.inbound.clone()),
    );
    let shared = &proxy.shared;
    let namespace = &proxy.proxy.namespace;
    let mut deps = BTreeSet::new();
    let mut dep_ips = Vec::new();
    for name in &watched.names {
        if let Some(addr) = names::parse_ip_name(name) {
            dep_ips.push(addr);
            let service = match ips.lookup(shared, addr) {
                Some(Resolution::Service(svc)) => {
                    add_service(&mut items, &mut deps, shared, &svc);
                    svc
                }
                // A meshed pod addressed by its IP (a headless Service's answer, a StatefulSet
                // pod's name): the set that holds it tells the proxy its identity, so the
                // connection is tunnelled over mTLS to that pod, not load-balanced.
                Some(Resolution::Pod(set)) => {
                    deps.insert(set.clone());
                    if let Some(r) = shared.get(&set) {
                        items.insert(r.name.clone(), Item::Resource(r.clone()));
                    }
                    String::new()
                }
                None => String::new(),
            };
            let mut h = Sha256::new();
            h.update(service.as_bytes());
            let version = hex::encode(&h.finalize()[..8]);
            let proto = Box::new(v1::Resource {
                name: name.clone(),
                version: version.clone(),
                kind: Some(v1::resource::Kind::Ip(v1::IpResolution { service })),
            });
            items.insert(name.clone(), Item::Ip { version, proto });
        } else {
            // A consumer variant appearing or going is recorded under `name` too.
            deps.insert(name.clone());
            if let Some(found) = outbound(shared, name, &consumer_variant(name, namespace)) {
                add_service(&mut items, &mut deps, shared, &found);
            }
        }
    }
    let mut h = Sha256::new();
    for (name, item) in &items {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(item.version().as_bytes());
        h.update([0]);
    }
    View {
        items,
        version: hex::encode(&h.finalize()[..8]),
        deps: Deps {
            names: deps.into_iter().collect(),
            ips: dep_ips.into(),
        },
    }
}

/// The name of the consumer variant of `outbound:<svc>.<ns>` for proxies in `namespace`.
fn consumer_variant(name: &str, namespace: &str) -> String {
    format!("{name}@{namespace}")
}

/// The name of the resource `outbound:<svc>.<ns>` stands for in `shared`: its consumer
/// `variant` (for the proxy's namespace) when one is in force, else itself.
fn outbound(shared: &SharedResources, name: &str, variant: &str) -> Option<String> {
    if shared.get(variant).is_some() {
        Some(variant.to_string())
    } else {
        shared.get(name).map(|r| r.name.clone())
    }
}

/// Adds the outbound resource `name` and every endpoint set its routes name (recording every
/// name looked up in `deps`).
fn add_service(
    items: &mut BTreeMap<String, Item>,
    deps: &mut BTreeSet<String>,
    shared: &SharedResources,
    name: &str,
) {
    deps.insert(name.to_string());
    let Some(r) = shared.get(name) else { return };
    if let ResourceKind::Outbound(svc) = &r.resource {
        for port in &svc.ports {
            for route in &port.routes {
                for backend in &route.backends {
                    if backend.endpoint_set.is_empty() || items.contains_key(&backend.endpoint_set)
                    {
                        continue;
                    }
                    deps.insert(backend.endpoint_set.clone());
                    if let Some(set) = shared.get(&backend.endpoint_set) {
                        items.insert(set.name.clone(), Item::Resource(set.clone()));
                    }
                }
            }
        }
    }
    items.insert(r.name.clone(), Item::Resource(r.clone()));
}

/// What an address is, for an `ip:` watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A Service's ClusterIP: the Service's outbound resource name.
    Service(String),
    /// A meshed pod's IP that is no ClusterIP: the name of an endpoint set that holds it (the
    /// first in name order).
    Pod(String),
}

type IpIndex = HashMap<IpAddr, Resolution>;

/// Address to [`Resolution`] (ClusterIPs, then meshed endpoints' IPs), built once per set of
/// shared resources (per snapshot, and per consumer namespace when consumer routes are in
/// force) by the first stream that resolves an address, and reused by the others.
#[derive(Default)]
pub struct IpIndexCache {
    inner: Mutex<Vec<(Arc<SharedResources>, Arc<IpIndex>)>>,
}

/// Indexes kept (the latest snapshot's shared set and a few consumer variants).
const KEEP_INDEXES: usize = 4;

impl IpIndexCache {
    /// What `addr` is in `shared`: a Service's ClusterIP first, else a meshed pod's IP.
    pub fn lookup(&self, shared: &Arc<SharedResources>, addr: IpAddr) -> Option<Resolution> {
        self.index(shared).get(&addr).cloned()
    }

    fn index(&self, shared: &Arc<SharedResources>) -> Arc<IpIndex> {
        // The cache holds no invariant a panicking holder could break.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, index)) = inner.iter().find(|(s, _)| Arc::ptr_eq(s, shared)) {
            return index.clone();
        }
        let mut index = IpIndex::new();
        for r in shared.iter() {
            match &r.resource {
                // A ClusterIP wins over a pod IP (they never overlap in a valid cluster).
                ResourceKind::Outbound(svc) => {
                    for ip in &svc.cluster_ips {
                        index.insert(*ip, Resolution::Service(r.name.clone()));
                    }
                }
                ResourceKind::Endpoints(set) => {
                    for e in set.meshed() {
                        index
                            .entry(e.ip)
                            .or_insert_with(|| Resolution::Pod(r.name.clone()));
                    }
                }
                ResourceKind::Inbound(_) => {}
            }
        }
        let index = Arc::new(index);
        if inner.len() >= KEEP_INDEXES {
            inner.remove(0);
        }
        inner.push((shared.clone(), index.clone()));
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, CompileOptions, Compiled, ProxyKey};
    use crate::model::manifests::parse_manifests;
    use crate::model::Model;

    /// Services `web` (10.96.0.10) and `other` (10.96.0.11), one pod each; `other`'s pod IP
    /// is `other_ip`.
    fn snapshot(other_ip: &str) -> Compiled {
        let mut text = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app, namespace: demo}\n",
        );
        for (i, (app, ip)) in [("web", "127.0.0.10"), ("other", other_ip)]
            .iter()
            .enumerate()
        {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {app}-0\n  namespace: demo\n  labels: {{app: {app}, weft.io/proxy-version: \"0.1.0\"}}\nspec:\n  serviceAccountName: app\n  containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]\nstatus:\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {app}, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.{n}\n  selector: {{app: {app}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {app}, namespace: demo}}\nsubsets:\n- ports: [{{name: http, port: 8080}}]\n  addresses: [{{ip: {ip}}}]\n",
                n = 10 + i
            ));
        }
        let (objects, _) = parse_manifests(&text, false).unwrap();
        compile(&Model::from_objects(objects), &CompileOptions::default())
    }

    fn names(view: &View) -> Vec<&str> {
        view.items.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_view_holds_inbound_and_the_watched_services_only() {
        let before = snapshot("127.0.0.20");
        let key = ProxyKey::new("demo", "web-0");
        let proxy = before.proxy(&key).unwrap();
        let ips = IpIndexCache::default();
        let mut w = Watched::default();
        assert_eq!(names(&view(&proxy, &w, &ips)), vec!["inbound"]);
        w.watch(&[
            "outbound:web.demo".to_string(),
            "outbound:nosuch.demo".to_string(),
        ]);
        let v1 = view(&proxy, &w, &ips);
        assert_eq!(
            names(&v1),
            vec!["endpoints:web.demo:80", "inbound", "outbound:web.demo"]
        );

        // A change to a Service it does not watch leaves the view's version as it was.
        let after = snapshot("127.0.0.21");
        let moved = after.proxy(&key).unwrap();
        assert_ne!(proxy.version, moved.version);
        assert_eq!(view(&moved, &w, &ips).version, v1.version);

        // An address: its resolution plus the Service that has it; another address resolves
        // to nothing (and is still answered).
        let mut w = Watched::default();
        w.watch(&["ip:10.96.0.11".to_string(), "ip:192.0.2.1".to_string()]);
        let v = view(&moved, &w, &ips);
        assert_eq!(
            names(&v),
            vec![
                "endpoints:other.demo:80",
                "inbound",
                "ip:10.96.0.11",
                "ip:192.0.2.1",
                "outbound:other.demo"
            ]
        );
        let service = |n: &str| match &v.items[n] {
            Item::Ip { proto, .. } => match &proto.kind {
                Some(v1::resource::Kind::Ip(r)) => r.service.clone(),
                _ => panic!("{n}: not an IpResolution"),
            },
            _ => panic!("{n}: not an ip item"),
        };
        assert_eq!(service("ip:10.96.0.11"), "outbound:other.demo");
        assert_eq!(service("ip:192.0.2.1"), "");

        // A meshed pod's IP: no Service is its, but the endpoint set that holds it comes with
        // the resolution (its identity, for the tunnel); the Service itself does not.
        let mut w = Watched::default();
        w.watch(&["ip:127.0.0.21".to_string()]);
        let v = view(&moved, &w, &ips);
        assert_eq!(
            names(&v),
            vec!["endpoints:other.demo:80", "inbound", "ip:127.0.0.21"]
        );
        match &v.items["ip:127.0.0.21"] {
            Item::Ip { proto, .. } => assert!(
                matches!(&proto.kind, Some(v1::resource::Kind::Ip(r)) if r.service.is_empty())
            ),
            _ => panic!("not an ip item"),
        }
        // In the snapshot where the pod had another address, this one is nobody's.
        let gone = view(&proxy, &w, &ips);
        assert_eq!(names(&gone), vec!["inbound", "ip:127.0.0.21"]);
    }

    #[test]
    fn watch_names_are_validated_and_bounded() {
        let mut w = Watched::default();
        let names: Vec<String> = vec![
            "outbound:web.demo".into(),
            "ip:10.96.0.10".into(),
            "endpoints:web.demo:80".into(),
            "inbound".into(),
            "ip:10.96.0.010".into(),
        ];
        assert!(w.watch(&names));
        assert_eq!(w.len(), 2);
        assert_eq!(w.ignored, 3);
        assert!(!w.watch(&names[..1]));
        let many: Vec<String> = (0..MAX_WATCHED + 10)
            .map(|i| format!("outbound:s{i}.demo"))
            .collect();
        w.watch(&many);
        assert_eq!(w.len(), MAX_WATCHED);
        assert!(w.unwatch(&names[..1]));
        assert_eq!(w.len(), MAX_WATCHED - 1);
    }
}
