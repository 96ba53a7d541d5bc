//! The real `weft-proxy` binary against the real operator runtime (in `--manifests` mode, on
//! 127.0.0.1) whose discovery port speaks TLS and plaintext: a proxy given the trust anchors
//! verifies the operator and gets config and certificate over TLS; one given another CA's
//! anchors refuses the operator; a proxy without anchors still works over plaintext unless the
//! operator requires TLS.

mod control_support;
mod process_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use process_support::{proxy_command, spawn_proxy, Spawned, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use weft_operator::identity::{
    generate_ca, BootstrapToken, CaStore, ControlTlsOptions, IdentityOptions, SpiffeId,
};
use weft_operator::runtime::{IdentityConfig, Runtime, RuntimeConfig};

const WAIT: Duration = Duration::from_secs(30);
const OPERATOR_ID: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-operator";

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web, weft.io/proxy-version: test}}
spec:
  serviceAccountName: web
  containers: [{name: web, image: web}]
status:
  podIP: 127.0.0.1
  conditions: [{type: Ready, status: 'True'}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: a, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: a-0, namespace: demo, labels: {app: a, weft.io/proxy-version: test}}
spec:
  serviceAccountName: a
  containers: [{name: a, image: a}]
status:
  podIP: 127.0.0.2
  conditions: [{type: Ready, status: 'True'}]
";

struct Operator {
    runtime: Runtime,
    anchors_pem: String,
    _dir: tempfile::TempDir,
}

async fn start_operator(require_tls: bool) -> Operator {
    start_operator_with(require_tls, false).await
}

async fn start_operator_with(require_tls: bool, require_discovery_identity: bool) -> Operator {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MANIFESTS).expect("write manifests");
    let bundle = generate_ca("cluster.local").expect("CA");
    let ca = Arc::new(CaStore::from_bundle(&bundle).expect("CA store"));
    let mut config = RuntimeConfig::manifests_on_loopback(dir.path());
    config.identity = Some(IdentityConfig {
        ca,
        authenticator: Arc::new(BootstrapToken::new(TOKEN.as_bytes())),
        options: IdentityOptions::default(),
        control_tls: Some(ControlTlsOptions {
            identity: SpiffeId::parse(OPERATOR_ID).expect("id"),
            dns_names: vec!["localhost".into()],
            lifetime: Duration::from_secs(3600),
            require_tls,
            require_discovery_identity,
        }),
    });
    let runtime = Runtime::start(config).await.expect("operator starts");
    Operator {
        runtime,
        anchors_pem: bundle.ca_cert_pem.clone(),
        _dir: dir,
    }
}

struct ProxyProcess {
    _child: Child,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    async fn start(control: &str, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = proxy_command(control, dir.path());
        cmd.envs(extra.iter().copied());
        let Spawned { child, bound, log } = spawn_proxy(cmd).await;
        ProxyProcess {
            _child: child,
            admin: bound.admin,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    async fn admin_until(&self, path: &str, mut want: impl FnMut(u16, &str) -> bool) -> String {
        let result = tokio::time::timeout(WAIT, async {
            let mut interval = tokio::time::interval(Duration::from_millis(20));
            loop {
                interval.tick().await;
                if let Ok((status, body)) = http_get(self.admin, path).await {
                    if want(status, &body) {
                        return body;
                    }
                }
            }
        })
        .await;
        match result {
            Ok(body) => body,
            Err(_) => panic!("GET {path} never matched; proxy log:\n{}", self.log()),
        }
    }

    /// Waits until the log shows `needle` (how a refusal becomes visible without timing).
    async fn log_until(&self, needle: &str) {
        let found = tokio::time::timeout(WAIT, async {
            let mut interval = tokio::time::interval(Duration::from_millis(20));
            loop {
                interval.tick().await;
                if self.log().contains(needle) {
                    return;
                }
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "log never showed {needle:?}:\n{}",
            self.log()
        );
    }

    /// Ready (certificate and config) with the expected identity; returns `/config`.
    async fn ready(&self) -> serde_json::Value {
        self.admin_until("/ready", |code, _| code == 200).await;
        let body = self.admin_until("/config", |code, _| code == 200).await;
        let config: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            config["identity"]["id"],
            "spiffe://cluster.local/ns/demo/sa/web"
        );
        assert!(config["version"].as_str().is_some(), "{config}");
        config
    }

    /// Has neither a certificate nor a config.
    async fn holds_nothing(&self) {
        let (code, _) = http_get(self.admin, "/ready").await.expect("admin");
        assert_ne!(code, 200, "log:\n{}", self.log());
        let (_, body) = http_get(self.admin, "/config").await.expect("admin");
        let config: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert!(config["version"].is_null(), "{config}");
        assert!(config["identity"]["id"].is_null(), "{config}");
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn other_ca_pem() -> String {
    generate_ca("cluster.local").expect("CA").ca_cert_pem
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[tokio::test]
async fn proxy_with_anchors_gets_config_and_certificate_over_tls() {
    let op = start_operator(false).await;
    let addr = op.runtime.discovery_addr;
    // The SPIFFE ID rule (IP host), anchors inline.
    let by_id = ProxyProcess::start(
        &addr.to_string(),
        &[
            ("WEFT_PROXY_TRUST_ANCHORS", &op.anchors_pem),
            ("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_ID),
        ],
    )
    .await;
    by_id.ready().await;
    assert!(by_id
        .log()
        .contains("TLS, verified against WEFT_PROXY_TRUST_ANCHORS"));
    assert!(!by_id.log().contains("UNAUTHENTICATED"));
    // The DNS rule (the host of the control address), anchors from a file.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "ca.crt", &op.anchors_pem);
    let by_dns = ProxyProcess::start(
        &format!("localhost:{}", addr.port()),
        &[("WEFT_PROXY_TRUST_ANCHORS_FILE", &file)],
    )
    .await;
    by_dns.ready().await;
    // The operator sees both proxies, authenticated by their certificates once they have them
    // (their first stream may have opened before the certificate was issued: it is reopened).
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok((_, body)) = http_get(op.runtime.admin_addr, "/proxies").await {
                let proxies: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if proxies
                    .as_array()
                    .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["authenticated"] == true))
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "proxies never authenticated: {:?}",
        http_get(op.runtime.admin_addr, "/proxies").await
    );
}

#[tokio::test]
async fn proxy_refuses_an_operator_that_chains_to_another_ca() {
    let op = start_operator(false).await;
    let addr = op.runtime.discovery_addr;
    let proxy = ProxyProcess::start(
        &addr.to_string(),
        &[
            ("WEFT_PROXY_TRUST_ANCHORS", &other_ca_pem()),
            ("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_ID),
        ],
    )
    .await;
    proxy.log_until("invalid peer certificate").await;
    proxy.holds_nothing().await;
    // Right CA, wrong name: refused too.
    let wrong_name = ProxyProcess::start(
        &addr.to_string(),
        &[
            ("WEFT_PROXY_TRUST_ANCHORS", &op.anchors_pem),
            (
                "WEFT_PROXY_CONTROL_IDENTITY",
                "spiffe://cluster.local/ns/weft-system/sa/someone-else",
            ),
        ],
    )
    .await;
    wrong_name.log_until("NotValidForName").await;
    wrong_name.holds_nothing().await;
    let (_, body) = http_get(op.runtime.admin_addr, "/proxies")
        .await
        .expect("admin");
    assert_eq!(body.trim(), "[]", "no proxy may have subscribed: {body}");
}

#[tokio::test]
async fn plaintext_proxy_works_unless_the_operator_requires_tls() {
    let op = start_operator(false).await;
    let plain = ProxyProcess::start(&op.runtime.discovery_addr.to_string(), &[]).await;
    plain.ready().await;
    assert!(plain.log().contains("UNAUTHENTICATED"));

    let strict = start_operator(true).await;
    let addr = strict.runtime.discovery_addr;
    let refused = ProxyProcess::start(&addr.to_string(), &[]).await;
    refused.log_until("identity certificate not obtained").await;
    refused.holds_nothing().await;
    let tls = ProxyProcess::start(
        &addr.to_string(),
        &[
            ("WEFT_PROXY_TRUST_ANCHORS", &strict.anchors_pem),
            ("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_ID),
        ],
    )
    .await;
    tls.ready().await;
}

#[tokio::test]
async fn bad_anchors_are_a_startup_error_not_a_panic() {
    let status = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .env_clear()
        .env("WEFT_PROXY_CONTROL_ADDR", "127.0.0.1:8086")
        .env("WEFT_PROXY_POD", "demo/web-0")
        .env("WEFT_PROXY_TOKEN_FILE", "/nonexistent")
        .env("WEFT_PROXY_TRUST_ANCHORS", "not a certificate")
        .env("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_ID)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("run weft-proxy");
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("WEFT_PROXY_TRUST_ANCHORS"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// --- Discovery authenticated by the client certificate -------------------------------------

use weft_proxy::control::{ProxyId, Settings};
use weft_proxy::control_tls::{ControlPeer, ControlTls as ProxyControlTls};
use weft_proxy::identity::{Identity, IdentityConfig as ProxyIdentityConfig, TrustAnchors};
use weft_proxy_api::v1;
use weft_proxy_api::v1::discovery_client::DiscoveryClient as GrpcDiscovery;

/// A TLS client of the operator's discovery port, with the mesh certificate of
/// `demo/<pod>` running as service account `sa` (certified through the real Certify).
struct MeshClient {
    endpoint: tonic::transport::Endpoint,
    tls: ProxyControlTls,
    identity: Identity,
    _dir: tempfile::TempDir,
}

impl MeshClient {
    async fn certified(op: &Operator, pod: &str, sa: &str) -> MeshClient {
        let anchors = TrustAnchors::from_pem(&op.anchors_pem).expect("anchors");
        let tls = ProxyControlTls::new(&anchors, ControlPeer::Identity(OPERATOR_ID.into()))
            .expect("control TLS");
        let mut settings = Settings::new(
            format!("http://{}", op.runtime.discovery_addr),
            ProxyId {
                pod_namespace: "demo".into(),
                pod_name: pod.into(),
                service_account: sa.into(),
            },
        );
        settings.tls = Some(tls.clone());
        let endpoint = settings.endpoint().expect("endpoint");
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).expect("write token");
        let identity = Identity::spawn(
            ProxyIdentityConfig {
                control_addr: settings.uri.clone(),
                token_file: token,
                pod_namespace: "demo".into(),
                pod_name: pod.into(),
                service_account: sa.into(),
                trust_domain: "cluster.local".into(),
                trust_anchors: Some(anchors),
            },
            settings.connect_lazy(&endpoint),
        );
        tokio::time::timeout(WAIT, identity.ready())
            .await
            .expect("certified");
        MeshClient {
            endpoint,
            tls,
            identity,
            _dir: dir,
        }
    }

    /// Opens a Discovery stream for `demo/<pod>` (claiming `sa`) presenting the certificate.
    async fn subscribe(&self, pod: &str, sa: &str) -> Result<v1::DiscoveryResponse, tonic::Status> {
        let tls = self
            .tls
            .with_client_cert(self.identity.control_client_cert());
        subscribe(&self.endpoint, Some(tls), pod, sa).await
    }
}

/// Opens a Discovery stream for `demo/<pod>` over `tls` (plaintext without) and returns the
/// first response or the status the operator answered with.
async fn subscribe(
    endpoint: &tonic::transport::Endpoint,
    tls: Option<ProxyControlTls>,
    pod: &str,
    sa: &str,
) -> Result<v1::DiscoveryResponse, tonic::Status> {
    let channel = match tls {
        Some(tls) => endpoint
            .connect_with_connector(tls.connector(Duration::from_secs(5)))
            .await
            .expect("connect over TLS"),
        None => endpoint.connect().await.expect("connect"),
    };
    let mut client = GrpcDiscovery::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::DiscoveryRequest {
        request: Some(v1::discovery_request::Request::Subscribe(v1::Subscribe {
            pod_namespace: "demo".into(),
            pod_name: pod.into(),
            service_account: sa.into(),
            proxy_version: "test".into(),
            known_versions: Default::default(),
            ..Default::default()
        })),
    })
    .await
    .expect("queue Subscribe");
    let result = tokio::time::timeout(WAIT, async move {
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = inbound.message().await?;
        // Keep the request side open until the answer is in.
        drop(tx);
        first.ok_or_else(|| tonic::Status::cancelled("stream ended without a response"))
    })
    .await;
    result.expect("the operator answers in time")
}

async fn metrics(op: &Operator) -> String {
    http_get(op.runtime.admin_addr, "/metrics")
        .await
        .expect("operator admin")
        .1
}

#[tokio::test]
async fn discovery_refuses_a_certificate_for_another_identity() {
    let op = start_operator(false).await;
    // A certificate for demo/sa/a (pod a-0 runs as `a`).
    let client = MeshClient::certified(&op, "a-0", "a").await;

    // Subscribing for web-0, which runs as `web` in the model: refused, whatever SA is claimed.
    for claimed in ["web", "a", ""] {
        let status = client
            .subscribe("web-0", claimed)
            .await
            .expect_err("another pod's config must be refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(
                "spiffe://cluster.local/ns/demo/sa/a may not subscribe for pod demo/web-0"
            ),
            "{status:?}"
        );
    }
    // A pod the model does not know, with another SA than the certificate's: refused.
    let status = client
        .subscribe("unknown-0", "web")
        .await
        .expect_err("claimed SA differs from the certificate");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // The honest subscription gets its config, and the operator records it as authenticated.
    let response = client.subscribe("a-0", "a").await.expect("own config");
    assert!(!response.version.is_empty(), "{response:?}");
    let (_, body) = http_get(op.runtime.admin_addr, "/proxies")
        .await
        .expect("admin");
    let proxies: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        proxies
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["pod"] != "demo/web-0")),
        "no stream for web-0 may be registered: {body}"
    );
    // A pod not known yet in the model: same namespace and SA as the certificate, accepted.
    let response = client
        .subscribe("a-1", "a")
        .await
        .expect("unknown pod of the same identity");
    assert!(!response.version.is_empty(), "{response:?}");

    let text = metrics(&op).await;
    assert!(
        text.lines().any(|l| l.starts_with(
            "weft_operator_discovery_streams_refused_total{reason=\"identity_mismatch\"} 4"
        )),
        "{text}"
    );

    // Without a client certificate (TLS or plaintext) the default still accepts.
    let anchors = TrustAnchors::from_pem(&op.anchors_pem).expect("anchors");
    let no_cert = ProxyControlTls::new(&anchors, ControlPeer::Identity(OPERATOR_ID.into()))
        .expect("control TLS");
    subscribe(&client.endpoint, Some(no_cert), "web-0", "web")
        .await
        .expect("TLS without client certificate accepted by default");
    subscribe(&client.endpoint, None, "web-0", "web")
        .await
        .expect("plaintext accepted by default");
}

#[tokio::test]
async fn required_discovery_identity_refuses_anonymous_subscribers_and_proxies_still_start() {
    let op = start_operator_with(false, true).await;
    let addr = op.runtime.discovery_addr;
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");

    // TLS without a client certificate, and plaintext: refused.
    let anchors = TrustAnchors::from_pem(&op.anchors_pem).expect("anchors");
    let no_cert = ProxyControlTls::new(&anchors, ControlPeer::Identity(OPERATOR_ID.into()))
        .expect("control TLS");
    for tls in [Some(no_cert), None] {
        let status = subscribe(&endpoint, tls, "web-0", "web")
            .await
            .expect_err("no client certificate");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("--require-discovery-identity"),
            "{status:?}"
        );
    }
    let text = metrics(&op).await;
    assert!(
        text.lines().any(|l| l.starts_with(
            "weft_operator_discovery_streams_refused_total{reason=\"no_client_identity\"} 2"
        )),
        "{text}"
    );

    // The real proxy: certifies (token), then subscribes with its certificate, becomes ready.
    let proxy = ProxyProcess::start(
        &addr.to_string(),
        &[
            ("WEFT_PROXY_TRUST_ANCHORS", &op.anchors_pem),
            ("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_ID),
        ],
    )
    .await;
    proxy.ready().await;
    let (_, body) = http_get(op.runtime.admin_addr, "/proxies")
        .await
        .expect("admin");
    let proxies: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(proxies[0]["pod"], "demo/web-0", "{body}");
    assert_eq!(proxies[0]["authenticated"], true, "{body}");
    assert_eq!(
        proxies[0]["identity"], "spiffe://cluster.local/ns/demo/sa/web",
        "{body}"
    );

    // A proxy certified as `a` (the bootstrap token believes its claim) that runs as pod web-0
    // (service account `web` in the model) never gets web-0's config.
    let impostor = ProxyProcess::start(
        &addr.to_string(),
        &[
            ("WEFT_PROXY_TRUST_ANCHORS", &op.anchors_pem),
            ("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_ID),
            ("WEFT_PROXY_SERVICE_ACCOUNT", "a"),
        ],
    )
    .await;
    impostor.log_until("identity certificate installed").await;
    impostor
        .log_until("may not subscribe for pod demo/web-0")
        .await;
    let (_, body) = http_get(impostor.admin, "/config").await.expect("admin");
    let config: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(config["version"].is_null(), "{config}");
}

#[tokio::test]
async fn a_stream_for_a_pod_not_known_yet_ends_when_it_appears_with_another_identity() {
    let op = start_operator(false).await;
    let client = MeshClient::certified(&op, "a-0", "a").await;
    let tls = client
        .tls
        .with_client_cert(client.identity.control_client_cert());
    let channel = client
        .endpoint
        .connect_with_connector(tls.connector(Duration::from_secs(5)))
        .await
        .expect("connect");
    let mut grpc = GrpcDiscovery::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::DiscoveryRequest {
        request: Some(v1::discovery_request::Request::Subscribe(v1::Subscribe {
            pod_namespace: "demo".into(),
            pod_name: "late-0".into(),
            service_account: "a".into(),
            proxy_version: "test".into(),
            known_versions: Default::default(),
            ..Default::default()
        })),
    })
    .await
    .expect("queue Subscribe");
    let mut inbound = tokio::time::timeout(
        WAIT,
        grpc.stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("in time")
    .expect("accepted: late-0 is not known yet")
    .into_inner();
    let first = tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("in time")
        .expect("first response")
        .expect("a response");
    tx.send(v1::DiscoveryRequest {
        request: Some(v1::discovery_request::Request::Ack(v1::Ack {
            nonce: first.nonce.clone(),
            version: first.version.clone(),
        })),
    })
    .await
    .expect("ACK");

    // late-0 appears, running as `web`: the stream ends instead of carrying web's config.
    write(
        op._dir.path(),
        "late.yaml",
        "\
apiVersion: v1
kind: Pod
metadata: {name: late-0, namespace: demo, labels: {app: web, weft.io/proxy-version: test}}
spec:
  serviceAccountName: web
  containers: [{name: web, image: web}]
status:
  podIP: 127.0.0.3
  conditions: [{type: Ready, status: 'True'}]
",
    );
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match inbound.message().await {
                Ok(Some(r)) => {
                    for res in &r.resources {
                        if let Some(v1::resource::Kind::Inbound(p)) = &res.kind {
                            assert_ne!(p.identity, "spiffe://cluster.local/ns/demo/sa/web");
                        }
                    }
                }
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream ends in time")
    .expect("ends with a status");
    assert_eq!(end.code(), tonic::Code::PermissionDenied, "{end:?}");
    assert!(
        end.message()
            .contains("which runs as spiffe://cluster.local/ns/demo/sa/web"),
        "{end:?}"
    );
    drop(tx);
}

/// #18: a healthy start (TLS to the operator, Certify answers) opens Discovery once, with the
/// certificate: the operator counts no refused stream, the proxy no reconnect, and the proxy's
/// log has no WARN line, whether or not the operator requires a client certificate on Discovery.
#[tokio::test]
async fn a_healthy_start_counts_no_refusal_and_no_reconnect_and_logs_no_warning() {
    for require_discovery_identity in [true, false] {
        let op = start_operator_with(false, require_discovery_identity).await;
        let proxy = ProxyProcess::start(
            &op.runtime.discovery_addr.to_string(),
            &[
                ("WEFT_PROXY_TRUST_ANCHORS", &op.anchors_pem),
                ("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_ID),
            ],
        )
        .await;
        proxy.ready().await;
        let proxy_metrics = proxy
            .admin_until("/metrics", |code, body| {
                code == 200 && body.contains("weft_proxy_control_connected 1")
            })
            .await;
        assert!(
            proxy_metrics
                .lines()
                .any(|l| l == "weft_proxy_control_reconnects_total 0"),
            "require_discovery_identity={require_discovery_identity}:\n{proxy_metrics}\n{}",
            proxy.log()
        );
        assert!(
            proxy_metrics
                .lines()
                .any(|l| l == "weft_proxy_control_config_updates_total 1"),
            "{proxy_metrics}"
        );
        let op_metrics = metrics(&op).await;
        let refused: Vec<&str> = op_metrics
            .lines()
            .filter(|l| l.starts_with("weft_operator_discovery_streams_refused_total{"))
            .filter(|l| !l.ends_with(" 0"))
            .collect();
        assert!(refused.is_empty(), "{refused:?}\n{}", proxy.log());
        let log = proxy.log();
        assert!(log.contains("discovery stream open"), "{log}");
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains("\"WARN\""))
            .collect();
        assert!(
            warnings.is_empty(),
            "require_discovery_identity={require_discovery_identity}: {warnings:#?}"
        );
    }
}
