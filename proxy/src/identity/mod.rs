//! The proxy's identity: a key pair generated here (never sent), a certificate obtained from the
//! operator's `Identity.Certify` and renewed at 70% of its lifetime, and the rustls configurations
//! that use it for mTLS.
//!
//! ```ignore
//! let (identity, driver) = Identity::new(cfg, channel);
//! tokio::spawn(driver);
//! identity.ready().await;
//! let server = identity.server_config();   // inbound mTLS
//! let client = identity.client_config();   // outbound mTLS
//! let name = server_name_for("spiffe://cluster.local/ns/shop/sa/cart");
//! ```

mod anchors;
mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio::sync::watch;
use tonic::transport::Channel;
use weft_proxy_api::v1::identity_client::IdentityClient;
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse};

pub use anchors::{AnchorsError, TrustAnchors};
pub use tls::{
    identity_from_server_name, no_resumption_client, no_resumption_server, peer_identity, provider,
    server_name_for, SERVER_NAME_SUFFIX,
};
use tls::{CertState, ControlClientCert, CurrentCert, CurrentClientAnchors, MeshServerPeer};
use weft_common::tls::{AnchoredClientVerifier, AnchoredServerVerifier};

/// What the proxy needs to know to obtain its certificate.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// The operator's address (for logs; the connection is the `Channel` passed in).
    pub control_addr: String,
    /// Token presented with each request, re-read every time (projected tokens rotate).
    pub token_file: PathBuf,
    pub pod_namespace: String,
    pub pod_name: String,
    pub service_account: String,
    pub trust_domain: String,
    /// Trust anchors given out of band (`WEFT_PROXY_TRUST_ANCHORS`): the roots for verifying
    /// the issued certificate and peers, whatever the Certify response says. `None`: the
    /// response's anchors are used (trust on first use).
    pub trust_anchors: Option<TrustAnchors>,
}

impl IdentityConfig {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn spiffe_id(&self) -> String {
        // Formatted by the one SPIFFE ID type; not validated here (the operator refuses a
        // malformed identity in the CSR).
        weft_common::SpiffeId {
            trust_domain: self.trust_domain.clone(),
            namespace: self.pod_namespace.clone(),
            service_account: self.service_account.clone(),
        }
        .to_string()
    }
}

/// Timing of the certify/renew loop.
#[derive(Clone, Debug)]
pub struct RenewPolicy {
    /// Renew when this fraction of the remaining lifetime has passed (jittered down by up to 10%).
    pub renew_fraction: f64,
    /// Bound of the first retry delay after a failure; doubles up to `max_backoff` (each delay
    /// drawn by [`weft_common::Backoff`]).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of one Certify call.
    pub request_timeout: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        RenewPolicy {
            renew_fraction: 0.7,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why one certify attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading token file {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("Certify refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("Certify timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid Certify response: {0}")]
    InvalidResponse(String),
}

struct Shared {
    state: watch::Sender<Option<Arc<CertState>>>,
    server_config: Arc<rustls::ServerConfig>,
    mesh_server_config: Arc<rustls::ServerConfig>,
    client_config: Arc<rustls::ClientConfig>,
}

/// A handle on the proxy's identity; cheap to clone.
#[derive(Clone)]
pub struct Identity {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("identity", &self.local_identity())
            .field("expiry", &self.expiry())
            .finish()
    }
}

impl Identity {
    /// The handle and the driver future (certify at start, renew, retry with backoff). Spawn the
    /// future; dropping it stops renewal (the current certificate stays in use).
    pub fn new(
        cfg: IdentityConfig,
        channel: Channel,
    ) -> (Identity, impl Future<Output = ()> + Send + 'static) {
        Self::with_policy(cfg, channel, RenewPolicy::default())
    }

    /// [`Identity::new`] and spawn the driver on the current runtime.
    pub fn spawn(cfg: IdentityConfig, channel: Channel) -> Identity {
        let (identity, driver) = Self::new(cfg, channel);
        tokio::spawn(driver);
        identity
    }

    /// Like [`Identity::new`] with explicit timings.
    pub fn with_policy(
        cfg: IdentityConfig,
        channel: Channel,
        policy: RenewPolicy,
    ) -> (Identity, impl Future<Output = ()> + Send + 'static) {
        let identity = Identity::unconnected();
        let driver = run(
            identity.shared.state.clone(),
            cfg,
            IdentityClient::new(channel),
            policy,
        );
        (identity, driver)
    }

    fn unconnected() -> Identity {
        let state = watch::Sender::new(None);
        let provider = provider();
        let resolver = Arc::new(CurrentCert(state.subscribe()));
        let server_config = |mandatory: bool| {
            let verifier = Arc::new(AnchoredClientVerifier::new(
                CurrentClientAnchors(state.subscribe()),
                Arc::clone(&provider),
                mandatory,
            ));
            rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map(|b| {
                    b.with_client_cert_verifier(verifier)
                        .with_cert_resolver(resolver.clone())
                })
        };
        let mesh_server_config = server_config(true);
        let server_config = server_config(false);
        let server_verifier = Arc::new(AnchoredServerVerifier::new(
            MeshServerPeer(state.subscribe()),
            Arc::clone(&provider),
        ));
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(server_verifier)
                    .with_client_cert_resolver(resolver)
            });
        // The ring provider always supports TLS 1.3; these cannot fail.
        let (Ok(mut server_config), Ok(mut mesh_server_config), Ok(mut client_config)) =
            (server_config, mesh_server_config, client_config)
        else {
            unreachable!("ring supports TLS 1.3")
        };
        // No resumption: every connection verifies the peer's current certificate against the
        // current trust anchors, so renewals and anchor rotations take effect at once.
        no_resumption_server(&mut server_config);
        no_resumption_server(&mut mesh_server_config);
        no_resumption_client(&mut client_config);
        Identity {
            shared: Arc::new(Shared {
                state,
                server_config: Arc::new(server_config),
                mesh_server_config: Arc::new(mesh_server_config),
                client_config: Arc::new(client_config),
            }),
        }
    }

    /// True once a certificate is held (and stays true: an expired one is kept until renewed).
    pub fn is_ready(&self) -> bool {
        self.shared.state.borrow().is_some()
    }

    /// Waits until [`Identity::is_ready`].
    pub async fn ready(&self) {
        let mut rx = self.shared.state.subscribe();
        // The sender lives in `self`, so this only ends when a certificate is installed.
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Waits until [`Identity::has_valid_certificate`] (the first certificate, or a renewal of
    /// an expired one).
    pub async fn valid_certificate(&self) {
        let mut rx = self.shared.state.subscribe();
        let _ = rx
            .wait_for(|s| s.as_ref().is_some_and(|s| SystemTime::now() < s.not_after))
            .await;
    }

    /// Waits for the next certificate installed after this call (e.g. a renewal).
    pub async fn changed(&self) {
        let mut rx = self.shared.state.subscribe();
        rx.mark_unchanged();
        let _ = rx.changed().await;
    }

    /// This proxy's SPIFFE ID, once certified.
    pub fn local_identity(&self) -> Option<String> {
        self.shared
            .state
            .borrow()
            .as_ref()
            .map(|s| s.identity.clone())
    }

    /// When the current certificate expires.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.shared.state.borrow().as_ref().map(|s| s.not_after)
    }

    /// The current certificate chain (leaf first).
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.shared
            .state
            .borrow()
            .as_ref()
            .map(|s| s.certified.cert.clone())
            .unwrap_or_default()
    }

    /// The client certificate resolver for the control connection (the operator's discovery
    /// port): the current certificate, renewals included, while it is unexpired; nothing before
    /// the first one is issued.
    pub fn control_client_cert(&self) -> Arc<dyn rustls::client::ResolvesClientCert> {
        Arc::new(ControlClientCert(self.shared.state.subscribe()))
    }

    /// True when [`Identity::control_client_cert`] has a certificate to present now.
    pub fn has_valid_certificate(&self) -> bool {
        self.shared
            .state
            .borrow()
            .as_ref()
            .is_some_and(|s| SystemTime::now() < s.not_after)
    }

    /// Inbound TLS: serves the current certificate (renewals take effect without rebuilding
    /// anything), requests but does not require a client certificate and verifies one when given
    /// against the trust anchors. TLS 1.3 only. Read the peer with
    /// `conn.peer_certificates().and_then(|c| peer_identity(c))`. No ALPN is set: see
    /// [`Identity::server_config_with_alpn`].
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.shared.server_config)
    }

    /// The inbound listener's TLS: like [`Identity::server_config`], but a client certificate
    /// that verifies against the current trust anchors is required; without one the handshake
    /// fails.
    pub fn mesh_server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.shared.mesh_server_config)
    }

    /// Outbound TLS: presents the current certificate and accepts a server only if its chain
    /// verifies against the trust anchors and its URI SAN equals the identity encoded in the
    /// `ServerName` (build it with [`server_name_for`]). No ALPN is set: see
    /// [`Identity::client_config_with_alpn`].
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.shared.client_config)
    }

    /// [`Identity::server_config`] with ALPN protocols (e.g. `[b"h2", b"http/1.1"]`).
    pub fn server_config_with_alpn(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut cfg = (*self.shared.server_config).clone();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// [`Identity::client_config`] with ALPN protocols.
    pub fn client_config_with_alpn(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut cfg = (*self.shared.client_config).clone();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// `d` shortened by a random fraction of up to `spread` (renewals of many proxies issued together
/// do not all come back at once). Same RNG as [`weft_common::Backoff`] (rand's thread RNG).
fn jitter(d: Duration, spread: f64) -> Duration {
    let f: f64 = 1.0 - spread * rand::random::<f64>();
    d.mul_f64(f.clamp(0.0, 1.0))
}

async fn run(
    state: watch::Sender<Option<Arc<CertState>>>,
    cfg: IdentityConfig,
    mut client: IdentityClient<Channel>,
    policy: RenewPolicy,
) {
    let backoff = weft_common::Backoff::new(policy.initial_backoff, policy.max_backoff);
    let mut failures: u32 = 0;
    loop {
        match certify_once(&cfg, &mut client, &policy).await {
            Ok(new) => {
                let not_after = new.not_after;
                tracing::info!(
                    identity = %new.identity,
                    expires_unix = not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "identity certificate installed"
                );
                state.send_replace(Some(Arc::new(new)));
                failures = 0;
                let remaining = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                let wait = jitter(
                    remaining.mul_f64(policy.renew_fraction.clamp(0.0, 1.0)),
                    0.1,
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let wait = backoff.delay(failures);
                tracing::warn!(
                    error = %e,
                    control = %cfg.control_addr,
                    retry_in_ms = wait.as_millis() as u64,
                    have_certificate = state.borrow().is_some(),
                    "identity certificate not obtained; keeping the current one"
                );
                tokio::time::sleep(wait).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}

async fn certify_once(
    cfg: &IdentityConfig,
    client: &mut IdentityClient<Channel>,
    policy: &RenewPolicy,
) -> Result<CertState, IdentityError> {
    let token = tokio::fs::read(&cfg.token_file)
        .await
        .map_err(|source| IdentityError::Token {
            path: cfg.token_file.clone(),
            source,
        })?;
    let identity = cfg.spiffe_id();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.clone().try_into()?)];
    let csr = params.serialize_request(&key)?;
    let request = CertifyRequest {
        identity: identity.clone(),
        token,
        csr_der: csr.der().to_vec(),
        pod_namespace: cfg.pod_namespace.clone(),
        pod_name: cfg.pod_name.clone(),
    };
    let response = tokio::time::timeout(policy.request_timeout, client.certify(request))
        .await
        .map_err(|_| IdentityError::Timeout(policy.request_timeout))?
        .map_err(|s| IdentityError::Refused {
            code: s.code(),
            message: s.message().to_owned(),
        })?
        .into_inner();
    install_response(&identity, key, response, cfg.trust_anchors.as_ref())
}

fn install_response(
    identity: &str,
    key: KeyPair,
    response: CertifyResponse,
    configured: Option<&TrustAnchors>,
) -> Result<CertState, IdentityError> {
    let bad = |m: String| IdentityError::InvalidResponse(m);
    let provider = provider();
    let roots = match configured {
        Some(anchors) => {
            if !anchors.same_as(&response.trust_anchors_der) {
                tracing::warn!(
                    configured = anchors.certificates().len(),
                    from_operator = response.trust_anchors_der.len(),
                    "the operator's trust anchors differ from WEFT_PROXY_TRUST_ANCHORS; \
                     using the configured ones (rotate anchors by changing the injected variable)"
                );
            }
            anchors.roots()
        }
        None => {
            let mut roots = RootCertStore::empty();
            for der in response.trust_anchors_der {
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| bad(format!("trust anchor: {e}")))?;
            }
            Arc::new(roots)
        }
    };
    if roots.is_empty() {
        return Err(bad("no trust anchors".into()));
    }
    let leaf = CertificateDer::from(response.leaf_der);
    if peer_identity(std::slice::from_ref(&leaf)).as_deref() != Some(identity) {
        return Err(bad(format!("leaf is not for {identity}")));
    }
    let intermediates: Vec<CertificateDer<'static>> = response
        .intermediates_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    // The leaf must verify against the anchors we were given before we rely on it.
    let parsed = rustls::server::ParsedCertificate::try_from(&leaf)
        .map_err(|e| bad(format!("leaf: {e}")))?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &intermediates,
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| bad(format!("leaf does not chain to the trust anchors: {e}")))?;
    drop(parsed);

    let mut chain = vec![leaf];
    chain.extend(intermediates);
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = CertifiedKey::from_der(chain, key_der, &provider)
        .map_err(|e| bad(format!("leaf does not match our key: {e}")))?;
    let client_verifier =
        weft_common::tls::webpki_client_verifier(Arc::clone(&roots), Arc::clone(&provider))
            .map_err(|e| bad(format!("trust anchors: {e}")))?;
    let not_after =
        UNIX_EPOCH + Duration::from_millis(u64::try_from(response.not_after_unix_ms).unwrap_or(0));
    Ok(CertState {
        identity: identity.to_owned(),
        certified: Arc::new(certified),
        roots,
        client_verifier,
        not_after,
    })
}
