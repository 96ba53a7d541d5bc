//! Propagation benchmark: N simulated proxies (each a real gRPC connection and stream that ACKs
//! every response) against the real `weft-operator --manifests`. For each of C sequential
//! changes to a TrafficSplit file it measures the time from the file write to the last proxy's
//! ACK of the new weights, and reports p50/p99/max, the operator's RSS per connected proxy, and
//! the CPU time per change of the operator and of the simulated proxies (less sensitive to other
//! load on the machine than the latencies).
//!
//! ```text
//! cargo build --release -p weft-operator --bin weft-operator --example propagation_bench
//! target/release/examples/propagation_bench --operator target/release/weft-operator \
//!     --proxies 1,100,1000 --changes 200
//! ```

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    cpu_ms, percentile, rss_kib, sim_proxy, start_operator, terminate, BoxError, SimProxy,
};
use tokio::sync::mpsc;
use weft_proxy_api::v1;

struct Args {
    operator: PathBuf,
    proxies: Vec<usize>,
    changes: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        operator: PathBuf::from("target/release/weft-operator"),
        proxies: vec![1, 100, 1000],
        changes: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        match a.as_str() {
            "--operator" => args.operator = PathBuf::from(v),
            "--proxies" => {
                args.proxies = v.split(',').filter_map(|n| n.trim().parse().ok()).collect()
            }
            "--changes" => args.changes = v.parse().unwrap_or(200),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    args
}

fn manifests(dir: &Path, pods: usize) -> std::io::Result<()> {
    let mut base = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app, namespace: bench}\n",
    );
    for i in 0..pods {
        base.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{i}\n  namespace: bench\n  labels: {{app: app, version: v{v}, weft.io/proxy-version: \"0.1.0\"}}\nspec:\n  serviceAccountName: app\n  containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]\nstatus:\n  podIP: 127.1.{hi}.{lo}\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
            v = 1 + i % 2,
            hi = i / 250,
            lo = 1 + i % 250
        ));
    }
    std::fs::write(dir.join("pods.yaml"), base)?;
    let mut services = String::new();
    for (n, (name, sel)) in [
        ("web", "app: app"),
        ("web-v1", "app: app, version: v1"),
        ("web-v2", "app: app, version: v2"),
    ]
    .iter()
    .enumerate()
    {
        services.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  clusterIP: 10.96.0.{}\n  selector: {{{sel}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n",
            10 + n
        ));
    }
    std::fs::write(dir.join("services.yaml"), services)?;
    write_split(dir, 0)
}

fn write_split(dir: &Path, i: u64) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: canary, namespace: bench}}\nspec:\n  service: web\n  backends:\n  - {{service: web-v1, weight: {}}}\n  - {{service: web-v2, weight: {}}}\n",
        100_000 - i,
        i
    );
    let tmp = dir.join(".split.yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join("split.yaml"))
}

/// The web-v2 weight carried by a response, if it carries the split.
fn v2_weight(r: &v1::DiscoveryResponse) -> Option<u64> {
    let res = r
        .resources
        .iter()
        .find(|x| x.name == "outbound:web.bench")?;
    let Some(v1::resource::Kind::Outbound(out)) = &res.kind else {
        return None;
    };
    out.ports
        .iter()
        .flat_map(|p| p.routes.iter())
        .filter(|r| r.name.starts_with("split:"))
        .flat_map(|r| r.backends.iter())
        .find(|b| b.service == "web-v2")
        .map(|b| b.weight)
}

/// One simulated proxy (see `common::sim_proxy`): reports readiness after its first response,
/// then (weight, ack time) for every response carrying the split.
async fn proxy(
    addr: SocketAddr,
    pod: String,
    acks: mpsc::Sender<(u64, Instant)>,
    ready: mpsc::Sender<()>,
) -> Result<(), BoxError> {
    let me = SimProxy {
        namespace: "bench".into(),
        pod,
        service_account: "app".into(),
        on_demand: false,
        watch: Vec::new(),
    };
    sim_proxy(addr, me, |n, r| {
        let now = Instant::now();
        if n == 0 {
            // Capacity: one per proxy.
            let _ = ready.try_send(());
        } else if let Some(w) = v2_weight(r) {
            // Capacity: four per proxy per change, drained after every change.
            let _ = acks.try_send((w, now));
        }
    })
    .await
}

async fn run(bin: &Path, n: usize, changes: usize) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    manifests(dir.path(), n)?;
    let (mut child, discovery, _admin) = start_operator(bin, dir.path(), &[])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(child.0.id());
    let (ack_tx, mut ack_rx) = mpsc::channel(n * 4 + 16);
    let (ready_tx, mut ready_rx) = mpsc::channel(n + 1);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(proxy(
            discovery,
            format!("app-{i}"),
            ack_tx.clone(),
            ready_tx.clone(),
        ));
    }
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await?
            .ok_or("a proxy failed to connect")?;
    }
    let rss_after = rss_kib(child.0.id());
    let mut latencies = Vec::with_capacity(changes);
    let (op_cpu0, bench_cpu0) = (cpu_ms(child.0.id()), cpu_ms(0));
    for i in 1..=changes as u64 {
        let t0 = Instant::now();
        write_split(dir.path(), i)?;
        let mut got = 0;
        let mut last = t0;
        while got < n {
            let (w, at) = tokio::time::timeout(Duration::from_secs(30), ack_rx.recv())
                .await?
                .ok_or("proxies gone")?;
            if w == i {
                got += 1;
                last = last.max(at);
            }
        }
        latencies.push(last - t0);
    }
    let op_cpu = (cpu_ms(child.0.id()) - op_cpu0) / changes as f64;
    let bench_cpu = (cpu_ms(0) - bench_cpu0) / changes as f64;
    latencies.sort();
    let per_proxy = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    println!(
        "proxies={n:5} changes={changes} p50={:7.2}ms p99={:7.2}ms max={:7.2}ms rss_idle={}KiB rss_connected={}KiB rss_per_proxy={:.1}KiB cpu_per_change: operator={:.1}ms proxies={:.1}ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        rss_before,
        rss_after,
        per_proxy,
        op_cpu,
        bench_cpu,
    );
    tasks.abort_all();
    terminate(&mut child);
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    for &n in &args.proxies {
        if let Err(e) = run(&args.operator, n, args.changes).await {
            eprintln!("proxies={n}: {e}");
            std::process::exit(1);
        }
    }
}
