//! Issue #17, proxy side: the real `weft-proxy` binary acts on the Gateway API route contract
//! (query-parameter matches, header modifiers at route and backend level, redirects, URL
//! rewrites, direct 404s, unavailable backends answered 500, route timeouts), configured by a
//! fake operator on 127.0.0.1 and sending to real HTTP backends on loopback that echo what they
//! received. Every assertion is a status, a header, a count or a share: no timing asserts.

mod control_support;
mod process_support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use control_support::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use process_support::*;
use tokio::net::TcpListener;
use weft_proxy_api::v1;
use weft_proxy_api::v1::path_modifier::Kind as PathKind;
use weft_proxy_api::v1::route_filter::Kind as FilterKind;

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e:?}"))
}

/// What an echo backend saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    /// Path and query.
    target: String,
    host: String,
    headers: BTreeMap<String, Vec<String>>,
}

/// A backend that records every request and answers `200` with `x-backend: <name>` (and a
/// response header `x-drop-me` that response filters may remove). A path starting with
/// `/slow` is answered after 1.5 s; the first request to `/flaky` gets `503`.
#[derive(Clone)]
struct Echo {
    name: &'static str,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    flaky: Arc<AtomicUsize>,
}

impl Echo {
    async fn start(name: &'static str) -> Echo {
        let listener = ok(TcpListener::bind("127.0.0.1:0").await);
        let echo = Echo {
            name,
            addr: ok(listener.local_addr()),
            seen: Arc::default(),
            flaky: Arc::default(),
        };
        let me = echo.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        echo
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in req.headers() {
            headers
                .entry(k.as_str().to_string())
                .or_default()
                .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        let target = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |pq| pq.as_str().to_string());
        let host = headers
            .get("host")
            .and_then(|h| h.first().cloned())
            .unwrap_or_default();
        ok(self.seen.lock()).push(Seen {
            target: target.clone(),
            host,
            headers,
        });
        let mut status = StatusCode::OK;
        if target.starts_with("/slow") {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        if target.starts_with("/flaky") && self.flaky.fetch_add(1, Ordering::SeqCst) == 0 {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
        ok(Response::builder()
            .status(status)
            .header("x-backend", self.name)
            .header("x-drop-me", "1")
            .body(Full::new(Bytes::from(self.name))))
    }

    fn seen(&self) -> Vec<Seen> {
        ok(self.seen.lock()).clone()
    }

    fn endpoints(&self) -> v1::Resource {
        endpoints("demo", self.name, 80, &[self.addr.port()])
    }
}

type TestClient = Client<HttpConnector, Empty<Bytes>>;

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// `GET <target>` through the proxy's outbound listener with `Host: echo.demo` and `headers`.
async fn get(c: &TestClient, proxy: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::get(format!("http://{proxy}{target}")).header("host", "echo.demo");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let rsp = ok(ok(tokio::time::timeout(
        Duration::from_secs(30),
        c.request(ok(b.body(Empty::new()))),
    )
    .await));
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let body =
        String::from_utf8_lossy(&ok(rsp.into_body().collect().await).to_bytes()).into_owned();
    Answer {
        status,
        headers,
        body,
    }
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

// ---------------------------------------------------------------------------------------------
// Contract builders.

fn backend(echo: &Echo, weight: u64) -> v1::WeightedBackend {
    v1::WeightedBackend {
        service: echo.name.into(),
        weight,
        endpoint_set: format!("endpoints:{}.demo:80", echo.name),
        ..Default::default()
    }
}

fn prefix(name: &str, path: &str) -> v1::HttpMatch {
    v1::HttpMatch {
        name: name.into(),
        // The compiler's PathPrefix: the prefix, then the end or a `/`.
        path_regex: format!("{}(/.*)?$", regex_escape(path.trim_end_matches('/'))),
        ..Default::default()
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '-' || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

fn route(name: &str, matches: Vec<v1::HttpMatch>, backends: Vec<v1::WeightedBackend>) -> v1::Route {
    v1::Route {
        name: name.into(),
        matches,
        backends,
        ..Default::default()
    }
}

fn header_values(pairs: &[(&str, &str)]) -> Vec<v1::HeaderValue> {
    pairs
        .iter()
        .map(|(n, v)| v1::HeaderValue {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect()
}

fn modifier(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> v1::HeaderModifier {
    v1::HeaderModifier {
        set: header_values(set),
        add: header_values(add),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    }
}

fn filter(kind: FilterKind) -> v1::RouteFilter {
    v1::RouteFilter { kind: Some(kind) }
}

fn full_path(p: &str) -> v1::PathModifier {
    v1::PathModifier {
        kind: Some(PathKind::ReplaceFullPath(p.into())),
        matched_prefix: String::new(),
    }
}

fn prefix_path(matched: &str, replacement: &str) -> v1::PathModifier {
    v1::PathModifier {
        kind: Some(PathKind::ReplacePrefixMatch(replacement.into())),
        matched_prefix: matched.into(),
    }
}

/// `outbound:echo.demo` on port 80 with `routes` and `policy`.
fn service(routes: Vec<v1::Route>, policy: Option<v1::TrafficPolicy>) -> v1::Resource {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&format!("{routes:?}{policy:?}"), &mut hasher);
    v1::Resource {
        name: "outbound:echo.demo".into(),
        version: format!("{:x}", std::hash::Hasher::finish(&hasher)),
        kind: Some(v1::resource::Kind::Outbound(v1::OutboundService {
            namespace: "demo".into(),
            name: "echo".into(),
            cluster_ips: vec![],
            ports: vec![v1::OutboundPort {
                port: 80,
                protocol: v1::Protocol::Http1 as i32,
                routes,
            }],
            policy,
        })),
    }
}

/// A fake operator serving `resources` (plus the inbound policy) and a ready proxy.
async fn start(resources: Vec<v1::Resource>) -> (FakeOperator, ProxyProcess) {
    let op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut all = vec![inbound("spiffe://cluster.local/ns/demo/sa/web")];
    all.extend(resources);
    op.reply_on_subscribe(full_state("n1", "v1", all));
    let proxy = ProxyProcess::start(&op.uri()).await;
    proxy.admin_until("/ready", |s, _| s == 200).await;
    (op, proxy)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_reach_the_backend_and_the_client() {
    let (v1_, v2) = (Echo::start("echo-v1").await, Echo::start("echo-v2").await);
    let mut b2 = backend(&v2, 1);
    b2.filters = vec![
        filter(FilterKind::RequestHeaderModifier(modifier(
            &[("x-share", "v2")],
            &[],
            &[],
        ))),
        filter(FilterKind::ResponseHeaderModifier(modifier(
            &[("x-order", "backend")],
            &[],
            &[],
        ))),
    ];
    let mut r = route(
        "httproute:demo/headers/0",
        vec![],
        vec![backend(&v1_, 1), b2],
    );
    r.filters = vec![
        filter(FilterKind::RequestHeaderModifier(modifier(
            &[("x-set", "set-value")],
            &[("x-add", "added")],
            &["x-remove"],
        ))),
        filter(FilterKind::ResponseHeaderModifier(modifier(
            &[("x-order", "route"), ("x-route", "yes")],
            &[("x-added-rsp", "1")],
            &["x-drop-me"],
        ))),
    ];
    let (_op, proxy) = start(vec![
        service(vec![r], None),
        v1_.endpoints(),
        v2.endpoints(),
    ])
    .await;
    let c = client();
    let n = 200;
    let mut served = BTreeMap::<String, usize>::new();
    for _ in 0..n {
        let a = get(
            &c,
            proxy.outbound,
            "/h",
            &[
                ("x-set", "client-1"),
                ("x-set", "client-2"),
                ("x-add", "client"),
                ("x-remove", "secret"),
            ],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        // Response: the backend's edits, then the route's (the route's `set` wins).
        assert_eq!(a.header("x-order"), "route");
        assert_eq!(a.header("x-route"), "yes");
        assert_eq!(a.header("x-added-rsp"), "1");
        assert!(a.headers.get("x-drop-me").is_none());
        assert_eq!(a.header("x-backend"), a.body);
        *served.entry(a.body).or_default() += 1;
    }
    // Both shares served (each ~100 of 200; 30 is far outside any plausible deviation).
    for name in ["echo-v1", "echo-v2"] {
        assert!(served.get(name).copied().unwrap_or(0) > 30, "{served:?}");
    }
    for (echo, share) in [(&v1_, false), (&v2, true)] {
        let seen = echo.seen();
        assert!(!seen.is_empty());
        for s in seen {
            assert_eq!(s.headers["x-set"], vec!["set-value"], "{s:?}");
            assert_eq!(s.headers["x-add"], vec!["client", "added"], "{s:?}");
            assert!(!s.headers.contains_key("x-remove"), "{s:?}");
            // The backendRef's filter applies to its own share only.
            assert_eq!(s.headers.contains_key("x-share"), share, "{s:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_resend_the_filtered_request_once_filtered() {
    let echo = Echo::start("echo").await;
    let mut r = route("httproute:demo/retry/0", vec![], vec![backend(&echo, 1)]);
    r.filters = vec![filter(FilterKind::RequestHeaderModifier(modifier(
        &[],
        &[("x-add", "once")],
        &[],
    )))];
    let policy = v1::TrafficPolicy {
        max_retries: 2,
        retry_budget_ratio: 1.0,
        retry_budget_min_per_second: 100,
        ..Default::default()
    };
    let (_op, proxy) = start(vec![service(vec![r], Some(policy)), echo.endpoints()]).await;
    let a = get(&client(), proxy.outbound, "/flaky", &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let seen = echo.seen();
    assert_eq!(seen.len(), 2, "first attempt 503, retried once: {seen:?}");
    for s in seen {
        assert_eq!(s.headers["x-add"], vec!["once"], "{s:?}");
    }
}

/// One redirect route per field combination that upstream's conformance tests use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_answer_with_location_and_status_and_send_nothing() {
    let echo = Echo::start("echo").await;
    let redirect = |path: &str, r: v1::RequestRedirect| {
        let mut rt = route(
            &format!("httproute:demo/redirect{path}"),
            vec![prefix("p", path)],
            vec![backend(&echo, 1)],
        );
        rt.filters = vec![filter(FilterKind::RequestRedirect(r))];
        rt
    };
    let host = |h: &str| v1::RequestRedirect {
        hostname: h.into(),
        ..Default::default()
    };
    let status = |code: u32| v1::RequestRedirect {
        hostname: "example.org".into(),
        status_code: code,
        ..Default::default()
    };
    let routes = vec![
        redirect("/hostname", host("example.org")),
        redirect("/s301", status(301)),
        redirect("/s302", status(302)),
        redirect("/s303", status(303)),
        redirect("/s307", status(307)),
        redirect("/s308", status(308)),
        redirect(
            "/full",
            v1::RequestRedirect {
                path: Some(full_path("/full-path-replacement")),
                ..Default::default()
            },
        ),
        redirect(
            "/original-prefix",
            v1::RequestRedirect {
                path: Some(prefix_path("/original-prefix", "/replacement-prefix")),
                ..Default::default()
            },
        ),
        redirect(
            "/port",
            v1::RequestRedirect {
                port: 8083,
                ..Default::default()
            },
        ),
        redirect(
            "/port-and-host",
            v1::RequestRedirect {
                hostname: "example.org".into(),
                port: 8083,
                ..Default::default()
            },
        ),
        redirect(
            "/scheme",
            v1::RequestRedirect {
                scheme: "https".into(),
                ..Default::default()
            },
        ),
        redirect(
            "/scheme-and-port",
            v1::RequestRedirect {
                scheme: "https".into(),
                port: 8443,
                ..Default::default()
            },
        ),
        redirect(
            "/scheme-http-and-port",
            v1::RequestRedirect {
                scheme: "http".into(),
                port: 8080,
                ..Default::default()
            },
        ),
        redirect(
            "/all",
            v1::RequestRedirect {
                scheme: "https".into(),
                hostname: "example.org".into(),
                port: 443,
                path: Some(full_path("/x")),
                status_code: 301,
            },
        ),
    ];
    let (_op, proxy) = start(vec![service(routes, None), echo.endpoints()]).await;
    let c = client();
    for (target, code, location) in [
        ("/hostname", 302, "http://example.org/hostname"),
        ("/s301", 301, "http://example.org/s301"),
        ("/s302", 302, "http://example.org/s302"),
        ("/s303", 303, "http://example.org/s303"),
        ("/s307", 307, "http://example.org/s307"),
        ("/s308/x?q=1", 308, "http://example.org/s308/x?q=1"),
        (
            "/full/a?k=v",
            302,
            "http://echo.demo/full-path-replacement?k=v",
        ),
        (
            "/original-prefix/lemon",
            302,
            "http://echo.demo/replacement-prefix/lemon",
        ),
        (
            "/original-prefix",
            302,
            "http://echo.demo/replacement-prefix",
        ),
        ("/port", 302, "http://echo.demo:8083/port"),
        (
            "/port-and-host",
            302,
            "http://example.org:8083/port-and-host",
        ),
        ("/scheme", 302, "https://echo.demo/scheme"),
        (
            "/scheme-and-port",
            302,
            "https://echo.demo:8443/scheme-and-port",
        ),
        (
            "/scheme-http-and-port",
            302,
            "http://echo.demo:8080/scheme-http-and-port",
        ),
        ("/all?a=b", 301, "https://example.org/x?a=b"),
    ] {
        let a = get(&c, proxy.outbound, target, &[]).await;
        assert_eq!(a.status.as_u16(), code, "{target}: {}", a.body);
        assert_eq!(a.header("location"), location, "{target}");
    }
    assert!(
        echo.seen().is_empty(),
        "a redirect sends nothing: {:?}",
        echo.seen()
    );
    // Counted like any response, by route.
    let metrics = proxy.admin_until("/metrics", |s, _| s == 200).await;
    assert!(
        metrics.contains(r#"route="httproute:demo/redirect/s301",backend="",status_class="3xx""#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrites_change_path_and_host_and_keep_the_query() {
    let echo = Echo::start("echo").await;
    let rewrite = |path: &str, w: v1::UrlRewrite| {
        let mut rt = route(
            &format!("httproute:demo/rewrite{path}"),
            vec![prefix("p", path)],
            vec![backend(&echo, 1)],
        );
        rt.filters = vec![filter(FilterKind::UrlRewrite(w))];
        rt
    };
    let path = |m: v1::PathModifier| v1::UrlRewrite {
        hostname: String::new(),
        path: Some(m),
    };
    let routes = vec![
        rewrite("/prefix/one", path(prefix_path("/prefix/one", "/one"))),
        rewrite("/strip-prefix", path(prefix_path("/strip-prefix", "/"))),
        rewrite("/full/one", path(full_path("/one"))),
        rewrite(
            "/host",
            v1::UrlRewrite {
                hostname: "one.example.org".into(),
                path: None,
            },
        ),
        rewrite(
            "/both",
            v1::UrlRewrite {
                hostname: "two.example.org".into(),
                path: Some(full_path("/two")),
            },
        ),
    ];
    let (_op, proxy) = start(vec![service(routes, None), echo.endpoints()]).await;
    let c = client();
    let cases = [
        ("/prefix/one/two", "/one/two", "echo.demo"),
        ("/prefix/one", "/one", "echo.demo"),
        ("/strip-prefix/three?q=1", "/three?q=1", "echo.demo"),
        ("/strip-prefix", "/", "echo.demo"),
        ("/strip-prefix/", "/", "echo.demo"),
        ("/full/one/two?x=y", "/one?x=y", "echo.demo"),
        ("/host/a", "/host/a", "one.example.org"),
        ("/both/a?b", "/two?b", "two.example.org"),
    ];
    for (target, _, _) in cases {
        let a = get(&c, proxy.outbound, target, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{target}: {}", a.body);
    }
    let seen = echo.seen();
    assert_eq!(seen.len(), cases.len(), "{seen:?}");
    for ((target, path, host), s) in cases.iter().zip(seen) {
        assert_eq!(
            (s.target.as_str(), s.host.as_str()),
            (*path, *host),
            "{target}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_params_select_a_rule_and_no_match_is_a_direct_404() {
    let (v1_, v2) = (Echo::start("echo-v1").await, Echo::start("echo-v2").await);
    let q = |name: &str, re: &str| v1::HttpMatch {
        name: "q".into(),
        query_params: vec![v1::QueryParamMatch {
            name: name.into(),
            value_regex: re.into(),
        }],
        ..Default::default()
    };
    let routes = vec![
        route(
            "httproute:demo/q/0",
            vec![q("animal", "whale")],
            vec![backend(&v2, 1)],
        ),
        route(
            "httproute:demo/q/1",
            vec![prefix("p", "/v1")],
            vec![backend(&v1_, 1)],
        ),
        v1::Route {
            name: "httproute:demo/q/no-match".into(),
            direct_status: 404,
            ..Default::default()
        },
    ];
    let (_op, proxy) = start(vec![service(routes, None), v1_.endpoints(), v2.endpoints()]).await;
    let c = client();
    for (target, status, body) in [
        ("/?animal=whale", 200, "echo-v2"),
        ("/x?color=blue&animal=whale", 200, "echo-v2"),
        ("/?animal=wh%61le", 200, "echo-v2"),
        ("/v1/x?animal=dolphin", 200, "echo-v1"),
        ("/?animal=dolphin&animal=whale", 404, ""),
        ("/?animal=whales", 404, ""),
        ("/?Animal=whale", 404, ""),
        ("/other", 404, ""),
    ] {
        let a = get(&c, proxy.outbound, target, &[]).await;
        assert_eq!(a.status.as_u16(), status, "{target}: {}", a.body);
        if status == 200 {
            assert_eq!(a.body, body, "{target}");
        } else {
            assert_eq!(a.header("weft-reason"), "no-route", "{target}");
        }
    }
    assert_eq!(v1_.seen().len() + v2.seen().len(), 4);
    let metrics = proxy.admin_until("/metrics", |s, _| s == 200).await;
    assert!(
        metrics.contains(
            r#"route="httproute:demo/q/no-match",backend="",status_class="4xx",peer=""} 4"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_backend_keeps_its_share_and_answers_500() {
    let echo = Echo::start("echo").await;
    let gone = v1::WeightedBackend {
        service: "other/missing".into(),
        weight: 1,
        endpoint_set: String::new(),
        unavailable_reason: "backendRef other/missing: service not found".into(),
        unavailable_status: 500,
        ..Default::default()
    };
    let r = route(
        "httproute:demo/split/0",
        vec![],
        vec![backend(&echo, 1), gone],
    );
    let (_op, proxy) = start(vec![service(vec![r], None), echo.endpoints()]).await;
    let c = client();
    let (mut ok_, mut failed) = (0, 0);
    for _ in 0..200 {
        let a = get(&c, proxy.outbound, "/", &[]).await;
        match a.status.as_u16() {
            200 => ok_ += 1,
            500 => {
                failed += 1;
                assert!(a.body.contains("service not found"), "{}", a.body);
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    // Each share ~100 of 200: never moved to the other backend.
    assert!(ok_ > 30 && failed > 30, "ok {ok_}, 500 {failed}");
    assert_eq!(echo.seen().len(), ok_);
    let metrics = proxy.admin_until("/metrics", |s, _| s == 200).await;
    assert!(
        metrics.contains(&format!(r#"route="httproute:demo/split/0",backend="other/missing",status_class="5xx",peer=""}} {failed}"#)),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_replace_the_service_timeout() {
    let echo = Echo::start("echo").await;
    let timed = |name: &str, path: &str, request_ms: u64, backend_request_ms: u64| v1::Route {
        timeouts: Some(v1::RouteTimeouts {
            request_ms,
            backend_request_ms,
        }),
        ..route(name, vec![prefix("p", path)], vec![backend(&echo, 1)])
    };
    let routes = vec![
        timed("httproute:demo/t/request", "/slow/request", 200, 0),
        timed("httproute:demo/t/backend", "/slow/backend", 0, 200),
        // A route timeout longer than the service's replaces it too.
        timed("httproute:demo/t/long", "/slow/long", 10_000, 0),
        route("httproute:demo/t/service", vec![], vec![backend(&echo, 1)]),
    ];
    let policy = v1::TrafficPolicy {
        request_timeout_ms: 500,
        ..Default::default()
    };
    let (_op, proxy) = start(vec![service(routes, Some(policy)), echo.endpoints()]).await;
    let c = client();
    for (target, status) in [
        ("/slow/request", 504),
        ("/slow/backend", 504),
        ("/slow/long", 200),
        ("/slow/service", 504),
        ("/fast", 200),
    ] {
        let a = get(&c, proxy.outbound, target, &[]).await;
        assert_eq!(a.status.as_u16(), status, "{target}: {}", a.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_filter_is_nacked_and_the_last_config_stays() {
    let echo = Echo::start("echo").await;
    let good = route("httproute:demo/good/0", vec![], vec![backend(&echo, 1)]);
    let (mut op, proxy) = start(vec![service(vec![good.clone()], None), echo.endpoints()]).await;
    let _ = op.expect_subscribe().await;
    let _ = op.expect_ack().await;

    let with_filter = |k: FilterKind| v1::Route {
        filters: vec![filter(k)],
        ..good.clone()
    };
    let bad_routes = vec![
        (
            "redirect status",
            with_filter(FilterKind::RequestRedirect(v1::RequestRedirect {
                status_code: 305,
                ..Default::default()
            })),
        ),
        (
            "redirect scheme",
            with_filter(FilterKind::RequestRedirect(v1::RequestRedirect {
                scheme: "ftp".into(),
                ..Default::default()
            })),
        ),
        (
            "header name",
            with_filter(FilterKind::RequestHeaderModifier(modifier(
                &[("bad header", "x")],
                &[],
                &[],
            ))),
        ),
        (
            "header value",
            with_filter(FilterKind::ResponseHeaderModifier(modifier(
                &[],
                &[("x-ok", "line\nbreak")],
                &[],
            ))),
        ),
        (
            "rewrite path",
            with_filter(FilterKind::UrlRewrite(v1::UrlRewrite {
                hostname: String::new(),
                path: Some(full_path("no-slash")),
            })),
        ),
        (
            "query regex",
            v1::Route {
                matches: vec![v1::HttpMatch {
                    name: "q".into(),
                    query_params: vec![v1::QueryParamMatch {
                        name: "a".into(),
                        value_regex: "(".into(),
                    }],
                    ..Default::default()
                }],
                ..good.clone()
            },
        ),
        (
            "direct status",
            v1::Route {
                direct_status: 42,
                ..good.clone()
            },
        ),
        (
            "filter kind",
            v1::Route {
                filters: vec![v1::RouteFilter { kind: None }],
                ..good.clone()
            },
        ),
    ];
    for (i, (what, bad)) in bad_routes.into_iter().enumerate() {
        let nonce = format!("bad-{i}");
        op.push(incremental(
            &nonce,
            &format!("v-bad-{i}"),
            vec![service(vec![bad], None)],
            vec![],
        ))
        .await;
        let nack = op.expect_nack().await;
        assert_eq!(nack.nonce, nonce, "{what}");
        assert_eq!(nack.kept_version, "v1", "{what}");
        assert_eq!(
            nack.resource_names,
            vec!["outbound:echo.demo"],
            "{what}: {nack:?}"
        );
        // The last good config is still in force and serving.
        let a = get(&client(), proxy.outbound, "/", &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.body);
    }
    let config = proxy.admin_until("/config", |s, _| s == 200).await;
    let json: serde_json::Value = ok(serde_json::from_str(&config));
    assert_eq!(json["version"], "v1");
}
