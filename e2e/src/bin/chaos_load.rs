//! `chaos_load`: the open-loop load generator of the failure-scenario benchmark
//! (`e2e/bench/chaos.sh`). Requests are due at a fixed rate whatever happens to earlier ones
//! (latency counts from when a request was due, so a stalled path is not hidden by a client that
//! waits: no coordinated omission); each one's due time, latency and outcome is recorded.
//!
//! ```text
//! chaos_load run --url http://127.77.16.1:4140/ --host s1.bench.svc.cluster.local:8080 \
//!     --rate 500 --duration 12 --timeout-ms 2000 --out run.tsv --events run.events.jsonl \
//!     --at '2=http://127.77.16.21:9000/set?mode=refuse'
//!         # prints the whole run's report (JSON); --at GETs a URL that many seconds into the
//!         # run (a fault switched on cue) and records its answer in --events
//! chaos_load report --in run.tsv --from 2 --to 12 --fault-at 2 --hold 3
//!         # the figures of a window (weft_e2e::chaos::report), JSON
//! ```
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use weft_e2e::chaos::http1::{split_url, Conn};
use weft_e2e::chaos::report::{report, Outcome, Sample, Window};

#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Sends the load and records every request.
    Run(Run),
    /// Computes the figures of a window of a recorded run.
    Report(ReportArgs),
}

#[derive(Parser, Debug)]
struct Run {
    /// `http://ip:port/path` (an IP address: no resolving).
    #[arg(long)]
    url: String,
    /// Host header (default: the URL's authority).
    #[arg(long)]
    host: Option<String>,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// Seconds.
    #[arg(long)]
    duration: f64,
    /// A request not answered this long after it was due is a timeout (its connection closed).
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Most connections open at once (a request due when all are busy waits for one).
    #[arg(long, default_value_t = 4000)]
    max_conns: usize,
    /// Where the per-request record goes (TSV: due µs, latency µs, outcome).
    #[arg(long)]
    out: std::path::PathBuf,
    /// `SECONDS=URL`: GET the URL that far into the run (repeatable).
    #[arg(long)]
    at: Vec<String>,
    /// Where the answers to `--at` go (JSON lines).
    #[arg(long)]
    events: Option<std::path::PathBuf>,
}

#[derive(Parser, Debug)]
struct ReportArgs {
    #[arg(long = "in")]
    input: std::path::PathBuf,
    #[arg(long, default_value_t = 0.0)]
    from: f64,
    #[arg(long, default_value_t = f64::MAX)]
    to: f64,
    /// When the fault began (seconds into the run): adds recovery figures.
    #[arg(long)]
    fault_at: Option<f64>,
    /// Recovery must hold at least this long before the window ends.
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
    /// Share of requests that must succeed for "recovered".
    #[arg(long, default_value_t = 0.999)]
    target: f64,
}

/// Most samples one run keeps (a run asks for rate x duration; this bounds a typo).
const MAX_SAMPLES: f64 = 20_000_000.0;
/// Largest body kept from an `--at` answer.
const MAX_EVENT_BODY: usize = 16 * 1024;

type Pool = Mutex<Vec<(Conn<TcpStream>, OwnedSemaphorePermit)>>;

struct Target {
    addr: SocketAddr,
    request: Vec<u8>,
    pool: Pool,
    conns: Arc<Semaphore>,
    /// Signalled when a connection goes back to the pool (for requests waiting for one).
    returned: Notify,
}

async fn one_request(t: &Target) -> Outcome {
    // An idle connection, else a new one, else whichever comes first of the two.
    let (mut conn, permit) = loop {
        if let Some(c) = t.pool.lock().ok().and_then(|mut p| p.pop()) {
            break c;
        }
        let returned = t.returned.notified();
        tokio::select! {
            permit = t.conns.clone().acquire_owned() => {
                let Ok(permit) = permit else { return Outcome::Error };
                match TcpStream::connect(t.addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        break (Conn::new(s), permit);
                    }
                    Err(_) => return Outcome::Error,
                }
            }
            () = returned => continue,
        }
    };
    if conn.write_all(&t.request).await.is_err() {
        return Outcome::Error;
    }
    let head = match conn.read_head().await {
        Ok(Some(h)) => h,
        _ => return Outcome::Error,
    };
    let (Some(status), Ok(framing)) = (head.status(), head.framing()) else {
        return Outcome::Error;
    };
    let mut sink = Vec::new();
    if conn.read_body(framing, &mut sink, 0).await.is_err() {
        return Outcome::Error;
    }
    if !head.closes() {
        if let Ok(mut p) = t.pool.lock() {
            p.push((conn, permit));
        }
        t.returned.notify_one();
    }
    Outcome::Status(status)
}

/// GETs `url` on a fresh connection; (status, body), or the error.
async fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let (authority, path) = split_url(url).ok_or_else(|| format!("not http://ip:port/…: {url}"))?;
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| format!("not ip:port: {authority}"))?;
    let fut = async {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut conn = Conn::new(s);
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let head = conn
            .read_head()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("closed without an answer")?;
        let status = head.status().ok_or("not an HTTP response")?;
        let mut body = Vec::new();
        let framing = head.framing().map_err(|e| e.to_string())?;
        conn.read_body(framing, &mut body, MAX_EVENT_BODY)
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&body).trim().to_string()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn run(args: Run) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite() && args.duration > 0.0,
        "--rate and --duration must be positive"
    );
    let total = (args.rate * args.duration).ceil();
    anyhow::ensure!(total <= MAX_SAMPLES, "rate x duration above {MAX_SAMPLES}");
    let total = total as u64;
    let (authority, path) = split_url(&args.url).context("--url must be http://ip:port/path")?;
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("--url needs an IP address and port, got {authority}"))?;
    let host = args.host.clone().unwrap_or(authority);
    let target = Arc::new(Target {
        addr,
        request: format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chaos_load\r\n\r\n")
            .into_bytes(),
        pool: Mutex::new(Vec::new()),
        conns: Arc::new(Semaphore::new(args.max_conns.max(1))),
        returned: Notify::new(),
    });
    let timeout = Duration::from_millis(args.timeout_ms);
    let start = Instant::now();

    let mut events = Vec::new();
    for spec in &args.at {
        let (secs, url) = spec
            .split_once('=')
            .with_context(|| format!("--at {spec}: SECONDS=URL"))?;
        let secs: f64 = secs
            .parse()
            .with_context(|| format!("--at {spec}: seconds"))?;
        anyhow::ensure!(secs >= 0.0 && secs.is_finite(), "--at {spec}: seconds");
        let url = url.to_string();
        events.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_secs_f64(secs)).await;
            let at = start.elapsed().as_secs_f64();
            let answer = get(&url, Duration::from_secs(5)).await;
            let (status, body) = match answer {
                Ok((s, b)) => (Some(s), b),
                Err(e) => (None, e),
            };
            serde_json::json!({"due_s": secs, "at_s": at, "url": url, "status": status, "body": body})
        }));
    }

    let (tx, mut rx) = mpsc::channel::<Sample>(65_536);
    let collector = tokio::spawn(async move {
        let mut samples = Vec::new();
        while let Some(s) = rx.recv().await {
            samples.push(s);
        }
        samples
    });
    let interval = 1.0 / args.rate;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        tokio::time::sleep_until(due).await;
        let (t, tx) = (target.clone(), tx.clone());
        tokio::spawn(async move {
            let outcome = tokio::time::timeout_at(due + timeout, one_request(&t))
                .await
                .unwrap_or(Outcome::Timeout);
            let sample = Sample {
                start_us: due.duration_since(start).as_micros() as u64,
                latency_us: Instant::now().duration_since(due).as_micros() as u64,
                outcome,
            };
            let _ = tx.send(sample).await;
        });
    }
    drop(tx);
    let mut samples = collector.await.context("collector")?;
    samples.sort_by_key(|s| s.start_us);

    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| format!("{}", args.out.display()))?,
    );
    for s in &samples {
        writeln!(out, "{}", s.to_line())?;
    }
    out.flush()?;
    let mut lines = Vec::new();
    for e in events {
        lines.push(e.await.context("event")?.to_string());
    }
    if let Some(path) = &args.events {
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("{}", path.display()))?;
    }
    let w = Window {
        from_s: 0.0,
        to_s: args.duration,
        fault_s: None,
        hold_s: 0.0,
        target: 0.999,
    };
    println!("{}", serde_json::to_string(&report(&samples, &w))?);
    Ok(())
}

fn report_cmd(args: ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("{}", args.input.display()))?;
    let samples = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(Sample::parse_line)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let end = samples.iter().map(|s| s.start_us).max().unwrap_or(0) as f64 / 1e6;
    let to = if args.to == f64::MAX {
        // The run's end: one interval after the last request was due, near enough.
        end + 1e-6
    } else {
        args.to
    };
    let w = Window {
        from_s: args.from,
        to_s: to,
        fault_s: args.fault_at,
        hold_s: args.hold,
        target: args.target,
    };
    println!("{}", serde_json::to_string(&report(&samples, &w))?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Run(r) => {
            // One thread: the generator is pinned to its own CPU and must not compete for more.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(r))
        }
        Cmd::Report(r) => report_cmd(r),
    }
}
