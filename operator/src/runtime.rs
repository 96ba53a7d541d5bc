//! Wiring: sources → model → compiler → snapshot → discovery, plus admin, status and webhooks.
//!
//! [`Runtime::start`] binds every listener (port 0 works, for tests), spawns the tasks and
//! returns at once; [`Runtime::shutdown`] + [`Runtime::wait`] drain them.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::admin::{AdminState, Health};
use crate::compile::{ChangedKeys, CompileOptions, Compiled, Compiler};
use crate::discovery::{
    snapshot_channel, DiscoveryMetrics, DiscoveryService, ProxyRegistry, Published, ServiceOptions,
    SnapshotTx,
};
use crate::identity::{
    CaStore, IdentityOptions, IdentityService, PodDirectory, TokenAuthenticator,
};
use crate::leader::LeaderOptions;
use crate::model::{Kind, Model, ObjectKey};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::source::kube::{SourceEvent, SourceMetrics};
use crate::source::manifests::{DirWatcher, ManifestDir, WatchOptions};
use crate::source::Change;
use crate::status::writer::{StatusMetrics, StatusWriter};
use crate::status::{ObjectRef, ObjectStatus, StatusBoard};
use crate::webhook::{TlsPem, Validator, WebhookState};

/// Where cluster state comes from.
#[derive(Clone)]
pub enum SourceConfig {
    /// `--manifests DIR`.
    Manifests { dir: PathBuf, watch: WatchOptions },
    /// The Kubernetes API.
    Kubernetes { client: kube::Client },
}

/// How proxies get certificates (the Identity service on the discovery port).
#[derive(Clone)]
pub struct IdentityConfig {
    pub ca: Arc<CaStore>,
    pub authenticator: Arc<dyn TokenAuthenticator>,
    pub options: IdentityOptions,
    /// TLS on the discovery port with a certificate from this issuer (plaintext still accepted
    /// unless `require_tls`); `None`: plaintext only.
    pub control_tls: Option<crate::identity::ControlTlsOptions>,
}

/// The webhook server's settings.
#[derive(Clone)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    pub tls: TlsPem,
    pub validator: Validator,
    pub inject: Option<Arc<crate::inject::InjectSettings>>,
}

/// Everything the runtime needs.
#[derive(Clone)]
pub struct RuntimeConfig {
    pub source: SourceConfig,
    pub discovery_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub compile: CompileOptions,
    pub identity: Option<IdentityConfig>,
    pub webhook: Option<WebhookConfig>,
    /// Kubernetes only: elect a leader to write status and Events (else this replica writes).
    pub leader: Option<LeaderOptions>,
    /// Kubernetes only: the name of this replica in Events.
    pub instance: Option<String>,
}

impl RuntimeConfig {
    /// A manifests-mode config on loopback with OS-assigned ports (for tests and the demo).
    pub fn manifests_on_loopback(dir: impl Into<PathBuf>) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        RuntimeConfig {
            source: SourceConfig::Manifests {
                dir: dir.into(),
                watch: WatchOptions::default(),
            },
            discovery_addr: any,
            admin_addr: any,
            compile: CompileOptions::default(),
            identity: None,
            webhook: None,
            leader: None,
            instance: None,
        }
    }
}

/// Why the runtime could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("discovery TLS: {0}")]
    ControlTls(#[from] crate::identity::ControlTlsError),
    #[error("webhook TLS: {0}")]
    WebhookTls(#[from] crate::webhook::WebhookError),
    #[error("discovery server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("manifests directory {0}: {1}")]
    Manifests(PathBuf, String),
}

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

/// A running operator.
pub struct Runtime {
    /// Bound addresses (useful with port 0).
    pub discovery_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub webhook_addr: Option<SocketAddr>,
    pub health: Arc<Health>,
    pub proxies: Arc<ProxyRegistry>,
    pub status: Arc<StatusBoard>,
    snapshots: crate::discovery::SnapshotRx,
    trigger: ShutdownTrigger,
    tasks: JoinSet<Result<(), RuntimeError>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Bind { what, addr, source })
}

impl Runtime {
    /// Binds the listeners and starts every task.
    pub async fn start(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let (trigger, shutdown) = Shutdown::new();
        let health = Arc::new(Health::new());
        let proxies = Arc::new(ProxyRegistry::new());
        let board = Arc::new(StatusBoard::new());
        let (snap_tx, snap_rx) = snapshot_channel();

        let mut root = Registry::default();
        let discovery_metrics = DiscoveryMetrics::default();
        let runtime_metrics = RuntimeMetrics::default();
        let source_metrics = SourceMetrics::default();
        let status_metrics = StatusMetrics::default();
        {
            let sub = root.sub_registry_with_prefix("weft_operator");
            discovery_metrics.register(sub);
            runtime_metrics.register(sub);
            source_metrics.register(sub);
            status_metrics.register(sub);
        }

        let discovery_listener = bind("discovery", config.discovery_addr).await?;
        let admin_listener = bind("admin", config.admin_addr).await?;
        let discovery_addr = discovery_listener
            .local_addr()
            .unwrap_or(config.discovery_addr);
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin_addr);

        let identity = config.identity.as_ref().map(|i| {
            // Never issue to a workload the identity the discovery server itself carries.
            let mut options = i.options.clone();
            if let Some(tls) = &i.control_tls {
                options.reserved.push(tls.identity.clone());
            }
            let service = IdentityService::new(i.ca.clone(), i.authenticator.clone(), options);
            service.register_metrics(&mut root);
            service
        });
        let control_tls = match &config.identity {
            Some(IdentityConfig {
                ca,
                control_tls: Some(opts),
                ..
            }) => Some(crate::identity::ControlTls::new(ca.clone(), opts.clone())?),
            _ => None,
        };
        let registry = Arc::new(root);
        let mut tasks = JoinSet::new();

        // Discovery (+ Identity) gRPC.
        let service = DiscoveryService::new(
            snap_rx.clone(),
            proxies.clone(),
            discovery_metrics,
            shutdown.clone(),
            ServiceOptions {
                trust_domain: config.compile.trust_domain.clone(),
                require_client_identity: config
                    .identity
                    .as_ref()
                    .and_then(|i| i.control_tls.as_ref())
                    .is_some_and(|t| t.require_discovery_identity),
                ..ServiceOptions::default()
            },
        );
        {
            let health = health.clone();
            let stop = shutdown.wait();
            tasks.spawn(async move {
                let router = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .http2_keepalive_interval(Some(Duration::from_secs(30)))
                    .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                    .add_service(service.into_server())
                    .add_optional_service(identity.map(|i| i.into_server()));
                health.set_serving(true);
                let incoming =
                    crate::identity::control_tls::incoming(discovery_listener, control_tls);
                let result = router.serve_with_incoming_shutdown(incoming, stop).await;
                health.set_serving(false);
                result.map_err(RuntimeError::from)
            });
        }

        // Admin HTTP.
        {
            let state = AdminState {
                health: health.clone(),
                metrics: registry,
                proxies: proxies.clone(),
                status: board.clone(),
            };
            let stop = shutdown.clone();
            tasks.spawn(async move {
                crate::admin::serve(admin_listener, state, stop).await;
                Ok(())
            });
        }

        // Webhooks.
        let mut webhook_addr = None;
        let client = match &config.source {
            SourceConfig::Kubernetes { client } => Some(client.clone()),
            SourceConfig::Manifests { .. } => None,
        };
        if let Some(w) = &config.webhook {
            let acceptor = w.tls.acceptor()?;
            let listener = bind("webhook", w.addr).await?;
            webhook_addr = Some(listener.local_addr().unwrap_or(w.addr));
            let state = WebhookState {
                validator: w.validator.clone(),
                inject: w.inject.clone(),
                client: client.clone(),
            };
            let stop = shutdown.clone();
            tasks.spawn(async move {
                crate::webhook::serve(listener, acceptor, state, stop).await;
                Ok(())
            });
        }

        // Identity issuer reloads.
        if let Some(i) = &config.identity {
            let ca = i.ca.clone();
            let mut stop = shutdown.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = ca.watch(Duration::from_secs(10)) => {}
                    _ = stop.triggered() => {}
                }
                Ok(())
            });
        }

        // A manifest folder has no endpoints controller: derive endpoints from Pods where a
        // Service has no EndpointSlice/Endpoints in it (CONTRACT.md, `--manifests`).
        let mut model = Model::new();
        model.derive_endpoints_from_pods = matches!(config.source, SourceConfig::Manifests { .. });
        let reconciler = Reconciler {
            model,
            compiler: Compiler::new(config.compile.clone()),
            generation: 0,
            tx: snap_tx,
            board: board.clone(),
            health: health.clone(),
            metrics: runtime_metrics.clone(),
            statuses: None,
            pods: config
                .identity
                .as_ref()
                .and_then(|i| i.authenticator.pod_directory()),
        };

        match config.source.clone() {
            SourceConfig::Manifests { dir, watch } => {
                if !dir.is_dir() {
                    return Err(RuntimeError::Manifests(dir, "not a directory".to_string()));
                }
                let stop = shutdown.clone();
                tasks.spawn(run_manifests(dir, watch, reconciler, runtime_metrics, stop));
            }
            SourceConfig::Kubernetes { client } => {
                let (status_tx, status_rx) = watch::channel(Arc::new(Vec::new()));
                let mut reconciler = reconciler;
                reconciler.statuses = Some(status_tx);
                let (leading_tx, leading_rx) = watch::channel(config.leader.is_none());
                // Without an election the sender must outlive the writer: a dropped sender
                // would end the writer's loop before it wrote anything.
                let mut always_leading = None;
                if let Some(options) = config.leader.clone() {
                    let stop = shutdown.clone();
                    let client = client.clone();
                    tasks.spawn(async move {
                        crate::leader::run(client, options, leading_tx, stop).await;
                        Ok(())
                    });
                } else {
                    always_leading = Some(leading_tx);
                }
                let writer =
                    StatusWriter::new(client.clone(), config.instance.clone(), status_metrics);
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    let _always_leading = always_leading;
                    run_status_writer(writer, status_rx, leading_rx, stop).await;
                    Ok(())
                });
                let stop = shutdown.clone();
                tasks.spawn(run_kubernetes(client, reconciler, source_metrics, stop));
            }
        }

        Ok(Runtime {
            discovery_addr,
            admin_addr,
            webhook_addr,
            health,
            proxies,
            status: board,
            snapshots: snap_rx,
            trigger,
            tasks,
        })
    }

    /// The latest published snapshot, if any.
    pub fn snapshot(&self) -> Option<Arc<Published>> {
        self.snapshots.borrow().clone()
    }

    /// A receiver of every published snapshot.
    pub fn subscribe(&self) -> crate::discovery::SnapshotRx {
        self.snapshots.clone()
    }

    /// Asks every task to stop (proxy streams are closed with UNAVAILABLE).
    pub fn shutdown(&self) {
        self.trigger.trigger();
    }

    /// Waits for every task to end; returns the first error.
    pub async fn wait(mut self) -> Result<(), RuntimeError> {
        let mut first = Ok(());
        while let Some(res) = self.tasks.join_next().await {
            match res {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "runtime task failed");
                    // A task failing stops the others.
                    self.trigger.trigger();
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
                Ok(Ok(())) => {}
                Err(e) => tracing::error!(error = %e, "runtime task panicked"),
            }
        }
        first
    }
}

/// Owns the model and the compiler: applies batches of changes, compiles, publishes.
struct Reconciler {
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
}

impl Reconciler {
    /// Applies one batch as a whole, compiles and publishes the result.
    fn apply(&mut self, changes: Vec<Change>, observed_at: Instant) {
        let first = self.generation == 0;
        let mut changed = ChangedKeys::default();
        let mut pods_changed = first;
        for change in changes {
            let key = match change {
                Change::Upsert(o) => self.model.upsert(o),
                Change::Remove(key) => {
                    self.model.remove(&key);
                    key
                }
            };
            pods_changed |= key.kind == Kind::Pod;
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
        self.publish_statuses(&compiled);
    }

    fn publish_statuses(&self, compiled: &Compiled) {
        let statuses = statuses_of(&self.model, compiled);
        let changed = self.board.update(statuses);
        for s in &changed {
            for c in &s.conditions {
                if crate::status::is_problem(c) {
                    tracing::warn!(object = %s.object, condition = %c.type_, status = %c.status, reason = %c.reason, message = %c.message, "status");
                } else {
                    tracing::info!(object = %s.object, condition = %c.type_, status = %c.status, reason = %c.reason, "status");
                }
            }
        }
        if let Some(tx) = &self.statuses {
            tx.send_replace(Arc::new(self.board.all()));
        }
    }
}

/// The API group of an SMI kind.
pub fn smi_group(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::TrafficSplit => Some("split.smi-spec.io"),
        Kind::TrafficTarget => Some("access.smi-spec.io"),
        Kind::HTTPRouteGroup | Kind::TCPRoute | Kind::UDPRoute => Some("specs.smi-spec.io"),
        _ => None,
    }
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

/// The compiler's conditions as [`ObjectStatus`]es, with the group and read apiVersion of each.
pub fn statuses_of(model: &Model, compiled: &Compiled) -> Vec<ObjectStatus> {
    compiled
        .statuses()
        .iter()
        .filter_map(|(key, conditions)| {
            let group = smi_group(key.kind)?;
            let api_version = read_api_version(model, key).unwrap_or_else(|| {
                let version = match key.kind {
                    Kind::TrafficTarget => "v1alpha3",
                    _ => "v1alpha4",
                };
                format!("{group}/{version}")
            });
            Some(ObjectStatus {
                object: ObjectRef {
                    group: group.to_string(),
                    kind: key.kind.as_str().to_string(),
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                },
                api_version,
                conditions: conditions.clone(),
            })
        })
        .collect()
}

async fn run_manifests(
    dir: PathBuf,
    options: WatchOptions,
    mut reconciler: Reconciler,
    metrics: RuntimeMetrics,
    mut shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let mut watcher = match DirWatcher::new(&dir, options.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "no filesystem events; rescanning periodically");
            None
        }
    };
    let mut state = ManifestDir::new(dir.clone()).with_empty_grace(options.empty_grace);
    reconciler.health.track_rescans(options.stuck_after);
    let mut observed_at = Instant::now();
    loop {
        reconciler.health.rescan_started();
        let (back, changes) = tokio::task::spawn_blocking(move || {
            let changes = state.rescan();
            (state, changes)
        })
        .await
        .map_err(|e| RuntimeError::Manifests(dir.clone(), format!("rescan task: {e}")))?;
        reconciler.health.rescan_finished();
        state = back;
        let errors = state.errors();
        metrics.manifest_errors.set(errors.len() as i64);
        reconciler.health.set_source_errors(errors);
        if !changes.is_empty() || reconciler.generation == 0 {
            reconciler.apply(changes, observed_at);
        }
        // An emptied file's grace ending is a reason to rescan too.
        let deadline = state.next_deadline().map(tokio::time::Instant::from_std);
        let next = async {
            let event = async {
                match watcher.as_mut() {
                    Some(w) => w.next().await,
                    None => {
                        tokio::time::sleep(options.rescan_interval).await;
                        None
                    }
                }
            };
            match deadline {
                Some(at) => tokio::select! {
                    e = event => e,
                    _ = tokio::time::sleep_until(at) => None,
                },
                None => event.await,
            }
        };
        tokio::select! {
            _ = shutdown.triggered() => return Ok(()),
            first_event = next => observed_at = first_event_or_now(first_event),
        }
    }
}

fn first_event_or_now(at: Option<Instant>) -> Instant {
    at.unwrap_or_else(Instant::now)
}

async fn run_kubernetes(
    client: kube::Client,
    mut reconciler: Reconciler,
    metrics: SourceMetrics,
    mut shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    // Discovery waits for an unreachable API server; shutdown must not wait for it.
    let watched = tokio::select! {
        w = crate::source::kube::discover(&client) => w,
        _ = shutdown.triggered() => return Ok(()),
    };
    let mut pending_sync: HashSet<String> = watched.iter().map(|w| w.name()).collect();
    let (tx, mut rx) = mpsc::channel(1024);
    let stop = shutdown.clone();
    let sources = tokio::spawn(crate::source::kube::run(client, watched, tx, metrics, stop));
    // Changes received before every watcher listed once are held back: the first snapshot is
    // compiled from a complete view of the cluster.
    let mut held: Vec<Change> = Vec::new();
    let mut held_since: Option<Instant> = None;
    loop {
        let first = tokio::select! {
            _ = shutdown.triggered() => break,
            ev = rx.recv() => match ev { Some(ev) => ev, None => break },
        };
        let mut batch = vec![first];
        // Coalesce whatever else is already queued.
        while batch.len() < 10_000 {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        for ev in batch {
            match ev {
                SourceEvent::Changes {
                    changes,
                    observed_at,
                } => {
                    held.extend(changes);
                    held_since = Some(held_since.map_or(observed_at, |t| t.min(observed_at)));
                }
                SourceEvent::Unwatched(kinds) => {
                    reconciler.health.set_unwatched_kinds(kinds);
                }
                SourceEvent::Synced(name) => {
                    if pending_sync.remove(&name) && pending_sync.is_empty() {
                        tracing::info!("every watch listed; compiling");
                    }
                }
            }
        }
        if pending_sync.is_empty() && (!held.is_empty() || reconciler.generation == 0) {
            let observed_at = held_since.take().unwrap_or_else(Instant::now);
            reconciler.apply(std::mem::take(&mut held), observed_at);
        }
    }
    sources.abort();
    Ok(())
}

/// Writes statuses while this replica leads; rewrites everything when it becomes leader.
async fn run_status_writer(
    mut writer: StatusWriter,
    mut statuses: watch::Receiver<Arc<Vec<ObjectStatus>>>,
    mut leading: watch::Receiver<bool>,
    mut shutdown: Shutdown,
) {
    let mut written: BTreeMap<ObjectRef, ObjectStatus> = BTreeMap::new();
    loop {
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
                let failed: HashSet<String> = errors.iter().map(|e| e.to_string()).collect();
                for s in todo {
                    if !failed.iter().any(|f| f.starts_with(&s.object.to_string())) {
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
        tokio::select! {
            _ = shutdown.triggered() => return,
            r = statuses.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            // Retry failed writes.
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
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
