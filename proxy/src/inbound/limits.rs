//! What protects the app on an inbound port (issue #16): a concurrency limit with a bounded
//! queue, and local rate limits (token buckets, for all callers together and per calling
//! identity). Order of checks and defaults: `docs/reliability.md`, section *inbound*.
//!
//! The state (requests in flight, waiting requests, bucket levels) lives in one [`PortLimits`]
//! per inbound port, kept by [`Limiters`] across config pushes: a push that does not change a
//! port's limits changes nothing here, and one that does changes the limits in place (requests
//! in flight keep counting, buckets keep their level, clamped to the new burst). A port that
//! leaves the policy loses its state.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, watch};

use crate::config::{Config, InboundLimits, RateLimit};
use crate::http::{Body, BoxError};
use crate::metrics::{LabelValue, Metrics};

/// Most calling identities with a bucket of their own on one port. Idle buckets (refilled to
/// their burst, so equal to a new one) are evicted to make room; beyond, new identities share
/// one overflow bucket (never a fresh, full one: the cap cannot be used to escape the limit).
pub const MAX_IDENTITY_BUCKETS: usize = 4096;
/// Shortest time between two sweeps of a full identity map.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a request was shed (the `weft-reason` header and the metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// Every slot taken and no queue (`max_pending_requests` 0).
    Concurrency,
    /// Every slot and every queue place taken.
    Pending,
    /// Waited `queue_timeout` without getting a slot.
    QueueTimeout,
}

impl Shed {
    pub fn reason(self) -> &'static str {
        match self {
            Shed::Concurrency => "concurrency",
            Shed::Pending => "pending",
            Shed::QueueTimeout => "queue-timeout",
        }
    }
}

/// Which bucket refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Total,
    Identity,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Total => "total",
            Scope::Identity => "identity",
        }
    }
}

/// A rate-limited request: which bucket, and when it would have a token again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let secs = if self.retry_after.subsec_nanos() > 0 {
            secs.saturating_add(1)
        } else {
            secs
        };
        secs.max(1)
    }
}

/// A token bucket's level; the rate and burst are given at each use, so that a config push
/// that changes them keeps the level.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: &RateLimit, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, limit: &RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let burst = f64::from(limit.burst);
        self.tokens = (self.tokens + elapsed * limit.requests_per_second).min(burst);
        self.at = now;
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / limit.requests_per_second;
        Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(u64::from(u32::MAX))))
    }

    fn give_back(&mut self, limit: &RateLimit) {
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.burst));
    }

    fn is_full(&mut self, limit: &RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        self.tokens >= f64::from(limit.burst)
    }
}

/// A bucket for one rate limit, absent when the port has none.
#[derive(Debug, Default)]
struct TotalBucket {
    limit: Option<RateLimit>,
    bucket: Option<Bucket>,
}

impl TotalBucket {
    fn set_limit(&mut self, limit: Option<RateLimit>) {
        self.limit = limit;
        if limit.is_none() {
            self.bucket = None;
        }
    }

    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        self.bucket
            .get_or_insert_with(|| Bucket::full(&limit, now))
            .take(&limit, now)
    }
}

/// One bucket per calling identity (bounded, see [`MAX_IDENTITY_BUCKETS`]); unauthenticated
/// callers share one.
#[derive(Debug)]
struct IdentityBuckets {
    limit: Option<RateLimit>,
    cap: usize,
    by_identity: HashMap<Arc<str>, Bucket>,
    unauthenticated: Option<Bucket>,
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
}

/// Which bucket of [`IdentityBuckets`] a request used.
#[derive(Clone, Debug)]
enum Taken {
    None,
    Identity(Arc<str>),
    Unauthenticated,
    Overflow,
}

impl IdentityBuckets {
    fn new(cap: usize) -> Self {
        IdentityBuckets {
            limit: None,
            cap,
            by_identity: HashMap::new(),
            unauthenticated: None,
            overflow: None,
            last_sweep: None,
        }
    }

    fn set_limit(&mut self, limit: Option<RateLimit>) {
        self.limit = limit;
        if limit.is_none() {
            self.by_identity = HashMap::new();
            self.unauthenticated = None;
            self.overflow = None;
        }
    }

    /// Drops the buckets that are full again (no state worth keeping).
    fn sweep(&mut self, limit: &RateLimit, now: Instant) {
        self.by_identity.retain(|_, b| !b.is_full(limit, now));
        self.last_sweep = Some(now);
    }

    fn take(&mut self, peer: Option<&Arc<str>>, now: Instant) -> Result<Taken, Duration> {
        let Some(limit) = self.limit else {
            return Ok(Taken::None);
        };
        let Some(peer) = peer else {
            let b = self
                .unauthenticated
                .get_or_insert_with(|| Bucket::full(&limit, now));
            return b.take(&limit, now).map(|()| Taken::Unauthenticated);
        };
        if let Some(b) = self.by_identity.get_mut(peer) {
            return b.take(&limit, now).map(|()| Taken::Identity(peer.clone()));
        }
        if self.by_identity.len() >= self.cap {
            let due = self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
            if due {
                self.sweep(&limit, now);
            }
        }
        if self.by_identity.len() < self.cap {
            let mut b = Bucket::full(&limit, now);
            let taken = b.take(&limit, now);
            self.by_identity.insert(peer.clone(), b);
            return taken.map(|()| Taken::Identity(peer.clone()));
        }
        let b = self
            .overflow
            .get_or_insert_with(|| Bucket::full(&limit, now));
        b.take(&limit, now).map(|()| Taken::Overflow)
    }

    fn give_back(&mut self, taken: Taken) {
        let Some(limit) = self.limit else {
            return;
        };
        let bucket = match taken {
            Taken::None => None,
            Taken::Identity(id) => self.by_identity.get_mut(&id),
            Taken::Unauthenticated => self.unauthenticated.as_mut(),
            Taken::Overflow => self.overflow.as_mut(),
        };
        if let Some(b) = bucket {
            b.give_back(&limit);
        }
    }
}

/// The concurrency limit of a port: slots, and a bounded queue of requests waiting for one.
#[derive(Debug)]
struct Slots {
    /// 0: unlimited.
    max: u32,
    max_pending: u32,
    queue_timeout: Duration,
    in_flight: u32,
    next_waiter: u64,
    /// Waiting requests, oldest first; a slot is handed over by sending on the channel (the
    /// in-flight count then stays as it is).
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Slots {
    fn has_room(&self) -> bool {
        self.max == 0 || self.in_flight < self.max
    }

    /// Hands free slots to waiting requests (after a release or a raised limit).
    fn hand_over(&mut self, gauge: &Gauge) {
        while self.has_room() {
            let Some((_, tx)) = self.waiters.pop_front() else {
                return;
            };
            if tx.send(()).is_ok() {
                self.in_flight += 1;
                gauge.inc();
            }
        }
    }
}

/// The state of one inbound port: see the module documentation.
#[derive(Debug)]
pub struct PortLimits {
    /// The limits last applied (`None`: nothing limited).
    applied: Mutex<Option<InboundLimits>>,
    slots: Mutex<Slots>,
    /// Whether either rate limit is set (lets unlimited ports skip the buckets' locks).
    rate_limited: AtomicBool,
    total: Mutex<TotalBucket>,
    per_identity: Mutex<IdentityBuckets>,
    in_flight: Gauge,
}

/// A slot held by a request; given back when dropped (attach it to the response body with
/// [`hold_until_done`]).
#[derive(Debug)]
pub struct Permit {
    port: Arc<PortLimits>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.port.release();
    }
}

/// A request waiting in the queue; leaves it when dropped (timed out or abandoned), handing
/// back a slot it was given in the meantime.
struct Waiting {
    port: Arc<PortLimits>,
    id: u64,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut slots = lock(&self.port.slots);
        if let Some(i) = slots.waiters.iter().position(|(id, _)| *id == self.id) {
            slots.waiters.remove(i);
        } else {
            // A slot was handed over as the wait ended: give it back.
            slots.in_flight = slots.in_flight.saturating_sub(1);
            self.port.in_flight.dec();
            slots.hand_over(&self.port.in_flight);
        }
    }
}

impl PortLimits {
    fn new(in_flight: Gauge, identity_cap: usize) -> Self {
        PortLimits {
            applied: Mutex::new(None),
            slots: Mutex::new(Slots {
                max: 0,
                max_pending: 0,
                queue_timeout: Duration::ZERO,
                in_flight: 0,
                next_waiter: 0,
                waiters: VecDeque::new(),
            }),
            rate_limited: AtomicBool::new(false),
            total: Mutex::new(TotalBucket::default()),
            per_identity: Mutex::new(IdentityBuckets::new(identity_cap)),
            in_flight,
        }
    }

    /// Applies `limits` in place if they differ from those in force.
    fn apply(&self, limits: Option<&InboundLimits>) {
        let mut applied = lock(&self.applied);
        if applied.as_ref() == limits {
            return;
        }
        {
            let mut slots = lock(&self.slots);
            slots.max = limits.map_or(0, |l| l.max_concurrent_requests);
            slots.max_pending = limits.map_or(0, |l| l.max_pending_requests);
            slots.queue_timeout = limits.map_or(Duration::ZERO, |l| l.queue_timeout);
            slots.hand_over(&self.in_flight);
            // A smaller queue: the newest waiters beyond it are shed when their wait ends.
        }
        let total = limits.and_then(|l| l.rate_limit);
        let per_identity = limits.and_then(|l| l.rate_limit_per_identity);
        lock(&self.total).set_limit(total);
        lock(&self.per_identity).set_limit(per_identity);
        self.rate_limited
            .store(total.is_some() || per_identity.is_some(), Ordering::Release);
        *applied = limits.cloned();
    }

    /// Takes a token from the caller's bucket and from the port's, or says which refused. A
    /// request refused by the total bucket gives its identity token back.
    pub fn rate_limit(&self, peer: Option<&Arc<str>>) -> Result<(), Limited> {
        if !self.rate_limited.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = Instant::now();
        let taken = lock(&self.per_identity)
            .take(peer, now)
            .map_err(|retry_after| Limited {
                scope: Scope::Identity,
                retry_after,
            })?;
        if let Err(retry_after) = lock(&self.total).take(now) {
            lock(&self.per_identity).give_back(taken);
            return Err(Limited {
                scope: Scope::Total,
                retry_after,
            });
        }
        Ok(())
    }

    /// A slot for a request, at once or after waiting in the queue for at most
    /// `min(queue_timeout, wait_limit)`. `Err(None)` when `wait_limit` (the request's deadline)
    /// ran out first.
    pub async fn acquire(
        self: &Arc<Self>,
        wait_limit: Option<Duration>,
    ) -> Result<Permit, Option<Shed>> {
        let (rx, id, queue_timeout) = {
            let mut slots = lock(&self.slots);
            if slots.has_room() {
                slots.in_flight += 1;
                self.in_flight.inc();
                return Ok(Permit { port: self.clone() });
            }
            if slots.waiters.len() >= slots.max_pending as usize {
                return Err(Some(if slots.max_pending == 0 {
                    Shed::Concurrency
                } else {
                    Shed::Pending
                }));
            }
            let (tx, rx) = oneshot::channel();
            let id = slots.next_waiter;
            slots.next_waiter = slots.next_waiter.wrapping_add(1);
            slots.waiters.push_back((id, tx));
            (rx, id, slots.queue_timeout)
        };
        let mut waiting = Waiting {
            port: self.clone(),
            id,
            done: false,
        };
        let (limit, by_deadline) = match wait_limit {
            Some(d) if d < queue_timeout => (d, true),
            _ => (queue_timeout, false),
        };
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(())) => {
                waiting.done = true;
                Ok(Permit { port: self.clone() })
            }
            // Timed out (or, impossibly, the sender vanished): leave the queue (the guard
            // hands back a slot given in the meantime).
            _ => {
                drop(waiting);
                Err((!by_deadline).then_some(Shed::QueueTimeout))
            }
        }
    }

    fn release(&self) {
        let mut slots = lock(&self.slots);
        slots.in_flight = slots.in_flight.saturating_sub(1);
        self.in_flight.dec();
        slots.hand_over(&self.in_flight);
    }

    /// Requests in flight now (for tests and `/state`-like views).
    pub fn in_flight(&self) -> u32 {
        lock(&self.slots).in_flight
    }
}

/// The [`PortLimits`] of every inbound port, kept across config pushes.
#[derive(Debug)]
pub struct Limiters {
    metrics: Arc<Metrics>,
    identity_cap: usize,
    /// The config in force: ports are always reconciled with the latest (never with the config
    /// an older request started under).
    config: watch::Receiver<Arc<Config>>,
    inner: RwLock<LimitersInner>,
}

#[derive(Debug, Default)]
struct LimitersInner {
    /// The config the ports were last reconciled with.
    config: Option<Arc<Config>>,
    ports: HashMap<u16, Arc<PortLimits>>,
}

impl Limiters {
    pub fn new(metrics: Arc<Metrics>, config: watch::Receiver<Arc<Config>>) -> Self {
        Self::with_identity_cap(metrics, config, MAX_IDENTITY_BUCKETS)
    }

    pub fn with_identity_cap(
        metrics: Arc<Metrics>,
        config: watch::Receiver<Arc<Config>>,
        identity_cap: usize,
    ) -> Self {
        Limiters {
            metrics,
            identity_cap,
            config,
            inner: RwLock::new(LimitersInner::default()),
        }
    }

    /// The state of `port` under the config in force: when that config is new, every port's
    /// limits are brought up to date and ports no longer listed are forgotten.
    pub fn port(&self, port: u16) -> Arc<PortLimits> {
        let config = self.config.borrow().clone();
        let config = &config;
        {
            // The common case: nothing changed since the last request, a shared lock.
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            let same = inner
                .config
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, config));
            if let (true, Some(state)) = (same, inner.ports.get(&port)) {
                return state.clone();
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let fresh = !inner
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, config));
        if fresh {
            let listed = &config.inbound.ports;
            let metrics = &self.metrics;
            inner.ports.retain(|p, _| {
                let keep = listed.contains_key(p);
                if !keep {
                    metrics.inbound_forget_port(&LabelValue::port(*p));
                }
                keep
            });
            for (p, state) in &inner.ports {
                state.apply(listed.get(p).and_then(|ip| ip.limits.as_ref()));
            }
            inner.config = Some(config.clone());
        }
        if let Some(state) = inner.ports.get(&port) {
            return state.clone();
        }
        let gauge = self.metrics.inbound_in_flight(LabelValue::port(port));
        let state = Arc::new(PortLimits::new(gauge, self.identity_cap));
        state.apply(
            config
                .inbound
                .ports
                .get(&port)
                .and_then(|ip| ip.limits.as_ref()),
        );
        // A port not in the config (a request racing a push that removed it) is not kept.
        if config.inbound.ports.contains_key(&port) {
            inner.ports.insert(port, state.clone());
        }
        state
    }
}

/// A response body that holds `permit` until the body ends or is dropped, so that a request
/// counts as in flight while its response streams. Generic over the body, so that the app's
/// response is boxed once, with its permit (issue #20), not boxed and then boxed again.
pub fn hold_until_done<B>(body: B, permit: Permit) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    crate::http::boxed(Held {
        inner: body,
        permit: Some(permit),
    })
}

struct Held<B> {
    inner: B,
    permit: Option<Permit>,
}

impl<B> HttpBody for Held<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(rps: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
        }
    }

    fn limits(max: u32, pending: u32, queue_ms: u64) -> InboundLimits {
        InboundLimits {
            max_concurrent_requests: max,
            max_pending_requests: pending,
            queue_timeout: Duration::from_millis(queue_ms),
            rate_limit: None,
            rate_limit_per_identity: None,
        }
    }

    fn port(l: Option<InboundLimits>) -> Arc<PortLimits> {
        let p = Arc::new(PortLimits::new(Gauge::default(), 3));
        p.apply(l.as_ref());
        p
    }

    #[test]
    fn a_bucket_gives_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let l = rate(2.0, 3);
        let mut b = Bucket::full(&l, t0);
        for _ in 0..3 {
            assert_eq!(b.take(&l, t0), Ok(()));
        }
        let wait = b.take(&l, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        let later = t0 + Duration::from_millis(500);
        assert_eq!(b.take(&l, later), Ok(()));
        assert!(b.take(&l, later).is_err());
        // Never more than the burst, however long idle.
        let much_later = later + Duration::from_secs(3600);
        assert!(b.is_full(&l, much_later));
        assert!((b.tokens - 3.0).abs() < f64::EPSILON);
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        let l = |ms| Limited {
            scope: Scope::Total,
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(l(0).retry_after_secs(), 1);
        assert_eq!(l(1).retry_after_secs(), 1);
        assert_eq!(l(1000).retry_after_secs(), 1);
        assert_eq!(l(1001).retry_after_secs(), 2);
    }

    #[test]
    fn identity_buckets_are_bounded_and_never_reset_by_the_cap() {
        let t0 = Instant::now();
        let mut ids = IdentityBuckets::new(2);
        ids.set_limit(Some(rate(0.001, 1)));
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let c: Arc<str> = Arc::from("c");
        let d: Arc<str> = Arc::from("d");
        assert!(ids.take(Some(&a), t0).is_ok());
        assert!(ids.take(Some(&a), t0).is_err());
        assert!(ids.take(Some(&b), t0).is_ok());
        // The map is full of busy buckets: c and d share the overflow bucket.
        assert!(ids.take(Some(&c), t0).is_ok());
        assert!(ids.take(Some(&d), t0).is_err());
        assert_eq!(ids.by_identity.len(), 2);
        // a is still limited: the cap did not hand it a fresh bucket.
        assert!(ids.take(Some(&a), t0).is_err());
        // Unauthenticated callers share one bucket.
        assert!(ids.take(None, t0).is_ok());
        assert!(ids.take(None, t0).is_err());
        // Once idle buckets are full again they are evicted to make room.
        let later = t0 + Duration::from_secs(2000);
        assert!(ids.take(Some(&d), later).is_ok());
        assert_eq!(ids.by_identity.len(), 1);
        assert!(ids.by_identity.contains_key(&d));
    }

    #[test]
    fn the_total_bucket_refusing_gives_the_identity_token_back() {
        let p = port(Some(InboundLimits {
            rate_limit: Some(rate(0.001, 1)),
            rate_limit_per_identity: Some(rate(0.001, 2)),
            ..limits(0, 0, 0)
        }));
        let a: Arc<str> = Arc::from("a");
        assert_eq!(p.rate_limit(Some(&a)), Ok(()));
        assert_eq!(
            p.rate_limit(Some(&a)).map_err(|l| l.scope),
            Err(Scope::Total)
        );
        // Another second's worth for the port only.
        if let Some(b) = lock(&p.total).bucket.as_mut() {
            b.tokens += 1.0;
        }
        // The identity token was given back: a still has one.
        assert_eq!(p.rate_limit(Some(&a)), Ok(()));
        assert_eq!(
            p.rate_limit(Some(&a)).map_err(|l| l.scope),
            Err(Scope::Identity)
        );
    }

    #[tokio::test]
    async fn slots_shed_beyond_the_queue_and_hand_over_in_order() {
        let p = port(Some(limits(1, 1, 60_000)));
        let first = p.acquire(None).await.unwrap();
        let q = p.clone();
        let waiter = tokio::spawn(async move { q.acquire(None).await.map(|_| ()) });
        while lock(&p.slots).waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(p.acquire(None).await.unwrap_err(), Some(Shed::Pending));
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(p.in_flight(), 0);
    }

    #[tokio::test]
    async fn no_queue_means_concurrency_and_a_timeout_means_queue_timeout() {
        let p = port(Some(limits(1, 0, 10)));
        let held = p.acquire(None).await.unwrap();
        assert_eq!(p.acquire(None).await.unwrap_err(), Some(Shed::Concurrency));
        p.apply(Some(&limits(1, 1, 10)));
        assert_eq!(p.acquire(None).await.unwrap_err(), Some(Shed::QueueTimeout));
        // The deadline is shorter than the queue timeout: not a shed.
        p.apply(Some(&limits(1, 1, 60_000)));
        assert_eq!(
            p.acquire(Some(Duration::from_millis(5))).await.unwrap_err(),
            None
        );
        assert!(lock(&p.slots).waiters.is_empty());
        assert_eq!(p.in_flight(), 1);
        drop(held);
        assert_eq!(p.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_push_changing_the_limit_keeps_the_count() {
        let p = port(Some(limits(2, 0, 10)));
        let a = p.acquire(None).await.unwrap();
        let b = p.acquire(None).await.unwrap();
        p.apply(Some(&limits(1, 0, 10)));
        assert_eq!(p.in_flight(), 2);
        drop(a);
        // Still one in flight = the new limit.
        assert_eq!(p.acquire(None).await.unwrap_err(), Some(Shed::Concurrency));
        p.apply(None);
        let c = p.acquire(None).await.unwrap();
        assert_eq!(p.in_flight(), 2);
        drop((b, c));
        assert_eq!(p.in_flight(), 0);
    }

    fn config(ports: &[(u16, Option<weft_proxy_api::v1::InboundLimits>)]) -> Arc<Config> {
        use weft_proxy_api::v1;
        let policy = v1::InboundPolicy {
            identity: "spiffe://cluster.local/ns/demo/sa/web".into(),
            default_policy: v1::DefaultPolicy::Allow as i32,
            ports: ports
                .iter()
                .map(|(port, limits)| v1::InboundPort {
                    port: u32::from(*port),
                    protocol: v1::Protocol::Http1 as i32,
                    restricted: false,
                    authorizations: vec![],
                    limits: *limits,
                })
                .collect(),
        };
        let resources = std::collections::BTreeMap::from([(
            "inbound".to_string(),
            v1::Resource {
                name: "inbound".into(),
                version: "t".into(),
                kind: Some(v1::resource::Kind::Inbound(policy)),
            },
        )]);
        Arc::new(Config::from_resources("t", &resources).unwrap())
    }

    #[tokio::test]
    async fn limiters_keep_a_ports_state_across_configs_until_the_port_leaves() {
        let metrics = Arc::new(Metrics::new());
        let (push, rx) = watch::channel(config(&[]));
        let limiters = Limiters::new(metrics.clone(), rx);
        let one = Some(weft_proxy_api::v1::InboundLimits {
            max_concurrent_requests: 1,
            ..Default::default()
        });
        push.send_replace(config(&[(8080, one)]));
        let held = limiters.port(8080).acquire(None).await.unwrap();
        assert!(metrics
            .encode()
            .contains("weft_proxy_inbound_in_flight_requests{authority=\":8080\"} 1"));
        // Another config, the same limits: the same state, the slot still taken.
        push.send_replace(config(&[(8080, one), (9090, None)]));
        let state = limiters.port(8080);
        assert_eq!(state.in_flight(), 1);
        assert_eq!(
            state.acquire(None).await.unwrap_err(),
            Some(Shed::Concurrency)
        );
        // Unlimited ports count too (the gauge), and are never refused.
        let free = limiters.port(9090);
        let a = free.acquire(None).await.unwrap();
        let b = free.acquire(None).await.unwrap();
        assert_eq!(free.in_flight(), 2);
        drop((a, b));
        // The port left the policy: its state and its gauge are gone.
        push.send_replace(config(&[(9090, None)]));
        let _ = limiters.port(9090);
        assert!(!metrics.encode().contains("authority=\":8080\""));
        push.send_replace(config(&[(8080, one), (9090, None)]));
        assert_eq!(limiters.port(8080).in_flight(), 0);
        drop(held);
    }
}
