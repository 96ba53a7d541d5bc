//! The floor under weft-proxy's one hop: what hyper and tokio alone cost to forward a request,
//! for `e2e/bench/proxy-bench.sh`'s optional `floor-1hop` path (issue #20). Benchmark tooling
//! only, never part of a mesh.
//!
//! ```text
//! scripts/build-dist.sh example:hyper_floor     # into target/dist/examples, built as the proxy is
//! target/dist/examples/hyper_floor <listen addr> <upstream addr>
//! ```
//!
//! It is built from the same pieces as the proxy's outbound path to an unmeshed endpoint, and
//! nothing else: one `current_thread` runtime (the sidecar's default), each accepted connection
//! served by hyper's HTTP/1 server with the proxy's limits (`weft_proxy::http::http1_server`:
//! header-read timeout, head size), and every request sent on the proxy's own upstream pool
//! (`Http1Pool`, HTTP/1.1 keep-alive) to the one upstream address, with the proxy's allocator
//! setting (`weft_common::memory::keep_heap_top`). What weft-proxy does on top of
//! this - routing by authority, splits, balancing, authorization, metrics and classification,
//! hop-by-hop headers, deadlines, retries, circuit breaking, load shedding, tap and tracing
//! hooks - is what the gap between the two paths in one run measures.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use weft_proxy::http::pool::Http1Pool;
use weft_proxy::http::{boxed, empty, http1_server, idle, Body, BoxError};

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_floor <listen addr> <upstream addr>".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    // As the proxy sets its allocator (a process setting, not a feature of weft's).
    weft_common::memory::keep_heap_top(weft_common::memory::HEAP_TOP_KEPT);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let pool = Http1Pool::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let pool = pool.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let pool = pool.clone();
                async move { Ok::<_, Infallible>(forward(&pool, upstream, req).await) }
            });
            // A client that goes away mid-request ends its connection; nothing to report.
            let (tcp, timer) = idle::watch(tcp, idle::KEEP_ALIVE_IDLE_TIMEOUT);
            let _ = http1_server(timer)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn forward(
    pool: &Http1Pool,
    upstream: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Response<Body> {
    match pool.send(upstream, Box::new(req.map(boxed))).await {
        Ok(rsp) => rsp.map(boxed),
        Err(_) => {
            let mut rsp = Response::new(empty());
            *rsp.status_mut() = StatusCode::BAD_GATEWAY;
            rsp
        }
    }
}
