//! Shared helpers of the runtime integration tests: manifests, a gRPC proxy client, admin GETs.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_proxy_api::v1;
use weft_proxy_api::v1::discovery_client::DiscoveryClient;
use weft_proxy_api::v1::discovery_request::Request as Req;

pub const WAIT: Duration = Duration::from_secs(20);

pub const BASE: &str = r#"
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
metadata:
  name: web-0
  namespace: demo
  labels: {app: web, version: v1, weft.io/proxy-version: "0.1.0"}
spec:
  serviceAccountName: web
  containers: [{name: app, image: app, ports: [{containerPort: 8080}]}]
status:
  podIP: 127.0.0.11
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: demo
  labels: {app: web, version: v2, weft.io/proxy-version: "0.1.0"}
spec:
  serviceAccountName: web
  containers: [{name: app, image: app, ports: [{containerPort: 8080}]}]
status:
  podIP: 127.0.0.12
  conditions: [{type: Ready, status: "True"}]
"#;

/// Namespace `client` with one meshed pod, `caller` (127.0.0.21), outside the base mesh.
pub const CLIENT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: client}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: client}
---
apiVersion: v1
kind: Pod
metadata:
  name: caller
  namespace: client
  labels: {app: caller, weft.io/proxy-version: "0.1.0"}
spec:
  serviceAccountName: web
  containers: [{name: app, image: app}]
status:
  podIP: 127.0.0.21
  conditions: [{type: Ready, status: "True"}]
"#;

/// A consumer route in `client` for Service `demo/web`: everything to `web-v2`.
pub const CONSUMER_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-v2, namespace: client}
spec:
  parentRefs:
  - {group: "", kind: Service, name: web, namespace: demo, port: 80}
  rules:
  - backendRefs: [{name: web-v2, namespace: demo, port: 80}]
"#;

pub fn service(name: &str, selector: &str, n: u8) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.{n}\n  selector: {{{selector}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    )
}

pub fn services() -> String {
    [
        service("web", "app: web", 10),
        service("web-v1", "app: web, version: v1", 11),
        service("web-v2", "app: web, version: v2", 12),
    ]
    .join("---\n")
}

pub fn split(w1: u64, w2: u64) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: canary, namespace: demo}}\nspec:\n  service: web\n  backends:\n  - {{service: web-v1, weight: {w1}}}\n  - {{service: web-v2, weight: {w2}}}\n"
    )
}

/// Writes a file atomically (write to a hidden temp file, then rename), as editors and
/// ConfigMap mounts do.
pub fn write_atomic(path: &Path, text: &str) {
    let dir = path.parent().expect("file has a parent");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// A manifests directory with the base objects, services and a 100/0 split.
pub fn mesh_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_atomic(&dir.path().join("base.yaml"), BASE);
    write_atomic(&dir.path().join("services.yaml"), &services());
    write_atomic(&dir.path().join("split.yaml"), &split(100, 0));
    dir
}

/// A simulated proxy: one Discovery stream.
pub struct Proxy {
    pub tx: mpsc::Sender<v1::DiscoveryRequest>,
    pub rx: tonic::Streaming<v1::DiscoveryResponse>,
}

pub fn subscribe(ns: &str, pod: &str, known: &[(&str, &str)]) -> v1::DiscoveryRequest {
    v1::DiscoveryRequest {
        request: Some(Req::Subscribe(v1::Subscribe {
            pod_namespace: ns.into(),
            pod_name: pod.into(),
            service_account: "web".into(),
            proxy_version: "test".into(),
            known_versions: known
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })),
    }
}

impl Proxy {
    pub async fn open(
        addr: std::net::SocketAddr,
        first: v1::DiscoveryRequest,
    ) -> Result<Proxy, tonic::Status> {
        let mut client = DiscoveryClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue subscribe");
        let response = client.stream(ReceiverStream::new(rx)).await?;
        Ok(Proxy {
            tx,
            rx: response.into_inner(),
        })
    }

    pub async fn connect(addr: std::net::SocketAddr, pod: &str) -> Proxy {
        Proxy::open(addr, subscribe("demo", pod, &[]))
            .await
            .expect("discovery stream")
    }

    /// The next response (panics after [`WAIT`]).
    pub async fn next(&mut self) -> v1::DiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("no discovery response: {other:?}"),
        }
    }

    pub async fn ack(&self, r: &v1::DiscoveryResponse) {
        self.tx
            .send(v1::DiscoveryRequest {
                request: Some(Req::Ack(v1::Ack {
                    nonce: r.nonce.clone(),
                    version: r.version.clone(),
                })),
            })
            .await
            .expect("send ack");
    }

    pub async fn nack(&self, r: &v1::DiscoveryResponse, error: &str) {
        self.tx
            .send(v1::DiscoveryRequest {
                request: Some(Req::Nack(v1::Nack {
                    nonce: r.nonce.clone(),
                    kept_version: String::new(),
                    error: error.into(),
                    resource_names: vec![],
                })),
            })
            .await
            .expect("send nack");
    }
}

/// Weights of the split route of `outbound:web.demo` in a response, if it carries it.
pub fn split_weights(r: &v1::DiscoveryResponse) -> Option<Vec<(String, u64)>> {
    let res = r.resources.iter().find(|x| x.name == "outbound:web.demo")?;
    let Some(v1::resource::Kind::Outbound(out)) = &res.kind else {
        return None;
    };
    let route = out
        .ports
        .iter()
        .flat_map(|p| p.routes.iter())
        .find(|route| route.name.starts_with("split:"))?;
    Some(
        route
            .backends
            .iter()
            .map(|b| (b.service.clone(), b.weight))
            .collect(),
    )
}

/// `GET path` on the admin server: (status code, body).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect admin");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read response");
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("admin answered")
}

/// Polls the admin server until `check` holds on `GET path` (state changed by another task has
/// no event a client can await; every poll is a real request).
pub async fn until(
    addr: std::net::SocketAddr,
    path: &str,
    check: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = get(addr, path).await;
        if check(code, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting on {path}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
