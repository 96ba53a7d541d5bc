//! Issue #20: an HTTP/2 client's connections do not keep the proxy's upstream read buffers
//! alive. The real `weft-proxy` binary, a fake operator, an HTTP/1.1 backend whose every answer
//! carries a header value never seen before (as a request id, or a `date` once a second, does),
//! and HTTP/2 clients that keep their connections open, all on 127.0.0.1.
//!
//! `h2`'s HPACK encoder keeps each new value it indexes in its connection's table (up to 4 KiB
//! of entries). hyper parses the backend's head in place, so a value as parsed is a slice of the
//! upstream connection's 8 KiB read buffer; without `weft_proxy::http::detach` every table entry
//! held one such buffer for as long as the connection lived (this test's proxy grew by ~7 MiB
//! without it, ~1 MiB with it).

mod control_support;
mod process_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use control_support::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use process_support::*;
use tokio::net::{TcpListener, TcpStream};

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

/// The proxy's anonymous resident memory (`RssAnon`), in KiB.
fn anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("RssAnon")
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
    let op = start_operator(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    op.reply_on_subscribe(full_state(
        "n1",
        "v1",
        vec![
            inbound("spiffe://cluster.local/ns/demo/sa/web"),
            outbound("demo", "api", 80, "/"),
            endpoints("demo", "api", 80, &[backend.port()]),
        ],
    ));
    let mut proxy = ProxyProcess::start(&op.uri()).await;
    proxy.admin_until("/ready", |s, _| s == 200).await;
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
    let before = anon_kib(pid);

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
    let after = anon_kib(pid);
    let grown = after.saturating_sub(before);
    eprintln!("proxy RssAnon {before} KiB -> {after} KiB (+{grown} KiB), connections open");
    // Held read buffers are up to ~95 entries of 8 KiB a connection; what the tables hold
    // themselves is ~4 KiB a connection, plus whatever glibc keeps of what was freed.
    assert!(
        grown < 4 * 1024,
        "the proxy grew {grown} KiB over {CONNECTIONS} open HTTP/2 connections"
    );
    drop(open);
    assert_eq!(
        proxy.sigterm().await.code(),
        Some(0),
        "log:\n{}",
        proxy.log()
    );
}
