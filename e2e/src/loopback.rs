//! A whole mesh on loopback, started the way `weft demo` starts one: a manifests folder,
//! `weft-operator --manifests` (TLS to the proxies, a bootstrap token, `--require-discovery-identity`),
//! and per pod a `weft-proxy` in explicit mode plus a `weft-test-app`, each pod on its own
//! loopback address `127.A.B.N`. For black-box tests that attack the real binaries.
//!
//! Build the binaries first: `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`.
//!
//! ```ignore
//! let mesh = LoopbackMesh::start(MeshSpec::new("shop")
//!     .pod(PodSpec::new("web-0", "web", 20).label("app", "web").http_app(8080, "web", "v1"))
//!     .pod(PodSpec::new("client-0", "client", 10))
//!     .service(ServiceSpec::new("web", 8080).select("app", "web"))).await;
//! let rsp = mesh.get_via("client-0", &mesh.authority("web", 8080), "/", &[]).await;
//! ```
//!
//! Every process is killed when the mesh is dropped. Each mesh has its own `/24` on loopback
//! (see [`alloc_prefix`]), so tests of one binary may run in parallel; at most [`MAX_MESHES`]
//! run at the same time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Ports every pod uses (as in `weft demo`).
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const PROXY_ADMIN_PORT: u16 = 4191;
pub const DISCOVERY_PORT: u16 = 8086;
pub const OPERATOR_ADMIN_PORT: u16 = 9990;
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The operator's identity on the discovery port.
pub const OPERATOR_IDENTITY: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-operator";
/// Meshes running at the same time in one test binary (the machine is small).
pub const MAX_MESHES: usize = 2;

/// The SPIFFE ID of a service account.
pub fn spiffe(ns: &str, sa: &str) -> String {
    weft_common::SpiffeId {
        trust_domain: TRUST_DOMAIN.into(),
        namespace: ns.into(),
        service_account: sa.into(),
    }
    .to_string()
}

/// The `ownerReferences` block (indented for a Pod's metadata) of a pod of workload
/// `<kind>/<name>`, as Kubernetes' controllers write it: a Deployment's pod is owned by its
/// ReplicaSet `<name>-<hash>`, the hash also its `pod-template-hash` label (added to `labels`).
/// `None` for a kind no controller owns pods as.
pub fn owner_reference_yaml(workload: &str, labels: &mut String) -> Option<String> {
    const HASH: &str = "5d8f7c9b4";
    let (kind, name) = workload.split_once('/')?;
    let (api, kind, owner) = match kind {
        "deployment" => {
            let _ = writeln!(labels, "    pod-template-hash: {HASH}");
            ("apps/v1", "ReplicaSet", format!("{name}-{HASH}"))
        }
        "replicaset" => ("apps/v1", "ReplicaSet", name.to_string()),
        "statefulset" => ("apps/v1", "StatefulSet", name.to_string()),
        "daemonset" => ("apps/v1", "DaemonSet", name.to_string()),
        "job" => ("batch/v1", "Job", name.to_string()),
        _ => return None,
    };
    Some(format!(
        "  ownerReferences:\n    - apiVersion: {api}\n      kind: {kind}\n      name: {owner}\n      uid: 00000000-0000-0000-0000-000000000001\n      controller: true\n"
    ))
}

/// What a pod runs next to its proxy.
#[derive(Clone, Debug)]
pub enum App {
    None,
    /// `weft-test-app http` on the pod IP: answers `"{name} {version}\n"`, `/whoami`, `/echo`,
    /// `/_seen`.
    Http {
        port: u16,
        name: String,
        version: String,
    },
    /// `weft-test-app echo` on the pod IP.
    Echo {
        port: u16,
    },
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub service_account: String,
    /// Last octet of the pod's address.
    pub host: u8,
    pub labels: Vec<(String, String)>,
    /// `containerPort`s the manifest declares: (name, port).
    pub ports: Vec<(String, u16)>,
    pub app: App,
    /// In the manifests from the start, but its processes are started only by
    /// [`LoopbackMesh::start_deferred`].
    pub deferred: bool,
    /// `<kind>/<name>` of the owning workload, given to the proxy as `WEFT_PROXY_WORKLOAD` (what
    /// the injector sets in a cluster).
    pub workload: Option<String>,
    /// Extra environment of the pod's proxy (e.g. `WEFT_PROXY_DISCOVERY_MODE`).
    pub proxy_env: Vec<(String, String)>,
}

impl PodSpec {
    pub fn new(name: &str, service_account: &str, host: u8) -> Self {
        PodSpec {
            name: name.into(),
            service_account: service_account.into(),
            host,
            labels: Vec::new(),
            ports: Vec::new(),
            app: App::None,
            deferred: false,
            proxy_env: Vec::new(),
            workload: None,
        }
    }
    /// See [`PodSpec::workload`].
    pub fn workload(mut self, kind_and_name: &str) -> Self {
        self.workload = Some(kind_and_name.into());
        self
    }
    /// See [`PodSpec::deferred`].
    /// Sets a variable of the pod's proxy.
    pub fn proxy_env(mut self, k: &str, v: &str) -> Self {
        self.proxy_env.push((k.into(), v.into()));
        self
    }
    pub fn deferred(mut self) -> Self {
        self.deferred = true;
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }
    /// An HTTP test app on `port`, declared as containerPort `http`.
    pub fn http_app(mut self, port: u16, name: &str, version: &str) -> Self {
        self.ports.push(("http".into(), port));
        self.app = App::Http {
            port,
            name: name.into(),
            version: version.into(),
        };
        self
    }
    /// A TCP echo app on `port` that the manifest does NOT declare.
    pub fn undeclared_echo(mut self, port: u16) -> Self {
        self.app = App::Echo { port };
        self
    }
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    /// The port's name (`http` unless set; it names the protocol, e.g. `http2`, `grpc`).
    pub port_name: String,
    pub port: u16,
    pub target_port: u16,
    pub selector: Vec<(String, String)>,
    /// `metadata.annotations` (e.g. `weft.io/failure-accrual-consecutive`).
    pub annotations: Vec<(String, String)>,
}

impl ServiceSpec {
    pub fn new(name: &str, port: u16) -> Self {
        ServiceSpec {
            name: name.into(),
            port_name: "http".into(),
            port,
            target_port: port,
            selector: Vec::new(),
            annotations: Vec::new(),
        }
    }
    pub fn annotate(mut self, k: &str, v: &str) -> Self {
        self.annotations.push((k.into(), v.into()));
        self
    }
    pub fn select(mut self, k: &str, v: &str) -> Self {
        self.selector.push((k.into(), v.into()));
        self
    }
    /// See [`ServiceSpec::port_name`].
    pub fn port_name(mut self, name: &str) -> Self {
        self.port_name = name.into();
        self
    }
}

/// How the operator gets its CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerMode {
    /// An issuer written beforehand with [`crate::operator::identity_issuer`]; proxies get its
    /// root out of band (`WEFT_PROXY_TRUST_ANCHORS_FILE`) and verify the operator over TLS
    /// (`--require-control-tls`, `--require-discovery-identity`).
    Provided,
    /// `--identity-issuer DIR` with DIR initially empty (the operator decides); proxies take the
    /// trust anchors from their Certify answer and talk plaintext to the operator.
    EmptyDir,
}

#[derive(Clone, Debug)]
pub struct MeshSpec {
    pub namespace: String,
    /// `weft.io/default-inbound-policy` of the namespace.
    pub default_policy: String,
    pub pods: Vec<PodSpec>,
    pub services: Vec<ServiceSpec>,
    /// Extra manifest files (name, YAML), e.g. SMI objects.
    pub files: Vec<(String, String)>,
    pub issuer: IssuerMode,
    /// Extra service accounts to declare (besides the pods').
    pub service_accounts: Vec<String>,
    /// Extra arguments of `weft-operator` (e.g. `--discovery-mode on-demand`).
    pub operator_args: Vec<String>,
}

impl MeshSpec {
    pub fn new(namespace: &str) -> Self {
        MeshSpec {
            namespace: namespace.into(),
            default_policy: "allow".into(),
            pods: Vec::new(),
            services: Vec::new(),
            files: Vec::new(),
            issuer: IssuerMode::Provided,
            service_accounts: Vec::new(),
            operator_args: Vec::new(),
        }
    }
    pub fn operator_arg(mut self, arg: &str) -> Self {
        self.operator_args.push(arg.into());
        self
    }
    pub fn pod(mut self, p: PodSpec) -> Self {
        self.pods.push(p);
        self
    }
    pub fn service(mut self, s: ServiceSpec) -> Self {
        self.services.push(s);
        self
    }
    pub fn file(mut self, name: &str, yaml: &str) -> Self {
        self.files.push((name.into(), yaml.into()));
        self
    }
    pub fn issuer(mut self, mode: IssuerMode) -> Self {
        self.issuer = mode;
        self
    }
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_accounts.push(sa.into());
        self
    }
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub label: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("log {}: {e}", log.display()));
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Proc {
            label: label.into(),
            child,
            log: log.to_path_buf(),
        }
    }

    /// The process's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pod as started.
pub struct Pod {
    pub spec: PodSpec,
    pub ip: Ipv4Addr,
    pub proxy: Proc,
    pub app: Option<Proc>,
}

impl Pod {
    pub fn inbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), INBOUND_PORT)
    }
    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), OUTBOUND_PORT)
    }
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), PROXY_ADMIN_PORT)
    }
    /// The app's own address (bypassing the proxy), if it has one.
    pub fn app_addr(&self) -> Option<SocketAddr> {
        match self.spec.app {
            App::Http { port, .. } | App::Echo { port } => {
                Some(SocketAddr::new(self.ip.into(), port))
            }
            App::None => None,
        }
    }
}

fn semaphore() -> Arc<tokio::sync::Semaphore> {
    static SEM: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
    SEM.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(MAX_MESHES)))
        .clone()
}

/// A `/24` on loopback that nothing listens on: `127.A.B` with `A` from this process's id and
/// `B` from a counter, skipping prefixes whose operator address is taken.
pub fn alloc_prefix() -> [u8; 3] {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let a = 60 + ((pid / 7 + n / 250) % 190) as u8;
        let b = ((pid % 250) + n) as u8 % 250 + 1;
        let probe = SocketAddr::new(Ipv4Addr::new(127, a, b, 1).into(), OPERATOR_ADMIN_PORT);
        if std::net::TcpListener::bind(probe).is_ok() {
            let probe2 = SocketAddr::new(Ipv4Addr::new(127, a, b, 1).into(), DISCOVERY_PORT);
            if std::net::TcpListener::bind(probe2).is_ok() {
                return [127, a, b];
            }
        }
        assert!(n < 10_000, "no free loopback prefix");
    }
}

fn bin(name: &str) -> PathBuf {
    let p = crate::workspace::target_debug().join(name);
    assert!(
        p.is_file(),
        "{} not built (run `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`)",
        p.display()
    );
    p
}

/// A running mesh. Dropping it kills every process and deletes its folder.
pub struct LoopbackMesh {
    pub spec: MeshSpec,
    pub prefix: [u8; 3],
    pub dir: tempfile::TempDir,
    pub operator: Proc,
    pub pods: Vec<Pod>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl LoopbackMesh {
    /// Writes the manifests, starts the operator and every pod, and waits until each proxy is
    /// ready (certificate and first config). Panics (with logs) when something does not start.
    pub async fn start(spec: MeshSpec) -> LoopbackMesh {
        let permit = semaphore()
            .acquire_owned()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let prefix = alloc_prefix();
        let dir = tempfile::Builder::new()
            .prefix("weft-loopback-")
            .tempdir()
            .unwrap_or_else(|e| panic!("{e}"));
        for sub in ["manifests", "logs", "identity"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap_or_else(|e| panic!("{e}"));
        }
        if spec.issuer == IssuerMode::Provided {
            crate::operator::identity_issuer(&dir.path().join("identity"))
                .unwrap_or_else(|e| panic!("identity issuer: {e}"));
        }
        std::fs::write(
            dir.path().join("bootstrap-token"),
            format!("weft-e2e-{}-{}\n", std::process::id(), prefix[2]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let placeholder = Proc::spawn(
            "placeholder",
            Path::new("true"),
            &[],
            &[],
            &dir.path().join("logs/placeholder.log"),
        );
        let mut mesh = LoopbackMesh {
            spec: spec.clone(),
            prefix,
            dir,
            operator: placeholder,
            pods: Vec::new(),
            _permit: permit,
        };
        mesh.write_manifest("mesh.yaml", &mesh.mesh_yaml());
        for (name, yaml) in &spec.files {
            mesh.write_manifest(name, yaml);
        }
        mesh.operator = mesh.spawn_operator();
        mesh.wait_operator_ready().await;
        for p in spec.pods.iter().filter(|p| !p.deferred) {
            let pod = mesh.spawn_pod(p);
            mesh.pods.push(pod);
        }
        for p in spec.pods.iter().filter(|p| !p.deferred) {
            mesh.wait_proxy_ready(&p.name, Duration::from_secs(60))
                .await;
        }
        mesh
    }

    /// Starts a pod declared with [`PodSpec::deferred`]; waits for its proxy.
    pub async fn start_deferred(&mut self, name: &str) {
        let spec = self
            .spec
            .pods
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {name} in the spec"));
        let pod = self.spawn_pod(&spec);
        self.pods.push(pod);
        self.wait_proxy_ready(name, Duration::from_secs(60)).await;
    }

    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host)
    }
    pub fn operator_ip(&self) -> Ipv4Addr {
        self.ip(1)
    }
    pub fn operator_admin(&self) -> SocketAddr {
        SocketAddr::new(self.operator_ip().into(), OPERATOR_ADMIN_PORT)
    }
    pub fn discovery(&self) -> SocketAddr {
        SocketAddr::new(self.operator_ip().into(), DISCOVERY_PORT)
    }
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }
    pub fn issuer_dir(&self) -> PathBuf {
        self.dir.path().join("identity")
    }
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("bootstrap-token")
    }
    pub fn token(&self) -> Vec<u8> {
        std::fs::read(self.token_file()).unwrap_or_default()
    }
    /// The mesh root (`ca.crt` of the issuer folder), PEM.
    pub fn anchors_file(&self) -> PathBuf {
        self.issuer_dir().join("ca.crt")
    }
    /// `<svc>.<ns>.svc.cluster.local:<port>`.
    pub fn authority(&self, service: &str, port: u16) -> String {
        format!("{service}.{}.svc.cluster.local:{port}", self.spec.namespace)
    }
    pub fn spiffe(&self, sa: &str) -> String {
        spiffe(&self.spec.namespace, sa)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    fn mesh_yaml(&self) -> String {
        let ns = &self.spec.namespace;
        let mut out = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  annotations:\n    weft.io/default-inbound-policy: {}\n",
            self.spec.default_policy
        );
        let mut sas: Vec<String> = self
            .spec
            .pods
            .iter()
            .map(|p| p.service_account.clone())
            .chain(self.spec.service_accounts.iter().cloned())
            .collect();
        sas.sort();
        sas.dedup();
        for sa in sas {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n"
            );
        }
        for p in &self.spec.pods {
            let mut labels = String::from("    weft.io/proxy-version: v0.1.0\n");
            for (k, v) in &p.labels {
                let _ = writeln!(labels, "    {k}: {v}");
            }
            let mut ports = String::new();
            if !p.ports.is_empty() {
                ports.push_str("      ports:\n");
                for (name, port) in &p.ports {
                    let _ = write!(
                        ports,
                        "      - name: {name}\n        containerPort: {port}\n"
                    );
                }
            }
            // #18: the owner a controller would set, so that the compiler derives the same
            // `<kind>/<name>` as the proxy's WEFT_PROXY_WORKLOAD (the endpoint's `workload`).
            let owner = p
                .workload
                .as_deref()
                .and_then(|w| owner_reference_yaml(w, &mut labels))
                .unwrap_or_default();
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n{owner}  labels:\n{labels}\
                 spec:\n  serviceAccountName: {sa}\n  containers:\n    - name: app\n      image: weft/test-app\n{ports}\
                 status:\n  phase: Running\n  podIP: {ip}\n  conditions:\n    - type: Ready\n      status: \"True\"\n",
                name = p.name,
                sa = p.service_account,
                ip = self.ip(p.host),
            );
        }
        for (i, s) in self.spec.services.iter().enumerate() {
            let mut selector = String::new();
            for (k, v) in &s.selector {
                let _ = writeln!(selector, "    {k}: {v}");
            }
            let cluster_ip = Ipv4Addr::new(
                self.prefix[0],
                self.prefix[1],
                self.prefix[2],
                200u8.saturating_add(i as u8),
            );
            let mut annotations = String::new();
            if !s.annotations.is_empty() {
                annotations.push_str("  annotations:\n");
                for (k, v) in &s.annotations {
                    let _ = writeln!(annotations, "    {k}: \"{v}\"");
                }
            }
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n{annotations}\
                 spec:\n  clusterIP: {cluster_ip}\n  selector:\n{selector}  ports:\n    - name: {port_name}\n      port: {port}\n      targetPort: {target}\n",
                name = s.name,
                port_name = s.port_name,
                port = s.port,
                target = s.target_port,
            );
        }
        out
    }

    /// Writes a manifest atomically (temporary file, then rename).
    pub fn write_manifest(&self, name: &str, yaml: &str) {
        let path = self.manifests().join(name);
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    pub fn remove_manifest(&self, name: &str) {
        let _ = std::fs::remove_file(self.manifests().join(name));
    }

    fn spawn_operator(&self) -> Proc {
        let mut args: Vec<String> = vec![
            "--manifests".into(),
            self.manifests().display().to_string(),
            "--discovery-addr".into(),
            self.discovery().to_string(),
            "--admin-addr".into(),
            self.operator_admin().to_string(),
            "--bootstrap-token-file".into(),
            self.token_file().display().to_string(),
            "--identity-issuer".into(),
            self.issuer_dir().display().to_string(),
            "--trust-domain".into(),
            TRUST_DOMAIN.into(),
        ];
        if self.spec.issuer == IssuerMode::Provided {
            args.push("--require-control-tls".into());
            args.push("--require-discovery-identity".into());
        }
        args.extend(self.spec.operator_args.iter().cloned());
        Proc::spawn(
            "weft-operator",
            &bin("weft-operator"),
            &args,
            &[("WEFT_LOG".into(), "info".into())],
            &self.dir.path().join("logs/operator.log"),
        )
    }

    async fn wait_operator_ready(&mut self) {
        let admin = self.operator_admin();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http_get(admin, "/ready").await {
                if r.status == 200 {
                    return;
                }
            }
            if let Some(st) = self.operator.exited() {
                panic!("weft-operator exited ({st}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "weft-operator not ready within 60 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the operator and starts it again with the same arguments; waits for `/ready`.
    pub async fn restart_operator(&mut self) {
        self.operator.kill();
        self.operator = self.spawn_operator();
        self.wait_operator_ready().await;
    }

    fn proxy_env(&self, p: &PodSpec) -> Vec<(String, String)> {
        let ip = self.ip(p.host);
        let mut env: Vec<(&str, String)> = vec![
            ("WEFT_PROXY_CONTROL_ADDR", self.discovery().to_string()),
            (
                "WEFT_PROXY_POD",
                format!("{}/{}", self.spec.namespace, p.name),
            ),
            ("WEFT_PROXY_SERVICE_ACCOUNT", p.service_account.clone()),
            (
                "WEFT_PROXY_TOKEN_FILE",
                self.token_file().display().to_string(),
            ),
            ("WEFT_PROXY_INBOUND_ADDR", format!("{ip}:{INBOUND_PORT}")),
            ("WEFT_PROXY_OUTBOUND_ADDR", format!("{ip}:{OUTBOUND_PORT}")),
            ("WEFT_PROXY_ADMIN_ADDR", format!("{ip}:{PROXY_ADMIN_PORT}")),
            ("WEFT_PROXY_APP_IP", ip.to_string()),
            ("WEFT_PROXY_SHUTDOWN_GRACE", "1s".into()),
            ("WEFT_LOG", "info".into()),
        ];
        if let Some(workload) = &p.workload {
            env.push(("WEFT_PROXY_WORKLOAD", workload.clone()));
        }
        for (k, v) in &p.proxy_env {
            env.push((k.as_str(), v.clone()));
        }
        if self.spec.issuer == IssuerMode::Provided {
            env.push((
                "WEFT_PROXY_TRUST_ANCHORS_FILE",
                self.anchors_file().display().to_string(),
            ));
            env.push(("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_IDENTITY.into()));
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn spawn_pod(&self, p: &PodSpec) -> Pod {
        let ip = self.ip(p.host);
        let logs = self.dir.path().join("logs");
        let app = match &p.app {
            App::None => None,
            App::Http {
                port,
                name,
                version,
            } => Some(Proc::spawn(
                &format!("{}/app", p.name),
                &bin("weft-test-app"),
                &[
                    "http".into(),
                    "--listen".into(),
                    format!("{ip}:{port}"),
                    "--name".into(),
                    name.clone(),
                    "--version".into(),
                    version.clone(),
                ],
                &[],
                &logs.join(format!("{}-app.log", p.name)),
            )),
            App::Echo { port } => Some(Proc::spawn(
                &format!("{}/app", p.name),
                &bin("weft-test-app"),
                &["echo".into(), "--listen".into(), format!("{ip}:{port}")],
                &[],
                &logs.join(format!("{}-app.log", p.name)),
            )),
        };
        let proxy = Proc::spawn(
            &format!("{}/proxy", p.name),
            &bin("weft-proxy"),
            &[],
            &self.proxy_env(p),
            &logs.join(format!("{}-proxy.log", p.name)),
        );
        Pod {
            spec: p.clone(),
            ip,
            proxy,
            app,
        }
    }

    /// Kills a pod's proxy and starts it again (same environment); waits for `/ready`.
    pub async fn restart_proxy(&mut self, name: &str) {
        let i = self
            .pods
            .iter()
            .position(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"));
        self.pods[i].proxy.kill();
        let spec = self.pods[i].spec.clone();
        let proxy = Proc::spawn(
            &format!("{name}/proxy"),
            &bin("weft-proxy"),
            &[],
            &self.proxy_env(&spec),
            &self.dir.path().join(format!("logs/{name}-proxy.log")),
        );
        self.pods[i].proxy = proxy;
        self.wait_proxy_ready(name, Duration::from_secs(60)).await;
    }

    /// Rewrites `mesh.yaml` from the spec (e.g. after pushing a pod to `self.spec.pods`).
    pub fn rewrite_mesh_yaml(&self) {
        self.write_manifest("mesh.yaml", &self.mesh_yaml());
    }

    pub async fn wait_proxy_ready(&mut self, name: &str, limit: Duration) {
        let admin = self.pod(name).admin();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(r) = http_get(admin, "/ready").await {
                if r.status == 200 {
                    return;
                }
            }
            let exited = self
                .pods
                .iter_mut()
                .find(|p| p.spec.name == name)
                .and_then(|p| p.proxy.exited());
            if let Some(st) = exited {
                panic!("weft-proxy of {name} exited ({st}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "weft-proxy of {name} not ready within {limit:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every log of this mesh (for failure messages), each cut to its last 6 KB.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("logs")) {
            let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                let s = std::fs::read_to_string(&p).unwrap_or_default();
                let tail = if s.len() > 6000 {
                    let mut cut = s.len() - 6000;
                    while !s.is_char_boundary(cut) {
                        cut += 1;
                    }
                    &s[cut..]
                } else {
                    &s
                };
                let _ = writeln!(out, "==== {}\n{tail}", p.display());
            }
        }
        out
    }

    /// The operator's resident memory (VmRSS) in KiB, if it runs.
    pub fn operator_rss_kib(&self) -> Option<u64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.operator.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// `GET /status` of the operator's admin port.
    pub async fn operator_status(&self) -> Value {
        let r = http_get(self.operator_admin(), "/status")
            .await
            .unwrap_or_else(|e| panic!("operator /status: {e}"));
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("operator /status: {e}"))
    }

    /// The conditions `/status` reports for object `kind`/`name`, as (type, status, reason,
    /// message); `None` when the object has no status.
    pub async fn conditions(&self, kind: &str, name: &str) -> Option<Vec<Condition>> {
        let status = self.operator_status().await;
        find_conditions(&status, kind, name)
    }

    /// The config version a proxy reports at `/config`.
    pub async fn proxy_config_version(&self, pod: &str) -> Option<String> {
        let r = http_get(self.pod(pod).admin(), "/config").await.ok()?;
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        v.get("version").and_then(Value::as_str).map(str::to_owned)
    }

    /// The config a proxy holds (`/config`).
    pub async fn proxy_config(&self, pod: &str) -> Value {
        let r = http_get(self.pod(pod).admin(), "/config")
            .await
            .unwrap_or_else(|e| panic!("{pod} /config: {e}"));
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    /// Waits until `pod`'s config version differs from `before`; false after `limit`.
    pub async fn wait_config_change(
        &self,
        pod: &str,
        before: Option<&str>,
        limit: Duration,
    ) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let now = self.proxy_config_version(pod).await;
            if now.is_some() && now.as_deref() != before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Writes a manifest and waits until every pod in `pods` applied a new config (panics with
    /// logs after 30 s).
    pub async fn apply_and_wait(&self, name: &str, yaml: &str, pods: &[&str]) {
        let mut before = Vec::new();
        for p in pods {
            before.push(self.proxy_config_version(p).await);
        }
        self.write_manifest(name, yaml);
        for (p, b) in pods.iter().zip(&before) {
            assert!(
                self.wait_config_change(p, b.as_deref(), Duration::from_secs(30))
                    .await,
                "{p} did not apply {name} within 30 s:\n{}",
                self.logs()
            );
        }
    }

    /// One request from `pod` through its outbound listener to `authority` (explicit mode).
    pub async fn get_via(
        &self,
        pod: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawResponse, String> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n");
        for (k, v) in headers {
            let _ = write!(req, "{k}: {v}\r\n");
        }
        req.push_str("Connection: close\r\n\r\n");
        http_raw(
            self.pod(pod).outbound(),
            req.as_bytes(),
            Duration::from_secs(15),
        )
        .await
    }

    /// `n` requests (up to 8 at a time) from `pod` to `authority`; counts statuses and bodies.
    pub async fn tally(
        &self,
        pod: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        n: usize,
    ) -> Tally {
        use futures::StreamExt;
        let results: Vec<Result<RawResponse, String>> = futures::stream::iter(0..n)
            .map(|_| self.get_via(pod, authority, path, headers))
            .buffer_unordered(8)
            .collect()
            .await;
        let mut t = Tally::default();
        for r in results {
            t.requests += 1;
            match r {
                Ok(r) => {
                    *t.by_status.entry(r.status).or_default() += 1;
                    *t.by_body.entry(r.body_text()).or_default() += 1;
                }
                Err(e) => {
                    t.errors += 1;
                    t.last_error = Some(e);
                }
            }
        }
        t
    }

    /// Every request head the test app of `pod` received so far (asked directly, not through
    /// the proxy).
    pub async fn app_seen(&self, pod: &str) -> Vec<String> {
        let addr = self
            .pod(pod)
            .app_addr()
            .unwrap_or_else(|| panic!("{pod} has no app"));
        let r = http_get(addr, "/_seen")
            .await
            .unwrap_or_else(|e| panic!("{pod} app /_seen: {e}"));
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{pod} app /_seen: {e}"))
    }

    /// A client certificate chain and key for `sa` in this mesh's namespace, signed by the mesh
    /// issuer (as an attacker who got one would hold). Needs [`IssuerMode::Provided`].
    pub fn mint_client_cert(
        &self,
        sa: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        mint_cert(&self.issuer_dir(), &self.spiffe(sa))
    }

    /// TLS to `pod`'s inbound port, presenting `client` (or no certificate), not checking the
    /// server; then writes `header` (the 8-byte transport header) if given.
    pub async fn mesh_connect(
        &self,
        pod: &str,
        client: Option<&str>,
        header: Option<(u16, u8)>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let cert = client.map(|sa| self.mint_client_cert(sa));
        let mut tls = tls_connect(self.pod(pod).inbound(), cert).await?;
        if let Some((port, hint)) = header {
            tls.write_all(&transport_header(port, hint))
                .await
                .map_err(|e| format!("writing the transport header: {e}"))?;
        }
        Ok(tls)
    }
}

/// One condition of an object's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// Conditions of `kind`/`name` in a `/status` document (objects matched by `object.kind` and
/// `object.name`).
pub fn find_conditions(status: &Value, kind: &str, name: &str) -> Option<Vec<Condition>> {
    let objects = status.get("objects")?.as_array()?;
    let obj = objects.iter().find(|o| {
        o.pointer("/object/kind").and_then(Value::as_str) == Some(kind)
            && o.pointer("/object/name").and_then(Value::as_str) == Some(name)
    })?;
    let conds = obj.get("conditions")?.as_array()?;
    Some(
        conds
            .iter()
            .map(|c| {
                let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                Condition {
                    type_: s("type"),
                    status: s("status"),
                    reason: s("reason"),
                    message: s("message"),
                }
            })
            .collect(),
    )
}

/// What a batch of requests got.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_body: BTreeMap<String, u64>,
    pub errors: u64,
    pub last_error: Option<String>,
}

impl Tally {
    pub fn status(&self, s: u16) -> u64 {
        self.by_status.get(&s).copied().unwrap_or(0)
    }
    pub fn body(&self, b: &str) -> u64 {
        self.by_body.get(b).copied().unwrap_or(0)
    }
    pub fn server_errors(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| (500..600).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Clone, Debug, Default)]
pub struct RawResponse {
    pub status: u16,
    /// Header (name lower-cased, value).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr` (admin ports, apps directly).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<RawResponse, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_raw(addr, req.as_bytes(), Duration::from_secs(5)).await
}

/// Sends `request` as is on a new connection and reads one response (within `limit`).
pub async fn http_raw(
    addr: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> Result<RawResponse, String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.write_all(request)
            .await
            .map_err(|e| format!("write {addr}: {e}"))?;
        read_response(&mut s).await
    };
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| format!("{addr}: no response within {limit:?}"))?
}

/// Reads one HTTP/1.1 response (content-length, chunked, or until EOF).
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Result<RawResponse, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed before a response head ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let Some(i) = find(&rest, b"\r\n") else {
                let n = s
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read body: {e}"))?;
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&chunk[..n]);
                continue;
            };
            let size_line = String::from_utf8_lossy(&rest[..i]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                break;
            }
            while rest.len() < i + 2 + size + 2 {
                let n = s
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read body: {e}"))?;
                if n == 0 {
                    return Err("connection closed inside a chunk".into());
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            body.extend_from_slice(&rest[i + 2..i + 2 + size]);
            rest.drain(..i + 2 + size + 2);
        }
        body
    } else if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else {
        loop {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads whatever arrives until EOF, an error, or `limit`; returns the bytes and how it ended.
pub async fn read_all_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (out, End::Timeout),
            Ok(Ok(0)) => return (out, End::Eof),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return (out, End::Error(e.to_string())),
        }
    }
}

/// How a read ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Eof,
    Timeout,
    Error(String),
}

/// The 8-byte transport header: `WEFT`, version 1, port (big endian), hint
/// (0 opaque, 1 detect, 2 HTTP/1 app over HTTP/2, 3 HTTP/2).
pub fn transport_header(port: u16, hint: u8) -> [u8; 8] {
    let p = port.to_be_bytes();
    [b'W', b'E', b'F', b'T', 1, p[0], p[1], hint]
}

/// A leaf certificate for `spiffe_id` signed by the issuer in `issuer_dir` (`issuer.crt`,
/// `issuer.key`); the chain is leaf then issuer.
pub fn mint_cert(
    issuer_dir: &Path,
    spiffe_id: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    };
    let issuer_pem = std::fs::read_to_string(issuer_dir.join("issuer.crt"))
        .unwrap_or_else(|e| panic!("issuer.crt: {e}"));
    let key_pem = std::fs::read_to_string(issuer_dir.join("issuer.key"))
        .unwrap_or_else(|e| panic!("issuer.key: {e}"));
    let issuer_key = KeyPair::from_pem(&key_pem).unwrap_or_else(|e| panic!("issuer.key: {e}"));
    let issuer = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, issuer_key)
        .unwrap_or_else(|e| panic!("issuer.crt: {e}"));
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    params
        .distinguished_name
        .push(DnType::CommonName, "attacker");
    params.subject_alt_names = vec![SanType::URI(
        spiffe_id.try_into().unwrap_or_else(|e| panic!("{e}")),
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = params
        .signed_by(&key, &issuer)
        .unwrap_or_else(|e| panic!("signing: {e}"));
    let issuer_der = rustls_pemfile_first(&issuer_pem);
    (
        vec![leaf.der().clone(), issuer_der],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn rustls_pemfile_first(pem_text: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem_text.as_bytes()).unwrap_or_else(|e| panic!("PEM: {e}"))
}

/// Accepts any server certificate: the attacker does not care who answers.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client connection to `addr` presenting `cert` (or none), accepting any server.
pub async fn tls_connect(
    addr: SocketAddr,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let provider = Arc::new(weft_common::tls::crypto_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = ServerName::try_from("attacker.weft.invalid").map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| format!("TLS to {addr} timed out"))?
        .map_err(|e| format!("TLS to {addr}: {e}"))
}

/// Percent-decodes unreserved characters and removes dot segments (RFC 3986 5.2.4) and
/// duplicate slashes: how an app that normalises would read `path`.
pub fn normalise_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    // Decode every %XX (an app may decode all of them).
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                decoded.push(v);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// An `HTTPRouteGroup` (v1alpha4) whose `spec.matches` is `matches_yaml` (a YAML list, indented
/// by two spaces, e.g. `"  - name: all\n    pathRegex: /\n"`).
pub fn route_group_yaml(ns: &str, name: &str, matches_yaml: &str) -> String {
    format!(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  matches:\n{matches_yaml}"
    )
}

/// A `TrafficTarget` (v1alpha3): `sources` may call `dest_sa` on the `matches` of route group
/// `group`.
pub fn traffic_target_yaml(
    ns: &str,
    name: &str,
    dest_sa: &str,
    sources: &[&str],
    group: &str,
    matches: &[&str],
) -> String {
    let mut src = String::new();
    for s in sources {
        let _ = write!(
            src,
            "  - kind: ServiceAccount\n    name: {s}\n    namespace: {ns}\n"
        );
    }
    format!(
        "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  destination:\n    kind: ServiceAccount\n    name: {dest_sa}\n    namespace: {ns}\n  sources:\n{src}  rules:\n  - kind: HTTPRouteGroup\n    name: {group}\n    matches: [{}]\n",
        matches.join(", ")
    )
}

/// A `TrafficSplit` (v1alpha4) of `root` over `backends` (service, weight); `matches`: names of
/// HTTPRouteGroups the split applies to (empty: all requests).
pub fn split_yaml(
    ns: &str,
    name: &str,
    root: &str,
    backends: &[(&str, u32)],
    matches: &[&str],
) -> String {
    let mut out = format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  service: {root}\n"
    );
    if !matches.is_empty() {
        out.push_str("  matches:\n");
        for m in matches {
            let _ = write!(out, "  - kind: HTTPRouteGroup\n    name: {m}\n");
        }
    }
    out.push_str("  backends:\n");
    for (svc, w) in backends {
        let _ = write!(out, "  - service: {svc}\n    weight: {w}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_an_app() {
        assert_eq!(normalise_path("/public/../private"), "/private");
        assert_eq!(normalise_path("/public/%2e%2e/private"), "/private");
        assert_eq!(normalise_path("/public/%2E%2E/private?x=1"), "/private");
        assert_eq!(normalise_path("//public/./a"), "/public/a");
        assert_eq!(normalise_path("/public/a"), "/public/a");
    }

    #[test]
    fn header_bytes() {
        assert_eq!(&transport_header(8080, 3), b"WEFT\x01\x1f\x90\x03");
    }
}
