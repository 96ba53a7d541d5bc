//! Pooled HTTP/1.1 connections to plain upstreams (the local app, unmeshed endpoints).
//!
//! hyper-util's legacy pooled client spawned a task per HTTP/1 request to put the connection back
//! once it was ready again, and boxed each request's future together with a oneshot and a pool
//! handle (issue #20, `docs/benchmarks.md`). Here a connection goes back to its idle list when
//! the response body is dropped or ends, inside the task that was already forwarding it, and a
//! checkout takes the most recently used idle connection that is ready.
//!
//! Bounded: a connection's read buffer grows in steps to at most about
//! [`MAX_RESPONSE_HEAD_BYTES`] (hyper's adaptive read size, capped); at most
//! [`MAX_IDLE_PER_ADDR`] idle connections per upstream address; idle ones are closed after
//! [`crate::http::POOL_IDLE_TIMEOUT`] (to within a quarter of it) by one sweeper task per pool,
//! which ends with the pool.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::{Body, MAX_RESPONSE_HEAD_BYTES, POOL_IDLE_TIMEOUT};
use crate::fast_map::FastMap;
use crate::transport::{self, TransportError};

/// Idle connections kept per upstream address; more are closed when they come back.
pub const MAX_IDLE_PER_ADDR: usize = 256;
/// Sweeps an idle connection survives before it is closed: with a sweep every quarter of
/// [`POOL_IDLE_TIMEOUT`], it is closed after between one and one and a quarter of it idle.
const SWEEPS: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] TransportError),
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

struct Idle {
    sender: SendRequest<Body>,
    /// Sweeps seen while idle (see [`SWEEPS`]).
    sweeps: u8,
}

#[derive(Default)]
struct Inner {
    // Held only to take or return a sender, never across an await.
    idle: Mutex<FastMap<SocketAddr, Vec<Idle>>>,
    sweeper: AtomicBool,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<SocketAddr, Vec<Idle>>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The most recently returned idle connection to `addr` that can take a request now.
    /// Closed ones are dropped; one still finishing its last exchange stays for later.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        let list = idle.get_mut(&addr)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let Some(entry) = list.get(i) else { break };
            if entry.sender.is_ready() {
                return Some(list.swap_remove(i).sender);
            }
            if entry.sender.is_closed() {
                list.swap_remove(i);
            }
        }
        None
    }

    fn checkin(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(Idle { sender, sweeps: 0 });
        }
    }

    /// Closes connections idle for [`SWEEPS`] sweeps and forgets closed ones and empty lists.
    fn sweep(&self) {
        let mut idle = self.lock();
        idle.retain(|_, list| {
            list.retain_mut(|e| {
                e.sweeps = e.sweeps.saturating_add(1);
                e.sweeps < SWEEPS && !e.sender.is_closed()
            });
            !list.is_empty()
        });
    }
}

/// HTTP/1.1 connections to plain upstreams, pooled per address. Cloning shares the pool.
#[derive(Clone, Default)]
pub struct Http1Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool").finish_non_exhaustive()
    }
}

impl Http1Pool {
    /// Sends `req` to `addr` over HTTP/1.1, on an idle connection when there is one. The request
    /// target is sent in origin form (`/path?query`); `Host` is kept, or taken from the URI's
    /// authority when the request has none. A request that a pooled connection could not start
    /// (the upstream had closed it while idle) goes out on the next one, or a new one. The
    /// request comes boxed and is unboxed only into hyper's own queue (issue #20: a move of
    /// the unboxed request is a copy into the cold memory of this request's future).
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Box<Request<Body>>,
    ) -> Result<Response<PlainBody>, PoolError> {
        super::upgrade::set_origin_form(&mut req);
        while let Some(mut sender) = self.inner.checkout(addr) {
            match sender.try_send_request(*req).await {
                Ok(rsp) => return Ok(self.returning(rsp, addr, sender)),
                Err(mut e) => match e.take_message() {
                    Some(r) => *req = r,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: connecting is rare, and its state would otherwise be part of every request's
        // future (issue #20).
        let mut sender = Box::pin(self.connect(addr)).await?;
        match sender.try_send_request(*req).await {
            Ok(rsp) => Ok(self.returning(rsp, addr, sender)),
            Err(e) => Err(e.into_error().into()),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, PoolError> {
        let tcp = transport::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            // hyper's default (~400 KiB) lets each connection's read buffer grow that large
            // with big bodies, and keep it while idle (issue #20: RSS after 64 KiB-body load).
            .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
            .handshake::<_, Body>(TokioIo::new(tcp))
            .await
            .map_err(|source| PoolError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream connection closed");
            }
        });
        if !self.inner.sweeper.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweeper(Arc::downgrade(&self.inner)));
        }
        Ok(sender)
    }

    fn returning(
        &self,
        rsp: Response<Incoming>,
        addr: SocketAddr,
        sender: SendRequest<Body>,
    ) -> Response<PlainBody> {
        let back = Return {
            pool: self.inner.clone(),
            addr,
            sender,
        };
        rsp.map(|body| PlainBody {
            body,
            back: Some(back),
        })
    }

    /// Idle connections to `addr` (for tests).
    pub fn idle(&self, addr: SocketAddr) -> usize {
        self.inner.lock().get(&addr).map_or(0, Vec::len)
    }
}

async fn sweeper(pool: Weak<Inner>) {
    let mut tick = tokio::time::interval(POOL_IDLE_TIMEOUT / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => p.sweep(),
            None => return,
        }
    }
}

struct Return {
    pool: Arc<Inner>,
    addr: SocketAddr,
    sender: SendRequest<Body>,
}

/// A response body from a plain upstream. An HTTP/1.1 connection goes back to its pool when the
/// body ends or is dropped (hyper closes it instead when the body was not read to its end).
pub struct PlainBody {
    body: Incoming,
    back: Option<Return>,
}

impl PlainBody {
    pub(crate) fn unpooled(body: Incoming) -> Self {
        PlainBody { body, back: None }
    }

    fn give_back(&mut self) {
        if let Some(b) = self.back.take() {
            b.pool.checkin(b.addr, b.sender);
        }
    }
}

impl Drop for PlainBody {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl HttpBody for PlainBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream that answers each request on a connection with `200` and a body naming the
    /// connection, closing it after `per_conn` requests (0: never).
    async fn upstream(per_conn: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        upstream_with(per_conn, |n, request_line| {
            format!("conn {n}: {request_line}")
        })
        .await
    }

    /// [`upstream`] with the body made by `body(connection number, request line)`.
    async fn upstream_with(
        per_conn: usize,
        body: fn(usize, &str) -> String,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut served = 0;
                    let mut pending = Vec::new();
                    loop {
                        let Ok(r) = s.read(&mut buf).await else {
                            return;
                        };
                        if r == 0 {
                            return;
                        }
                        pending.extend_from_slice(buf.get(..r).unwrap_or_default());
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head =
                                String::from_utf8_lossy(pending.get(..end).unwrap_or_default())
                                    .to_string();
                            pending.drain(..end + 4);
                            let body = body(n, head.lines().next().unwrap_or(""));
                            let rsp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(rsp.as_bytes()).await.is_err() {
                                return;
                            }
                            served += 1;
                            if per_conn != 0 && served == per_conn {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get(path: &str, addr: SocketAddr) -> Box<Request<Body>> {
        let req = Request::get(format!("http://{addr}{path}"))
            .header("host", "api.demo")
            .body(crate::http::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        Box::new(req)
    }

    async fn text(rsp: Response<PlainBody>) -> String {
        let bytes = rsp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes();
        String::from_utf8_lossy(&bytes).to_string()
    }

    #[tokio::test]
    async fn reuses_a_connection_and_sends_origin_form() {
        let (addr, accepted) = upstream(0).await;
        let pool = Http1Pool::default();
        for i in 0..3 {
            let rsp = pool
                .send(addr, get(&format!("/a?i={i}"), addr))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(text(rsp).await, format!("conn 0: GET /a?i={i} HTTP/1.1"));
            assert_eq!(pool.idle(addr), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_all_come_back() {
        let (addr, accepted) = upstream(0).await;
        let pool = Http1Pool::default();
        let a = pool
            .send(addr, get("/a", addr))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // `a`'s body is not read yet: its connection is busy, so `b` needs another.
        let b = pool
            .send(addr, get("/b", addr))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(text(a).await.ends_with("GET /a HTTP/1.1"));
        assert!(text(b).await.ends_with("GET /b HTTP/1.1"));
        assert_eq!(pool.idle(addr), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        // The upstream closes every connection after one answer.
        let (addr, accepted) = upstream(1).await;
        let pool = Http1Pool::default();
        for i in 0..3 {
            let rsp = pool
                .send(addr, get("/x", addr))
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(text(rsp).await, format!("conn {i}: GET /x HTTP/1.1"));
            // Let the connection task see the close.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_dropped_unread_body_does_not_leave_a_reusable_connection() {
        let (addr, accepted) = upstream(0).await;
        let pool = Http1Pool::default();
        let rsp = pool
            .send(addr, get("/a", addr))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(rsp);
        let rsp = pool
            .send(addr, get("/b", addr))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(text(rsp).await.ends_with("GET /b HTTP/1.1"));
        // Whether hyper could keep the first connection (its small body may have been read
        // already) or closed it, the second request was answered on a working connection.
        assert!((1..=2).contains(&accepted.load(Ordering::SeqCst)));
    }

    #[tokio::test]
    async fn bodies_larger_than_the_read_buffer_cap_stream_through() {
        let (addr, _) = upstream_with(0, |_, _| "y".repeat(4 * MAX_RESPONSE_HEAD_BYTES)).await;
        let pool = Http1Pool::default();
        for _ in 0..3 {
            let rsp = pool
                .send(addr, get("/big-body", addr))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(text(rsp).await.len(), 4 * MAX_RESPONSE_HEAD_BYTES);
        }
        assert_eq!(pool.idle(addr), 1, "the connection was not reused");
    }

    #[tokio::test]
    async fn connection_refused_is_an_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        let pool = Http1Pool::default();
        let err = pool
            .send(addr, get("/", addr))
            .await
            .err()
            .unwrap_or_else(|| panic!("a closed port answered"));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, _) = upstream(0).await;
        let pool = Http1Pool::default();
        let rsp = pool
            .send(addr, get("/a", addr))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        text(rsp).await;
        // The sweeper runs every quarter of the idle timeout; drive its sweeps by hand.
        for _ in 1..SWEEPS {
            pool.inner.sweep();
        }
        assert_eq!(pool.idle(addr), 1, "closed before the idle timeout");
        pool.inner.sweep();
        assert_eq!(pool.idle(addr), 0, "still pooled after the idle timeout");
        // A connection used again starts its idle time anew.
        let rsp = pool
            .send(addr, get("/b", addr))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        text(rsp).await;
        for _ in 1..SWEEPS {
            pool.inner.sweep();
        }
        let rsp = pool
            .send(addr, get("/c", addr))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        text(rsp).await;
        pool.inner.sweep();
        assert_eq!(
            pool.idle(addr),
            1,
            "a reused connection kept its old idle time"
        );
    }
}
