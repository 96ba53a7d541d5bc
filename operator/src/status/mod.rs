//! Status of SMI objects: conditions computed by the compiler, kept in a board (served as
//! `GET /status`, logged in manifests mode) and, in Kubernetes, written by server-side apply on
//! the status subresource with Events for problems (see [`writer`]).

pub mod events;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use weft_smi::hub::{Condition, SmiStatus};

/// One `status.parents[]` entry of a Gateway API route (weft's own entries only).
pub use weft_core::compile::gateway::{RouteParentStatus as ParentStatus, CONTROLLER_NAME};

/// Which SMI object a status belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// API group, e.g. `split.smi-spec.io`.
    pub group: String,
    /// e.g. `TrafficSplit`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The conditions the operator wants on one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub object: ObjectRef,
    /// The apiVersion to write the status with (the object's stored/read version).
    pub api_version: String,
    /// SMI objects' `status.conditions` (empty for Gateway API routes).
    pub conditions: Vec<Condition>,
    /// Gateway API routes' `status.parents[]` entries written by weft (empty for SMI objects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentStatus>,
}

impl ObjectStatus {
    /// Conditions that report a problem (`Accepted`/`ResolvedRefs` not `True`, or `Conflicted`
    /// `True`): these also become Warning Events.
    pub fn problems(&self) -> impl Iterator<Item = &Condition> {
        self.conditions
            .iter()
            .chain(self.parents.iter().flat_map(|p| p.conditions.iter()))
            .filter(|c| is_problem(c))
    }

    /// Whether `other` says the same, ignoring `lastTransitionTime`.
    pub fn same_as(&self, other: &ObjectStatus) -> bool {
        let strip = |c: &[Condition]| -> Vec<Condition> {
            c.iter()
                .cloned()
                .map(|mut c| {
                    c.last_transition_time = None;
                    c
                })
                .collect()
        };
        strip(&self.conditions) == strip(&other.conditions)
            && self.parents.len() == other.parents.len()
            && self.parents.iter().zip(&other.parents).all(|(a, b)| {
                a.parent_ref == b.parent_ref
                    && a.controller_name == b.controller_name
                    && strip(&a.conditions) == strip(&b.conditions)
            })
    }
}

/// Merges weft's `desired` parent entries into the `current` ones (weft's entries as read):
/// each entry's conditions keep their `lastTransitionTime` while their status does not change
/// ([`merge_conditions`]); entries weft no longer wants are dropped. Returns the merged entries
/// and whether they differ from `current` (ignoring `lastTransitionTime`).
pub fn merge_parents(
    current: &[ParentStatus],
    desired: &[ParentStatus],
    now: &str,
) -> (Vec<ParentStatus>, bool) {
    let mut changed = current.len() != desired.len();
    let mut merged = Vec::with_capacity(desired.len());
    for (i, want) in desired.iter().enumerate() {
        let prev = current
            .iter()
            .find(|p| p.parent_ref == want.parent_ref && p.controller_name == want.controller_name);
        let prev_status = SmiStatus {
            conditions: prev.map(|p| p.conditions.clone()).unwrap_or_default(),
        };
        let (m, differs) = merge_conditions(&prev_status, &want.conditions, now);
        changed |= differs
            || prev.is_none()
            || current.get(i).map(|c| &c.parent_ref) != Some(&want.parent_ref);
        merged.push(ParentStatus {
            conditions: m.conditions,
            ..want.clone()
        });
    }
    (merged, changed)
}

/// Whether a condition reports a problem.
pub fn is_problem(c: &Condition) -> bool {
    match c.type_.as_str() {
        weft_smi::status::CONFLICTED => c.status == "True",
        _ => c.status != "True",
    }
}

pub use weft_smi::status::merge_conditions;

/// The latest status of every SMI object, with transition times maintained across updates.
#[derive(Debug, Default)]
pub struct StatusBoard {
    objects: Mutex<BTreeMap<ObjectRef, ObjectStatus>>,
}

impl StatusBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the board with `statuses`; returns the objects whose conditions changed
    /// (ignoring `lastTransitionTime`), with transition times kept where the status did not.
    pub fn update(&self, statuses: Vec<ObjectStatus>) -> Vec<ObjectStatus> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let Ok(mut objects) = self.objects.lock() else {
            return Vec::new();
        };
        let mut next = BTreeMap::new();
        let mut changed = Vec::new();
        for s in statuses {
            let current = objects
                .get(&s.object)
                .map(|o| SmiStatus {
                    conditions: o.conditions.clone(),
                })
                .unwrap_or_default();
            let (merged, differs) = merge_conditions(&current, &s.conditions, &now);
            let current_parents = objects
                .get(&s.object)
                .map(|o| o.parents.clone())
                .unwrap_or_default();
            let (parents, parents_differ) = merge_parents(&current_parents, &s.parents, &now);
            let differs = differs || parents_differ;
            let status = ObjectStatus {
                conditions: merged.conditions,
                parents,
                ..s
            };
            if differs {
                changed.push(status.clone());
            }
            next.insert(status.object.clone(), status);
        }
        *objects = next;
        changed
    }

    pub fn get(&self, object: &ObjectRef) -> Option<ObjectStatus> {
        self.objects.lock().ok()?.get(object).cloned()
    }

    pub fn all(&self) -> Vec<ObjectStatus> {
        self.objects
            .lock()
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }

    /// JSON array of every object's status (for `GET /status`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.all()).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: None,
        }
    }

    fn obj(name: &str, conditions: Vec<Condition>) -> ObjectStatus {
        ObjectStatus {
            object: ObjectRef {
                group: "split.smi-spec.io".into(),
                kind: "TrafficSplit".into(),
                namespace: "demo".into(),
                name: name.into(),
            },
            api_version: "split.smi-spec.io/v1alpha4".into(),
            conditions,
            parents: Vec::new(),
        }
    }

    #[test]
    fn unchanged_conditions_keep_transition_time_and_report_no_change() {
        let mut current = SmiStatus::default();
        current.conditions.push(Condition {
            last_transition_time: Some("2020-01-01T00:00:00Z".into()),
            ..cond("Accepted", "True", "Accepted")
        });
        let (merged, changed) =
            merge_conditions(&current, &[cond("Accepted", "True", "Accepted")], "now");
        assert!(!changed);
        assert_eq!(
            merged.conditions[0].last_transition_time.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        let (merged, changed) =
            merge_conditions(&current, &[cond("Accepted", "False", "Invalid")], "now");
        assert!(changed);
        assert_eq!(
            merged.conditions[0].last_transition_time.as_deref(),
            Some("now")
        );
    }

    #[test]
    fn board_reports_only_changed_objects() {
        let board = StatusBoard::new();
        let a = obj("a", vec![cond("Accepted", "True", "Accepted")]);
        let b = obj("b", vec![cond("Accepted", "False", "Invalid")]);
        assert_eq!(board.update(vec![a.clone(), b.clone()]).len(), 2);
        let changed = board.update(vec![
            a.clone(),
            obj("b", vec![cond("Accepted", "True", "Accepted")]),
        ]);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].object.name, "b");
        assert!(board.update(vec![a]).is_empty());
        assert!(board.get(&b.object).is_none());
        assert_eq!(board.all().len(), 1);
    }

    fn parent(name: &str, conditions: Vec<Condition>) -> ParentStatus {
        ParentStatus {
            parent_ref: gateway_api::httproutes::HttpRouteParentRefs {
                group: Some(String::new()),
                kind: Some("Service".into()),
                name: name.into(),
                ..Default::default()
            },
            controller_name: CONTROLLER_NAME.into(),
            conditions,
        }
    }

    #[test]
    fn route_parents_keep_transition_times_and_report_changes() {
        let current = vec![parent(
            "echo",
            vec![Condition {
                last_transition_time: Some("2020-01-01T00:00:00Z".into()),
                ..cond("Accepted", "True", "Accepted")
            }],
        )];
        let same = vec![parent("echo", vec![cond("Accepted", "True", "Accepted")])];
        let (merged, changed) = merge_parents(&current, &same, "now");
        assert!(!changed);
        assert_eq!(
            merged[0].conditions[0].last_transition_time.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        let refused = vec![parent(
            "echo",
            vec![cond("Accepted", "False", "NoMatchingParent")],
        )];
        let (merged, changed) = merge_parents(&current, &refused, "now");
        assert!(changed);
        assert_eq!(
            merged[0].conditions[0].last_transition_time.as_deref(),
            Some("now")
        );
        // Another parent, or one parent fewer, is a change.
        let (_, changed) = merge_parents(
            &current,
            &[parent("other", same[0].conditions.clone())],
            "now",
        );
        assert!(changed);
        let (merged, changed) = merge_parents(&current, &[], "now");
        assert!(changed && merged.is_empty());
    }

    #[test]
    fn a_route_status_is_the_same_whatever_its_transition_times_and_reports_parent_problems() {
        let status = |p: ParentStatus| ObjectStatus {
            object: ObjectRef {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
                namespace: "demo".into(),
                name: "r".into(),
            },
            api_version: "gateway.networking.k8s.io/v1".into(),
            conditions: Vec::new(),
            parents: vec![p],
        };
        let a = status(parent(
            "echo",
            vec![cond("ResolvedRefs", "False", "BackendNotFound")],
        ));
        let mut b = a.clone();
        b.parents[0].conditions[0].last_transition_time = Some("later".into());
        assert!(a.same_as(&b));
        let c = status(parent(
            "echo",
            vec![cond("ResolvedRefs", "True", "ResolvedRefs")],
        ));
        assert!(!a.same_as(&c));
        let kinds: Vec<&str> = a.problems().map(|c| c.reason.as_str()).collect();
        assert_eq!(kinds, vec!["BackendNotFound"]);
        assert_eq!(c.problems().count(), 0);
    }

    #[test]
    fn problems_are_non_true_or_conflicted() {
        let s = obj(
            "a",
            vec![
                cond("Accepted", "True", "Accepted"),
                cond("ResolvedRefs", "False", "BackendNotFound"),
                cond("Conflicted", "True", "Conflicted"),
            ],
        );
        let kinds: Vec<&str> = s.problems().map(|c| c.type_.as_str()).collect();
        assert_eq!(kinds, vec!["ResolvedRefs", "Conflicted"]);
    }
}
