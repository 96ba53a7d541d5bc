//! Issue #13, HTTP edge cases through a proxy (inbound plaintext and outbound): correct answers.
//!
//! Real processes on loopback (see `weft_e2e::loopback`). Build them first:
//! `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_e2e::loopback::{http_raw, read_response, LoopbackMesh, MeshSpec, PodSpec, ServiceSpec};

const NS: &str = "shop";
const WEB: &str = "web.shop.svc.cluster.local:8080";

/// client-0 (sa/client) and web-0 (HTTP app on 8080 behind `web`), namespace default allow.
async fn web_mesh() -> LoopbackMesh {
    LoopbackMesh::start(
        MeshSpec::new(NS)
            .pod(PodSpec::new("client-0", "client", 10))
            .pod(
                PodSpec::new("web-0", "web", 20)
                    .label("app", "web")
                    .http_app(8080, "web", "v1"),
            )
            .service(ServiceSpec::new("web", 8080).select("app", "web")),
    )
    .await
}

/// The two ways in: client-0's outbound listener (explicit mode) and web-0's inbound port
/// (plaintext from an unmeshed client).
fn entries(mesh: &LoopbackMesh) -> [(&'static str, SocketAddr); 2] {
    [
        ("outbound", mesh.pod("client-0").outbound()),
        ("inbound", mesh.pod("web-0").inbound()),
    ]
}

/// Failure: a client that sends its request and half-closes (shutdown of its write side) never
/// gets its response today.
///
/// Fixed outcome: 200 with the app's body, on both paths.
///
/// Depends on: the proxy HTTP fix (half-close answered).
#[tokio::test]
async fn half_closed_client_gets_its_response() {
    let mesh = web_mesh().await;
    let mut wrong = Vec::new();
    for (what, addr) in entries(&mesh) {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            s.write_all(format!("GET / HTTP/1.1\r\nHost: {WEB}\r\n\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())?;
            read_response(&mut s).await
        };
        let r = tokio::time::timeout(Duration::from_secs(15), attempt)
            .await
            .unwrap_or_else(|_| Err("no response within 15 s".into()));
        if r.as_ref().map(|r| (r.status, r.body_text())) != Ok((200, "web v1\n".to_string())) {
            wrong.push(format!("{what}: {r:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "half-closed clients did not get 200:\n{}",
        wrong.join("\n")
    );
}

/// Attack: two `Host` headers. Today both are forwarded (the proxy routes by one, the app may
/// read the other).
///
/// Fixed outcome: 400 on both paths; the app never receives a request with two Host headers.
///
/// Depends on: the proxy HTTP fix (duplicate Host → 400).
#[tokio::test]
async fn duplicate_host_is_rejected() {
    let mesh = web_mesh().await;
    let mut wrong = Vec::new();
    for (what, addr) in entries(&mesh) {
        let req = format!(
            "GET /echo HTTP/1.1\r\nHost: {WEB}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        );
        let r = http_raw(addr, req.as_bytes(), Duration::from_secs(15)).await;
        if r.as_ref().map(|r| r.status).ok() != Some(400) {
            wrong.push(format!(
                "{what}: {:?}",
                r.map(|r| (r.status, r.body_text()))
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "two Host headers not answered 400:\n{}",
        wrong.join("\n")
    );
    let seen = mesh.app_seen("web-0").await;
    let doubled: Vec<&String> = seen
        .iter()
        .filter(|h| {
            h.lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
                .count()
                > 1
        })
        .collect();
    assert!(
        doubled.is_empty(),
        "the app received two Host headers: {doubled:?}"
    );
}

/// The Host header lines of the request head the app echoed.
fn hosts(echo: &str) -> Vec<String> {
    echo.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("host")
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// Failure: an absolute-form request (`GET http://web…/echo`) with a different `Host` reaches
/// the app with the client's `Host` today.
///
/// Fixed outcome: 200, and the app sees exactly one Host, the routed authority (the request
/// target's authority, RFC 9112 §3.2.2), on both paths.
///
/// Depends on: the proxy HTTP fix (absolute-form forwarded with the routed authority).
#[tokio::test]
async fn absolute_form_reaches_app_with_routed_authority() {
    let mesh = web_mesh().await;
    // Sanity: an origin-form request keeps its Host.
    let r = mesh
        .get_via("client-0", WEB, "/echo", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(hosts(&r.body_text()), vec![WEB.to_string()], "{r:?}");
    let mut wrong = Vec::new();
    for (what, addr) in entries(&mesh) {
        let req = format!(
            "GET http://{WEB}/echo HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n"
        );
        let r = http_raw(addr, req.as_bytes(), Duration::from_secs(15)).await;
        match r {
            Ok(r) if r.status == 200 && hosts(&r.body_text()) == vec![WEB.to_string()] => {}
            other => wrong.push(format!(
                "{what}: {:?}",
                other.map(|r| (r.status, r.body_text()))
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "absolute-form requests did not reach the app (200) with Host {WEB}:\n{}",
        wrong.join("\n")
    );
}

/// Failure: a request body with an invalid chunk size is answered 502 today (and counted as an
/// upstream failure).
///
/// Fixed outcome: 400 on both paths (a client error).
///
/// Depends on: the proxy HTTP fix (client body errors → 400).
#[tokio::test]
async fn bad_chunk_size_is_a_client_error() {
    let mesh = web_mesh().await;
    let mut wrong = Vec::new();
    for (what, addr) in entries(&mesh) {
        let req = format!(
            "POST /upload HTTP/1.1\r\nHost: {WEB}\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        );
        let r = http_raw(addr, req.as_bytes(), Duration::from_secs(15)).await;
        if r.as_ref().map(|r| r.status).ok() != Some(400) {
            wrong.push(format!(
                "{what}: {:?}",
                r.map(|r| (r.status, r.body_text()))
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "bad chunk size not answered 400:\n{}",
        wrong.join("\n")
    );
}

/// Attack: slowloris on inbound plaintext: the client sends one byte per second from its very
/// first byte and never finishes its request head. Today the connection turns into an opaque
/// relay after detection gives up and is never closed.
///
/// Fixed outcome: the proxy closes the connection (with or without a 408) within 60 s.
///
/// Depends on: the proxy inbound/transport fix (header-read timeout on every path, including
/// inbound plaintext detection).
#[tokio::test]
async fn slowloris_on_inbound_plaintext_is_closed() {
    let mesh = web_mesh().await;
    let mut s = TcpStream::connect(mesh.pod("web-0").inbound())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let drip = format!(
        "GET / HTTP/1.1\r\nHost: {WEB}\r\nX-Slow: {}",
        "a".repeat(200)
    );
    let start = tokio::time::Instant::now();
    let bound = Duration::from_secs(60);
    let mut closed = false;
    let mut buf = [0u8; 1024];
    let mut i = 0;
    while start.elapsed() < bound {
        let byte = drip.as_bytes()[i % drip.len()];
        i += 1;
        if s.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            // A response (e.g. 408) is fine; keep going until the close.
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    assert!(
        closed,
        "a client dripping one byte per second on inbound plaintext was still connected after \
         {bound:?} ({i} bytes sent)"
    );
}

/// Failure: a request body that ends early (`Content-Length: 100`, 10 bytes, then the client
/// half-closes) is answered 502 today, as if the app had failed.
///
/// Fixed outcome: 400 on both paths (a client error).
///
/// Depends on: the proxy HTTP fix (client body errors → 400, not counted as upstream failures).
#[tokio::test]
async fn early_eof_in_body_is_a_client_error() {
    let mesh = web_mesh().await;
    let mut wrong = Vec::new();
    for (what, addr) in entries(&mesh) {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let req = format!(
                "POST /upload HTTP/1.1\r\nHost: {WEB}\r\nContent-Length: 100\r\n\r\n0123456789"
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())?;
            read_response(&mut s).await
        };
        let r = tokio::time::timeout(Duration::from_secs(15), attempt)
            .await
            .unwrap_or_else(|_| Err("no response within 15 s".into()));
        match &r {
            Ok(r) if r.status == 400 => {}
            _ => wrong.push(format!(
                "{what}: {:?}",
                r.map(|r| (r.status, r.body_text()))
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "a body cut short by the client was not answered as a client error:\n{}",
        wrong.join("\n")
    );
}
