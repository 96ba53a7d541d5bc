//! Events for problems of SMI objects, where `kubectl describe` looks for them.
//!
//! Each Event is a core/v1 Event (what every kubectl, 1.20 included, lists) whose
//! `involvedObject` carries the object's `apiVersion`, `kind`, `namespace`, `name`, **`uid`**
//! and `resourceVersion`: `kubectl describe` selects Events by the object's uid, so an Event
//! without it is never shown.
//!
//! Events are deduplicated across operator restarts and replicas: an Event's name is
//! deterministic ([`event_name`]: the object's name and a hash of its uid and the problem), so
//! publishing the same problem again finds the existing Event (`409 AlreadyExists`) and raises
//! its `count` and `lastTimestamp` instead of adding a second one; a changed problem (another
//! reason or message) hashes to another name and is a new Event. The counts this process wrote
//! are kept in a bounded LRU ([`SentEvents`]) keyed by that name, so a problem that comes back
//! is counted without reading the Event first.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The component named in every Event (`source.component`, `reportingComponent`).
pub const COMPONENT: &str = "weft-operator";

/// How many Event names [`SentEvents`] remembers.
pub const SENT_CAPACITY: usize = 1024;

/// Longest Event name Kubernetes accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

/// One problem to report on one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// The condition that reports it (`ResolvedRefs`, ...).
    pub condition: String,
    /// The typed reason's string (`BackendNotFound`, ...): the Event's `reason`.
    pub reason: String,
    pub message: String,
}

impl Problem {
    /// The Event's `message`: `<condition>: <message>`, at most 1 KiB.
    pub fn note(&self) -> String {
        truncate(&format!("{}: {}", self.condition, self.message), 1024)
    }
}

/// The deterministic name of the Event for `problem` on the object `(name, uid)`:
/// `<name>.<16 hex digits of sha256(uid, condition, reason, message)>`, the name part cut so
/// that the whole is a valid DNS subdomain of at most 253 characters. The same problem on the
/// same object always has the same name (across restarts and replicas); another problem, or a
/// re-created object (a new uid), has another.
pub fn event_name(object_name: &str, uid: &str, problem: &Problem) -> String {
    let mut h = Sha256::new();
    for part in [uid, &problem.condition, &problem.reason, &problem.message] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let mut hash = hex::encode(h.finalize());
    hash.truncate(16);
    // Object names are DNS subdomains already; anything else is mapped into one.
    let mut base: String = object_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    base.truncate(MAX_NAME - hash.len() - 1);
    let base = base.trim_matches(|c| c == '-' || c == '.');
    if base.is_empty() {
        hash
    } else {
        format!("{base}.{hash}")
    }
}

/// The Event (core/v1, as JSON) for `problem` about `regarding`, seen first and last at `now`
/// (RFC 3339) with `count` 1.
pub fn event_body(
    name: &str,
    regarding: &ObjectReference,
    problem: &Problem,
    instance: Option<&str>,
    now: &str,
) -> Value {
    let mut ev = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "name": name, "namespace": regarding.namespace },
        "involvedObject": regarding,
        "type": "Warning",
        "reason": truncate(&problem.reason, 128),
        "message": problem.note(),
        "action": "Reconcile",
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": { "component": COMPONENT },
        "reportingComponent": COMPONENT,
    });
    if let Some(instance) = instance {
        ev["source"]["host"] = json!(instance);
        ev["reportingInstance"] = json!(truncate(instance, 128));
    }
    ev
}

/// A bounded, least-recently-used map from Event name to the `count` this process last wrote.
#[derive(Debug)]
pub struct SentEvents {
    capacity: usize,
    tick: u64,
    counts: HashMap<String, (i32, u64)>,
    by_use: BTreeMap<u64, String>,
}

impl SentEvents {
    pub fn new(capacity: usize) -> Self {
        SentEvents {
            capacity: capacity.max(1),
            tick: 0,
            counts: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    /// The count last written for `name`, if remembered (and marks it used).
    pub fn get(&mut self, name: &str) -> Option<i32> {
        let (count, used) = self.counts.get(name).copied()?;
        self.touch(name, count, Some(used));
        Some(count)
    }

    /// Remembers `count` for `name`, forgetting the least recently used name when full.
    pub fn insert(&mut self, name: &str, count: i32) {
        let previous = self.counts.get(name).map(|(_, used)| *used);
        if previous.is_none() && self.counts.len() >= self.capacity {
            if let Some((_, oldest)) = self.by_use.pop_first() {
                self.counts.remove(&oldest);
            }
        }
        self.touch(name, count, previous);
    }

    fn touch(&mut self, name: &str, count: i32, previous: Option<u64>) {
        if let Some(used) = previous {
            self.by_use.remove(&used);
        }
        self.tick += 1;
        self.by_use.insert(self.tick, name.to_string());
        self.counts.insert(name.to_string(), (count, self.tick));
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// What publishing did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// A new Event.
    Created,
    /// The existing Event of the same problem, its `count` now this.
    Counted(i32),
}

/// Publishes Events by deterministic name (see the module documentation).
pub struct EventPublisher {
    client: Client,
    instance: Option<String>,
    sent: SentEvents,
}

impl EventPublisher {
    /// `instance` names this replica (its pod name) in Events.
    pub fn new(client: Client, instance: Option<String>) -> Self {
        EventPublisher {
            client,
            instance,
            sent: SentEvents::new(SENT_CAPACITY),
        }
    }

    /// Publishes `problem` about `regarding` (which must carry the object's namespace, name and
    /// uid): creates its Event, or raises the count of the one that exists.
    pub async fn publish(
        &mut self,
        regarding: &ObjectReference,
        problem: &Problem,
    ) -> Result<Published, kube::Error> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let object_name = regarding.name.as_deref().unwrap_or_default();
        let uid = regarding.uid.as_deref().unwrap_or_default();
        let name = event_name(object_name, uid, problem);
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

        let known = self.sent.get(&name);
        if known.is_none() {
            let body = event_body(&name, regarding, problem, self.instance.as_deref(), &now);
            let event: Event = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    self.sent.insert(&name, 1);
                    return Ok(Published::Created);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        // The Event exists (published before a restart, by another replica, or by this
        // process earlier): count this occurrence. Without a remembered count, read it; if it
        // cannot be read (RBAC grants `create` and `patch` only), refresh `lastTimestamp`.
        let current = match known {
            Some(c) => Some(c),
            None => match api.get(&name).await {
                Ok(ev) => Some(ev.count.unwrap_or(1)),
                Err(kube::Error::Api(e)) if e.code == 403 => None,
                Err(e) => return Err(e),
            },
        };
        let mut patch = json!({ "lastTimestamp": now, "involvedObject": regarding });
        let count = current.map(|c| c.saturating_add(1));
        if let Some(count) = count {
            patch["count"] = json!(count);
        }
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(ev) => {
                let count = ev.count.unwrap_or(count.unwrap_or(1));
                self.sent.insert(&name, count);
                Ok(Published::Counted(count))
            }
            // Expired (Events live an hour by default) since this process counted it.
            Err(kube::Error::Api(e)) if e.code == 404 && known.is_some() => {
                let body = event_body(&name, regarding, problem, self.instance.as_deref(), &now);
                let event: Event = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                api.create(&PostParams::default(), &event).await?;
                self.sent.insert(&name, 1);
                Ok(Published::Created)
            }
            Err(e) => Err(e),
        }
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
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

    fn problem(reason: &str, message: &str) -> Problem {
        Problem {
            condition: "ResolvedRefs".into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    const UID: &str = "6f1c7c5e-2b0a-4d5e-9a51-0e8f3b1d2c4a";

    #[test]
    fn the_same_problem_on_the_same_object_has_one_name() {
        let p = problem(
            "BackendNotFound",
            "backend Service e2e/web-missing does not exist",
        );
        let a = event_name("broken", UID, &p);
        assert_eq!(a, event_name("broken", UID, &p.clone()));
        assert!(a.starts_with("broken."), "{a}");
        assert_eq!(a.len(), "broken.".len() + 16, "{a}");
        // Pinned (sha256 of the NUL-terminated parts, computed independently): the name must not change between versions of weft (or restarts would
        // publish a second Event for the same problem).
        assert_eq!(a, "broken.50e0db94d57458b9");
    }

    #[test]
    fn another_problem_or_object_has_another_name() {
        let p = problem("BackendNotFound", "backend web-missing does not exist");
        let base = event_name("broken", UID, &p);
        let others = [
            event_name(
                "broken",
                UID,
                &problem("BackendNotFound", "backend other does not exist"),
            ),
            event_name("broken", UID, &problem("ServiceNotFound", &p.message)),
            event_name("broken", "another-uid", &p),
            event_name(
                "broken",
                UID,
                &Problem {
                    condition: "Accepted".into(),
                    ..p.clone()
                },
            ),
        ];
        for o in others {
            assert_ne!(o, base);
        }
    }

    #[test]
    fn names_are_dns_subdomains_whatever_the_object_name() {
        let p = problem("R", "m");
        let long = "a".repeat(300);
        let n = event_name(&long, UID, &p);
        assert!(n.len() <= MAX_NAME, "{}", n.len());
        for name in ["Odd_Name", "-.", "", "x.y-z"] {
            let n = event_name(name, UID, &p);
            assert!(
                n.len() <= MAX_NAME
                    && n.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || c == '-'
                        || c == '.')
                    && n.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && n.ends_with(|c: char| c.is_ascii_alphanumeric()),
                "{name:?} -> {n:?}"
            );
        }
    }

    #[test]
    fn the_event_names_its_object_by_uid() {
        let regarding = ObjectReference {
            api_version: Some("split.smi-spec.io/v1alpha4".into()),
            kind: Some("TrafficSplit".into()),
            name: Some("broken".into()),
            namespace: Some("e2e".into()),
            uid: Some(UID.into()),
            resource_version: Some("42".into()),
            ..Default::default()
        };
        let p = problem("BackendNotFound", "backend web-missing does not exist");
        let body = event_body(
            "broken.x",
            &regarding,
            &p,
            Some("weft-operator-0"),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(body["involvedObject"]["uid"], UID);
        assert_eq!(body["involvedObject"]["resourceVersion"], "42");
        assert_eq!(body["involvedObject"]["kind"], "TrafficSplit");
        assert_eq!(body["metadata"]["namespace"], "e2e");
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["reason"], "BackendNotFound");
        assert_eq!(
            body["message"],
            "ResolvedRefs: backend web-missing does not exist"
        );
        assert_eq!(body["count"], 1);
        assert_eq!(body["reportingInstance"], "weft-operator-0");
        // It is a valid core/v1 Event.
        let ev: Event = serde_json::from_value(body).unwrap();
        assert_eq!(ev.involved_object.uid.as_deref(), Some(UID));
    }

    #[test]
    fn sent_events_are_bounded_and_forget_the_least_recently_used() {
        let mut sent = SentEvents::new(2);
        sent.insert("a", 1);
        sent.insert("b", 1);
        assert_eq!(sent.get("a"), Some(1)); // a is now more recent than b
        sent.insert("c", 1);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent.get("b"), None, "b was the least recently used");
        assert_eq!(sent.get("a"), Some(1));
        assert_eq!(sent.get("c"), Some(1));
        sent.insert("a", 5);
        assert_eq!(sent.get("a"), Some(5));
        assert_eq!(sent.len(), 2);
        for i in 0..100 {
            sent.insert(&i.to_string(), 1);
        }
        assert_eq!(sent.len(), 2);
        assert_eq!(sent.by_use.len(), 2);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
