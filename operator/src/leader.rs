//! Lease-based leader election (`coordination.k8s.io/v1`): only the leader writes status and
//! Events; every replica serves discovery.
//!
//! Like client-go, expiry is judged from local observation, not from the holder's clock: a
//! lease whose record (resourceVersion) has not changed for `lease_duration` is expired. Writes
//! are guarded by resourceVersion, so two replicas can never both take the lease.

use std::time::Duration;

// The runtime's clock (not `std`'s): expiry follows paused time in tests.
use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

use crate::shutdown::Shutdown;

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaderOptions {
    /// Namespace and name of the Lease.
    pub namespace: String,
    pub lease_name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    /// How often the holder renews and others retry.
    pub retry_period: Duration,
}

impl LeaderOptions {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderOptions {
            namespace: namespace.into(),
            lease_name: "weft-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(3),
        }
    }
}

/// Why one election round failed (the round is retried).
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {0}: {1}")]
    Api(String, #[source] kube::Error),
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// Runs the election until shutdown, publishing whether this replica leads into `leading`.
/// On shutdown a held lease is released so another replica takes over at once.
pub async fn run(
    client: Client,
    options: LeaderOptions,
    leading: watch::Sender<bool>,
    shutdown: Shutdown,
) {
    let api: Api<Lease> = Api::namespaced(client, &options.namespace);
    let mut observed: Option<Observed> = None;
    let mut stop = shutdown;
    loop {
        let is_leader = match round(&api, &options, &mut observed).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "leader election round failed");
                // Keep leading only while our last renewal is still valid.
                *leading.borrow()
                    && observed
                        .as_ref()
                        .is_some_and(|o| o.at.elapsed() < options.lease_duration)
            }
        };
        if *leading.borrow() != is_leader {
            tracing::info!(identity = %options.identity, leader = is_leader, "leadership changed");
            leading.send_replace(is_leader);
        }
        tokio::select! {
            _ = stop.triggered() => break,
            _ = tokio::time::sleep(options.retry_period) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(e) = release(&api, &options).await {
            tracing::warn!(error = %e, "releasing the lease");
        }
    }
}

/// One round: acquire, renew or observe. Returns whether this replica holds the lease.
async fn round(
    api: &Api<Lease>,
    options: &LeaderOptions,
    observed: &mut Option<Observed>,
) -> Result<bool, LeaderError> {
    let name = &options.lease_name;
    let err = |e| LeaderError::Api(name.clone(), e);
    let duration_secs = i32::try_from(options.lease_duration.as_secs()).unwrap_or(15);
    let current = match api.get_opt(name).await.map_err(err)? {
        Some(l) => l,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(options.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(options.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    *observed = Some(Observed {
                        resource_version: created.metadata.resource_version,
                        at: Instant::now(),
                    });
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(err(e)),
            };
        }
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == options.identity;
    let rv = current.metadata.resource_version.clone();
    let changed = observed.as_ref().map(|o| &o.resource_version) != Some(&rv);
    if changed {
        *observed = Some(Observed {
            resource_version: rv.clone(),
            at: Instant::now(),
        });
    }
    let held_for = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(options.lease_duration);
    let expired = holder.is_empty()
        || observed
            .as_ref()
            .is_some_and(|o| !changed && o.at.elapsed() >= held_for);
    if !ours && !expired {
        return Ok(false);
    }
    let mut next = current.clone();
    let mut new_spec = spec.clone();
    new_spec.holder_identity = Some(options.identity.clone());
    new_spec.lease_duration_seconds = Some(duration_secs);
    new_spec.renew_time = Some(now());
    if !ours {
        new_spec.acquire_time = Some(now());
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    next.spec = Some(new_spec);
    match api.replace(name, &PostParams::default(), &next).await {
        Ok(updated) => {
            if !ours {
                tracing::info!(identity = %options.identity, previous = %holder, "acquired the lease");
            }
            *observed = Some(Observed {
                resource_version: updated.metadata.resource_version,
                at: Instant::now(),
            });
            Ok(true)
        }
        // Someone else wrote the lease first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(err(e)),
    }
}

async fn release(api: &Api<Lease>, options: &LeaderOptions) -> Result<(), LeaderError> {
    let name = &options.lease_name;
    let err = |e| LeaderError::Api(name.clone(), e);
    let Some(mut lease) = api.get_opt(name).await.map_err(err)? else {
        return Ok(());
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(options.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    lease.spec = Some(spec);
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(err(e)),
    }
}
