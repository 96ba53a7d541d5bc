//! Which on-demand streams a snapshot concerns.
//!
//! An on-demand stream that holds a view registers what the view depends on ([`Deps`]) here.
//! One dispatcher task follows the snapshot channel and, for each new snapshot, wakes only the
//! streams whose dependencies its [`SnapshotChanges`] name; with 10,000 proxies connected, a
//! change to one Service wakes the few streams that watch it instead of all 10,000. Every
//! stream is woken when the changes are not known (a full compilation, a global change, or
//! snapshots the dispatcher did not see one by one).
//!
//! No change is missed: registering and dispatching hold the same lock, and a stream that
//! registers a view built from a snapshot older than the last one dispatched is told to
//! rebuild at once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::ondemand::Deps;
use super::SnapshotRx;
use crate::compile::{Compiled, ProxyKey};

#[derive(Default)]
pub(crate) struct WakeIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The dispatcher runs.
    started: bool,
    /// The snapshot channel closed: every stream was woken to end.
    closed: bool,
    /// Sequence number of the last snapshot dispatched.
    dispatched: Option<u64>,
    streams: HashMap<u64, Entry>,
    by_name: HashMap<Box<str>, Vec<u64>>,
    by_ip: HashMap<IpAddr, Vec<u64>>,
    by_proxy: HashMap<ProxyKey, Vec<u64>>,
}

struct Entry {
    notify: Arc<Notify>,
    key: ProxyKey,
    deps: Deps,
}

fn unlink<K, Q>(map: &mut HashMap<K, Vec<u64>>, k: &Q, id: u64)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(ids) = map.get_mut(k) {
        ids.retain(|i| *i != id);
        if ids.is_empty() {
            map.remove(k);
        }
    }
}

impl Inner {
    fn remove(&mut self, id: u64) {
        let Some(e) = self.streams.remove(&id) else {
            return;
        };
        for n in e.deps.names() {
            unlink(&mut self.by_name, n.as_str(), id);
        }
        for a in e.deps.ips() {
            unlink(&mut self.by_ip, a, id);
        }
        unlink(&mut self.by_proxy, &e.key, id);
    }
}

impl WakeIndex {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Entries are replaced whole: a panicking holder leaves at worst a stale entry (a
        // needless wake-up).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the dispatcher for `snapshots` once (later calls do nothing).
    pub(crate) fn start(self: &Arc<Self>, snapshots: SnapshotRx) {
        {
            let mut inner = self.lock();
            if inner.started {
                return;
            }
            inner.started = true;
        }
        tokio::spawn(dispatch(self.clone(), snapshots));
    }

    /// Registers (or replaces) what stream `id` of proxy `key` depends on, for a view built
    /// from snapshot `built_from`. Returns whether a later snapshot was already dispatched (the
    /// stream must look at the latest snapshot now).
    pub(crate) fn register(
        &self,
        id: u64,
        key: &ProxyKey,
        deps: &Deps,
        built_from: u64,
        notify: &Arc<Notify>,
    ) -> bool {
        let mut inner = self.lock();
        inner.remove(id);
        for n in deps.names() {
            inner.by_name.entry(n.as_str().into()).or_default().push(id);
        }
        for a in deps.ips() {
            inner.by_ip.entry(*a).or_default().push(id);
        }
        inner.by_proxy.entry(key.clone()).or_default().push(id);
        inner.streams.insert(
            id,
            Entry {
                notify: notify.clone(),
                key: key.clone(),
                deps: deps.clone(),
            },
        );
        inner.closed || inner.dispatched.is_some_and(|d| d > built_from)
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(id);
    }

    /// Whether the snapshot channel closed (the operator is stopping).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Wakes the streams `compiled` concerns.
    fn dispatch(&self, compiled: &Compiled) {
        let mut inner = self.lock();
        let seq = compiled.seq();
        let changes = compiled.changes();
        let known = !changes.all && inner.dispatched.is_some_and(|d| d + 1 == seq);
        inner.dispatched = Some(seq);
        if !known {
            for e in inner.streams.values() {
                e.notify.notify_one();
            }
            return;
        }
        let mut woken = HashSet::new();
        for n in &changes.names {
            woken.extend(inner.by_name.get(n.as_str()).into_iter().flatten());
        }
        for a in &changes.addresses {
            woken.extend(inner.by_ip.get(a).into_iter().flatten());
        }
        for p in &changes.proxies {
            woken.extend(inner.by_proxy.get(p).into_iter().flatten());
        }
        for id in woken {
            if let Some(e) = inner.streams.get(id) {
                e.notify.notify_one();
            }
        }
    }

    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for e in inner.streams.values() {
            e.notify.notify_one();
        }
    }
}

async fn dispatch(index: Arc<WakeIndex>, mut snapshots: SnapshotRx) {
    loop {
        let published = snapshots.borrow_and_update().clone();
        if let Some(published) = published {
            index.dispatch(&published.compiled);
        }
        if snapshots.changed().await.is_err() {
            index.close();
            return;
        }
    }
}
