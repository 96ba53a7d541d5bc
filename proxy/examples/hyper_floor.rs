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
//!
//! `hyper_floor <listen addr> <upstream addr> h2` (the benchmark's `floor-1hop` with `CLIENT_H2=1`)
//! serves HTTP/2 with prior knowledge instead, as the proxy's outbound serves an HTTP/2 client
//! (`weft_proxy::http::serve_downstream`: the proxy's HTTP/2 server settings, the answers of one
//! poll coalesced into one write), and sends every request on the same pool.
//!
//! `hyper_floor <listen addr> <upstream addr> affine` (the benchmark's `affine-1hop` path) keeps
//! hyper's codec on both sides but drops the pool: each downstream connection opens one upstream
//! connection of its own and drives it on its own task, so a request crosses no channel between
//! tasks and no pool lock. The gap between `floor-1hop` and `affine-1hop` is what the pool and the
//! second task cost; the gap between `affine-1hop` and `raw-1hop` (`raw_floor.rs`) is hyper's
//! codec and dispatch.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use weft_proxy::http::pool::Http1Pool;
use weft_proxy::http::{
    boxed, empty, http1_server, idle, serve_downstream, Body, BoxError, MAX_RESPONSE_HEAD_BYTES,
};
use weft_proxy::transport::serve_loop;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_floor <listen addr> <upstream addr> [affine | h2]".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let mode = match args.next().as_deref() {
        None => Mode::Pooled,
        Some("affine") => Mode::Affine,
        Some("h2") => Mode::Http2,
        Some(other) => return Err(format!("unknown mode {other:?} (affine, h2)").into()),
    };
    // As the proxy sets its allocator (a process setting, not a feature of weft's).
    weft_common::memory::keep_heap_top(weft_common::memory::HEAP_TOP_KEPT);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream, mode))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// HTTP/1.1 downstream, the pool upstream.
    Pooled,
    /// HTTP/1.1 downstream, an upstream connection of its own per downstream connection.
    Affine,
    /// HTTP/2 downstream, the pool upstream.
    Http2,
}

async fn serve(listen: SocketAddr, upstream: SocketAddr, mode: Mode) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let pool = Http1Pool::default();
    if mode == Mode::Http2 {
        let forever = std::future::pending::<()>();
        let idle = idle::KEEP_ALIVE_IDLE_TIMEOUT;
        serve_loop(listener, forever, idle, move |tcp, _, drain| {
            let pool = pool.clone();
            serve_downstream(
                tcp,
                true,
                idle,
                drain,
                move |req: hyper::Request<Incoming>| {
                    let pool = pool.clone();
                    async move { forward(&pool, upstream, req).await }
                },
            )
        })
        .await?;
        return Ok(());
    }
    let affine = mode == Mode::Affine;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let pool = pool.clone();
        tokio::spawn(async move {
            // A client that goes away mid-request ends its connection; nothing to report.
            let _ = if affine {
                affine_connection(tcp, upstream).await
            } else {
                pooled_connection(tcp, upstream, pool).await
            };
        });
    }
}

/// Serves one downstream connection, sending every request on the pool.
async fn pooled_connection(
    tcp: TcpStream,
    upstream: SocketAddr,
    pool: Http1Pool,
) -> Result<(), BoxError> {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let pool = pool.clone();
        async move { Ok::<_, Infallible>(forward(&pool, upstream, req).await) }
    });
    let (tcp, timer) = idle::watch(tcp, idle::KEEP_ALIVE_IDLE_TIMEOUT);
    http1_server(timer)
        .serve_connection(TokioIo::new(tcp), service)
        .await?;
    Ok(())
}

async fn forward(
    pool: &Http1Pool,
    upstream: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Response<Body> {
    match pool.send(upstream, Box::new(req.map(boxed))).await {
        Ok(rsp) => rsp.map(boxed),
        Err(_) => bad_gateway(),
    }
}

fn bad_gateway() -> Response<Body> {
    let mut rsp = Response::new(empty());
    *rsp.status_mut() = StatusCode::BAD_GATEWAY;
    rsp
}

/// Serves one downstream connection with an upstream connection of its own, both driven by this
/// task. Ends when either connection ends.
async fn affine_connection(tcp: TcpStream, upstream: SocketAddr) -> Result<(), BoxError> {
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        // As the pool's connections are built.
        .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
        .handshake::<_, Body>(TokioIo::new(up))
        .await?;
    // The server serves one request at a time, so the lock is never contended; it is held until
    // the upstream connection is ready for the request and the response head is in.
    let sender = Arc::new(Mutex::new(sender));
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            let rsp = match sender.ready().await {
                Ok(()) => sender.send_request(req.map(boxed)).await,
                Err(e) => Err(e),
            };
            Ok::<_, Infallible>(match rsp {
                Ok(rsp) => rsp.map(boxed),
                Err(_) => bad_gateway(),
            })
        }
    });
    let (tcp, timer) = idle::watch(tcp, idle::KEEP_ALIVE_IDLE_TIMEOUT);
    let server = http1_server(timer).serve_connection(TokioIo::new(tcp), service);
    tokio::select! {
        _ = server => {}
        _ = conn => {}
    }
    Ok(())
}
