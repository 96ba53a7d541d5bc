//! Parts shared by the discovery benchmarks (`propagation_bench`, `ondemand_bench`): process
//! measurements (`/proc`), percentiles, starting the real operator, and a simulated proxy (a real
//! gRPC connection and Discovery stream that ACKs every response).
//!
//! Each example uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_proxy_api::v1;
use weft_proxy_api::v1::discovery_client::DiscoveryClient;
use weft_proxy_api::v1::discovery_request::Request as Req;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resident set size of a process, in KiB (0 when unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process used so far, in milliseconds (`pid` 0: this process).
pub fn cpu_ms(pid: u32) -> f64 {
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ticks * 10.0
}

/// The `p` quantile (0..=1) of an ascending slice (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A plain HTTP/1.1 GET; `(status, body)`.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `weft-operator --manifests <dir>` with ephemeral discovery and admin ports plus
/// `extra` arguments; returns it with its discovery and admin addresses (read from its
/// "weft-operator started" log line).
pub fn start_operator(
    bin: &Path,
    dir: &Path,
    extra: &[&str],
) -> std::io::Result<(Proc, SocketAddr, SocketAddr)> {
    let mut child = Command::new(bin)
        .arg("--manifests")
        .arg(dir)
        .args([
            "--discovery-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .args(extra)
        .env("WEFT_LOG", "warn,weft_operator=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or(std::io::ErrorKind::Other)?;
    let child = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("weft-operator started") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| std::io::Error::other("operator did not start"))?;
    let field = |name: &str| -> std::io::Result<SocketAddr> {
        line.split(&format!("\"{name}\":\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no {name} in {line}")))
    };
    Ok((child, field("discovery")?, field("admin")?))
}

/// Sends SIGTERM and waits for the process to end.
pub fn terminate(proc: &mut Proc) {
    let _ = Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status();
    let _ = proc.0.wait();
}

/// What a simulated proxy subscribes as.
#[derive(Clone, Debug)]
pub struct SimProxy {
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
    /// Declare on-demand support (`Subscribe.on_demand`).
    pub on_demand: bool,
    /// Names sent in one `Watch` after the first response (on demand only).
    pub watch: Vec<String>,
}

/// One simulated proxy on its own connection: subscribes, ACKs every response, and hands every
/// response to `on_response` with its index (0: the first, full-state one) once ACKed. With
/// `watch` set (on demand), sends one `Watch` after the first response.
pub async fn sim_proxy(
    addr: SocketAddr,
    me: SimProxy,
    mut on_response: impl FnMut(usize, &v1::DiscoveryResponse),
) -> Result<(), BoxError> {
    let mut client = DiscoveryClient::connect(format!("http://{addr}")).await?;
    // Bounded: at most a few ACKs and one Watch are ever queued.
    let (tx, rx) = mpsc::channel(8);
    tx.send(v1::DiscoveryRequest {
        request: Some(Req::Subscribe(v1::Subscribe {
            pod_namespace: me.namespace.clone(),
            pod_name: me.pod.clone(),
            service_account: me.service_account.clone(),
            proxy_version: "bench".into(),
            on_demand: me.on_demand,
            ..Default::default()
        })),
    })
    .await?;
    let mut stream = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let mut n = 0;
    while let Some(r) = stream.message().await? {
        tx.send(v1::DiscoveryRequest {
            request: Some(Req::Ack(v1::Ack {
                nonce: r.nonce.clone(),
                version: r.version.clone(),
            })),
        })
        .await?;
        if n == 0 && me.on_demand && !me.watch.is_empty() {
            tx.send(v1::DiscoveryRequest {
                request: Some(Req::Watch(v1::Watch {
                    names: me.watch.clone(),
                })),
            })
            .await?;
        }
        on_response(n, &r);
        n += 1;
    }
    Ok(())
}
