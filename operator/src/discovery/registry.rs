//! What the operator knows about each connected proxy (served as `GET /proxies`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// One connected proxy, as reported by `GET /proxies`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyInfo {
    /// `namespace/name` of the proxy's pod.
    pub pod: String,
    /// The SPIFFE identity the proxy claims (from its service account), or the one its client
    /// certificate proves (see `authenticated`).
    pub identity: String,
    /// True when `identity` comes from a client certificate verified on the connection (TLS).
    pub authenticated: bool,
    pub service_account: String,
    pub proxy_version: String,
    /// Peer address of the stream.
    pub remote_addr: String,
    /// RFC 3339.
    pub connected_since: String,
    /// Config version of the last response sent, if any.
    pub last_sent_version: Option<String>,
    pub last_sent_nonce: Option<String>,
    /// Config version the proxy last ACKed, if any.
    pub last_acked_version: Option<String>,
    /// Error of the proxy's last NACK, if any (cleared by a later ACK).
    pub last_nack_error: Option<String>,
    /// RFC 3339 time of the last NACK.
    pub last_nack_at: Option<String>,
    pub pushes: u64,
    pub acks: u64,
    pub nacks: u64,
    /// Bytes of every response sent on the stream (gRPC framing included).
    pub bytes_sent: u64,
    /// Served on demand (the proxy declared support and the operator runs `--discovery-mode
    /// on-demand`): it holds only its inbound resource and what it watches.
    pub on_demand: bool,
    /// Names the proxy watches (on demand only).
    pub watched: usize,
    /// Resources the proxy holds once it applied everything sent.
    pub resources: usize,
}

/// Registry of connected proxies, keyed by stream id. Entries are removed on disconnect.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    next_id: AtomicU64,
    streams: Mutex<HashMap<u64, ProxyInfo>>,
}

impl ProxyRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stream; returns its id.
    pub fn insert(&self, info: ProxyInfo) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(id, info);
        }
        id
    }

    /// Applies `f` to the stream's entry, if still present.
    pub fn update(&self, id: u64, f: impl FnOnce(&mut ProxyInfo)) {
        if let Ok(mut streams) = self.streams.lock() {
            if let Some(info) = streams.get_mut(&id) {
                f(info);
            }
        }
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.remove(&id);
        }
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.streams.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every connected proxy, ordered by pod then connection time.
    pub fn list(&self) -> Vec<ProxyInfo> {
        let mut all: Vec<ProxyInfo> = self
            .streams
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| {
            (a.pod.as_str(), a.connected_since.as_str())
                .cmp(&(b.pod.as_str(), b.connected_since.as_str()))
        });
        all
    }
}
