//! weft: the command line.
#![forbid(unsafe_code)]

mod admin_http;
mod cluster;
mod cmd;
mod demo;
mod promtext;
mod term;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cluster::ClusterArgs;

/// Exit codes scripts can rely on.
mod exit {
    /// The command did what was asked and every check passed.
    pub const OK: u8 = 0;
    /// The command ran, but a check failed (a mismatch, a NACK, an unhealthy mesh).
    pub const CHECK_FAILED: u8 = 1;
    /// Bad usage or input (unreadable file, invalid manifest, unknown flag).
    pub const USAGE: u8 = 2;
}

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "weft: a small, fast, honest SMI service mesh",
    after_help = "Examples:\n  weft demo                      # a whole mesh on this machine\n  weft compile -f examples/canary # what each proxy will be told\n  weft crds | kubectl apply -f -   # install the SMI CRDs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole mesh on this machine (no cluster, no root) and walk a canary through it.
    #[command(
        after_help = "Examples:\n  weft demo\n  weft demo --duration 30s --plain   # for CI logs\n  weft demo --keep                   # leave it running and experiment\n  weft demo --gateway-api            # the canary as an HTTPRoute (GAMMA)"
    )]
    Demo {
        /// How long the scripted walk takes (canary steps, then the access policy).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Plain line-per-step output (no live view), for logs and CI.
        #[arg(long)]
        plain: bool,
        /// Leave the mesh running at the end and print how to experiment with it.
        #[arg(long)]
        keep: bool,
        /// Folder for the manifests and logs (default: a new folder in the temp dir).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// The loopback /24 the demo's pods live on.
        #[arg(long, default_value = "127.42.0", value_parser = parse_prefix)]
        ip_prefix: [u8; 3],
        /// Requests per second from the frontend.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Walk the canary with a Gateway API HTTPRoute (parentRef: the `api` Service) instead
        /// of an SMI TrafficSplit.
        #[arg(long)]
        gateway_api: bool,
    },
    /// Print what each proxy will be told, from a folder of manifests, with no cluster.
    #[command(
        after_help = "Examples:\n  weft compile -f examples/canary\n  weft compile -f examples/authz --proxy demo/api-v1-0 -o json\n\nExit status: 0 compiled, 1 some file could not be loaded or an object is not accepted, 2 usage error."
    )]
    Compile {
        /// A manifest folder (read recursively) or file.
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
        /// Only this proxy (`namespace/pod`).
        #[arg(long)]
        proxy: Option<String>,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: OutputFormat,
        /// SPIFFE trust domain of identities.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Print the install manifests (the Helm chart rendered with its defaults, fresh certificates).
    #[command(
        after_help = "Examples:\n  weft install | kubectl apply -f -\n  weft install --save-trust-anchor-key anchor.key > weft.yaml\n\nFor other values, install the chart with helm: helm install weft charts/weft -n weft-system --create-namespace"
    )]
    Install {
        /// SPIFFE trust domain of the generated trust anchor.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Write the trust anchor's private key here (to sign a new issuer later); by default it is discarded.
        #[arg(long)]
        save_trust_anchor_key: Option<std::path::PathBuf>,
        /// The Kubernetes version to render for (e.g. 1.20), when the cluster cannot be asked
        /// (default: the cluster's own version, else the newest supported).
        #[arg(long, value_name = "MAJOR.MINOR", value_parser = cmd::install::parse_kube_version)]
        kube_version: Option<(u32, u32)>,
        /// Render without asking any cluster (fresh identity, newest or --kube-version).
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// What changes for which proxies if NEW replaces BASE (for reviewing GitOps pull requests).
    #[command(
        after_help = "Examples:\n  weft diff -f new/ -f main/\n  git worktree add /tmp/base main && weft diff -f deploy/ -f /tmp/base/deploy/ -o json\n\nExit status: 0 nothing changes, 1 something changes, 2 usage error."
    )]
    Diff {
        /// NEW, then BASE: two manifest folders (or files).
        #[arg(short = 'f', long = "filename", num_args = 1, required = true)]
        files: Vec<std::path::PathBuf>,
        /// Compare against the live cluster instead of a BASE folder: NEW is laid over the
        /// live objects (same kind, namespace and name replaced, new ones added).
        #[arg(long)]
        cluster: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        kube: ClusterArgs,
    },
    /// Add the weft proxy to the workloads of a manifest (for GitOps pipelines); `-f -` reads stdin.
    #[command(
        after_help = "Examples:\n  weft inject -f deploy.yaml | kubectl apply -f -\n  kustomize build . | weft inject -f - > meshed.yaml\n\nRe-injecting an injected manifest changes nothing."
    )]
    Inject {
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
        /// The proxy image.
        #[arg(long)]
        proxy_image: Option<String>,
        /// The operator's discovery address the proxies use.
        #[arg(long)]
        control_addr: Option<String>,
        /// PEM file with the mesh's trust anchors (the identity issuer's ca.crt): set as
        /// WEFT_PROXY_TRUST_ANCHORS so that proxies verify the operator over TLS. Without it they
        /// are read from the cluster (--kubeconfig/--context); with neither, inject refuses.
        #[arg(long, value_name = "FILE")]
        trust_anchors: Option<std::path::PathBuf>,
        /// The namespace weft is installed in (where the trust anchors are read from).
        #[arg(long, default_value = "weft-system")]
        namespace: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the SMI CRDs (the same YAML as crds/).
    #[command(after_help = "Examples:\n  weft crds | kubectl apply -f -")]
    Crds,
    /// Which proxy runs which config version, and any NACK (lagging or NACKing proxies first).
    #[command(
        after_help = "Examples:\n  weft proxies                                  # every operator replica, through the API server\n  weft proxies --context prod -o json\n  weft proxies --admin-addr 127.42.0.1:9990     # a local operator (the demo's)\n\nExit status: 0 every proxy in sync, 1 a proxy lags or NACKs (or a replica could not be read), 2 usage error or nothing reachable."
    )]
    Proxies {
        /// A local operator's admin address (host:port), instead of the cluster.
        #[arg(long, alias = "operator", value_name = "HOST:PORT")]
        admin_addr: Option<String>,
        /// The namespace weft is installed in.
        #[arg(short, long, default_value = "weft-system")]
        namespace: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Golden metrics (success rate, rps, latency percentiles) per workload, service, backend or route.
    #[command(
        after_help = "Examples:\n  weft stat --demo                          # every proxy of a running `weft demo`\n  weft stat --proxy-admin 127.42.0.10:4191 --by route\n  weft stat --demo --from deploy/frontend --to deploy/api\n  weft stat --demo --window 10s -o json"
    )]
    Stat {
        /// A proxy's admin address (host:port); repeatable.
        #[arg(long = "proxy-admin")]
        proxy_admin: Vec<String>,
        /// Read every proxy of a `weft demo` running with the default layout.
        #[arg(long)]
        demo: bool,
        /// In a cluster (no --proxy-admin/--demo): only meshed pods of this namespace (default: all).
        #[arg(short, long)]
        namespace: Option<String>,
        /// How to group the figures.
        #[arg(long, value_enum, default_value = "backend")]
        by: cmd::stat::GroupBy,
        /// The measurement window (two scrapes this far apart).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        window: Duration,
        /// Only the traffic of this caller (KIND/NAME: deploy/web, sts/db, pod/web-0, ns/demo),
        /// one row per caller and callee (from the caller's outbound metrics).
        #[arg(long, value_name = "RESOURCE")]
        from: Option<String>,
        /// Only the traffic to this callee (KIND/NAME: deploy/api, svc/api, pod/api-0, ns/demo).
        #[arg(long, value_name = "RESOURCE")]
        to: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Who calls whom: callers, callees, their identities, whether mTLS was used, requests.
    #[command(
        after_help = "Examples:\n  weft edges --demo\n  weft edges deploy/api -n demo --window 10s\n  weft edges --proxy-admin 127.42.0.10:4191 --proxy-admin 127.42.0.20:4191 -o json"
    )]
    Edges {
        /// Only the edges to or from this resource (KIND/NAME: deploy/web, pod/web-0, svc/api, ns/demo).
        resource: Option<String>,
        /// A proxy's admin address (host:port); repeatable.
        #[arg(long = "proxy-admin")]
        proxy_admin: Vec<String>,
        /// Read every proxy of a `weft demo` running with the default layout.
        #[arg(long)]
        demo: bool,
        /// In a cluster: only meshed pods of this namespace; also the namespace of RESOURCE.
        #[arg(short, long)]
        namespace: Option<String>,
        /// The measurement window (two readings this far apart).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        window: Duration,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Live requests through the proxies: identities, status, latency; sensitive headers
    /// redacted (through the operator: the aggregated API in a cluster, the admin port locally).
    #[command(
        after_help = "Examples:\n  weft tap --demo                          # every request of a `weft demo --keep`\n  weft tap deploy/api -n demo --path /items --max 10\n  weft tap ns/demo --to api --method GET -o json\n\nExit status: 0 the tap ended, 1 the operator refused or could not be reached."
    )]
    Tap {
        #[command(flatten)]
        tap: TapArgs,
        /// `json`: one JSON object per event (NDJSON); default: one line per event.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// The most-requested paths, live, with counts, success rate and latency.
    #[command(
        after_help = "Examples:\n  weft top --demo\n  weft top deploy/api -n demo --plain --duration 10s"
    )]
    Top {
        #[command(flatten)]
        tap: TapArgs,
        /// Print the table once at the end (default when stdout is not a terminal).
        #[arg(long)]
        plain: bool,
        /// Stop after this long.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Verify a cluster before (`--pre`) and after installing weft.
    #[command(
        after_help = "Examples:\n  weft check --pre     # can weft be installed here?\n  weft check           # is the installed mesh healthy?\n  weft check -f deploy/  # are the folder's HTTPRoutes accepted (no cluster)?\n\nExit status: 0 all ok (warnings allowed), 1 a check failed, 2 usage error."
    )]
    Check {
        /// Only the checks that make sense before installing.
        #[arg(long)]
        pre: bool,
        /// Check a folder of manifests instead of a cluster, with no cluster: every Gateway API
        /// route must be Accepted and ResolvedRefs; a TrafficSplit an HTTPRoute overrides warns.
        #[arg(short = 'f', long = "filename", conflicts_with = "pre")]
        file: Option<std::path::PathBuf>,
        /// The namespace weft is installed in.
        #[arg(long, default_value = "weft-system")]
        namespace: String,
        /// The Helm release name (for --pre: which release pre-existing CRDs must belong to).
        #[arg(long, default_value = "weft")]
        release: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// The client's version and, when a cluster is reachable, the operator replicas' and proxies'.
    #[command(
        after_help = "Examples:\n  weft version\n  weft version --client\n  weft version --context prod -o json"
    )]
    Version {
        /// Only the client's version (no cluster).
        #[arg(long)]
        client: bool,
        /// The namespace weft is installed in.
        #[arg(short, long, default_value = "weft-system")]
        namespace: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// The sample workload the demo runs (an HTTP server answering with its name and version).
    #[command(hide = true)]
    DemoApp {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long, default_value = "")]
        pod: String,
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Output formats of commands that print data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Wide,
    Json,
    Yaml,
}

/// What `weft tap` and `weft top` read, and from where.
#[derive(clap::Args, Debug)]
struct TapArgs {
    /// What to tap: `deploy/NAME`, `pod/NAME`, `sts/NAME`, `ns/NAME` (default: the namespace).
    resource: Option<String>,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Only requests to this destination (a service name or authority).
    #[arg(long)]
    to: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    path: Option<String>,
    /// Only requests with this method.
    #[arg(long)]
    method: Option<String>,
    /// Stop after this many requests.
    #[arg(long)]
    max: Option<u32>,
    /// Tap a running `weft demo --keep` (its operator's admin port and the token it left).
    #[arg(long)]
    demo: bool,
    /// The demo's loopback /24 (with --demo).
    #[arg(long, default_value = "127.42.0", value_parser = parse_prefix)]
    ip_prefix: [u8; 3],
    /// A local operator's admin address (host:port), instead of a cluster.
    #[arg(long)]
    admin_addr: Option<String>,
    /// The operator's admin token (its --admin-token-file).
    #[arg(long)]
    admin_token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl TapArgs {
    fn request(&self) -> cmd::tap::TapRequest {
        cmd::tap::TapRequest {
            resource: self.resource.clone(),
            namespace: if self.demo && self.namespace == "default" {
                "demo".to_string()
            } else {
                self.namespace.clone()
            },
            to: self.to.clone(),
            path: self.path.clone(),
            method: self.method.clone(),
            max: self.max,
        }
    }

    fn source(&self) -> anyhow::Result<cmd::tap::Source> {
        if self.demo {
            return demo::tap_source(self.ip_prefix, self.admin_token_file.clone());
        }
        if let Some(addr) = &self.admin_addr {
            let path = self.admin_token_file.as_ref().ok_or_else(|| {
                anyhow::anyhow!("--admin-addr needs --admin-token-file (the operator's token)")
            })?;
            return Ok(cmd::tap::Source::Admin {
                addr: addr.clone(),
                token: cmd::tap::read_token(path)?,
            });
        }
        Ok(cmd::tap::Source::Cluster(self.cluster.clone()))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 2m or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_prefix(s: &str) -> Result<[u8; 3], String> {
    let parts: Vec<u8> = s
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{s}` is not three octets like 127.42.0"))?;
    match parts.as_slice() {
        [127, b, c] => Ok([127, *b, *c]),
        [_, _, _] => Err(format!(
            "`{s}`: the demo only uses loopback addresses (127.x.y)"
        )),
        _ => Err(format!("`{s}` is not three octets like 127.42.0")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube's client logs every failed request at ERROR; the command's own error says it once,
    // with the address and the next step.
    let filter = std::env::var("WEFT_LOG")
        .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(term::stderr_colour())
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: cannot start the runtime: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    rt.block_on(async move {
        match run(cli).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("weft: {}", term::error_text(&e));
                ExitCode::from(exit::USAGE)
            }
        }
    })
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Demo {
            duration,
            plain,
            keep,
            dir,
            ip_prefix,
            rate,
            gateway_api,
        } => {
            let ok = demo::run(demo::DemoOptions {
                duration,
                plain,
                keep,
                dir,
                layout: demo::manifests::Layout { prefix: ip_prefix },
                rate,
                gateway_api,
            })
            .await?;
            Ok(if ok { exit::OK } else { exit::CHECK_FAILED })
        }
        Command::Compile {
            file,
            proxy,
            output,
            trust_domain,
        } => cmd::compile::run(&file, proxy.as_deref(), output, &trust_domain),
        Command::Install {
            trust_domain,
            save_trust_anchor_key,
            kube_version,
            offline,
            cluster,
        } => {
            let target = if offline {
                cmd::install::Target::offline(kube_version)
            } else {
                cmd::install::Target::discover(&cluster, kube_version).await?
            };
            print!(
                "{}",
                cmd::install::render(&trust_domain, save_trust_anchor_key.as_deref(), &target)?
            );
            Ok(exit::OK)
        }
        Command::Diff {
            files,
            cluster,
            output,
            kube,
        } => match (files.as_slice(), cluster) {
            ([new, base], false) => {
                cmd::diff::run(new, cmd::diff::Base::Folder(base), output).await
            }
            ([new], true) => cmd::diff::run(new, cmd::diff::Base::Cluster(&kube), output).await,
            _ => anyhow::bail!("pass -f NEW -f BASE (two folders or files), or -f NEW --cluster"),
        },
        Command::Inject {
            file,
            proxy_image,
            control_addr,
            trust_anchors,
            namespace,
            cluster,
        } => {
            let yaml = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?
            };
            let mut settings = weft_core::inject::InjectSettings::default();
            if let Some(i) = proxy_image {
                settings.proxy_image = i;
            }
            if let Some(a) = control_addr {
                settings.control_addr = a;
            }
            settings.trust_anchors_pem = Some(match trust_anchors {
                Some(path) => read_trust_anchors(&path)?,
                None => cmd::anchors::for_inject(&cluster, &namespace).await?,
            });
            print!("{}", weft_core::inject::inject_manifest(&yaml, &settings)?);
            Ok(exit::OK)
        }
        Command::Crds => {
            print!("{}", weft_smi::crd::render_yaml());
            Ok(exit::OK)
        }
        Command::Proxies {
            admin_addr,
            namespace,
            output,
            cluster,
        } => {
            let (entries, errors) = match admin_addr {
                Some(addr) => {
                    let json = admin_http::get_json(&addr, "/proxies", Duration::from_secs(5))
                        .await
                        .map_err(|e| {
                            let text = term::error_text(&e);
                            let text = match text.strip_prefix("could not reach ") {
                                Some(rest) => {
                                    format!("could not reach the operator admin API at {rest}")
                                }
                                None => text,
                            };
                            anyhow::anyhow!(
                                "{text}. Is `weft-operator` running there? In a cluster, drop --admin-addr and pass --kubeconfig/--context"
                            )
                        })?;
                    (cmd::proxies::parse(&json)?, Vec::new())
                }
                None => {
                    let c = cluster.connect().await.map_err(|e| {
                        anyhow::anyhow!(
                            "{}. Locally, start `weft-operator --manifests DIR` and pass --admin-addr HOST:PORT",
                            term::error_text(&e)
                        )
                    })?;
                    cmd::proxies::from_cluster(&c, &namespace).await?
                }
            };
            cmd::proxies::print(&entries, output)?;
            for e in &errors {
                eprintln!("weft proxies: this replica's proxies are missing from the list: {e}");
            }
            let healthy = errors.is_empty()
                && entries
                    .iter()
                    .all(|e| e.sync() == cmd::proxies::Sync::Current);
            Ok(if healthy {
                exit::OK
            } else {
                exit::CHECK_FAILED
            })
        }
        Command::Stat {
            proxy_admin,
            demo,
            namespace,
            by,
            window,
            from,
            to,
            output,
            cluster,
        } => {
            // #18: --from/--to name resources, in --namespace when given.
            let ns = namespace.as_deref();
            let from = from
                .map(|r| cmd::edges::Resource::parse(&r, ns))
                .transpose()?;
            let to = to
                .map(|r| cmd::edges::Resource::parse(&r, ns))
                .transpose()?;
            let (targets, client) = {
                let mut proxy_admin = proxy_admin;
                if demo {
                    proxy_admin.extend(demo::proxy_admins());
                }
                cmd::stat::resolve_targets(proxy_admin, ns, &cluster).await?
            };
            let rows = if from.is_some() || to.is_some() {
                cmd::stat::collect_edges(
                    &targets,
                    client.as_ref(),
                    window,
                    from.as_ref(),
                    to.as_ref(),
                )
                .await?
            } else {
                cmd::stat::collect(&targets, client.as_ref(), window, by).await?
            };
            cmd::stat::print(&rows, output)?;
            Ok(exit::OK)
        }
        Command::Tap { tap, output } => {
            let source = tap.source()?;
            cmd::tap::run(&source, &tap.request(), output == OutputFormat::Json).await?;
            Ok(exit::OK)
        }
        Command::Top {
            tap,
            plain,
            duration,
        } => {
            let source = tap.source()?;
            cmd::top::run(&source, &tap.request(), plain, duration).await?;
            Ok(exit::OK)
        }
        // #18
        Command::Edges {
            resource,
            proxy_admin,
            demo,
            namespace,
            window,
            output,
            cluster,
        } => {
            let ns = namespace.as_deref();
            let filter = resource
                .map(|r| cmd::edges::Resource::parse(&r, ns))
                .transpose()?;
            let (targets, client) = {
                let mut proxy_admin = proxy_admin;
                if demo {
                    proxy_admin.extend(demo::proxy_admins());
                }
                cmd::stat::resolve_targets(proxy_admin, ns, &cluster).await?
            };
            let rows =
                cmd::edges::collect(&targets, client.as_ref(), window, filter.as_ref()).await?;
            cmd::edges::print(&rows, output)?;
            Ok(exit::OK)
        }
        Command::Check {
            pre,
            file,
            namespace,
            release,
            output,
            cluster,
        } => {
            let checks = match file {
                Some(dir) => {
                    if !dir.exists() {
                        anyhow::bail!("{} does not exist", dir.display());
                    }
                    let report = cmd::routes::compile_dir(
                        &dir,
                        &weft_core::compile::CompileOptions::default(),
                    )?;
                    cmd::routes::checks_of(&report)
                }
                None => {
                    cmd::check::run(
                        pre,
                        &cluster,
                        &cmd::check::InstallNames::new(&namespace, &release),
                    )
                    .await
                }
            };
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
                OutputFormat::Yaml => print!("{}", serde_yaml::to_string(&checks)?),
                _ => cmd::check::print(&checks),
            }
            let failed = checks
                .iter()
                .any(|c| c.outcome == cmd::check::Outcome::Fail);
            Ok(if failed { exit::CHECK_FAILED } else { exit::OK })
        }
        Command::Version {
            client,
            namespace,
            output,
            cluster,
        } => cmd::version::run(client, &cluster, &namespace, output).await,
        Command::DemoApp {
            name,
            version,
            pod,
            listen,
        } => {
            demo::app::run(demo::app::AppOptions {
                name,
                version,
                pod,
                listen,
            })
            .await?;
            Ok(exit::OK)
        }
    }
}

/// Reads a PEM file of CA certificates for `weft inject --trust-anchors`: every CERTIFICATE
/// block must parse and be a CA; other blocks are an error (a key must never end up in a pod spec).
fn read_trust_anchors(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {}", path.display(), cluster::io_cause(&e)))?;
    cmd::anchors::validate(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn prefixes_are_loopback_only() {
        assert_eq!(parse_prefix("127.42.0"), Ok([127, 42, 0]));
        assert!(parse_prefix("10.0.0").is_err());
        assert!(parse_prefix("127.0").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
