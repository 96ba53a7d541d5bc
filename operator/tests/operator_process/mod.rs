//! The real `weft-operator` binary in `--manifests` mode on 127.0.0.1, shared by the tests that
//! run it: spawned with loopback ports and JSON logs, its bound addresses read from the
//! `weft-operator started` log line, its log captured, killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the operator may take to start and to become ready.
pub const START_WAIT: Duration = Duration::from_secs(30);

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

impl Operator {
    /// Spawns the operator and waits until it logs its bound addresses (not until it is ready).
    pub fn spawn(manifests: &Path, extra: &[&str]) -> Operator {
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
        let mut op = Operator {
            child: Some(child),
            discovery: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
        };
        // From here on a panic drops `op`, which kills the process.
        let line = rx
            .recv_timeout(START_WAIT)
            .unwrap_or_else(|_| panic!("the operator did not start; log:\n{}", op.log()));
        let field = |name: &str| -> SocketAddr {
            line.split(&format!("\"{name}\":\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {line}"))
        };
        op.discovery = field("discovery");
        op.admin = field("admin");
        op
    }

    /// Starts the operator and waits until it reports its addresses and `/ready` is 200.
    pub async fn start(manifests: &Path, extra: &[&str]) -> Operator {
        let op = Operator::spawn(manifests, extra);
        let ready = tokio::time::timeout(START_WAIT, async {
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

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the operator logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Everything the operator logged so far, a line each.
    pub fn log_lines(&self) -> Vec<String> {
        self.log().lines().map(str::to_string).collect()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (after [`Operator::terminate`]).
    pub async fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait")
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(self) {
        self.terminate();
        let exit = self.wait().await;
        assert!(exit.success(), "{exit:?}");
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

/// `GET path` on the admin server: (status code, body); (0, "") when it does not answer.
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
