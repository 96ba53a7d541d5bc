//! The Kubernetes source's metrics (labelled by resource kind only).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// Watcher metrics (labelled by resource kind only).
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    pub watch_errors: Family<ResourceLabels, Counter>,
    pub events: Family<ResourceLabels, Counter>,
    pub invalid_objects: Family<ResourceLabels, Counter>,
    pub unwatched_smi_kinds: Gauge,
}

impl SourceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "watch_errors",
            "Errors of Kubernetes watches (each is retried with backoff)",
            self.watch_errors.clone(),
        );
        registry.register(
            "watch_events",
            "Objects received from Kubernetes watches",
            self.events.clone(),
        );
        registry.register(
            "invalid_objects",
            "Objects from Kubernetes that weft could not read (skipped)",
            self.invalid_objects.clone(),
        );
        registry.register(
            "unwatched_smi_kinds",
            "SMI kinds not watched because the API server does not serve them (CRD missing)",
            self.unwatched_smi_kinds.clone(),
        );
    }
}
