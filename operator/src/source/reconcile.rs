//! The one reconcile loop: whatever the source, [`run`] applies its [`SourceEvent`]s to the
//! model in batches, compiles once per batch and publishes the snapshot, the statuses and the
//! pods a bootstrap token may bind to.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::kube::SmiKind;
use super::{Change, SourceEvent, SourceRx};
use crate::admin::Health;
use crate::compile::{ChangedKeys, Compiled, Compiler};
use crate::discovery::{Published, SnapshotTx};
use crate::identity::PodDirectory;
use crate::model::{Kind, Model, ObjectKey};
use crate::shutdown::Shutdown;
use crate::status::{ObjectRef, ObjectStatus, StatusBoard};

/// Runtime metrics (besides discovery's, the sources' and the identity service's).
#[derive(Clone, Debug)]
pub struct RuntimeMetrics {
    pub reconciles: Counter,
    pub compile_seconds: Histogram,
    pub snapshot_generation: Gauge,
    pub proxies_known: Gauge,
    pub manifest_errors: Gauge,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics {
            reconciles: Counter::default(),
            compile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            snapshot_generation: Gauge::default(),
            proxies_known: Gauge::default(),
            manifest_errors: Gauge::default(),
        }
    }
}

impl RuntimeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "Batches of changes applied to the model and compiled",
            self.reconciles.clone(),
        );
        registry.register(
            "compile_seconds",
            "Time to compile one batch of changes",
            self.compile_seconds.clone(),
        );
        registry.register(
            "snapshot_generation",
            "Generation of the snapshot served to proxies",
            self.snapshot_generation.clone(),
        );
        registry.register(
            "proxies_known",
            "Meshed pods the compiled snapshot has a config for",
            self.proxies_known.clone(),
        );
        registry.register(
            "manifest_errors",
            "Manifest entries not in force: files that fail to load or are empty (their last good objects stay in force), and entries skipped (FIFOs, aliases, too deep)",
            self.manifest_errors.clone(),
        );
    }
}

/// Owns the model and the compiler: applies batches of changes, compiles, publishes.
pub struct Reconciler {
    model: Model,
    compiler: Compiler,
    generation: u64,
    tx: SnapshotTx,
    board: Arc<StatusBoard>,
    health: Arc<Health>,
    metrics: RuntimeMetrics,
    /// Kubernetes mode: every object's desired status, for the status writer.
    statuses: Option<watch::Sender<Arc<Vec<ObjectStatus>>>>,
    /// The pods a bootstrap token binds to (kept equal to the model's pods).
    pods: Option<Arc<PodDirectory>>,
    /// Meshed pods and TrafficSplits, for the TrafficMetrics scraper.
    mesh_view: Option<crate::trafficmetrics::scrape::MeshViewTx>,
    /// The pods tap reads (#18; kept equal to the model's).
    tap_pods: Option<Arc<crate::tap::TapDirectory>>,
    /// The snapshot whose statuses were last published.
    statuses_of: Option<Arc<Compiled>>,
}

impl Reconciler {
    /// A reconciler of `model` that publishes to `tx`, `board` and `health`.
    pub fn new(
        model: Model,
        compiler: Compiler,
        tx: SnapshotTx,
        board: Arc<StatusBoard>,
        health: Arc<Health>,
        metrics: RuntimeMetrics,
    ) -> Self {
        Reconciler {
            model,
            compiler,
            generation: 0,
            tx,
            board,
            health,
            metrics,
            statuses: None,
            pods: None,
            mesh_view: None,
            tap_pods: None,
            statuses_of: None,
        }
    }

    /// Also publishes every object's desired status here (for the status writer).
    pub fn with_statuses(mut self, tx: watch::Sender<Arc<Vec<ObjectStatus>>>) -> Self {
        self.statuses = Some(tx);
        self
    }

    /// Also keeps tap's directory of pods equal to the model's.
    pub fn with_tap_pods(mut self, pods: Option<Arc<crate::tap::TapDirectory>>) -> Self {
        self.tap_pods = pods;
        self
    }

    /// Also keeps this directory's pods equal to the model's.
    pub fn with_pods(mut self, pods: Option<Arc<PodDirectory>>) -> Self {
        self.pods = pods;
        self
    }

    /// Also keeps the TrafficMetrics scraper's view (meshed pods, TrafficSplits) equal to the
    /// model's.
    pub fn with_mesh_view(mut self, tx: Option<crate::trafficmetrics::scrape::MeshViewTx>) -> Self {
        self.mesh_view = tx;
        self
    }

    /// How many snapshots were published.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Applies one batch as a whole, compiles and publishes the result.
    pub fn apply(&mut self, changes: Vec<Change>, observed_at: Instant) {
        let first = self.generation == 0;
        let mut changed = ChangedKeys::default();
        let mut pods_changed = first;
        let mut splits_changed = first;
        // Statuses read the apiVersion of SMI objects besides what the compiler derives.
        let mut status_objects_changed = first;
        for change in changes {
            let key = match change {
                Change::Upsert(o) => self.model.upsert(o),
                Change::Remove(key) => {
                    self.model.remove(&key);
                    key
                }
            };
            pods_changed |= key.kind == Kind::Pod;
            splits_changed |= key.kind == Kind::TrafficSplit;
            status_objects_changed |= smi_kind(key.kind).is_some() || key.kind.is_gateway_api();
            changed.insert(key);
        }
        if let Some(pods) = self.pods.as_ref().filter(|_| pods_changed) {
            pods.publish(self.model.pods.values().map(|p| {
                (
                    p.namespace.as_str(),
                    p.name.as_str(),
                    p.service_account.as_str(),
                )
            }));
        }
        if let Some(tx) = self
            .mesh_view
            .as_ref()
            .filter(|_| pods_changed || splits_changed)
        {
            tx.send_replace(Arc::new(crate::trafficmetrics::scrape::MeshView::of(
                &self.model,
            )));
        }
        if let Some(tap) = self.tap_pods.as_ref().filter(|_| pods_changed || first) {
            tap.publish(self.model.pods.values().map(|p| p.as_ref()));
        }
        if !first && changed.is_empty() {
            return;
        }
        let start = Instant::now();
        let compiled = if first {
            self.compiler.full(&self.model)
        } else {
            self.compiler.update(&self.model, &changed)
        };
        self.metrics
            .compile_seconds
            .observe(start.elapsed().as_secs_f64());
        self.metrics.reconciles.inc();
        self.generation += 1;
        self.metrics.snapshot_generation.set(self.generation as i64);
        self.metrics
            .proxies_known
            .set(compiled.proxies().len() as i64);
        let stats = self.compiler.last_stats();
        tracing::info!(
            generation = self.generation,
            objects_changed = changed.len(),
            proxies_changed = stats.proxies_changed,
            resources_changed = stats.resources_changed,
            resources_removed = stats.resources_removed,
            compile_ms = start.elapsed().as_secs_f64() * 1000.0,
            "compiled"
        );
        self.tx.send_replace(Some(Arc::new(Published {
            generation: self.generation,
            changed_at: observed_at,
            compiled: compiled.clone(),
        })));
        self.health.set_compiled();
        // O(statuses) work only when a status may have changed: the compiler keeps its
        // statuses and problems shared when a change (an endpoint, a pod) touched none.
        let unchanged = !status_objects_changed
            && self
                .statuses_of
                .as_ref()
                .is_some_and(|last| last.same_statuses(&compiled));
        if !unchanged {
            self.publish_statuses(&compiled);
            self.statuses_of = Some(compiled);
        }
    }

    fn publish_statuses(&self, compiled: &Compiled) {
        let statuses = statuses_of(&self.model, compiled);
        let changed = self.board.update(statuses);
        for s in &changed {
            for c in s
                .conditions
                .iter()
                .chain(s.parents.iter().flat_map(|p| p.conditions.iter()))
            {
                if crate::status::is_problem(c) {
                    tracing::warn!(object = %s.object, condition = %c.type_, status = %c.status, reason = %c.reason, message = %c.message, "status");
                } else {
                    tracing::info!(object = %s.object, condition = %c.type_, status = %c.status, reason = %c.reason, "status");
                }
            }
        }
        if let Some(tx) = &self.statuses {
            let mut all = self.board.all();
            all.extend(core_problems(compiled));
            tx.send_replace(Arc::new(all));
        }
    }
}

/// The condition type under which the compiler's problems with a Service's or Namespace's
/// annotations are published (Event message `Annotations: <message>`).
pub const ANNOTATIONS_CONDITION: &str = "Annotations";

/// The compiler's problems with Services and Namespaces (invalid reliability annotations,
/// conflicting inbound limits), one entry per object with one `False` condition per problem:
/// not statuses (these objects have none of weft's), but what the status writer publishes as
/// Warning Events on them.
pub fn core_problems(compiled: &Compiled) -> Vec<ObjectStatus> {
    let mut by_object: std::collections::BTreeMap<ObjectRef, Vec<weft_smi::hub::Condition>> =
        std::collections::BTreeMap::new();
    for e in compiled.events() {
        if !matches!(e.object.kind, Kind::Service | Kind::Namespace) {
            continue;
        }
        let object = ObjectRef {
            group: String::new(),
            kind: e.object.kind.as_str().to_string(),
            namespace: e.object.namespace.clone(),
            name: e.object.name.clone(),
        };
        by_object
            .entry(object)
            .or_default()
            .push(weft_smi::hub::Condition {
                type_: ANNOTATIONS_CONDITION.to_string(),
                status: "False".to_string(),
                reason: e.reason.clone(),
                message: e.message.clone(),
                observed_generation: None,
                last_transition_time: None,
            });
    }
    by_object
        .into_iter()
        .map(|(object, conditions)| ObjectStatus {
            object,
            api_version: "v1".to_string(),
            conditions,
            parents: Vec::new(),
        })
        .collect()
}

/// The SMI kind of a model kind (see [`SMI_KINDS`](crate::source::kube::SMI_KINDS)).
fn smi_kind(kind: Kind) -> Option<&'static SmiKind> {
    SmiKind::named(kind.as_str())
}

/// The API group of an SMI kind.
pub fn smi_group(kind: Kind) -> Option<&'static str> {
    smi_kind(kind).map(|k| k.group)
}

fn read_api_version(model: &Model, key: &ObjectKey) -> Option<String> {
    let r = key.object_ref();
    let v = match key.kind {
        Kind::TrafficSplit => model.splits.get(&r).map(|o| o.meta.api_version.clone()),
        Kind::TrafficTarget => model.targets.get(&r).map(|o| o.meta.api_version.clone()),
        Kind::HTTPRouteGroup => model
            .http_routes
            .get(&r)
            .map(|o| o.meta.api_version.clone()),
        Kind::TCPRoute => model.tcp_routes.get(&r).map(|o| o.meta.api_version.clone()),
        Kind::UDPRoute => model.udp_routes.get(&r).map(|o| o.meta.api_version.clone()),
        _ => None,
    }?;
    (!v.is_empty()).then_some(v)
}

/// The compiler's conditions as [`ObjectStatus`]es, with the group and read apiVersion of each
/// SMI object, and the `status.parents[]` entries of each Gateway API route.
pub fn statuses_of(model: &Model, compiled: &Compiled) -> Vec<ObjectStatus> {
    compiled
        .statuses()
        .iter()
        .filter_map(|(key, conditions)| {
            let smi = smi_kind(key.kind)?;
            let group = smi.group;
            let api_version =
                read_api_version(model, key).unwrap_or_else(|| smi.api_version.to_string());
            Some(ObjectStatus {
                object: ObjectRef {
                    group: group.to_string(),
                    kind: key.kind.as_str().to_string(),
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                },
                api_version,
                conditions: conditions.clone(),
                parents: Vec::new(),
            })
        })
        .chain(
            compiled
                .route_parents()
                .iter()
                .map(|(key, parents)| ObjectStatus {
                    object: ObjectRef {
                        group: weft_core::model::gateway::GROUP.to_string(),
                        kind: key.kind.as_str().to_string(),
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                    },
                    api_version: weft_core::model::gateway::API_VERSION.to_string(),
                    conditions: Vec::new(),
                    parents: parents.clone(),
                }),
        )
        .collect()
}

/// Most events taken into one batch.
const MAX_BATCH: usize = 10_000;

/// The one reconcile loop, whatever the source: applies what the sources send on `rx` until
/// shutdown (or until every source is gone).
///
/// Whatever is queued when the loop wakes is coalesced into one batch and compiled once.
/// Changes received before every expected initial listing is synced are held back (see
/// [`SourceEvent::Expect`]): the first snapshot is compiled from a complete view of the
/// cluster.
pub async fn run(mut reconciler: Reconciler, mut rx: SourceRx, mut shutdown: Shutdown) {
    let mut pending = Pending::default();
    loop {
        let first = tokio::select! {
            _ = shutdown.triggered() => break,
            ev = rx.recv() => match ev { Some(ev) => ev, None => break },
        };
        let mut batch = vec![first];
        // Coalesce whatever else is already queued.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        for ev in batch {
            match ev {
                SourceEvent::Unwatched(kinds) => reconciler.health.set_unwatched_kinds(kinds),
                other => pending.take(other),
            }
        }
        if let Some((changes, observed_at)) = pending.batch(reconciler.generation == 0) {
            reconciler.apply(changes, observed_at);
        }
    }
}

/// What the loop holds between batches: the changes not applied yet, and the initial listings
/// the first snapshot still waits for.
#[derive(Debug, Default)]
struct Pending {
    /// `None` until a source said what to wait for.
    expected: Option<BTreeSet<String>>,
    /// Whether the first batch was handed out (later `Expect`s change nothing).
    started: bool,
    held: Vec<Change>,
    /// When the first held change was observed.
    held_since: Option<Instant>,
}

impl Pending {
    fn take(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Expect(names) => {
                if !self.started {
                    self.expected
                        .get_or_insert_with(BTreeSet::new)
                        .extend(names);
                }
            }
            SourceEvent::Changes {
                changes,
                observed_at,
            } => {
                self.held.extend(changes);
                self.held_since = Some(self.held_since.map_or(observed_at, |t| t.min(observed_at)));
            }
            SourceEvent::Synced(name) => {
                if let Some(expected) = self.expected.as_mut() {
                    if expected.remove(&name) && expected.is_empty() {
                        tracing::info!("every source listed; compiling");
                    }
                }
            }
            SourceEvent::Unwatched(_) => {}
        }
    }

    /// The batch to apply now, if any: nothing before every expected listing is complete;
    /// then what is held, or an empty first batch (`first`: nothing was compiled yet).
    fn batch(&mut self, first: bool) -> Option<(Vec<Change>, Instant)> {
        let listed = self.expected.as_ref().is_some_and(BTreeSet::is_empty);
        if !listed || (self.held.is_empty() && !first) {
            return None;
        }
        self.started = true;
        let observed_at = self.held_since.take().unwrap_or_else(Instant::now);
        Some((std::mem::take(&mut self.held), observed_at))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn remove(name: &str) -> Change {
        Change::Remove(ObjectKey::new(Kind::Namespace, "", name))
    }

    fn changes(names: &[&str], observed_at: Instant) -> SourceEvent {
        SourceEvent::Changes {
            changes: names.iter().map(|n| remove(n)).collect(),
            observed_at,
        }
    }

    #[test]
    fn core_problems_are_the_compilers_events_on_services_and_namespaces() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  annotations:\n    weft.io/retries: many\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: demo\n  annotations:\n    weft.io/timeout: soon\n    weft.io/rate-limit: 0/s\nspec:\n  selector: {app: api}\n  ports: [{port: 80}]\n";
        let (objects, _) = crate::model::manifests::parse_manifests(yaml, false).unwrap();
        let model = Model::from_objects(objects);
        let compiled = crate::compile::compile(&model, &crate::compile::CompileOptions::default());
        let problems = core_problems(&compiled);
        let summary: Vec<(String, String, String, usize)> = problems
            .iter()
            .map(|p| {
                (
                    p.object.kind.clone(),
                    p.object.namespace.clone(),
                    p.object.name.clone(),
                    p.conditions.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("Namespace".into(), String::new(), "demo".into(), 1),
                ("Service".into(), "demo".into(), "api".into(), 2),
            ]
        );
        for p in &problems {
            assert!(p.object.group.is_empty());
            assert_eq!(p.api_version, "v1");
            for c in &p.conditions {
                assert_eq!(c.type_, ANNOTATIONS_CONDITION);
                assert!(crate::status::is_problem(c), "published as an Event");
                assert_eq!(c.reason, "InvalidAnnotation");
            }
        }
        assert!(problems[1].conditions[0].message.contains("weft.io/"));
    }

    #[test]
    fn the_first_batch_waits_for_every_expected_listing() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        // Nothing expected yet: no source has spoken, nothing is compiled.
        p.take(changes(&["a"], t0 + Duration::from_secs(1)));
        assert_eq!(p.batch(true), None);
        p.take(SourceEvent::Expect(
            ["pods".into(), "services".into()].into(),
        ));
        p.take(SourceEvent::Synced("pods".into()));
        p.take(SourceEvent::Synced("unknown".into()));
        assert_eq!(p.batch(true), None);
        p.take(changes(&["b"], t0));
        p.take(SourceEvent::Synced("services".into()));
        // Everything held comes as one batch, observed when the first of it was.
        assert_eq!(p.batch(true), Some((vec![remove("a"), remove("b")], t0)));
        assert_eq!(p.batch(false), None);
        // Later expectations do not hold anything back.
        p.take(SourceEvent::Expect(["late".into()].into()));
        p.take(changes(&["c"], t0));
        assert_eq!(p.batch(false), Some((vec![remove("c")], t0)));
    }

    #[test]
    fn an_empty_source_still_gets_a_first_snapshot() {
        let mut p = Pending::default();
        p.take(SourceEvent::Expect(["manifests".into()].into()));
        p.take(SourceEvent::Synced("manifests".into()));
        assert!(p.batch(true).is_some_and(|(c, _)| c.is_empty()));
        assert_eq!(p.batch(false), None);
    }
}
