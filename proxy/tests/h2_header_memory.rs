//! Issue #20: HTTP/2 connections do not keep the proxy's HTTP/1 read buffers alive. The real
//! `weft-proxy` binary and a fake operator on 127.0.0.1, in both directions:
//!
//! - responses: an HTTP/1.1 backend whose every answer carries a header value never seen before
//!   (as a request id, or a `date` once a second, does), HTTP/2 clients that keep their
//!   connections open;
//! - requests: HTTP/1.1 clients sending a new header value with every request, to HTTP/2
//!   backends (a port declared `http2`), over the proxy's HTTP/2 client connections.
//!
//! `h2`'s HPACK encoder keeps each new value it indexes in its connection's table (up to 4 KiB
//! of entries). hyper parses the backend's head in place, so a value as parsed is a slice of the
//! upstream connection's 8 KiB read buffer (a request's, of the client connection's read buffer);
//! without `weft_proxy::http::detach` every table entry held one such buffer for as long as the
//! HTTP/2 connection lived.

mod control_support;
mod process_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use process_support::*;
use tokio::net::{TcpListener, TcpStream};
use weft_proxy_api::v1;

const HOST: &str = "api.demo.svc.cluster.local";
/// Client connections held open at once, and requests made on each.
const CONNECTIONS: usize = 16;
const REQUESTS: usize = 250;

/// An HTTP/1.1 keep-alive backend: every answer has an `x-seq` header with a new number.
async fn numbering_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seq = Arc::new(AtomicU64::new(10_000));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seq = seq.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: http::Request<Incoming>| {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let rsp = http::Response::builder()
                            .header("x-seq", n.to_string())
                            .body(Full::new(Bytes::from_static(b"ok")));
                        Ok::<_, Infallible>(rsp.expect("response"))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The proxy's anonymous resident memory (`RssAnon`), in KiB, once it has been quiet for a
/// few of its looks (the proxies here look every second): heap freed and left resident has been
/// returned ([`weft_proxy::memory::give_back_when_quiet`]), what is left is held.
async fn held_kib(pid: u32) -> u64 {
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    status_kib(pid, "RssAnon").expect("RssAnon")
}

/// What the proxy grew by since `before` (KiB, [`held_kib`]), once quiet again; printed.
async fn grown_kib(pid: u32, before: u64) -> u64 {
    let after = held_kib(pid).await;
    let grown = after.saturating_sub(before);
    eprintln!("proxy RssAnon {before} KiB -> {after} KiB (+{grown} KiB), connections open, quiet");
    grown
}

/// An HTTP/2 (prior knowledge) connection to the proxy's outbound listener.
async fn h2_client(outbound: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(outbound).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_do_not_keep_upstream_read_buffers() {
    let backend = numbering_backend().await;
    let (_op, mut proxy) = quiet_proxy_to(&[backend.port()], v1::Protocol::Http1).await;
    let pid = proxy.child.id().expect("pid");

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(h2_client(proxy.outbound).await);
    }
    let get = || {
        http::Request::get(format!("http://{HOST}/items"))
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    // One answer on each connection first: what every connection costs by itself (its buffers,
    // the upstream connection it brought into the pool) is in the baseline.
    for c in &mut clients {
        let rsp = c.send_request(get()).await.expect("first answer");
        assert_eq!(rsp.status(), 200);
    }
    let before = held_kib(pid).await;

    let mut seen = std::collections::HashSet::new();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for _ in 0..REQUESTS {
                    let rsp = c.send_request(get()).await.expect("answer");
                    assert_eq!(rsp.status(), 200);
                    let seq = rsp.headers()["x-seq"].to_str().expect("x-seq").to_owned();
                    let body = rsp.into_body().collect().await.expect("body").to_bytes();
                    assert_eq!(&body[..], b"ok");
                    seqs.push(seq);
                }
                (c, seqs)
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        let (c, seqs) = t.await.expect("client");
        seen.extend(seqs);
        open.push(c);
    }
    // Every answer arrived with its own value: each was a new entry for its connection's table.
    assert_eq!(seen.len(), CONNECTIONS * REQUESTS);
    let grown = grown_kib(pid, before).await;
    // Held read buffers are up to ~95 entries of 8 KiB a connection; what the tables hold
    // themselves is ~4 KiB a connection, plus whatever glibc keeps of what was freed.
    assert!(
        grown < 4 * 1024,
        "the proxy grew {grown} KiB over {CONNECTIONS} open HTTP/2 connections"
    );
    drop(open);
    proxy.stops_cleanly().await;
}

/// An HTTP/2 (prior knowledge) backend answering `200 ok`.
async fn h2_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_do_not_keep_client_read_buffers() {
    // Four backends: four HTTP/2 connections from the proxy, four header tables.
    let mut ports = Vec::new();
    for _ in 0..4 {
        ports.push(h2_backend().await.port());
    }
    let (_op, mut proxy) = quiet_proxy_to(&ports, v1::Protocol::Http2).await;
    let pid = proxy.child.id().expect("pid");

    // Heads of 12 KiB: the client connections' read buffers grow past their first 8 KiB. The
    // padding is too large for a header table (`h2` indexes values under 3 KiB); `x-seq` is new
    // on every request, so each request adds an entry to its upstream connection's table.
    let pad = "p".repeat(12 * 1024);
    let seq = Arc::new(AtomicU64::new(10_000));
    let get = move |seq: &AtomicU64| {
        http::Request::get("/items")
            .header("host", HOST)
            .header("x-pad", pad.as_str())
            .header("x-seq", seq.fetch_add(1, Ordering::Relaxed).to_string())
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let tcp = TcpStream::connect(proxy.outbound).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        clients.push(sender);
    }
    // A few answers first: the upstream connections are open, and each client connection's
    // buffers have grown to the padded heads, before the baseline.
    for c in &mut clients {
        for _ in 0..4 {
            c.ready().await.expect("connection ready");
            let rsp = c.send_request(get(&seq)).await.expect("first answers");
            assert_eq!(rsp.status(), 200);
            rsp.into_body().collect().await.expect("body");
        }
    }
    let before = held_kib(pid).await;

    let get = Arc::new(get);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (get, seq) = (get.clone(), seq.clone());
            tokio::spawn(async move {
                for _ in 0..REQUESTS {
                    c.ready().await.expect("connection ready");
                    let rsp = c.send_request(get(&seq)).await.expect("answer");
                    assert_eq!(rsp.status(), 200);
                    let body = rsp.into_body().collect().await.expect("body").to_bytes();
                    assert_eq!(&body[..], b"ok");
                }
                c
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.expect("client"));
    }
    let grown = grown_kib(pid, before).await;
    // Held read buffers are up to ~95 entries of 16 KiB or more per upstream connection.
    assert!(
        grown < 3 * 1024,
        "the proxy grew {grown} KiB over 4 HTTP/2 upstream connections"
    );
    drop(open);
    proxy.stops_cleanly().await;
}
