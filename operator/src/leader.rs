//! Lease-based leader election (`coordination.k8s.io/v1`): only the leader writes status and
//! Events; every replica serves discovery.
//!
//! Like client-go, expiry is judged from local observation, not from the holder's clock: a
//! lease whose record (resourceVersion) has not changed for `lease_duration` is expired. Writes
//! are guarded by resourceVersion, so two replicas can never both take the lease.
//!
//! A leader that cannot renew (API unreachable, a round that hangs) stops leading once its last
//! renewal is `renew_deadline` old, which is before any other replica can see the lease expire
//! (`lease_duration` after it last saw the lease change): at most one replica writes. Failover
//! after a leader dies without releasing the lease takes at most `lease_duration` +
//! `retry_period` (+ one round); after a clean shutdown the lease is released and the next round
//! of another replica (within `retry_period`) takes it.

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
    /// A leader that has not renewed for this long stops leading (shorter than
    /// `lease_duration`, so it steps down before anyone else may take over).
    pub renew_deadline: Duration,
    /// How often the holder renews and others retry; also the bound of one round's API calls.
    pub retry_period: Duration,
}

impl LeaderOptions {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderOptions {
            namespace: namespace.into(),
            lease_name: "weft-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The same options with other timings, made consistent: `retry_period` at least 100 ms,
    /// `lease_duration` whole seconds (as the Lease stores it) of at least 1 s, and
    /// `renew_deadline` + `retry_period` (the longest a leader that cannot renew keeps leading:
    /// the deadline, then at most one round bounded by `retry_period`) below `lease_duration`.
    pub fn with_timings(
        mut self,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Self {
        let lease = Duration::from_secs(lease_duration.as_secs().max(1));
        let retry = retry_period.max(Duration::from_millis(100)).min(lease / 4);
        let deadline = renew_deadline
            .min(lease.saturating_sub(retry * 2))
            .max(retry);
        self.lease_duration = lease;
        self.renew_deadline = deadline;
        self.retry_period = retry;
        self
    }
}

/// Why one election round failed (the round is retried).
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {0}: {1}")]
    Api(String, #[source] kube::Error),
    #[error("lease round did not finish within {0:?}")]
    Timeout(Duration),
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
    // When this replica last acquired or renewed the lease.
    let mut renewed: Option<Instant> = None;
    let mut stop = shutdown;
    loop {
        // One round never outlasts the retry period: a hung API call counts as a failed round.
        // A renewal counts from before its write, never later than other replicas see it.
        let started = Instant::now();
        let result =
            tokio::time::timeout(options.retry_period, round(&api, &options, &mut observed))
                .await
                .unwrap_or(Err(LeaderError::Timeout(options.retry_period)));
        let is_leader = match result {
            Ok(true) => {
                renewed = Some(started);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "leader election round failed");
                // Keep leading only until the renew deadline of our last renewal.
                *leading.borrow() && renewed.is_some_and(|r| r.elapsed() < options.renew_deadline)
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
        match tokio::time::timeout(options.retry_period, release(&api, &options)).await {
            Ok(Ok(())) => tracing::info!(identity = %options.identity, "released the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
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
