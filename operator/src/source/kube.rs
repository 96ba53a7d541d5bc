//! Kubernetes sources: one watcher per input kind, feeding batches of [`Change`]s.
//!
//! * core v1 Namespaces, ServiceAccounts, Pods, Services;
//! * `discovery.k8s.io/v1` EndpointSlices where served, else core v1 Endpoints;
//! * every SMI kind in the version the API server prefers (its storage version, v1alpha4 or
//!   v1alpha3), watched as [`DynamicObject`] and parsed with `weft_smi`, so one code path reads
//!   any version.
//!
//! Watchers back off on errors and re-list after `410 Gone` (kube-runtime does both); each
//! re-list is turned into one batch that also removes objects that disappeared meanwhile.

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::Change;
use crate::model::{ClusterObject, ObjectKey};
use crate::runtime::Shutdown;

/// What a Kubernetes watcher reports to the runtime.
#[derive(Debug)]
pub enum SourceEvent {
    /// Changes to apply together, and when the first of them was observed.
    Changes {
        changes: Vec<Change>,
        observed_at: Instant,
    },
    /// The named watcher finished its first complete listing.
    Synced(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// Watcher metrics (labelled by resource kind only).
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    pub watch_errors: Family<ResourceLabels, Counter>,
    pub events: Family<ResourceLabels, Counter>,
    pub invalid_objects: Family<ResourceLabels, Counter>,
}

impl SourceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "watch_errors",
            "Errors of Kubernetes watches (each is retried with backoff)",
            self.watch_errors.clone(),
        );
        registry.register(
            "watch_events",
            "Objects received from Kubernetes watches",
            self.events.clone(),
        );
        registry.register(
            "invalid_objects",
            "Objects from Kubernetes that weft could not read (skipped)",
            self.invalid_objects.clone(),
        );
    }
}

/// One resource to watch.
#[derive(Clone, Debug)]
pub enum Watched {
    Namespaces,
    ServiceAccounts,
    Pods,
    Services,
    EndpointSlices,
    Endpoints,
    /// An SMI kind at the API server's preferred version.
    Smi(ApiResource),
}

impl Watched {
    pub fn name(&self) -> String {
        match self {
            Watched::Namespaces => "namespaces".into(),
            Watched::ServiceAccounts => "serviceaccounts".into(),
            Watched::Pods => "pods".into(),
            Watched::Services => "services".into(),
            Watched::EndpointSlices => "endpointslices".into(),
            Watched::Endpoints => "endpoints".into(),
            Watched::Smi(ar) => format!("{}.{}", ar.plural, ar.group),
        }
    }
}

/// The SMI kinds weft reads, by API group.
const SMI_KINDS: &[(&str, &str)] = &[
    ("split.smi-spec.io", "TrafficSplit"),
    ("access.smi-spec.io", "TrafficTarget"),
    ("specs.smi-spec.io", "HTTPRouteGroup"),
    ("specs.smi-spec.io", "TCPRoute"),
    ("specs.smi-spec.io", "UDPRoute"),
];

/// Decides what to watch by asking the API server what it serves: EndpointSlice v1 or core
/// Endpoints, and the preferred version of each SMI kind (kinds whose CRDs are missing are
/// skipped with a warning).
///
/// An unreachable or unavailable API server (connection errors, 5xx, 429) is not taken for
/// "not served": discovery waits and retries (backoff up to 10 s) until it gets an answer, so an
/// operator started while the API server is down does not come up blind to the SMI kinds.
pub async fn discover(client: &Client) -> Vec<Watched> {
    let mut out = vec![
        Watched::Namespaces,
        Watched::ServiceAccounts,
        Watched::Pods,
        Watched::Services,
    ];
    let slices_v1 = with_retry("discovery.k8s.io/v1", || {
        client.list_api_group_resources("discovery.k8s.io/v1")
    })
    .await
    .map(|l| l.resources.iter().any(|r| r.name == "endpointslices"))
    .unwrap_or(false);
    if slices_v1 {
        out.push(Watched::EndpointSlices);
    } else {
        tracing::info!("discovery.k8s.io/v1 EndpointSlice not served; watching core v1 Endpoints");
        out.push(Watched::Endpoints);
    }
    for (group, kind) in SMI_KINDS {
        match with_retry(group, || kube::discovery::group(client, group)).await {
            Ok(g) => match g.recommended_kind(kind) {
                Some((ar, _)) => out.push(Watched::Smi(ar)),
                None => tracing::warn!(group, kind, "SMI kind not served; is the CRD installed?"),
            },
            Err(e) => {
                tracing::warn!(group, error = %e, "SMI API group not served; is the CRD installed?")
            }
        }
    }
    out
}

/// Whether a discovery error says nothing about what is served (the server did not answer, or
/// answered that it is unavailable).
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        _ => true,
    }
}

/// Runs `call` until it succeeds or fails with a definite answer (see [`is_transient`]).
async fn with_retry<T, F, Fut>(what: &str, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        match call().await {
            Err(e) if is_transient(&e) => {
                tracing::warn!(api = what, error = %e, retry_in = ?delay, "API server unreachable during discovery; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// Runs a watcher for each of `watched` until shutdown, sending batches to `tx`.
pub async fn run(
    client: Client,
    watched: Vec<Watched>,
    tx: mpsc::Sender<SourceEvent>,
    metrics: SourceMetrics,
    shutdown: Shutdown,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in watched {
        let name = w.name();
        let tx = tx.clone();
        let metrics = metrics.clone();
        let client = client.clone();
        match w {
            Watched::Namespaces => tasks.spawn(watch_typed::<core::Namespace>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::ServiceAccounts => tasks.spawn(watch_typed::<core::ServiceAccount>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::Pods => tasks.spawn(watch_typed::<core::Pod>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::Services => tasks.spawn(watch_typed::<core::Service>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::EndpointSlices => tasks.spawn(watch_typed::<
                k8s_openapi::api::discovery::v1::EndpointSlice,
            >(
                Api::all(client), name, tx, metrics
            )),
            Watched::Endpoints => tasks.spawn(watch_typed::<core::Endpoints>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::Smi(ar) => {
                let api: Api<DynamicObject> = Api::all_with(client, &ar);
                tasks.spawn(watch_typed::<DynamicObject>(api, name, tx, metrics))
            }
        };
    }
    let mut stop = shutdown;
    stop.triggered().await;
    tasks.shutdown().await;
}

/// Watches one resource: re-lists become one batch (with removals of vanished objects); later
/// events are sent one by one (the runtime coalesces what is queued).
async fn watch_typed<K>(
    api: Api<K>,
    name: String,
    tx: mpsc::Sender<SourceEvent>,
    metrics: SourceMetrics,
) where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    let labels = ResourceLabels {
        resource: name.clone(),
    };
    let mut state = WatchState::default();
    let mut synced = false;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                metrics.watch_errors.get_or_create(&labels).inc();
                tracing::warn!(resource = %name, error = %e, "watch error; retrying with backoff");
                continue;
            }
        };
        let observed_at = Instant::now();
        let changes = match event {
            Event::Init => {
                state.relist.clear();
                Vec::new()
            }
            Event::InitApply(obj) => {
                metrics.events.get_or_create(&labels).inc();
                if let Some(o) = parse(&obj, &name, &metrics, &labels) {
                    state.relist.push(o);
                }
                Vec::new()
            }
            Event::InitDone => state.finish_relist(),
            Event::Apply(obj) => {
                metrics.events.get_or_create(&labels).inc();
                match parse(&obj, &name, &metrics, &labels) {
                    Some(o) => state.apply(o),
                    None => Vec::new(),
                }
            }
            Event::Delete(obj) => {
                metrics.events.get_or_create(&labels).inc();
                let id = (
                    obj.meta().namespace.clone().unwrap_or_default(),
                    obj.meta().name.clone().unwrap_or_default(),
                );
                state.delete(&id)
            }
        };
        let done_sync = state.just_synced;
        if !changes.is_empty()
            && tx
                .send(SourceEvent::Changes {
                    changes,
                    observed_at,
                })
                .await
                .is_err()
        {
            return;
        }
        if done_sync {
            state.just_synced = false;
            if !synced {
                synced = true;
                if tx.send(SourceEvent::Synced(name.clone())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Keys of what a watcher has reported, to turn re-lists into removals.
#[derive(Default)]
struct WatchState {
    known: HashMap<(String, String), ObjectKey>,
    relist: Vec<ClusterObject>,
    just_synced: bool,
}

impl WatchState {
    fn apply(&mut self, o: ClusterObject) -> Vec<Change> {
        let key = o.key();
        self.known
            .insert((key.namespace.clone(), key.name.clone()), key);
        vec![Change::Upsert(o)]
    }

    fn delete(&mut self, id: &(String, String)) -> Vec<Change> {
        match self.known.remove(id) {
            Some(key) => vec![Change::Remove(key)],
            None => Vec::new(),
        }
    }

    fn finish_relist(&mut self) -> Vec<Change> {
        self.just_synced = true;
        let mut next = HashMap::new();
        let mut changes = Vec::new();
        for o in self.relist.drain(..) {
            let key = o.key();
            next.insert((key.namespace.clone(), key.name.clone()), key);
            changes.push(Change::Upsert(o));
        }
        for (id, key) in self.known.drain() {
            if !next.contains_key(&id) {
                changes.push(Change::Remove(key));
            }
        }
        self.known = next;
        changes
    }
}

fn parse<K: Serialize>(
    obj: &K,
    name: &str,
    metrics: &SourceMetrics,
    labels: &ResourceLabels,
) -> Option<ClusterObject> {
    let value = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(resource = %name, error = %e, "cannot encode object");
            return None;
        }
    };
    match ClusterObject::from_value(&value) {
        Ok(o) => Some(o),
        Err(e) => {
            metrics.invalid_objects.get_or_create(labels).inc();
            let ns = value
                .pointer("/metadata/namespace")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let n = value
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            tracing::warn!(resource = %name, object = %format!("{ns}/{n}"), error = %e, "skipping object weft cannot read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn ns(name: &str) -> ClusterObject {
        ClusterObject::from_value(&serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap()
    }

    #[test]
    fn relist_removes_what_vanished() {
        let mut s = WatchState::default();
        s.apply(ns("a"));
        s.apply(ns("b"));
        s.relist.push(ns("b"));
        s.relist.push(ns("c"));
        let changes = s.finish_relist();
        assert!(changes.contains(&Change::Remove(ObjectKey::new(Kind::Namespace, "", "a"))));
        assert!(changes.contains(&Change::Upsert(ns("c"))));
        assert_eq!(s.known.len(), 2);
        assert_eq!(
            s.delete(&(String::new(), "c".into())),
            vec![Change::Remove(ObjectKey::new(Kind::Namespace, "", "c"))]
        );
        assert!(s.delete(&(String::new(), "zzz".into())).is_empty());
    }
}
