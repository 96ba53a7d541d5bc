//! The streams of an HTTP/2 server connection run inside the connection's own task.
//!
//! hyper's HTTP/2 server hands every stream it accepts to its executor as a future of its own
//! (the service's future, then the response's body piped out), and the usual executor spawns
//! it: a task per request, scheduled once when it is spawned and woken again when its upstream
//! answers, and a wake-up of the connection's task each time the stream hands `h2` a frame to
//! send. With the proxy's default single-threaded runtime all of those tasks take turns on one
//! thread anyway, so the tasks buy nothing there but their cost (issue #20: the mesh link's
//! server proxy spent 4.5 % of its instructions in hyper's HTTP/2 glue and 4.4 % in tokio).
//!
//! [`StreamExec::local`] is an executor that keeps the futures hyper gives it, and [`Local`]
//! polls them in the task that polls the connection, each side only when its own waker was
//! woken: the streams that are ready (a new one, one whose upstream answered), then the
//! connection if they handed it frames or it has I/O, round again until neither has more. So the
//! frames of every stream answered in one task poll go out together, without a round through the
//! scheduler, and neither side is polled for nothing. A stream's future still runs
//! to its end when the connection fails first, as a spawned one would: the request's handler
//! finishes its accounting (metrics, access log) even when the client has gone.
//!
//! The mesh link's client side uses the same pair (`outbound::pool`): hyper's HTTP/2 client
//! spawns the `h2` connection and a future per request that awaits its answer, and these run in
//! the task that polls hyper's client connection.
//!
//! In a multi-threaded runtime the streams are spawned as before ([`StreamExec::spawn`]): there
//! one busy HTTP/2 client (a gRPC channel is one connection) can use every worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many times one poll of [`Local`] goes round (connection, then streams) before it lets the
/// runtime run other tasks: a connection that always has more to do does not starve the rest.
const ROUNDS_PER_POLL: usize = 16;

/// The futures handed over since [`Local`] last took them.
#[derive(Default)]
struct Queue {
    new: Mutex<Vec<StreamFuture>>,
    /// `new` may hold some: [`Local`] looks here, not at the lock, on each of its rounds.
    any: AtomicBool,
}

impl Queue {
    fn push(&self, fut: StreamFuture) {
        self.lock().push(fut);
        self.any.store(true, Ordering::SeqCst);
    }

    /// Whatever was handed over since the last call.
    fn take(&self) -> Vec<StreamFuture> {
        if self.any.swap(false, Ordering::SeqCst) {
            std::mem::take(&mut *self.lock())
        } else {
            Vec::new()
        }
    }

    fn any(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StreamFuture>> {
        // Taken only to push or to swap a vector: a panic cannot leave it half-changed.
        self.new
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// hyper's executor for one HTTP/2 server connection: its streams' futures are kept for the
/// connection's [`Local`] driver, or spawned as tasks of their own.
#[derive(Clone)]
pub struct StreamExec {
    queue: Option<Arc<Queue>>,
}

impl StreamExec {
    /// Streams run in the connection's task: poll the connection through [`Local::new`] with the
    /// returned executor, or they never run.
    pub fn local() -> Self {
        StreamExec {
            queue: Some(Arc::default()),
        }
    }

    /// Streams are spawned as tasks (hyper's default behaviour).
    pub fn spawn() -> Self {
        StreamExec { queue: None }
    }

    /// Whether the futures are kept for a [`Local`] driver.
    pub fn is_local(&self) -> bool {
        self.queue.is_some()
    }

    /// [`StreamExec::local`] on a single-threaded runtime, [`StreamExec::spawn`] otherwise (or
    /// outside a runtime, where nothing could be spawned anyway).
    pub fn for_current_runtime() -> Self {
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => Self::local(),
            _ => Self::spawn(),
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        match &self.queue {
            Some(q) => q.push(Box::pin(fut)),
            // Boxed for the same reason as `super::SpawnBoxed`: the future moves as a pointer.
            None => {
                tokio::spawn(Box::pin(fut));
            }
        }
    }
}

/// What woke [`Local`], and whether it is polling. A wake-up that comes while it is polling only
/// marks what is ready (it goes round again before it returns); one that comes after also wakes
/// the task.
struct Signal {
    polling: AtomicBool,
    /// The connection's waker was woken: it has frames to read or write, or a stream handed it
    /// an answer.
    conn: AtomicBool,
    /// A stream's waker was woken (through `FuturesUnordered`, which then knows which).
    streams: AtomicBool,
    task: AtomicWaker,
}

/// The waker of one side: the connection's, or the streams' set's.
struct Flag {
    signal: Arc<Signal>,
    conn: bool,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let s = &self.signal;
        // Marked first, then `polling` read: `Local` clears `polling` before its last look at
        // the marks, so either it sees the mark or this sees `polling` clear and wakes the task
        // (both, at worst: a spare poll).
        if self.conn {
            s.conn.store(true, Ordering::SeqCst);
        } else {
            s.streams.store(true, Ordering::SeqCst);
        }
        if !s.polling.load(Ordering::SeqCst) {
            s.task.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// Polls an HTTP/2 server connection `C` and the streams its [`StreamExec::local`] executor
    /// was given, in one task. It finishes when the connection has finished and every stream's
    /// future has run to its end.
    ///
    /// Each side is polled only when its own waker was woken: a stream whose upstream answered
    /// is polled without a look at the connection first, and the connection once after, when the
    /// stream handed it the answer.
    pub struct Local<C, O> {
        #[pin]
        conn: Option<C>,
        out: Option<O>,
        streams: FuturesUnordered<StreamFuture>,
        queue: Option<Arc<Queue>>,
        signal: Arc<Signal>,
        conn_waker: Waker,
        streams_waker: Waker,
    }
}

impl<C: Future> Local<C, C::Output> {
    /// `exec` is the executor `conn`'s builder was given.
    pub fn new(conn: C, exec: &StreamExec) -> Self {
        let signal = Arc::new(Signal {
            polling: AtomicBool::new(false),
            // Polled first thing.
            conn: AtomicBool::new(true),
            streams: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let flag = |conn| {
            Waker::from(Arc::new(Flag {
                signal: signal.clone(),
                conn,
            }))
        };
        Local {
            conn: Some(conn),
            out: None,
            streams: FuturesUnordered::new(),
            queue: exec.queue.clone(),
            conn_waker: flag(true),
            streams_waker: flag(false),
            signal,
        }
    }

    /// The connection's future (to start its graceful shutdown), until it has finished. It is
    /// polled at the next poll whether or not it was woken, since the caller may have changed it.
    pub fn conn(self: Pin<&mut Self>) -> Option<Pin<&mut C>> {
        let this = self.project();
        this.signal.conn.store(true, Ordering::SeqCst);
        this.conn.as_pin_mut()
    }

    /// How many streams' futures are running here (for tests).
    #[cfg(test)]
    fn streams(&self) -> usize {
        self.streams.len()
    }
}

impl<C: Future> Future for Local<C, C::Output> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        let signal = &**this.signal;
        signal.task.register(cx.waker());
        signal.polling.store(true, Ordering::SeqCst);
        let queued = |q: &Option<Arc<Queue>>| q.as_ref().is_some_and(|q| q.any());
        for _ in 0..ROUNDS_PER_POLL {
            let mut polled = false;
            // The streams first: what they hand the connection goes out in this round's poll of
            // it.
            if signal.streams.swap(false, Ordering::SeqCst) || queued(this.queue) {
                if let Some(q) = this.queue.as_ref() {
                    // Taken out under the lock, pushed after it: a stream's future handing over
                    // another (an upgraded stream's task) takes the lock itself.
                    for fut in q.take() {
                        this.streams.push(fut);
                    }
                }
                // Runs every stream that is ready; `FuturesUnordered` yields (and wakes the
                // streams' waker) after a round through all of them, so this ends.
                let mut scx = Context::from_waker(this.streams_waker);
                while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(&mut scx) {}
                polled = true;
            }
            if this.conn.is_some() && signal.conn.swap(false, Ordering::SeqCst) {
                let mut ccx = Context::from_waker(this.conn_waker);
                if let Some(conn) = this.conn.as_mut().as_pin_mut() {
                    if let Poll::Ready(out) = conn.poll(&mut ccx) {
                        this.conn.set(None);
                        *this.out = Some(out);
                    }
                }
                polled = true;
            }
            if polled {
                if tokio::task::coop::has_budget_remaining() {
                    continue;
                }
                // The task's budget is spent (tokio's resources would answer `Pending` and wake
                // it): going round again would only spin; the runtime polls it again soon.
                break;
            }
            signal.polling.store(false, Ordering::SeqCst);
            let conn_woken = this.conn.is_some() && signal.conn.load(Ordering::SeqCst);
            if conn_woken || signal.streams.load(Ordering::SeqCst) || queued(this.queue) {
                // Woken between the looks above and `polling` clearing: go round again.
                signal.polling.store(true, Ordering::SeqCst);
                continue;
            }
            if this.conn.is_none() && this.streams.is_empty() {
                if let Some(out) = this.out.take() {
                    return Poll::Ready(out);
                }
            }
            return Poll::Pending;
        }
        // Still busy after all the rounds, or out of budget: other tasks get their turn, this
        // one comes back (the marks stay, so it picks up where it stopped).
        signal.polling.store(false, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;

    /// A connection stand-in that hands `n` futures to the executor on its first poll and
    /// finishes once `done` is set.
    struct FakeConn {
        exec: StreamExec,
        n: usize,
        ran: Arc<AtomicUsize>,
        done: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for FakeConn {
        type Output = &'static str;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            for _ in 0..std::mem::take(&mut self.n) {
                let ran = self.ran.clone();
                self.exec.execute(async move {
                    tokio::task::yield_now().await;
                    ran.fetch_add(1, Ordering::SeqCst);
                });
            }
            if self.done.load(Ordering::SeqCst) {
                return Poll::Ready("closed");
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Polls `f` once in the calling task: whether it is still pending.
    async fn pending_once<F: Future>(mut f: Pin<&mut F>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_pending())).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn streams_run_in_the_connection_task_and_outlive_the_connection() {
        let exec = StreamExec::for_current_runtime();
        assert!(
            exec.queue.is_some(),
            "a current-thread runtime runs streams locally"
        );
        let ran = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(true));
        let conn = FakeConn {
            exec: exec.clone(),
            n: 50,
            ran: ran.clone(),
            done: done.clone(),
            waker: Arc::default(),
        };
        // The connection finishes on its first poll, having handed over 50 streams: `Local`
        // finishes only once they have all run to their end.
        let out = Local::new(conn, &exec).await;
        assert_eq!(out, "closed");
        assert_eq!(ran.load(Ordering::SeqCst), 50);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_wake_up_from_another_task_is_not_lost() {
        let exec = StreamExec::local();
        let ran = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let conn = FakeConn {
            exec: exec.clone(),
            n: 3,
            ran: ran.clone(),
            done: done.clone(),
            waker: waker.clone(),
        };
        let mut local = Box::pin(Local::new(conn, &exec));
        // First poll: the streams are taken and run (each yields once, so it takes rounds).
        assert!(pending_once(local.as_mut()).await);
        while ran.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
            assert!(pending_once(local.as_mut()).await);
        }
        assert_eq!(local.streams(), 0);
        // Another task finishes the connection and wakes it through the waker it kept.
        let (d, w) = (done.clone(), waker.clone());
        tokio::spawn(async move {
            d.store(true, Ordering::SeqCst);
            if let Some(w) = w.lock().unwrap().take() {
                w.wake();
            }
        })
        .await
        .unwrap();
        assert_eq!(local.await, "closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_threaded_runtime_spawns_streams() {
        let exec = StreamExec::for_current_runtime();
        assert!(exec.queue.is_none());
        let (tx, rx) = tokio::sync::oneshot::channel();
        exec.execute(async move {
            let _ = tx.send(());
        });
        rx.await.expect("the spawned stream ran");
    }
}
