//! On-demand discovery benchmark (issue #19), side by side with push-all in one run.
//!
//! Part 1, for each mesh size S: it writes S Services (10 endpoints each, `Endpoints` objects)
//! plus one meshed client pod, starts the real `weft-operator --manifests --discovery-mode
//! on-demand` and two real `weft-proxy` processes for that pod, one push-all and one on-demand
//! (explicit mode, loopback). The on-demand proxy is sent one request to each of 10 Services. It
//! then reports: each proxy's RSS; for an endpoint change in a Service neither proxy calls, the
//! bytes the operator sent each of them (`/proxies` `bytes_sent`); then, over `--samples`
//! further never-seen Services (plus the first 10), the latency of the first request to a
//! Service the on-demand proxy never saw and of a second one to the same Service (no backend
//! listens: both end in an error status, after the same routing work), p50/p99.
//!
//! Part 2 (`--sim-proxies N`, 0 to skip): the real operator with `--scale-services` Services and
//! N meshed pods, and N simulated on-demand proxies in this process (one gRPC connection each:
//! `Subscribe` with `on_demand`, then a `Watch` of one Service, ACK of every response).
//! `--watchers` of them watch the Service whose endpoints change; the others watch other
//! Services. For `--changes` endpoint changes it reports p50/p99/max from the file write to the
//! last watcher's ACK of the new endpoints, how many of the other proxies received anything
//! (and how many bytes), the operator's RSS per connected proxy, and its CPU time per change.
//! The baseline is the same with `--baseline-proxies` push-all proxies (every one of them gets
//! every change; a push-all run with N proxies would hold N copies of the whole mesh).
//!
//! Each simulated proxy holds one socket in this process and one in the operator: the soft
//! `RLIMIT_NOFILE` must exceed N plus a margin; the bench checks it and stops with a message
//! when it does not (raise it with `ulimit -n`).
//!
//! ```text
//! cargo build --release -p weft-operator --bin weft-operator --example ondemand_bench \
//!     -p weft-proxy --bin weft-proxy
//! target/release/examples/ondemand_bench --operator target/release/weft-operator \
//!     --proxy target/release/weft-proxy --services 100,1000,10000 --sim-proxies 10000
//! ```

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    cpu_ms, free_port, get, ms, percentile, rss_kib, sim_proxy, start_operator, terminate,
    BoxError, Proc, SimProxy,
};
use prost::Message;
use tokio::sync::{mpsc, Semaphore};
use weft_proxy_api::v1;

const ENDPOINTS: usize = 10;
const USED: usize = 10;

struct Args {
    operator: PathBuf,
    proxy: PathBuf,
    services: Vec<usize>,
    /// First-request samples beyond the `USED` Services.
    samples: usize,
    sim_proxies: usize,
    watchers: usize,
    scale_services: usize,
    changes: usize,
    baseline_proxies: usize,
    /// `--floor-connections N`: also measure the operator's RSS per bare gRPC connection (HTTP/2
    /// connected, no stream): the transport's share of the cost per connected proxy.
    floor_connections: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        operator: PathBuf::from("target/debug/weft-operator"),
        proxy: PathBuf::from("target/debug/weft-proxy"),
        services: vec![100, 1000],
        samples: 50,
        sim_proxies: 0,
        watchers: 100,
        scale_services: 10_000,
        changes: 50,
        baseline_proxies: 100,
        floor_connections: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        let n = || v.trim().parse::<usize>().ok();
        match a.as_str() {
            "--operator" => args.operator = PathBuf::from(v),
            "--proxy" => args.proxy = PathBuf::from(v),
            "--services" => {
                args.services = v.split(',').filter_map(|n| n.trim().parse().ok()).collect()
            }
            "--samples" => args.samples = n().unwrap_or(args.samples),
            "--sim-proxies" => args.sim_proxies = n().unwrap_or(args.sim_proxies),
            "--watchers" => args.watchers = n().unwrap_or(args.watchers),
            "--scale-services" => args.scale_services = n().unwrap_or(args.scale_services),
            "--changes" => args.changes = n().unwrap_or(args.changes).max(1),
            "--baseline-proxies" => args.baseline_proxies = n().unwrap_or(args.baseline_proxies),
            "--floor-connections" => args.floor_connections = n().unwrap_or(0),
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

fn run(args: &Args, services: usize) -> std::io::Result<(u64, u64)> {
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
    let mut sample = |i: usize| {
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
    };
    for i in 0..USED {
        sample(i);
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

    // More never-seen Services (after the RSS figures, which are for a proxy using 10).
    for i in USED..(USED + args.samples).min(services - 1) {
        sample(i);
    }
    let added: Vec<Duration> = {
        let mut v: Vec<Duration> = first
            .iter()
            .zip(&second)
            .map(|(f, s)| f.saturating_sub(*s))
            .collect();
        v.sort();
        v
    };
    first.sort();
    second.sort();
    let q = |v: &[Duration], p: f64| ms(percentile(v, p));
    println!(
        "| {services} | {:.1} MiB | {:.1} MiB | {push_resources} / {od_resources} | {} B / {} B | {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms |",
        rss_push as f64 / 1024.0,
        rss_od as f64 / 1024.0,
        delta(&before.0, &after.0),
        delta(&before.1, &after.1),
        first.len(),
        q(&first, 0.5),
        q(&first, 0.99),
        q(&second, 0.5),
        q(&second, 0.99),
        q(&added, 0.5),
        q(&added, 0.99),
    );
    drop(push_all);
    drop(on_demand);
    Ok((rss_push, rss_od))
}

/// Manifests of the scale run: `services` Services (the last one is the one that changes, in
/// `last.yaml`) and `pods` meshed pods `sim-<i>` (service account `client`).
fn scale_manifests(dir: &Path, services: usize, pods: usize) -> std::io::Result<()> {
    let mut base = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: client, namespace: bench}\n",
    );
    for i in 0..pods {
        base.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: sim-{i}\n  namespace: bench\n  labels: {{app: sim, weft.io/proxy-version: \"0.1.0\"}}\nspec:\n  serviceAccountName: client\n  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: 127.1.{}.{}\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
            i / 250,
            1 + i % 250
        ));
    }
    std::fs::write(dir.join("pods.yaml"), base)?;
    let mut chunk = String::new();
    for i in 0..services - 1 {
        chunk.push_str(&service_yaml(i, 1));
        if i % 500 == 499 {
            std::fs::write(dir.join(format!("svc-{i}.yaml")), &chunk)?;
            chunk.clear();
        }
    }
    std::fs::write(dir.join("svc-rest.yaml"), &chunk)?;
    std::fs::write(dir.join("last.yaml"), service_yaml(services - 1, 1))
}

/// The lowest last octet of the endpoints of `set` in a response (the generation of a change:
/// change `g` writes addresses `g..g+10`), if the response carries that set.
fn generation(r: &v1::DiscoveryResponse, set: &str) -> Option<u8> {
    let res = r.resources.iter().find(|x| x.name == set)?;
    let Some(v1::resource::Kind::Endpoints(eps)) = &res.kind else {
        return None;
    };
    eps.endpoints
        .iter()
        .filter_map(|e| e.ip.get(3).copied())
        .min()
}

/// Simulated-proxy counters shared with the bench's tasks.
#[derive(Default)]
struct Others {
    /// Proxies not watching the changed Service that received a response after they settled.
    proxies_hit: AtomicU64,
    responses: AtomicU64,
    bytes: AtomicU64,
}

/// Part 2: `proxies` simulated proxies against one operator (see the module header).
/// Waits until the operator at `admin` is ready (10 minutes at most), then 2 s more to settle.
async fn settled_operator(admin: SocketAddr) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while get(admin, "operator", "/ready").map(|r| r.0) != Some(200) {
        if Instant::now() > deadline {
            return Err("operator not ready".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

async fn scale(args: &Args, on_demand: bool, proxies: usize) -> Result<(), BoxError> {
    let services = args.scale_services.max(2);
    let watchers = if on_demand {
        args.watchers.min(proxies)
    } else {
        proxies
    };
    let changed = services - 1;
    let set = format!("endpoints:svc-{changed}.bench:80");
    let dir = tempfile::tempdir()?;
    scale_manifests(dir.path(), services, proxies)?;
    let mode = if on_demand { "on-demand" } else { "push-all" };
    let (mut op, discovery, admin) =
        start_operator(&args.operator, dir.path(), &["--discovery-mode", mode])?;
    settled_operator(admin).await?;
    let rss_before = rss_kib(op.0.id());

    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(proxies + 1);
    // Per change at most a few responses per watcher; drained after every change.
    let (ack_tx, mut ack_rx) = mpsc::channel::<(u8, Instant)>(watchers * 4 + 16);
    let others = Arc::new(Others::default());
    // Connections being set up at once (the operator's listen backlog is bounded).
    let connecting = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    let t_connect = Instant::now();
    for i in 0..proxies {
        let watcher = i < watchers;
        let watch = if watcher { changed } else { i % changed };
        let me = SimProxy {
            namespace: "bench".into(),
            pod: format!("sim-{i}"),
            service_account: "client".into(),
            on_demand,
            watch: vec![format!("outbound:svc-{watch}.bench")],
        };
        let (ready_tx, ack_tx, others) = (ready_tx.clone(), ack_tx.clone(), others.clone());
        let connecting = connecting.clone();
        let set = set.clone();
        tasks.spawn(async move {
            let mut permit = Some(connecting.acquire_owned().await?);
            // Settled: on demand, once the answer to the Watch arrived; push-all, the first.
            let settled_at = usize::from(on_demand);
            let mut hit = false;
            let mut on_response = |n: usize, r: &v1::DiscoveryResponse| {
                if n == settled_at {
                    permit = None;
                    let _ = ready_tx.try_send(());
                } else if n > settled_at {
                    if watcher {
                        if let Some(g) = generation(r, &set) {
                            let _ = ack_tx.try_send((g, Instant::now()));
                        }
                    } else {
                        if !hit {
                            hit = true;
                            others.proxies_hit.fetch_add(1, Ordering::Relaxed);
                        }
                        others.responses.fetch_add(1, Ordering::Relaxed);
                        others
                            .bytes
                            .fetch_add(r.encoded_len() as u64, Ordering::Relaxed);
                    }
                }
            };
            sim_proxy(discovery, me, &mut on_response).await
        });
    }
    drop(ready_tx);
    for k in 0..proxies {
        match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => {
                let failed = tasks.try_join_next().map(|r| match r {
                    Ok(Err(e)) => e.to_string(),
                    other => format!("{other:?}"),
                });
                return Err(
                    format!("{k} of {proxies} proxies settled; first failure: {failed:?}").into(),
                );
            }
        }
        if (k + 1) % 1000 == 0 {
            eprintln!(
                "  {} proxies settled ({:.1} s)",
                k + 1,
                t_connect.elapsed().as_secs_f64()
            );
        }
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kib(op.0.id());
    let quiet = others.responses.load(Ordering::Relaxed);

    let mut latencies = Vec::with_capacity(args.changes);
    let (op_cpu0, bench_cpu0) = (cpu_ms(op.0.id()), cpu_ms(0));
    for k in 1..=args.changes {
        // Changes `g` in 20..220 (the initial endpoints start at 1).
        let g = 20 + (k % 200) as u8;
        let tmp = dir.path().join(".last.yaml.tmp");
        std::fs::write(&tmp, service_yaml(changed, g))?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, dir.path().join("last.yaml"))?;
        let (mut got, mut last) = (0, t0);
        while got < watchers {
            let (gen, at) = tokio::time::timeout(Duration::from_secs(60), ack_rx.recv())
                .await
                .map_err(|_| format!("change {k}: {got} of {watchers} watchers ACKed in 60 s"))?
                .ok_or("proxies gone")?;
            if gen == g {
                got += 1;
                last = last.max(at);
            }
        }
        latencies.push(last - t0);
        // A quiet period longer than the operator's debounce, so each change is its own rescan.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let op_cpu = (cpu_ms(op.0.id()) - op_cpu0) / args.changes as f64;
    let bench_cpu = (cpu_ms(0) - bench_cpu0) / args.changes as f64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    latencies.sort();
    let others_n = proxies - watchers;
    let (hit, responses, bytes) = (
        others.proxies_hit.load(Ordering::Relaxed),
        others.responses.load(Ordering::Relaxed) - quiet,
        others.bytes.load(Ordering::Relaxed),
    );
    println!(
        "| {mode} | {services} | {proxies} ({connect_secs:.0} s to settle) | {watchers} | {} | {:.1} / {:.1} / {:.1} ms | {hit} of {others_n} ({responses} responses, {bytes} B) | {:.1} → {:.1} MiB | {:.1} KiB | {op_cpu:.1} ms | {bench_cpu:.1} ms |",
        args.changes,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) as f64 / proxies.max(1) as f64,
    );
    tasks.abort_all();
    terminate(&mut op);
    Ok(())
}

/// The operator's RSS per bare connection: `n` HTTP/2 connections to its discovery port that open
/// no stream, against the same operator idle.
async fn floor(args: &Args, n: usize) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    scale_manifests(dir.path(), args.scale_services.max(2), 0)?;
    let (mut op, discovery, admin) = start_operator(&args.operator, dir.path(), &[])?;
    settled_operator(admin).await?;
    let before = rss_kib(op.0.id());
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let client = weft_proxy_api::v1::discovery_client::DiscoveryClient::connect(format!(
            "http://{discovery}"
        ))
        .await?;
        held.push(client);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(op.0.id());
    println!(
        "\noperator RSS with {n} bare HTTP/2 connections (no stream): {:.1} -> {:.1} MiB, {:.1} KiB per connection",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / n.max(1) as f64
    );
    drop(held);
    terminate(&mut op);
    Ok(())
}

/// The soft limit on open files of this process (inherited by the operator it starts).
fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn main() {
    let args = parse_args();
    if !args.services.is_empty() {
        println!("| Services | push-all proxy RSS | on-demand proxy RSS (using {USED}) | resources held (push-all / on-demand) | bytes for an unrelated endpoint change (push-all / on-demand) | first-request samples | first request p50 / p99 | second request p50 / p99 | added (first − second) p50 / p99 |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    let mut rss = Vec::new();
    for &s in &args.services {
        match run(&args, s.max(USED + 2)) {
            Ok(r) => rss.push((s, r)),
            Err(e) => eprintln!("{s} services: {e}"),
        }
    }
    if let (Some((s0, (p0, o0))), Some((s1, (p1, o1)))) = (rss.first(), rss.last()) {
        if s1 > s0 {
            println!(
                "\nRSS ratio {s1}/{s0} Services: on-demand {:.2}x, push-all {:.2}x",
                *o1 as f64 / (*o0).max(1) as f64,
                *p1 as f64 / (*p0).max(1) as f64
            );
        }
    }
    if args.sim_proxies == 0 && args.floor_connections == 0 {
        return;
    }
    let need = args
        .sim_proxies
        .max(args.baseline_proxies)
        .max(args.floor_connections) as u64
        + 512;
    match nofile_limit() {
        Some(limit) if limit >= need => {}
        limit => {
            eprintln!(
                "open-file limit {limit:?} is below the {need} the scale run needs: raise it (ulimit -n {need})"
            );
            std::process::exit(1);
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    println!("\n| mode (operator and proxies) | Services | simulated proxies | watching the changed Service | changes | file change → last watcher ACK p50 / p99 / max | others that received anything | operator RSS before → with proxies | operator RSS per proxy | operator CPU per change | simulated proxies' CPU per change |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    runtime.block_on(async {
        if args.baseline_proxies > 0 {
            if let Err(e) = scale(&args, false, args.baseline_proxies).await {
                eprintln!("push-all baseline: {e}");
            }
        }
        if args.sim_proxies > 0 {
            if let Err(e) = scale(&args, true, args.sim_proxies).await {
                eprintln!("on-demand scale run: {e}");
                std::process::exit(1);
            }
        }
        if args.floor_connections > 0 {
            if let Err(e) = floor(&args, args.floor_connections).await {
                eprintln!("bare connections: {e}");
                std::process::exit(1);
            }
        }
    });
}
