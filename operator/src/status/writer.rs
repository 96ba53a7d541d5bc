//! Writes status conditions to the Kubernetes API (server-side apply on the status subresource,
//! field manager `weft`) and publishes Events for problems. Only the leader writes.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use weft_smi::hub::SmiStatus;

use super::{merge_conditions, ObjectStatus};

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
    reported: HashMap<super::ObjectRef, Vec<(String, String, String)>>,
}

/// The `ApiResource` of an SMI kind in a given apiVersion.
pub fn api_resource(api_version: &str, kind: &str) -> Result<ApiResource, StatusError> {
    let (group, version) = api_version
        .split_once('/')
        .ok_or_else(|| StatusError::ApiVersion(api_version.to_string()))?;
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok(ApiResource::from_gvk_with_plural(
        &gvk,
        &format!("{}s", kind.to_ascii_lowercase()),
    ))
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
    /// counted and returned; the remaining objects are still written.
    pub async fn write(&mut self, statuses: &[ObjectStatus]) -> Vec<StatusError> {
        let mut errors = Vec::new();
        for status in statuses {
            if let Err(e) = self.write_one(status).await {
                self.metrics.write_errors.inc();
                tracing::warn!(error = %e, "status write failed");
                errors.push(e);
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
        let (merged, changed) = merge_conditions(&current, &status.conditions, &now);
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
    pub fn retain(&mut self, live: impl Fn(&super::ObjectRef) -> bool) {
        self.reported.retain(|k, _| live(k));
    }
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

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
