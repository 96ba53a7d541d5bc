//! On-demand discovery, the proxy's side (`discovery.proto`, points 6-8).
//!
//! With `WEFT_PROXY_DISCOVERY_MODE=on-demand` the proxy declares on-demand support when it
//! subscribes. When the operator serves it on demand, the proxy holds only its inbound policy and
//! the Services it watches. The data plane asks [`Demand`] for a destination it does not know:
//! an explicit `Host: <svc>.<ns>` watches `outbound:<svc>.<ns>`, a transparent connection (or
//! an explicit request by address) watches `ip:<address>`, and the operator answers with the
//! Service's routing and endpoints (for an address, also an `IpResolution` saying which Service
//! has it, or none). The request waits for the answer at most [`Demand::wait`]; after that it
//! gets a 503 (a connection is closed): never sent anywhere the proxy has not been told about,
//! and never past authorization, which the destination's proxy does from its own policy.
//!
//! Names not used for [`Demand::idle`] are dropped (Unwatch), except those pre-subscribed from
//! `WEFT_PROXY_OUTBOUND_SERVICES` (the injector copies the `weft.io/outbound-services`
//! annotation there). The set is bounded ([`MAX_WATCHED`]): past it, a new destination is
//! answered 503 until idle names are dropped.
//!
//! The control client ([`crate::control::DiscoveryClient`]) owns the stream: it sends the whole
//! set in `Subscribe.watch` and every change as `Watch`/`Unwatch`, woken by [`Demand`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use weft_proxy_api::names;

use crate::config::Config;

/// Names one proxy watches at most (the operator's own limit is the same).
pub const MAX_WATCHED: usize = 1024;
/// How long a request for an unknown destination waits for the operator's answer.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// A watched name not used for this long is dropped.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);

/// What the data plane needs from on-demand discovery; shared with the control client.
#[derive(Debug)]
pub struct Demand {
    /// The operator serves this proxy on demand (from its last response).
    served: AtomicBool,
    /// Watched name to last use.
    names: Mutex<HashMap<String, Instant>>,
    /// Pre-subscribed names, never dropped for idleness.
    pinned: HashSet<String>,
    /// Wakes the control client when the set changed.
    changed: Notify,
    pub wait: Duration,
    pub idle: Duration,
}

impl Demand {
    /// `pinned`: services to watch from the start (`<svc>.<ns>` or `outbound:<svc>.<ns>`;
    /// others are ignored).
    pub fn new(pinned: &[String], wait: Duration, idle: Duration) -> Arc<Self> {
        let pinned: HashSet<String> = pinned
            .iter()
            .filter_map(|s| pinned_name(s))
            .take(MAX_WATCHED)
            .collect();
        let now = Instant::now();
        Arc::new(Demand {
            served: AtomicBool::new(false),
            names: Mutex::new(pinned.iter().map(|n| (n.clone(), now)).collect()),
            pinned,
            changed: Notify::new(),
            wait,
            idle,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        // A map of timestamps: nothing a panicking holder could leave inconsistent.
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the operator serves this proxy on demand (set by the control client).
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    pub fn set_served(&self, on: bool) {
        self.served.store(on, Ordering::Relaxed);
    }

    /// Marks `name` used now; a new name is added (and the control client woken). `false` when
    /// the set is full.
    pub fn touch(&self, name: &str) -> bool {
        let mut names = self.lock();
        if let Some(t) = names.get_mut(name) {
            *t = Instant::now();
            return true;
        }
        if names.len() >= MAX_WATCHED {
            return false;
        }
        names.insert(name.to_string(), Instant::now());
        drop(names);
        self.changed.notify_one();
        true
    }

    /// The watched names.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Drops the names not used for [`Demand::idle`] (never pinned ones); returns how many.
    pub fn drop_idle(&self) -> usize {
        let mut names = self.lock();
        let before = names.len();
        let idle = self.idle;
        names.retain(|n, t| self.pinned.contains(n) || t.elapsed() < idle);
        before - names.len()
    }

    /// Resolves when the watched set changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Watches `name` and waits (at most [`Demand::wait`]) until `found` finds what it needs in
    /// the config in force. `None`: not found in time (or the watched set is full).
    pub async fn resolve<T>(
        &self,
        config: &watch::Receiver<Arc<Config>>,
        name: &str,
        found: impl Fn(&Config) -> Option<T>,
    ) -> Option<T> {
        if !self.touch(name) {
            return None;
        }
        let mut rx = config.clone();
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(t) = found(&current) {
                return Some(t);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

/// `outbound:<svc>.<ns>` for a pre-subscribed service (`<svc>.<ns>` or the resource name).
fn pinned_name(s: &str) -> Option<String> {
    let s = s.trim();
    let name = if s.starts_with(names::OUTBOUND_PREFIX) {
        s.to_string()
    } else {
        format!("{}{s}", names::OUTBOUND_PREFIX)
    };
    matches!(
        names::ResourceName::parse(&name),
        Ok(names::ResourceName::Outbound { .. })
    )
    .then_some(name)
}

/// The watched name of a service.
pub fn service_name(service: &str, namespace: &str) -> String {
    names::outbound_name(service, namespace)
}

/// The watched name of an address.
pub fn ip_name(ip: IpAddr) -> String {
    names::ip_name(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_names_are_parsed_and_never_idle() {
        let d = Demand::new(
            &["web.demo".into(), "outbound:api.shop".into(), "bad".into()],
            DEFAULT_WAIT,
            Duration::ZERO,
        );
        assert_eq!(d.names(), vec!["outbound:api.shop", "outbound:web.demo"]);
        assert!(d.touch("ip:10.0.0.1"));
        assert_eq!(d.drop_idle(), 1);
        assert_eq!(d.names().len(), 2);
    }

    #[test]
    fn the_set_is_bounded() {
        let d = Demand::new(&[], DEFAULT_WAIT, DEFAULT_IDLE);
        for i in 0..MAX_WATCHED {
            assert!(d.touch(&format!("outbound:s{i}.demo")));
        }
        assert!(!d.touch("outbound:one-more.demo"));
        assert!(d.touch("outbound:s0.demo"));
    }
}
