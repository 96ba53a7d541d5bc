//! #18: every query of the Grafana dashboards shipped with the chart (`charts/weft/dashboards/`)
//! returns the right value from a real Prometheus (Debian's `prometheus`) scraping a loopback
//! mesh with known traffic.
//!
//! The test reads the dashboards' JSON, takes every panel target's `expr` and every query
//! variable, fills the template variables with this mesh's values, runs each through
//! Prometheus' HTTP API and compares the result with [`expectations`]: one row per (dashboard,
//! panel title, refId), each with the series expected (by labels) and their value, exact or a
//! range. A query with no row fails the test (a new panel needs an assertion), and so does a row
//! that matches no query.
//!
//! The mesh (namespace `dash`, default inbound policy `mesh`; the pods' proxies have the workload
//! and the scrape targets the `namespace` and `pod` labels a cluster would give them):
//! - `client` (Deployment) sends, through its outbound listener: [`DIRECT_OK`] `/ok` and
//!   [`DIRECT_FAIL`] `/fail` to the `web-primary` service, and [`SPLIT`] `/ok` to the apex `web`,
//!   which a TrafficSplit shares 75/25 between `web-primary` and `web-canary` (the client's tally
//!   of 200s and 500s says how many each backend got).
//! - `web` (Deployment, the primary): answers `/ok` 200 and `/fail` 500 after 510 ms (inside the
//!   (500, 1000] ms bucket: p50/p95/p99 are exactly 750/975/995), and calls `web-canary`
//!   [`FROM_WEB`] times itself.
//! - `web-canary` (Deployment): answers everything 500 after 1010 ms ((1000, 2000] ms:
//!   1500/1950/1990).
//! - `db` (Deployment): a TCP echo on a port a TCPRoute and a TrafficTarget open to sa/client
//!   only; [`HELD`] connections from sa/client stay open through the queries and [`DENIED`]
//!   connections as sa/intruder are denied.
//!
//! Rates: every series exists before the window (a warm-up of each kind, scraped), the window
//! (`$__rate_interval`) starts after that scrape and before the measured traffic, and ends after
//! its last scrape. So within one target every series is sampled at the same instants and
//! ratios (success rate, share, quantiles) are exact, provided Prometheus extrapolates every
//! series to the window's start alike: it stops a counter's extrapolation where the counter
//! would reach zero (`window × first value / increase` before its first sample), so each
//! series' warm-up value must exceed its increase in the window divided by the window in
//! scrapes (at most 92 in 36 scrapes here: 3 warm-up requests for web-primary, the largest); a rate is the count over the sampled part
//! of the window, which differs from the window by at most the scrape gaps at its ends:
//! `rate × W / count` lies in [(W−4)/W, W/(W−4)] ([`rate_range`]).
//!
//! `client_id` (the labels helper's label contract): when the proxy exports the `tls` label on
//! inbound `request_total`, the "Top callers" row requires the client's SPIFFE ID as
//! `client_id`; before that, one series without it.
//!
//! Build first: `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`. Without a
//! `prometheus` binary the test is skipped (loudly), unless `CI` is set: then it fails.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_e2e::loopback::{LoopbackMesh, MeshSpec, PodSpec, ServiceSpec, PROXY_ADMIN_PORT};
use weft_e2e::prometheus::{binary_or_skip, sample_value, Prometheus, Target};

const NS: &str = "dash";
const APP_PORT: u16 = 8080;
const TCP_PORT: u16 = 7000;
const CLIENT: &str = "client-6d5f8b7c9-k2x4z";
const WEB: &str = "web-5d8f7c9b4-x2k9p";
const CANARY: &str = "web-canary-6c8d9f7b5-m4n8q";
const DB: &str = "db-7c9d8f6b5-q4w2e";
/// Just above a bucket bound (a measured latency is never below the delay), far below the next:
/// scheduling noise on a loaded machine stays inside the bucket.
const WEB_DELAY_MS: u64 = 510;
const CANARY_DELAY_MS: u64 = 1010;
const DIRECT_OK: usize = 24;
const DIRECT_FAIL: usize = 8;
const SPLIT: usize = 80;
const FROM_WEB: usize = 8;
const HELD: usize = 3;
const DENIED: usize = 4;
/// The shortest rate window: the longer it is, the tighter [`rate_range`].
const MIN_WINDOW_S: u64 = 40;

/// What each panel must show: from the traffic's counts (after the warm-up) and the window.
#[derive(Clone, Copy, Debug)]
struct Counts {
    /// `/ok` (200) and `/fail` (500) sent to `web-primary` directly.
    ok: f64,
    fail: f64,
    /// Split requests the primary (200) and the canary (500) answered.
    primary: f64,
    canary: f64,
    /// `web` → `web-canary` (500).
    from_web: f64,
    held: f64,
    denied: f64,
    /// The rate window, seconds.
    window: f64,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    Exact(f64),
    Range(f64, f64),
}

impl Expect {
    fn holds(self, v: f64) -> bool {
        match self {
            Expect::Exact(want) => (v - want).abs() <= 1e-9 * want.abs().max(1.0),
            Expect::Range(lo, hi) => v >= lo && v <= hi,
        }
    }
}

/// Series expected from one query: each one's distinguishing labels (absent = `""`) and value.
type Series = Vec<(Vec<(&'static str, String)>, Expect)>;

struct Row {
    dashboard: &'static str,
    title: &'static str,
    ref_id: &'static str,
    series: Series,
}

fn row(dashboard: &'static str, title: &'static str, ref_id: &'static str, series: Series) -> Row {
    Row {
        dashboard,
        title,
        ref_id,
        series,
    }
}

fn one(e: Expect) -> Series {
    vec![(vec![], e)]
}

fn by(label: &'static str, value: &str, e: Expect) -> (Vec<(&'static str, String)>, Expect) {
    (vec![(label, value.to_string())], e)
}

/// The factor bounds of `rate × W / count` (see the module doc).
fn factor(c: &Counts) -> (f64, f64) {
    ((c.window - 4.0) / c.window, c.window / (c.window - 4.0))
}

/// The rate of `count` events in the window, per second.
fn rate_range(c: &Counts, count: f64) -> Expect {
    let (lo, hi) = factor(c);
    Expect::Range(count * lo / c.window, count * hi / c.window)
}

/// A success ratio summed over targets: `parts` are (successes, total) per target, each target
/// with its own factor in [lo, hi]; the extremes put the lowest factor on one side.
fn ratio_range(c: &Counts, parts: &[(f64, f64)]) -> Expect {
    let (lo, hi) = factor(c);
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    // Each target's factor at either bound: every combination (few targets).
    for mask in 0..(1u32 << parts.len()) {
        let (mut ok, mut all) = (0.0, 0.0);
        for (i, (s, t)) in parts.iter().enumerate() {
            let f = if mask & (1 << i) == 0 { lo } else { hi };
            ok += s * f;
            all += t * f;
        }
        min = min.min(ok / all);
        max = max.max(ok / all);
    }
    Expect::Range(min, max)
}

/// p50/p95/p99 of requests all inside one Linkerd bucket (lo, hi] ms.
fn quantile_in(lo: f64, hi: f64, q: f64) -> Expect {
    Expect::Exact(lo + (hi - lo) * q)
}

/// The table: one row per dashboard query.
fn expectations(c: &Counts, client_id_exported: bool) -> Vec<Row> {
    use Expect::Exact;
    let web_in = c.ok + c.fail + c.primary;
    let web_ok = c.ok + c.primary;
    let canary_in = c.canary + c.from_web;
    let split = c.primary + c.canary;
    let web_q = |q| quantile_in(500.0, 1000.0, q);
    let canary_q = |q| quantile_in(1000.0, 2000.0, q);
    let web = |e| by("deployment", "web", e);
    let canary = |e| by("deployment", "web-canary", e);
    let (m, w, t) = ("weft-mesh", "weft-workload", "weft-trafficsplit");
    let callers = if client_id_exported {
        vec![by(
            "client_id",
            &format!("spiffe://cluster.local/ns/{NS}/sa/client"),
            rate_range(c, web_in),
        )]
    } else {
        one(rate_range(c, web_in))
    };
    vec![
        // weft / Mesh ($namespace = dash)
        row(
            m,
            "Request rate by namespace",
            "A",
            vec![by("namespace", NS, {
                let (lo, hi) = factor(c);
                Expect::Range(
                    (web_in + canary_in) * lo / c.window,
                    (web_in + canary_in) * hi / c.window,
                )
            })],
        ),
        row(
            m,
            "Success rate by namespace",
            "A",
            vec![by(
                "namespace",
                NS,
                ratio_range(c, &[(web_ok, web_in), (0.0, canary_in)]),
            )],
        ),
        row(
            m,
            "Request rate by workload",
            "A",
            vec![web(rate_range(c, web_in)), canary(rate_range(c, canary_in))],
        ),
        row(
            m,
            "Success rate by workload",
            "A",
            vec![web(Exact(web_ok / web_in)), canary(Exact(0.0))],
        ),
        row(
            m,
            "Latency by workload",
            "A",
            vec![web(web_q(0.5)), canary(canary_q(0.5))],
        ),
        row(
            m,
            "Latency by workload",
            "B",
            vec![web(web_q(0.95)), canary(canary_q(0.95))],
        ),
        row(
            m,
            "Latency by workload",
            "C",
            vec![web(web_q(0.99)), canary(canary_q(0.99))],
        ),
        row(
            m,
            "Open TCP connections by namespace",
            "A",
            vec![by("namespace", NS, Exact(c.held))],
        ),
        row(
            m,
            "Open TCP connections by pod",
            "A",
            vec![(
                vec![("pod", DB.into()), ("direction", "inbound".into())],
                Exact(c.held),
            )],
        ),
        row(
            m,
            "Authorization denials by namespace",
            "A",
            vec![(
                vec![("namespace", NS.into()), ("protocol", "tcp".into())],
                rate_range(c, c.denied),
            )],
        ),
        row(
            m,
            "Authorization denials by pod",
            "A",
            vec![(
                vec![("pod", DB.into()), ("protocol", "tcp".into())],
                rate_range(c, c.denied),
            )],
        ),
        // weft / Workload ($namespace = dash, $deployment = web)
        row(w, "Inbound request rate", "A", one(rate_range(c, web_in))),
        row(w, "Inbound success rate", "A", one(Exact(web_ok / web_in))),
        row(w, "Inbound latency", "A", one(web_q(0.5))),
        row(w, "Inbound latency", "B", one(web_q(0.95))),
        row(w, "Inbound latency", "C", one(web_q(0.99))),
        // weft's own histogram: buckets double from 0.1 ms; 510 ms is in (409.6, 819.2].
        row(
            w,
            "Inbound p99 latency by route",
            "A",
            one(Exact(409.6 + 409.6 * 0.99)),
        ),
        row(w, "Top callers", "A", callers),
        row(
            w,
            "Outbound request rate",
            "A",
            one(rate_range(c, c.from_web)),
        ),
        row(w, "Outbound success rate", "A", one(Exact(0.0))),
        row(
            w,
            "Top destinations",
            "A",
            vec![(
                vec![
                    ("dst_service", "web-canary".into()),
                    ("dst_namespace", NS.into()),
                ],
                rate_range(c, c.from_web),
            )],
        ),
        row(
            w,
            "Outbound p99 latency by backend",
            "A",
            vec![by("dst_service", "web-canary", canary_q(0.99))],
        ),
        // weft / TrafficSplit canary ($namespace = dash, $apex = web.dash)
        row(
            t,
            "Share of requests by backend",
            "A",
            vec![
                by("dst_service", "web-primary", Exact(c.primary / split)),
                by("dst_service", "web-canary", Exact(c.canary / split)),
            ],
        ),
        row(
            t,
            "Request rate by backend",
            "A",
            vec![
                by("dst_service", "web-primary", rate_range(c, c.primary)),
                by("dst_service", "web-canary", rate_range(c, c.canary)),
            ],
        ),
        row(
            t,
            "Success rate by backend",
            "A",
            vec![
                by("dst_service", "web-primary", Exact(1.0)),
                by("dst_service", "web-canary", Exact(0.0)),
            ],
        ),
        row(
            t,
            "p99 latency by backend",
            "A",
            vec![
                by("dst_service", "web-primary", web_q(0.99)),
                by("dst_service", "web-canary", canary_q(0.99)),
            ],
        ),
    ]
}

/// Query variables: (dashboard, variable) → a value its options must include.
fn variable_expectations() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("weft-mesh", "namespace", NS),
        ("weft-workload", "namespace", NS),
        ("weft-workload", "deployment", "web"),
        ("weft-trafficsplit", "namespace", NS),
        ("weft-trafficsplit", "apex", "web.dash"),
    ]
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// One panel query of a shipped dashboard.
#[derive(Debug)]
struct Query {
    dashboard: String,
    title: String,
    ref_id: String,
    expr: String,
}

/// Every dashboard (uid → JSON) under `charts/weft/dashboards/`.
fn dashboards() -> BTreeMap<String, Value> {
    let dir = repo().join("charts/weft/dashboards");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("charts/weft/dashboards") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read dashboard");
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let uid = json["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no uid", path.display()))
            .to_string();
        out.insert(uid, json);
    }
    out
}

fn collect_queries(uid: &str, panels: &Value, out: &mut Vec<Query>) {
    for p in panels.as_array().into_iter().flatten() {
        collect_queries(uid, &p["panels"], out);
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                dashboard: uid.to_string(),
                title: p["title"].as_str().unwrap_or_default().to_string(),
                ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                expr: t["expr"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
}

/// Fills the template variables; panics on one the test does not know.
fn substitute(expr: &str, window_s: u64) -> String {
    let filled = expr
        .replace("$__rate_interval", &format!("{window_s}s"))
        .replace("$namespace", NS)
        .replace("$deployment", "web")
        .replace("$apex", "web.dash");
    assert!(
        !filled.contains('$'),
        "a template variable the test does not fill: {expr}"
    );
    filled
}

/// `label_values(selector, label)` as PromQL: `group by (label) (selector)`.
fn label_values_query(q: &str) -> (String, String) {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {q}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values with no label: {q}"));
    let label = label.trim().to_string();
    (format!("group by ({label}) ({})", selector.trim()), label)
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

type AppBody = Full<Bytes>;

/// The web (`canary` false) or canary app.
async fn app(req: Request<Incoming>, canary: bool) -> Result<Response<AppBody>, Infallible> {
    let (delay, status) = if canary {
        (CANARY_DELAY_MS, StatusCode::INTERNAL_SERVER_ERROR)
    } else if req.uri().path() == "/fail" {
        (WEB_DELAY_MS, StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        (WEB_DELAY_MS, StatusCode::OK)
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let mut rsp = Response::new(Full::new(Bytes::from_static(b"dash\n")));
    *rsp.status_mut() = status;
    Ok(rsp)
}

async fn serve_app(addr: SocketAddr, canary: bool) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("bind app");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| app(req, canary));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn serve_echo(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("bind echo");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// A mesh TCP connection to db's echo as sa/client, proven relayed by an echo.
async fn tcp_connection(
    mesh: &LoopbackMesh,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = mesh
        .mesh_connect(DB, Some("client"), Some((TCP_PORT, 0)))
        .await
        .unwrap_or_else(|e| panic!("mesh connection to db: {e}\n{}", mesh.logs()));
    tls.write_all(b"ping\n").await.expect("write");
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut got))
        .await
        .expect("echo within 10 s")
        .expect("echo");
    assert_eq!(&got, b"ping\n");
    tls
}

/// A mesh connection as sa/intruder: denied by the TrafficTarget (closed, no echo).
async fn denied_connection(mesh: &LoopbackMesh) {
    if let Ok(mut tls) = mesh
        .mesh_connect(DB, Some("intruder"), Some((TCP_PORT, 0)))
        .await
    {
        let _ = tls.write_all(b"ping\n").await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await;
        assert!(got.is_empty(), "an unauthenticated connection was relayed");
    }
}

/// Failure accrual off: the canary answers only 500s and must still get its share (otherwise the
/// callers' proxies eject it and answer 503 themselves).
fn no_accrual(s: ServiceSpec) -> ServiceSpec {
    s.annotate("weft.io/failure-accrual-consecutive", "0")
}

/// Split requests from the client until both backends answered at least once; (200s, 500s).
/// Split warm-up requests for web-primary at least (see the module doc, "Rates"): with one, the
/// 60 of the window made Prometheus cut its extrapolation to the window's start for that series
/// alone (a CI rehearsal read a share of 0.7490 for 0.75).
const WARM_PRIMARY: u64 = 3;

async fn split_until_both(mesh: &LoopbackMesh) -> (u64, u64) {
    let apex = mesh.authority("web", APP_PORT);
    let (mut ok, mut fail) = (0, 0);
    for _ in 0..200 {
        let t = mesh.tally(CLIENT, &apex, "/ok", &[], 1).await;
        assert_eq!(t.errors, 0, "{t:?}");
        ok += t.status(200);
        fail += t.status(500);
        if ok >= WARM_PRIMARY && fail > 0 {
            return (ok, fail);
        }
    }
    panic!("the split never reached both backends: {ok} 200s, {fail} 500s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_the_right_value_from_a_real_prometheus() {
    let Some(prometheus) =
        binary_or_skip("every_dashboard_query_returns_the_right_value_from_a_real_prometheus")
    else {
        return;
    };
    // The queries first: a dashboard without queries, or a query without a row, fails fast.
    let boards = dashboards();
    assert_eq!(
        boards.keys().map(String::as_str).collect::<Vec<_>>(),
        ["weft-mesh", "weft-trafficsplit", "weft-workload"]
    );
    let mut queries = Vec::new();
    for (uid, board) in &boards {
        collect_queries(uid, &board["panels"], &mut queries);
    }
    let placeholder = Counts {
        ok: 1.0,
        fail: 1.0,
        primary: 1.0,
        canary: 1.0,
        from_web: 1.0,
        held: 1.0,
        denied: 1.0,
        window: 60.0,
    };
    let table = expectations(&placeholder, false);
    for q in &queries {
        assert!(
            table
                .iter()
                .any(|r| r.dashboard == q.dashboard && r.title == q.title && r.ref_id == q.ref_id),
            "dashboard {} panel {:?} query {} has no row in expectations(): add one",
            q.dashboard,
            q.title,
            q.ref_id
        );
        assert!(!q.expr.trim().is_empty(), "{q:?}: empty expr");
    }
    for r in &table {
        let n = queries
            .iter()
            .filter(|q| q.dashboard == r.dashboard && q.title == r.title && q.ref_id == r.ref_id)
            .count();
        assert_eq!(
            n, 1,
            "expectations() row {} {:?} {} matches {n} dashboard queries",
            r.dashboard, r.title, r.ref_id
        );
    }

    let pod = |name: &str, sa: &str, host: u8, workload: &str| {
        PodSpec::new(name, sa, host).workload(&format!("deployment/{workload}"))
    };
    let mut web = pod(WEB, "web", 20, "web")
        .label("app", "web")
        .label("track", "primary");
    web.ports.push(("http".into(), APP_PORT));
    let mut canary = pod(CANARY, "web", 21, "web-canary")
        .label("app", "web")
        .label("track", "canary");
    canary.ports.push(("http".into(), APP_PORT));
    let mut db = pod(DB, "db", 30, "db").label("app", "db");
    db.ports.push(("tcp".into(), TCP_PORT));
    let mut spec = MeshSpec::new(NS)
        .pod(pod(CLIENT, "client", 10, "client"))
        .pod(web)
        .pod(canary)
        .pod(db)
        .service(no_accrual(ServiceSpec::new("web", APP_PORT)).select("app", "web"))
        .service(
            no_accrual(ServiceSpec::new("web-primary", APP_PORT))
                .select("app", "web")
                .select("track", "primary"),
        )
        .service(
            no_accrual(ServiceSpec::new("web-canary", APP_PORT))
                .select("app", "web")
                .select("track", "canary"),
        )
        .file(
            "split.yaml",
            &format!(
                "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: web-split\n  namespace: {NS}\n\
                 spec:\n  service: web\n  backends:\n  - service: web-primary\n    weight: 75\n  - service: web-canary\n    weight: 25\n"
            ),
        )
        .file(
            "db-policy.yaml",
            &format!(
                "apiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: {{name: db, namespace: {NS}}}\n\
                 spec:\n  matches:\n    ports: [{TCP_PORT}]\n---\n\
                 apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: client-to-db, namespace: {NS}}}\n\
                 spec:\n  destination: {{kind: ServiceAccount, name: db, namespace: {NS}}}\n\
                 \x20 sources: [{{kind: ServiceAccount, name: client, namespace: {NS}}}]\n\
                 \x20 rules: [{{kind: TCPRoute, name: db}}]\n"
            ),
        );
    spec.default_policy = "mesh".into();
    let mesh = LoopbackMesh::start(spec).await;
    let apps = [
        serve_app(SocketAddr::new(mesh.ip(20).into(), APP_PORT), false).await,
        serve_app(SocketAddr::new(mesh.ip(21).into(), APP_PORT), true).await,
        serve_echo(SocketAddr::new(mesh.ip(30).into(), TCP_PORT)).await,
    ];

    // Prometheus, with the target labels a Kubernetes scrape job gives (docs/dashboards.md).
    let targets: Vec<Target> = [(CLIENT, 10), (WEB, 20), (CANARY, 21), (DB, 30)]
        .iter()
        .map(|(name, host)| Target {
            addr: SocketAddr::new(mesh.ip(*host).into(), PROXY_ADMIN_PORT),
            labels: vec![
                ("namespace".into(), NS.into()),
                ("pod".into(), (*name).into()),
            ],
        })
        .collect();
    let prom = Prometheus::start(&prometheus, &targets).await;
    prom.wait_value("count(up == 1)", targets.len() as f64)
        .await;

    let direct = mesh.authority("web-primary", APP_PORT);
    let to_canary = mesh.authority("web-canary", APP_PORT);
    // Warm-up: every series the dashboards read exists, and is scraped, before the window.
    let t = mesh.tally(CLIENT, &direct, "/ok", &[], 1).await;
    assert_eq!(t.status(200), 1, "{t:?}\n{}", mesh.logs());
    let t = mesh.tally(CLIENT, &direct, "/fail", &[], 1).await;
    assert_eq!(t.status(500), 1, "{t:?}");
    let (warm_primary, warm_canary) = split_until_both(&mesh).await;
    let t = mesh.tally(WEB, &to_canary, "/x", &[], 1).await;
    assert_eq!(t.status(500), 1, "{t:?}");
    drop(tcp_connection(&mesh).await);
    denied_connection(&mesh).await;
    let checks = |primary: u64, canary: u64, from_web: u64, direct: u64, denied: u64, tcp: u64| {
        vec![
            format!("sum(request_total{{direction=\"inbound\",pod=\"{WEB}\"}})"),
            format!("sum(request_total{{direction=\"inbound\",pod=\"{CANARY}\"}})"),
            format!("sum(request_total{{direction=\"outbound\",pod=\"{CLIENT}\"}})"),
            format!("sum(request_total{{direction=\"outbound\",pod=\"{WEB}\"}})"),
            format!("sum(weft_proxy_authorizations_total{{decision=\"deny\",pod=\"{DB}\"}})"),
            format!("sum(weft_proxy_tcp_connections_total{{pod=\"{DB}\"}})"),
        ]
        .into_iter()
        .zip([
            direct + primary,
            canary + from_web,
            direct + primary + canary,
            from_web,
            denied,
            tcp,
        ])
        .collect::<Vec<_>>()
    };
    for (q, want) in checks(warm_primary, warm_canary, 1, 2, 1, 1) {
        prom.wait_value(&q, want as f64).await;
    }
    let t0 = now_s();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The measured traffic.
    let ok = mesh.tally(CLIENT, &direct, "/ok", &[], DIRECT_OK).await;
    assert_eq!(ok.status(200), DIRECT_OK as u64, "{ok:?}");
    let fail = mesh.tally(CLIENT, &direct, "/fail", &[], DIRECT_FAIL).await;
    assert_eq!(fail.status(500), DIRECT_FAIL as u64, "{fail:?}");
    let split = mesh
        .tally(CLIENT, &mesh.authority("web", APP_PORT), "/ok", &[], SPLIT)
        .await;
    let (primary, canary) = (split.status(200), split.status(500));
    assert_eq!(primary + canary, SPLIT as u64, "{split:?}");
    let from_web = mesh.tally(WEB, &to_canary, "/x", &[], FROM_WEB).await;
    assert_eq!(from_web.status(500), FROM_WEB as u64, "{from_web:?}");
    let mut held = Vec::new();
    for _ in 0..HELD {
        held.push(tcp_connection(&mesh).await);
    }
    for _ in 0..DENIED {
        denied_connection(&mesh).await;
    }
    let direct_total = (DIRECT_OK + DIRECT_FAIL) as u64;
    for (q, want) in checks(
        warm_primary + primary,
        warm_canary + canary,
        1 + FROM_WEB as u64,
        2 + direct_total,
        1 + DENIED as u64,
        1 + HELD as u64,
    ) {
        prom.wait_value(&q, want as f64).await;
    }
    prom.wait_value(
        &format!("sum(weft_proxy_tcp_open_connections{{pod=\"{DB}\"}})"),
        HELD as f64,
    )
    .await;
    // The last scrape with the final values is at or before now: end the window a second later.
    let settle = Instant::now() + Duration::from_millis(1500);
    let min_end = t0 + MIN_WINDOW_S as f64;
    while Instant::now() < settle || now_s() < min_end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let window = (now_s() - t0).floor() as u64;
    let at = t0 + window as f64;

    let client_id_exported = !prom
        .query_at("request_total{direction=\"inbound\",tls!=\"\"}", at)
        .await
        .is_empty();
    if !client_id_exported {
        eprintln!(
            "NOTE: inbound request_total has no `tls`/`client_id` labels yet (labels helper): \
             \"Top callers\" checked as one series without client_id"
        );
    }
    let counts = Counts {
        ok: DIRECT_OK as f64,
        fail: DIRECT_FAIL as f64,
        primary: primary as f64,
        canary: canary as f64,
        from_web: FROM_WEB as f64,
        held: HELD as f64,
        denied: DENIED as f64,
        window: window as f64,
    };
    let table = expectations(&counts, client_id_exported);
    let mut failures = Vec::new();
    for q in &queries {
        let r = table
            .iter()
            .find(|r| r.dashboard == q.dashboard && r.title == q.title && r.ref_id == q.ref_id)
            .expect("checked above");
        let promql = substitute(&q.expr, window);
        let result = prom.query_at(&promql, at).await;
        let what = format!("{} / {:?} / {}", q.dashboard, q.title, q.ref_id);
        if result.len() != r.series.len() {
            failures.push(format!(
                "{what}: {} series, want {}: {result:?}\n  {promql}",
                result.len(),
                r.series.len()
            ));
            continue;
        }
        for (labels, expect) in &r.series {
            let matching: Vec<&Value> = result
                .iter()
                .filter(|s| {
                    labels
                        .iter()
                        .all(|(k, v)| s["metric"][*k].as_str().unwrap_or_default() == v)
                })
                .collect();
            let [sample] = matching.as_slice() else {
                failures.push(format!(
                    "{what}: {} series match {labels:?}: {result:?}\n  {promql}",
                    matching.len()
                ));
                continue;
            };
            let value = sample_value(sample).unwrap_or(f64::NAN);
            if !expect.holds(value) {
                failures.push(format!(
                    "{what} {labels:?}: {value}, want {expect:?}\n  {promql}"
                ));
            } else {
                eprintln!("ok {what} {labels:?}: {value} ({expect:?})");
            }
        }
    }
    // Query variables: each one's options include this mesh's value.
    for (uid, name, want) in variable_expectations() {
        let var = boards[uid]["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{uid}: no variable {name}"));
        let (promql, label) = label_values_query(&substitute(
            var["query"]["query"].as_str().unwrap_or_default(),
            window,
        ));
        let values: Vec<String> = prom
            .query_at(&promql, at)
            .await
            .iter()
            .filter_map(|s| s["metric"][label.as_str()].as_str().map(str::to_string))
            .collect();
        if !values.iter().any(|v| v == want) {
            failures.push(format!(
                "{uid} variable {name}: {values:?} lacks {want}\n  {promql}"
            ));
        }
    }
    let query_vars = boards
        .values()
        .flat_map(|b| {
            b["templating"]["list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|v| v["type"] == "query")
        .count();
    assert_eq!(
        query_vars,
        variable_expectations().len(),
        "every query variable needs a row in variable_expectations()"
    );
    assert!(
        failures.is_empty(),
        "window {window} s, counts {counts:?}:\n{}\nprometheus log:\n{}",
        failures.join("\n"),
        prom.log()
    );
    drop(held);
    for a in apps {
        a.abort();
    }
}

/// The committed dashboards are what `scripts/gen-dashboards.py` writes.
#[test]
fn dashboards_match_their_generator() {
    let out = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new("python3")
        .arg(repo().join("scripts/gen-dashboards.py"))
        .arg(out.path())
        .status();
    let Ok(status) = status else {
        assert!(std::env::var_os("CI").is_none(), "python3 is needed");
        eprintln!("SKIPPED dashboards_match_their_generator: no python3");
        return;
    };
    assert!(status.success(), "gen-dashboards.py failed");
    for name in ["weft-mesh", "weft-workload", "weft-trafficsplit"] {
        let fresh =
            std::fs::read_to_string(out.path().join(format!("{name}.json"))).expect("generated");
        let committed =
            std::fs::read_to_string(repo().join(format!("charts/weft/dashboards/{name}.json")))
                .expect("committed");
        assert!(
            fresh == committed,
            "charts/weft/dashboards/{name}.json differs from scripts/gen-dashboards.py's output: run it"
        );
    }
}

/// The chart ships the three files, unchanged, in a ConfigMap the Grafana sidecar loads
/// (`grafana_dashboard: "1"`), and `dashboards.enabled=false` leaves it out.
#[test]
fn chart_ships_the_dashboards_in_a_grafana_sidecar_configmap() {
    let render = |extra: &[&str]| -> Option<Vec<Value>> {
        let out = std::process::Command::new("python3")
            .arg(repo().join("e2e/scripts/helm.py"))
            .args(["template", "--namespace", "mesh"])
            .args(extra)
            .output()
            .ok()?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                std::env::var_os("CI").is_none(),
                "helm.py template failed: {err}"
            );
            eprintln!("SKIPPED chart_ships_the_dashboards_in_a_grafana_sidecar_configmap: {err}");
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Some(
            serde_yaml::Deserializer::from_str(&text)
                .filter_map(|d| {
                    use serde::Deserialize;
                    Value::deserialize(d).ok()
                })
                .filter(|v| !v.is_null())
                .collect(),
        )
    };
    let Some(docs) = render(&[]) else { return };
    let cms: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    let [cm] = cms.as_slice() else {
        panic!(
            "want one ConfigMap labelled grafana_dashboard: \"1\", got {}",
            cms.len()
        );
    };
    assert_eq!(cm["metadata"]["namespace"], "mesh");
    let data = cm["data"].as_object().expect("data");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "weft-mesh.json",
            "weft-trafficsplit.json",
            "weft-workload.json"
        ]
    );
    for (key, text) in data {
        let shipped: Value = serde_json::from_str(text.as_str().expect("string"))
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let file: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("charts/weft/dashboards").join(key))
                .expect("dashboard file"),
        )
        .expect("dashboard JSON");
        assert_eq!(shipped, file, "{key}");
    }
    let Some(off) = render(&["--set", "dashboards.enabled=false"]) else {
        return;
    };
    assert!(
        !off.iter().any(
            |d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1"
        ),
        "dashboards.enabled=false still renders the dashboards"
    );
}

/// What Grafana needs to load the files as provisioned or imported dashboards: a unique uid and
/// title, a schemaVersion, the `DS_PROMETHEUS` datasource variable used by every panel, target
/// and query variable, unique panel ids, and panels inside the 24-column grid without overlap.
#[test]
fn dashboards_are_well_formed_grafana_models() {
    let boards = dashboards();
    let mut titles = std::collections::BTreeSet::new();
    for (uid, b) in &boards {
        assert!(
            titles.insert(b["title"].as_str().unwrap_or_default().to_string()),
            "{uid}: duplicate title"
        );
        assert!(
            b["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{uid}: schemaVersion"
        );
        let vars = b["templating"]["list"].as_array().expect("templating.list");
        let ds = vars
            .iter()
            .find(|v| v["name"] == "DS_PROMETHEUS")
            .unwrap_or_else(|| panic!("{uid}: no DS_PROMETHEUS variable"));
        assert_eq!(ds["type"], "datasource", "{uid}");
        assert_eq!(ds["query"], "prometheus", "{uid}");
        let uses_ds = |v: &Value| v["uid"] == "${DS_PROMETHEUS}" && v["type"] == "prometheus";
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert!(uses_ds(&v["datasource"]), "{uid} variable {}", v["name"]);
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut cells = std::collections::BTreeSet::new();
        for p in b["panels"].as_array().expect("panels") {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{uid}: a panel without a title");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{uid} {title}: duplicate id"
            );
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().expect("x"),
                g["y"].as_u64().expect("y"),
                g["w"].as_u64().expect("w"),
                g["h"].as_u64().expect("h"),
            );
            assert!(w > 0 && h > 0 && x + w <= 24, "{uid} {title}: gridPos {g}");
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(
                        cells.insert((cx, cy)),
                        "{uid} {title}: overlaps another panel"
                    );
                }
            }
            if p["type"] == "row" {
                continue;
            }
            assert!(uses_ds(&p["datasource"]), "{uid} {title}: datasource");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{uid} {title}: no query");
            let mut refs = std::collections::BTreeSet::new();
            for t in targets {
                assert!(
                    uses_ds(&t["datasource"]),
                    "{uid} {title}: target datasource"
                );
                assert!(
                    refs.insert(t["refId"].as_str().expect("refId")),
                    "{uid} {title}: refId"
                );
            }
        }
    }
}
