//! `weft-operator` as a process against a real API server ([`crate::cluster`]): webhook and
//! identity certificates, the SMI CRDs with their conversion webhook pointed at the operator,
//! the validating webhook, the operator process itself, and a simulated proxy (a Discovery
//! client that applies and ACKs what it is sent).
//!
//! The operator binary is not built here (the build directory is locked while tests run): build
//! it first with `cargo build -p weft-operator --bins`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use weft_proxy_api::v1;
use weft_proxy_api::ClientState;

use crate::cluster::{base64, free_port, repo_root};

/// Field manager of what the helpers install.
pub const MANAGER: &str = "weft-e2e";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
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
    #[error("kubernetes: {0}")]
    Kube(String),
    #[error("{what} did not happen within {secs}s; last: {last}")]
    Timeout {
        what: String,
        secs: u64,
        last: String,
    },
    #[error("discovery: {0}")]
    Discovery(String),
    #[error("weft-operator exited ({status}); log tail:\n{log}")]
    Exited { status: String, log: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OperatorError {
    let what = what.into();
    move |source| OperatorError::Io { what, source }
}

fn kube_err(e: impl std::fmt::Display) -> OperatorError {
    OperatorError::Kube(e.to_string())
}

/// `target/debug/weft-operator`, or an error saying how to build it.
pub fn operator_binary() -> Result<PathBuf, OperatorError> {
    let bin = crate::workspace::target_debug().join("weft-operator");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(OperatorError::Missing(format!(
            "{} not built (run `cargo build -p weft-operator --bins`)",
            bin.display()
        )))
    }
}

fn write(path: &Path, content: &str) -> Result<(), OperatorError> {
    std::fs::write(path, content).map_err(io(format!("writing {}", path.display())))
}

fn ca_params(cn: &str, path_len: Option<u8>) -> Result<CertificateParams, OperatorError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes `tls.crt`/`tls.key` (a serving certificate for 127.0.0.1, for `--webhook-cert-dir`)
/// into `dir`; returns the PEM of the CA that signed it (the webhooks' `caBundle`).
pub fn webhook_tls(dir: &Path) -> Result<String, OperatorError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params("weft-e2e webhook CA", None)?;
    let ca_cert = ca_params.clone().self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "weft-operator webhook");
    params.subject_alt_names = vec![
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::DnsName("localhost".try_into()?),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    write(&dir.join("tls.crt"), &cert.pem())?;
    write(&dir.join("tls.key"), &key.serialize_pem())?;
    Ok(ca_cert.pem())
}

/// Writes an identity issuer (`ca.crt`, `issuer.crt`, `issuer.key`: a root and an intermediate
/// signed by it) into `dir`, for `--identity-issuer`.
pub fn identity_issuer(dir: &Path) -> Result<(), OperatorError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let root_key = KeyPair::generate()?;
    let root_params = ca_params("weft-e2e root CA", Some(1))?;
    let root = root_params.clone().self_signed(&root_key)?;
    let issuer_key = KeyPair::generate()?;
    let issuer_params = ca_params("weft-e2e issuer", Some(0))?;
    let signer = rcgen::Issuer::from_params(&root_params, &root_key);
    let issuer = issuer_params.signed_by(&issuer_key, &signer)?;
    write(&dir.join("ca.crt"), &root.pem())?;
    write(&dir.join("issuer.crt"), &issuer.pem())?;
    write(&dir.join("issuer.key"), &issuer_key.serialize_pem())?;
    Ok(())
}

/// The SMI CRDs of `crds/smi.yaml`; with `webhook = Some((base_url, ca_pem))` their conversion
/// webhook is `<base_url>/convert`, trusted by `ca_pem` (instead of the in-cluster Service).
pub fn smi_crds(webhook: Option<(&str, &str)>) -> Result<Vec<Value>, OperatorError> {
    use serde::Deserialize;
    let path = repo_root().join("crds/smi.yaml");
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut crd = Value::deserialize(doc).map_err(|e| OperatorError::Kube(e.to_string()))?;
        if crd.is_null() {
            continue;
        }
        if let (Some((base, ca)), Some(conv)) = (webhook, crd.pointer_mut("/spec/conversion")) {
            if conv.get("strategy").and_then(Value::as_str) == Some("Webhook") {
                conv["webhook"]["clientConfig"] = json!({
                    "url": format!("{base}/convert"),
                    "caBundle": base64(ca.as_bytes()),
                });
            }
        }
        out.push(crd);
    }
    Ok(out)
}

/// Server-side applies the SMI CRDs (see [`smi_crds`]) and waits until each is Established.
pub async fn install_crds(
    client: &kube::Client,
    webhook: Option<(&str, &str)>,
) -> Result<(), OperatorError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = smi_crds(webhook)?;
    let mut names = Vec::new();
    for crd in &crds {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| OperatorError::Kube("CRD without a name".into()))?
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .map_err(|e| OperatorError::Kube(format!("applying CRD {name}: {e}")))?;
        names.push(name);
    }
    for name in names {
        let api = api.clone();
        let n = name.clone();
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            move || {
                let api = api.clone();
                let n = n.clone();
                async move {
                    let crd = api.get(&n).await.map_err(|e| e.to_string())?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    if established {
                        Ok(Some(()))
                    } else {
                        Ok(None)
                    }
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Installs a ValidatingWebhookConfiguration (like the chart's) calling `<base_url>/validate`
/// for every SMI group, failure policy Fail.
pub async fn install_validating_webhook(
    client: &kube::Client,
    base_url: &str,
    ca_pem: &str,
) -> Result<(), OperatorError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "weft-smi-validation"},
        "webhooks": [{
            "name": "smi.validate.weft.io",
            "admissionReviewVersions": ["v1", "v1beta1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": {"url": format!("{base_url}/validate"), "caBundle": base64(ca_pem.as_bytes())},
            "rules": [{
                "apiGroups": ["split.smi-spec.io", "access.smi-spec.io", "specs.smi-spec.io"],
                "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["*"],
                "scope": "Namespaced"
            }]
        }]
    });
    api.patch(
        "weft-smi-validation",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&config),
    )
    .await
    .map_err(kube_err)?;
    Ok(())
}

/// Polls `check` (every 200 ms) until it returns `Ok(Some(v))`; `Ok(None)` and `Err(last)` mean
/// "not yet". Fails after `limit` with the last error.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    limit: Duration,
    mut check: F,
) -> Result<T, OperatorError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(10), check()).await {
            Ok(Ok(Some(v))) => return Ok(v),
            Ok(Ok(None)) => "(not yet)".to_string(),
            Ok(Err(e)) => e,
            Err(_) => "check timed out".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(OperatorError::Timeout {
                what: what.to_string(),
                secs: limit.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A control plane prepared for operators that serve webhooks on 127.0.0.1:`webhook_port`:
/// webhook certificates in `certs` (their CA is `webhook_ca`), the SMI CRDs converting through
/// that port and, when asked, the validating webhook pointed at it. No operator runs yet.
pub struct WebhookPlane {
    pub cluster: crate::cluster::Cluster,
    pub client: kube::Client,
    /// Scratch folder (operators' logs); `certs` is inside it.
    pub dir: tempfile::TempDir,
    /// The `weft-operator` binary.
    pub bin: PathBuf,
    pub certs: PathBuf,
    pub webhook_port: u16,
    pub webhook_ca: String,
}

impl WebhookPlane {
    /// Starts it (`crds`: install the SMI CRDs; `validating_webhook`: and weft's validating
    /// webhook). `None` after a loud skip when the control-plane or operator binaries are
    /// missing (a panic in CI, see [`crate::cluster::skip`]).
    pub async fn start(
        test: &str,
        dir_prefix: &str,
        crds: bool,
        validating_webhook: bool,
    ) -> Option<WebhookPlane> {
        use crate::cluster::{skip, Binaries, Cluster, ClusterOptions};
        crate::cluster::install_crypto_provider();
        let bins = match tokio::task::spawn_blocking(Binaries::locate_or_build).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                skip(test, &e.to_string());
                return None;
            }
            Err(e) => panic!("{e}"),
        };
        let bin = match operator_binary() {
            Ok(b) => b,
            Err(e) => {
                skip(test, &e.to_string());
                return None;
            }
        };
        let cluster = Cluster::start(&bins, ClusterOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{test}: control plane failed to start: {e}"));
        let client = cluster.client().await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix(dir_prefix)
            .tempdir()
            .unwrap();
        let certs = dir.path().join("webhook");
        let webhook_ca = webhook_tls(&certs).unwrap();
        let webhook_port = free_port().unwrap();
        let base = format!("https://127.0.0.1:{webhook_port}");
        if crds {
            install_crds(&client, Some((&base, &webhook_ca)))
                .await
                .unwrap();
        }
        if validating_webhook {
            install_validating_webhook(&client, &base, &webhook_ca)
                .await
                .unwrap();
        }
        Some(WebhookPlane {
            cluster,
            client,
            dir,
            bin,
            certs,
            webhook_port,
            webhook_ca,
        })
    }
}

/// How to run one operator process.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// `--webhook-cert-dir` and the loopback port of the webhooks (pick it first with
    /// [`free_port`] to point webhook configurations at it before the operator starts).
    pub webhook: Option<(PathBuf, u16)>,
    /// `--leader-elect`, with this `--pod-name` and `--namespace`.
    pub leader: Option<(String, String)>,
    /// Extra arguments.
    pub args: Vec<String>,
}

/// A running `weft-operator` (killed when dropped).
pub struct OperatorProcess {
    child: Child,
    pub log: PathBuf,
    pub admin_addr: SocketAddr,
    pub discovery_addr: SocketAddr,
    pub webhook_addr: Option<SocketAddr>,
}

fn tail(path: &Path, lines: usize) -> String {
    last_lines(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

fn last_lines(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of an exited operator's log before the backtrace of its error: the
/// error itself (`Error: ...` and its causes) rather than the frames a backtrace fills the tail
/// with.
fn exit_report(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    last_lines(
        s.split("\nStack backtrace:").next().unwrap_or_default(),
        lines,
    )
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl OperatorProcess {
    /// Starts `bin` against the cluster of `kubeconfig`, with its identity issuer in
    /// `dir/issuer` (generated) and its log in `dir/<log_name>.log`, every listener on a free
    /// loopback port.
    pub fn start(
        bin: &Path,
        kubeconfig: &Path,
        dir: &Path,
        log_name: &str,
        options: &OperatorOptions,
    ) -> Result<Self, OperatorError> {
        let issuer = dir.join("issuer");
        if !issuer.join("issuer.key").is_file() {
            identity_issuer(&issuer)?;
        }
        let port = |what: &str| {
            free_port().map_err(|e| OperatorError::Missing(format!("a free port for {what}: {e}")))
        };
        let admin_addr = loopback(port("admin")?);
        let discovery_addr = loopback(port("discovery")?);
        let mut args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--admin-addr={admin_addr}"),
            format!("--discovery-addr={discovery_addr}"),
            format!("--identity-issuer={}", issuer.display()),
        ];
        let mut webhook_addr = None;
        if let Some((certs, webhook_port)) = &options.webhook {
            let addr = loopback(*webhook_port);
            args.push(format!("--webhook-addr={addr}"));
            args.push(format!("--webhook-cert-dir={}", certs.display()));
            webhook_addr = Some(addr);
        }
        if let Some((namespace, name)) = &options.leader {
            args.push("--leader-elect".into());
            args.push(format!("--namespace={namespace}"));
            args.push(format!("--pod-name={name}"));
        }
        args.extend(options.args.iter().cloned());
        let log = dir.join(format!("{log_name}.log"));
        let file =
            std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = file.try_clone().map_err(io("cloning a log handle"))?;
        let child = Command::new(bin)
            .args(&args)
            .env(
                "WEFT_LOG",
                std::env::var("WEFT_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        Ok(OperatorProcess {
            child,
            log,
            admin_addr,
            discovery_addr,
            webhook_addr,
        })
    }

    /// `https://127.0.0.1:<webhook port>` (for webhook client configs).
    pub fn webhook_url(&self) -> Option<String> {
        self.webhook_addr.map(|a| format!("https://{a}"))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_alive(&mut self) -> Result<(), OperatorError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(OperatorError::Exited {
                status: status.to_string(),
                log: exit_report(&self.log, 40),
            }),
            _ => Ok(()),
        }
    }

    /// GET `path` on the admin port: (status code, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.admin_addr, path).await
    }

    /// Waits until `GET /ready` answers 200 (every watch listed, first snapshot compiled).
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), OperatorError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.check_alive()?;
            let last = match self.admin_get("/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {body}"),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(OperatorError::Timeout {
                    what: "weft-operator /ready".into(),
                    secs: limit.as_secs(),
                    last: format!("{last}; log tail:\n{}", self.log_tail(40)),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL (a crash: nothing is released) and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A minimal HTTP/1.1 GET over plain TCP (admin endpoints), with a 5 s timeout.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not HTTP: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "timeout".to_string())?
}

/// One route of an outbound port: its name and `(backend service, weight)` pairs.
pub type RouteSummary = (String, Vec<(String, u64)>);

/// A simulated proxy: one Discovery stream, applying and ACKing every response.
pub struct SimProxy {
    tx: mpsc::Sender<v1::DiscoveryRequest>,
    stream: tonic::Streaming<v1::DiscoveryResponse>,
    /// What it holds.
    pub state: ClientState,
    /// Versions of every response applied, in order.
    pub versions: Vec<String>,
}

impl SimProxy {
    /// Connects to `addr` and subscribes as pod `namespace/pod` with `service_account`.
    pub async fn connect(
        addr: SocketAddr,
        namespace: &str,
        pod: &str,
        service_account: &str,
    ) -> Result<Self, OperatorError> {
        let d = |e: &dyn std::fmt::Display| OperatorError::Discovery(e.to_string());
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| d(&e))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| d(&e))?;
        let mut client = v1::discovery_client::DiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        tx.send(v1::DiscoveryRequest::subscribe(v1::Subscribe {
            pod_namespace: namespace.into(),
            pod_name: pod.into(),
            service_account: service_account.into(),
            proxy_version: "e2e".into(),
            known_versions: Default::default(),
            ..Default::default()
        }))
        .await
        .map_err(|e| d(&e))?;
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| OperatorError::Discovery("no answer to the stream request".into()))?
        .map_err(|e| d(&e))?
        .into_inner();
        Ok(SimProxy {
            tx,
            stream,
            state: ClientState::new(),
            versions: Vec::new(),
        })
    }

    /// Waits up to `limit` for the next response, applies it and ACKs it.
    pub async fn next(&mut self, limit: Duration) -> Result<v1::DiscoveryResponse, OperatorError> {
        let msg = tokio::time::timeout(limit, self.stream.message())
            .await
            .map_err(|_| OperatorError::Timeout {
                what: "a discovery response".into(),
                secs: limit.as_secs(),
                last: format!("holding version {:?}", self.state.version()),
            })?
            .map_err(|e| OperatorError::Discovery(e.to_string()))?
            .ok_or_else(|| OperatorError::Discovery("stream closed".into()))?;
        let (answer, result) = self.state.handle(&msg);
        result.map_err(|r| OperatorError::Discovery(format!("rejected response: {}", r.error)))?;
        self.versions.push(msg.version.clone());
        self.tx
            .send(answer)
            .await
            .map_err(|e| OperatorError::Discovery(e.to_string()))?;
        Ok(msg)
    }

    /// Applies responses until `done(state)` holds (checked first on the current state).
    pub async fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&ClientState) -> bool,
    ) -> Result<(), OperatorError> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.state) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(_) => {}
                Err(OperatorError::Timeout { .. }) => {
                    return Err(OperatorError::Timeout {
                        what: what.to_string(),
                        secs: limit.as_secs(),
                        last: format!("{:?}", self.routes_summary()),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Every outbound service's first-port routes: `outbound name → [(route, [(backend, weight)])]`.
    pub fn routes_summary(&self) -> Vec<(String, Vec<RouteSummary>)> {
        self.state
            .resources()
            .iter()
            .filter_map(|(name, r)| match &r.kind {
                Some(v1::resource::Kind::Outbound(o)) => Some((name.clone(), routes_of(o))),
                _ => None,
            })
            .collect()
    }
}

fn routes_of(o: &v1::OutboundService) -> Vec<RouteSummary> {
    o.ports
        .first()
        .map(|p| {
            p.routes
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        r.backends
                            .iter()
                            .map(|b| (b.service.clone(), b.weight))
                            .collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The routes (first port) of `outbound:<service>.<namespace>` in `state`, if it holds it.
pub fn outbound_routes(
    state: &ClientState,
    service: &str,
    namespace: &str,
) -> Option<Vec<RouteSummary>> {
    let name = weft_proxy_api::names::outbound_name(service, namespace);
    match state.resources().get(&name)?.kind.as_ref()? {
        v1::resource::Kind::Outbound(o) => Some(routes_of(o)),
        _ => None,
    }
}
