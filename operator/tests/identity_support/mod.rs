//! Shared helpers of the `identity_*` tests: the real `weft-operator` binary in `--manifests`
//! mode on 127.0.0.1, Certify requests, admin GETs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proxy_api::v1::identity_client::IdentityClient;
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse};

pub const WAIT: Duration = Duration::from_secs(30);
pub const TOKEN: &str = "bootstrap-secret";
pub const OPERATOR_ID: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-operator";

/// A pod of the `demo` namespace, meshed, running as `sa` (`None`: no serviceAccountName).
pub fn pod(ns: &str, name: &str, sa: Option<&str>, ip: &str) -> String {
    let sa = sa
        .map(|sa| format!("  serviceAccountName: {sa}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: {name}, weft.io/proxy-version: test}}\nspec:\n{sa}  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

/// Writes a file atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// A running `weft-operator`; killed when dropped.
pub struct Operator {
    child: Option<Child>,
    pub discovery: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// The operator's command line: `--manifests dir`, loopback ports, JSON logs, then `extra`.
pub fn command(manifests: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-operator"));
    cmd.arg("--manifests")
        .arg(manifests)
        .args([
            "--discovery-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(extra)
        .env("WEFT_LOG", "info")
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_SERVICE_ACCOUNT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The token file for `--bootstrap-token-file`, in `dir`.
pub fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("write token");
    path
}

impl Operator {
    /// Starts the operator and waits until it reports its addresses and `/ready` is 200.
    pub async fn start(manifests: &Path, extra: &[&str]) -> Operator {
        let mut child = command(manifests, extra)
            .spawn()
            .expect("spawn weft-operator");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("weft-operator started") {
                        let _ = tx.send(line.clone());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("the operator did not start; log:\n{}", log.lock().unwrap())
        });
        let field = |name: &str| -> SocketAddr {
            line.split(&format!("\"{name}\":\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {line}"))
        };
        let op = Operator {
            child: Some(child),
            discovery: field("discovery"),
            admin: field("admin"),
            log,
        };
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                if get(op.admin, "/ready").await.0 == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "not ready; log:\n{}", op.log());
        op
    }

    /// Everything the operator logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        assert!(exit.success(), "{exit:?}");
    }

    pub async fn client(&self) -> IdentityClient<tonic::transport::Channel> {
        IdentityClient::connect(format!("http://{}", self.discovery))
            .await
            .expect("connect to the discovery port")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CSR for `identity` (ECDSA P-256, the identity as the only URI SAN).
pub fn csr(identity: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_owned().try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// A Certify request for pod `ns/pod` claiming `identity`, with the right bootstrap token.
pub fn request(identity: &str, ns: &str, pod: &str) -> CertifyRequest {
    CertifyRequest {
        identity: identity.to_owned(),
        token: TOKEN.as_bytes().to_vec(),
        csr_der: csr(identity),
        pod_namespace: ns.to_owned(),
        pod_name: pod.to_owned(),
    }
}

pub async fn certify(
    client: &mut IdentityClient<tonic::transport::Channel>,
    req: CertifyRequest,
) -> Result<CertifyResponse, tonic::Status> {
    client.certify(req).await.map(|r| r.into_inner())
}

/// The only URI SAN of a DER certificate.
pub fn uri_san(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    let (_, cert) = parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    match san.value.general_names.as_slice() {
        [GeneralName::URI(u)] => u.to_string(),
        other => panic!("expected exactly one URI SAN, got {other:?}"),
    }
}

/// True when `leaf` is signed by `issuer`, and `issuer` by `anchor` (all DER).
pub fn chains_to(leaf: &[u8], issuer: &[u8], anchor: &[u8]) -> bool {
    use x509_parser::prelude::*;
    let (_, leaf) = parse_x509_certificate(leaf).unwrap();
    let (_, issuer) = parse_x509_certificate(issuer).unwrap();
    let (_, anchor) = parse_x509_certificate(anchor).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).is_ok()
        && issuer.verify_signature(Some(anchor.public_key())).is_ok()
}

/// The DER certificates of a PEM file.
pub fn pem_file_ders(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).expect("read PEM file");
    ::pem::parse_many(text)
        .expect("PEM")
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

/// `GET path` on the admin server: (status code, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}
