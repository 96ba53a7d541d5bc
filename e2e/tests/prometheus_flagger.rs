//! #18: a real Prometheus (Debian's `prometheus`) scrapes the proxies of a loopback mesh, and
//! Flagger's `linkerd` provider queries — `request-success-rate` and `request-duration`, copied
//! from fluxcd/flagger `pkg/metrics/observers/linkerd.go` with the template variables filled in —
//! return the right values through Prometheus' HTTP API.
//!
//! The mesh: `loadtester-0` calls the `podinfo` service (pod `podinfo-0`, workload
//! `deployment/podinfo` given as `WEFT_PROXY_WORKLOAD`) over HTTP/2. The app (served by this
//! test on the pod's address) answers by path: `/ok` 200, `/notfound` 404 (a success: the
//! client's mistake), `/fail` 500, `/grpc-ok` gRPC with `grpc-status: 0` in the trailers,
//! `/grpc-err` HTTP 200 with `grpc-status: 13` in the trailers (a failure). A second workload,
//! `podinfo-primary` (its pod named as a Deployment's pods are, no env: the label comes from the
//! name), answers everything 500: the queries must not count it.
//!
//! Exactness: Flagger's queries are ratios of `rate()`s over `{{ interval }}`, which the test
//! sets to a window that holds exactly its measured traffic ([`EACH`] requests of each kind): the
//! window starts (`t0`) after a scrape in which all five response series exist with their warm-up
//! value ([`WARM`] requests of each kind), the measured traffic waits for a scrape after `t0`,
//! and the window ends after the scrape with the final values. So within the window every series
//! is sampled at the same instants (one target, all present) and rises by its measured count, and
//! the ratios are exact (success rate 3/5), provided Prometheus extrapolates every series to the
//! window's start alike: it stops a counter's extrapolation where the counter would reach zero
//! (`sampled span × first value / increase` before its first sample), a point of each series' own,
//! so each series' warm-up value must exceed its increase in the window divided by the window in
//! scrapes (20 in at least [`MIN_WINDOW_S`] one-second scrapes here: 5 warm-up requests of each
//! kind). With one warm-up request of each kind and a 5 m window holding every sample, a CI
//! rehearsal read a success rate of 58.57 for 60: the warm-up had straddled a scrape, so one
//! series began a second before the others, and each was cut at its zero point, 1/20 of its own
//! span before its first sample.
//!
//! Every request waits [`DELAY_MS`] in the app, inside the (500, 1000] ms bucket, so the p99 of
//! the histogram is 500 + 500 × 0.99 = 995 ms whatever the scheduling noise below 400 ms.
//!
//! Build first: `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`. Without a
//! `prometheus` binary the test is skipped (loudly), unless `CI` is set: then it fails.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use weft_e2e::loopback::{LoopbackMesh, MeshSpec, PodSpec, ServiceSpec, PROXY_ADMIN_PORT};
use weft_e2e::prometheus::{binary_or_skip, sample_value, Prometheus, Target};

const NS: &str = "flagger";
const APP_PORT: u16 = 9898;
const DELAY_MS: u64 = 600;
/// Requests of each kind after the warm-up, in the window.
const EACH: usize = 20;
/// Warm-up requests of each kind, before the window: more than [`EACH`] / [`MIN_WINDOW_S`] = 2
/// (the window in one-second scrapes), with room for the window's first and last scrape lying up
/// to a second inside it, so that Prometheus never cuts a series' extrapolation to the window's
/// start at its zero point (see the module doc, "Exactness").
const WARM: usize = 5;
/// The shortest window (`{{ interval }}`), seconds.
const MIN_WINDOW_S: u64 = 10;
const KINDS: [&str; 5] = ["/ok", "/notfound", "/grpc-ok", "/fail", "/grpc-err"];

/// Flagger's linkerd `request-success-rate`, as Flagger writes it.
const SUCCESS_RATE: &str = r#"
	sum(
		rate(
			response_total{
				namespace="{{ namespace }}",
				deployment=~"{{ target }}",
				classification!="failure",
				direction="inbound"
			}[{{ interval }}]
		)
	) 
	/ 
	sum(
		rate(
			response_total{
				namespace="{{ namespace }}",
				deployment=~"{{ target }}",
				direction="inbound"
			}[{{ interval }}]
		)
	) 
	* 100"#;

/// Flagger's linkerd `request-duration`, as Flagger writes it.
const DURATION: &str = r#"
	histogram_quantile(
		0.99,
		sum(
			rate(
				response_latency_ms_bucket{
					namespace="{{ namespace }}",
					deployment=~"{{ target }}",
					direction="inbound"
				}[{{ interval }}]
			)
		) by (le)
	)"#;

/// Fills Flagger's template variables (its `RenderQuery`); `interval` is the window, seconds.
fn render(template: &str, target: &str, interval: u64) -> String {
    template
        .replace("{{ namespace }}", NS)
        .replace("{{ target }}", target)
        .replace("{{ interval }}", &format!("{interval}s"))
}

/// The single value of `q` evaluated at `at` (NaN when empty).
async fn value_at(prom: &Prometheus, q: &str, at: f64) -> f64 {
    let result = prom.query_at(q, at).await;
    result.first().and_then(sample_value).unwrap_or(f64::NAN)
}

/// Unix seconds, to the millisecond (Prometheus' timestamps).
fn now_s() -> f64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    ms as f64 / 1000.0
}

type AppBody = BoxBody<Bytes, Infallible>;

/// The app: answers by path after `DELAY_MS` (see the module doc).
async fn app(req: Request<Incoming>, fail_all: bool) -> Result<Response<AppBody>, Infallible> {
    tokio::time::sleep(Duration::from_millis(DELAY_MS)).await;
    let grpc = |code: &'static str| {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(code));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut rsp = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        rsp
    };
    let plain = |status: StatusCode| {
        let mut rsp = Response::new(Full::new(Bytes::from_static(b"podinfo\n")).boxed());
        *rsp.status_mut() = status;
        rsp
    };
    if fail_all {
        return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR));
    }
    Ok(match req.uri().path() {
        "/ok" => plain(StatusCode::OK),
        "/notfound" => plain(StatusCode::NOT_FOUND),
        "/fail" => plain(StatusCode::INTERNAL_SERVER_ERROR),
        "/grpc-ok" => grpc("0"),
        "/grpc-err" => grpc("13"),
        _ => plain(StatusCode::BAD_REQUEST),
    })
}

/// Serves [`app`] over HTTP/2 (prior knowledge) on `addr` until the task is aborted.
async fn serve_app(addr: SocketAddr, fail_all: bool) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("bind app");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| app(req, fail_all));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// What a client saw: the status and the `grpc-status` trailer.
async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, Option<String>) {
    let mut req = Request::builder()
        .uri(format!(
            "http://podinfo.{NS}.svc.cluster.local:{APP_PORT}{path}"
        ))
        .body(Empty::new())
        .expect("request");
    if path.starts_with("/grpc") {
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        req.headers_mut()
            .insert("te", HeaderValue::from_static("trailers"));
    }
    let rsp = sender.send_request(req).await.expect("response");
    let status = rsp.status().as_u16();
    let collected = rsp.into_body().collect().await.expect("body");
    let grpc = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, grpc)
}

/// `count` requests of every kind, all at once on one HTTP/2 connection to the loadtester's
/// outbound listener; asserts what the client saw.
async fn traffic(outbound: SocketAddr, count: usize) {
    let stream = TcpStream::connect(outbound).await.expect("outbound");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        for kind in KINDS {
            let mut sender = sender.clone();
            calls.spawn(async move { (kind, call(&mut sender, kind).await) });
        }
    }
    while let Some(done) = calls.join_next().await {
        let (kind, seen) = done.expect("call task");
        let want = match kind {
            "/ok" => (200, None),
            "/notfound" => (404, None),
            "/fail" => (500, None),
            "/grpc-ok" => (200, Some("0".to_string())),
            _ => (200, Some("13".to_string())),
        };
        assert_eq!(seen, want, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_linkerd_queries_return_the_right_values_from_a_real_prometheus() {
    let Some(prometheus) =
        binary_or_skip("flagger_linkerd_queries_return_the_right_values_from_a_real_prometheus")
    else {
        return;
    };
    let primary_pod = "podinfo-primary-5d8f7c9b4-x2k9p";
    let mut podinfo = PodSpec::new("podinfo-0", "podinfo", 20)
        .label("app", "podinfo")
        .workload("deployment/podinfo");
    podinfo.ports.push(("http2".into(), APP_PORT));
    let mut primary = PodSpec::new(primary_pod, "podinfo", 21).label("app", "podinfo-primary");
    primary.ports.push(("http2".into(), APP_PORT));
    let mesh = LoopbackMesh::start(
        MeshSpec::new(NS)
            .pod(PodSpec::new("loadtester-0", "loadtester", 10))
            .pod(podinfo)
            .pod(primary)
            .service(
                ServiceSpec::new("podinfo", APP_PORT)
                    .select("app", "podinfo")
                    .port_name("http2"),
            )
            .service(
                ServiceSpec::new("podinfo-primary", APP_PORT)
                    .select("app", "podinfo-primary")
                    .port_name("http2"),
            ),
    )
    .await;
    let app = serve_app(SocketAddr::new(mesh.ip(20).into(), APP_PORT), false).await;
    let primary_app = serve_app(SocketAddr::new(mesh.ip(21).into(), APP_PORT), true).await;

    let targets: Vec<Target> = [10, 20, 21]
        .iter()
        .map(|h| SocketAddr::new(mesh.ip(*h).into(), PROXY_ADMIN_PORT).into())
        .collect();
    let prom = Prometheus::start(&prometheus, &targets).await;
    prom.wait_value("count(up == 1)", 3.0).await;

    // Traffic to the primary too (its 500s must stay out of the podinfo queries).
    let outbound = mesh.pod("loadtester-0").outbound();
    {
        let stream = TcpStream::connect(outbound).await.expect("outbound");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        for _ in 0..5 {
            let req = Request::builder()
                .uri(format!(
                    "http://podinfo-primary.{NS}.svc.cluster.local:{APP_PORT}/ok"
                ))
                .body(Empty::<Bytes>::new())
                .expect("request");
            let rsp = sender.send_request(req).await.expect("response");
            assert_eq!(rsp.status(), 500);
            let _ = rsp.into_body().collect().await;
        }
    }

    let inbound_podinfo = format!(
        "response_total{{namespace=\"{NS}\",deployment=\"podinfo\",direction=\"inbound\"}}"
    );
    // Warm-up: every series exists, and is scraped with its warm-up value, before the window.
    traffic(outbound, WARM).await;
    prom.wait_value(&format!("count({inbound_podinfo} == {WARM})"), 5.0)
        .await;
    let t0 = now_s();
    // The window's first scrape, still with the warm-up values, before the measured traffic.
    prom.wait_value(
        &format!("count(timestamp({inbound_podinfo}) > {t0:.3})"),
        5.0,
    )
    .await;
    // The measured traffic.
    traffic(outbound, EACH).await;
    let total = (KINDS.len() * (WARM + EACH)) as f64;
    prom.wait_value(&format!("sum({inbound_podinfo})"), total)
        .await;
    // The window ends at or after the scrape with the final values, at least MIN_WINDOW_S long.
    let last_scrape = prom
        .value(&format!("max(timestamp({inbound_podinfo}))"))
        .await;
    let window = ((last_scrape - t0).ceil() as u64).max(MIN_WINDOW_S);
    let at = t0 + window as f64;
    // Each kind is one series with its own classification.
    for (kind, classification, status, grpc) in [
        ("/ok", "success", "200", None),
        ("/notfound", "success", "404", None),
        ("/fail", "failure", "500", None),
        ("/grpc-ok", "success", "200", Some("0")),
        ("/grpc-err", "failure", "200", Some("13")),
    ] {
        let grpc_match = grpc.map_or("grpc_status=\"\"".to_string(), |g| {
            format!("grpc_status=\"{g}\"")
        });
        let q = format!(
            "sum(response_total{{namespace=\"{NS}\",deployment=\"podinfo\",direction=\"inbound\",classification=\"{classification}\",status_code=\"{status}\",{grpc_match}}})"
        );
        assert_eq!(prom.value(&q).await, (WARM + EACH) as f64, "{kind}: {q}");
    }
    // The primary's 500s are labelled with its own deployment (from its pod name). Other proxies
    // are other scrape targets, scraped at their own moments: wait for their final values.
    prom.wait_value(
        &format!(
            "sum(response_total{{namespace=\"{NS}\",deployment=\"podinfo-primary\",pod=\"{primary_pod}\",direction=\"inbound\",classification=\"failure\"}})"
        ),
        5.0,
    )
    .await;
    // Outbound, at the loadtester: the destination service and namespace.
    prom.wait_value(
        &format!(
            "sum(request_total{{namespace=\"{NS}\",pod=\"loadtester-0\",direction=\"outbound\",dst_namespace=\"{NS}\",dst_service=\"podinfo\"}})"
        ),
        total,
    )
    .await;

    // The window's end has passed (queries at `at` see no later scrape).
    while now_s() < at + 0.1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Flagger's queries, as Flagger renders them for the canary target `podinfo`, over the window.
    let success_rate = value_at(&prom, &render(SUCCESS_RATE, "podinfo", window), at).await;
    assert!(
        (success_rate - 60.0).abs() < 1e-9,
        "request-success-rate = {success_rate}, want 60 (3 of 5 kinds succeed, {EACH} of each in \
         the window of {window} s from {t0:.3}); raw: {:?}",
        prom.query_at(&format!("{inbound_podinfo}[{window}s]"), at)
            .await
    );
    let duration = value_at(&prom, &render(DURATION, "podinfo", window), at).await;
    assert!(
        (duration - 995.0).abs() < 1e-9,
        "request-duration = {duration}, want 995 (every request in the (500, 1000] ms bucket); \
         buckets in the window of {window} s from {t0:.3}: {:?}",
        prom.query_at(
            &format!(
                "response_latency_ms_bucket{{namespace=\"{NS}\",deployment=\"podinfo\",direction=\"inbound\"}}[{window}s]"
            ),
            at
        )
        .await
    );
    // The same query for the primary, whose every response failed: no success series at all,
    // so the ratio is empty (Flagger reports "no values found", as it does with Linkerd).
    let primary_rate = prom
        .query_at(&render(SUCCESS_RATE, "podinfo-primary", window), at)
        .await;
    assert!(primary_rate.is_empty(), "{primary_rate:?}");

    app.abort();
    primary_app.abort();
}
