//! TLS on the discovery port: the operator proves who it is to proxies.
//!
//! The port speaks both TLS and plaintext HTTP/2: the first byte of a connection decides
//! (`0x16`, a TLS handshake record, means TLS; anything else is the plaintext HTTP/2 preface), so
//! proxies and tools that predate TLS keep working unless `--require-control-tls` is set.
//!
//! The server certificate is issued by the mesh issuer itself (the CA that signs proxy
//! certificates) for the operator's own identity: the URI SAN
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` plus DNS SANs for the discovery
//! Service. It lives as long as a proxy leaf, is renewed at 70% of its lifetime, and is re-issued
//! on the next handshake after the issuer changes (hot reload of `--identity-issuer`). Proxies
//! verify it against trust anchors they get out of band (`WEFT_PROXY_TRUST_ANCHORS`), never from
//! this connection. See `docs/identity.md`.
//!
//! TLS clients are asked for a certificate, which is optional at the TLS layer: one that is
//! presented must verify against the mesh trust anchors (the issuer in force, re-read after a hot
//! reload) or the handshake fails. The verified peer's SPIFFE ID reaches the gRPC handlers as
//! [`ControlConnectInfo`] in the request extensions (the Discovery stream checks it against the
//! pod it subscribes for).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use weft_common::tls::{AnchoredClientVerifier, ClientAnchors};

use super::ca::{random_serial, to_system_time, unix_secs, CaStore, IssuerState};
use super::csr::SpiffeId;

/// First byte of a TLS record carrying a handshake (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a client may take to send its first byte and finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the gRPC server.
const QUEUE: usize = 64;

/// Who the operator is on the discovery port.
#[derive(Clone, Debug)]
pub struct ControlTlsOptions {
    /// URI SAN of the server certificate.
    pub identity: SpiffeId,
    /// DNS SANs (the discovery Service's names).
    pub dns_names: Vec<String>,
    /// Lifetime of the server certificate (capped by the issuer's expiry).
    pub lifetime: Duration,
    /// Refuse plaintext connections (`--require-control-tls`).
    pub require_tls: bool,
    /// Refuse Discovery streams whose connection carries no verified client certificate
    /// (`--require-discovery-identity`). `Certify` is not affected (proxies call it before they
    /// have a certificate).
    pub require_discovery_identity: bool,
}

impl ControlTlsOptions {
    /// The names of the discovery Service `service` in `namespace`:
    /// `<service>.<namespace>.svc`, `<service>.<namespace>.svc.<cluster-domain>`,
    /// `<service>.<namespace>` and `<service>`.
    pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
        vec![
            format!("{service}.{namespace}.svc.{cluster_domain}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}"),
            service.to_owned(),
        ]
    }
}

/// Why the server certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum ControlTlsError {
    #[error("no identity issuer is loaded")]
    NoIssuer,
    #[error("the identity issuer has expired")]
    IssuerExpired,
    #[error("issuing the discovery server certificate: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("discovery server key: {0}")]
    Key(String),
    #[error("invalid DNS name {0:?} for the discovery server certificate")]
    DnsName(String),
    #[error("client certificate verifier: {0}")]
    ClientVerifier(String),
}

struct Issued {
    issuer: Arc<IssuerState>,
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

/// Serves the current server certificate; issues a new one when it is due or the issuer changed.
pub struct ControlCertResolver {
    ca: Arc<CaStore>,
    opts: ControlTlsOptions,
    current: Mutex<Option<Issued>>,
}

impl std::fmt::Debug for ControlCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCertResolver")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl ControlCertResolver {
    /// Checks that a certificate can be issued now (so a bad name fails at startup).
    pub fn new(ca: Arc<CaStore>, opts: ControlTlsOptions) -> Result<Self, ControlTlsError> {
        for name in &opts.dns_names {
            if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() {
                return Err(ControlTlsError::DnsName(name.clone()));
            }
        }
        let resolver = ControlCertResolver {
            ca,
            opts,
            current: Mutex::new(None),
        };
        resolver.current_key()?;
        Ok(resolver)
    }

    /// The certificate in force, renewed first if it is due or the issuer changed.
    pub fn current_key(&self) -> Result<Arc<CertifiedKey>, ControlTlsError> {
        let issuer = self.ca.current().ok_or(ControlTlsError::NoIssuer)?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = current.as_ref() {
            if Arc::ptr_eq(&c.issuer, &issuer) && SystemTime::now() < c.renew_at {
                return Ok(Arc::clone(&c.key));
            }
        }
        let issued = self.issue(issuer)?;
        let key = Arc::clone(&issued.key);
        *current = Some(issued);
        Ok(key)
    }

    fn issue(&self, issuer: Arc<IssuerState>) -> Result<Issued, ControlTlsError> {
        let now = SystemTime::now();
        let not_before = now
            .checked_sub(super::service::DEFAULT_CLOCK_SKEW)
            .unwrap_or(now);
        let not_after = (now + self.opts.lifetime).min(issuer.issuer_not_after());
        if not_after <= now {
            return Err(ControlTlsError::IssuerExpired);
        }
        let trunc = |t: SystemTime| to_system_time(unix_secs(t));
        let (not_before, not_after) = (trunc(not_before), trunc(not_after));

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let mut sans = vec![SanType::URI(self.opts.identity.to_string().try_into()?)];
        for name in &self.opts.dns_names {
            sans.push(SanType::DnsName(name.clone().try_into()?));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &issuer.signer)?;

        let mut chain = vec![CertificateDer::from(cert.der().to_vec())];
        chain.extend(
            issuer
                .intermediates_der()
                .iter()
                .map(|d| CertificateDer::from(d.clone())),
        );
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = weft_common::tls::crypto_provider();
        let certified = CertifiedKey::from_der(chain, key_der, &provider)
            .map_err(|e| ControlTlsError::Key(e.to_string()))?;
        let lifetime = not_after.duration_since(now).unwrap_or(Duration::ZERO);
        tracing::info!(
            identity = %self.opts.identity,
            dns = ?self.opts.dns_names,
            expires_unix = unix_secs(not_after),
            "discovery server certificate issued"
        );
        Ok(Issued {
            issuer,
            key: Arc::new(certified),
            renew_at: now + lifetime.mul_f64(0.7),
        })
    }
}

impl ResolvesServerCert for ControlCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current_key() {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(error = %e, "no discovery server certificate; TLS handshake refused");
                None
            }
        }
    }
}

/// The trust anchors of the issuer in force, for the discovery port's client verifier
/// ([`weft_common::tls::AnchoredClientVerifier`], optional client certificates): the webpki
/// verifier is rebuilt when the issuer changes. A client without a certificate is let through:
/// the handlers decide (see [`ControlConnectInfo::client_identity`]).
pub struct MeshClientVerifier {
    ca: Arc<CaStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<Option<CachedVerifier>>,
}

/// The verifier built for one issuer's anchors.
type CachedVerifier = (Arc<IssuerState>, Arc<dyn ClientCertVerifier>);

impl std::fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClientVerifier").finish_non_exhaustive()
    }
}

impl MeshClientVerifier {
    /// Fails when the current issuer's anchors cannot make a verifier (so it fails at startup).
    pub fn new(ca: Arc<CaStore>) -> Result<Self, ControlTlsError> {
        let verifier = MeshClientVerifier {
            ca,
            provider: Arc::new(weft_common::tls::crypto_provider()),
            current: Mutex::new(None),
        };
        verifier.verifier_for_issuer()?;
        Ok(verifier)
    }

    fn verifier_for_issuer(&self) -> Result<Arc<dyn ClientCertVerifier>, ControlTlsError> {
        let issuer = self.ca.current().ok_or(ControlTlsError::NoIssuer)?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached, verifier)) = current.as_ref() {
            if Arc::ptr_eq(cached, &issuer) {
                return Ok(Arc::clone(verifier));
            }
        }
        let mut roots = RootCertStore::empty();
        for der in issuer.anchors_der() {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| ControlTlsError::ClientVerifier(e.to_string()))?;
        }
        let verifier =
            weft_common::tls::webpki_client_verifier(Arc::new(roots), Arc::clone(&self.provider))
                .map_err(|e| ControlTlsError::ClientVerifier(e.to_string()))?;
        *current = Some((issuer, Arc::clone(&verifier)));
        Ok(verifier)
    }
}

impl ClientAnchors for MeshClientVerifier {
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.verifier_for_issuer()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

/// TLS settings of the discovery port, ready to accept.
#[derive(Clone)]
pub struct ControlTls {
    acceptor: tokio_rustls::TlsAcceptor,
    require_tls: bool,
}

impl std::fmt::Debug for ControlTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlTls")
            .field("require_tls", &self.require_tls)
            .finish_non_exhaustive()
    }
}

impl ControlTls {
    /// Builds the acceptor (TLS 1.2/1.3, ALPN `h2`) over a [`ControlCertResolver`], asking
    /// clients for an optional certificate verified by a [`MeshClientVerifier`].
    pub fn new(ca: Arc<CaStore>, opts: ControlTlsOptions) -> Result<Self, ControlTlsError> {
        let require_tls = opts.require_tls;
        let provider = Arc::new(weft_common::tls::crypto_provider());
        let client_verifier = Arc::new(AnchoredClientVerifier::new(
            MeshClientVerifier::new(Arc::clone(&ca))?,
            Arc::clone(&provider),
            false,
        ));
        let resolver = Arc::new(ControlCertResolver::new(ca, opts)?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ControlTlsError::Key(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(resolver);
        // No resumption: each connection proves its current certificate.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ControlTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            require_tls,
        })
    }
}

/// One accepted connection on the discovery port.
pub enum ControlConn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ControlConn {
    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, ControlConn::Tls(_))
    }
}

/// What a connection on the discovery port proved, as seen by the gRPC handlers (in the request
/// extensions).
#[derive(Clone, Debug)]
pub struct ControlConnectInfo {
    /// The TCP peer.
    pub tcp: TcpConnectInfo,
    /// The connection is TLS.
    pub tls: bool,
    /// The client certificate, verified against the mesh trust anchors during the handshake:
    /// `None` without one (plaintext, or TLS without a client certificate), `Some(Err(..))`
    /// when it does not carry exactly one valid SPIFFE ID.
    pub client_identity: Option<Result<SpiffeId, String>>,
}

impl ControlConnectInfo {
    /// The TCP peer address.
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.remote_addr()
    }
}

/// The SPIFFE ID of a verified client certificate chain (leaf first).
fn client_identity(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, String> {
    weft_common::tls::spiffe_id(certs).map_err(|e| format!("client certificate: {e}"))
}

impl Connected for ControlConn {
    type ConnectInfo = ControlConnectInfo;

    fn connect_info(&self) -> ControlConnectInfo {
        match self {
            ControlConn::Plain(tcp) => ControlConnectInfo {
                tcp: tcp.connect_info(),
                tls: false,
                client_identity: None,
            },
            ControlConn::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                ControlConnectInfo {
                    tcp: tcp.connect_info(),
                    tls: true,
                    client_identity: session
                        .peer_certificates()
                        .filter(|c| !c.is_empty())
                        .map(client_identity),
                }
            }
        }
    }
}

impl AsyncRead for ControlConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ControlConn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ControlConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ControlConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ControlConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlConn::Plain(s) => Pin::new(s).poll_flush(cx),
            ControlConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ControlConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ControlConn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ControlConn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ControlConn::Plain(s) => s.is_write_vectored(),
            ControlConn::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The connections of the discovery port, for `serve_with_incoming_shutdown`: plaintext as they
/// come, TLS after the handshake (done off the accept loop, bounded by a timeout). Without `tls`
/// every connection is plaintext. The accept loop stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ControlTls>,
) -> ReceiverStream<Result<ControlConn, io::Error>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(error = %e, "discovery accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls.clone() else {
                if tx.send(Ok(ControlConn::Plain(tcp))).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, classify(tcp, &tls)).await {
                    Ok(Ok(Some(conn))) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::info!(peer = ?peer, error = %e, "discovery TLS handshake failed")
                    }
                    Err(_) => {
                        tracing::info!(peer = ?peer, "discovery connection sent nothing in time")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn classify(tcp: TcpStream, tls: &ControlTls) -> io::Result<Option<ControlConn>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    if first[0] == TLS_HANDSHAKE {
        let stream = tls.acceptor.accept(tcp).await?;
        return Ok(Some(ControlConn::Tls(Box::new(stream))));
    }
    if tls.require_tls {
        tracing::info!(
            peer = ?tcp.peer_addr().ok(),
            "plaintext discovery connection refused (--require-control-tls)"
        );
        return Ok(None);
    }
    Ok(Some(ControlConn::Plain(tcp)))
}

/// The issuer's trust anchors as PEM (what proxies get in `WEFT_PROXY_TRUST_ANCHORS`).
pub fn anchors_pem(issuer: &IssuerState) -> String {
    let blocks: Vec<pem::Pem> = issuer
        .anchors_der()
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.clone()))
        .collect();
    pem::encode_many_config(
        &blocks,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
