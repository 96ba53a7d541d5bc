//! `weft tap`: live requests through the proxies (docs/tap.md). The events come from the
//! operator, which reads the proxies' tap ports for the user: through the API server's aggregated
//! API `tap.weft.io` in a cluster (RBAC), or from a local operator's admin port (`GET /tap`, with
//! its admin token; `--demo` finds the demo's).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::cluster::ClusterArgs;

/// What to tap and how (the filters the operator and the proxies apply).
#[derive(Clone, Debug, Default)]
pub struct TapRequest {
    /// `deploy/api`, `pod/x`, `ns/demo` (default: the namespace).
    pub resource: Option<String>,
    pub namespace: String,
    pub to: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    pub max: Option<u32>,
}

/// Where the events come from.
pub enum Source {
    /// A local operator's admin port and its token.
    Admin {
        addr: String,
        token: String,
    },
    Cluster(ClusterArgs),
}

pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(token)
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TapRequest {
    fn filters(&self) -> Vec<String> {
        let mut q = Vec::new();
        if let Some(v) = &self.to {
            q.push(format!("to={}", enc(v)));
        }
        if let Some(v) = &self.path {
            q.push(format!("path={}", enc(v)));
        }
        if let Some(v) = &self.method {
            q.push(format!("method={}", enc(v)));
        }
        if let Some(v) = self.max {
            q.push(format!("max={v}"));
        }
        q
    }

    /// `GET /tap?...` on an operator's admin port.
    fn admin_path(&self) -> String {
        let mut q = vec![format!("namespace={}", enc(&self.namespace))];
        if let Some(r) = &self.resource {
            q.push(format!("resource={}", enc(r)));
        }
        q.extend(self.filters());
        format!("/tap?{}", q.join("&"))
    }

    /// The aggregated API path of the target.
    fn api_path(&self) -> anyhow::Result<String> {
        let base = "/apis/tap.weft.io/v1alpha1";
        let target = match self.resource.as_deref() {
            None => format!("namespaces/{}/tap", enc(&self.namespace)),
            Some(r) => {
                let (kind, name) = r.split_once('/').ok_or_else(|| {
                    anyhow!("{r}: expected KIND/NAME (deploy/api, pod/x, ns/demo)")
                })?;
                let plural = match kind {
                    "ns" | "namespace" | "namespaces" => {
                        return Ok(format!(
                            "{base}/namespaces/{}/tap{}",
                            enc(name),
                            self.query_suffix()
                        ))
                    }
                    "po" | "pod" | "pods" => "pods",
                    "deploy" | "deployment" | "deployments" => "deployments",
                    "sts" | "statefulset" | "statefulsets" => "statefulsets",
                    "ds" | "daemonset" | "daemonsets" => "daemonsets",
                    "job" | "jobs" => "jobs",
                    other => bail!("{other}: cannot be tapped (pod, deploy, sts, ds, job, ns)"),
                };
                format!(
                    "namespaces/{}/{plural}/{}/tap",
                    enc(&self.namespace),
                    enc(name)
                )
            }
        };
        Ok(format!("{base}/{target}{}", self.query_suffix()))
    }

    fn query_suffix(&self) -> String {
        let f = self.filters();
        if f.is_empty() {
            String::new()
        } else {
            format!("?{}", f.join("&"))
        }
    }
}

/// The tap's NDJSON lines, as they arrive; the channel closes when the tap ends.
pub async fn open(source: &Source, req: &TapRequest) -> anyhow::Result<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel::<String>(256);
    match source {
        Source::Admin { addr, token } => {
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let path = req.admin_path();
            let request = http::Request::get(format!("http://{addr}{path}"))
                .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Empty::new())?;
            let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(request))
                .await
                .map_err(|_| anyhow!("the operator at {addr} did not answer within 10s"))?
                .map_err(|e| anyhow!("could not reach the operator at {addr}: {e}"))?;
            let status = rsp.status();
            let mut body = rsp.into_body();
            if !status.is_success() {
                let text = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                bail!(
                    "the operator refused the tap ({status}): {}",
                    String::from_utf8_lossy(&text).trim()
                );
            }
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(&data);
                    while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        let line = String::from_utf8_lossy(&line).trim().to_string();
                        if !line.is_empty() && tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
        Source::Cluster(args) => {
            use futures::AsyncBufReadExt;
            use futures::StreamExt;
            let cluster = args.connect().await?;
            let path = req.api_path()?;
            let request = http::Request::get(&path).body(Vec::new())?;
            let reader = cluster.client.request_stream(request).await.map_err(|e| {
                anyhow!(
                    "tap through the API server ({path}): {}",
                    crate::cluster::kube_error(&e)
                )
            })?;
            tokio::spawn(async move {
                let mut lines = reader.lines();
                while let Some(Ok(line)) = lines.next().await {
                    if !line.trim().is_empty() && tx.send(line).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    Ok(rx)
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

/// One event in words (`linkerd viz tap` style); `None` for lines that are not events.
pub fn human(v: &serde_json::Value) -> Option<String> {
    let or_dash = |x: &str| {
        if x.is_empty() {
            "-".to_string()
        } else {
            x.to_string()
        }
    };
    let common = format!(
        "id={} proxy={} {} src={} dst={} tls={}",
        v.get("id").and_then(|x| x.as_u64()).unwrap_or(0),
        s(v, "proxy"),
        s(v, "direction"),
        or_dash(s(v, "client_id")),
        or_dash(s(v, "server_id")),
        v.get("tls").and_then(|x| x.as_bool()).unwrap_or(false),
    );
    match s(v, "type") {
        "request" => Some(format!(
            "req {common} :method={} :authority={} :path={}",
            s(v, "method"),
            s(v, "authority"),
            s(v, "path")
        )),
        "response" => {
            let mut line = format!(
                "end {common} route={} backend={} :status={} latency={:.3}ms bytes={}",
                or_dash(s(v, "route")),
                or_dash(s(v, "backend")),
                v.get("status").and_then(|x| x.as_u64()).unwrap_or(0),
                v.get("latency_ms").and_then(|x| x.as_f64()).unwrap_or(0.0),
                v.get("response_bytes")
                    .and_then(|x| x.as_u64())
                    .unwrap_or(0),
            );
            if let Some(g) = v.get("grpc_status").and_then(|x| x.as_u64()) {
                line.push_str(&format!(" grpc-status={g}"));
            }
            Some(line)
        }
        _ => None,
    }
}

/// Runs `weft tap`: prints events until `max` responses ended, the stream ends or Ctrl-C.
pub async fn run(source: &Source, req: &TapRequest, json: bool) -> anyhow::Result<()> {
    let mut rx = open(source, req).await?;
    let mut ended = 0u32;
    loop {
        let line = tokio::select! {
            line = rx.recv() => line,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else { break };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if s(&v, "type") == "error" {
            eprintln!("tap: {}: {}", s(&v, "proxy"), s(&v, "error"));
            continue;
        }
        if json {
            println!("{line}");
        } else if let Some(h) = human(&v) {
            println!("{h}");
        }
        if s(&v, "type") == "response" {
            ended += 1;
            if req.max.is_some_and(|m| ended >= m) {
                break;
            }
        }
    }
    Ok(())
}
