//! Process wiring: builds identity, discovery, the listeners and the admin server from the
//! environment, runs them, and drains on shutdown.

pub mod env;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use env::{ControlAddr, EnvError, LogFormat, ProxyEnv};

use crate::admin::{self, AdminSource};
use crate::config::{self, Config};
use crate::control::{self, DiscoveryClient, ProxyId, Settings};
use crate::control_tls::ControlTls;
use crate::identity::{Identity, IdentityConfig};
use crate::inbound::{self, InboundSettings};
use crate::metrics::{Metrics, PodMeta};
use crate::outbound;
use crate::trace::{TraceSettings, Tracer};
use crate::transport::MeshIdentity;

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Env(#[from] EnvError),
    #[error("bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Control(#[from] control::ControlError),
    #[error("TLS to the operator: {0}")]
    ControlTls(#[from] crate::control_tls::InvalidControlName),
    #[error("{what} stopped: {reason}")]
    Task { what: &'static str, reason: String },
}

impl AppError {
    /// True when the configuration is at fault (the process exits with code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AppError::Env(_)
                | AppError::ControlTls(_)
                | AppError::Control(control::ControlError::InvalidUri(..))
        )
    }
}

/// Addresses actually bound (useful when the env asked for port 0).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    pub admin: SocketAddr,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    /// The tap listener (`None` when `WEFT_PROXY_TAP_ADDR=off`).
    pub tap: Option<SocketAddr>,
}

/// Runs the proxy until `shutdown` completes, then stops accepting and drains in-flight work for
/// at most `env.shutdown_grace`. `bound` (if given) receives the bound addresses once listening.
pub async fn run(
    env: ProxyEnv,
    shutdown: impl Future<Output = ()>,
    bound: Option<tokio::sync::oneshot::Sender<BoundAddrs>>,
) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::for_pod(PodMeta::new(
        &env.pod_namespace,
        &env.pod_name,
        env.workload.as_deref(),
    )));

    // Listeners first, so that a port clash fails fast with exit code 1.
    let (admin_listener, admin_addr) = bind("admin", env.admin_addr).await?;
    let (inbound_listener, inbound_addr) = bind("inbound", env.inbound_addr).await?;
    let (outbound_listener, outbound_addr) = bind("outbound", env.outbound_addr).await?;
    let tap_listener = match env.tap_addr {
        Some(addr) => match bind("tap", addr).await {
            Ok(bound) => Some(bound),
            Err(e) if env.tap_addr_defaulted => {
                // Only where several proxies share a network namespace (tests, one-host meshes);
                // in a pod the default is free. Not a warning: the proxy serves as it should.
                tracing::info!(error = %e, "tap is off: its default address is taken (set WEFT_PROXY_TAP_ADDR)");
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };

    let mut settings = Settings::new(
        env.control_addr.uri.clone(),
        ProxyId {
            pod_namespace: env.pod_namespace.clone(),
            pod_name: env.pod_name.clone(),
            service_account: env.service_account.clone(),
        },
    );
    settings.targets = env.control_addr.targets.clone();
    match (&env.trust_anchors, &env.control_peer) {
        (Some(anchors), Some(peer)) => {
            settings.tls = Some(ControlTls::new(anchors, peer.clone())?);
            tracing::info!(
                control = %env.control_addr.uri,
                expected = %peer,
                anchors = anchors.certificates().len(),
                "control plane connection: TLS, verified against WEFT_PROXY_TRUST_ANCHORS"
            );
        }
        _ => tracing::warn!(
            control = %env.control_addr.uri,
            "control plane connection is UNAUTHENTICATED (plaintext): the service account token \
             and the trust anchors travel unprotected; set WEFT_PROXY_TRUST_ANCHORS to verify \
             the operator over TLS"
        ),
    }
    let endpoint = settings.endpoint()?;

    // Identity: certify now, renew at 70% of the lifetime; its own lazy channel.
    let (identity, identity_driver) = Identity::new(
        IdentityConfig {
            control_addr: env.control_addr.uri.clone(),
            token_file: env.token_file.clone(),
            pod_namespace: env.pod_namespace.clone(),
            pod_name: env.pod_name.clone(),
            service_account: env.service_account.clone(),
            trust_domain: env.trust_domain.clone(),
            trust_anchors: env.trust_anchors.clone(),
        },
        settings.connect_lazy(&endpoint),
    );
    let identity_task = tokio::spawn(identity_driver);
    let expiry_task = tokio::spawn(track_cert_expiry(identity.clone(), Arc::clone(&metrics)));

    // Discovery: the data plane starts from the default config and follows the channel.
    let (config_tx, config_rx) = config::channel();
    // Over TLS, Discovery presents the proxy's certificate once it has one (Certify does not).
    let mut discovery = DiscoveryClient::new(settings, config_tx)
        .with_metrics(Arc::clone(&metrics))
        .with_client_identity(identity.clone());
    // On-demand discovery (crate::ondemand), when asked for.
    let demand = env.on_demand.then(|| {
        crate::ondemand::Demand::new(
            &env.outbound_services,
            env.on_demand_wait,
            env.on_demand_idle,
        )
    });
    if let Some(demand) = &demand {
        discovery = discovery.with_demand(demand.clone());
    }
    let status = discovery.status();
    let mut control_registry = Registry::default();
    discovery.metrics().register(&mut control_registry);
    // Tracing (docs/tracing.md): off unless a collector is configured.
    let (tracer, trace_exporter) = match &env.trace_collector {
        None => (Tracer::disabled(), None),
        Some(collector) => {
            let (tracer, exporter) = Tracer::exporting_to(TraceSettings {
                collector: collector.clone(),
                service_name: env.trace_service_name(),
                pod_namespace: env.pod_namespace.clone(),
                pod_name: env.pod_name.clone(),
            })
            .map_err(|reason| AppError::Task {
                what: "trace exporter",
                reason,
            })?;
            tracer.register(&mut control_registry);
            (tracer, Some(exporter))
        }
    };
    let discovery_task = tokio::spawn(discovery.run());
    // #19: free memory goes back to the kernel after a large config shrink.
    let trim_task = tokio::spawn(crate::memory::give_back_after_shrinks(config_rx.clone()));
    // #20: and after a burst of traffic, once the proxy is quiet again.
    let quiet_trims = crate::memory::QuietTrims::default();
    quiet_trims.register(&mut control_registry);
    let quiet_task = env
        .memory_quiet
        .map(|interval| tokio::spawn(crate::memory::give_back_when_quiet(interval, quiet_trims)));

    // Data plane: serves with the default config until the first one arrives.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mesh_identity: Arc<dyn MeshIdentity> = Arc::new(identity.clone());
    let mut listeners: JoinSet<(&'static str, Result<(), String>)> = JoinSet::new();
    // The proxy's own listeners are never an inbound target, whatever the policy lists.
    // #18 tap (docs/tap.md): the hub the listeners report to, and its own mTLS listener.
    let tap = crate::tap::Tap::new(
        format!("{}/{}", env.pod_namespace, env.pod_name),
        &env.tap_redact,
    );
    tap.set_identity(identity.clone());
    tap.register(&mut control_registry);
    let mut reserved = vec![inbound_addr.port(), outbound_addr.port(), admin_addr.port()];
    let mut tap_addr = None;
    if let Some((listener, addr)) = tap_listener {
        reserved.push(addr.port());
        tap_addr = Some(addr);
        let served = crate::tap::serve(
            listener,
            tap.clone(),
            identity.clone(),
            env.tap_identity.clone(),
            stopped(stop_rx.clone()),
        );
        listeners.spawn(async move { ("tap", served.await.map_err(|e| e.to_string())) });
    }
    let inbound = inbound::serve_tapped(
        inbound_listener,
        InboundSettings {
            app_ip: env.app_ip,
            drain_grace: env.shutdown_grace,
            tracer: tracer.clone(),
            http1_idle: env.http1_idle,
        },
        reserved,
        config_rx.clone(),
        Arc::clone(&mesh_identity),
        Arc::clone(&metrics),
        tap.clone(),
        stopped(stop_rx.clone()),
    );
    listeners.spawn(async move { ("inbound", inbound.await.map_err(|e| e.to_string())) });
    let outbound = outbound::serve_with(
        outbound_listener,
        config_rx.clone(),
        mesh_identity,
        Arc::clone(&metrics),
        stopped(stop_rx.clone()),
        env.shutdown_grace,
        outbound::Extras {
            tracer,
            demand,
            tap,
            http1_idle: env.http1_idle,
        },
    );
    listeners.spawn(async move { ("outbound", outbound.await.map_err(|e| e.to_string())) });

    // Admin.
    let source: Arc<dyn AdminSource> = Arc::new(AppAdmin {
        identity: identity.clone(),
        status,
        config: config_rx.clone(),
        metrics: Arc::clone(&metrics),
        control_registry,
    });
    let admin = admin::serve(
        admin_listener,
        source,
        env.admin_max_connections,
        stopped(stop_rx.clone()),
    );
    listeners.spawn(async move { ("admin", admin.await.map_err(|e| e.to_string())) });

    if let Some(bound) = bound {
        let _ = bound.send(BoundAddrs {
            admin: admin_addr,
            inbound: inbound_addr,
            outbound: outbound_addr,
            tap: tap_addr,
        });
    }
    tracing::info!(
        admin = %admin_addr,
        inbound = %inbound_addr,
        outbound = %outbound_addr,
        tap = ?tap_addr,
        control = %env.control_addr.uri,
        identity = %env.spiffe_id(),
        "weft-proxy started",
    );

    // Run until asked to stop, or until a listener fails.
    let mut failure = None;
    tokio::select! {
        () = shutdown => {}
        Some(done) = listeners.join_next() => {
            let (what, reason) = match done {
                Ok((what, Ok(()))) => (what, "stopped unexpectedly".to_string()),
                Ok((what, Err(e))) => (what, e),
                Err(e) => ("listener", e.to_string()),
            };
            tracing::error!(listener = what, %reason, "listener failed; shutting down");
            failure = Some(AppError::Task { what, reason });
        }
    }

    tracing::info!(
        grace_ms = env.shutdown_grace.as_millis() as u64,
        "stopping: no new connections, draining in-flight ones",
    );
    let _ = stop_tx.send(true);
    // The listeners drain within the grace period themselves; the extra second only bounds one
    // that fails to honour it.
    let drain = async {
        while let Some(done) = listeners.join_next().await {
            if let Ok((what, Err(reason))) = done {
                tracing::warn!(listener = what, %reason, "listener ended with an error");
            }
        }
    };
    if tokio::time::timeout(env.shutdown_grace + Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
        listeners.abort_all();
    }
    // Spans of the drained requests go out before the process ends.
    if let Some(exporter) = trace_exporter {
        exporter.shutdown().await;
    }
    discovery_task.abort();
    identity_task.abort();
    expiry_task.abort();
    trim_task.abort();
    if let Some(task) = quiet_task {
        task.abort();
    }
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let err = |source| AppError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Completes when the stop flag turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn track_cert_expiry(identity: Identity, metrics: Arc<Metrics>) {
    identity.ready().await;
    loop {
        if let Some(expiry) = identity.expiry() {
            let secs = expiry
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs();
            metrics.set_cert_expiry(i64::try_from(secs).unwrap_or(i64::MAX));
        }
        identity.changed().await;
    }
}

/// What the admin server reports, from the running parts.
struct AppAdmin {
    identity: Identity,
    status: watch::Receiver<control::Status>,
    config: watch::Receiver<Arc<Config>>,
    metrics: Arc<Metrics>,
    control_registry: Registry,
}

impl AdminSource for AppAdmin {
    fn readiness(&self) -> Result<(), String> {
        if !self.identity.is_ready() {
            return Err("no certificate yet".into());
        }
        let status = self.status.borrow();
        if status.version.is_none() {
            return Err(match &status.last_error {
                Some(e) => format!("no config from the operator yet (last error: {e})"),
                None => "no config from the operator yet".into(),
            });
        }
        Ok(())
    }

    fn encode_metrics(&self, out: &mut String) {
        out.push_str(&self.metrics.encode());
        admin::strip_eof(out);
        let mut control = String::new();
        if prometheus_client::encoding::text::encode(&mut control, &self.control_registry).is_ok() {
            admin::strip_eof(&mut control);
            out.push_str(&control);
        }
    }

    fn config_dump(&self) -> admin::ConfigDump {
        let config = Arc::clone(&self.config.borrow());
        let status = self.status.borrow().clone();
        let expiry = self.identity.expiry().and_then(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        });
        let head = serde_json::json!({
            "version": status.version,
            "control": status,
            "identity": {
                "id": self.identity.local_identity(),
                "expiry_unix_seconds": expiry,
            },
        });
        admin::ConfigDump {
            head: match head {
                serde_json::Value::Object(head) => head,
                _ => serde_json::Map::new(),
            },
            config: config as Arc<dyn admin::ConfigLists>,
        }
    }

    fn state_json(&self) -> serde_json::Value {
        let config = Arc::clone(&self.config.borrow());
        serde_json::json!({
            "version": config.version,
            "state": config.state_view(),
        })
    }
}
