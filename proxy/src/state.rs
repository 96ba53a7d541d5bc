//! The data plane's live state, kept apart from its config.
//!
//! A pushed [`Config`](crate::config::Config) is an immutable snapshot; what requests learn while
//! they run — each endpoint's latency estimate and in-flight count ([`Load`]) and each service's
//! [`RetryBudget`] — lives here, in a [`StateRegistry`] keyed by service and by endpoint, and is
//! handed to every config that names the same service or endpoint. So a push that changes one
//! service's endpoints leaves every other service's estimates and budget exactly as they were,
//! and an endpoint that stays in a changed set keeps its estimate.
//!
//! Bounded: the registry holds only keys that the config in force names. A push builds the next
//! registry from the keys the new config uses ([`StateBuilder`]) and the old one is dropped with
//! whatever it held for services and endpoints that are gone.
//!
//! Connection pools to other proxies ([`crate::outbound::MeshPool`]) are keyed by endpoint address
//! and identity and live with the outbound listener, outside any config, so they survive pushes
//! too; they drop connections that have closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::Serialize;

use crate::balance::Load;
pub use crate::shed::Limiter;

/// A retry budget: every request deposits `ratio` of a retry, every retry withdraws one. Starts
/// with (and is capped at) a small reserve so that a quiet service can still retry. Besides,
/// `retry_budget_min_per_second` retries are allowed in every second whatever the ratio
/// ([`RetryBudget::try_withdraw_with_floor`]), so that a quiet service can retry at all, and a
/// busy one never more than ratio × requests + that floor.
///
/// The ratio is config and the balance is state: a push that changes a service's ratio keeps
/// its balance ([`RetryBudget::set_ratio`]).
#[derive(Debug)]
pub struct RetryBudget {
    /// In thousandths of a retry.
    milli: AtomicI64,
    deposit_milli: AtomicI64,
    /// The second (since the process's origin) the floor counts retries in.
    floor_second: AtomicU64,
    floor_used: AtomicU32,
}

fn seconds_now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs()
}

fn deposit_milli(ratio: f64) -> i64 {
    if ratio.is_finite() && ratio > 0.0 {
        (ratio.min(1000.0) * 1000.0) as i64
    } else {
        0
    }
}

impl RetryBudget {
    /// Retries available to a quiet service, and the cap on savings.
    pub const RESERVE: i64 = 10;
    const CAP: i64 = 100;

    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            milli: AtomicI64::new(Self::RESERVE * 1000),
            deposit_milli: AtomicI64::new(deposit_milli(ratio)),
            floor_second: AtomicU64::new(0),
            floor_used: AtomicU32::new(0),
        }
    }

    /// Changes what each request deposits from now on; the balance stays.
    pub fn set_ratio(&self, ratio: f64) {
        self.deposit_milli
            .store(deposit_milli(ratio), Ordering::Relaxed);
    }

    /// Called once per request.
    pub fn deposit(&self) {
        let deposit = self.deposit_milli.load(Ordering::Relaxed);
        if deposit == 0 {
            return;
        }
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v < Self::CAP * 1000).then_some((v + deposit).min(Self::CAP * 1000))
            });
    }

    /// Takes one retry from the budget; `false` when exhausted.
    pub fn try_withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v >= 1000).then_some(v - 1000)
            })
            .is_ok()
    }

    /// Takes one retry from the budget, or else from the `min_per_second` retries allowed in
    /// the current second whatever the ratio; `false` when both are exhausted.
    pub fn try_withdraw_with_floor(&self, min_per_second: u32) -> bool {
        self.try_withdraw() || self.try_floor(min_per_second, seconds_now())
    }

    fn try_floor(&self, min_per_second: u32, second: u64) -> bool {
        if min_per_second == 0 {
            return false;
        }
        let current = self.floor_second.load(Ordering::Acquire);
        if current != second
            && self
                .floor_second
                .compare_exchange(current, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.floor_used.store(0, Ordering::Release);
        }
        self.floor_used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < min_per_second).then_some(n + 1)
            })
            .is_ok()
    }

    /// The balance, in thousandths of a retry.
    pub fn balance_milli(&self) -> i64 {
        self.milli.load(Ordering::Relaxed)
    }
}

/// Identifies a service's state: `(namespace, name)`.
pub type ServiceKey = (String, String);

/// Identifies an endpoint's state: the endpoint set (resource name) and the endpoint's address.
/// Keyed per set, not per address alone: two services selecting the same pod balance their own
/// traffic to it.
pub type EndpointKey = (Arc<str>, SocketAddr);

/// The live state of the config in force: one retry budget per outbound service and one load
/// estimate per endpoint of every endpoint set.
#[derive(Debug, Default)]
pub struct StateRegistry {
    budgets: HashMap<ServiceKey, Arc<RetryBudget>>,
    limiters: HashMap<ServiceKey, Arc<Limiter>>,
    loads: HashMap<EndpointKey, Arc<Load>>,
}

impl StateRegistry {
    /// The retry budget of service `<name>.<namespace>`, if the config in force has it.
    pub fn budget(&self, namespace: &str, name: &str) -> Option<&Arc<RetryBudget>> {
        self.budgets.get(&(namespace.to_string(), name.to_string()))
    }

    /// The load estimate of `addr` in endpoint set `set`, if the config in force has it.
    pub fn load(&self, set: &str, addr: SocketAddr) -> Option<&Arc<Load>> {
        self.loads.get(&(Arc::from(set), addr))
    }

    /// Services with state.
    pub fn services(&self) -> usize {
        self.budgets.len()
    }

    /// Endpoints with state.
    pub fn endpoints(&self) -> usize {
        self.loads.len()
    }
}

/// Builds the registry of the next config from the one in force: a key the next config uses
/// keeps its state object (same `Arc`), a new key gets fresh state, and keys it does not use are
/// left behind (dropped with the old registry). Nothing in force changes until
/// [`StateBuilder::finish`], so a rejected push leaves the live state as it was.
#[derive(Debug)]
pub struct StateBuilder<'a> {
    prev: &'a StateRegistry,
    next: StateRegistry,
    ratios: Vec<(Arc<RetryBudget>, f64)>,
}

impl<'a> StateBuilder<'a> {
    pub fn new(prev: &'a StateRegistry) -> Self {
        StateBuilder {
            prev,
            next: StateRegistry::default(),
            ratios: Vec::new(),
        }
    }

    /// The retry budget of `<name>.<namespace>` with deposit ratio `ratio` (applied to an
    /// existing budget when the builder finishes).
    pub fn budget(&mut self, namespace: &str, name: &str, ratio: f64) -> Arc<RetryBudget> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(b) = self.next.budgets.get(&key) {
            return b.clone();
        }
        let budget = match self.prev.budgets.get(&key) {
            Some(b) => {
                self.ratios.push((b.clone(), ratio));
                b.clone()
            }
            None => Arc::new(RetryBudget::new(ratio)),
        };
        self.next.budgets.insert(key, budget.clone());
        budget
    }

    /// The concurrency limiter of `<name>.<namespace>` (load shedding).
    pub fn limiter(&mut self, namespace: &str, name: &str) -> Arc<Limiter> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(l) = self.next.limiters.get(&key) {
            return l.clone();
        }
        let limiter = self.prev.limiters.get(&key).cloned().unwrap_or_default();
        self.next.limiters.insert(key, limiter.clone());
        limiter
    }

    /// Keeps `limiter` (already in force, unchanged config) for `<name>.<namespace>`.
    pub fn keep_limiter(&mut self, namespace: &str, name: &str, limiter: &Arc<Limiter>) {
        self.next
            .limiters
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| limiter.clone());
    }

    /// Keeps `budget` (already in force, unchanged config) for `<name>.<namespace>`.
    pub fn keep_budget(&mut self, namespace: &str, name: &str, budget: &Arc<RetryBudget>) {
        self.next
            .budgets
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| budget.clone());
    }

    /// The load estimate of `addr` in endpoint set `set`.
    pub fn load(&mut self, set: &Arc<str>, addr: SocketAddr) -> Arc<Load> {
        let key = (set.clone(), addr);
        if let Some(l) = self.next.loads.get(&key) {
            return l.clone();
        }
        let load = self
            .prev
            .loads
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Arc::new(Load::default()));
        self.next.loads.insert(key, load.clone());
        load
    }

    /// Keeps `load` (already in force, unchanged config) for `addr` in `set`.
    pub fn keep_load(&mut self, set: &Arc<str>, addr: SocketAddr, load: &Arc<Load>) {
        self.next
            .loads
            .entry((set.clone(), addr))
            .or_insert_with(|| load.clone());
    }

    /// The registry of the next config; applies changed retry ratios to kept budgets.
    pub fn finish(self) -> StateRegistry {
        for (budget, ratio) in self.ratios {
            budget.set_ratio(ratio);
        }
        self.next
    }
}

/// One endpoint's live state, as `GET /state` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EndpointView {
    pub addr: SocketAddr,
    /// The peak-EWMA latency estimate, in nanoseconds (as last updated, before decay).
    pub ewma_ns: f64,
    pub pending: u32,
}

/// One service's live state, as `GET /state` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceView {
    /// The retry budget's balance, in thousandths of a retry.
    pub retry_budget_milli: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_allows_min_per_second_whatever_the_ratio() {
        let b = RetryBudget::new(0.0);
        for _ in 0..RetryBudget::RESERVE {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        assert!(b.try_floor(2, 7));
        assert!(b.try_floor(2, 7));
        assert!(!b.try_floor(2, 7));
        // The next second allows two more; a floor of 0 allows none.
        assert!(b.try_floor(2, 8));
        assert!(!b.try_floor(0, 9));
    }

    #[test]
    fn a_changed_ratio_keeps_the_balance() {
        let b = RetryBudget::new(0.0);
        assert!(b.try_withdraw());
        b.set_ratio(1.0);
        assert_eq!(b.balance_milli(), (RetryBudget::RESERVE - 1) * 1000);
        b.deposit();
        assert_eq!(b.balance_milli(), RetryBudget::RESERVE * 1000);
    }

    #[test]
    fn builder_keeps_used_keys_and_drops_the_rest() {
        let set: Arc<str> = Arc::from("endpoints:a.demo:80");
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let gone: SocketAddr = "127.0.0.1:2".parse().unwrap_or_else(|_| unreachable!());
        let none = StateRegistry::default();
        let mut b = StateBuilder::new(&none);
        let budget = b.budget("demo", "a", 0.5);
        let load = b.load(&set, addr);
        b.load(&set, gone);
        b.budget("demo", "old", 0.5);
        let first = b.finish();
        assert_eq!((first.services(), first.endpoints()), (2, 2));

        let mut b = StateBuilder::new(&first);
        assert!(Arc::ptr_eq(&b.budget("demo", "a", 0.0), &budget));
        assert!(Arc::ptr_eq(&b.load(&set, addr), &load));
        let second = b.finish();
        assert_eq!((second.services(), second.endpoints()), (1, 1));
        assert!(second.budget("demo", "old").is_none());
        assert!(second.load(&set, gone).is_none());
        drop(first);
        // Only the new registry (and this test) hold the kept objects.
        assert_eq!(Arc::strong_count(&budget), 2);
        // The new ratio applies from the finish on.
        budget.deposit();
        assert_eq!(budget.balance_milli(), RetryBudget::RESERVE * 1000);
    }
}
