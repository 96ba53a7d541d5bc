//! Discovery metrics (bounded cardinality: no per-pod labels).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `full` or `incremental`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `identity_mismatch` (the client certificate is not the pod's identity) or
    /// `no_client_identity` (no verified client certificate under
    /// `--require-discovery-identity`).
    pub reason: &'static str,
}

/// Counters and gauges of the discovery server.
#[derive(Clone, Debug)]
pub struct DiscoveryMetrics {
    pub connected: Gauge,
    pub streams_total: Counter,
    pub pushes: Family<PushLabels, Counter>,
    pub acks: Counter,
    pub nacks: Counter,
    pub push_to_ack_seconds: Histogram,
    pub refused: Family<RefusedLabels, Counter>,
    pub bytes_sent: Counter,
}

impl Default for DiscoveryMetrics {
    fn default() -> Self {
        DiscoveryMetrics {
            connected: Gauge::default(),
            streams_total: Counter::default(),
            pushes: Family::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            push_to_ack_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            refused: Family::default(),
            bytes_sent: Counter::default(),
        }
    }
}

impl DiscoveryMetrics {
    /// Registers every metric under `registry` (prefix it with `weft_operator` there).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "discovery_connected_proxies",
            "Proxies with an open discovery stream",
            self.connected.clone(),
        );
        registry.register(
            "discovery_streams",
            "Discovery streams accepted",
            self.streams_total.clone(),
        );
        registry.register(
            "discovery_pushes",
            "Discovery responses sent, by kind",
            self.pushes.clone(),
        );
        registry.register(
            "discovery_acks",
            "ACKs received from proxies",
            self.acks.clone(),
        );
        registry.register(
            "discovery_nacks",
            "NACKs received from proxies",
            self.nacks.clone(),
        );
        registry.register(
            "discovery_push_to_ack_seconds",
            "Time from an observed cluster change to the proxy's ACK of the resulting push",
            self.push_to_ack_seconds.clone(),
        );
        registry.register(
            "discovery_streams_refused",
            "Discovery streams refused for their client identity, by reason",
            self.refused.clone(),
        );
        registry.register(
            "discovery_response_bytes",
            "Bytes of discovery responses sent to proxies (gRPC framing included)",
            self.bytes_sent.clone(),
        );
    }

    /// Counts a stream refused for `reason` (see [`RefusedLabels`]).
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}
