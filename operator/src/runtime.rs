//! Wiring only: flags → components → tasks. The source feeds the one reconcile loop
//! ([`crate::source::reconcile`]) which compiles and publishes to discovery; admin, status
//! writing, leader election and webhooks run beside it. No domain logic lives here.
//!
//! [`Runtime::start`] binds every listener (port 0 works, for tests), spawns the tasks and
//! returns at once; [`Runtime::shutdown`] + [`Runtime::wait`] drain them.
//!
//! High availability: every replica runs the whole runtime (source, reconcile loop, discovery
//! and identity, webhooks, admin), whether it leads or not, so any replica answers proxies and
//! the API server, and `/ready` means the same on each: the first snapshot is compiled and the
//! discovery and webhook servers accept. Leadership ([`crate::leader`]) gates only the status
//! writer (status conditions and Events), the one part that writes to the cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{AdminState, Health};
use crate::apiserver::{ApiServerState, FrontProxy, ServedGroup};
use crate::compile::{CompileOptions, Compiler};
use crate::discovery::{
    snapshot_channel, DiscoveryMetrics, DiscoveryService, ProxyRegistry, Published, ServiceOptions,
};
use crate::identity::{CaStore, IdentityOptions, IdentityService, TokenAuthenticator};
use crate::leader::LeaderOptions;
use crate::model::Model;
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::source::kube::{KubeSource, SourceMetrics};
use crate::source::manifests::{ManifestsSource, WatchOptions};
use crate::source::reconcile::Reconciler;
use crate::source::{Source, SourceError, SourceTx};
use crate::status::writer::{StatusMetrics, StatusWriter};
use crate::status::StatusBoard;
use crate::trafficmetrics::compute::History;
use crate::trafficmetrics::scrape::{MeshView, ScrapeOptions};
use crate::trafficmetrics::TrafficMetricsApi;
use crate::webhook::{TlsPem, Validator, WebhookState};

pub use crate::source::reconcile::{statuses_of, RuntimeMetrics};

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

/// The aggregated API server's settings (`metrics.smi-spec.io`, plus any other groups).
#[derive(Clone)]
pub struct ApiServerConfig {
    pub addr: SocketAddr,
    /// Serving certificate (the APIService's caBundle must verify it).
    pub tls: TlsPem,
    /// How the front proxy authenticates; `None`: read from the cluster's
    /// `kube-system/extension-apiserver-authentication` ConfigMap at start.
    pub front_proxy: Option<FrontProxy>,
    /// The TrafficMetrics scraper.
    pub scrape: ScrapeOptions,
    /// Groups served beside `metrics.smi-spec.io` (e.g. `tap.weft.io`).
    pub groups: Vec<ServedGroup>,
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
    /// The aggregated API server (TrafficMetrics); `None`: off.
    pub apiserver: Option<ApiServerConfig>,
    /// Kubernetes only: elect a leader to write status and Events (else this replica writes).
    pub leader: Option<LeaderOptions>,
    /// Kubernetes only: the name of this replica in Events.
    pub instance: Option<String>,
    /// Whether proxies that declare on-demand support are served on demand
    /// (`--discovery-mode`).
    pub discovery_mode: crate::discovery::DiscoveryMode,
    /// `--discovery-max-stream-age` (`None`: off); see [`crate::discovery::ServiceOptions`].
    pub discovery_max_stream_age: Option<Duration>,
    /// Tap fan-in (#18; docs/tap.md).
    pub tap: TapOptions,
}

/// The operator's tap fan-in settings.
#[derive(Clone, Debug)]
pub struct TapOptions {
    /// `--admin-token-file`: the token `GET /tap` on the admin port requires (`None`: 403).
    pub admin_token: Option<String>,
    /// The proxies' tap port.
    pub proxy_port: u16,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            admin_token: None,
            proxy_port: crate::tap::PROXY_TAP_PORT,
        }
    }
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
            apiserver: None,
            leader: None,
            instance: None,
            discovery_mode: crate::discovery::DiscoveryMode::PushAll,
            discovery_max_stream_age: Some(crate::discovery::DEFAULT_MAX_STREAM_AGE),
            tap: TapOptions::default(),
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
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("aggregated API server: {0}")]
    ApiServer(#[from] crate::apiserver::ApiServerError),
}

/// A running operator.
pub struct Runtime {
    /// Bound addresses (useful with port 0).
    pub discovery_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub webhook_addr: Option<SocketAddr>,
    pub apiserver_addr: Option<SocketAddr>,
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

        // #18 tap: the operator taps proxies as its own identity, with a client certificate
        // from the mesh issuer (no issuer, no tap).
        let tap_pods = crate::tap::TapDirectory::new();
        let tapper = config.identity.as_ref().and_then(|i| {
            let own = i.control_tls.as_ref()?.identity.clone();
            let cert = Arc::new(crate::tap::cert::TapClientCert::new(i.ca.clone(), own));
            Some(Arc::new(crate::tap::Tapper::new(
                tap_pods.clone(),
                cert,
                config.compile.trust_domain.clone(),
                config.tap.proxy_port,
                config.tap.admin_token.clone(),
            )))
        });

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
                mode: config.discovery_mode,
                max_stream_age: config.discovery_max_stream_age,
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
                tap: tapper.clone(),
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
            let health = health.clone();
            tasks.spawn(async move {
                crate::webhook::serve(listener, acceptor, state, stop).await;
                // `/ready` means "serves discovery and webhooks": not once either stopped.
                health.set_serving(false);
                Ok(())
            });
        }

        // The aggregated API server and the TrafficMetrics scraper it reads.
        let mut apiserver_addr = None;
        let mut mesh_view = None;
        if let Some(a) = &config.apiserver {
            let front = match (&a.front_proxy, &client) {
                (Some(f), _) => f.clone(),
                (None, Some(client)) => FrontProxy::from_cluster(client).await?,
                (None, None) => {
                    return Err(crate::apiserver::ApiServerError::ConfigMap(
                        "no Kubernetes client (manifests mode): give the front proxy's CA".into(),
                    )
                    .into())
                }
            };
            let acceptor = front.acceptor(&a.tls)?;
            let listener = bind("aggregated API", a.addr).await?;
            apiserver_addr = Some(listener.local_addr().unwrap_or(a.addr));
            let (view_tx, view_rx) = watch::channel(Arc::new(MeshView::default()));
            mesh_view = Some(view_tx);
            let history = Arc::new(std::sync::Mutex::new(History::default()));
            let metrics_api =
                TrafficMetricsApi::new(history.clone(), view_rx.clone(), a.scrape.window);
            let mut groups = vec![ServedGroup {
                handler: Arc::new(metrics_api),
                version: crate::trafficmetrics::VERSION,
            }];
            // tap.weft.io: only when the operator can tap (it holds the mesh issuer).
            if let Some(tapper) = &tapper {
                groups.push(ServedGroup {
                    handler: Arc::new(crate::tap::api::TapGroup::new(tapper.clone())),
                    version: crate::tap::api::VERSION,
                });
            }
            groups.extend(a.groups.iter().cloned());
            let state = ApiServerState {
                front_proxy: Arc::new(front),
                groups,
            };
            let stop = shutdown.clone();
            tasks.spawn(async move {
                crate::apiserver::serve(listener, acceptor, state, stop).await;
                Ok(())
            });
            let stop = shutdown.clone();
            let scrape = a.scrape.clone();
            tasks.spawn(async move {
                crate::trafficmetrics::scrape::run(history, view_rx, scrape, stop).await;
                Ok(())
            });
        }

        // Memory given back after the mesh shrinks a lot (operator/src/memory.rs).
        {
            let snapshots = snap_rx.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                crate::memory::give_back_after_shrinks(snapshots, stop).await;
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
        let mut reconciler = Reconciler::new(
            model,
            Compiler::new(config.compile.clone()),
            snap_tx,
            board.clone(),
            health.clone(),
            runtime_metrics.clone(),
        )
        .with_pods(
            config
                .identity
                .as_ref()
                .and_then(|i| i.authenticator.pod_directory()),
        )
        .with_mesh_view(mesh_view)
        .with_tap_pods(Some(tap_pods));

        // One bounded channel from the source to the one reconcile loop.
        let (source_tx, source_rx) = crate::source::channel();
        match config.source.clone() {
            SourceConfig::Manifests { dir, watch } => {
                if !dir.is_dir() {
                    return Err(SourceError::Manifests(dir, "not a directory".to_string()).into());
                }
                let source = ManifestsSource {
                    dir,
                    options: watch,
                    health: health.clone(),
                    errors: runtime_metrics.manifest_errors.clone(),
                };
                spawn_source(&mut tasks, source, source_tx, shutdown.clone());
            }
            SourceConfig::Kubernetes { client } => {
                let (status_tx, status_rx) = watch::channel(Arc::new(Vec::new()));
                reconciler = reconciler.with_statuses(status_tx);
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
                    crate::status::writer::run(writer, status_rx, leading_rx, stop).await;
                    Ok(())
                });
                let source = KubeSource {
                    client,
                    metrics: source_metrics,
                };
                spawn_source(&mut tasks, source, source_tx, shutdown.clone());
            }
        }
        let stop = shutdown.clone();
        tasks.spawn(async move {
            crate::source::reconcile::run(reconciler, source_rx, stop).await;
            Ok(())
        });

        Ok(Runtime {
            discovery_addr,
            admin_addr,
            webhook_addr,
            apiserver_addr,
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

/// Runs `source` as a task of the runtime, feeding the reconcile loop through `tx`.
fn spawn_source(
    tasks: &mut JoinSet<Result<(), RuntimeError>>,
    source: impl Source,
    tx: SourceTx,
    shutdown: Shutdown,
) {
    tasks.spawn(async move { source.run(tx, shutdown).await.map_err(RuntimeError::from) });
}
