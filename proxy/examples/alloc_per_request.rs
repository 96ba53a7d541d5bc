//! Per-request cost of the proxy (issue #20): heap allocations, bytes allocated, syscalls and
//! context switches per request through the real outbound and inbound listeners, in-process.
//!
//! ```text
//! cargo run -p weft-proxy --example alloc_per_request -- [1hop|2hop-mtls] [requests] [threads] [strace|sites]
//! ```
//!
//! `sites` (use a few hundred requests: it is slow) also prints where the proxies' allocations
//! come from, per request: the innermost `weft_proxy` frame and the library frame that
//! allocated (the counts of that run include the sampling's own work; use them for attribution
//! only).
//!
//! Layout: the load (a keep-alive HTTP/1.1 client, one request at a time, and the backend) runs on
//! one OS thread; the proxies run on their own runtime — a `current_thread` one like the binary's
//! default (`WEFT_PROXY_THREADS=1`), or `threads` workers. Only allocations made on the proxy
//! runtime's threads are counted (a thread-local flag read by a counting global allocator), so
//! the figures are the proxies' own, both of them for `2hop-mtls`. After 1,000 warm-up requests,
//! `requests` more (default 5,000) are measured: allocations and bytes from the allocator,
//! voluntary/involuntary context switches from `/proc/self/task/<tid>/status` of the proxy
//! threads, CPU time on the proxy threads from `/proc/self/task/<tid>/schedstat` (a debug
//! build's times are not a release build's: compare builds of one profile, in one run), and
//! (with `strace`) the proxy threads' syscalls from `strace -c -p <tid>...`.
//!
//! Paths: `1hop` client -> outbound (explicit mode, Host routed) -> backend; `2hop-mtls` client
//! -> outbound -> mTLS HTTP/2 link -> inbound (authorization by mesh identity) -> backend.

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dataplane_support::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::{oneshot, watch};
use weft_proxy::config::Config;
use weft_proxy::inbound::{self, InboundSettings};
use weft_proxy::metrics::Metrics;
use weft_proxy::outbound;
use weft_proxy::transport::{MeshIdentity, NoIdentity};
use weft_proxy_api::v1;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const API: &str = "spiffe://cluster.local/ns/demo/sa/api";
const WARMUP: u64 = 1_000;
const STRACE_OUT: &str = "/tmp/weft-alloc-per-request.strace";

thread_local! {
    /// Set on the proxy runtime's threads: their allocations are counted.
    static PROXY: Cell<bool> = const { Cell::new(false) };
    /// Set while a backtrace is being taken (its own allocations are not sampled).
    static SAMPLING: Cell<bool> = const { Cell::new(false) };
}

/// With `sites`: backtraces of the proxy threads' allocations are kept while this is set.
static SAMPLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static SITES: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());

/// Keeps a backtrace of the current allocation (`sites` mode only).
fn sample(size: usize) {
    if !SAMPLE.load(Relaxed) || SAMPLING.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    SAMPLING.with(|s| s.set(true));
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    if let Ok(mut v) = SITES.lock() {
        v.push((size, bt));
    }
    SAMPLING.with(|s| s.set(false));
}

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    if PROXY.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(size as u64, Relaxed);
        sample(size);
    }
}

/// `System` with a count of the allocations (and reallocations) made on proxy threads.
struct Counting;

// SAFETY: every method delegates to `System` with the caller's own arguments, unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`. The only extra work is a
// const-initialised thread-local read (no allocation, no destructor) and two atomic adds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's layout, passed on unchanged (see above).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through it) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The OS thread id of the calling thread.
fn tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Nanoseconds the given threads have run on a CPU, summed (`schedstat`'s first field).
fn cpu_ns(tids: &[u32]) -> u64 {
    tids.iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/self/task/{t}/schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Voluntary and involuntary context switches of the given threads, summed.
fn ctxt_switches(tids: &[u32]) -> (u64, u64) {
    let mut sum = (0, 0);
    for t in tids {
        let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{t}/status")) else {
            continue;
        };
        for line in s.lines() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("voluntary_ctxt_switches:"), Some(v)) => sum.0 += v,
                (Some("nonvoluntary_ctxt_switches:"), Some(v)) => sum.1 += v,
                _ => {}
            }
        }
    }
    sum
}

fn route(backend_set: &str) -> v1::Route {
    v1::Route {
        name: "default".into(),
        backends: vec![weighted("api", 1, backend_set)],
        ..Default::default()
    }
}

fn client_config(ep: v1::Endpoint) -> Arc<Config> {
    config(vec![
        outbound(
            "demo",
            "api",
            8080,
            v1::Protocol::Http1,
            vec![route("endpoints:api.demo:8080")],
            None,
        ),
        endpoints("endpoints:api.demo:8080", vec![ep]),
    ])
}

fn server_config(app_port: u16) -> Arc<Config> {
    config(vec![res(
        "inbound",
        v1::resource::Kind::Inbound(v1::InboundPolicy {
            identity: API.into(),
            default_policy: v1::DefaultPolicy::Deny as i32,
            ports: vec![v1::InboundPort {
                limits: None,
                port: u32::from(app_port),
                protocol: v1::Protocol::Http1 as i32,
                restricted: true,
                authorizations: vec![v1::Authorization {
                    name: "demo/web-to-api".into(),
                    clients: mesh_clients(&[WEB]),
                    all_traffic: false,
                    http_routes: vec![v1::HttpMatch {
                        name: "bench".into(),
                        path_regex: "/bench".into(),
                        methods: vec!["GET".into()],
                        headers: vec![],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }],
        }),
    )])
}

/// One listener to serve on the proxy runtime.
enum Listener {
    Outbound(std::net::TcpListener, Arc<Config>, Arc<dyn MeshIdentity>),
    Inbound(std::net::TcpListener, Arc<Config>, Arc<dyn MeshIdentity>),
}

fn bind(ip: &str) -> (std::net::TcpListener, SocketAddr) {
    let l = ok(std::net::TcpListener::bind(format!("{ip}:0")));
    ok(l.set_nonblocking(true));
    let a = ok(l.local_addr());
    (l, a)
}

/// Starts the proxy runtime on its own thread(s); returns their thread ids and a stop handle.
fn start_proxies(listeners: Vec<Listener>, threads: usize) -> (Vec<u32>, oneshot::Sender<()>) {
    let tids = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready, is_ready) = std::sync::mpsc::channel::<()>();
    let t = tids.clone();
    std::thread::spawn(move || {
        let t2 = t.clone();
        let mark = move || {
            PROXY.with(|p| p.set(true));
            if let (Some(id), Ok(mut v)) = (tid(), t2.lock()) {
                v.push(id);
            }
        };
        let runtime = if threads <= 1 {
            mark();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .on_thread_start(mark)
                .enable_all()
                .build()
        };
        let runtime = ok(runtime);
        runtime.block_on(async move {
            let (stop_all, _) = tokio::sync::broadcast::channel::<()>(1);
            for l in listeners {
                let mut s = stop_all.subscribe();
                let shutdown = async move {
                    let _ = s.recv().await;
                };
                let metrics = Arc::new(Metrics::new());
                match l {
                    Listener::Outbound(l, cfg, id) => {
                        let l = ok(tokio::net::TcpListener::from_std(l));
                        let (_tx, rx) = watch::channel(cfg);
                        tokio::spawn(async move {
                            let _tx = _tx;
                            let _ = outbound::serve(l, rx, id, metrics, shutdown).await;
                        });
                    }
                    Listener::Inbound(l, cfg, id) => {
                        let l = ok(tokio::net::TcpListener::from_std(l));
                        let settings = InboundSettings {
                            app_ip: ok(l.local_addr()).ip(),
                            drain_grace: Duration::from_secs(1),
                            ..Default::default()
                        };
                        let (_tx, rx) = watch::channel(cfg);
                        tokio::spawn(async move {
                            let _tx = _tx;
                            let _ = inbound::serve(l, settings, rx, id, metrics, shutdown).await;
                        });
                    }
                }
            }
            let _ = ready.send(());
            let _ = stopped.await;
            let _ = stop_all.send(());
        });
    });
    let _ = is_ready.recv();
    // Worker threads report themselves when they start: wait (bounded) for all of them.
    for _ in 0..500 {
        if tids.lock().map_or(true, |v| v.len() >= threads.max(1)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let v = tids.lock().map(|v| v.clone()).unwrap_or_default();
    (v, stop)
}

async fn run(c: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, n: u64) {
    for _ in 0..n {
        let req = ok(Request::builder()
            .uri("/bench")
            .header("host", "api.demo:8080")
            .body(Empty::<Bytes>::new()));
        let rsp = ok(c.send_request(req).await);
        assert_eq!(rsp.status(), StatusCode::OK, "{:?}", rsp.headers());
        let body = ok(rsp.into_body().collect().await).to_bytes();
        assert_eq!(&body[..], b"api");
    }
}

/// Prints the proxy threads' syscalls per request from the `strace -c` summary.
fn print_syscalls(n: u64) {
    let Ok(text) = std::fs::read_to_string(STRACE_OUT) else {
        println!("no strace summary in {STRACE_OUT}");
        return;
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if f.len() < 5 || f[0].parse::<f64>().is_err() {
            continue;
        }
        let (Ok(calls), Some(name)) = (f[3].parse::<u64>(), f.last()) else {
            continue;
        };
        println!("syscalls/request {name:>16} {:.2}", calls as f64 / n as f64);
    }
}

/// Prints where the sampled allocations come from: the innermost weft frame and the frame of
/// the allocating library call below it, counted per request.
fn print_sites(n: u64) {
    let sites = SITES.lock().map(|v| v.clone()).unwrap_or_default();
    let mut counts: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (size, bt) in &sites {
        let frames: Vec<&str> = bt
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(": ") && !l.starts_with("at "))
            .map(|l| l.split_once(": ").map_or(l, |(_, f)| f))
            .collect();
        let skip = |f: &&str| {
            f.starts_with("std::")
                || f.starts_with("alloc::")
                || f.starts_with("core::")
                || f.starts_with("alloc_per_request::")
                || f.starts_with("<alloc_per_request::")
                || f.starts_with("__rust")
                || f.starts_with("<alloc::")
                || f.starts_with("<core::")
        };
        let weft = frames
            .iter()
            .position(|f| f.contains("weft_proxy::"))
            .map_or("(no weft frame)", |i| frames[i]);
        let lib = frames.iter().find(|f| !skip(f)).copied().unwrap_or("?");
        let key = format!("{weft}  <-  {lib}");
        let e = counts.entry(key).or_default();
        e.0 += 1;
        e.1 += *size as u64;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    println!("allocations/request  bytes/request  innermost weft frame  <-  allocating call");
    for (k, (c, b)) in v.iter().take(60) {
        println!(
            "{:6.2} {:8.0}  {k}",
            *c as f64 / n as f64,
            *b as f64 / n as f64
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().map_or("1hop", String::as_str).to_string();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5_000);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let strace = args.get(3).is_some_and(|s| s == "strace");
    let sites = args.get(3).is_some_and(|s| s == "sites");
    // The binary's subscriber (an `info` filter, `WEFT_PROXY_LOG`'s default), writing nowhere:
    // without a subscriber, `tracing`'s `log` fallback (on in this build through a
    // dev-dependency) formats h2's per-frame spans, which the shipped proxy never does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .try_init();

    let load = ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build());
    load.block_on(async move {
        let app = backend("127.0.0.4:0", "api", false).await;
        let (listeners, entry) = match path.as_str() {
            "1hop" => {
                let (l, a) = bind("127.0.0.1");
                let cfg = client_config(endpoint(app, "", 0));
                let none: Arc<dyn MeshIdentity> = Arc::new(NoIdentity);
                (vec![Listener::Outbound(l, cfg, none)], a)
            }
            "2hop-mtls" => {
                let ca = TestCa::new();
                let (sl, sa) = bind("127.0.0.4");
                let (cl, ca_addr) = bind("127.0.0.1");
                let server = Listener::Inbound(sl, server_config(app.port()), ca.identity(API));
                let cfg = client_config(endpoint(app, API, sa.port()));
                let client = Listener::Outbound(cl, cfg, ca.identity(WEB));
                (vec![server, client], ca_addr)
            }
            other => panic!("unknown path {other} (1hop | 2hop-mtls)"),
        };
        let (tids, stop) = start_proxies(listeners, threads);
        let stream = ok(tokio::net::TcpStream::connect(entry).await);
        let (mut c, conn) = ok(hyper::client::conn::http1::handshake(TokioIo::new(stream)).await);
        tokio::spawn(conn);
        run(&mut c, WARMUP).await;

        let tracer = strace.then(|| {
            let mut cmd = std::process::Command::new("strace");
            cmd.args(["-c", "-q", "-o", STRACE_OUT]);
            for t in &tids {
                cmd.arg("-p").arg(t.to_string());
            }
            ok(cmd.spawn())
        });
        if tracer.is_some() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        SAMPLE.store(sites, Relaxed);
        let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        let (v0, i0) = ctxt_switches(&tids);
        let c0 = cpu_ns(&tids);
        run(&mut c, n).await;
        let (a1, b1) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        let (v1, i1) = ctxt_switches(&tids);
        let c1 = cpu_ns(&tids);
        SAMPLE.store(false, Relaxed);
        if let Some(mut t) = tracer {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &t.id().to_string()])
                .status();
            let _ = t.wait();
            print_syscalls(n);
        }
        let per = |x: u64| x as f64 / n as f64;
        println!(
            "path={path} proxy_threads={} requests={n} (after {WARMUP} warm-up)\n\
             allocations/request={:.2} bytes/request={:.0} \
             voluntary_ctxt_switches/request={:.2} involuntary/request={:.3} \
             proxy_cpu_us/request={:.1}",
            tids.len(),
            per(a1 - a0),
            per(b1 - b0),
            per(v1 - v0),
            per(i1 - i0),
            per(c1 - c0) / 1000.0,
        );
        if sites {
            print_sites(n);
        }
        let _ = stop.send(());
    });
}
