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
use std::task::{ready, Context, Poll, Waker};

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
    /// The task `io` will wake when it can take more: the last one whose write, flush or
    /// shutdown it left pending. `io` keeps one waker per direction, so a second task meeting a
    /// full socket would take that wake-up from the first; instead it leaves the sending to the
    /// first (see [`Flusher::send`]), and a task displaced anyway (by `h2`'s own writes) is woken.
    blocked: Option<Waker>,
    /// The [`Coalesced`] end is gone: `h2` has dropped the connection, nobody waits to send.
    closed: bool,
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

    /// Notes who `io` will wake after an operation on it by the task of `cx`: that task if the
    /// operation is pending, nobody if it completed. A task that was waiting before and is no
    /// longer the one `io` will wake is woken to look again (a spare wake-up costs one poll; a
    /// lost one leaves bytes unsent until something else wakes a task of the connection).
    fn track<T>(&mut self, cx: &Context<'_>, r: Poll<T>) -> Poll<T> {
        let me = cx.waker();
        if let Some(old) = self.blocked.take() {
            if !old.will_wake(me) {
                old.wake();
            }
        }
        if r.is_pending() {
            self.blocked = Some(me.clone());
        }
        r
    }

    /// Runs `op` on `io` (which may use `ready!`) and notes who `io` will wake ([`Shared::track`]).
    fn tracked<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut Self, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let r = op(self, cx);
        self.track(cx, r)
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
        blocked: None,
        closed: false,
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
        s.tracked(cx, |s, cx| {
            ready!(s.poll_drain(cx))?;
            Pin::new(&mut s.io).poll_write_vectored(cx, bufs)
        })
    }
}

impl<I> Drop for Coalesced<I> {
    /// `h2` let go of the connection: a task held back to send its last bytes is let go too.
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.closed = true;
        if let Some(w) = s.blocked.take() {
            w.wake();
        }
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
        s.tracked(cx, |s, cx| {
            ready!(s.poll_send(cx))?;
            s.written = false;
            Pin::new(&mut s.io).poll_shutdown(cx)
        })
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
    /// and the task woken so that it meets it. Pending when the socket is full and this task is
    /// the one it will wake: the task must then be polled again (it sends the rest then). Ready
    /// without sending when another task already waits for the socket: that one sends what was
    /// gathered since, and this task keeps out of its way (taking its wake-up would leave the
    /// bytes unsent if this task then finished).
    fn send(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.shared);
        if s.error.is_some() || !s.written {
            return Poll::Ready(());
        }
        if s.blocked.as_ref().is_some_and(|w| !w.will_wake(cx.waker())) {
            return Poll::Ready(());
        }
        match s.tracked(cx, Shared::poll_send) {
            Poll::Ready(Ok(())) => s.written = false,
            Poll::Ready(Err(e)) => {
                s.error = Some(e.kind());
                cx.waker().wake_by_ref();
            }
            // Once `h2` has dropped the connection nobody writes again: no reason to wait.
            Poll::Pending if s.closed => {}
            Poll::Pending => return Poll::Pending,
        }
        Poll::Ready(())
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 connection's future that sends what the connection wrote after each poll.
    ///
    /// When the future finishes while its send waits for the socket (a client's request task,
    /// say), `Driven` finishes only once the bytes are out or the connection is gone: it is the
    /// task the socket will wake, and nobody else would send them.
    ///
    /// `O` is `F`'s output, a parameter of its own: naming it `F::Output` in the struct makes
    /// the compiler fail to prove `Send` for the `async` blocks that hold a `Driven`.
    pub struct Driven<F, O, I> {
        #[pin]
        fut: Option<F>,
        out: Option<O>,
        flusher: Flusher<I>,
        // Its last send was left pending: the socket will wake this task.
        waiting: bool,
    }

    impl<F, O, I> PinnedDrop for Driven<F, O, I> {
        /// A task dropped while the socket was to wake it (its runtime shutting down) hands the
        /// sending on: the next task to poll sends, rather than leaving it to a wake-up that
        /// cannot come.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.waiting {
                if let Some(w) = lock(&this.flusher.shared).blocked.take() {
                    w.wake();
                }
            }
        }
    }
}

impl<F: Future, I> Driven<F, F::Output, I> {
    pub fn new(fut: F, flusher: Flusher<I>) -> Self {
        Driven {
            fut: Some(fut),
            out: None,
            flusher,
            waiting: false,
        }
    }

    /// The connection's future (to start its graceful shutdown), until it has finished.
    pub fn conn(self: Pin<&mut Self>) -> Option<Pin<&mut F>> {
        self.project().fut.as_pin_mut()
    }
}

impl<F: Future, I: AsyncWrite + Unpin> Future for Driven<F, F::Output, I> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        if let Some(fut) = this.fut.as_mut().as_pin_mut() {
            if let Poll::Ready(out) = fut.poll(cx) {
                // Dropped now: if it held the connection, the connection is closed.
                this.fut.set(None);
                *this.out = Some(out);
            }
        }
        let sent = this.flusher.send(cx);
        *this.waiting = sent.is_pending();
        match this.out.take() {
            Some(out) if sent.is_ready() => Poll::Ready(out),
            out => {
                *this.out = out;
                Poll::Pending
            }
        }
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

    /// A socket whose writes wait until it is opened and which, like a tokio socket, keeps one
    /// waker for writing: the last task it turned away.
    #[derive(Clone, Default)]
    struct Gate(Arc<Mutex<GateState>>);

    #[derive(Default)]
    struct GateState {
        open: bool,
        waker: Option<Waker>,
        out: Vec<u8>,
    }

    impl Gate {
        fn open(&self) {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            g.open = true;
            if let Some(w) = g.waker.take() {
                w.wake();
            }
        }
        fn out(&self) -> Vec<u8> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).out.clone()
        }
        /// Waits (bounded) until `want` has arrived.
        async fn arrives(&self, want: &[u8]) {
            for _ in 0..1000 {
                if self.out() == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("{:?} never went out; {:?} did", want, self.out());
        }
    }

    impl AsyncRead for Gate {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Gate {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if !g.open {
                g.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            g.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn gather(conn: &mut Coalesced<Gate>, bytes: &[u8]) {
        let n = std::future::poll_fn(|cx| Pin::new(&mut *conn).poll_write(cx, bytes))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, bytes.len());
    }

    /// Waits for `task` to finish, failing with `hung` after 10 s (a hang fails the test
    /// instead of blocking the suite).
    async fn joined(task: tokio::task::JoinHandle<()>, hung: &str) {
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("{hung}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A request task of a client connection finishing while the socket is full still sends
    /// what the connection gathered: nobody else would until the next request or ping.
    #[tokio::test]
    async fn a_task_finishing_on_a_full_socket_sends_its_bytes_first() {
        let gate = Gate::default();
        let (mut conn, flusher) = coalesce(gate.clone());
        gather(&mut conn, b"headers").await;
        let task = tokio::spawn(Driven::new(async {}, flusher));
        tokio::task::yield_now().await;
        gate.open();
        gate.arrives(b"headers").await;
        joined(task, "the task never finished").await;
        drop(conn);
    }

    /// A second task meeting the full socket does not take the first one's wake-up (a tokio
    /// socket wakes only the last task it turned away): the first still sends, after the
    /// second has finished.
    #[tokio::test]
    async fn a_second_task_leaves_the_socket_to_the_first() {
        let gate = Gate::default();
        let (conn, flusher) = coalesce(gate.clone());
        let conn = Arc::new(tokio::sync::Mutex::new(conn));
        // The connection's task: writes, then lives on (as hyper's does between requests).
        let first = {
            let conn = conn.clone();
            async move {
                gather(&mut *conn.lock().await, b"one ").await;
                std::future::pending::<()>().await
            }
        };
        let first = tokio::spawn(Driven::new(first, flusher.clone()));
        tokio::task::yield_now().await;
        // A request's task: gathers more and finishes.
        let second = {
            let conn = conn.clone();
            async move { gather(&mut *conn.lock().await, b"two").await }
        };
        let second = tokio::spawn(Driven::new(second, flusher));
        joined(second, "the second task waited on the first's socket").await;
        gate.open();
        gate.arrives(b"one two").await;
        first.abort();
    }

    /// A task dropped while the socket was to wake it (a runtime shutting down) does not leave
    /// the connection's later bytes waiting for that wake-up: the next task to poll sends them.
    #[tokio::test]
    async fn a_task_dropped_while_waiting_hands_the_sending_on() {
        let gate = Gate::default();
        let (mut conn, flusher) = coalesce(gate.clone());
        gather(&mut conn, b"one ").await;
        let first = tokio::spawn(Driven::new(std::future::pending::<()>(), flusher.clone()));
        tokio::task::yield_now().await;
        first.abort();
        let _ = first.await;
        // The socket drains, but the task it would have woken is gone.
        gate.0.lock().unwrap_or_else(|e| e.into_inner()).open = true;
        gather(&mut conn, b"two").await;
        let second = tokio::spawn(Driven::new(async {}, flusher));
        gate.arrives(b"one two").await;
        second.await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// A task held back to send is let go when the connection is dropped (a socket that never
    /// drains does not keep it forever).
    #[tokio::test]
    async fn a_task_waiting_to_send_is_let_go_with_the_connection() {
        let gate = Gate::default();
        let (mut conn, flusher) = coalesce(gate.clone());
        gather(&mut conn, b"never").await;
        let task = tokio::spawn(Driven::new(async {}, flusher));
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "finished with its bytes unsent");
        drop(conn);
        joined(task, "held after the connection was dropped").await;
        assert!(gate.out().is_empty());
    }
}
