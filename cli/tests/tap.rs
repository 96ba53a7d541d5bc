//! `weft tap` and `weft top` against a real `weft demo --keep` (operator, proxies and apps as
//! processes on loopback), and the doors of tap: the operator's admin `/tap` without or with a
//! wrong token, a proxy's tap port for a mesh identity that is not the operator's, and for a
//! client without a certificate.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

const PREFIX: &str = "127.47.0";

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft")).with_file_name(name)
}

fn ensure_binaries() {
    if ["weft-operator", "weft-proxy"]
        .iter()
        .any(|b| !bin(b).is_file())
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "weft-operator", "-p", "weft-proxy", "--bins"])
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
}

/// A `weft demo --keep` stopped (SIGINT, as Ctrl-C) when dropped.
struct Demo {
    child: Child,
    dir: tempfile::TempDir,
    out: PathBuf,
}

impl Demo {
    fn start() -> Demo {
        ensure_binaries();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("demo.out");
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "demo",
                "--keep",
                "--plain",
                "--duration",
                "5s",
                "--rate",
                "50",
                "--ip-prefix",
                PREFIX,
                "--dir",
            ])
            .arg(dir.path().join("mesh"))
            .stdout(std::fs::File::create(&out).expect("out file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("weft demo");
        let demo = Demo { child, dir, out };
        let start = Instant::now();
        while !demo.stdout().contains("the mesh keeps running") {
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "the demo did not get ready\n{}",
                demo.stdout()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        demo
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn mesh(&self) -> PathBuf {
        self.dir.path().join("mesh")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

fn ip(host: u8) -> String {
    format!("{PREFIX}.{host}")
}

/// Runs `weft <args>` with a time limit; returns (stdout, stderr).
fn weft(args: &[&str], limit: Duration) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weft");
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (out, err)
}

/// Sends requests as the frontend (through its outbound proxy) until `stop`.
fn probe_traffic(stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut s) = std::net::TcpStream::connect(format!("{}:4140", ip(10))) {
                use std::io::Write;
                let _ = s.write_all(
                    b"GET /secret-probe HTTP/1.1\r\nHost: api.demo.svc.cluster.local:8080\r\n\
                      Authorization: Bearer s3cr3t-t0ken-value\r\nCookie: session=c00kie-value\r\n\
                      X-Visible: shown\r\nConnection: close\r\n\r\n",
                );
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

async fn admin_tap(token: Option<&str>) -> u16 {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = http::Request::get(format!("http://{}:9990/tap?namespace=demo", ip(1)));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let rsp = client
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .expect("admin port answers");
    rsp.status().as_u16()
}

/// A client certificate from the demo's mesh CA for `identity` (PEM cert chain, key).
fn mesh_client_cert(
    issuer_dir: &Path,
    identity: &str,
) -> (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
) {
    let issuer_pem = std::fs::read_to_string(issuer_dir.join("issuer.crt")).unwrap();
    let key_pem = std::fs::read_to_string(issuer_dir.join("issuer.key")).unwrap();
    let issuer_key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, issuer_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    let mut chain = vec![rustls_pki_types::CertificateDer::from(cert.der().to_vec())];
    let issuer_der =
        rustls_pki_types::pem::PemObject::from_pem_slice(issuer_pem.as_bytes()).unwrap();
    chain.push(issuer_der);
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        key.serialize_der(),
    ));
    (chain, key)
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        weft_common::tls::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Calls `weft.tap.v1.Tap/Observe` on a proxy's tap port with `cert` (or none); returns the
/// gRPC status the proxy answered, or the transport error.
async fn observe_as(
    addr: &str,
    cert: Option<(
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<String, String> {
    let provider = Arc::new(weft_common::tls::crypto_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("tap.weft.invalid").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    // An empty ObserveRequest: the gRPC frame header alone.
    let req = http::Request::post(format!("http://{addr}/weft.tap.v1.Tap/Observe"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    if let Some(s) = rsp.headers().get("grpc-status") {
        return Ok(s.to_str().unwrap_or("").to_string());
    }
    // Not trailers-only: an event stream was opened.
    let mut body = rsp.into_body();
    match tokio::time::timeout(Duration::from_secs(2), body.frame()).await {
        Ok(Some(Ok(f))) => match f.trailers_ref().and_then(|t| t.get("grpc-status")) {
            Some(s) => Ok(s.to_str().unwrap_or("").to_string()),
            None => Ok("streaming".to_string()),
        },
        _ => Ok("streaming".to_string()),
    }
}

#[test]
fn tap_and_top_show_the_demo_traffic_with_identities_and_redacted_headers() {
    let demo = Demo::start();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The admin port's tap: no token, a wrong token → 403.
    assert_eq!(rt.block_on(admin_tap(None)), 403, "no token");
    assert_eq!(
        rt.block_on(admin_tap(Some("not-the-token-at-all"))),
        403,
        "wrong token"
    );

    // A live request with both identities, its secrets redacted.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = probe_traffic(stop.clone());
    let (out, err) = weft(
        &[
            "tap",
            "--demo",
            "--ip-prefix",
            PREFIX,
            "--path",
            "/secret-probe",
            "--max",
            "4",
            "-o",
            "json",
        ],
        Duration::from_secs(40),
    );
    let ctx = format!("stdout:\n{out}\nstderr:\n{err}\ndemo:\n{}", demo.stdout());
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!events.is_empty(), "tap printed events\n{ctx}");
    assert!(
        !out.contains("s3cr3t-t0ken-value"),
        "the authorization value never leaves the proxy\n{ctx}"
    );
    assert!(
        !out.contains("c00kie-value"),
        "the cookie value never leaves the proxy\n{ctx}"
    );
    let request = events
        .iter()
        .find(|e| e["type"] == "request" && e["direction"] == "outbound")
        .unwrap_or_else(|| panic!("an outbound request event\n{ctx}"));
    assert_eq!(request["path"], "/secret-probe", "{ctx}");
    assert_eq!(request["proxy"], "demo/frontend-0", "{ctx}");
    let header = |name: &str| {
        request["headers"]
            .as_array()
            .and_then(|h| h.iter().find(|p| p[0] == name))
            .map(|p| p[1].as_str().unwrap_or("").to_string())
    };
    assert_eq!(
        header("authorization").as_deref(),
        Some("<redacted>"),
        "{ctx}"
    );
    assert_eq!(header("cookie").as_deref(), Some("<redacted>"), "{ctx}");
    assert_eq!(header("x-visible").as_deref(), Some("shown"), "{ctx}");
    let ended = events
        .iter()
        .find(|e| e["type"] == "response" && e["direction"] == "outbound")
        .unwrap_or_else(|| panic!("an outbound response event\n{ctx}"));
    assert_eq!(
        ended["client_id"], "spiffe://cluster.local/ns/demo/sa/frontend",
        "{ctx}"
    );
    assert_eq!(
        ended["server_id"], "spiffe://cluster.local/ns/demo/sa/api",
        "{ctx}"
    );
    assert_eq!(ended["tls"], true, "{ctx}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = traffic.join();

    // weft tap in words, and weft top, on the demo's own traffic.
    let (out, err) = weft(
        &["tap", "--demo", "--ip-prefix", PREFIX, "--max", "2"],
        Duration::from_secs(30),
    );
    assert!(
        out.contains("req id=") && out.contains(":path=/items"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("src=spiffe://cluster.local/ns/demo/sa/"),
        "{out}\n{err}"
    );
    let (out, err) = weft(
        &[
            "top",
            "--demo",
            "--ip-prefix",
            PREFIX,
            "--plain",
            "--duration",
            "4s",
        ],
        Duration::from_secs(30),
    );
    let row = out
        .lines()
        .find(|l| l.contains("/items") && l.contains("outbound"))
        .unwrap_or_else(|| panic!("an outbound /items row\n{out}\n{err}"));
    let count: u64 = row
        .split_whitespace()
        .nth(4)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(count > 0, "{row}");
    assert!(
        row.contains("100.0%"),
        "the frontend's calls all succeed: {row}"
    );

    // A proxy's tap port: the operator's identity only.
    let tap_port = format!("{}:4190", ip(20));
    let other = mesh_client_cert(
        &demo.mesh().join("identity"),
        "spiffe://cluster.local/ns/demo/sa/frontend",
    );
    let answer = rt.block_on(observe_as(&tap_port, Some(other)));
    assert_eq!(
        answer.as_deref(),
        Ok("7"),
        "PERMISSION_DENIED for another mesh identity"
    );
    let answer = rt.block_on(observe_as(&tap_port, None));
    assert!(answer.is_err(), "no client certificate, no tap: {answer:?}");
    let operator = mesh_client_cert(
        &demo.mesh().join("identity"),
        "spiffe://cluster.local/ns/weft-system/sa/weft-operator",
    );
    let answer = rt.block_on(observe_as(&tap_port, Some(operator)));
    assert_eq!(
        answer.as_deref(),
        Ok("streaming"),
        "the operator's identity may tap (the test's control)"
    );
}
