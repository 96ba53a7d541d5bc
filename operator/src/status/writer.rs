//! Writes status conditions to the Kubernetes API (server-side apply on the status subresource,
//! field manager `weft`) and publishes Events for problems ([`super::events`]: by the object's
//! uid, deduplicated across restarts). Only the leader writes ([`run`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use tokio::sync::watch;
use weft_common::Backoff;

use crate::shutdown::Shutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use weft_smi::hub::{Condition, SmiStatus};

use super::events::{self, EventPublisher, Published};
use super::{merge_parents, ObjectRef, ObjectStatus, ParentStatus, CONTROLLER_NAME};

/// Field manager of every write weft makes.
pub const FIELD_MANAGER: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{object}: reading current status: {source}")]
    Read { object: String, source: kube::Error },
    #[error("{object}: applying status: {source}")]
    Apply { object: String, source: kube::Error },
    #[error("malformed apiVersion {0:?}")]
    ApiVersion(String),
    #[error("{object}: encoding status: {message}")]
    Encode { object: String, message: String },
    #[error("{api_version} {kind} is not an SMI kind weft writes status to")]
    NotSmi { api_version: String, kind: String },
    #[error("{object}: publishing Event {reason}: {source}")]
    Event {
        object: String,
        reason: String,
        source: kube::Error,
    },
}

/// Status writer metrics.
#[derive(Clone, Debug, Default)]
pub struct StatusMetrics {
    pub writes: Counter,
    pub write_errors: Counter,
    pub events: Counter,
}

impl StatusMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "status_writes",
            "Status subresource patches applied",
            self.writes.clone(),
        );
        registry.register(
            "status_write_errors",
            "Failed status reads or patches",
            self.write_errors.clone(),
        );
        registry.register("events", "Kubernetes Events published", self.events.clone());
    }
}

/// Writes statuses and Events to the Kubernetes API.
pub struct StatusWriter {
    client: Client,
    events: EventPublisher,
    metrics: StatusMetrics,
    /// The problems reported as Events per live object (with the uid they were reported for),
    /// to publish each once while it lasts; bounded by the live objects ([`Self::retain`]).
    reported: HashMap<ObjectRef, (String, BTreeSet<events::Problem>)>,
}

/// The `ApiResource` of an SMI kind in a given apiVersion: its plural is the one the `weft_smi`
/// kind table declares ([`weft_smi::kinds`]), never guessed; a kind or
/// group weft does not read is refused.
pub fn api_resource(api_version: &str, kind: &str) -> Result<ApiResource, StatusError> {
    let (group, version) = api_version
        .split_once('/')
        .ok_or_else(|| StatusError::ApiVersion(api_version.to_string()))?;
    if group == weft_core::model::gateway::GROUP {
        let plural = match kind {
            "HTTPRoute" => Some("httproutes"),
            "GRPCRoute" => Some("grpcroutes"),
            _ => None,
        };
        if let Some(plural) = plural {
            let gvk = GroupVersionKind::gvk(group, version, kind);
            return Ok(ApiResource::from_gvk_with_plural(&gvk, plural));
        }
    }
    let smi = weft_smi::kinds::by_kind(Some(group), kind).ok_or_else(|| StatusError::NotSmi {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    })?;
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok(ApiResource::from_gvk_with_plural(&gvk, smi.plural))
}

/// Merges the `desired` conditions into the `current` status with the one condition-merge rule
/// ([`weft_smi::status::merge_conditions`]: `lastTransitionTime` is kept while a condition's
/// status does not change). Conditions weft no longer wants are dropped; the result lists
/// `desired`'s types in its order. Returns the merged status and whether it differs from
/// `current`.
pub fn merge(current: &SmiStatus, desired: &[Condition], now: &str) -> (SmiStatus, bool) {
    weft_smi::status::merge_conditions(current, desired, now)
}

impl StatusWriter {
    /// `instance` names this replica (e.g. its pod name) in Events.
    pub fn new(client: Client, instance: Option<String>, metrics: StatusMetrics) -> Self {
        StatusWriter {
            events: EventPublisher::new(client.clone(), instance),
            client,
            metrics,
            reported: HashMap::new(),
        }
    }

    /// Writes each status whose conditions differ from the object's current status (ignoring
    /// `lastTransitionTime`, which is kept when a condition's status did not change). Errors are
    /// counted and returned with the object they are about; the remaining objects are still
    /// written.
    pub async fn write(&mut self, statuses: &[ObjectStatus]) -> Vec<(ObjectRef, StatusError)> {
        let mut errors = Vec::new();
        for status in statuses {
            let mut regarding = None;
            let written = if status.object.group.is_empty() {
                self.read_core(status, &mut regarding).await
            } else {
                self.write_one(status, &mut regarding).await
            };
            if let Err(e) = written {
                self.metrics.write_errors.inc();
                tracing::warn!(error = %e, "status write failed");
                errors.push((status.object.clone(), e));
            }
            // Events need the object's uid: published once it was read, even if the status
            // patch failed (it is retried); not for an object that is gone.
            if let Some(regarding) = regarding {
                if let Err(e) = self.publish_events(status, &regarding).await {
                    tracing::warn!(error = %e, "publishing an Event failed");
                    errors.push((status.object.clone(), e));
                }
            }
        }
        errors
    }

    /// A core object (Service, Namespace) has no status of weft's: only its reference is read,
    /// for the Events about it ([`crate::source::reconcile::core_problems`]). A Namespace is
    /// cluster-scoped: its Events go to the `default` namespace, as Kubernetes expects.
    async fn read_core(
        &self,
        status: &ObjectStatus,
        regarding: &mut Option<ObjectReference>,
    ) -> Result<(), StatusError> {
        use k8s_openapi::api::core::v1::{Namespace, Service};
        let name = &status.object.name;
        let read = match status.object.kind.as_str() {
            "Service" => Api::<Service>::namespaced(self.client.clone(), &status.object.namespace)
                .get_metadata(name)
                .await
                .map(|o| o.metadata),
            "Namespace" => Api::<Namespace>::all(self.client.clone())
                .get_metadata(name)
                .await
                .map(|o| o.metadata),
            _ => {
                return Err(StatusError::NotSmi {
                    api_version: status.api_version.clone(),
                    kind: status.object.kind.clone(),
                })
            }
        };
        match read {
            Ok(meta) => {
                let mut r = reference(status, &meta);
                if status.object.namespace.is_empty() {
                    r.namespace = None;
                }
                *regarding = Some(r);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(StatusError::Read {
                object: status.object.to_string(),
                source,
            }),
        }
    }

    /// Writes one status if it changed. Once the object is read, `regarding` is its reference
    /// for Events (uid and resourceVersion as read, or as written); it stays `None` when the
    /// object no longer exists.
    async fn write_one(
        &self,
        status: &ObjectStatus,
        regarding: &mut Option<ObjectReference>,
    ) -> Result<(), StatusError> {
        let ar = api_resource(&status.api_version, &status.object.kind)?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &status.object.namespace, &ar);
        let current = match api.get_status(&status.object.name).await {
            Ok(obj) => {
                *regarding = Some(reference(status, &obj.metadata));
                if status.object.group == weft_core::model::gateway::GROUP {
                    return self.write_parents(&api, status, &obj.data).await;
                }
                obj.data
                    .get("status")
                    .and_then(|s| serde_json::from_value::<SmiStatus>(s.clone()).ok())
                    .unwrap_or_default()
            }
            // The object is gone: nothing to write.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(source) => {
                return Err(StatusError::Read {
                    object: status.object.to_string(),
                    source,
                })
            }
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (merged, changed) = merge(&current, &status.conditions, &now);
        if !changed {
            return Ok(());
        }
        let patch = serde_json::json!({
            "apiVersion": status.api_version,
            "kind": status.object.kind,
            "metadata": { "name": status.object.name, "namespace": status.object.namespace },
            "status": merged,
        });
        let written = api
            .patch_status(
                &status.object.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| StatusError::Apply {
                object: status.object.to_string(),
                source,
            })?;
        self.metrics.writes.inc();
        tracing::info!(object = %status.object, "status written");
        if let (Some(r), Some(v)) = (regarding.as_mut(), written.metadata.resource_version) {
            r.resource_version = Some(v);
        }
        Ok(())
    }

    /// Writes a Gateway API route's `status.parents[]`: weft's entries (controllerName
    /// [`CONTROLLER_NAME`]) replaced by the desired ones, every other controller's entries kept
    /// as read, only when weft's entries changed (ignoring `lastTransitionTime`).
    async fn write_parents(
        &self,
        api: &Api<DynamicObject>,
        status: &ObjectStatus,
        data: &serde_json::Value,
    ) -> Result<(), StatusError> {
        let read: Vec<serde_json::Value> = data
            .pointer("/status/parents")
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_default();
        let (ours, others): (Vec<serde_json::Value>, Vec<serde_json::Value>) =
            read.into_iter().partition(|p| {
                p.get("controllerName").and_then(|c| c.as_str()) == Some(CONTROLLER_NAME)
            });
        // An entry of ours that does not parse is rewritten.
        let current: Vec<ParentStatus> = ours
            .into_iter()
            .filter_map(|p| serde_json::from_value(p).ok())
            .collect();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (merged, changed) = merge_parents(&current, &status.parents, &now);
        if !changed {
            return Ok(());
        }
        let mut parents = others;
        for p in &merged {
            parents.push(serde_json::to_value(p).map_err(|e| StatusError::Encode {
                object: status.object.to_string(),
                message: e.to_string(),
            })?);
        }
        let patch = serde_json::json!({
            "apiVersion": status.api_version,
            "kind": status.object.kind,
            "metadata": { "name": status.object.name, "namespace": status.object.namespace },
            "status": { "parents": parents },
        });
        api.patch_status(
            &status.object.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| StatusError::Apply {
            object: status.object.to_string(),
            source,
        })?;
        self.metrics.writes.inc();
        tracing::info!(object = %status.object, "status written");
        Ok(())
    }

    /// Publishes a Warning Event for each problem condition not yet reported for this object
    /// (for this uid: a re-created object is a new object). A problem that went away and comes
    /// back is counted again on its Event. A failed publish is retried on the next pass.
    async fn publish_events(
        &mut self,
        status: &ObjectStatus,
        regarding: &ObjectReference,
    ) -> Result<(), StatusError> {
        let uid = regarding.uid.clone().unwrap_or_default();
        let problems: BTreeSet<events::Problem> = status
            .problems()
            .map(|c| events::Problem {
                condition: c.type_.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect();
        let previous = match self.reported.remove(&status.object) {
            Some((was, reported)) if was == uid => reported,
            _ => BTreeSet::new(),
        };
        // Problems that went away are forgotten, so their return is published.
        let mut reported: BTreeSet<events::Problem> =
            previous.intersection(&problems).cloned().collect();
        let mut failed = None;
        for problem in problems.difference(&previous) {
            match self.events.publish(regarding, problem).await {
                Ok(outcome) => {
                    self.metrics.events.inc();
                    tracing::info!(
                        object = %status.object,
                        reason = %problem.reason,
                        new = outcome == Published::Created,
                        "event published"
                    );
                    reported.insert(problem.clone());
                }
                Err(source) => {
                    failed = Some(StatusError::Event {
                        object: status.object.to_string(),
                        reason: problem.reason.clone(),
                        source,
                    });
                }
            }
        }
        self.reported.insert(status.object.clone(), (uid, reported));
        failed.map_or(Ok(()), Err)
    }

    /// Forgets objects that no longer exist (so a re-created object gets its Events again).
    pub fn retain(&mut self, live: impl Fn(&ObjectRef) -> bool) {
        self.reported.retain(|k, _| live(k));
    }
}

/// Retries of failed status writes: from 1 s doubling up to 30 s, jittered.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// Writes statuses while this replica leads; rewrites everything when it becomes leader.
pub async fn run(
    mut writer: StatusWriter,
    mut statuses: watch::Receiver<Arc<Vec<ObjectStatus>>>,
    mut leading: watch::Receiver<bool>,
    mut shutdown: Shutdown,
) {
    let mut written: BTreeMap<ObjectRef, ObjectStatus> = BTreeMap::new();
    // Consecutive passes that left a write failed (the retry's backoff attempt).
    let mut failing: u32 = 0;
    loop {
        let mut failed_now = false;
        if *leading.borrow_and_update() {
            let desired = statuses.borrow_and_update().clone();
            let todo: Vec<ObjectStatus> = desired
                .iter()
                .filter(|s| written.get(&s.object).is_none_or(|w| !w.same_as(s)))
                .cloned()
                .collect();
            if !todo.is_empty() {
                let errors = writer.write(&todo).await;
                failed_now = !errors.is_empty();
                let failed: HashSet<ObjectRef> = errors.into_iter().map(|(o, _)| o).collect();
                for s in todo {
                    if !failed.contains(&s.object) {
                        written.insert(s.object.clone(), s);
                    }
                }
            }
            let live: HashSet<ObjectRef> = desired.iter().map(|s| s.object.clone()).collect();
            written.retain(|k, _| live.contains(k));
            writer.retain(|k| live.contains(k));
        } else {
            written.clear();
        }
        // Failed writes are retried with backoff; otherwise the pass repeats every 30 s.
        let wait = if failed_now {
            let d = RETRY.delay(failing);
            failing = failing.saturating_add(1);
            d
        } else {
            failing = 0;
            RETRY.max
        };
        tokio::select! {
            _ = shutdown.triggered() => return,
            r = statuses.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The `involvedObject` of the Events about `status`'s object, from the object as read.
fn reference(
    status: &ObjectStatus,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(status.api_version.clone()),
        kind: Some(status.object.kind.clone()),
        name: Some(status.object.name.clone()),
        namespace: Some(status.object.namespace.clone()),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_resources_of_smi_kinds() {
        let ar = api_resource("split.smi-spec.io/v1alpha4", "TrafficSplit").unwrap();
        assert_eq!(ar.plural, "trafficsplits");
        assert_eq!(ar.group, "split.smi-spec.io");
        assert_eq!(ar.version, "v1alpha4");
        let ar = api_resource("specs.smi-spec.io/v1alpha4", "HTTPRouteGroup").unwrap();
        assert_eq!(ar.plural, "httproutegroups");
        let ar = api_resource("gateway.networking.k8s.io/v1", "GRPCRoute").unwrap();
        assert_eq!(
            (ar.plural.as_str(), ar.kind.as_str()),
            ("grpcroutes", "GRPCRoute")
        );
        let ar = api_resource("gateway.networking.k8s.io/v1", "HTTPRoute").unwrap();
        assert_eq!(ar.plural, "httproutes");
        assert!(api_resource("gateway.networking.k8s.io/v1", "Gateway").is_err());
        assert!(api_resource("v1", "Pod").is_err());
    }

    fn cond(type_: &str, status: &str, at: Option<&str>) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: at.map(str::to_string),
        }
    }

    #[test]
    fn merge_keeps_transition_times_drops_unwanted_conditions_and_says_what_changed() {
        let current = SmiStatus {
            conditions: vec![
                cond("Conflicted", "False", Some("t0")),
                cond("Accepted", "True", Some("t0")),
            ],
        };
        // Same conditions: nothing to write, times kept.
        let (merged, changed) = merge(
            &current,
            &[
                cond("Accepted", "True", None),
                cond("Conflicted", "False", None),
            ],
            "t1",
        );
        assert!(!changed);
        assert!(merged
            .conditions
            .iter()
            .all(|c| c.last_transition_time.as_deref() == Some("t0")));
        // Accepted flips, Conflicted is no longer wanted, ResolvedRefs is new.
        let (merged, changed) = merge(
            &current,
            &[
                cond("Accepted", "False", None),
                cond("ResolvedRefs", "True", None),
            ],
            "t1",
        );
        assert!(changed);
        assert_eq!(
            merged.conditions,
            vec![
                cond("Accepted", "False", Some("t1")),
                cond("ResolvedRefs", "True", Some("t1"))
            ]
        );
        // Only dropping a condition is a change too.
        let (_, changed) = merge(&current, &[cond("Accepted", "True", None)], "t1");
        assert!(changed);
    }
}
