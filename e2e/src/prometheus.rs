//! A real Prometheus (Debian's `prometheus` binary) scraping loopback proxies, for the tests that
//! check queries people run against weft's metrics (`e2e/tests/prometheus_flagger.rs`,
//! `e2e/tests/prometheus_dashboards.rs`).
//!
//! Scrapes every second with `honor_labels: true`: the labels a proxy sets itself (`namespace`,
//! `pod`, `deployment` on the Linkerd-compatible families) win over target labels, and a target's
//! own labels (`namespace`, `pod`, as a Kubernetes scrape job's relabelling sets them) label the
//! families that carry none (`weft_proxy_*`), as in docs/dashboards.md's scrape config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`Prometheus::start`] and [`Prometheus::wait_value`] wait.
pub const WAIT: Duration = Duration::from_secs(60);

/// The `prometheus` binary on `PATH`, if any.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// [`binary`], or `None` after printing why `test` is skipped; panics when `CI` is set (a CI
/// run must not pass by skipping).
pub fn binary_or_skip(test: &str) -> Option<PathBuf> {
    let found = binary();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but there is no `prometheus` binary on PATH (apt-get install prometheus)"
        );
        eprintln!("SKIPPED {test}: no `prometheus` binary on PATH (apt-get install prometheus)");
    }
    found
}

/// One scrape target: the proxy's admin address and the target labels to attach.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub labels: Vec<(String, String)>,
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Target {
            addr,
            labels: Vec::new(),
        }
    }
}

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    _proc: tokio::process::Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(binary: &Path, targets: &[Target]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: weft-proxies\n    honor_labels: true\n    static_configs:\n",
        );
        for t in targets {
            config.push_str(&format!("      - targets: ['{}']\n", t.addr));
            if !t.labels.is_empty() {
                config.push_str("        labels:\n");
                for (k, v) in &t.labels {
                    config.push_str(&format!("          {k}: '{v}'\n"));
                }
            }
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        let data = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let proc = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            _proc: proc,
            addr,
            dir,
        };
        let deadline = Instant::now() + WAIT;
        while get(p.addr, "/-/ready").await.map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    /// Prometheus' own log (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query (evaluated now); the `result` array.
    pub async fn query(&self, q: &str) -> Vec<Value> {
        self.query_api(q, None).await
    }

    /// An instant query evaluated at `time` (Unix seconds); the `result` array.
    pub async fn query_at(&self, q: &str, time: f64) -> Vec<Value> {
        self.query_api(q, Some(time)).await
    }

    async fn query_api(&self, q: &str, time: Option<f64>) -> Vec<Value> {
        let mut path = format!("/api/v1/query?query={}", percent_encode(q));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        let (status, body) = get(self.addr, &path).await.expect("prometheus answers");
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(json["status"], "success", "{q}: {body}");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of an instant query (NaN when empty).
    pub async fn value(&self, q: &str) -> f64 {
        let result = self.query(q).await;
        result.first().and_then(sample_value).unwrap_or(f64::NAN)
    }

    /// Waits until `q` gives `want`.
    pub async fn wait_value(&self, q: &str, want: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.value(q).await;
            if v == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{q} stayed {v}, want {want}: {:?}",
                self.query(q).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The value of one element of an instant vector result.
pub fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str().and_then(|v| v.parse().ok())
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GET over HTTP/1.1 with `Connection: close`: status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
