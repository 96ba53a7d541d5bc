//! Memory given back after a burst (issue #19), with real processes.
//!
//! Starts the real `weft-operator --manifests` (push-all) and one real `weft-proxy`, then:
//! 1. idle: a mesh of 1 Service; records both processes' RSS;
//! 2. burst: rewrites the manifests to N Services (10 endpoints each), waits for the proxy's ACK,
//!    records RSS;
//! 3. removal: removes the N Services again, waits for the ACK, records RSS (what was given back);
//! 4. `/config`: grows the mesh to N again, then reads the proxy's admin `/config` once and
//!    records the proxy's peak RSS (`VmHWM`) before and after the read, and its RSS after.
//!
//! RSS is read `--settle` seconds (default 5) after each ACK. Extra proxy/operator environment (e.g. `MALLOC_ARENA_MAX=2`) can be passed with `--env`.
//!
//! ```text
//! cargo build -p weft-operator --bin weft-operator --example memory_burst -p weft-proxy
//! target/debug/examples/memory_burst --operator target/debug/weft-operator \
//!     --proxy target/debug/weft-proxy --services 10000
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ENDPOINTS: usize = 10;
/// Services per manifest file.
const CHUNK: usize = 500;

struct Args {
    operator: PathBuf,
    proxy: PathBuf,
    services: usize,
    env: Vec<(String, String)>,
    /// Experiment: after the removal, call glibc's `malloc_trim(0)` in both processes through
    /// gdb and record RSS again (shows how much of the retained memory glibc could give back).
    gdb_trim: bool,
    /// Seconds to wait after each ACK before reading RSS.
    settle: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        operator: PathBuf::from("target/debug/weft-operator"),
        proxy: PathBuf::from("target/debug/weft-proxy"),
        services: 3000,
        env: Vec::new(),
        gdb_trim: false,
        settle: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--gdb-trim" {
            args.gdb_trim = true;
            continue;
        }
        let v = it.next().unwrap_or_default();
        match a.as_str() {
            "--operator" => args.operator = PathBuf::from(v),
            "--proxy" => args.proxy = PathBuf::from(v),
            "--services" => args.services = v.parse().unwrap_or(3000),
            "--settle" => args.settle = v.parse().unwrap_or(5),
            "--env" => {
                if let Some((k, v)) = v.split_once('=') {
                    args.env.push((k.to_string(), v.to_string()));
                }
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    args
}

fn service_yaml(i: usize) -> String {
    let mut s = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: svc-{i}, namespace: bench}}\nsubsets:\n- ports: [{{name: http, port: 8080}}]\n  addresses:\n",
        i / 250,
        1 + i % 250
    );
    for e in 0..ENDPOINTS {
        s.push_str(&format!(
            "  - {{ip: 10.{}.{}.{}}}\n",
            1 + i / 250,
            i % 250,
            1 + e
        ));
    }
    s
}

fn base(dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("base.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: client, namespace: bench}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: client-0\n  namespace: bench\n  labels: {app: client, weft.io/proxy-version: \"0.1.0\"}\nspec:\n  serviceAccountName: client\n  containers: [{name: app, image: app}]\nstatus:\n  podIP: 127.0.0.1\n  conditions: [{type: Ready, status: \"True\"}]\n",
    )?;
    std::fs::write(dir.join("svc-0.yaml"), service_yaml(0))
}

/// Writes Services 1..n (in files of `CHUNK`), or removes them.
fn burst(dir: &Path, n: usize, present: bool) -> std::io::Result<()> {
    let mut start = 1;
    while start < n {
        let end = (start + CHUNK).min(n);
        let path = dir.join(format!("burst-{start}.yaml"));
        if present {
            let body: String = (start..end).map(service_yaml).collect();
            std::fs::write(path, body)?;
        } else {
            std::fs::remove_file(path)?;
        }
        start = end;
    }
    Ok(())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, buf[split + 4..].to_vec()))
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn mem_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proxy_entry(admin: SocketAddr) -> Option<serde_json::Value> {
    let (_, body) = get(admin, "/proxies")?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v.as_array()?.first().cloned()
}

/// Waits until the proxy ACKed a config holding at least/most `resources` (per `more`).
fn wait_resources(admin: SocketAddr, want: impl Fn(u64) -> bool, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(p) = proxy_entry(admin) {
            let settled = !p["last_sent_version"].is_null()
                && p["last_sent_version"] == p["last_acked_version"];
            if settled && p["resources"].as_u64().is_some_and(&want) {
                return start.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the proxy did not settle within {limit:?}");
}

fn main() -> std::io::Result<()> {
    let args = parse_args();
    let n = args.services.max(2);
    let dir = tempfile::tempdir()?;
    let m = dir.path().join("manifests");
    std::fs::create_dir(&m)?;
    base(&m)?;
    let token = dir.path().join("token");
    std::fs::write(&token, "bench-token")?;
    let discovery: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let op_admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = Command::new(&args.operator);
    cmd.args(["--manifests", &m.display().to_string()])
        .args(["--discovery-addr", &discovery.to_string()])
        .args(["--admin-addr", &op_admin.to_string()])
        .args(["--bootstrap-token-file", &token.display().to_string()])
        .env("WEFT_LOG", "info")
        .envs(args.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(std::env::temp_dir().join("memory_burst-operator.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        );
    let operator = Proc(cmd.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(op_admin, "/ready").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "operator not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = Command::new(&args.proxy);
    cmd.env("WEFT_PROXY_CONTROL_ADDR", discovery.to_string())
        .env("WEFT_PROXY_POD", "bench/client-0")
        .env("WEFT_PROXY_SERVICE_ACCOUNT", "client")
        .env("WEFT_PROXY_TOKEN_FILE", &token)
        .env("WEFT_PROXY_ADMIN_ADDR", admin.to_string())
        .env(
            "WEFT_PROXY_OUTBOUND_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "WEFT_PROXY_INBOUND_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("WEFT_LOG", "warn")
        .envs(args.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let proxy = Proc(cmd.spawn()?);
    let (ppid, opid) = (proxy.0.id(), operator.0.id());
    let limit = Duration::from_secs(900);
    let small = |r: u64| r < 20;
    let large = |r: u64| r >= n as u64;
    let settle = Duration::from_secs(args.settle);

    wait_resources(op_admin, small, limit);
    std::thread::sleep(settle);
    let idle = (mem_kib(ppid), mem_kib(opid));

    burst(&m, n, true)?;
    let t_grow = wait_resources(op_admin, large, limit);
    std::thread::sleep(settle);
    let grown = (mem_kib(ppid), mem_kib(opid));

    burst(&m, n, false)?;
    let t_shrink = wait_resources(op_admin, small, limit);
    std::thread::sleep(settle);
    let removed = (mem_kib(ppid), mem_kib(opid));
    let trimmed = args.gdb_trim.then(|| {
        for pid in [ppid, opid] {
            let _ = Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "call (int)malloc_trim(0)",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_secs(1));
        (mem_kib(ppid), mem_kib(opid))
    });

    burst(&m, n, true)?;
    wait_resources(op_admin, large, limit);
    std::thread::sleep(settle);
    let before_config = mem_kib(ppid);
    let (status, body) = get(admin, "/config").unwrap_or_default();
    std::thread::sleep(settle);
    let after_config = mem_kib(ppid);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "services: {n} ({ENDPOINTS} endpoints each); env: {:?}",
        args.env
    );
    println!("RSS read {} s after each ACK", args.settle);
    println!("load average: {}", load.trim());
    println!(
        "grow ACKed after {:.1} s, removal ACKed after {:.1} s",
        t_grow.as_secs_f64(),
        t_shrink.as_secs_f64()
    );
    println!("| phase | proxy RSS | operator RSS |");
    println!("|---|---|---|");
    println!(
        "| idle (1 Service) | {} | {} |",
        mib(idle.0 .0),
        mib(idle.1 .0)
    );
    println!(
        "| {n} Services | {} | {} |",
        mib(grown.0 .0),
        mib(grown.1 .0)
    );
    println!(
        "| after removing them | {} | {} |",
        mib(removed.0 .0),
        mib(removed.1 .0)
    );
    if let Some(t) = trimmed {
        println!(
            "| after malloc_trim(0) (gdb) | {} | {} |",
            mib(t.0 .0),
            mib(t.1 .0)
        );
    }
    println!(
        "/config at {n} Services: status {status}, {} bytes; proxy peak RSS (VmHWM) {} before the read, {} after; RSS after {}",
        body.len(),
        mib(before_config.1),
        mib(after_config.1),
        mib(after_config.0)
    );
    Ok(())
}
