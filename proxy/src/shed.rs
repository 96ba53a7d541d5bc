//! Load shedding for requests to a service: at most `max_concurrent_requests` in flight from
//! this proxy, at most `max_pending_requests` waiting for a slot, each for at most
//! `queue_timeout` (and never past its deadline); beyond, a fast `503` whose
//! [`REASON_HEADER`] says why. Never an unbounded queue.
//!
//! The [`Limiter`] is live state of the service (kept across pushes, like its retry budget);
//! the limits are read from the policy in force on every request, so a push that changes them
//! applies at once. An unlimited service (`max_concurrent_requests: 0`) touches nothing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use tokio::sync::Notify;
pub use weft_common::reliability::REASON_HEADER;

use crate::http::{self as h, Body};

/// Why a request was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// Every slot taken and no queue allowed (or every endpoint at its own limit).
    Concurrency,
    /// Every slot taken and the queue full.
    Pending,
    /// Waited `queue_timeout` (or until its deadline) without a slot.
    QueueTimeout,
}

impl Shed {
    /// The [`REASON_HEADER`] value.
    pub fn reason(self) -> &'static str {
        match self {
            Shed::Concurrency => "concurrency",
            Shed::Pending => "pending",
            Shed::QueueTimeout => "queue-timeout",
        }
    }
}

/// A proxy-generated answer with [`REASON_HEADER`]: `reason`, and `message` in the body and in
/// `x-weft-error`.
pub fn refuse(status: StatusCode, reason: &'static str, message: &str) -> Response<Body> {
    let mut rsp = h::error(status, message);
    rsp.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason));
    rsp
}

/// Requests in flight to one service and requests waiting for a slot.
#[derive(Debug, Default)]
pub struct Limiter {
    in_flight: AtomicU32,
    waiting: AtomicU32,
    freed: Notify,
}

/// A slot; frees it when dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    limiter: Option<&'a Limiter>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.limiter {
            l.in_flight.fetch_sub(1, Ordering::AcqRel);
            l.freed.notify_one();
        }
    }
}

struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    fn try_take(&self, max: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Requests in flight now (counted only while a limit is set).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A slot among `max` (0: unlimited), waiting at most `wait` behind at most `max_pending`
    /// others.
    pub async fn acquire(
        &self,
        max: u32,
        max_pending: u32,
        wait: Duration,
    ) -> Result<Permit<'_>, Shed> {
        if max == 0 {
            return Ok(Permit { limiter: None });
        }
        if self.try_take(max) {
            return Ok(Permit {
                limiter: Some(self),
            });
        }
        if self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |w| {
                (w < max_pending).then_some(w + 1)
            })
            .is_err()
        {
            return Err(if max_pending == 0 {
                Shed::Concurrency
            } else {
                Shed::Pending
            });
        }
        let _waiting = Waiting(&self.waiting);
        // A wait too long to express is no limit (it cannot be configured that long anyway:
        // the deadline and the queue timeout are bounded by the config's conversion).
        let until = tokio::time::Instant::now().checked_add(wait);
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_take(max) {
                return Ok(Permit {
                    limiter: Some(self),
                });
            }
            let timed_out = match until {
                Some(until) => tokio::time::timeout_at(until, notified).await.is_err(),
                None => {
                    notified.await;
                    false
                }
            };
            if timed_out {
                return if self.try_take(max) {
                    Ok(Permit {
                        limiter: Some(self),
                    })
                } else {
                    Err(Shed::QueueTimeout)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn admits_queues_and_sheds_with_reasons() {
        let l = Limiter::default();
        let wait = Duration::from_secs(1);
        let a = l.acquire(2, 1, wait).await;
        let b = l.acquire(2, 1, wait).await;
        assert!(a.is_ok() && b.is_ok());
        // No queue: shed at once.
        assert_eq!(l.acquire(2, 0, wait).await.err(), Some(Shed::Concurrency));
        // One may wait: it times out; while it waits, another is refused as pending.
        let waiter = l.acquire(2, 1, wait);
        tokio::pin!(waiter);
        assert!(futures_poll(waiter.as_mut()).is_none());
        assert_eq!(l.acquire(2, 1, wait).await.err(), Some(Shed::Pending));
        assert_eq!(waiter.await.err(), Some(Shed::QueueTimeout));
        // A freed slot goes to the waiter.
        let waiter = l.acquire(2, 1, wait);
        tokio::pin!(waiter);
        assert!(futures_poll(waiter.as_mut()).is_none());
        drop(a);
        let c = waiter.await;
        assert!(c.is_ok());
        assert_eq!(l.in_flight(), 2);
        // Unlimited touches nothing.
        assert!(l.acquire(0, 0, wait).await.is_ok());
        assert_eq!(l.in_flight(), 2);
        drop(b);
        assert_eq!(l.in_flight(), 1);
        drop(c);
        assert_eq!(l.in_flight(), 0);
    }

    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
