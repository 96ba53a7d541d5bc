//! One write per poll of an HTTP/2 connection, however many streams it answered in that poll.
//!
//! The `h2` crate keeps a DATA frame of 256 bytes or more by reference (to avoid copying it) and
//! can hold only one such frame at a time: before it can take the next frame it flushes, so
//! every response with a body of that size cost the connection its own write, and over TLS its
//! own record (issue #20: at saturation weft's two proxies wrote the mesh link 1.2 times a
//! request, HAProxy's 0.27; its HTTP/2 mux gathers the streams' frames and writes them once).
//!
//! [`coalesce`] puts a buffer between `h2` and the connection: small writes are copied into it
//! and a flush only notes that they are owed; [`Driven`], which polls the HTTP/2 connection,
//! writes them out once after each poll. `h2` ends every poll of its connection with a flush, so
//! nothing waits longer than it did; it only stops going out frame by frame. Large writes (a
//! body's 16 KiB frames) still go through at once, after what was gathered before them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes smaller than this are gathered; larger ones go through (after the gathered bytes).
const GATHER_BELOW: usize = 8 * 1024;
/// The most bytes gathered before they are written out whatever comes next.
const GATHER_MAX: usize = 64 * 1024;

struct Shared<I> {
    io: I,
    /// Bytes written by `h2`, not yet passed to `io`; `buf[sent..]` is what is left.
    buf: Vec<u8>,
    sent: usize,
    /// Written since the last complete send (`io` may hold bytes of a large write unflushed).
    written: bool,
    /// A write error met by [`Driven`], returned to `h2` by its next write or flush.
    error: Option<io::ErrorKind>,
}

impl<I: AsyncWrite + Unpin> Shared<I> {
    /// Passes every gathered byte to `io`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        if self.buf.capacity() > 2 * GATHER_BELOW {
            // A burst's buffer is not kept by an idle connection.
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// Passes every gathered byte to `io` and flushes it (the TLS records go out).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn owed_error(&mut self) -> io::Result<()> {
        match self.error.take() {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }
}

fn lock<I>(shared: &Mutex<Shared<I>>) -> MutexGuard<'_, Shared<I>> {
    // The connection's tasks take it in turn (one on the server side; on the client side
    // hyper's connection task and its per-request tasks); a panic while one held the lock
    // leaves no half-done state worse than the connection's own, which then fails.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The connection as `h2` sees it: reads pass through, small writes are gathered.
pub struct Coalesced<I> {
    shared: Arc<Mutex<Shared<I>>>,
}

/// Wraps `io` for an HTTP/2 connection; every future that polls the `h2` connection must be
/// polled through [`Driven::new`] with the returned [`Flusher`] (a server connection's future; a
/// client's tasks, spawned with [`SpawnFlushing`]), or what it writes is never sent.
pub fn coalesce<I>(io: I) -> (Coalesced<I>, Flusher<I>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        buf: Vec::new(),
        sent: 0,
        written: false,
        error: None,
    }));
    (
        Coalesced {
            shared: shared.clone(),
        },
        Flusher { shared },
    )
}

impl<I: AsyncRead + Unpin> AsyncRead for Coalesced<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> Coalesced<I> {
    fn write(&self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.shared);
        s.owed_error()?;
        s.written = true;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let pending = s.buf.len() - s.sent;
        if len < GATHER_BELOW && pending + len <= GATHER_MAX {
            if s.sent > 0 {
                // A partial write left a sent prefix: dropped, so the buffer stays bounded.
                let sent = s.sent;
                s.buf.drain(..sent);
                s.sent = 0;
            }
            if s.buf.capacity() == 0 {
                s.buf.reserve(GATHER_BELOW);
            }
            for b in bufs {
                s.buf.extend_from_slice(b);
            }
            return Poll::Ready(Ok(len));
        }
        // Large, or too much gathered: what was gathered goes first, then this write as it is.
        ready!(s.poll_drain(cx))?;
        Pin::new(&mut s.io).poll_write_vectored(cx, bufs)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesced<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write(cx, bufs)
    }

    /// Vectored, so that `h2` hands over a body's frame by reference and it is copied once.
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Owed, not done: [`Driven`] sends after the connection's poll.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(lock(&self.shared).owed_error())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.shared);
        s.owed_error()?;
        ready!(s.poll_send(cx))?;
        s.written = false;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

/// Sends what a [`Coalesced`] connection gathered.
pub struct Flusher<I> {
    shared: Arc<Mutex<Shared<I>>>,
}

impl<I> Clone for Flusher<I> {
    fn clone(&self) -> Self {
        Flusher {
            shared: self.shared.clone(),
        }
    }
}

/// The executor of an HTTP/2 client connection over a [`Coalesced`] I/O. hyper's client drives
/// the `h2` connection in a task of its own, spawned here, not in the `Connection` future it
/// returns: every task it spawns for the connection (that one, and one per request) sends the
/// gathered bytes after its polls. A task that wrote nothing costs a lock and a flag test. The
/// future is boxed before it is spawned (see [`super::SpawnBoxed`]).
pub struct SpawnFlushing<I> {
    flusher: Flusher<I>,
}

impl<I> SpawnFlushing<I> {
    pub fn new(flusher: Flusher<I>) -> Self {
        SpawnFlushing { flusher }
    }
}

impl<I> Clone for SpawnFlushing<I> {
    fn clone(&self) -> Self {
        SpawnFlushing {
            flusher: self.flusher.clone(),
        }
    }
}

impl<I, F> hyper::rt::Executor<F> for SpawnFlushing<I>
where
    I: AsyncWrite + Unpin + Send + 'static,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(Driven::new(fut, self.flusher.clone())));
    }
}

impl<I: AsyncWrite + Unpin> Flusher<I> {
    /// Sends the gathered bytes; a failure is kept for the connection's next write or flush,
    /// and the task woken so that it meets it.
    fn send(&self, cx: &mut Context<'_>) {
        let mut s = lock(&self.shared);
        if s.error.is_some() || !s.written {
            return;
        }
        match s.poll_send(cx) {
            Poll::Ready(Ok(())) => s.written = false,
            Poll::Ready(Err(e)) => {
                s.error = Some(e.kind());
                cx.waker().wake_by_ref();
            }
            // `io` wakes this task when it can take more; the next poll sends the rest.
            Poll::Pending => {}
        }
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 connection's future that sends what the connection wrote after each poll.
    pub struct Driven<F, I> {
        #[pin]
        fut: F,
        flusher: Flusher<I>,
    }
}

impl<F, I> Driven<F, I> {
    pub fn new(fut: F, flusher: Flusher<I>) -> Self {
        Driven { fut, flusher }
    }

    /// The connection's future (to start its graceful shutdown).
    pub fn conn(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().fut
    }
}

impl<F: Future, I: AsyncWrite + Unpin> Future for Driven<F, I> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let r = this.fut.poll(cx);
        this.flusher.send(cx);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An I/O that counts the writes reaching it (the syscalls a socket would make).
    struct Counted<I> {
        io: I,
        writes: Arc<AtomicUsize>,
    }

    impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, buf);
            if matches!(r, Poll::Ready(Ok(_))) {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    fn pattern(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }

    fn is_pattern(body: &[u8], n: usize) -> bool {
        body.len() == n && body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8)
    }

    /// An HTTP/2 server answering `POST /<n>` carrying `n` bytes with `n` bytes (`400` if the
    /// request's body is not the expected one), its writes counted, and a client of it; `server`
    /// and `client` put [`coalesce`] in front of that side. Returns the client's sender and the
    /// server's write count.
    async fn h2_pair(
        server: bool,
        client: bool,
    ) -> (
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        Arc<AtomicUsize>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let server_io = Counted {
            io: server_io,
            writes: writes.clone(),
        };
        let svc =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
                let got = req.into_body().collect().await.map(|b| b.to_bytes());
                let mut rsp = http::Response::new(Full::new(pattern(n)));
                if !got.is_ok_and(|b| is_pattern(&b, n)) {
                    *rsp.status_mut() = http::StatusCode::BAD_REQUEST;
                }
                Ok::<_, std::convert::Infallible>(rsp)
            });
        let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        if server {
            let (io, flusher) = coalesce(server_io);
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::spawn(Driven::new(conn, flusher));
        } else {
            let conn = builder.serve_connection(TokioIo::new(server_io), svc);
            tokio::spawn(conn);
        }
        let sender = if client {
            let (io, flusher) = coalesce(client_io);
            let exec = SpawnFlushing::new(flusher.clone());
            let (sender, conn) = hyper::client::conn::http2::handshake(exec, TokioIo::new(io))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(Driven::new(conn, flusher));
            sender
        } else {
            let (sender, conn) = hyper::client::conn::http2::handshake(
                TokioExecutor::new(),
                TokioIo::new(client_io),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(conn);
            sender
        };
        (sender, writes)
    }

    /// Sends `sizes` at once and checks every body.
    async fn exchange(
        sender: &hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        sizes: &[usize],
    ) {
        let mut calls = tokio::task::JoinSet::new();
        for &n in sizes {
            let mut sender = sender.clone();
            calls.spawn(async move {
                let req = http::Request::post(format!("http://x/{n}"))
                    .body(Full::new(pattern(n)))
                    .unwrap_or_else(|e| panic!("{e}"));
                let rsp = sender
                    .send_request(req)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(rsp.status(), http::StatusCode::OK, "request body of {n}");
                let body = rsp
                    .into_body()
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .to_bytes();
                assert!(is_pattern(&body, n), "answer of {n}: {} bytes", body.len());
            });
        }
        // Bounded: a connection that keeps what it wrote unsent hangs its requests.
        let all = async {
            while let Some(r) = calls.join_next().await {
                r.unwrap_or_else(|e| panic!("{e}"));
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), all)
            .await
            .unwrap_or_else(|_| panic!("requests of {sizes:?} bytes stuck"));
    }

    #[tokio::test]
    async fn answers_of_one_poll_go_out_in_one_write() {
        let sizes = vec![1024; 32];
        let (sender, writes) = h2_pair(false, false).await;
        exchange(&sender, &sizes).await; // warm: settings, window updates
        let before = writes.load(Ordering::Relaxed);
        exchange(&sender, &sizes).await;
        let plain = writes.load(Ordering::Relaxed) - before;

        let (sender, writes) = h2_pair(true, false).await;
        exchange(&sender, &sizes).await;
        let before = writes.load(Ordering::Relaxed);
        exchange(&sender, &sizes).await;
        let gathered = writes.load(Ordering::Relaxed) - before;
        // Without it h2 writes each 1 KiB body on its own; with it, far fewer writes.
        assert!(plain >= 32, "h2 alone: {plain} writes for 32 answers");
        assert!(
            gathered * 4 <= plain,
            "gathered: {gathered} writes, h2 alone {plain}"
        );
        eprintln!("32 answers of 1 KiB: {plain} writes from h2 alone, {gathered} gathered");
    }

    #[tokio::test]
    async fn small_and_large_bodies_arrive_whole_both_ways() {
        let sizes = [
            0, 1, 255, 256, 1024, 8191, 8192, 20_000, 70_000, 300_000, 5, 16_384,
        ];
        for (server, client) in [(true, false), (false, true), (true, true)] {
            let (sender, _) = h2_pair(server, client).await;
            // Twice: the second time over a connection that has grown its windows.
            exchange(&sender, &sizes).await;
            exchange(&sender, &sizes).await;
            // One at a time: a lone request is not left waiting for company.
            for n in sizes {
                exchange(&sender, &[n]).await;
            }
        }
    }
}
