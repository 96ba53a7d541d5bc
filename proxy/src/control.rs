//! The discovery client: keeps the proxy's [`Config`] in sync with the operator.
//!
//! One long-lived `Discovery.Stream` per connection. Each response is applied to a copy of the
//! resource map, the whole map is compiled by the client's [`Store`] (which converts only the
//! resources whose version changed and keeps the data plane's live state), and either the new
//! config is published on the `watch` channel (and ACKed) or the response is NACKed and the
//! previous map and config stay in force. When the stream breaks the proxy keeps serving with
//! what it has and reconnects with jittered exponential backoff, reporting what it holds in
//! `known_versions`.
//!
//! Fail-over between operator replicas: every connection attempt resolves the control address
//! again and tries its addresses in a random rotation, each with a bounded connect timeout
//! ([`crate::control_tls::ControlConnector`]), so a dead replica costs one timeout. The backoff
//! starts over after a stream that was healthy for [`HEALTHY_STREAM`], so the reconnect after a
//! replica died waits at most `Backoff::min`; a stream the operator ends with an OK status
//! (`--discovery-max-stream-age`, so that proxies rebalance) is reopened at once and is not
//! counted as a lost stream.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use weft_proxy_api::v1::discovery_client::DiscoveryClient as GrpcClient;
use weft_proxy_api::v1::discovery_request::Request as Req;
use weft_proxy_api::v1::{self, DiscoveryRequest, DiscoveryResponse};

use crate::config::{Config, Store};
use crate::control_tls::{ControlConnector, ControlTarget};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::ondemand::Demand;

/// Largest discovery message accepted (a config with thousands of services and endpoints).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A stream that delivered a response and lived at least this long was healthy: the reconnect
/// after it starts the backoff over (a replica that died after serving us for a while costs
/// at most `Backoff::min` before the next replica is tried).
pub const HEALTHY_STREAM: Duration = Duration::from_secs(5);

/// A stream the operator ended with an OK status after at least this long is reopened at once
/// (the operator recycles streams, `--discovery-max-stream-age`); one ended sooner backs off
/// like a failure, so an operator ending streams in a loop is not hammered.
const MIN_RECYCLED_STREAM: Duration = Duration::from_secs(1);

/// Who this proxy is, sent in `Subscribe`.
#[derive(Clone, Debug)]
pub struct ProxyId {
    pub pod_namespace: String,
    pub pod_name: String,
    pub service_account: String,
}

/// The reconnect backoff: the one jittered exponential backoff of weft.
pub use weft_common::Backoff;

/// How the client reaches the operator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `http://host:port`: the first control address (the HTTP/2 authority; TLS when `tls` is
    /// set).
    pub uri: String,
    /// Every control address (`WEFT_PROXY_CONTROL_ADDR` may list several); empty: the one of
    /// `uri`. Resolved again on every connection attempt.
    pub targets: Vec<ControlTarget>,
    /// TLS to the operator, verified against out-of-band trust anchors; `None`: plaintext.
    pub tls: Option<crate::control_tls::ControlTls>,
    pub id: ProxyId,
    /// Bound of one address's TCP connect plus TLS handshake (a dead replica costs this much).
    pub connect_timeout: Duration,
    /// How long to wait for the stream to open and the first response to arrive.
    pub first_response_timeout: Duration,
    /// HTTP/2 keepalive: a dead operator is detected within interval + timeout.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub backoff: Backoff,
}

impl Settings {
    pub fn new(uri: impl Into<String>, id: ProxyId) -> Self {
        Self {
            uri: uri.into(),
            targets: Vec::new(),
            tls: None,
            id,
            connect_timeout: Duration::from_secs(3),
            first_response_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
        }
    }

    /// The tonic endpoint for the operator (lazy: connects on first use). No connect timeout on
    /// the endpoint: [`Settings::connector`] bounds each address it tries.
    pub fn endpoint(&self) -> Result<Endpoint, ControlError> {
        let endpoint = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| ControlError::InvalidUri(self.uri.clone(), e.to_string()))?;
        Ok(endpoint
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true))
    }

    /// The dialer of the control connections: every target (none: the endpoint's URI, that is
    /// `uri`), resolved on each attempt, tried in a random rotation (over TLS when configured).
    pub fn connector(&self) -> ControlConnector {
        ControlConnector::new(self.targets.clone(), self.tls.clone(), self.connect_timeout)
    }

    /// A channel that connects on first use and again after its connection broke, each time
    /// through [`Settings::connector`] (so Certify fails over between replicas too).
    pub fn connect_lazy(&self, endpoint: &Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.connector())
    }
}

/// Errors of the discovery client (all of them lead to a reconnect, except `InvalidUri`).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control address {0:?}: {1}")]
    InvalidUri(String, String),
    #[error("connect to {uri}: {source}")]
    Connect {
        uri: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("operator closed the stream")]
    Closed,
    #[error("response {nonce:?}: {reason}")]
    Protocol { nonce: String, reason: String },
    #[error("identity certificate obtained; reconnecting to present it to the operator")]
    CertificateObtained,
}

/// The protocol mechanics of applying a response (full state, `unchanged`, incremental adds and
/// removals, and the checks on names and kinds) are the contract crate's, shared with its tests.
pub use weft_proxy_api::{apply_response, ApplyError};

/// What the admin server shows about the control connection.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Status {
    /// A stream to the operator is open.
    pub connected: bool,
    /// The version of the config in force (`None` until the first config is applied).
    pub version: Option<String>,
    /// The last NACK reason, cleared by the next successful update.
    pub last_nack: Option<String>,
    /// The last connection error, cleared by the next successful connection.
    pub last_error: Option<String>,
    /// The operator address the open stream goes to (`host:port (ip:port)`), the last one when
    /// disconnected.
    pub operator: Option<String>,
    pub updates: u64,
    pub nacks: u64,
    pub reconnects: u64,
}

/// Control metrics (registered next to the data plane's).
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    connected: Gauge,
    updates: Counter,
    reconnects: Counter,
}

impl ControlMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("weft_proxy_control");
        sub.register(
            "connected",
            "1 when a discovery stream to the operator is open",
            self.connected.clone(),
        );
        sub.register(
            "config_updates",
            "Discovery responses applied and ACKed",
            self.updates.clone(),
        );
        sub.register(
            "reconnects",
            "Discovery streams lost or failed to open",
            self.reconnects.clone(),
        );
    }
}

/// The discovery client. Build with [`DiscoveryClient::new`], then `tokio::spawn(client.run())`.
pub struct DiscoveryClient {
    settings: Settings,
    config: watch::Sender<Arc<Config>>,
    status: watch::Sender<Status>,
    metrics: ControlMetrics,
    /// The data plane's metrics (config version in force, NACK count), when wired.
    data_metrics: Option<Arc<Metrics>>,
    /// Resources in force (those that compiled into the published config).
    resources: BTreeMap<String, v1::Resource>,
    /// The converted config and live state of `resources`.
    store: Store,
    /// The identity whose certificate the TLS connection presents (see
    /// [`DiscoveryClient::with_client_identity`]).
    identity: Option<Identity>,
    /// The last connection was made without a valid client certificate.
    connected_without_cert: bool,
    /// On-demand discovery (see [`crate::ondemand`]); `None`: the proxy asks for everything.
    demand: Option<Arc<Demand>>,
}

impl DiscoveryClient {
    /// `config` is the channel the data plane reads (see [`crate::config::channel`]).
    pub fn new(settings: Settings, config: watch::Sender<Arc<Config>>) -> Self {
        Self {
            settings,
            config,
            status: watch::channel(Status::default()).0,
            metrics: ControlMetrics::default(),
            data_metrics: None,
            resources: BTreeMap::new(),
            store: Store::new(),
            identity: None,
            connected_without_cert: false,
            demand: None,
        }
    }

    /// Declares on-demand support and keeps the operator's watched set in step with `demand`.
    pub fn with_demand(mut self, demand: Arc<Demand>) -> Self {
        self.demand = Some(demand);
        self
    }

    /// The TLS settings present `identity`'s certificate (see
    /// [`crate::control_tls::ControlTls::with_client_cert`]): a stream opened before the
    /// certificate was issued (or while it was expired) is reopened as soon as one is valid, and a
    /// retry waiting for its backoff starts early at that moment. The config in force is kept
    /// across the reconnect.
    pub fn with_client_identity(mut self, identity: Identity) -> Self {
        if let Some(tls) = &self.settings.tls {
            self.settings.tls = Some(tls.with_client_cert(identity.control_client_cert()));
            self.identity = Some(identity);
        }
        self
    }

    /// Also records the config version in force and NACKs in the data plane's metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.data_metrics = Some(metrics);
        self
    }

    /// A live view of the connection status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Metrics handles (to register with the admin server's registry).
    pub fn metrics(&self) -> ControlMetrics {
        self.metrics.clone()
    }

    /// Runs forever (cancel by aborting the task): connect, stream, reconnect.
    pub async fn run(mut self) {
        let endpoint = match self.settings.endpoint() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "discovery disabled");
                self.status
                    .send_modify(|s| s.last_error = Some(e.to_string()));
                return std::future::pending().await;
            }
        };
        self.wait_for_first_certificate().await;
        let mut attempt: u32 = 0;
        loop {
            let mut opened: Option<Instant> = None;
            let result = self.stream_once(&endpoint, &mut opened).await;
            self.metrics.connected.set(0);
            let lived = opened.map(|at| at.elapsed());
            if matches!(result, Ok(())) && lived.is_some_and(|d| d >= MIN_RECYCLED_STREAM) {
                // Recycled by the operator (max stream age): reopen at once, perhaps elsewhere.
                self.status.send_modify(|s| s.connected = false);
                tracing::info!("discovery stream recycled by the operator; reconnecting");
                attempt = 0;
                continue;
            }
            self.metrics.reconnects.inc();
            let upgrade = matches!(result, Err(ControlError::CertificateObtained));
            let message = match result {
                Ok(()) => ControlError::Closed.to_string(),
                Err(e) => e.to_string(),
            };
            self.status.send_modify(|s| {
                s.connected = false;
                s.reconnects += 1;
                s.last_error = Some(message.clone());
            });
            if lived.is_some_and(|d| d >= HEALTHY_STREAM) {
                attempt = 0;
            }
            let delay = self.settings.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            if upgrade {
                tracing::info!(
                    "identity certificate obtained; reopening the discovery stream with it"
                );
            } else {
                tracing::warn!(
                    error = %message,
                    retry_in_ms = delay.as_millis() as u64,
                    version = self.status.borrow().version.as_deref().unwrap_or(""),
                    "discovery stream lost; keeping the current config",
                );
            }
            match self
                .identity
                .clone()
                .filter(|_| self.connected_without_cert)
            {
                // The operator may refuse a stream without a certificate: retry when one is there.
                Some(identity) => tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = identity.valid_certificate() => {}
                },
                None => tokio::time::sleep(delay).await,
            }
        }
    }

    /// Over TLS with a client identity, the first stream waits for the first certificate (for at
    /// most `first_response_timeout`, then it goes without, as before): opened earlier, it races
    /// Certify, and a healthy start would count a refused stream (an operator that requires a
    /// client certificate) or a reconnect (to present the certificate), and log a warning.
    async fn wait_for_first_certificate(&self) {
        let Some(identity) = &self.identity else {
            return;
        };
        if identity.has_valid_certificate() {
            return;
        }
        let wait = self.settings.first_response_timeout;
        if tokio::time::timeout(wait, identity.valid_certificate())
            .await
            .is_err()
        {
            tracing::info!(
                waited_ms = wait.as_millis() as u64,
                "no identity certificate yet; opening the discovery stream without one"
            );
        }
    }

    /// One connection: subscribe, then apply responses until the stream ends.
    /// `opened` is set when the first response arrived.
    async fn stream_once(
        &mut self,
        endpoint: &Endpoint,
        opened: &mut Option<Instant>,
    ) -> Result<(), ControlError> {
        self.connected_without_cert = self
            .identity
            .as_ref()
            .is_some_and(|i| !i.has_valid_certificate());
        let connector = self.settings.connector();
        let channel: Channel = endpoint
            .connect_with_connector(connector.clone())
            .await
            .map_err(|source| ControlError::Connect {
                uri: self.settings.uri.clone(),
                source,
            })?;
        let operator = connector.last_connected();
        let mut client = GrpcClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);

        // Bounded: one ACK/NACK per response; if the operator stops reading, we stop applying.
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        let known_versions: BTreeMap<String, String> = self
            .resources
            .iter()
            .map(|(name, r)| (name.clone(), r.version.clone()))
            .collect();
        let id = &self.settings.id;
        // What the operator watches for us on this stream (on demand only).
        let mut watched: BTreeSet<String> = self
            .demand
            .as_ref()
            .map(|d| d.names().into_iter().collect())
            .unwrap_or_default();
        let subscribe = DiscoveryRequest {
            request: Some(Req::Subscribe(v1::Subscribe {
                pod_namespace: id.pod_namespace.clone(),
                pod_name: id.pod_name.clone(),
                service_account: id.service_account.clone(),
                proxy_version: env!("CARGO_PKG_VERSION").to_string(),
                known_versions,
                on_demand: self.demand.is_some(),
                watch: watched.iter().cloned().collect(),
            })),
        };
        tx.send(subscribe).await.map_err(|_| ControlError::Closed)?;

        let wait = self.settings.first_response_timeout;
        let mut inbound = tokio::time::timeout(wait, client.stream(ReceiverStream::new(rx)))
            .await
            .map_err(|_| ControlError::Timeout(wait))??
            .into_inner();

        let first = tokio::time::timeout(wait, inbound.next())
            .await
            .map_err(|_| ControlError::Timeout(wait))?;
        let mut next = first;
        let mut sweep = tokio::time::interval(idle_sweep(self.demand.as_deref()));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let resp = match next {
                None => return Ok(()),
                Some(r) => r?,
            };
            if opened.is_none() {
                *opened = Some(Instant::now());
                self.metrics.connected.set(1);
                self.status.send_modify(|s| {
                    s.connected = true;
                    s.last_error = None;
                    s.operator.clone_from(&operator);
                });
                tracing::info!(
                    operator = operator.as_deref().unwrap_or(&self.settings.uri),
                    "discovery stream open"
                );
            }
            let answer = self.on_response(&resp);
            tx.send(answer).await.map_err(|_| ControlError::Closed)?;
            if let Some(demand) = &self.demand {
                demand.set_served(resp.on_demand);
            }
            // Keepalive on the HTTP/2 connection detects a dead operator; no read timeout here
            // (the operator only sends when something changes).
            let cert = self
                .identity
                .clone()
                .filter(|_| self.connected_without_cert);
            next = loop {
                tokio::select! {
                    next = inbound.next() => break next,
                    () = wait_certificate(cert.as_ref()) => {
                        return Err(ControlError::CertificateObtained);
                    }
                    () = wait_demand(self.demand.as_deref()) => {
                        self.sync_watch(&tx, &mut watched).await?;
                    }
                    _ = sweep.tick() => {
                        if let Some(demand) = &self.demand {
                            if demand.drop_idle() > 0 {
                                self.sync_watch(&tx, &mut watched).await?;
                            }
                        }
                    }
                }
            };
        }
    }

    /// Sends `Watch`/`Unwatch` for what changed in the watched set since `sent` (only when the
    /// operator serves this stream on demand: otherwise it holds everything anyway).
    async fn sync_watch(
        &self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        sent: &mut BTreeSet<String>,
    ) -> Result<(), ControlError> {
        let Some(demand) = self.demand.as_ref().filter(|d| d.served()) else {
            return Ok(());
        };
        let now: BTreeSet<String> = demand.names().into_iter().collect();
        let add: Vec<String> = now.difference(sent).cloned().collect();
        let remove: Vec<String> = sent.difference(&now).cloned().collect();
        if !add.is_empty() {
            tracing::debug!(names = ?add, "watch");
            let req = DiscoveryRequest {
                request: Some(Req::Watch(v1::Watch { names: add })),
            };
            tx.send(req).await.map_err(|_| ControlError::Closed)?;
        }
        if !remove.is_empty() {
            tracing::debug!(names = ?remove, "unwatch");
            let req = DiscoveryRequest {
                request: Some(Req::Unwatch(v1::Unwatch { names: remove })),
            };
            tx.send(req).await.map_err(|_| ControlError::Closed)?;
        }
        *sent = now;
        Ok(())
    }

    /// Applies one response atomically and returns the ACK or NACK to send.
    fn on_response(&mut self, resp: &DiscoveryResponse) -> DiscoveryRequest {
        let mut next = self.resources.clone();
        let compiled = apply_response(&mut next, resp)
            .map_err(|e| (e.to_string(), Vec::new()))
            .and_then(|()| {
                self.store
                    .update(&resp.version, &next)
                    .map_err(|e| (e.to_string(), vec![e.resource().to_string()]))
            });
        match compiled {
            Ok(config) => {
                self.resources = next;
                self.config.send_replace(Arc::new(config));
                self.metrics.updates.inc();
                if let Some(m) = &self.data_metrics {
                    m.set_config_version(&resp.version);
                }
                self.status.send_modify(|s| {
                    s.version = Some(resp.version.clone());
                    s.last_nack = None;
                    s.updates += 1;
                });
                tracing::info!(
                    version = %resp.version,
                    resources = self.resources.len(),
                    full_state = resp.full_state,
                    "config applied",
                );
                DiscoveryRequest {
                    request: Some(Req::Ack(v1::Ack {
                        nonce: resp.nonce.clone(),
                        version: resp.version.clone(),
                    })),
                }
            }
            Err((error, resource_names)) => {
                let kept_version = self.status.borrow().version.clone().unwrap_or_default();
                tracing::warn!(
                    version = %resp.version,
                    kept_version = %kept_version,
                    %error,
                    "config rejected; keeping the previous one",
                );
                if let Some(m) = &self.data_metrics {
                    m.inc_nack();
                }
                self.status.send_modify(|s| {
                    s.last_nack = Some(error.clone());
                    s.nacks += 1;
                });
                DiscoveryRequest {
                    request: Some(Req::Nack(v1::Nack {
                        nonce: resp.nonce.clone(),
                        kept_version,
                        error,
                        resource_names,
                    })),
                }
            }
        }
    }
}

/// Resolves when `identity` has a valid certificate; never without one.
async fn wait_certificate(identity: Option<&Identity>) {
    match identity {
        Some(identity) => identity.valid_certificate().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the watched set changed; never without on-demand discovery.
async fn wait_demand(demand: Option<&Demand>) {
    match demand {
        Some(demand) => demand.changed().await,
        None => std::future::pending().await,
    }
}

/// How often idle watched names are looked for.
fn idle_sweep(demand: Option<&Demand>) -> Duration {
    demand.map_or(Duration::from_secs(3600), |d| {
        (d.idle / 4).max(Duration::from_secs(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_within_bounds() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
        };
        assert_eq!(b.bound(0), Duration::from_millis(100));
        assert_eq!(b.bound(3), Duration::from_millis(800));
        assert_eq!(b.bound(20), Duration::from_secs(30));
        assert_eq!(b.bound(u32::MAX), Duration::from_secs(30));
        for attempt in 0..40 {
            let d = b.delay(attempt);
            assert!(
                d >= Duration::from_millis(50) && d <= b.bound(attempt),
                "{d:?}"
            );
        }
    }
}
