//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! (built from Debian's sources by `e2e/scripts/kube-build.sh`), all on loopback ports.
//!
//! Certificates (a CA, the API server's serving certificate, the aggregation-layer client
//! certificate, the service-account signing key) are generated per cluster; a static admin token
//! authenticates the tests. Every process is killed when the [`Cluster`] is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use tokio::process::{Child, Command};

/// The tarball hash the binaries are cached under (see `kube-build.sh`).
pub const KUBE_TARBALL_SHA256: &str =
    "b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc";
/// Range the API server allocates ClusterIPs from (inside 198.18.0.0/15, reserved for tests).
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// The address the fake kubelet's bridge has on the host (pods reach the host there).
pub const BRIDGE_IP: &str = "198.18.0.1";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Missing(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{what} did not become ready within {secs}s; last error: {last}; log tail:\n{log}")]
    NotReady {
        what: &'static str,
        secs: u64,
        last: String,
        log: String,
    },
    #[error("{what} exited early ({status}); log tail:\n{log}")]
    Exited {
        what: &'static str,
        status: String,
        log: String,
    },
    #[error("kube client: {0}")]
    Kube(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Paths of the control-plane binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
}

/// The folder `kube-build.sh` caches binaries in (`WEFT_KUBE_CACHE` or `~/.cache/weft/kube`).
pub fn cache_dir() -> PathBuf {
    let root = std::env::var_os("WEFT_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".cache/weft/kube")
        });
    root.join(KUBE_TARBALL_SHA256)
}

/// kubectl 1.20, what users of the tested API server run and whose output the tests check:
/// `$WEFT_KUBECTL`, else `<kube cache>/kubectl` (Debian's kubernetes-client, unpacked there by
/// `e2e/scripts/kube-build.sh`). An error when it is missing or is not 1.20.
pub fn kubectl_120() -> Result<PathBuf, String> {
    let path = std::env::var_os("WEFT_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("kubectl"));
    let out = std::process::Command::new(&path)
        .args(["version", "--client", "--short"])
        .output()
        .map_err(|e| {
            format!(
                "running {} (e2e/scripts/kube-build.sh puts it there): {e}",
                path.display()
            )
        })?;
    let version = String::from_utf8_lossy(&out.stdout).to_string();
    if !version.contains("v1.20.") {
        return Err(format!(
            "{} is not kubectl 1.20 ({})",
            path.display(),
            version.trim()
        ));
    }
    Ok(path)
}

/// The repository root (this crate's parent folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Binaries {
    /// Finds cached binaries (`WEFT_KUBE_BIN_DIR` overrides the cache folder) and etcd.
    pub fn locate() -> Result<Self, ClusterError> {
        let dir = std::env::var_os("WEFT_KUBE_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(cache_dir);
        let apiserver = dir.join("kube-apiserver");
        let controller_manager = dir.join("kube-controller-manager");
        if !apiserver.is_file() || !controller_manager.is_file() {
            return Err(ClusterError::Missing(format!(
                "no kube-apiserver/kube-controller-manager in {} (run `sudo e2e/scripts/kube-build.sh`, \
                 or set WEFT_E2E_BUILD_KUBE=1 to let the tests build them)",
                dir.display()
            )));
        }
        let etcd = which("etcd").ok_or_else(|| {
            ClusterError::Missing("no etcd on PATH (apt-get install etcd-server)".into())
        })?;
        Ok(Self {
            etcd,
            apiserver,
            controller_manager,
        })
    }

    /// [`Binaries::locate`], building them first with `kube-build.sh` when allowed
    /// (`CI=true` or `WEFT_E2E_BUILD_KUBE=1`, as root). Blocking: call from `spawn_blocking`.
    pub fn locate_or_build() -> Result<Self, ClusterError> {
        match Self::locate() {
            Ok(b) => Ok(b),
            Err(e) if build_allowed() => {
                eprintln!(
                    "weft-e2e: {e}; building them now with kube-build.sh (about 10 minutes cold)"
                );
                let script = repo_root().join("e2e/scripts/kube-build.sh");
                let status = std::process::Command::new("bash")
                    .arg(&script)
                    .status()
                    .map_err(io(format!("running {}", script.display())))?;
                if !status.success() {
                    return Err(ClusterError::Missing(format!(
                        "{} failed ({status})",
                        script.display()
                    )));
                }
                Self::locate()
            }
            Err(e) => Err(e),
        }
    }
}

fn build_allowed() -> bool {
    (is_ci() || std::env::var("WEFT_E2E_BUILD_KUBE").is_ok_and(|v| v == "1")) && is_root()
}

/// `CI=true`: environment problems fail the tests instead of skipping them.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether this process runs as root (network namespaces and iptables need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Reports that a test cannot run here. Outside CI it prints a loud SKIPPED line and returns;
/// in CI (`CI=true`) it panics, because CI must run every test.
pub fn skip(test: &str, reason: &str) {
    if is_ci() {
        panic!("{test}: cannot run in CI: {reason}");
    }
    eprintln!("\n==== SKIPPED {test}: {reason} ====\n");
}

/// A free TCP port on 127.0.0.1 for a listener that starts later (checked by binding it, then
/// released).
///
/// The port is taken from the window just below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), never from it: a port picked with `bind(:0)` comes from that
/// range, and between the pick and the real listener's bind (for a webhook port, the whole
/// start of a control plane) any outgoing connection on the machine — the API server's to etcd,
/// a test's to the API server — may take it as its local port, and the listener then fails with
/// "address in use" (the likely cause of a CI run lost to an operator that could not start;
/// its error was cut from the report, see `exit_report` in `operator.rs`). A process-wide counter keeps tests that run at once
/// apart; the start is spread by process id for two test processes at once.
pub fn free_port() -> Result<u16, ClusterError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, span) = below_ephemeral_range();
    let seed = std::process::id();
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + (seed.wrapping_add(n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(l.local_addr().map_err(io("local_addr"))?.port())
}

/// `(first port, count)` of the window [`free_port`] picks from: up to 12,000 ports right below
/// the ephemeral range's first port, and above 1024.
fn below_ephemeral_range() -> (u16, u32) {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = first_ephemeral.saturating_sub(12_000).max(1025);
    (low, u32::from(first_ephemeral.saturating_sub(low).max(1)))
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// How it was started (for [`Cluster::restart`]).
    bin: PathBuf,
    args: Vec<String>,
}

/// Options of a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Extra IP addresses for the API server's certificate (e.g. the pod bridge address).
    pub extra_ips: Vec<std::net::IpAddr>,
    /// `--bind-address` of the API server.
    pub bind_address: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            extra_ips: vec![],
            bind_address: "127.0.0.1".into(),
        }
    }
}

/// A running control plane. Dropping it kills every process and removes its folder.
pub struct Cluster {
    procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
    /// `https://<bind address, or 127.0.0.1>:<port>`.
    pub server: String,
    pub port: u16,
    /// The static admin token (group `system:masters`).
    pub token: String,
    /// PEM of the CA that signed the API server's certificate.
    pub ca_pem: String,
    pub kubeconfig: PathBuf,
}

struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    params: CertificateParams,
}

fn new_ca() -> Result<Ca, ClusterError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "weft-e2e-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.clone().self_signed(&key)?;
    Ok(Ca { key, cert, params })
}

fn issue(
    ca: &Ca,
    cn: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), ClusterError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![usage];
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(dir: &Path, name: &str, content: &str) -> Result<PathBuf, ClusterError> {
    let p = dir.join(name);
    std::fs::write(&p, content).map_err(io(format!("writing {}", p.display())))?;
    Ok(p)
}

impl Cluster {
    /// Starts etcd, the API server and the controller manager, and waits for `/readyz`.
    pub async fn start(bins: &Binaries, opts: ClusterOptions) -> Result<Self, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("weft-kube-")
            .tempdir()
            .map_err(io("creating the cluster folder"))?;
        let d = dir.path().to_path_buf();
        let token = format!("weft-e2e-admin-{}", std::process::id());

        // Certificates and keys.
        let ca = new_ca()?;
        let ca_pem = ca.cert.pem();
        let ca_file = write(&d, "ca.crt", &ca_pem)?;
        let mut sans = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::DnsName("kubernetes".try_into()?),
            SanType::DnsName("kubernetes.default".try_into()?),
            SanType::DnsName("kubernetes.default.svc".try_into()?),
            SanType::DnsName("kubernetes.default.svc.cluster.local".try_into()?),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress([198, 19, 0, 1].into()),
            SanType::IpAddress([198, 18, 0, 1].into()),
        ];
        sans.extend(opts.extra_ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let (srv_crt, srv_key) = issue(
            &ca,
            "kube-apiserver",
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let srv_crt = write(&d, "apiserver.crt", &srv_crt)?;
        let srv_key = write(&d, "apiserver.key", &srv_key)?;
        let (fp_crt, fp_key) = issue(
            &ca,
            "front-proxy-client",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let fp_crt = write(&d, "front-proxy-client.crt", &fp_crt)?;
        let fp_key = write(&d, "front-proxy-client.key", &fp_key)?;
        let sa_key = KeyPair::generate()?;
        let sa_priv = write(&d, "sa.key", &sa_key.serialize_pem())?;
        let sa_pub = write(&d, "sa.pub", &sa_key.public_key_pem())?;
        let tokens = write(
            &d,
            "tokens.csv",
            &format!("{token},admin,admin,system:masters\n"),
        )?;

        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let port = free_port()?;
        let server = format!("https://{}:{port}", advertise(&opts));
        let kubeconfig = write(&d, "kubeconfig", &kubeconfig_yaml(&server, &ca_pem, &token))?;

        let mut cluster = Cluster {
            procs: Vec::new(),
            dir,
            server: server.clone(),
            port,
            token,
            ca_pem,
            kubeconfig: kubeconfig.clone(),
        };
        let s = |p: &Path| p.display().to_string();

        cluster.spawn(
            "etcd",
            &bins.etcd,
            &[
                format!("--data-dir={}", s(&d.join("etcd"))),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--log-level=warn".into(),
                "--quota-backend-bytes=1073741824".into(),
            ],
        )?;
        cluster
            .wait_tcp("etcd", etcd_port, Duration::from_secs(30))
            .await?;

        cluster.spawn(
            "kube-apiserver",
            &bins.apiserver,
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                format!("--bind-address={}", opts.bind_address),
                format!("--advertise-address={}", advertise(&opts)),
                format!("--secure-port={port}"),
                "--insecure-port=0".into(),
                format!("--cert-dir={}", s(&d.join("certs"))),
                format!("--tls-cert-file={}", s(&srv_crt)),
                format!("--tls-private-key-file={}", s(&srv_key)),
                format!("--client-ca-file={}", s(&ca_file)),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", s(&sa_pub)),
                format!("--service-account-signing-key-file={}", s(&sa_priv)),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                format!("--token-auth-file={}", s(&tokens)),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,DefaultStorageClass,\
                 MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota"
                    .into(),
                format!("--requestheader-client-ca-file={}", s(&ca_file)),
                "--requestheader-allowed-names=front-proxy-client".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-username-headers=X-Remote-User".into(),
                format!("--proxy-client-cert-file={}", s(&fp_crt)),
                format!("--proxy-client-key-file={}", s(&fp_key)),
                // Webhooks and aggregated APIs are called at their endpoints' pod IPs (there is
                // no kube-proxy for ClusterIPs).
                "--enable-aggregator-routing=true".into(),
                "--allow-privileged=true".into(),
                "--v=1".into(),
            ],
        )?;
        let client = cluster.wait_ready().await?;

        cluster.spawn(
            "kube-controller-manager",
            &bins.controller_manager,
            &[
                format!("--kubeconfig={}", s(&kubeconfig)),
                "--controllers=endpoint,endpointslice,serviceaccount,serviceaccount-token,namespace,\
                 garbagecollector,deployment,replicaset"
                    .into(),
                format!("--service-account-private-key-file={}", s(&sa_priv)),
                format!("--root-ca-file={}", s(&ca_file)),
                "--use-service-account-credentials=false".into(),
                "--secure-port=0".into(),
                "--port=0".into(),
                "--leader-elect=false".into(),
                "--concurrent-endpoint-syncs=5".into(),
                "--v=1".into(),
            ],
        )?;
        // The default service account shows the controller manager works.
        cluster
            .wait_service_account(&client, "default", "default")
            .await?;
        Ok(cluster)
    }

    fn spawn(
        &mut self,
        name: &'static str,
        bin: &Path,
        args: &[String],
    ) -> Result<(), ClusterError> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = file.try_clone().map_err(io("cloning a log handle"))?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        self.procs.push(Proc {
            name,
            child,
            log,
            bin: bin.to_path_buf(),
            args: args.to_vec(),
        });
        Ok(())
    }

    /// Kills one process (`etcd`, `kube-apiserver`, `kube-controller-manager`) like a crash and
    /// starts it again with the same flags (its log is appended to). For the API server, waits
    /// until `/readyz` answers again.
    pub async fn restart(&mut self, name: &str) -> Result<(), ClusterError> {
        self.stop(name).await?;
        self.start_again(name).await
    }

    fn proc_mut(&mut self, name: &str) -> Result<&mut Proc, ClusterError> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| ClusterError::Missing(format!("no process named {name}")))
    }

    /// Kills one process like a crash (see [`Cluster::start_again`]).
    pub async fn stop(&mut self, name: &str) -> Result<(), ClusterError> {
        let p = self.proc_mut(name)?;
        let _ = p.child.kill().await;
        Ok(())
    }

    /// Starts a process stopped by [`Cluster::stop`] again with the same flags (its log is
    /// appended to). For the API server, waits until `/readyz` answers again.
    pub async fn start_again(&mut self, name: &str) -> Result<(), ClusterError> {
        let p = self.proc_mut(name)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&p.log)
            .map_err(io(format!("opening {}", p.log.display())))?;
        let err = file.try_clone().map_err(io("cloning a log handle"))?;
        p.child = Command::new(&p.bin)
            .args(&p.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", p.bin.display())))?;
        if name == "kube-apiserver" {
            self.wait_ready().await?;
        }
        Ok(())
    }

    fn check_alive(&mut self) -> Result<(), ClusterError> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(ClusterError::Exited {
                    what: p.name,
                    status: status.to_string(),
                    log: tail(&p.log, 30),
                });
            }
        }
        Ok(())
    }

    fn last_log(&self) -> String {
        self.procs
            .last()
            .map(|p| tail(&p.log, 30))
            .unwrap_or_default()
    }

    async fn wait_tcp(
        &mut self,
        what: &'static str,
        port: u16,
        limit: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            self.check_alive()?;
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClusterError::NotReady {
            what,
            secs: limit.as_secs(),
            last,
            log: self.last_log(),
        })
    }

    async fn wait_ready(&mut self) -> Result<kube::Client, ClusterError> {
        let limit = Duration::from_secs(90);
        let deadline = tokio::time::Instant::now() + limit;
        let client = self.client().await?;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            self.check_alive()?;
            let req = http::Request::get("/readyz").body(Vec::new());
            if let Ok(req) = req {
                match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(client),
                    Ok(Ok(body)) => last = body,
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "timeout".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ClusterError::NotReady {
            what: "kube-apiserver /readyz",
            secs: limit.as_secs(),
            last,
            log: self.last_log(),
        })
    }

    /// Waits until `namespace/name` ServiceAccount exists (the controller manager creates
    /// `default` in every namespace).
    pub async fn wait_service_account(
        &mut self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<(), ClusterError> {
        let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(client.clone(), namespace);
        let limit = Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            self.check_alive()?;
            match api.get_opt(name).await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => last = "not found".into(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ClusterError::NotReady {
            what: "default service account (kube-controller-manager)",
            secs: limit.as_secs(),
            last,
            log: self.last_log(),
        })
    }

    /// A client authenticated with the admin token.
    pub async fn client(&self) -> Result<kube::Client, ClusterError> {
        install_crypto_provider();
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| ClusterError::Kube(e.to_string()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ClusterError::Kube(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| ClusterError::Kube(e.to_string()))
    }

    /// The log file of one of the processes (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log_of(&self, name: &str) -> Option<PathBuf> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.log.clone())
    }
}

fn advertise(opts: &ClusterOptions) -> String {
    if opts.bind_address == "0.0.0.0" || opts.bind_address.is_empty() {
        "127.0.0.1".into()
    } else {
        opts.bind_address.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Reverse order: controller manager, API server, then etcd.
        for p in self.procs.iter_mut().rev() {
            let _ = p.child.start_kill();
        }
    }
}

/// A kubeconfig for `server`, trusting `ca_pem`, authenticating with `token`.
pub fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: weft-e2e\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- \
         name: weft-e2e\n  context:\n    cluster: weft-e2e\n    user: admin\ncurrent-context: weft-e2e\n"
    )
}

/// Installs rustls' ring provider as the process default (kube-rs needs one); idempotent.
pub fn install_crypto_provider() {
    let _ = weft_common::tls::crypto_provider().install_default();
}

/// Standard base64 with padding.
pub fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
