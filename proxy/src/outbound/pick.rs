//! Choosing an endpoint of a backend: failure accrual first, then the balancer.
//!
//! In order: an ejected endpoint whose backoff has passed gets this request as its one probe;
//! otherwise P2C ([`balance::p2c`]) among the endpoints that are neither ejected, nor backing
//! off for a `Retry-After`, nor at `max_requests_per_endpoint` (a retry leaves out the endpoint
//! that just failed, unless it is the only one). When none is left, the caller answers at once
//! with why ([`Unpicked`]): the request is never sent to an ejected endpoint.

use std::net::SocketAddr;
use std::time::Instant;

use crate::balance::{self, Breaker, InFlight};
use crate::config::{Backend, Endpoint};

use crate::accrual::Availability;

/// The one probe of an ejected endpoint; given back (the next request may probe) unless a
/// verdict was recorded.
#[derive(Debug)]
pub struct Probe<'a> {
    breaker: &'a Breaker,
    decided: bool,
}

impl Probe<'_> {
    /// A verdict was recorded: nothing to give back.
    pub fn decided(&mut self) {
        self.decided = true;
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if !self.decided {
            self.breaker.release_probe();
        }
    }
}

/// An endpoint chosen for an attempt, counted in flight while this lives.
#[derive(Debug)]
pub struct Picked<'a> {
    pub ep: &'a Endpoint,
    pub in_flight: InFlight<'a>,
    pub probe: Option<Probe<'a>>,
}

/// Why no endpoint could be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpicked {
    NoEndpoints,
    /// Every endpoint ejected (or backing off); `next_probe`: when the first probe is due
    /// (`None`: a probe is in flight).
    Ejected {
        ejected: usize,
        total: usize,
        next_probe: Option<Instant>,
    },
    /// No endpoint ejected, but every one asked to back off (`429`, `Retry-After`) until at
    /// least `until`.
    BackingOff {
        until: Instant,
    },
    /// Every usable endpoint has `max` requests in flight.
    Full {
        max: u32,
    },
}

fn usable(ep: &Endpoint, max: u32, now: Instant) -> bool {
    (max == 0 || ep.load.pending() < max)
        && ep.load.breaker.availability(now) == Availability::Ready
}

/// Chooses an endpoint of `backend` at `now`, leaving out `avoid` when another is usable;
/// `probe`: whether an ejected endpoint may get this request as its probe.
pub fn pick(
    backend: &Backend,
    max_per_endpoint: u32,
    avoid: Option<SocketAddr>,
    probe: bool,
    now: Instant,
) -> Result<Picked<'_>, Unpicked> {
    let eps = &backend.endpoints.endpoints;
    if eps.is_empty() {
        return Err(Unpicked::NoEndpoints);
    }
    let max = max_per_endpoint;
    if probe {
        for ep in eps {
            if Some(ep.addr) == avoid
                || ep.load.breaker.availability(now) != Availability::ProbeDue
                || !ep.load.breaker.try_probe(now)
            {
                continue;
            }
            let probe = Probe {
                breaker: &ep.load.breaker,
                decided: false,
            };
            match ep.load.try_start(max) {
                Some(in_flight) => {
                    return Ok(Picked {
                        ep,
                        in_flight,
                        probe: Some(probe),
                    })
                }
                None => drop(probe),
            }
        }
    }
    let others = eps
        .iter()
        .filter(|e| Some(e.addr) != avoid && usable(e, max, now))
        .count();
    let skip = if others > 0 { avoid } else { None };
    let candidates = || {
        eps.iter()
            .filter(move |e| Some(e.addr) != skip && usable(e, max, now))
    };
    let n = if skip.is_some() {
        others
    } else {
        candidates().count()
    };
    if n > 0 {
        let chosen = balance::p2c(n, |i| {
            candidates().nth(i).map_or(f64::MAX, |e| e.load.cost())
        })
        .and_then(|i| candidates().nth(i));
        // Another request may have taken the last slot meanwhile: then any usable one.
        for ep in chosen.into_iter().chain(candidates()) {
            if let Some(in_flight) = ep.load.try_start(max) {
                return Ok(Picked {
                    ep,
                    in_flight,
                    probe: None,
                });
            }
        }
    }
    Err(why_not(eps, max, now))
}

fn why_not(eps: &[Endpoint], max: u32, now: Instant) -> Unpicked {
    let mut ejected = 0;
    let mut next_probe: Option<Instant> = None;
    let mut probing = false;
    let mut backoff: Option<Instant> = None;
    let mut full = false;
    for ep in eps {
        match ep.load.breaker.availability(now) {
            Availability::Ready | Availability::ProbeDue => full = true,
            Availability::Ejected { until: Some(t) } => {
                ejected += 1;
                next_probe = Some(next_probe.map_or(t, |n| n.min(t)));
            }
            Availability::Ejected { until: None } => {
                ejected += 1;
                probing = true;
            }
            Availability::BackingOff { until } => {
                backoff = Some(backoff.map_or(until, |b| b.min(until)));
            }
        }
    }
    if full && max > 0 {
        return Unpicked::Full { max };
    }
    match backoff {
        Some(until) if ejected == 0 => Unpicked::BackingOff { until },
        _ => Unpicked::Ejected {
            ejected,
            total: eps.len(),
            next_probe: if probing { None } else { next_probe },
        },
    }
}
