//! `chaos_backend`: the HTTP app of the failure-scenario benchmark (`e2e/bench/chaos.sh`),
//! whose faults are switched at run time on a control port.
//!
//! ```text
//! chaos_backend --listen 127.77.16.21:8080 --control 127.77.16.21:9000 --name b1
//! curl 'http://127.77.16.21:9000/set?mode=ok&delay_ms=5'        # healthy, 5 ms per request
//! curl 'http://127.77.16.21:9000/set?mode=refuse'               # the app died: connections are
//!                                                                 # refused, open ones closed
//! curl 'http://127.77.16.21:9000/set?mode=hang'                 # accepts, never answers
//! curl 'http://127.77.16.21:9000/set?mode=status&status=503&retry_after=1'
//! curl 'http://127.77.16.21:9000/set?mode=ok&concurrency=2&delay_ms=10'
//!                     # capacity: 2 requests served at once, 10 ms each; the rest wait in line
//!                     # (a waiting request whose client goes away is dropped)
//! curl 'http://127.77.16.21:9000/stats'     # JSON counters; /set and /reset answer the counters
//!                                           # as they were just before (then apply / zero them)
//! ```
//! Every request on the data port is counted (`GET /healthz...` apart, as `health`), answered
//! `200 <name> ok` in mode `ok`. `/set` replaces the whole fault state: omitted fields go back
//! to their defaults (`delay_ms=0`, `concurrency=0`: unlimited, no `Retry-After`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use weft_e2e::chaos::http1::Conn;

#[derive(Parser, Debug)]
struct Args {
    /// The app's port (what the proxies forward to).
    #[arg(long)]
    listen: SocketAddr,
    /// The control port (`/set`, `/stats`, `/reset`).
    #[arg(long)]
    control: SocketAddr,
    /// Named in response bodies and stats.
    #[arg(long, default_value = "backend")]
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Refuse,
    Hang,
    Status(u16),
}

#[derive(Clone, Debug)]
struct Fault {
    mode: Mode,
    delay: Duration,
    /// `Some`: the capacity limit (its permits are the requests served at once).
    capacity: Option<Arc<Semaphore>>,
    concurrency: u32,
    retry_after: Option<u32>,
}

impl Default for Fault {
    fn default() -> Self {
        Fault {
            mode: Mode::Ok,
            delay: Duration::ZERO,
            capacity: None,
            concurrency: 0,
            retry_after: None,
        }
    }
}

impl Fault {
    /// From a `/set` query (`mode=status&status=503&delay_ms=5&concurrency=2&retry_after=1`).
    fn from_query(query: &str) -> Result<Fault, String> {
        let mut f = Fault::default();
        let mut status = None;
        let mut mode = "ok";
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}={v}: not a number"))
            };
            match k {
                "mode" => mode = v,
                "status" => {
                    status = Some(
                        u16::try_from(num(v)?)
                            .ok()
                            .filter(|s| (200..600).contains(s))
                            .ok_or_else(|| format!("status={v}: not 200-599"))?,
                    )
                }
                "delay_ms" => f.delay = Duration::from_millis(num(v)?.min(600_000)),
                "concurrency" => {
                    f.concurrency = u32::try_from(num(v)?.min(100_000)).unwrap_or(100_000)
                }
                "retry_after" => {
                    f.retry_after = Some(u32::try_from(num(v)?.min(3600)).unwrap_or(3600))
                }
                _ => return Err(format!("unknown parameter {k}")),
            }
        }
        f.mode = match mode {
            "ok" => Mode::Ok,
            "refuse" => Mode::Refuse,
            "hang" => Mode::Hang,
            "status" => Mode::Status(status.ok_or("mode=status needs status=N")?),
            other => return Err(format!("unknown mode {other}")),
        };
        if f.concurrency > 0 {
            f.capacity = Some(Arc::new(Semaphore::new(f.concurrency as usize)));
        }
        Ok(f)
    }
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    health: AtomicU64,
    in_flight: AtomicU64,
    /// Requests dropped while waiting for capacity because their client went away.
    abandoned: AtomicU64,
    connections: AtomicU64,
    /// Responses by status (at most the 400 statuses 200-599).
    statuses: Mutex<BTreeMap<u16, u64>>,
}

impl Stats {
    fn json(&self, name: &str) -> String {
        let statuses: BTreeMap<String, u64> = self
            .statuses
            .lock()
            .map(|s| s.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default();
        serde_json::json!({
            "name": name,
            "requests": self.requests.load(Ordering::Relaxed),
            "health": self.health.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "abandoned": self.abandoned.load(Ordering::Relaxed),
            "connections": self.connections.load(Ordering::Relaxed),
            "statuses": statuses,
        })
        .to_string()
    }

    fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.health.store(0, Ordering::Relaxed);
        self.abandoned.store(0, Ordering::Relaxed);
        self.connections.store(0, Ordering::Relaxed);
        if let Ok(mut s) = self.statuses.lock() {
            s.clear();
        }
    }

    fn answered(&self, status: u16) {
        if let Ok(mut s) = self.statuses.lock() {
            *s.entry(status).or_insert(0) += 1;
        }
    }
}

struct App {
    name: String,
    stats: Stats,
    fault: watch::Sender<Fault>,
}

/// Decrements `in_flight` however the request ends.
struct InFlight<'a>(&'a Stats);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn response(status: u16, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Whether the client closed its side (or the connection broke); pipelined bytes are not EOF.
async fn client_gone(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    loop {
        match stream.peek(&mut b).await {
            Ok(0) | Err(_) => return true,
            // Data waiting (a pipelined request): the client is still there; wait on.
            Ok(_) => std::future::pending::<()>().await,
        }
    }
}

async fn serve_data(app: Arc<App>, stream: TcpStream) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    app.stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut fault_rx = app.fault.subscribe();
    let mut conn = Conn::new(stream);
    loop {
        let head = tokio::select! {
            head = conn.read_head() => match head? {
                Some(h) => h,
                None => return Ok(()),
            },
            // An app that dies takes its open connections with it.
            _ = wait_for(&mut fault_rx, |f| f.mode == Mode::Refuse) => return Ok(()),
        };
        let mut sink = Vec::new();
        conn.read_body(head.framing()?, &mut sink, 0).await?;
        let fault = fault_rx.borrow_and_update().clone();
        let health = head
            .request()
            .is_some_and(|(_, target)| target.starts_with("/healthz"));
        let counter = if health {
            &app.stats.health
        } else {
            &app.stats.requests
        };
        match fault.mode {
            Mode::Refuse => return Ok(()),
            Mode::Hang => {
                counter.fetch_add(1, Ordering::Relaxed);
                // Until the fault changes; then the connection goes (no answer ever).
                let _ = fault_rx.changed().await;
                return Ok(());
            }
            Mode::Ok | Mode::Status(_) => {}
        }
        counter.fetch_add(1, Ordering::Relaxed);
        app.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(&app.stats);
        let permit = match &fault.capacity {
            Some(sem) => {
                let sem = sem.clone();
                tokio::select! {
                    p = sem.acquire_owned() => p.ok(),
                    _ = client_gone(conn.get_ref()), if conn.buffered() == 0 => {
                        app.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                }
            }
            None => None,
        };
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        drop(permit);
        drop(in_flight);
        let (status, extra) = match fault.mode {
            Mode::Status(s) => (
                s,
                fault
                    .retry_after
                    .map(|r| format!("Retry-After: {r}\r\n"))
                    .unwrap_or_default(),
            ),
            _ => (200, String::new()),
        };
        let body = if status == 200 {
            format!("{} ok\n", app.name)
        } else {
            format!("{} {status}\n", app.name)
        };
        let close = head.closes();
        let extra = if close {
            format!("{extra}Connection: close\r\n")
        } else {
            extra
        };
        conn.write_all(&response(status, &body, &extra)).await?;
        app.stats.answered(status);
        if close {
            return Ok(());
        }
    }
}

/// Waits until the fault state satisfies `pred` (or the sender is gone).
async fn wait_for(rx: &mut watch::Receiver<Fault>, pred: impl Fn(&Fault) -> bool) {
    let _ = rx.wait_for(|f| pred(f)).await;
    if rx.has_changed().is_err() {
        std::future::pending::<()>().await
    }
}

/// The data port: listening unless the app is "dead" (mode refuse), then closed so that
/// connecting is refused, and bound again when the fault clears.
async fn data_port(app: Arc<App>, addr: SocketAddr) -> anyhow::Result<()> {
    let mut rx = app.fault.subscribe();
    loop {
        wait_for(&mut rx, |f| f.mode != Mode::Refuse).await;
        let listener = bind_retrying(addr).await?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let app = app.clone();
                        tokio::spawn(async move { let _ = serve_data(app, stream).await; });
                    }
                }
                _ = wait_for(&mut rx, |f| f.mode == Mode::Refuse) => break,
            }
        }
        drop(listener);
    }
}

async fn bind_retrying(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("bind {addr}")))
    .with_context(|| format!("bind {addr}"))
}

async fn serve_control(app: Arc<App>, stream: TcpStream) -> anyhow::Result<()> {
    let mut conn = Conn::new(stream);
    while let Some(head) = conn.read_head().await? {
        let mut sink = Vec::new();
        conn.read_body(head.framing()?, &mut sink, 0).await?;
        let (path, query) = match head.request() {
            Some((_, target)) => target.split_once('?').unwrap_or((target, "")),
            None => ("", ""),
        };
        let (status, body) = control(&app, path, query);
        conn.write_all(&response(status, &body, "")).await?;
        if head.closes() {
            break;
        }
    }
    Ok(())
}

fn control(app: &App, path: &str, query: &str) -> (u16, String) {
    match path {
        "/stats" => (200, app.stats.json(&app.name) + "\n"),
        "/reset" => {
            let before = app.stats.json(&app.name);
            app.stats.reset();
            (200, before + "\n")
        }
        "/set" => match Fault::from_query(query) {
            Ok(f) => {
                let before = app.stats.json(&app.name);
                app.fault.send_replace(f);
                (200, before + "\n")
            }
            Err(e) => (400, e + "\n"),
        },
        _ => (404, "GET /set?..., /stats or /reset\n".into()),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread, like a small app sharing its pod's CPU with its proxy.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (fault, _) = watch::channel(Fault::default());
        let app = Arc::new(App {
            name: args.name,
            stats: Stats::default(),
            fault,
        });
        let control = TcpListener::bind(args.control)
            .await
            .with_context(|| format!("bind {}", args.control))?;
        let mut data = tokio::spawn(data_port(app.clone(), args.listen));
        loop {
            tokio::select! {
                accepted = control.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let app = app.clone();
                        tokio::spawn(async move { let _ = serve_control(app, stream).await; });
                    }
                }
                r = tokio::signal::ctrl_c() => return r.context("signal"),
                done = &mut data => {
                    return match done {
                        Ok(r) => r.context("data port"),
                        Err(e) => Err(e).context("data port task"),
                    };
                }
            }
        }
    })
}
