//! On-demand discovery benchmark (issue #19), side by side with push-all in one run.
//!
//! For each mesh size S it writes S Services (10 endpoints each, `Endpoints` objects) plus one
//! meshed client pod, starts the real `weft-operator --manifests --discovery-mode on-demand` and
//! two real `weft-proxy` processes for that pod, one push-all and one on-demand (explicit mode,
//! loopback). The on-demand proxy is sent one request to each of 10 Services. It then reports:
//! each proxy's RSS; for an endpoint change in a Service neither proxy calls, the bytes the
//! operator sent each of them (`/proxies` `bytes_sent`); the latency of the first request to a
//! Service the on-demand proxy never saw, and of a second one (no backend listens: both end in
//! an error status, after the same routing work).
//!
//! ```text
//! cargo build -p weft-operator --bin weft-operator --example ondemand_bench -p weft-proxy
//! target/debug/examples/ondemand_bench --operator target/debug/weft-operator \
//!     --proxy target/debug/weft-proxy --services 100,1000
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ENDPOINTS: usize = 10;
const USED: usize = 10;

struct Args {
    operator: PathBuf,
    proxy: PathBuf,
    services: Vec<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        operator: PathBuf::from("target/debug/weft-operator"),
        proxy: PathBuf::from("target/debug/weft-proxy"),
        services: vec![100, 1000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        match a.as_str() {
            "--operator" => args.operator = PathBuf::from(v),
            "--proxy" => args.proxy = PathBuf::from(v),
            "--services" => {
                args.services = v.split(',').filter_map(|n| n.trim().parse().ok()).collect()
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    args
}

fn service_yaml(i: usize, first_ep: u8) -> String {
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
            first_ep as usize + e
        ));
    }
    s
}

fn manifests(dir: &Path, services: usize) -> std::io::Result<()> {
    std::fs::write(
        dir.join("base.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: client, namespace: bench}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: client-0\n  namespace: bench\n  labels: {app: client, weft.io/proxy-version: \"0.1.0\"}\nspec:\n  serviceAccountName: client\n  containers: [{name: app, image: app}]\nstatus:\n  podIP: 127.0.0.1\n  conditions: [{type: Ready, status: \"True\"}]\n",
    )?;
    let mut chunk = String::new();
    for i in 0..services - 1 {
        chunk.push_str(&service_yaml(i, 1));
        if i % 500 == 499 {
            std::fs::write(dir.join(format!("svc-{i}.yaml")), &chunk)?;
            chunk.clear();
        }
    }
    std::fs::write(dir.join("svc-rest.yaml"), &chunk)?;
    // The Service whose endpoints change (used by nobody).
    std::fs::write(dir.join("last.yaml"), service_yaml(services - 1, 1))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
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

fn rss_kib(pid: u32) -> u64 {
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

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct ProxyProc {
    proc: Proc,
    outbound: SocketAddr,
}

fn start_proxy(bin: &Path, discovery: SocketAddr, token: &Path, on_demand: bool) -> ProxyProc {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let outbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = Command::new(bin);
    cmd.env("WEFT_PROXY_CONTROL_ADDR", discovery.to_string())
        .env("WEFT_PROXY_POD", "bench/client-0")
        .env("WEFT_PROXY_SERVICE_ACCOUNT", "client")
        .env("WEFT_PROXY_TOKEN_FILE", token)
        .env("WEFT_PROXY_ADMIN_ADDR", admin.to_string())
        .env("WEFT_PROXY_OUTBOUND_ADDR", outbound.to_string())
        .env("WEFT_PROXY_INBOUND_ADDR", inbound.to_string())
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if on_demand {
        cmd.env("WEFT_PROXY_DISCOVERY_MODE", "on-demand");
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    ProxyProc {
        proc: Proc(child),
        outbound,
    }
}

fn proxies(admin: SocketAddr) -> Vec<serde_json::Value> {
    get(admin, "operator", "/proxies")
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn entry(admin: SocketAddr, on_demand: bool) -> Option<serde_json::Value> {
    proxies(admin)
        .into_iter()
        .find(|p| p["on_demand"] == on_demand)
}

/// Waits until every stream ACKed what it was last sent.
fn wait_settled(admin: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let all = proxies(admin);
        if all.len() == 2
            && all.iter().all(|p| {
                !p["last_sent_version"].is_null()
                    && p["last_sent_version"] == p["last_acked_version"]
            })
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn run(args: &Args, services: usize) -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let m = dir.path().join("manifests");
    std::fs::create_dir(&m)?;
    manifests(&m, services)?;
    let token = dir.path().join("token");
    std::fs::write(&token, "bench-token")?;
    let discovery: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _operator = Proc(
        Command::new(&args.operator)
            .args(["--manifests", &m.display().to_string()])
            .args(["--discovery-addr", &discovery.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--bootstrap-token-file", &token.display().to_string()])
            .args(["--discovery-mode", "on-demand"])
            .env("WEFT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while get(admin, "operator", "/ready").map(|r| r.0) != Some(200) {
        if Instant::now() > deadline {
            panic!("operator not ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let push_all = start_proxy(&args.proxy, discovery, &token, false);
    let on_demand = start_proxy(&args.proxy, discovery, &token, true);
    if !wait_settled(admin, Duration::from_secs(300)) {
        panic!("proxies did not settle");
    }

    // The on-demand proxy uses 10 Services: first and second request to each.
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for i in 0..USED {
        let host = format!("svc-{i}.bench:80");
        let t = Instant::now();
        let r1 = get(on_demand.outbound, &host, "/");
        first.push(t.elapsed());
        let t = Instant::now();
        let r2 = get(on_demand.outbound, &host, "/");
        second.push(t.elapsed());
        if i == 0 {
            eprintln!(
                "  first response: {:?}; second: {:?}",
                r1.map(|r| r.0),
                r2.map(|r| r.0)
            );
        }
    }
    wait_settled(admin, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let rss_push = rss_kib(push_all.proc.0.id());
    let rss_od = rss_kib(on_demand.proc.0.id());

    // An endpoint change in a Service nobody uses.
    let before = (entry(admin, false), entry(admin, true));
    std::fs::write(m.join("last.yaml"), service_yaml(services - 1, 100))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while entry(admin, false).map(|e| e["last_acked_version"].clone())
        == before.0.as_ref().map(|e| e["last_acked_version"].clone())
    {
        if Instant::now() > deadline {
            panic!("the push-all proxy never got the change");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = (entry(admin, false), entry(admin, true));
    let delta = |b: &Option<serde_json::Value>, a: &Option<serde_json::Value>| {
        let n = |e: &Option<serde_json::Value>| {
            e.as_ref()
                .and_then(|e| e["bytes_sent"].as_u64())
                .unwrap_or(0)
        };
        n(a).saturating_sub(n(b))
    };
    let od_resources = after
        .1
        .as_ref()
        .and_then(|e| e["resources"].as_u64())
        .unwrap_or(0);
    let push_resources = after
        .0
        .as_ref()
        .and_then(|e| e["resources"].as_u64())
        .unwrap_or(0);
    println!(
        "| {services} | {:.1} MiB | {:.1} MiB | {push_resources} / {od_resources} | {} B | {} B | {:.1} ms | {:.1} ms |",
        rss_push as f64 / 1024.0,
        rss_od as f64 / 1024.0,
        delta(&before.0, &after.0),
        delta(&before.1, &after.1),
        median(first).as_secs_f64() * 1000.0,
        median(second).as_secs_f64() * 1000.0,
    );
    drop(push_all);
    drop(on_demand);
    Ok(())
}

fn main() {
    let args = parse_args();
    println!("| Services | push-all proxy RSS | on-demand proxy RSS (using {USED}) | resources held (push-all / on-demand) | bytes for an unrelated endpoint change (push-all) | (on-demand) | first request to a new Service, median | second request, median |");
    println!("|---|---|---|---|---|---|---|---|");
    for &s in &args.services {
        if let Err(e) = run(&args, s.max(USED + 1)) {
            eprintln!("{s} services: {e}");
        }
    }
}
