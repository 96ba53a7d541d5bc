//! `weft-operator`: parses flags, builds the runtime, runs until SIGTERM/SIGINT, drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use weft_operator::apiserver::FrontProxy;
use weft_operator::compile::{CompileOptions, DefaultPolicy};
use weft_operator::identity::control_tls::anchors_pem;
use weft_operator::identity::{
    BootstrapToken, CaStore, ControlTlsOptions, IdentityOptions, PodDirectory, SpiffeId,
    TokenReview,
};
use weft_operator::leader::LeaderOptions;
use weft_operator::runtime::{
    ApiServerConfig, IdentityConfig, Runtime, RuntimeConfig, SourceConfig, WebhookConfig,
};
use weft_operator::source::manifests::WatchOptions;
use weft_operator::trafficmetrics::scrape::ScrapeOptions;
use weft_operator::webhook::TlsPem;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InboundPolicy {
    Allow,
    Mesh,
    Deny,
}

/// weft's control plane: compiles SMI objects and cluster state into per-proxy config, serves
/// it over gRPC, issues identities and writes status.
#[derive(Debug, Parser)]
#[command(name = "weft-operator", version)]
struct Args {
    /// Kubeconfig to use (default: in-cluster config, then $KUBECONFIG / ~/.kube/config).
    #[arg(long, value_name = "PATH", conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,
    /// Read cluster state from a directory of manifests (watched) instead of Kubernetes.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// gRPC address for proxies (Discovery and Identity).
    #[arg(long, default_value = "0.0.0.0:8086")]
    discovery_addr: SocketAddr,
    /// Admin HTTP address (/ready, /live, /metrics, /proxies, /status).
    #[arg(long, default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Directory with ca.crt, issuer.crt, issuer.key. Manifests mode: when it holds none of
    /// them, a CA is generated and written there (restarts reuse it); without it, a CA is
    /// generated in memory and a restart changes it.
    #[arg(long, value_name = "DIR")]
    identity_issuer: Option<PathBuf>,
    /// Manifests mode: the shared secret proxies present to get a certificate.
    #[arg(long, value_name = "PATH")]
    bootstrap_token_file: Option<PathBuf>,
    /// Mesh-wide default inbound policy (namespace/pod annotations override it).
    #[arg(long, value_enum, default_value = "allow")]
    default_inbound_policy: InboundPolicy,
    /// HTTPS address of the webhooks (/convert, /validate, /inject); needs --webhook-cert-dir.
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// Directory with tls.crt and tls.key for the webhook server; no webhooks without it.
    #[arg(long, value_name = "DIR")]
    webhook_cert_dir: Option<PathBuf>,
    /// Serve the sidecar injector at /inject (settings from WEFT_INJECT_* variables).
    #[arg(long)]
    inject: bool,
    /// Elect a leader (Lease) so that only one replica writes status and Events.
    #[arg(long)]
    leader_elect: bool,
    /// Leader election: how long the Lease stays valid without renewal, i.e. how long others
    /// wait before taking over from a leader that died without releasing it.
    #[arg(long, default_value = "15s", value_parser = weft_common::duration::parse)]
    leader_lease_duration: Duration,
    /// Leader election: a leader that could not renew for this long stops writing (kept below
    /// the lease duration).
    #[arg(long, default_value = "10s", value_parser = weft_common::duration::parse)]
    leader_renew_deadline: Duration,
    /// Leader election: how often the leader renews and the others try to acquire.
    #[arg(long, default_value = "2s", value_parser = weft_common::duration::parse)]
    leader_retry_period: Duration,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
    namespace: String,
    /// This replica's name (leader identity, Events).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// This operator's service account: its identity on the discovery port is
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, env = "POD_SERVICE_ACCOUNT", default_value = "weft-operator")]
    service_account: String,
    /// Name of the discovery Service: the discovery server certificate carries the DNS names
    /// <service>.<namespace>.svc[.<cluster-domain>], <service>.<namespace> and <service>.
    #[arg(long, default_value = "weft-discovery")]
    discovery_service: String,
    /// Refuse plaintext connections on the discovery port (TLS only). Needs the Identity
    /// service (its issuer signs the discovery server certificate).
    #[arg(long)]
    require_control_tls: bool,
    /// Refuse Discovery streams without a client certificate verified against the mesh trust
    /// anchors (proxies must connect over TLS and present their certificate; Certify stays open
    /// to token-authenticated proxies). Needs the Identity service.
    #[arg(long)]
    require_discovery_identity: bool,
    /// HTTPS address of the aggregated API server (metrics.smi-spec.io TrafficMetrics), e.g.
    /// 0.0.0.0:8443 (the chart's); off when not given. Needs a serving certificate
    /// (--apiserver-cert-dir or --webhook-cert-dir), and in --manifests mode
    /// --requestheader-client-ca-file.
    #[arg(long)]
    apiserver_addr: Option<SocketAddr>,
    /// Directory with tls.crt and tls.key for the aggregated API server (default: the webhook's).
    #[arg(long, value_name = "DIR")]
    apiserver_cert_dir: Option<PathBuf>,
    /// PEM CA of the front proxy's client certificate (default: from ConfigMap
    /// kube-system/extension-apiserver-authentication).
    #[arg(long, value_name = "PATH")]
    requestheader_client_ca_file: Option<PathBuf>,
    /// Common names allowed on the front proxy's certificate, with
    /// --requestheader-client-ca-file (empty: any certificate of that CA).
    #[arg(long, value_delimiter = ',')]
    requestheader_allowed_names: Vec<String>,
    /// The proxies' admin port, scraped for TrafficMetrics.
    #[arg(long, default_value = "4191")]
    proxy_admin_port: u16,
    /// How often every proxy's /metrics is scraped for TrafficMetrics.
    #[arg(long, default_value = "10s", value_parser = weft_common::duration::parse)]
    traffic_metrics_scrape_interval: Duration,
    /// The window TrafficMetrics cover.
    #[arg(long, default_value = "30s", value_parser = weft_common::duration::parse)]
    traffic_metrics_window: Duration,
    /// How proxies learn the mesh: `push-all` sends every proxy every Service and endpoint;
    /// `on-demand` sends a proxy that declares support only its inbound policy and the Services
    /// it watches (proxies that do not declare it still get everything). docs/architecture.md.
    #[arg(long, value_enum, default_value = "push-all")]
    discovery_mode: DiscoveryModeArg,
    /// A discovery stream older than this (±10 % jitter) is ended gracefully and the proxy
    /// reconnects at once, possibly to another replica, so that proxies spread again after a
    /// replica comes back; `0` turns it off. docs/operator.md.
    #[arg(long, default_value = "30m", value_parser = weft_common::duration::parse_or_seconds)]
    discovery_max_stream_age: Duration,
    /// File holding the token `GET /tap` on the admin port requires
    /// (`Authorization: Bearer <token>`); without it the admin port's tap answers 403. The
    /// cluster way to tap is the aggregated API `tap.weft.io` (RBAC). docs/tap.md.
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DiscoveryModeArg {
    PushAll,
    OnDemand,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs usually go to files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn kube_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config or kubeconfig")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn build(args: &Args) -> anyhow::Result<RuntimeConfig> {
    let compile = CompileOptions {
        trust_domain: args.trust_domain.clone(),
        cluster_domain: args.cluster_domain.clone(),
        default_inbound_policy: match args.default_inbound_policy {
            InboundPolicy::Allow => DefaultPolicy::Allow,
            InboundPolicy::Mesh => DefaultPolicy::Mesh,
            InboundPolicy::Deny => DefaultPolicy::Deny,
        },
        ..CompileOptions::default()
    };
    let own_identity = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account)
        .context("the operator's own identity (--namespace, --service-account)")?;
    // Never issued to a workload: the operator's own identity and anything else in its
    // namespace (docs/identity.md, "Reserved identities").
    let identity_options = IdentityOptions {
        trust_domain: args.trust_domain.clone(),
        control_plane_namespace: args.namespace.clone(),
        reserved: vec![own_identity.clone()],
        ..IdentityOptions::default()
    };
    let control_tls = ControlTlsOptions {
        identity: own_identity,
        dns_names: ControlTlsOptions::service_dns_names(
            &args.discovery_service,
            &args.namespace,
            &args.cluster_domain,
        ),
        lifetime: identity_options.leaf_lifetime,
        require_tls: args.require_control_tls,
        require_discovery_identity: args.require_discovery_identity,
    };
    let (source, identity) = match &args.manifests {
        Some(dir) => {
            let ca = CaStore::load_or_generate(args.identity_issuer.as_deref(), &args.trust_domain)
                .context("loading the identity issuer")?;
            let identity = match &args.bootstrap_token_file {
                Some(path) => {
                    // The token buys only the identity the manifests give the pod it names.
                    let token = BootstrapToken::from_file(path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .bound_to(PodDirectory::new());
                    if args.identity_issuer.is_none() {
                        tracing::warn!(
                            "no --identity-issuer: the mesh CA is generated in memory, so a \
                             restart of the operator changes it and proxies certified before \
                             and after the restart cannot verify each other until they all \
                             renew; pass --identity-issuer DIR to keep it in DIR"
                        );
                    }
                    Some(IdentityConfig {
                        ca: Arc::new(ca),
                        authenticator: Arc::new(token),
                        options: identity_options,
                        control_tls: Some(control_tls),
                    })
                }
                None => {
                    if args.require_control_tls {
                        anyhow::bail!(
                            "--require-control-tls needs the Identity service \
                             (--bootstrap-token-file in --manifests mode)"
                        );
                    }
                    if args.require_discovery_identity {
                        anyhow::bail!(
                            "--require-discovery-identity needs the Identity service \
                             (--bootstrap-token-file in --manifests mode)"
                        );
                    }
                    tracing::warn!(
                        "no --bootstrap-token-file: the Identity service is off and the \
                         discovery port is plaintext only"
                    );
                    None
                }
            };
            (
                SourceConfig::Manifests {
                    dir: dir.clone(),
                    watch: WatchOptions::default(),
                },
                identity,
            )
        }
        None => {
            let client = kube_client(args.kubeconfig.as_ref()).await?;
            let dir = args
                .identity_issuer
                .as_deref()
                .context("--identity-issuer is required with Kubernetes")?;
            let ca = CaStore::from_dir(dir).context("loading the identity issuer")?;
            let identity = IdentityConfig {
                ca: Arc::new(ca),
                authenticator: Arc::new(TokenReview::new(client.clone())),
                options: identity_options,
                control_tls: Some(control_tls),
            };
            (SourceConfig::Kubernetes { client }, Some(identity))
        }
    };
    let webhook = match &args.webhook_cert_dir {
        Some(dir) => {
            let inject = if args.inject {
                let mut settings = weft_operator::inject::InjectSettings::from_env()
                    .context("injector settings")?;
                // Proxies verify the discovery server against the mesh's trust anchors, given
                // out of band (never taken from the connection they protect).
                settings.trust_anchors_pem = identity
                    .as_ref()
                    .and_then(|i| i.ca.current())
                    .map(|issuer| anchors_pem(&issuer));
                // #19: proxies ask for on-demand discovery when this operator serves it (a
                // `weft.io/discovery-mode` annotation overrides it per pod or namespace).
                settings.on_demand = matches!(args.discovery_mode, DiscoveryModeArg::OnDemand);
                // #18 tap: only this operator's identity may open a proxy's tap.
                settings.tap_identity = Some(format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    args.trust_domain, args.namespace, args.service_account
                ));
                Some(Arc::new(settings))
            } else {
                None
            };
            Some(WebhookConfig {
                addr: args.webhook_addr,
                tls: TlsPem::from_dir(dir)?,
                validator: weft_operator::webhook::admission::semantic(),
                inject,
            })
        }
        None => None,
    };
    let apiserver = apiserver_config(args)?;
    let instance = args.pod_name.clone();
    let leader = if args.leader_elect && args.manifests.is_none() {
        let identity = instance
            .clone()
            .unwrap_or_else(|| format!("weft-operator-{:08x}", rand::random::<u32>()));
        Some(
            LeaderOptions::new(args.namespace.clone(), identity).with_timings(
                args.leader_lease_duration,
                args.leader_renew_deadline,
                args.leader_retry_period,
            ),
        )
    } else {
        None
    };
    let tap = weft_operator::runtime::TapOptions {
        admin_token: match &args.admin_token_file {
            None => None,
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --admin-token-file {}", path.display()))?
                    .trim()
                    .to_string();
                if token.len() < 16 {
                    anyhow::bail!(
                        "--admin-token-file {}: the token must be at least 16 characters",
                        path.display()
                    );
                }
                Some(token)
            }
        },
        ..Default::default()
    };
    Ok(RuntimeConfig {
        tap,
        source,
        discovery_addr: args.discovery_addr,
        admin_addr: args.admin_addr,
        compile,
        identity,
        webhook,
        apiserver,
        leader,
        instance,
        discovery_mode: match args.discovery_mode {
            DiscoveryModeArg::PushAll => weft_operator::discovery::DiscoveryMode::PushAll,
            DiscoveryModeArg::OnDemand => weft_operator::discovery::DiscoveryMode::OnDemand,
        },
        discovery_max_stream_age: Some(args.discovery_max_stream_age).filter(|age| !age.is_zero()),
    })
}

/// The aggregated API server's settings from the flags, if it is on.
fn apiserver_config(args: &Args) -> anyhow::Result<Option<ApiServerConfig>> {
    let Some(addr) = args.apiserver_addr else {
        return Ok(None);
    };
    let dir = args
        .apiserver_cert_dir
        .as_ref()
        .or(args.webhook_cert_dir.as_ref())
        .context("--apiserver-addr needs --apiserver-cert-dir or --webhook-cert-dir")?;
    let front_proxy = match &args.requestheader_client_ca_file {
        Some(path) => Some(FrontProxy::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            args.requestheader_allowed_names.clone(),
        )),
        None if args.manifests.is_some() => {
            anyhow::bail!(
                "--apiserver-addr in --manifests mode needs --requestheader-client-ca-file"
            )
        }
        None => None,
    };
    Ok(Some(ApiServerConfig {
        addr,
        tls: TlsPem::from_dir(dir)?,
        front_proxy,
        scrape: ScrapeOptions {
            admin_port: args.proxy_admin_port,
            interval: args.traffic_metrics_scrape_interval,
            window: args.traffic_metrics_window,
            ..ScrapeOptions::default()
        },
        groups: Vec::new(),
    }))
}

/// Resolves on SIGTERM or Ctrl-C. Call it (not await it) before anything starts: the handler is
/// registered by the call, so a signal that arrives while the operator is still starting (for
/// example a rollout that replaces a pod right after it became ready) is a graceful shutdown, not
/// the default action that kills the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate()).ok()
    };
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let signal = shutdown_signal();
    let _ = weft_common::tls::crypto_provider().install_default();
    let config = build(&args).await?;
    let runtime = Runtime::start(config).await?;
    tracing::info!(
        discovery = %runtime.discovery_addr,
        admin = %runtime.admin_addr,
        webhook = ?runtime.webhook_addr,
        apiserver = ?runtime.apiserver_addr,
        "weft-operator started"
    );
    signal.await;
    tracing::info!("shutting down: closing proxy streams");
    runtime.shutdown();
    match tokio::time::timeout(Duration::from_secs(20), runtime.wait()).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("drain timed out"),
    }
    Ok(())
}
