//! The per-proxy stream: subscribe, first full-state response, incremental pushes, ACK/NACK.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tonic::{Status, Streaming};
use weft_proxy_api::v1;
use weft_proxy_api::v1::discovery_request::Request as Req;

use super::encode::{EncodeCache, Encoded, Queued, ResponseBuilder};
use super::ondemand::{self, Deps, DiscoveryMode, IpIndexCache, Item, Watched};
use super::server::{DiscoveryServer, Peer};
use super::wake::WakeIndex;
use super::{DiscoveryMetrics, ProxyInfo, ProxyRegistry, Published, SnapshotRx};
use crate::compile::{ProxyConfig, ProxyKey, ResourceKind};
use crate::identity::SpiffeId;
use crate::shutdown::Shutdown;

/// Tunables of the discovery service.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Trust domain used to derive a proxy's identity from its service account.
    pub trust_domain: String,
    /// Responses queued per stream before the stream waits for the proxy to read.
    pub queue_depth: usize,
    /// How long a new stream may take to send `Subscribe`.
    pub subscribe_timeout: Duration,
    /// Refuse streams without a verified client certificate (`--require-discovery-identity`).
    pub require_client_identity: bool,
    /// Whether proxies that declare on-demand support are served on demand.
    pub mode: DiscoveryMode,
    /// `--discovery-max-stream-age`: a stream older than this (jittered by ±10 % per stream) is
    /// ended with an OK status, so that the proxy reconnects at once, possibly to another replica
    /// (proxies rebalance after a replica comes back). `None`: streams live until either side
    /// ends them.
    pub max_stream_age: Option<Duration>,
}

/// Default of `--discovery-max-stream-age`.
pub const DEFAULT_MAX_STREAM_AGE: Duration = Duration::from_secs(30 * 60);

/// The lifetime of one stream: `max` jittered by up to ±10 % (so that the proxies connected at
/// the same moment, after a replica restart, do not all reconnect at the same moment again).
pub fn stream_lifetime(max: Duration) -> Duration {
    max.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            trust_domain: "cluster.local".to_string(),
            queue_depth: 2,
            subscribe_timeout: Duration::from_secs(30),
            require_client_identity: false,
            mode: DiscoveryMode::PushAll,
            max_stream_age: None,
        }
    }
}

/// The Discovery service: one task per proxy stream.
#[derive(Clone)]
pub struct DiscoveryService {
    snapshots: SnapshotRx,
    registry: Arc<ProxyRegistry>,
    metrics: DiscoveryMetrics,
    shutdown: Shutdown,
    options: ServiceOptions,
    cache: Arc<EncodeCache>,
    ips: Arc<IpIndexCache>,
    wake: Arc<WakeIndex>,
}

impl DiscoveryService {
    pub fn new(
        snapshots: SnapshotRx,
        registry: Arc<ProxyRegistry>,
        metrics: DiscoveryMetrics,
        shutdown: Shutdown,
        options: ServiceOptions,
    ) -> Self {
        DiscoveryService {
            snapshots,
            registry,
            metrics,
            shutdown,
            options,
            cache: Arc::new(EncodeCache::default()),
            ips: Arc::new(IpIndexCache::default()),
            wake: Arc::new(WakeIndex::default()),
        }
    }

    /// The tower service for this service, to add to a tonic `Router`.
    pub fn into_server(self) -> DiscoveryServer {
        DiscoveryServer::new(self)
    }

    /// Waits for `Subscribe`, registers the proxy and starts its stream task. Returns the
    /// queue of encoded responses.
    pub(crate) async fn open(
        &self,
        mut inbound: Streaming<v1::DiscoveryRequest>,
        peer: Peer,
    ) -> Result<mpsc::Receiver<Queued>, Status> {
        if peer.identity.is_none() && self.options.require_client_identity {
            self.metrics.refuse(REFUSED_NO_IDENTITY);
            tracing::info!(
                peer = %peer.remote_addr,
                tls = peer.tls,
                "discovery stream refused: no client certificate (--require-discovery-identity)"
            );
            return Err(Status::unauthenticated(
                "this operator requires a client certificate on Discovery \
                 (--require-discovery-identity): connect over TLS with the mesh certificate \
                 obtained from Certify",
            ));
        }
        let first = tokio::time::timeout(self.options.subscribe_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Subscribe received in time"))??;
        let subscribe = match first {
            Some(v1::DiscoveryRequest {
                request: Some(Req::Subscribe(s)),
            }) => s,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a discovery stream must be Subscribe",
                ))
            }
            None => return Err(Status::cancelled("stream closed before Subscribe")),
        };
        if subscribe.pod_namespace.is_empty() || subscribe.pod_name.is_empty() {
            return Err(Status::invalid_argument(
                "Subscribe needs pod_namespace and pod_name",
            ));
        }
        if self.shutdown.is_triggered() {
            return Err(Status::unavailable("operator is shutting down"));
        }
        let key = ProxyKey::new(subscribe.pod_namespace.clone(), subscribe.pod_name.clone());
        let verified = match self.authorize(&peer, &key, &subscribe.service_account) {
            Ok(verified) => verified,
            Err(reason) => {
                self.metrics.refuse(REFUSED_MISMATCH);
                tracing::warn!(
                    peer = %peer.remote_addr,
                    pod = %format!("{}/{}", key.namespace, key.name),
                    %reason,
                    "discovery stream refused: client identity does not match the pod"
                );
                return Err(Status::permission_denied(reason));
            }
        };
        let sa = match &verified {
            Some(id) => id.service_account.clone(),
            None if subscribe.service_account.is_empty() => "default".to_string(),
            None => subscribe.service_account.clone(),
        };
        let info = ProxyInfo {
            pod: format!("{}/{}", subscribe.pod_namespace, subscribe.pod_name),
            identity: weft_common::SpiffeId {
                trust_domain: self.options.trust_domain.clone(),
                namespace: subscribe.pod_namespace.clone(),
                service_account: sa.clone(),
            }
            .to_string(),
            authenticated: verified.is_some(),
            service_account: sa.clone(),
            proxy_version: subscribe.proxy_version.clone(),
            remote_addr: peer.remote_addr,
            connected_since: chrono::Utc::now().to_rfc3339(),
            ..ProxyInfo::default()
        };
        let watched =
            (self.options.mode == DiscoveryMode::OnDemand && subscribe.on_demand).then(|| {
                let mut w = Watched::default();
                w.watch(&subscribe.watch);
                w
            });
        let info = ProxyInfo {
            on_demand: watched.is_some(),
            watched: watched.as_ref().map_or(0, Watched::len),
            ..info
        };
        if watched.is_some() {
            self.wake.start(self.snapshots.clone());
        }
        let id = self.registry.insert(info);
        self.metrics.connected.inc();
        self.metrics.streams_total.inc();
        let (tx, rx) = mpsc::channel(self.options.queue_depth.max(1));
        let state = StreamState {
            id,
            key,
            service_account: sa,
            verified: verified.map(|id| id.to_string()),
            known_versions: Some(subscribe.known_versions),
            held: None,
            need_full: true,
            rejected_version: None,
            nonce_seq: 0,
            pending: VecDeque::new(),
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            cache: self.cache.clone(),
            watched,
            held_view: None,
            seen: None,
            watch_changed: false,
            ips: self.ips.clone(),
            wake: self.wake.clone(),
            notify: Arc::new(Notify::new()),
            indexed: false,
            look_again: false,
        };
        let guard = StreamGuard {
            id,
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            wake: self.wake.clone(),
        };
        tokio::spawn(run_stream(
            state,
            guard,
            inbound,
            tx,
            self.snapshots.clone(),
            self.shutdown.clone(),
            self.options.max_stream_age.map(stream_lifetime),
        ));
        Ok(rx)
    }

    /// Checks the connection's client identity against the pod `key` (which claims to run as
    /// `claimed_sa`). `Ok(Some(id))`: authenticated as `id`; `Ok(None)`: no client certificate
    /// (accepted: `require_client_identity` was checked before); `Err(reason)`: refused.
    ///
    /// A pod the model knows must run as the certificate's identity (its service account in the
    /// model). A pod the model does not know yet (its proxy may start before the operator sees
    /// it) is accepted when the certificate is for the same trust domain and namespace and the
    /// claimed service account, and gets the config of that identity; the check is repeated on
    /// every response, so the stream ends once the pod appears with another service account.
    fn authorize(
        &self,
        peer: &Peer,
        key: &ProxyKey,
        claimed_sa: &str,
    ) -> Result<Option<SpiffeId>, String> {
        let id = match &peer.identity {
            None => return Ok(None),
            Some(Err(e)) => return Err(format!("unusable client certificate: {e}")),
            Some(Ok(id)) => id,
        };
        let pod = format!("{}/{}", key.namespace, key.name);
        if id.trust_domain != self.options.trust_domain || id.namespace != key.namespace {
            return Err(format!(
                "client certificate identity {id} may not subscribe for pod {pod}: \
                 not in trust domain {:?} and namespace {:?}",
                self.options.trust_domain, key.namespace
            ));
        }
        if !claimed_sa.is_empty() && claimed_sa != id.service_account {
            return Err(format!(
                "client certificate identity {id} may not subscribe for pod {pod} \
                 as service account {claimed_sa:?}"
            ));
        }
        let published = self.snapshots.borrow().clone();
        if let Some(expected) = published
            .and_then(|p| p.compiled.proxy(key))
            .and_then(|config| inbound_identity(&config).map(str::to_owned))
        {
            if expected != id.to_string() {
                return Err(mismatch(&id.to_string(), &pod, &expected));
            }
        }
        Ok(Some(id.clone()))
    }
}

const REFUSED_MISMATCH: &str = "identity_mismatch";
const REFUSED_NO_IDENTITY: &str = "no_client_identity";

/// The identity the pod's config is for (its service account in the model).
fn inbound_identity(config: &ProxyConfig) -> Option<&str> {
    match &config.inbound.resource {
        ResourceKind::Inbound(policy) => Some(policy.identity.as_str()),
        _ => None,
    }
}

fn mismatch(client: &str, pod: &str, expected: &str) -> String {
    format!(
        "client certificate identity {client} may not subscribe for pod {pod}, \
         which runs as {expected}"
    )
}

/// Removes the registry entry and decrements the gauge however the stream ends.
struct StreamGuard {
    id: u64,
    registry: Arc<ProxyRegistry>,
    metrics: DiscoveryMetrics,
    wake: Arc<WakeIndex>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.wake.remove(self.id);
        self.registry.remove(self.id);
        self.metrics.connected.dec();
    }
}

/// A response sent and not yet answered.
struct Pending {
    nonce: String,
    version: String,
    /// When the change behind it was observed; `None` for a first response.
    changed_at: Option<Instant>,
}

const MAX_PENDING: usize = 16;

struct StreamState {
    id: u64,
    key: ProxyKey,
    service_account: String,
    /// The SPIFFE ID proven by the connection's client certificate, if any: every config sent
    /// must be for it.
    verified: Option<String>,
    /// What the proxy reported holding (used only by the first response).
    known_versions: Option<BTreeMap<String, String>>,
    /// The config the proxy holds once it applied everything sent (`None`: unknown).
    held: Option<Arc<ProxyConfig>>,
    /// The next response must be full state (first response, or after a NACK).
    need_full: bool,
    /// A config version the proxy NACKed: not sent again.
    rejected_version: Option<String>,
    nonce_seq: u64,
    pending: VecDeque<Pending>,
    registry: Arc<ProxyRegistry>,
    metrics: DiscoveryMetrics,
    cache: Arc<EncodeCache>,
    /// `Some`: served on demand, with what the proxy watches.
    watched: Option<Watched>,
    /// On demand: name to version of what the proxy holds once it applied everything sent, and
    /// the view's version (`None`: unknown, the next response is full state).
    held_view: Option<(BTreeMap<String, String>, String)>,
    /// On demand: the sequence number of the snapshot the proxy's view was last built from (or
    /// found unaffected by), and what that view depends on.
    seen: Option<(u64, Deps)>,
    /// On demand: the watched set changed since the last response (so the next one is caused by
    /// the proxy, not by a change of the mesh).
    watch_changed: bool,
    ips: Arc<IpIndexCache>,
    /// On demand: the index that wakes this stream (through `notify`) once its view is
    /// registered there (`indexed`); until then the stream looks at every snapshot.
    wake: Arc<WakeIndex>,
    notify: Arc<Notify>,
    indexed: bool,
    /// A snapshot newer than the view just registered was already dispatched: look again.
    look_again: bool,
}

/// Ends a stream with `UNAVAILABLE` (the operator is stopping), so the proxy reconnects, never
/// with a clean OK end of stream; gives up after 1 s if the queue stays full.
async fn end_unavailable(tx: &mpsc::Sender<Queued>) {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tx.send(Err(Box::new(Status::unavailable(
            "operator shutting down; reconnect",
        )))),
    )
    .await;
}

async fn run_stream(
    mut state: StreamState,
    _guard: StreamGuard,
    mut inbound: Streaming<v1::DiscoveryRequest>,
    tx: mpsc::Sender<Queued>,
    mut snapshots: SnapshotRx,
    mut shutdown: Shutdown,
    lifetime: Option<Duration>,
) {
    // Something to send: the first response, or a snapshot change not yet looked at.
    let mut dirty = true;
    let expired = async {
        match lifetime {
            Some(lifetime) => tokio::time::sleep(lifetime).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    let notify = state.notify.clone();
    loop {
        let indexed = state.indexed;
        tokio::select! {
            biased;
            () = &mut expired => {
                // Recycled: what is queued is still delivered, then the stream ends with an OK
                // status, which the proxy takes as "reconnect now" (no backoff, not an error).
                tracing::debug!(
                    pod = %format!("{}/{}", state.key.namespace, state.key.name),
                    "discovery stream reached its maximum age; ending it so the proxy reconnects"
                );
                return;
            }
            _ = shutdown.triggered() => {
                // Send nothing more; tell the proxy to reconnect (to another replica).
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    tx.send(Err(Box::new(Status::unavailable("operator shutting down; reconnect")))),
                )
                .await;
                return;
            }
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if let Some(resend) = state.on_request(req) {
                        dirty |= resend;
                    } else {
                        let _ = tx.try_send(Err(Box::new(Status::invalid_argument(
                            "Subscribe may only be sent once per stream",
                        ))));
                        return;
                    }
                }
                Ok(None) | Err(_) => return,
            },
            () = notify.notified(), if !dirty && indexed => {
                if state.wake.is_closed() {
                    end_unavailable(&tx).await;
                    return;
                }
                dirty = true;
            }
            changed = snapshots.changed(), if !dirty && !indexed => {
                if changed.is_err() {
                    // The compiler is gone (the operator is stopping): end with a status that
                    // makes the proxy reconnect, never with a clean OK end of stream.
                    end_unavailable(&tx).await;
                    return;
                }
                dirty = true;
            }
            permit = tx.reserve(), if dirty => {
                let Ok(permit) = permit else { return };
                dirty = false;
                let published = snapshots.borrow_and_update().clone();
                if let Some(published) = published {
                    if let Some(response) = state.next_response(&published) {
                        let end = response.is_err();
                        if let Ok(encoded) = &response {
                            let bytes = encoded.len() as u64;
                            state.registry.update(state.id, |info| info.bytes_sent += bytes);
                            state.metrics.bytes_sent.inc_by(bytes);
                        }
                        permit.send(response.map_err(Box::new));
                        if end {
                            return;
                        }
                    }
                }
                dirty |= std::mem::take(&mut state.look_again);
            }
        }
    }
}

impl StreamState {
    /// Handles an ACK or NACK. Returns whether a full-state resend is due, or `None` for a
    /// protocol violation.
    fn on_request(&mut self, req: v1::DiscoveryRequest) -> Option<bool> {
        match req.request {
            Some(Req::Ack(ack)) => {
                self.metrics.acks.inc();
                if let Some(pos) = self.pending.iter().position(|p| p.nonce == ack.nonce) {
                    if let Some(changed_at) = self.pending[pos].changed_at {
                        self.metrics
                            .push_to_ack_seconds
                            .observe(changed_at.elapsed().as_secs_f64());
                    }
                    self.pending.drain(..=pos);
                }
                self.registry.update(self.id, |info| {
                    info.last_acked_version = Some(ack.version);
                    info.last_nack_error = None;
                    info.acks += 1;
                });
                Some(false)
            }
            Some(Req::Nack(nack)) => {
                self.metrics.nacks.inc();
                tracing::warn!(
                    pod = %format!("{}/{}", self.key.namespace, self.key.name),
                    nonce = %nack.nonce,
                    error = %nack.error,
                    "proxy rejected config"
                );
                let mut resend = false;
                if let Some(pos) = self.pending.iter().position(|p| p.nonce == nack.nonce) {
                    let latest = pos + 1 == self.pending.len();
                    self.rejected_version = Some(self.pending[pos].version.clone());
                    // A later response was built on top of the rejected one: resend full state.
                    resend = !latest;
                    self.pending.drain(..=pos);
                }
                // The proxy kept its previous config, which we can no longer diff against.
                self.need_full = true;
                self.held = None;
                self.held_view = None;
                self.registry.update(self.id, |info| {
                    info.last_nack_error = Some(nack.error);
                    info.last_nack_at = Some(chrono::Utc::now().to_rfc3339());
                    info.nacks += 1;
                });
                Some(resend)
            }
            Some(Req::Subscribe(_)) => None,
            Some(Req::Watch(w)) => Some(self.change_watch(|set| set.watch(&w.names))),
            Some(Req::Unwatch(w)) => Some(self.change_watch(|set| set.unwatch(&w.names))),
            None => Some(false),
        }
    }

    /// Applies a Watch or Unwatch; returns whether a response may be due. Ignored (as the
    /// protocol says) on a stream not served on demand.
    fn change_watch(&mut self, f: impl FnOnce(&mut Watched) -> bool) -> bool {
        let Some(watched) = &mut self.watched else {
            return false;
        };
        let changed = f(watched);
        let (len, ignored) = (watched.len(), watched.ignored);
        self.watch_changed |= changed;
        self.registry.update(self.id, |info| info.watched = len);
        if ignored > 0 {
            tracing::debug!(
                pod = %format!("{}/{}", self.key.namespace, self.key.name),
                ignored,
                "watch names ignored (invalid or over the limit)"
            );
        }
        changed
    }

    /// The response that brings the proxy to `published`, or `None` when it already has it.
    fn next_response(&mut self, published: &Published) -> Option<Result<Encoded, Status>> {
        if self.unaffected(published) {
            return None;
        }
        let proxy = published
            .compiled
            .proxy_or_default(&self.key, &self.service_account);
        if let Err(status) = self.check_identity(&proxy) {
            return Some(Err(status));
        }
        if self.watched.is_some() {
            return self.next_on_demand(published, &proxy);
        }
        if self.rejected_version.as_deref() == Some(proxy.version.as_str()) {
            return None;
        }
        let first = self.known_versions.is_some();
        let full = self.need_full;
        let held = match (&self.held, full) {
            (Some(held), false) => {
                if held.version == proxy.version {
                    return None;
                }
                Some(held.clone())
            }
            _ => None,
        };
        self.nonce_seq += 1;
        let nonce = self.nonce_seq.to_string();
        let mut response = ResponseBuilder::new(&nonce, &proxy.version, full);
        match held {
            Some(held) => {
                if held.inbound.version != proxy.inbound.version {
                    response.resource(&proxy.inbound);
                }
                if !Arc::ptr_eq(&held.shared, &proxy.shared) {
                    response.shared(&self.cache.diff(&held.shared, &proxy.shared));
                }
            }
            None => {
                let known = self.known_versions.take().unwrap_or_default();
                if known.is_empty() {
                    response.resource(&proxy.inbound);
                    response.shared(&self.cache.full(&proxy.shared));
                } else {
                    let mut unchanged = Vec::new();
                    if known.get(&proxy.inbound.name) == Some(&proxy.inbound.version) {
                        unchanged.push(proxy.inbound.name.clone());
                    } else {
                        response.resource(&proxy.inbound);
                    }
                    for r in proxy.shared.iter() {
                        if known.get(&r.name) == Some(&r.version) {
                            unchanged.push(r.name.clone());
                        } else {
                            response.shared(&self.cache.entry(&proxy.shared, r));
                        }
                    }
                    response.unchanged(&unchanged);
                }
            }
        }
        let response = response.finish();
        self.held = Some(proxy.clone());
        let changed_at = (!first).then_some(published.changed_at);
        self.sent(nonce, proxy.version.clone(), full, changed_at, proxy.len());
        Some(response)
    }

    /// Books a response: pending answer, metrics, registry.
    fn sent(
        &mut self,
        nonce: String,
        version: String,
        full: bool,
        changed_at: Option<Instant>,
        resources: usize,
    ) {
        self.need_full = false;
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            nonce: nonce.clone(),
            version: version.clone(),
            changed_at,
        });
        let kind = if full { "full" } else { "incremental" };
        self.metrics
            .pushes
            .get_or_create(&super::metrics::PushLabels { kind })
            .inc();
        self.registry.update(self.id, |info| {
            info.last_sent_version = Some(version);
            info.last_sent_nonce = Some(nonce);
            info.pushes += 1;
            info.resources = resources;
        });
    }

    /// Ends the stream when the certificate's identity is not the pod's (any more).
    fn check_identity(&self, proxy: &ProxyConfig) -> Result<(), Status> {
        if let (Some(verified), Some(expected)) = (&self.verified, inbound_identity(proxy)) {
            if verified != expected {
                let pod = format!("{}/{}", self.key.namespace, self.key.name);
                let reason = mismatch(verified, &pod, expected);
                self.metrics.refuse(REFUSED_MISMATCH);
                tracing::warn!(%pod, %reason, "discovery stream ended: the pod's identity changed");
                return Err(Status::permission_denied(reason));
            }
        }
        Ok(())
    }

    /// On demand: whether `published` leaves the view the proxy holds as it is, known without
    /// rebuilding the view: nothing changed since the snapshot it was built from, or the one
    /// change since then touches nothing the view depends on (then that snapshot is the new
    /// base). A gap of several snapshots, a changed watch set or a full state due rebuild the view.
    fn unaffected(&mut self, published: &Published) -> bool {
        if self.watched.is_none()
            || self.watch_changed
            || self.need_full
            || self.held_view.is_none()
        {
            return false;
        }
        let compiled = &published.compiled;
        let seq = compiled.seq();
        let Some((seen, deps)) = &mut self.seen else {
            return false;
        };
        let same =
            *seen == seq || (*seen + 1 == seq && !deps.affected_by(compiled.changes(), &self.key));
        if same {
            *seen = seq;
        }
        same
    }

    /// On demand: the response that brings the proxy to the view of `published` for what it
    /// watches, or `None` when it already holds it (a change to anything else sends nothing).
    fn next_on_demand(
        &mut self,
        published: &Published,
        proxy: &ProxyConfig,
    ) -> Option<Result<Encoded, Status>> {
        let watched = self.watched.as_ref()?;
        let mut view = ondemand::view(proxy, watched, &self.ips);
        let seq = published.compiled.seq();
        self.look_again |= self
            .wake
            .register(self.id, &self.key, &view.deps, seq, &self.notify);
        self.indexed = true;
        self.seen = Some((seq, std::mem::take(&mut view.deps)));
        let by_watch = std::mem::take(&mut self.watch_changed);
        if self.rejected_version.as_deref() == Some(view.version.as_str()) {
            return None;
        }
        let first = self.known_versions.is_some();
        let full = self.need_full;
        let held = match (&self.held_view, full) {
            (Some((held, version)), false) => {
                if *version == view.version {
                    return None;
                }
                Some(held)
            }
            _ => None,
        };
        self.nonce_seq += 1;
        let nonce = self.nonce_seq.to_string();
        let mut response = ResponseBuilder::new(&nonce, &view.version, full);
        response.on_demand();
        let add = |response: &mut ResponseBuilder, item: &Item| match item {
            Item::Resource(r) if Arc::ptr_eq(r, &proxy.inbound) => response.resource(r),
            Item::Resource(r) => response.shared(&self.cache.entry(&proxy.shared, r)),
            Item::Ip { proto, .. } => response.proto(proto),
        };
        match held {
            Some(held) => {
                for (name, item) in &view.items {
                    if held.get(name).map(String::as_str) != Some(item.version()) {
                        add(&mut response, item);
                    }
                }
                let removed: Vec<String> = held
                    .keys()
                    .filter(|n| !view.items.contains_key(*n))
                    .cloned()
                    .collect();
                response.removed(&removed);
            }
            None => {
                let known = self.known_versions.take().unwrap_or_default();
                let mut unchanged = Vec::new();
                for (name, item) in &view.items {
                    if known.get(name).map(String::as_str) == Some(item.version()) {
                        unchanged.push(name.clone());
                    } else {
                        add(&mut response, item);
                    }
                }
                response.unchanged(&unchanged);
            }
        }
        let response = response.finish();
        let resources = view.items.len();
        let changed_at = (!first && !by_watch).then_some(published.changed_at);
        self.held_view = Some((view.versions(), view.version.clone()));
        self.sent(nonce, view.version, full, changed_at, resources);
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_lifetimes_are_jittered_within_ten_percent() {
        let max = Duration::from_secs(1800);
        let lifetimes: Vec<Duration> = (0..200).map(|_| stream_lifetime(max)).collect();
        for l in &lifetimes {
            assert!(*l >= max.mul_f64(0.9) && *l <= max.mul_f64(1.1), "{l:?}");
        }
        // Spread, not one value for every stream.
        assert!(lifetimes.iter().any(|l| *l < max.mul_f64(0.99)));
        assert!(lifetimes.iter().any(|l| *l > max.mul_f64(1.01)));
    }
}
