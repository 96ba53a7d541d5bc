//! The watch adapter: one kube-runtime watcher per resource, its objects converted to model
//! objects by the model's typed constructors ([`Reflect`]), re-lists turned into one batch that
//! also removes what vanished.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::metrics::{ResourceLabels, SourceMetrics};
use crate::model::{ClusterObject, ModelError, ObjectKey};
use crate::source::{Change, SourceEvent, SourceTx};

/// What SMI kinds' watchers and the CRD watcher tell the [`SmiSupervisor`](super::crds::SmiSupervisor).
#[derive(Debug)]
pub(super) enum Note {
    /// An SMI group's CRD changed (or the CRD watch re-listed): what is served may have changed.
    Crds,
    /// An SMI watcher got `404 Not Found`: its kind may not be served anymore.
    NotFound,
}

/// What a watcher reported and has not removed: `(namespace, name)` → key.
pub(super) type Known = HashMap<(String, String), ObjectKey>;

/// Extra controls of a watcher (SMI kinds, which the supervisor replaces and stops).
#[derive(Default)]
pub(super) struct WatchCtl {
    /// Objects reported by a predecessor: removed by the first listing if not listed.
    pub(super) known: Known,
    /// Stops the watcher, which then returns what it reported.
    pub(super) stop: Option<oneshot::Receiver<()>>,
    /// Where to note that the resource answers 404.
    pub(super) notes: Option<mpsc::Sender<Note>>,
}

/// The HTTP status of a watch error the API server answered with.
fn watch_error_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// Whether a watch error says the resource is not served (404).
pub(super) fn is_not_found(e: &watcher::Error) -> bool {
    watch_error_code(e) == Some(404)
}

pub(super) fn is_forbidden(e: &watcher::Error) -> bool {
    watch_error_code(e) == Some(403)
}

/// Watches one resource until `tx` closes, sending its objects to the reconcile loop as typed
/// model changes: re-lists become one batch (with removals of vanished objects); later events
/// are sent one by one (the loop coalesces what is queued). The first complete listing is
/// reported as [`SourceEvent::Synced`] with `name`.
///
/// An object weft cannot read is counted (`invalid_objects`), logged and skipped: the model
/// keeps the last good version of it, also across re-lists.
pub async fn reflect<K: Reflect>(api: Api<K>, name: String, tx: SourceTx, metrics: SourceMetrics) {
    reflect_with(api, name, tx, metrics, WatchCtl::default()).await;
}

/// [`reflect`] with the supervisor's controls; returns what it reported and did not remove
/// when stopped (see [`WatchCtl`]) or when `tx` closes.
pub(super) async fn reflect_with<K: Reflect>(
    api: Api<K>,
    name: String,
    tx: SourceTx,
    metrics: SourceMetrics,
    ctl: WatchCtl,
) -> Known {
    let labels = ResourceLabels {
        resource: name.clone(),
    };
    let WatchCtl {
        known,
        mut stop,
        notes,
    } = ctl;
    let mut state = WatchState {
        known,
        ..WatchState::default()
    };
    let mut synced = false;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let item = match stop.as_mut() {
            Some(stop) => tokio::select! {
                biased;
                _ = stop => return state.known,
                item = stream.next() => item,
            },
            None => stream.next().await,
        };
        let Some(item) = item else {
            return state.known;
        };
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                metrics.watch_errors.get_or_create(&labels).inc();
                tracing::warn!(resource = %name, error = %e, "watch error; retrying with backoff");
                if let Some(notes) = &notes {
                    if is_not_found(&e) {
                        // A full queue already holds a note that makes the supervisor look.
                        let _ = notes.try_send(Note::NotFound);
                    }
                }
                continue;
            }
        };
        let observed_at = Instant::now();
        let changes = match event {
            Event::Init => {
                state.relist.clear();
                state.unreadable.clear();
                Vec::new()
            }
            Event::InitApply(obj) => {
                metrics.events.get_or_create(&labels).inc();
                match read(&obj, &name, &metrics, &labels) {
                    Some(o) => state.relist.push(o),
                    None => {
                        state.unreadable.insert(id_of(&obj));
                    }
                }
                Vec::new()
            }
            Event::InitDone => state.finish_relist(),
            Event::Apply(obj) => {
                metrics.events.get_or_create(&labels).inc();
                match read(&obj, &name, &metrics, &labels) {
                    Some(o) => state.apply(o),
                    None => Vec::new(),
                }
            }
            Event::Delete(obj) => {
                metrics.events.get_or_create(&labels).inc();
                state.delete(&id_of(&obj))
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
            return state.known;
        }
        if done_sync {
            state.just_synced = false;
            if !synced {
                synced = true;
                if tx.send(SourceEvent::Synced(name.clone())).await.is_err() {
                    return state.known;
                }
            }
        }
    }
}

/// Keys of what a watcher has reported, to turn re-lists into removals.
#[derive(Default)]
struct WatchState {
    known: Known,
    relist: Vec<ClusterObject>,
    /// Objects of the re-list in progress that weft cannot read: what was reported of them
    /// stays in force (a bad update never removes the last good version).
    unreadable: HashSet<(String, String)>,
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
        let unreadable = std::mem::take(&mut self.unreadable);
        for (id, key) in self.known.drain() {
            if next.contains_key(&id) {
                continue;
            }
            if unreadable.contains(&id) {
                next.insert(id, key);
            } else {
                changes.push(Change::Remove(key));
            }
        }
        self.known = next;
        changes
    }
}

/// `(namespace, name)` of a watched object.
fn id_of<K: Resource>(obj: &K) -> (String, String) {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// The model object of a watched object, or `None` (counted and logged) if weft cannot read it.
fn read<K: Reflect>(
    obj: &K,
    name: &str,
    metrics: &SourceMetrics,
    labels: &ResourceLabels,
) -> Option<ClusterObject> {
    match obj.to_model() {
        Ok(o) => Some(o),
        Err(e) => {
            metrics.invalid_objects.get_or_create(labels).inc();
            let (ns, n) = id_of(obj);
            tracing::warn!(resource = %name, object = %format!("{ns}/{n}"), error = %e, "skipping object weft cannot read; its last good version stays in force");
            None
        }
    }
}

/// A Kubernetes object the operator watches, read into the model by the model's own typed
/// constructors: the watch's typed objects go straight in, never re-encoded to JSON and parsed
/// again.
pub trait Reflect: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    fn to_model(&self) -> Result<ClusterObject, ModelError>;
}

impl Reflect for core::Pod {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        crate::model::from_k8s_pod(self).map(ClusterObject::Pod)
    }
}

impl Reflect for core::Service {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        crate::model::from_k8s_service(self).map(ClusterObject::Service)
    }
}

impl Reflect for discovery::EndpointSlice {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        crate::model::from_k8s_endpoint_slice(self).map(ClusterObject::Endpoints)
    }
}

impl Reflect for core::Endpoints {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        crate::model::from_k8s_endpoints(self).map(ClusterObject::Endpoints)
    }
}

impl Reflect for core::Namespace {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        crate::model::from_k8s_namespace(self).map(ClusterObject::Namespace)
    }
}

impl Reflect for core::ServiceAccount {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        crate::model::from_k8s_service_account(self).map(ClusterObject::ServiceAccount)
    }
}

impl Reflect for gateway_api::httproutes::HttpRoute {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        crate::model::from_gateway_http_route(self).map(ClusterObject::HttpRoute)
    }
}

/// A GRPCRoute, held by the model in the HTTPRoute form (`weft_core::model::grpc`).
impl Reflect for gateway_api::grpcroutes::GrpcRoute {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        crate::model::from_gateway_grpc_route(self).map(ClusterObject::HttpRoute)
    }
}

/// An SMI object of any served version, watched untyped: its body already is JSON, read by the
/// tolerant `weft_smi` parser (the one reader of every version) without a round trip.
impl Reflect for DynamicObject {
    fn to_model(&self) -> Result<ClusterObject, ModelError> {
        let types = self.types.as_ref().ok_or(ModelError::MissingApiVersion)?;
        let mut object = match &self.data {
            serde_json::Value::Object(fields) => fields.clone(),
            _ => serde_json::Map::new(),
        };
        object.insert("apiVersion".into(), types.api_version.clone().into());
        object.insert("kind".into(), types.kind.clone().into());
        let metadata =
            serde_json::to_value(&self.metadata).map_err(|source| ModelError::Invalid {
                kind: types.kind.clone(),
                source,
            })?;
        object.insert("metadata".into(), metadata);
        ClusterObject::from_value(&serde_json::Value::Object(object))
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

    #[test]
    fn a_successor_removes_what_its_predecessor_reported_and_it_does_not_list() {
        let mut old = WatchState::default();
        old.apply(ns("a"));
        old.apply(ns("b"));
        let mut s = WatchState {
            known: old.known,
            ..WatchState::default()
        };
        s.relist.push(ns("b"));
        let changes = s.finish_relist();
        assert_eq!(
            changes,
            vec![
                Change::Upsert(ns("b")),
                Change::Remove(ObjectKey::new(Kind::Namespace, "", "a"))
            ]
        );
    }

    #[test]
    fn a_relist_keeps_what_it_cannot_read_in_force() {
        let mut s = WatchState::default();
        s.apply(ns("a"));
        s.apply(ns("b"));
        // a is re-listed unreadable, b is gone.
        s.unreadable.insert((String::new(), "a".into()));
        let changes = s.finish_relist();
        assert_eq!(
            changes,
            vec![Change::Remove(ObjectKey::new(Kind::Namespace, "", "b"))]
        );
        assert!(s.known.contains_key(&(String::new(), "a".into())));
        assert!(s.unreadable.is_empty());
    }
}
