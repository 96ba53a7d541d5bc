//! The operator's client side of a proxy's tap port: a client certificate it issues itself, from
//! the mesh issuer, for its own SPIFFE identity (the one proxies allow to tap,
//! `WEFT_PROXY_TAP_IDENTITY` / `WEFT_PROXY_CONTROL_IDENTITY`), and a server verifier that wants
//! the tapped pod's identity.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{Error, RootCertStore, SignatureScheme};
use weft_common::tls::{not_valid_for_name, spiffe_uri, AnchoredServerVerifier, ServerPeer};

use crate::identity::ca::{random_serial, to_system_time, unix_secs, CaStore, IssuerState};
use crate::identity::SpiffeId;

/// Lifetime of the operator's tap client certificate (renewed at 70 %).
pub const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

struct Issued {
    issuer: Arc<IssuerState>,
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

/// Issues (and renews) the operator's tap client certificate: URI SAN = its identity, EKU
/// clientAuth only.
pub struct TapClientCert {
    ca: Arc<CaStore>,
    identity: SpiffeId,
    current: Mutex<Option<Issued>>,
}

impl std::fmt::Debug for TapClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapClientCert")
            .field("identity", &self.identity.to_string())
            .finish_non_exhaustive()
    }
}

impl TapClientCert {
    pub fn new(ca: Arc<CaStore>, identity: SpiffeId) -> Self {
        TapClientCert {
            ca,
            identity,
            current: Mutex::new(None),
        }
    }

    /// The operator's identity this certificate carries.
    pub fn identity(&self) -> String {
        self.identity.to_string()
    }

    /// The certificate in force, issued first when due or when the issuer changed.
    pub fn current_key(&self) -> Result<Arc<CertifiedKey>, String> {
        let issuer = self.ca.current().ok_or("no identity issuer")?;
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

    fn issue(&self, issuer: Arc<IssuerState>) -> Result<Issued, String> {
        let now = SystemTime::now();
        let not_before = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        let not_after = (now + CLIENT_CERT_LIFETIME).min(issuer.issuer_not_after());
        if not_after <= now {
            return Err("the identity issuer has expired".into());
        }
        let trunc = |t: SystemTime| to_system_time(unix_secs(t));
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            self.identity
                .to_string()
                .try_into()
                .map_err(|e: rcgen::Error| e.to_string())?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = trunc(not_before).into();
        params.not_after = trunc(not_after).into();
        let cert = params
            .signed_by(&key, &issuer.signer)
            .map_err(|e| e.to_string())?;
        let mut chain = vec![CertificateDer::from(cert.der().to_vec())];
        chain.extend(
            issuer
                .intermediates_der()
                .iter()
                .map(|d| CertificateDer::from(d.clone())),
        );
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = weft_common::tls::crypto_provider();
        let certified =
            CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| e.to_string())?;
        let lifetime = not_after.duration_since(now).unwrap_or(Duration::ZERO);
        Ok(Issued {
            issuer,
            key: Arc::new(certified),
            renew_at: now + lifetime.mul_f64(0.7),
        })
    }

    /// A TLS client config that presents this certificate and accepts only a server chaining to
    /// the mesh anchors whose SPIFFE ID is `expected` (the tapped pod's).
    pub fn client_config(
        self: &Arc<Self>,
        expected: String,
    ) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(weft_common::tls::crypto_provider());
        let issuer = self.ca.current().ok_or("no identity issuer")?;
        let mut roots = RootCertStore::empty();
        for der in issuer.anchors_der() {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| e.to_string())?;
        }
        let verifier = AnchoredServerVerifier::new(
            PodPeer {
                roots: Arc::new(roots),
                expected,
            },
            Arc::clone(&provider),
        );
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

#[derive(Debug)]
struct Resolver(Arc<TapClientCert>);

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        match self.0.current_key() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "no tap client certificate");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The tapped proxy must chain to the anchors and carry the pod's SPIFFE ID.
#[derive(Debug)]
struct PodPeer {
    roots: Arc<RootCertStore>,
    expected: String,
}

impl ServerPeer for PodPeer {
    fn roots(&self) -> Result<Arc<RootCertStore>, Error> {
        Ok(Arc::clone(&self.roots))
    }

    fn check_peer(
        &self,
        _leaf: &ParsedCertificate<'_>,
        end_entity: &CertificateDer<'_>,
        _server_name: &ServerName<'_>,
    ) -> Result<(), Error> {
        match spiffe_uri(end_entity) {
            Ok(id) if id == self.expected => Ok(()),
            _ => Err(not_valid_for_name()),
        }
    }
}
