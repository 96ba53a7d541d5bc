//! Writes status conditions to the Kubernetes API (server-side apply on the status subresource,
//! field manager `weft`) and publishes Events for problems. Only the leader writes ([`run`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::watch;
use weft_common::Backoff;

use crate::shutdown::Shutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use weft_smi::hub::{Condition, SmiStatus};

use super::{ObjectRef, ObjectStatus};

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
    #[error("{api_version} {kind} is not an SMI kind weft writes status to")]
    NotSmi { api_version: String, kind: String },
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
    recorder: Recorder,
    metrics: StatusMetrics,
    /// Problems already reported per object (type, reason, message), to publish each once.
    reported: HashMap<ObjectRef, Vec<(String, String, String)>>,
}

/// The `ApiResource` of an SMI kind in a given apiVersion: its plural is the one the `weft_smi`
/// kind table declares ([`weft_smi::kinds`]), never guessed; a kind or
/// group weft does not read is refused.
pub fn api_resource(api_version: &str, kind: &str) -> Result<ApiResource, StatusError> {
    let (group, version) = api_version
        .split_once('/')
        .ok_or_else(|| StatusError::ApiVersion(api_version.to_string()))?;
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
        let reporter = Reporter {
            controller: "weft-operator".to_string(),
            instance,
        };
        StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
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
            if let Err(e) = self.write_one(status).await {
                self.metrics.write_errors.inc();
                tracing::warn!(error = %e, "status write failed");
                errors.push((status.object.clone(), e));
            }
            self.publish_events(status).await;
        }
        errors
    }

    async fn write_one(&self, status: &ObjectStatus) -> Result<(), StatusError> {
        let ar = api_resource(&status.api_version, &status.object.kind)?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &status.object.namespace, &ar);
        let current = match api.get_status(&status.object.name).await {
            Ok(obj) => obj
                .data
                .get("status")
                .and_then(|s| serde_json::from_value::<SmiStatus>(s.clone()).ok())
                .unwrap_or_default(),
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

    /// Publishes a Warning Event for each problem condition not yet reported for this object.
    async fn publish_events(&mut self, status: &ObjectStatus) {
        let problems: Vec<(String, String, String)> = status
            .problems()
            .map(|c| (c.type_.clone(), c.reason.clone(), c.message.clone()))
            .collect();
        let previous = self
            .reported
            .insert(status.object.clone(), problems.clone())
            .unwrap_or_default();
        let reference = ObjectReference {
            api_version: Some(status.api_version.clone()),
            kind: Some(status.object.kind.clone()),
            name: Some(status.object.name.clone()),
            namespace: Some(status.object.namespace.clone()),
            ..Default::default()
        };
        for problem in problems.iter().filter(|p| !previous.contains(p)) {
            let event = Event {
                type_: EventType::Warning,
                reason: truncate(&problem.1, 128),
                note: Some(truncate(&format!("{}: {}", problem.0, problem.2), 1024)),
                action: "Reconcile".to_string(),
                secondary: None,
            };
            match self.recorder.publish(&event, &reference).await {
                Ok(()) => {
                    self.metrics.events.inc();
                }
                Err(e) => tracing::warn!(object = %status.object, error = %e, "publishing event"),
            }
        }
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
                .filter(|s| {
                    written
                        .get(&s.object)
                        .is_none_or(|w| strip(&w.conditions) != strip(&s.conditions))
                })
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

fn strip(conditions: &[weft_smi::hub::Condition]) -> Vec<weft_smi::hub::Condition> {
    conditions
        .iter()
        .cloned()
        .map(|mut c| {
            c.last_transition_time = None;
            c
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
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

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
