//! Kubernetes sources: one watcher per input kind, feeding batches of [`Change`]s.
//!
//! * core v1 Namespaces, ServiceAccounts, Pods, Services;
//! * `discovery.k8s.io/v1` EndpointSlices where served, else core v1 Endpoints;
//! * Gateway API `gateway.networking.k8s.io/v1` HTTPRoutes and GRPCRoutes, typed (the
//!   `gateway-api` crate), each when the API server serves it at start;
//! * every SMI kind in the version the API server prefers (its storage version, v1alpha4 or
//!   v1alpha3), watched as [`DynamicObject`] and parsed with `weft_smi`, so one code path reads
//!   any version.
//!
//! Watchers back off on errors and re-list after `410 Gone` (kube-runtime does both); each
//! re-list is turned into one batch that also removes objects that disappeared meanwhile.
//!
//! Which SMI kinds are served can change while the operator runs (CRDs installed after it, by a
//! GitOps tool, or deleted): [`SmiSupervisor`] re-discovers them when an SMI CRD changes (a
//! metadata-only watch of CustomResourceDefinitions), when a watcher gets 404, and on a timer,
//! and starts, moves or stops their watchers accordingly.
//!
//! Split by concern: [`discovery`] (what is served), [`crds`] (the SMI CRD lifecycle) and
//! [`watch`] (the watch adapter: watch events → typed model changes).

pub mod crds;
pub mod discovery;
pub mod metrics;
pub mod watch;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1 as core;
use kube::api::Api;
use kube::Client;
use tokio::sync::mpsc;

pub use discovery::{discover, SmiKind, Watched, NOT_SERVED, SMI_KINDS};
pub use metrics::{ResourceLabels, SourceMetrics};
pub use watch::{reflect, Reflect};

use crate::shutdown::Shutdown;
use crate::source::{Source, SourceError, SourceEvent, SourceTx};

/// The Kubernetes API as a [`Source`]: discovers what is served, then watches it until
/// shutdown (see [`run`]).
pub struct KubeSource {
    pub client: Client,
    pub metrics: SourceMetrics,
}

impl Source for KubeSource {
    async fn run(self, tx: SourceTx, mut shutdown: Shutdown) -> Result<(), SourceError> {
        // Discovery waits for an unreachable API server; shutdown must not wait for it.
        let watched = tokio::select! {
            w = discover(&self.client) => w,
            _ = shutdown.triggered() => return Ok(()),
        };
        // The first snapshot waits for every watcher's first listing.
        let expect: BTreeSet<String> = watched.iter().map(Watched::name).collect();
        if tx.send(SourceEvent::Expect(expect)).await.is_ok() {
            run(self.client, watched, tx, self.metrics, shutdown).await;
        }
        Ok(())
    }
}

/// Runs a watcher for each of `watched` until shutdown, sending batches to `tx`, and keeps the
/// SMI kinds in step with what the API server serves (see [`crds::SmiSupervisor`]).
pub async fn run(
    client: Client,
    watched: Vec<Watched>,
    tx: SourceTx,
    metrics: SourceMetrics,
    shutdown: Shutdown,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut smi = Vec::new();
    for w in watched {
        let name = w.name();
        let tx = tx.clone();
        let metrics = metrics.clone();
        let client = client.clone();
        match w {
            Watched::Namespaces => tasks.spawn(reflect::<core::Namespace>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::ServiceAccounts => tasks.spawn(reflect::<core::ServiceAccount>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::Pods => tasks.spawn(reflect::<core::Pod>(Api::all(client), name, tx, metrics)),
            Watched::Services => tasks.spawn(reflect::<core::Service>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::EndpointSlices => tasks.spawn(reflect::<
                k8s_openapi::api::discovery::v1::EndpointSlice,
            >(
                Api::all(client), name, tx, metrics
            )),
            Watched::Endpoints => tasks.spawn(reflect::<core::Endpoints>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::HttpRoutes => tasks.spawn(reflect::<gateway_api::httproutes::HttpRoute>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::GrpcRoutes => tasks.spawn(reflect::<gateway_api::grpcroutes::GrpcRoute>(
                Api::all(client),
                name,
                tx,
                metrics,
            )),
            Watched::Smi(ar) => {
                smi.push(ar);
                continue;
            }
        };
    }
    let (notes_tx, notes_rx) = mpsc::channel(16);
    tasks.spawn(crds::watch_crds(
        client.clone(),
        notes_tx.clone(),
        metrics.clone(),
    ));
    let supervisor = crds::SmiSupervisor::new(client, smi, tx, metrics, notes_tx, notes_rx);
    let mut stop = shutdown;
    tokio::select! {
        _ = supervisor.run() => {}
        _ = stop.triggered() => {}
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::discovery::is_transient;
    use super::watch::{is_forbidden, is_not_found};
    use kube::runtime::watcher;

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status::failure("x", "y").with_code(code))
    }

    #[test]
    fn not_found_and_transient_errors() {
        assert!(is_not_found(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(404))
        )));
        assert!(is_not_found(&watcher::Error::WatchError(status(404))));
        assert!(!is_not_found(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(403))
        )));
        assert!(!is_not_found(&watcher::Error::NoResourceVersion));
        assert!(is_forbidden(&watcher::Error::WatchStartFailed(
            kube::Error::Api(status(403))
        )));
        assert!(is_transient(&kube::Error::Api(status(503))));
        assert!(is_transient(&kube::Error::Api(status(429))));
        assert!(!is_transient(&kube::Error::Api(status(404))));
        // "No such API group" is an answer, not an outage: the operator must not wait on it.
        assert!(!is_transient(&kube::Error::Discovery(
            kube::error::DiscoveryError::MissingApiGroup("split.smi-spec.io".into())
        )));
    }
}
