//! rustls glue shared by the proxy's mesh TLS and both sides of the control-plane TLS (feature
//! `tls`): the SPIFFE identity a certificate carries, and certificate verifiers that check a
//! chain against the trust anchors in force with webpki, then the peer's identity.
//!
//! The crypto provider every weft process builds its TLS with is [`crypto_provider`], the one
//! place that choice is made; the verifiers take the caller's. Nothing here does I/O.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use x509_parser::extensions::GeneralName;

use crate::spiffe::{SpiffeId, SCHEME};

/// The crypto provider of every TLS configuration weft builds (mesh link, control plane,
/// webhooks, tap, the CLI and the tests): rustls's *ring* provider, with the key-exchange groups
/// in weft's order, [`KX_GROUPS`]. weft's own configurations are given it explicitly; the
/// operator installs it as the process default only for kube's client, which looks the default
/// up.
///
/// rustls 0.23.48 deprecates this provider because *ring* has no post-quantum key exchange:
/// rustls offers the hybrid X25519MLKEM768 group only with aws-lc-rs. weft keeps *ring* for now
/// and says so in docs/identity.md, "Crypto provider"; this function is where a move would be
/// made, once, for every caller. It stays the one home by itself: any other call of
/// `ring::default_provider` is a deprecation warning, which CI's `cargo clippy -- -D warnings`
/// refuses.
#[allow(deprecated)]
pub fn crypto_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = KX_GROUPS.to_vec();
    provider
}

/// Key-exchange groups, in the order a client offers them and a server picks them: X25519
/// first (constant-time by construction, as fast as P-256 in *ring*, and the 128-bit strength of
/// the mesh's P-256 certificates), then P-256 and P-384 for peers without it. Written out here
/// rather than taken from the provider: rustls 0.23.48 moved P-384 to the front of *ring*'s
/// default order, which made every handshake between two weft processes use P-384, 4.3 times
/// X25519's CPU on each side (600 against 140 µs; `proxy/examples/handshake_cost.rs`,
/// docs/benchmarks.md, "Dependencies updated, and the key exchange pinned").
pub static KX_GROUPS: &[&dyn rustls::crypto::SupportedKxGroup] = &[
    rustls::crypto::ring::kx_group::X25519,
    rustls::crypto::ring::kx_group::SECP256R1,
    rustls::crypto::ring::kx_group::SECP384R1,
];

/// Why a certificate does not carry exactly one SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    /// No certificate at all.
    #[error("empty certificate chain")]
    EmptyChain,
    /// The certificate or its SAN extension does not parse.
    #[error("invalid certificate: {0}")]
    Parse(String),
    /// No URI SAN starting with `spiffe://`.
    #[error("the certificate has no SPIFFE ID")]
    NoSpiffeId,
    /// More than one: the certificate names no single identity.
    #[error("the certificate has several SPIFFE IDs")]
    SeveralSpiffeIds,
    /// One SPIFFE URI, but not of weft's form (`spiffe://<td>/ns/<ns>/sa/<sa>`).
    #[error("invalid SPIFFE ID {0:?}")]
    Invalid(String),
}

/// The SPIFFE URI of a certificate: its one URI SAN starting with `spiffe://`, as written (any
/// trust domain or path). Several such SANs name no single identity and are an error.
pub fn spiffe_uri(cert: &CertificateDer<'_>) -> Result<String, CertIdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| CertIdentityError::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| CertIdentityError::Parse(format!("SAN: {e}")))?
        .ok_or(CertIdentityError::NoSpiffeId)?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with(SCHEME) => Some(*u),
        _ => None,
    });
    let first = ids.next().ok_or(CertIdentityError::NoSpiffeId)?;
    if ids.next().is_some() {
        return Err(CertIdentityError::SeveralSpiffeIds);
    }
    Ok(first.to_owned())
}

/// The SPIFFE ID of a certificate chain's leaf (the first certificate): [`spiffe_uri`], parsed
/// as a weft identity.
pub fn spiffe_id(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, CertIdentityError> {
    let leaf = chain.first().ok_or(CertIdentityError::EmptyChain)?;
    let uri = spiffe_uri(leaf)?;
    SpiffeId::parse(&uri).map_err(|_| CertIdentityError::Invalid(uri))
}

/// The rustls error for a verified certificate that names another peer.
pub fn not_valid_for_name() -> Error {
    Error::InvalidCertificate(CertificateError::NotValidForName)
}

/// A webpki client verifier for `roots` that lets a client without a certificate through (the
/// caller decides whether one is mandatory, see [`AnchoredClientVerifier`]).
pub fn webpki_client_verifier(
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    WebPkiClientVerifier::builder_with_provider(roots, provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::General(format!("client certificate verifier: {e}")))
}

/// What a server certificate must prove, for an [`AnchoredServerVerifier`].
pub trait ServerPeer: fmt::Debug + Send + Sync {
    /// The trust anchors in force (they may change at runtime; an error refuses the handshake).
    fn roots(&self) -> Result<Arc<RootCertStore>, Error>;
    /// Called once the chain verified: checks that the leaf is the peer expected under
    /// `server_name` (see [`spiffe_uri`] and [`not_valid_for_name`]).
    fn check_peer(
        &self,
        leaf: &ParsedCertificate<'_>,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
    ) -> Result<(), Error>;
}

/// Verifies a server's chain against the anchors of `P` with webpki, then its identity with
/// `P`. The proxy's mesh client and its control-plane client use it.
#[derive(Debug)]
pub struct AnchoredServerVerifier<P> {
    peer: P,
    provider: Arc<CryptoProvider>,
}

impl<P: ServerPeer> AnchoredServerVerifier<P> {
    /// A verifier that checks signatures with `provider`'s algorithms.
    pub fn new(peer: P, provider: Arc<CryptoProvider>) -> Self {
        Self { peer, provider }
    }
}

impl<P: ServerPeer> ServerCertVerifier for AnchoredServerVerifier<P> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let roots = self.peer.roots()?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        self.peer.check_peer(&parsed, end_entity, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Where an [`AnchoredClientVerifier`] gets the webpki verifier of the anchors in force (built
/// with [`webpki_client_verifier`], rebuilt when the anchors change).
pub trait ClientAnchors: fmt::Debug + Send + Sync {
    /// The verifier for the anchors in force; an error refuses the handshake.
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, Error>;
}

/// Verifies client certificates against the anchors of `A` (which may change at runtime).
/// `mandatory`: a client without a certificate fails the handshake; otherwise one is verified
/// when presented and the application decides what an anonymous client may do. The proxy's
/// inbound listeners and the operator's discovery port use it.
#[derive(Debug)]
pub struct AnchoredClientVerifier<A> {
    anchors: A,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl<A: ClientAnchors> AnchoredClientVerifier<A> {
    /// A verifier that checks signatures with `provider`'s algorithms.
    pub fn new(anchors: A, provider: Arc<CryptoProvider>, mandatory: bool) -> Self {
        Self {
            anchors,
            provider,
            mandatory,
        }
    }

    /// Where the anchors come from.
    pub fn anchors(&self) -> &A {
        &self.anchors
    }
}

impl<A: ClientAnchors> ClientCertVerifier for AnchoredClientVerifier<A> {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The anchors can change at runtime; mesh clients hold a single certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.anchors
            .verifier()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(uris: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut params = rcgen::CertificateParams::new(vec!["web.demo".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(u.to_string()).unwrap_or_else(|e| panic!("{e}")),
            ));
        }
        params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .clone()
    }

    fn ok<T, E: fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A CA and its roots.
    fn ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, Arc<RootCertStore>) {
        let key = ok(rcgen::KeyPair::generate());
        let mut params = ok(rcgen::CertificateParams::new(Vec::<String>::new()));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = ok(params.self_signed(&key)).der().clone();
        let mut roots = RootCertStore::empty();
        ok(roots.add(der));
        (rcgen::Issuer::new(params, key), Arc::new(roots))
    }

    fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, uri: &str) -> CertificateDer<'static> {
        let key = ok(rcgen::KeyPair::generate());
        let mut params = ok(rcgen::CertificateParams::new(Vec::<String>::new()));
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(ok(rcgen::string::Ia5String::try_from(
                uri.to_owned(),
            ))));
        ok(params.signed_by(&key, issuer)).der().clone()
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(super::crypto_provider())
    }

    /// Expects one SPIFFE URI, whatever the server name.
    #[derive(Debug)]
    struct Expect {
        roots: Option<Arc<RootCertStore>>,
        id: &'static str,
    }

    impl ServerPeer for Expect {
        fn roots(&self) -> Result<Arc<RootCertStore>, Error> {
            self.roots
                .clone()
                .ok_or_else(|| Error::General("no anchors".into()))
        }
        fn check_peer(
            &self,
            _leaf: &ParsedCertificate<'_>,
            end_entity: &CertificateDer<'_>,
            _server_name: &ServerName<'_>,
        ) -> Result<(), Error> {
            match spiffe_uri(end_entity) {
                Ok(id) if id == self.id => Ok(()),
                _ => Err(not_valid_for_name()),
            }
        }
    }

    #[derive(Debug)]
    struct Anchors(Option<Arc<RootCertStore>>);

    impl ClientAnchors for Anchors {
        fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, Error> {
            let roots = self
                .0
                .clone()
                .ok_or_else(|| Error::General("no anchors".into()))?;
            webpki_client_verifier(roots, provider())
        }
    }

    #[test]
    fn verifiers_check_the_chain_against_the_anchors_then_the_peer() {
        let web = "spiffe://cluster.local/ns/demo/sa/web";
        let (issuer, roots) = ca();
        let (other_issuer, _) = ca();
        let good = leaf(&issuer, web);
        let impostor = leaf(&issuer, "spiffe://cluster.local/ns/demo/sa/other");
        let foreign = leaf(&other_issuer, web);
        let name = ok(ServerName::try_from("web.demo"));
        let now = UnixTime::now();

        let server = |roots: Option<Arc<RootCertStore>>| {
            AnchoredServerVerifier::new(Expect { roots, id: web }, provider())
        };
        let verify = |v: &AnchoredServerVerifier<Expect>, cert: &CertificateDer<'_>| {
            v.verify_server_cert(cert, &[], &name, &[], now).is_ok()
        };
        let v = server(Some(Arc::clone(&roots)));
        assert!(verify(&v, &good));
        assert!(!verify(&v, &impostor), "another identity of the same CA");
        assert!(!verify(&v, &foreign), "the right identity from another CA");
        assert!(!verify(&server(None), &good), "no anchors in force");

        let client = |anchors, mandatory| {
            AnchoredClientVerifier::new(Anchors(anchors), provider(), mandatory)
        };
        let v = client(Some(Arc::clone(&roots)), true);
        assert!(v.offer_client_auth() && v.client_auth_mandatory());
        assert!(!client(Some(Arc::clone(&roots)), false).client_auth_mandatory());
        assert!(v.verify_client_cert(&good, &[], now).is_ok());
        assert!(v.verify_client_cert(&foreign, &[], now).is_err());
        assert!(client(None, false)
            .verify_client_cert(&good, &[], now)
            .is_err());
    }

    #[test]
    fn a_certificate_names_one_spiffe_identity_or_none() {
        let web = "spiffe://cluster.local/ns/demo/sa/web";
        let one = cert(&["https://example.org/x", web]);
        assert_eq!(spiffe_uri(&one).as_deref(), Ok(web));
        assert_eq!(
            spiffe_id(&[one]),
            Ok(SpiffeId::new("cluster.local", "demo", "web").unwrap_or_else(|e| panic!("{e}")))
        );

        let two = cert(&[web, "spiffe://cluster.local/ns/demo/sa/admin"]);
        assert_eq!(spiffe_uri(&two), Err(CertIdentityError::SeveralSpiffeIds));
        assert_eq!(spiffe_uri(&cert(&[])), Err(CertIdentityError::NoSpiffeId));
        assert_eq!(spiffe_id(&[]), Err(CertIdentityError::EmptyChain));
        assert!(matches!(
            spiffe_uri(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])),
            Err(CertIdentityError::Parse(_))
        ));

        // Any SPIFFE URI is "the" identity of the certificate; only weft's form is a SpiffeId.
        let other = "spiffe://example.org/workload/x";
        assert_eq!(spiffe_uri(&cert(&[other])).as_deref(), Ok(other));
        assert_eq!(
            spiffe_id(&[cert(&[other])]),
            Err(CertIdentityError::Invalid(other.to_owned()))
        );
    }
}
