//! The real `weft-proxy` binary as a child process against a fake operator on 127.0.0.1
//! (discovery from the scripted fake, identity from the operator's own Certify service with a
//! bootstrap token), plus a minimal HTTP client and backend. Shared by the process tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use weft_operator::identity::{BootstrapToken, CaStore, IdentityOptions, IdentityService};

use crate::control_support::{endpoints, full_state, inbound, outbound, FakeOperator, WAIT};
use weft_proxy_api::v1;

pub const TOKEN: &str = "bootstrap-secret";

/// A free port on 127.0.0.1 (bound and released). Only for addresses that no process binds
/// (an endpoint that refuses connections): a proxy's own listeners bind port 0 and report what
/// they got ([`spawn_proxy`]), since a port picked and released can be taken by another test's
/// process before the proxy binds it.
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

/// The listeners a started proxy bound, as its `weft-proxy started` log line reports them.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub admin: SocketAddr,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
}

/// A running `weft-proxy` child, its stderr collected into `log`.
pub struct Spawned {
    pub child: Child,
    pub bound: Bound,
    pub log: Arc<Mutex<String>>,
}

/// `weft-proxy` with the environment every process test starts from: a clean environment, the
/// control plane at `control`, pod demo/web-0 with service account `web`, the bootstrap token
/// written to a file in `dir`, and every listener on 127.0.0.1 port 0 (the kernel picks the
/// port; [`spawn_proxy`] reads it back). Tests add or override variables on the result.
pub fn proxy_command(control: &str, dir: &std::path::Path) -> Command {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).expect("write token");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-proxy"));
    cmd.env_clear()
        .env("WEFT_PROXY_CONTROL_ADDR", control)
        .env("WEFT_PROXY_POD", "demo/web-0")
        .env("WEFT_PROXY_SERVICE_ACCOUNT", "web")
        .env("WEFT_PROXY_TOKEN_FILE", &token)
        .env("WEFT_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .env("WEFT_PROXY_INBOUND_ADDR", "127.0.0.1:0")
        .env("WEFT_PROXY_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("WEFT_LOG", "info");
    cmd
}

/// Spawns the proxy and waits until it has bound its listeners, then returns the addresses it
/// logged. Panics with the proxy's log if it exits first or does not start within [`WAIT`].
pub async fn spawn_proxy(cmd: Command) -> Spawned {
    let (mut child, log) = spawn_logged(cmd);
    let text = || log.lock().map(|l| l.clone()).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(bound) = text().lines().find_map(started_line) {
            return Spawned { child, bound, log };
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Give the reader a moment to collect the last lines of the log.
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "weft-proxy exited ({status}) before it started; log:\n{}",
                text()
            );
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("weft-proxy did not start within {WAIT:?}; log:\n{}", text());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Spawns the proxy with its stderr collected into the returned log, without waiting for it.
pub fn spawn_logged(mut cmd: Command) -> (Child, Arc<Mutex<String>>) {
    let mut child = cmd
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
    (child, log)
}

/// The addresses in a `weft-proxy started admin=... inbound=... outbound=...` log line.
fn started_line(line: &str) -> Option<Bound> {
    if !line.contains("weft-proxy started") {
        return None;
    }
    let field = |name: &str| -> Option<SocketAddr> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    Some(Bound {
        admin: field("admin")?,
        inbound: field("inbound")?,
        outbound: field("outbound")?,
    })
}

pub async fn start_operator(addr: SocketAddr) -> FakeOperator {
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

pub struct ProxyProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub outbound: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    pub async fn start(control: &str) -> Self {
        Self::start_with_env(control, &[]).await
    }

    /// [`ProxyProcess::start`] with more environment variables.
    pub async fn start_with_env(control: &str, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = proxy_command(control, dir.path());
        cmd.env("WEFT_PROXY_SHUTDOWN_GRACE", "5s")
            .envs(extra.iter().copied());
        let Spawned { child, bound, log } = spawn_proxy(cmd).await;
        ProxyProcess {
            child,
            admin: bound.admin,
            outbound: bound.outbound,
            log,
            _dir: dir,
        }
    }

    /// A proxy expected to stop at start (a configuration error): spawned and not waited for.
    /// Its listeners' addresses are unknown (`127.0.0.1:0`).
    pub fn start_to_fail(control: &str, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = proxy_command(control, dir.path());
        cmd.envs(extra.iter().copied());
        let (child, log) = spawn_logged(cmd);
        let unknown = SocketAddr::from(([127, 0, 0, 1], 0));
        ProxyProcess {
            child,
            admin: unknown,
            outbound: unknown,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Polls `GET path` until `want` holds (the proxy needs a moment to certify).
    pub async fn admin_until(&self, path: &str, mut want: impl FnMut(u16, &str) -> bool) -> String {
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

    /// Sends SIGTERM and checks that the proxy exits 0 (its log in the failure).
    pub async fn stops_cleanly(&mut self) {
        assert_eq!(self.sigterm().await.code(), Some(0), "log:\n{}", self.log());
    }

    pub async fn sigterm(&mut self) -> ExitStatus {
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

/// A fake operator that sends `api.demo.svc.cluster.local:80` (every path, `protocol`) to
/// `app_ports` on 127.0.0.1, and a ready proxy that looks for a quiet spell every second
/// (`WEFT_PROXY_MEMORY_QUIET=1s`): the memory tests' setup.
pub async fn quiet_proxy_to(
    app_ports: &[u16],
    protocol: v1::Protocol,
) -> (FakeOperator, ProxyProcess) {
    let mut api = outbound("demo", "api", 80, "/");
    if let Some(v1::resource::Kind::Outbound(o)) = api.kind.as_mut() {
        o.ports[0].protocol = protocol as i32;
    }
    let op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    op.reply_on_subscribe(full_state(
        "n1",
        "v1",
        vec![
            inbound("spiffe://cluster.local/ns/demo/sa/web"),
            api,
            endpoints("demo", "api", 80, app_ports),
        ],
    ));
    let proxy = ProxyProcess::start_with_env(&op.uri(), &[("WEFT_PROXY_MEMORY_QUIET", "1s")]).await;
    proxy.admin_until("/ready", |s, _| s == 200).await;
    (op, proxy)
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `RssAnon`, ...); `None` when it cannot be read.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    value.split_whitespace().next()?.parse().ok()
}

/// A minimal HTTP/1.1 GET (Connection: close); returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str, host: &str) -> std::io::Result<(u16, String)> {
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

/// Reads one request head (up to its blank line) from `stream`; false on EOF or an error first.
pub async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A backend on 127.0.0.1: per connection, reads one request head, then `answer` writes the
/// response on the stream (a connection closed before a whole head is dropped).
pub async fn http_backend<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                if read_head(&mut stream).await {
                    answer(stream).await;
                }
            });
        }
    });
    addr
}

/// A backend answering every request with `200 backend-<port>`.
pub async fn backend() -> SocketAddr {
    http_backend(|mut stream| async move {
        let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        let body = format!("backend-{port}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await
}
