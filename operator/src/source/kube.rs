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
//!
//! Which SMI kinds are served can change while the operator runs (CRDs installed after it, by a
//! GitOps tool, or deleted): [`SmiSupervisor`] re-discovers them when an SMI CRD changes (a
//! metadata-only watch of CustomResourceDefinitions), when a watcher gets 404, and on a timer,
//! and starts, moves or stops their watchers accordingly.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::Change;
use crate::model::{ClusterObject, ObjectKey};
use crate::shutdown::Shutdown;

/// What a Kubernetes watcher reports to the runtime.
#[derive(Debug)]
pub enum SourceEvent {
    /// Changes to apply together, and when the first of them was observed.
    Changes {
        changes: Vec<Change>,
        observed_at: Instant,
    },
    /// The named watcher finished its first complete listing (or stopped for good: its SMI
    /// kind is not served anymore).
    Synced(String),
    /// The SMI kinds not watched now (CRD name → why); sent at start and on every change.
    Unwatched(BTreeMap<String, String>),
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
    pub unwatched_smi_kinds: Gauge,
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
        registry.register(
            "unwatched_smi_kinds",
            "SMI kinds not watched because the API server does not serve them (CRD missing)",
            self.unwatched_smi_kinds.clone(),
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

/// One SMI kind weft reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmiKind {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl SmiKind {
    /// `<plural>.<group>`: the name of its CRD, and of its watcher.
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    fn is(&self, ar: &ApiResource) -> bool {
        ar.group == self.group && ar.kind == self.kind
    }
}

/// The SMI kinds weft reads.
pub const SMI_KINDS: [SmiKind; 5] = [
    SmiKind {
        group: "split.smi-spec.io",
        kind: "TrafficSplit",
        plural: "trafficsplits",
    },
    SmiKind {
        group: "access.smi-spec.io",
        kind: "TrafficTarget",
        plural: "traffictargets",
    },
    SmiKind {
        group: "specs.smi-spec.io",
        kind: "HTTPRouteGroup",
        plural: "httproutegroups",
    },
    SmiKind {
        group: "specs.smi-spec.io",
        kind: "TCPRoute",
        plural: "tcproutes",
    },
    SmiKind {
        group: "specs.smi-spec.io",
        kind: "UDPRoute",
        plural: "udproutes",
    },
];

/// Why an SMI kind that is not served is not watched (`/ready`, `/status`).
pub const NOT_SERVED: &str =
    "not served by the API server (is its CRD installed and Established?); watched as soon as it is";

/// Whether a CustomResourceDefinition name is one of an SMI group's.
fn is_smi_crd(name: &str) -> bool {
    SMI_KINDS
        .iter()
        .any(|k| name.strip_suffix(k.group).is_some_and(|p| p.ends_with('.')))
}

/// Decides what to watch by asking the API server what it serves: EndpointSlice v1 or core
/// Endpoints, and the preferred version of each SMI kind. SMI kinds whose CRDs are missing are
/// left out with a warning; [`run`] keeps looking for them and watches each as soon as it is
/// served.
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
    match with_retry("SMI API groups", || discover_smi(client)).await {
        Ok(served) => {
            for (k, s) in SMI_KINDS.iter().zip(served) {
                match s {
                    Some(ar) => out.push(Watched::Smi(ar)),
                    None => tracing::warn!(
                        crd = %k.crd_name(),
                        "SMI kind not served (is the CRD installed?); watching for it"
                    ),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "SMI discovery failed; retrying in the background"),
    }
    out
}

/// Asks the API server at which version it serves each of [`SMI_KINDS`] (`None`: not served).
async fn discover_smi(client: &Client) -> Result<Vec<Option<ApiResource>>, kube::Error> {
    let mut groups: Vec<&str> = SMI_KINDS.iter().map(|k| k.group).collect();
    groups.dedup();
    let found = kube::Discovery::new(client.clone())
        .filter(&groups)
        .run()
        .await?;
    Ok(SMI_KINDS
        .iter()
        .map(|k| {
            let g = found.get(k.group)?;
            // The group's preferred version first, then the others by priority.
            let preferred = g.preferred_version_or_latest().to_string();
            let versions: Vec<Vec<ApiResource>> = std::iter::once(preferred.as_str())
                .chain(g.versions().filter(|v| *v != preferred))
                .map(|v| {
                    g.versioned_resources(v)
                        .into_iter()
                        .map(|(ar, _)| ar)
                        .collect()
                })
                .collect();
            first_serving(&versions, k)
        })
        .collect())
}

/// The first resource of `kind` in `versions` (each a version's resources, best first).
fn first_serving(versions: &[Vec<ApiResource>], kind: &SmiKind) -> Option<ApiResource> {
    versions
        .iter()
        .flat_map(|v| v.iter())
        .find(|ar| kind.is(ar))
        .cloned()
}

/// Whether a discovery error says nothing about what is served (the server did not answer, or
/// answered that it is unavailable).
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        // A definite answer read from the server ("no such group", ...).
        kube::Error::Discovery(_) => false,
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

/// Runs a watcher for each of `watched` until shutdown, sending batches to `tx`, and keeps the
/// SMI kinds in step with what the API server serves (see [`SmiSupervisor`]).
pub async fn run(
    client: Client,
    watched: Vec<Watched>,
    tx: mpsc::Sender<SourceEvent>,
    metrics: SourceMetrics,
    shutdown: Shutdown,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut smi = Vec::new();
    for w in watched {
        let name = w.name();
        let tx = tx.clone();
        let metrics = metrics.clone();
        let client = client.clone();
        let ctl = WatchCtl::default();
        match w {
            Watched::Namespaces => tasks.spawn(discard(watch_typed::<core::Namespace>(
                Api::all(client),
                name,
                tx,
                metrics,
                ctl,
            ))),
            Watched::ServiceAccounts => tasks.spawn(discard(watch_typed::<core::ServiceAccount>(
                Api::all(client),
                name,
                tx,
                metrics,
                ctl,
            ))),
            Watched::Pods => tasks.spawn(discard(watch_typed::<core::Pod>(
                Api::all(client),
                name,
                tx,
                metrics,
                ctl,
            ))),
            Watched::Services => tasks.spawn(discard(watch_typed::<core::Service>(
                Api::all(client),
                name,
                tx,
                metrics,
                ctl,
            ))),
            Watched::EndpointSlices => {
                tasks.spawn(discard(watch_typed::<
                    k8s_openapi::api::discovery::v1::EndpointSlice,
                >(
                    Api::all(client), name, tx, metrics, ctl
                )))
            }
            Watched::Endpoints => tasks.spawn(discard(watch_typed::<core::Endpoints>(
                Api::all(client),
                name,
                tx,
                metrics,
                ctl,
            ))),
            Watched::Smi(ar) => {
                smi.push(ar);
                continue;
            }
        };
    }
    let (notes_tx, notes_rx) = mpsc::channel(16);
    tasks.spawn(watch_crds(
        client.clone(),
        notes_tx.clone(),
        metrics.clone(),
    ));
    let supervisor = SmiSupervisor::new(client, smi, tx, metrics, notes_tx, notes_rx);
    let mut stop = shutdown;
    tokio::select! {
        _ = supervisor.run() => {}
        _ = stop.triggered() => {}
    }
    tasks.shutdown().await;
}

async fn discard<T>(f: impl std::future::Future<Output = T>) {
    f.await;
}

/// What SMI kinds' watchers and the CRD watcher tell the [`SmiSupervisor`].
#[derive(Debug)]
enum Note {
    /// An SMI group's CRD changed (or the CRD watch re-listed): what is served may have changed.
    Crds,
    /// An SMI watcher got `404 Not Found`: its kind may not be served anymore.
    NotFound,
}

/// Watches CustomResourceDefinitions (metadata only) and notes changes of the SMI groups' ones.
/// Needs `list`/`watch` on `customresourcedefinitions`; without them the supervisor still
/// re-discovers by polling.
async fn watch_crds(client: Client, notes: mpsc::Sender<Note>, metrics: SourceMetrics) {
    let labels = ResourceLabels {
        resource: "customresourcedefinitions".to_string(),
    };
    let api: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        let hint = match item {
            Err(e) => {
                metrics.watch_errors.get_or_create(&labels).inc();
                if failing {
                    tracing::debug!(error = %e, "CustomResourceDefinition watch error; retrying with backoff");
                } else if is_forbidden(&e) {
                    tracing::warn!(error = %e, "not allowed to watch CustomResourceDefinitions (grant list/watch on customresourcedefinitions); SMI CRDs are looked for by polling meanwhile");
                } else {
                    tracing::warn!(error = %e, "CustomResourceDefinition watch error; retrying with backoff, SMI CRDs are looked for by polling meanwhile");
                }
                failing = true;
                false
            }
            Ok(Event::InitDone) => {
                failing = false;
                true
            }
            Ok(Event::Apply(m)) | Ok(Event::Delete(m)) => {
                failing = false;
                m.metadata.name.as_deref().is_some_and(is_smi_crd)
            }
            Ok(Event::Init) | Ok(Event::InitApply(_)) => false,
        };
        // A full queue already holds a note that makes the supervisor look.
        if hint && notes.try_send(Note::Crds).is_err() && notes.is_closed() {
            return;
        }
    }
}

/// When the [`SmiSupervisor`] asks discovery again which SMI kinds are served.
#[derive(Debug)]
struct Rediscovery {
    next: Instant,
    /// The wait after the next run that leaves a kind missing (doubles up to [`Self::MAX`]).
    delay: Duration,
    last_run: Option<Instant>,
}

impl Rediscovery {
    /// First wait while something is missing.
    const FIRST: Duration = Duration::from_secs(1);
    /// Longest wait while something is missing (the poll that finds CRDs without a CRD watch).
    const MAX: Duration = Duration::from_secs(30);
    /// Wait when every kind is served (a safety net for missed CRD changes).
    const SETTLED: Duration = Duration::from_secs(300);
    /// Hints (a CRD event) are acted on this much later, so a burst becomes one look.
    const DEBOUNCE: Duration = Duration::from_millis(200);
    /// Least time between two runs, whatever the hints.
    const MIN_GAP: Duration = Duration::from_secs(1);

    fn new(now: Instant, all_served: bool) -> Self {
        let mut r = Rediscovery {
            next: now,
            delay: Self::FIRST,
            last_run: None,
        };
        r.settle(now, all_served);
        r
    }

    fn settle(&mut self, now: Instant, all_served: bool) {
        if all_served {
            self.next = now + Self::SETTLED;
            self.delay = Self::FIRST;
        } else {
            self.next = now + self.delay;
            self.delay = (self.delay * 2).min(Self::MAX);
        }
    }

    /// Something suggests that what is served changed: look soon, and retry quickly after.
    fn hint(&mut self, now: Instant) {
        let mut at = now + Self::DEBOUNCE;
        if let Some(last) = self.last_run {
            at = at.max(last + Self::MIN_GAP);
        }
        self.next = self.next.min(at);
        self.delay = Self::FIRST;
    }

    /// Discovery ran at `now`: `answered` whether it got an answer, `all_served` whether every
    /// kind is served.
    fn ran(&mut self, now: Instant, answered: bool, all_served: bool) {
        self.last_run = Some(now);
        self.settle(now, answered && all_served);
    }
}

/// What to do with one SMI kind's watcher, given what discovery says.
#[derive(Debug, PartialEq)]
enum Step {
    Keep,
    Start(ApiResource),
    /// Served at another version (or resource name): watch that instead.
    Restart(ApiResource),
    /// Not served anymore: stop watching, its objects are gone.
    Stop,
}

fn step(current: Option<&ApiResource>, served: Option<&ApiResource>) -> Step {
    match (current, served) {
        (None, None) => Step::Keep,
        (None, Some(ar)) => Step::Start(ar.clone()),
        (Some(_), None) => Step::Stop,
        (Some(cur), Some(ar)) if cur.api_version == ar.api_version && cur.plural == ar.plural => {
            Step::Keep
        }
        (Some(_), Some(ar)) => Step::Restart(ar.clone()),
    }
}

/// How long discovery must keep saying that a watched kind is not served before its watcher is
/// stopped and its objects removed: a restarting API server can serve requests before it has
/// loaded its CRDs, and a brief absence must not strip every split from the proxies.
const GONE_CONFIRM: Duration = Duration::from_secs(5);

/// Whether a watched kind that discovery says is not served (now, and since `since` if that is
/// set) is gone for good; starts the clock on the first such answer.
fn confirm_gone(since: &mut Option<Instant>, now: Instant) -> bool {
    match since {
        Some(t) => now.duration_since(*t) >= GONE_CONFIRM,
        None => {
            *since = Some(now);
            false
        }
    }
}

/// A running watcher of one SMI kind (aborted when dropped).
struct Running {
    ar: ApiResource,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Known>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Running {
    /// Stops the watcher; returns what it had reported (and not removed).
    async fn stop(mut self) -> Known {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.unwrap_or_default()
    }
}

/// Keeps one watcher per served SMI kind: starts a kind's watcher once discovery says it is
/// served, moves it to another version when the preferred one changes, and stops it (removing
/// its objects from the model) once discovery says the kind is gone.
///
/// Discovery runs on hints (an SMI CRD changed, a watcher got 404) and on a timer: with
/// backoff from 1 s to 30 s while a kind is missing, every 5 minutes otherwise. A watched kind
/// is dropped only once discovery has said it is not served for [`GONE_CONFIRM`].
struct SmiSupervisor {
    client: Client,
    tx: mpsc::Sender<SourceEvent>,
    metrics: SourceMetrics,
    notes_tx: mpsc::Sender<Note>,
    notes_rx: mpsc::Receiver<Note>,
    /// One per [`SMI_KINDS`] entry.
    running: Vec<Option<Running>>,
    initial: Vec<ApiResource>,
    /// What was last reported as unwatched.
    reported: Option<BTreeMap<String, String>>,
    /// Why the last discovery got no answer, if it did not.
    failed: Option<String>,
    /// Per kind: since when discovery says a watched kind is not served (see [`confirm_gone`]).
    gone_since: Vec<Option<Instant>>,
}

impl SmiSupervisor {
    fn new(
        client: Client,
        initial: Vec<ApiResource>,
        tx: mpsc::Sender<SourceEvent>,
        metrics: SourceMetrics,
        notes_tx: mpsc::Sender<Note>,
        notes_rx: mpsc::Receiver<Note>,
    ) -> Self {
        SmiSupervisor {
            client,
            tx,
            metrics,
            notes_tx,
            notes_rx,
            running: SMI_KINDS.iter().map(|_| None).collect(),
            initial,
            reported: None,
            failed: None,
            gone_since: SMI_KINDS.iter().map(|_| None).collect(),
        }
    }

    fn all_served(&self) -> bool {
        self.running.iter().all(Option::is_some)
    }

    async fn run(mut self) {
        for ar in std::mem::take(&mut self.initial) {
            if let Some(i) = SMI_KINDS.iter().position(|k| k.is(&ar)) {
                self.running[i] = Some(self.spawn(ar, Known::new()));
            }
        }
        if !self.report().await {
            return;
        }
        let mut schedule = Rediscovery::new(Instant::now(), self.all_served());
        loop {
            let sleep = tokio::time::sleep_until(schedule.next.into());
            tokio::select! {
                _ = sleep => {}
                note = self.notes_rx.recv() => {
                    if let Some(note) = note {
                        tracing::debug!(?note, "looking again for SMI kinds");
                        schedule.hint(Instant::now());
                    }
                    continue;
                }
                _ = self.tx.closed() => return,
            }
            let answer = discover_smi(&self.client).await;
            let answered = answer.is_ok();
            match answer {
                Ok(served) => {
                    self.failed = None;
                    for (i, s) in served.iter().enumerate() {
                        if !self.apply(i, s.as_ref()).await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SMI discovery failed; keeping the current watches");
                    self.failed = Some(e.to_string());
                }
            }
            if !self.report().await {
                return;
            }
            let now = Instant::now();
            schedule.ran(now, answered, self.all_served());
            // Look again when a disappearance can be confirmed.
            if let Some(first) = self.gone_since.iter().flatten().min() {
                schedule.next = schedule
                    .next
                    .min((*first + GONE_CONFIRM).max(now + Rediscovery::MIN_GAP));
            }
        }
    }

    fn spawn(&self, ar: ApiResource, known: Known) -> Running {
        let (stop, stop_rx) = oneshot::channel();
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let name = format!("{}.{}", ar.plural, ar.group);
        let ctl = WatchCtl {
            known,
            stop: Some(stop_rx),
            notes: Some(self.notes_tx.clone()),
        };
        let handle = tokio::spawn(watch_typed::<DynamicObject>(
            api,
            name,
            self.tx.clone(),
            self.metrics.clone(),
            ctl,
        ));
        Running {
            ar,
            stop: Some(stop),
            handle,
        }
    }

    /// Brings kind `i` in line with discovery; false once the runtime is gone.
    async fn apply(&mut self, i: usize, served: Option<&ApiResource>) -> bool {
        let crd = SMI_KINDS[i].crd_name();
        let step = step(self.running[i].as_ref().map(|r| &r.ar), served);
        if step != Step::Stop {
            self.gone_since[i] = None;
        } else {
            let first = self.gone_since[i].is_none();
            if !confirm_gone(&mut self.gone_since[i], Instant::now()) {
                if first {
                    tracing::info!(crd = %crd, "SMI kind no longer in discovery; confirming before its objects are removed");
                }
                return true;
            }
        }
        match step {
            Step::Keep => true,
            Step::Start(ar) => {
                tracing::info!(crd = %crd, version = %ar.version, "SMI kind served; watching it");
                self.running[i] = Some(self.spawn(ar, Known::new()));
                true
            }
            Step::Restart(ar) => {
                let known = match self.running[i].take() {
                    Some(r) => r.stop().await,
                    None => Known::new(),
                };
                tracing::info!(crd = %crd, version = %ar.version, "SMI kind now preferred at another version; watching that");
                // The new watcher's first listing removes what the old one reported and it
                // does not list.
                self.running[i] = Some(self.spawn(ar, known));
                true
            }
            Step::Stop => {
                self.gone_since[i] = None;
                let Some(r) = self.running[i].take() else {
                    return true;
                };
                let name = format!("{}.{}", r.ar.plural, r.ar.group);
                let known = r.stop().await;
                tracing::warn!(crd = %crd, objects = known.len(), "SMI kind not served anymore (CRD deleted?); its objects are removed");
                let changes: Vec<Change> = known.into_values().map(Change::Remove).collect();
                if !changes.is_empty()
                    && self
                        .tx
                        .send(SourceEvent::Changes {
                            changes,
                            observed_at: Instant::now(),
                        })
                        .await
                        .is_err()
                {
                    return false;
                }
                // Nothing left to wait for, should the first snapshot still wait for it.
                self.tx.send(SourceEvent::Synced(name)).await.is_ok()
            }
        }
    }

    /// Reports the unwatched kinds when they changed; false once the runtime is gone.
    async fn report(&mut self) -> bool {
        let unwatched: BTreeMap<String, String> = SMI_KINDS
            .iter()
            .zip(&self.running)
            .filter(|(_, r)| r.is_none())
            .map(|(k, _)| {
                let why = match &self.failed {
                    Some(e) => format!("cannot tell whether it is served: discovery failed: {e}"),
                    None => NOT_SERVED.to_string(),
                };
                (k.crd_name(), why)
            })
            .collect();
        if self.reported.as_ref() == Some(&unwatched) {
            return true;
        }
        self.metrics.unwatched_smi_kinds.set(unwatched.len() as i64);
        self.reported = Some(unwatched.clone());
        self.tx
            .send(SourceEvent::Unwatched(unwatched))
            .await
            .is_ok()
    }
}

/// What a watcher reported and has not removed: `(namespace, name)` → key.
type Known = HashMap<(String, String), ObjectKey>;

/// Extra controls of a watcher (SMI kinds, which the supervisor replaces and stops).
#[derive(Default)]
struct WatchCtl {
    /// Objects reported by a predecessor: removed by the first listing if not listed.
    known: Known,
    /// Stops the watcher, which then returns what it reported.
    stop: Option<oneshot::Receiver<()>>,
    /// Where to note that the resource answers 404.
    notes: Option<mpsc::Sender<Note>>,
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
fn is_not_found(e: &watcher::Error) -> bool {
    watch_error_code(e) == Some(404)
}

fn is_forbidden(e: &watcher::Error) -> bool {
    watch_error_code(e) == Some(403)
}

/// Watches one resource: re-lists become one batch (with removals of vanished objects); later
/// events are sent one by one (the runtime coalesces what is queued).
///
/// Returns what it reported and did not remove when stopped (see [`WatchCtl`]) or when `tx`
/// closes.
async fn watch_typed<K>(
    api: Api<K>,
    name: String,
    tx: mpsc::Sender<SourceEvent>,
    metrics: SourceMetrics,
    ctl: WatchCtl,
) -> Known
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
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

    fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    #[test]
    fn smi_crd_names() {
        assert_eq!(SMI_KINDS[0].crd_name(), "trafficsplits.split.smi-spec.io");
        assert!(is_smi_crd("trafficsplits.split.smi-spec.io"));
        assert!(is_smi_crd("tcproutes.specs.smi-spec.io"));
        assert!(is_smi_crd("somethingnew.specs.smi-spec.io"));
        assert!(!is_smi_crd("specs.smi-spec.io"));
        assert!(!is_smi_crd("foo.notsplit.smi-spec.io"));
        assert!(!is_smi_crd("certificates.cert-manager.io"));
    }

    #[test]
    fn a_kind_is_watched_at_the_first_version_that_serves_it() {
        let tcp = SMI_KINDS[3];
        let v4 = vec![ar(
            "specs.smi-spec.io",
            "v1alpha4",
            "HTTPRouteGroup",
            "httproutegroups",
        )];
        let v3 = vec![
            ar(
                "specs.smi-spec.io",
                "v1alpha3",
                "HTTPRouteGroup",
                "httproutegroups",
            ),
            ar("specs.smi-spec.io", "v1alpha3", "TCPRoute", "tcproutes"),
        ];
        let v2 = vec![ar("specs.smi-spec.io", "v1alpha2", "TCPRoute", "tcproutes")];
        // Not in the preferred version: the next one that has it.
        let got = first_serving(&[v4.clone(), v3.clone(), v2], &tcp).unwrap();
        assert_eq!(got.api_version, "specs.smi-spec.io/v1alpha3");
        assert_eq!(
            first_serving(&[v4.clone(), v3], &SMI_KINDS[2])
                .unwrap()
                .version,
            "v1alpha4"
        );
        assert_eq!(first_serving(&[v4], &tcp), None);
        assert_eq!(first_serving(&[], &tcp), None);
        // Same kind name in another group does not count.
        let other = vec![ar("example.com", "v1", "TCPRoute", "tcproutes")];
        assert_eq!(first_serving(&[other], &tcp), None);
    }

    #[test]
    fn steps_follow_discovery() {
        let v3 = ar(
            "split.smi-spec.io",
            "v1alpha3",
            "TrafficSplit",
            "trafficsplits",
        );
        let v4 = ar(
            "split.smi-spec.io",
            "v1alpha4",
            "TrafficSplit",
            "trafficsplits",
        );
        assert_eq!(step(None, None), Step::Keep);
        assert_eq!(step(None, Some(&v4)), Step::Start(v4.clone()));
        assert_eq!(step(Some(&v4), Some(&v4)), Step::Keep);
        assert_eq!(step(Some(&v3), Some(&v4)), Step::Restart(v4.clone()));
        assert_eq!(step(Some(&v4), None), Step::Stop);
    }

    #[test]
    fn a_kind_is_gone_once_discovery_says_so_for_a_while() {
        let t0 = Instant::now();
        let mut since = None;
        assert!(
            !confirm_gone(&mut since, t0),
            "the first answer starts the clock"
        );
        assert_eq!(since, Some(t0));
        assert!(!confirm_gone(&mut since, t0 + Duration::from_secs(1)));
        assert!(confirm_gone(&mut since, t0 + GONE_CONFIRM));
    }

    #[test]
    fn rediscovery_backs_off_while_missing_and_settles_when_all_served() {
        let t0 = Instant::now();
        let mut r = Rediscovery::new(t0, false);
        assert_eq!(r.next, t0 + Duration::from_secs(1));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            now = r.next;
            r.ran(now, true, false);
            waits.push((r.next - now).as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30, 30]);
        // An unanswered discovery also backs off.
        r.ran(now, false, true);
        assert_eq!(r.next - now, Rediscovery::MAX);
        // Everything served: the slow safety net.
        r.ran(now, true, true);
        assert_eq!(r.next - now, Rediscovery::SETTLED);
        assert_eq!(r.delay, Rediscovery::FIRST);
        assert_eq!(Rediscovery::new(t0, true).next, t0 + Rediscovery::SETTLED);
    }

    #[test]
    fn hints_look_soon_but_never_more_than_once_a_second() {
        let t0 = Instant::now();
        let mut r = Rediscovery::new(t0, true);
        r.hint(t0);
        assert_eq!(r.next, t0 + Rediscovery::DEBOUNCE);
        // A burst of hints does not push the look later.
        r.hint(t0 + Duration::from_millis(150));
        assert_eq!(r.next, t0 + Rediscovery::DEBOUNCE);
        // Right after a run, the next look waits for the minimum gap.
        let ran = t0 + Duration::from_secs(1);
        r.ran(ran, true, true);
        r.hint(ran);
        assert_eq!(r.next, ran + Rediscovery::MIN_GAP);
        // And a hint resets the backoff: still missing after it, look again in 1 s.
        let mut r = Rediscovery::new(t0, false);
        for i in 1..6 {
            r.ran(t0 + Duration::from_secs(i * 10), true, false);
        }
        let now = t0 + Duration::from_secs(100);
        r.hint(now);
        r.ran(now, true, false);
        assert_eq!(r.next - now, Rediscovery::FIRST);
    }

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status::failure("x", "y").with_code(code))
    }

    #[test]
    fn not_found_and_transient_errors() {
        assert!(is_not_found(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(404))
        )));
        assert!(is_not_found(&watcher::Error::WatchError(status(404))));
        assert!(!is_not_found(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(403))
        )));
        assert!(!is_not_found(&watcher::Error::NoResourceVersion));
        assert!(is_forbidden(&watcher::Error::WatchStartFailed(
            kube::Error::Api(status(403))
        )));
        assert!(is_transient(&kube::Error::Api(status(503))));
        assert!(is_transient(&kube::Error::Api(status(429))));
        assert!(!is_transient(&kube::Error::Api(status(404))));
        // "No such API group" is an answer, not an outage: the operator must not wait on it.
        assert!(!is_transient(&kube::Error::Discovery(
            kube::error::DiscoveryError::MissingApiGroup("split.smi-spec.io".into())
        )));
    }
}
