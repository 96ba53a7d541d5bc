//! Two clocks for an HTTP/1 server connection where hyper has one.
//!
//! hyper's header-read timeout starts when the connection begins to wait for a request head,
//! which on a keep-alive connection is right after the previous answer: it is also the
//! connection's idle timeout. At 10 s that is shorter than the pools of the clients a sidecar
//! serves (Go and hyper keep idle connections 90 s, OkHttp 5 min, Java's HttpClient 20 min,
//! urllib3 without limit), so each of them now and then sent a request on a connection the proxy
//! was closing at that moment, and lost it: a transport error the app sees as a failed request
//! (found by `cli/tests/demo.rs`: one of the ~6,000 requests of a CI run).
//!
//! Here the timer given to hyper tells the two waits apart. The first head of a connection has
//! [`HEADER_READ_TIMEOUT`](super::HEADER_READ_TIMEOUT) from when hyper starts waiting, as before.
//! A later head's wait is idle until the connection's first byte after the previous exchange
//! arrives; idle, the connection lives the idle timeout ([`KEEP_ALIVE_IDLE_TIMEOUT`] unless
//! configured); from that first byte on, the head has the header-read timeout (slowloris
//! protection is unchanged). [`Watched`] notes reads; [`HeadTimer`] arms and re-arms.
//!
//! One corner: bytes of the next head that arrived with the previous request (pipelining) were
//! read before the wait began, so that wait counts as idle until another byte comes; such a
//! client holds the connection no longer than an idle one could.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long an idle HTTP/1 keep-alive connection from a client is kept by default
/// (`WEFT_PROXY_HTTP1_IDLE_TIMEOUT`; [`weft_common::reliability::HTTP1_IDLE_TIMEOUT`], an hour).
pub const KEEP_ALIVE_IDLE_TIMEOUT: Duration = weft_common::reliability::HTTP1_IDLE_TIMEOUT;

/// What the connection's reads and its timer share.
#[derive(Debug, Default)]
struct Watch {
    /// Set by a read that brought bytes; cleared when hyper begins to wait for a head.
    read: AtomicBool,
    /// Whether hyper already waited for a head on this connection.
    waited: AtomicBool,
}

/// A connection whose reads are noted for its [`HeadTimer`].
#[derive(Debug)]
pub struct Watched<I> {
    io: I,
    watch: Arc<Watch>,
}

impl<I> Watched<I> {
    /// The connection back (to answer `408` on it once hyper let go of it).
    pub fn into_inner(self) -> I {
        self.io
    }
}

/// Wraps `io` and returns it with the timer to give hyper's HTTP/1 server for it; `idle` is how
/// long the connection may wait for a later request's first byte.
pub fn watch<I>(io: I, idle: Duration) -> (Watched<I>, HeadTimer) {
    let watch = Arc::new(Watch::default());
    let timer = HeadTimer {
        watch: watch.clone(),
        idle,
    };
    (Watched { io, watch }, timer)
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            // A plain store: only this connection's task reads and writes the flag.
            self.watch.read.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The timer of one HTTP/1 server connection. hyper uses an HTTP/1 server's timer for the
/// header-read timeout only: every `sleep_until` is the start of a wait for a request head, with
/// the deadline the header-read timeout gives it.
#[derive(Debug)]
pub struct HeadTimer {
    watch: Arc<Watch>,
    idle: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, so that hyper's deadlines and the sleeps agree (also when tests pause it).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let now = self.now();
        self.watch.read.store(false, Ordering::Relaxed);
        let later = self.watch.waited.swap(true, Ordering::Relaxed);
        let (until, idle) = if later {
            (now + self.idle, true)
        } else {
            (deadline, false)
        };
        Box::pin(HeadSleep {
            sleep: tokio::time::sleep_until(until.into()),
            watch: self.watch.clone(),
            head: deadline.saturating_duration_since(now),
            idle,
        })
    }
}

pin_project_lite::pin_project! {
    /// One wait for a request head: idle (until the first byte, at the idle deadline) or the head
    /// itself (at the header-read deadline).
    struct HeadSleep {
        #[pin]
        sleep: tokio::time::Sleep,
        watch: Arc<Watch>,
        head: Duration,
        idle: bool,
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // hyper polls this right after a read left the head incomplete, so the first byte of
        // the head is seen here within that poll.
        if *this.idle && this.watch.read.load(Ordering::Relaxed) {
            *this.idle = false;
            let deadline = tokio::time::Instant::now() + *this.head;
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;
    use tokio::io::AsyncReadExt;

    /// Whether `sleep` has fired (polled once).
    async fn done(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_head_has_the_head_timeout_and_a_later_one_waits_idle_first() {
        let (client, server) = tokio::io::duplex(64);
        let (mut io, timer) = watch(server, Duration::from_secs(100));
        let head = Duration::from_secs(10);

        // The first wait of a connection: the header-read deadline, bytes or not.
        let mut first = timer.sleep(head);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!done(&mut first).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(done(&mut first).await);

        // A later wait with nothing read: idle, long past the head timeout.
        let mut later = timer.sleep(head);
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(
            !done(&mut later).await,
            "an idle keep-alive connection is kept"
        );

        // The first byte arrives: from now on the head has the head timeout.
        let mut client = client;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"G")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut byte = [0u8; 1];
        let n = io.read(&mut byte).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 1);
        assert!(!done(&mut later).await);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!done(&mut later).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            done(&mut later).await,
            "a slow head is cut at the head timeout"
        );

        // Idle with no byte: closed at the idle timeout.
        let mut idle = timer.sleep(head);
        tokio::time::advance(Duration::from_secs(99)).await;
        assert!(!done(&mut idle).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            done(&mut idle).await,
            "an idle connection ends at the idle timeout"
        );
    }
}
