//! The real `weft-proxy` binary against a fake operator on 127.0.0.1: discovery from the
//! scripted fake, identity from the operator's own Certify service with a bootstrap token.

mod control_support;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use weft_operator::identity::{BootstrapToken, CaStore, IdentityOptions, IdentityService};

const TOKEN: &str = "bootstrap-secret";

/// A free port on 127.0.0.1 (bound and released; the proxy binds it right after).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

async fn start_operator(addr: SocketAddr) -> FakeOperator {
    let ca = CaStore::generate("cluster.local").expect("generate CA");
    let identity = IdentityService::new(
        Arc::new(ca),
        Arc::new(BootstrapToken::new(TOKEN.as_bytes())),
        IdentityOptions::default(),
    );
    FakeOperator::start_with(addr, move |routes| {
        routes.add_service(identity.into_server())
    })
    .await
}

struct ProxyProcess {
    child: Child,
    admin: SocketAddr,
    outbound: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    async fn start(control: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).expect("write token");
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port().await));
        let inbound = SocketAddr::from(([127, 0, 0, 1], free_port().await));
        let outbound = SocketAddr::from(([127, 0, 0, 1], free_port().await));
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .env_clear()
            .env("WEFT_PROXY_CONTROL_ADDR", control)
            .env("WEFT_PROXY_POD", "demo/web-0")
            .env("WEFT_PROXY_SERVICE_ACCOUNT", "web")
            .env("WEFT_PROXY_TOKEN_FILE", &token)
            .env("WEFT_PROXY_ADMIN_ADDR", admin.to_string())
            .env("WEFT_PROXY_INBOUND_ADDR", inbound.to_string())
            .env("WEFT_PROXY_OUTBOUND_ADDR", outbound.to_string())
            .env("WEFT_PROXY_SHUTDOWN_GRACE", "5s")
            .env("WEFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn weft-proxy");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        ProxyProcess {
            child,
            admin,
            outbound,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Polls `GET path` until `want` holds (the proxy needs a moment to bind and certify).
    async fn admin_until(&self, path: &str, mut want: impl FnMut(u16, &str) -> bool) -> String {
        let result = tokio::time::timeout(WAIT, async {
            let mut interval = tokio::time::interval(Duration::from_millis(20));
            loop {
                interval.tick().await;
                if let Ok((status, body)) = http_get(self.admin, path, "admin").await {
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

    async fn sigterm(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("proxy did not exit after SIGTERM; log:\n{}", self.log()),
        }
    }
}

/// A minimal HTTP/1.1 GET (Connection: close); returns status and body.
async fn http_get(addr: SocketAddr, path: &str, host: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A backend answering every request with `200 backend-<port>`.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let body = format!("backend-{}", addr.port());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

fn config_v1(backend: SocketAddr) -> Vec<weft_proxy_api::v1::Resource> {
    vec![
        inbound("spiffe://cluster.local/ns/demo/sa/web"),
        outbound("demo", "api", 80, "/"),
        endpoints("demo", "api", 80, &[backend.port()]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becomes_ready_shows_config_and_exits_cleanly_on_sigterm() {
    let mut op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut proxy = ProxyProcess::start(&op.uri()).await;

    // Subscribed but no config yet: alive, not ready.
    let sub = op.expect_subscribe().await;
    assert_eq!(
        (sub.pod_namespace.as_str(), sub.pod_name.as_str()),
        ("demo", "web-0")
    );
    assert_eq!(sub.service_account, "web");
    proxy.admin_until("/live", |s, _| s == 200).await;
    let body = proxy.admin_until("/ready", |s, _| s == 503).await;
    assert!(body.starts_with("not ready: "), "{body}");

    op.push(full_state("n1", "v1", config_v1(backend().await)))
        .await;
    let ack = op.expect_ack().await;
    assert_eq!(ack.version, "v1");

    proxy.admin_until("/ready", |s, _| s == 200).await;
    let config = proxy.admin_until("/config", |s, _| s == 200).await;
    let json: serde_json::Value = serde_json::from_str(&config).expect("JSON /config");
    assert_eq!(json["version"], "v1");
    assert_eq!(json["control"]["connected"], true);
    assert_eq!(
        json["identity"]["id"],
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    assert_eq!(
        json["config"]["inbound"]["identity"],
        "spiffe://cluster.local/ns/demo/sa/web"
    );

    let metrics = proxy.admin_until("/metrics", |s, _| s == 200).await;
    assert!(
        metrics.contains("weft_proxy_control_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_proxy_control_config_updates_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weft_proxy_config_info{version="v1"} 1"#),
        "{metrics}"
    );
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");

    let status = proxy.sigterm().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    let log = proxy.log();
    assert!(log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_away_mid_traffic_fails_no_request() {
    let op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let backend = backend().await;
    op.reply_on_subscribe(full_state("n1", "v1", config_v1(backend)));
    let mut proxy = ProxyProcess::start(&op.uri()).await;
    proxy.admin_until("/ready", |s, _| s == 200).await;

    let expected = format!("backend-{}", backend.port());
    let host = "api.demo.svc.cluster.local";
    let send = |n: usize| {
        let outbound = proxy.outbound;
        let expected = expected.clone();
        async move {
            for i in 0..n {
                let (status, body) = http_get(outbound, "/hello", host)
                    .await
                    .unwrap_or_else(|e| panic!("request {i}: {e}"));
                assert_eq!(
                    (status, body.as_str()),
                    (200, expected.as_str()),
                    "request {i}"
                );
            }
        }
    };
    send(20).await;

    // The operator goes away: traffic keeps flowing with the last config.
    let addr = op.stop().await;
    proxy
        .admin_until("/config", |_, body| body.contains(r#""connected": false"#))
        .await;
    send(50).await;
    // Still ready: it holds a certificate and a config.
    proxy.admin_until("/ready", |s, _| s == 200).await;

    // Back: the proxy resubscribes with what it holds, and traffic still flows.
    let mut op = start_operator(addr).await;
    op.reply_on_subscribe(full_state("n2", "v1", config_v1(backend)));
    let sub = op.expect_subscribe().await;
    assert_eq!(sub.known_versions.len(), 3, "{:?}", sub.known_versions);
    op.expect_ack().await;
    send(20).await;

    assert_eq!(
        proxy.sigterm().await.code(),
        Some(0),
        "log:\n{}",
        proxy.log()
    );
}

/// A backend that reports each request on `arrived` and answers only once `release` is set.
async fn gated_backend(
    arrived: tokio::sync::mpsc::Sender<()>,
    release: tokio::sync::watch::Receiver<bool>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let arrived = arrived.clone();
            let mut release = release.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = arrived.send(()).await;
                let _ = release.wait_for(|r| *r).await;
                let resp = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow";
                let _ = stream.write_all(resp.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_in_flight_requests() {
    let op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel(4);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let backend = gated_backend(arrived_tx, release_rx).await;
    op.reply_on_subscribe(full_state("n1", "v1", config_v1(backend)));
    let mut proxy = ProxyProcess::start(&op.uri()).await;
    proxy.admin_until("/ready", |s, _| s == 200).await;

    // One request in flight, held by the backend.
    let outbound = proxy.outbound;
    let in_flight =
        tokio::spawn(
            async move { http_get(outbound, "/slow", "api.demo.svc.cluster.local").await },
        );
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .expect("request reached the backend");

    // SIGTERM: the listener closes, the in-flight request is allowed to finish.
    let pid = proxy.child.id().expect("running");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    tokio::time::timeout(WAIT, async {
        let mut interval = tokio::time::interval(Duration::from_millis(20));
        loop {
            interval.tick().await;
            if TcpStream::connect(outbound).await.is_err() {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("outbound still accepting; log:\n{}", proxy.log()));

    let _ = release.send(true);
    let (status, body) = in_flight
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("in-flight request failed: {e}; log:\n{}", proxy.log()));
    assert_eq!((status, body.as_str()), (200, "slow"));
    let exit = tokio::time::timeout(WAIT, proxy.child.wait())
        .await
        .expect("proxy exits after draining")
        .expect("wait");
    assert_eq!(exit.code(), Some(0), "log:\n{}", proxy.log());
}
