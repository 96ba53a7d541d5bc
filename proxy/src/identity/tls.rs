//! rustls glue of the mesh: certificate resolvers that read the current certificate, the trust
//! anchors in force for the shared verifiers of `weft_common::tls` (chain against the anchors,
//! then the peer's SPIFFE identity), and SPIFFE identities carried in server names.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{Error, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use weft_common::tls::{not_valid_for_name, ClientAnchors, ServerPeer};

/// Suffix of the server names that carry an expected SPIFFE identity.
pub const SERVER_NAME_SUFFIX: &str = "id.weft.invalid";
const HASH_MARK: &str = "h";
const BASE32_MARK: &str = "b";
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The proxy's certificate and trust anchors in force.
pub(crate) struct CertState {
    pub(crate) identity: String,
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) not_after: std::time::SystemTime,
}

pub(crate) type StateRx = watch::Receiver<Option<Arc<CertState>>>;

/// The crypto provider used everywhere in the proxy's identity code (ring, explicitly), with the
/// TLS 1.3 cipher suites in the order the mesh link should use them.
///
/// ring's default order puts AES-256-GCM-SHA384 first. Between two proxies (the server follows
/// the client's order) AES-128-GCM-SHA256 is preferred where the CPU has AES and carry-less
/// multiply instructions: it matches the 128-bit strength of the P-256 certificates and X25519
/// key exchange the mesh uses, and costs 10-12 % less per handshake (SHA-256 against SHA-384)
/// and 5-15 % less per record (`docs/benchmarks.md`, "TLS on the mesh link"). Without those
/// instructions ChaCha20-Poly1305 comes first: ring's constant-time AES without them is slow.
/// Every suite stays offered, so a peer with another order still connects.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = weft_common::tls::crypto_provider();
    let first = if aes_in_hardware() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    } else {
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    };
    // A stable sort: the preferred suite first, the others in ring's order.
    provider.cipher_suites.sort_by_key(|s| s.suite() != first);
    Arc::new(provider)
}

/// Whether this CPU encrypts AES-GCM in hardware (AES rounds and carry-less multiplication).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = BASE32.iter().position(|&x| x == c)? as u32;
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

fn labels(s: &str) -> String {
    let chunks: Vec<&str> = s
        .as_bytes()
        .chunks(63)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    chunks.join(".")
}

/// Turns TLS session resumption off on a server configuration: no session cache, no TLS 1.3
/// tickets. The proxy's policy (docs/identity.md): every connection verifies the peer's current
/// certificate against the current trust anchors, so renewals and anchor rotations take effect
/// at once.
pub fn no_resumption_server(config: &mut rustls::ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// [`no_resumption_server`] for a client configuration: it neither stores nor offers sessions.
pub fn no_resumption_client(config: &mut rustls::ClientConfig) {
    config.resumption = rustls::client::Resumption::disabled();
}

/// The TLS server name under which a client expects to meet `identity` (a SPIFFE ID).
///
/// The identity is encoded as DNS labels under [`SERVER_NAME_SUFFIX`] (base32, or a SHA-256
/// digest when too long for a DNS name); the client verifier of [`super::Identity::client_config`]
/// decodes it and requires the server certificate's URI SAN to be exactly `identity`.
pub fn server_name_for(identity: &str) -> ServerName<'static> {
    let encoded = format!(
        "{}.{BASE32_MARK}.{SERVER_NAME_SUFFIX}",
        labels(&base32(identity.as_bytes()))
    );
    let name = if encoded.len() <= 253 && !identity.is_empty() {
        encoded
    } else {
        let digest = hex(&Sha256::digest(identity.as_bytes()));
        format!("{}.{HASH_MARK}.{SERVER_NAME_SUFFIX}", labels(&digest))
    };
    // Always a valid DNS name: lowercase base32/hex labels of at most 63 characters.
    ServerName::try_from(name).unwrap_or_else(|_| {
        ServerName::try_from(SERVER_NAME_SUFFIX)
            .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a server name says the peer must be.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Exact(String),
    Digest(String),
}

impl Expected {
    fn from_server_name(name: &ServerName<'_>) -> Option<Expected> {
        let ServerName::DnsName(dns) = name else {
            return None;
        };
        let dns = dns.as_ref().trim_end_matches('.');
        let rest = dns.strip_suffix(SERVER_NAME_SUFFIX)?.strip_suffix('.')?;
        let (body, mark) = rest.rsplit_once('.')?;
        let joined: String = body.split('.').collect();
        match mark {
            BASE32_MARK => Some(Expected::Exact(String::from_utf8(unbase32(&joined)?).ok()?)),
            HASH_MARK if joined.len() == 64 => Some(Expected::Digest(joined)),
            _ => None,
        }
    }

    fn matches(&self, identity: &str) -> bool {
        match self {
            Expected::Exact(e) => e == identity,
            Expected::Digest(d) => *d == hex(&Sha256::digest(identity.as_bytes())),
        }
    }
}

/// The SPIFFE ID decoded from a server name made by [`server_name_for`] (not for hashed names).
pub fn identity_from_server_name(name: &ServerName<'_>) -> Option<String> {
    match Expected::from_server_name(name)? {
        Expected::Exact(id) => Some(id),
        Expected::Digest(_) => None,
    }
}

/// The SPIFFE ID (the URI SAN starting with `spiffe://`) of the first certificate, if it has
/// exactly one ([`weft_common::tls::spiffe_uri`]).
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<String> {
    weft_common::tls::spiffe_uri(certs.first()?).ok()
}

/// Serves the current certificate; the same `ServerConfig` serves each renewed one.
#[derive(Debug)]
pub(crate) struct CurrentCert(pub(crate) StateRx);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|s| Arc::clone(&s.certified))
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|s| Arc::clone(&s.certified))
    }

    fn has_certs(&self) -> bool {
        self.0.borrow().is_some()
    }
}

/// The client certificate for the control connection: the current certificate, as long as it
/// has not expired (an expired one would make the operator refuse the handshake; without one
/// the connection is still possible, e.g. while a renewal is pending).
#[derive(Debug)]
pub(crate) struct ControlClientCert(pub(crate) StateRx);

impl ControlClientCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .borrow()
            .as_ref()
            .filter(|s| std::time::SystemTime::now() < s.not_after)
            .map(|s| Arc::clone(&s.certified))
    }
}

impl ResolvesClientCert for ControlClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

impl std::fmt::Debug for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertState")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn no_identity() -> Error {
    Error::General("this proxy has no identity certificate yet".into())
}

/// The trust anchors of the certificate in force, for the mesh client verifier
/// ([`weft_common::tls::AnchoredClientVerifier`]). With `mandatory` (the inbound listener: a
/// mesh connection carries the transport header, which only a proxy with a mesh identity may
/// send) the handshake fails without a client certificate; otherwise one is verified when
/// presented. Without a certificate of its own the proxy verifies nothing and refuses.
#[derive(Debug)]
pub(crate) struct CurrentClientAnchors(pub(crate) StateRx);

impl ClientAnchors for CurrentClientAnchors {
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        self.0
            .borrow()
            .as_ref()
            .map(|s| Arc::clone(&s.client_verifier))
            .ok_or_else(no_identity)
    }
}

/// A mesh server must chain to the current trust anchors and carry, as its one SPIFFE URI SAN,
/// the identity encoded in the server name ([`server_name_for`]).
#[derive(Debug)]
pub(crate) struct MeshServerPeer(pub(crate) StateRx);

impl ServerPeer for MeshServerPeer {
    fn roots(&self) -> Result<Arc<RootCertStore>, Error> {
        self.0
            .borrow()
            .as_ref()
            .map(|s| Arc::clone(&s.roots))
            .ok_or_else(no_identity)
    }

    fn check_peer(
        &self,
        _leaf: &ParsedCertificate<'_>,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
    ) -> Result<(), Error> {
        let expected = Expected::from_server_name(server_name).ok_or_else(|| {
            Error::General(format!(
                "server name {server_name:?} does not carry a SPIFFE identity; use server_name_for()"
            ))
        })?;
        match peer_identity(std::slice::from_ref(end_entity)) {
            Some(id) if expected.matches(&id) => Ok(()),
            _ => Err(not_valid_for_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_round_trip() {
        for id in [
            "spiffe://cluster.local/ns/default/sa/default",
            "spiffe://example.org/ns/a-b.c/sa/x",
        ] {
            let name = server_name_for(id);
            assert_eq!(identity_from_server_name(&name).as_deref(), Some(id));
            let expected = Expected::from_server_name(&name).unwrap();
            assert!(expected.matches(id));
            assert!(!expected.matches("spiffe://cluster.local/ns/default/sa/other"));
        }
    }

    #[test]
    fn long_identities_use_a_digest() {
        let id = format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            "n".repeat(63),
            "s".repeat(200)
        );
        let name = server_name_for(&id);
        assert!(identity_from_server_name(&name).is_none());
        let expected = Expected::from_server_name(&name).unwrap();
        assert!(expected.matches(&id));
        assert!(!expected.matches("spiffe://cluster.local/ns/default/sa/default"));
    }

    #[test]
    fn base32_round_trips() {
        for s in [
            &b""[..],
            b"a",
            b"ab",
            b"abc",
            b"abcd",
            b"abcde",
            b"\xff\x00\x10",
        ] {
            assert_eq!(unbase32(&base32(s)).unwrap(), s);
        }
    }

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// An identity holding a certificate for `id` issued by `issuer` (whose certificate is
    /// `ca`), without an operator.
    fn identity(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        ca: &CertificateDer<'static>,
        id: &str,
    ) -> super::super::Identity {
        let key = ok(rcgen::KeyPair::generate());
        let mut params = ok(rcgen::CertificateParams::new(Vec::<String>::new()));
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(ok(rcgen::string::Ia5String::try_from(
                id.to_string(),
            ))));
        let leaf = ok(params.signed_by(&key, issuer)).der().clone();
        let provider = provider();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = ok(CertifiedKey::from_der(
            vec![leaf, ca.clone()],
            key_der,
            &provider,
        ));
        let mut roots = RootCertStore::empty();
        ok(roots.add(ca.clone()));
        let roots = Arc::new(roots);
        let client_verifier: Arc<dyn ClientCertVerifier> =
            ok(rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::clone(&roots),
                provider,
            )
            .allow_unauthenticated()
            .build());
        let identity = super::super::Identity::unconnected();
        identity.shared.state.send_replace(Some(Arc::new(CertState {
            identity: id.to_string(),
            certified: Arc::new(certified),
            roots,
            client_verifier,
            not_after: std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        })));
        identity
    }

    /// Serves one TLS connection per accept with `config`: answers `hello` once the handshake
    /// is done.
    async fn server(config: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
        let listener = ok(tokio::net::TcpListener::bind("127.0.0.1:0").await);
        let addr = ok(listener.local_addr());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"hello").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    /// What a client reads from `addr`: `hello`, or nothing when refused.
    async fn call(
        config: Arc<rustls::ClientConfig>,
        addr: std::net::SocketAddr,
        id: &str,
    ) -> Vec<u8> {
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = ok(tokio::net::TcpStream::connect(addr).await);
        let mut out = Vec::new();
        if let Ok(mut tls) = connector.connect(server_name_for(id), tcp).await {
            let _ = tls.read_to_end(&mut out).await;
        }
        out
    }

    #[derive(Debug)]
    struct NoClientCert;

    impl ResolvesClientCert for NoClientCert {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            None
        }
        fn has_certs(&self) -> bool {
            false
        }
    }

    /// The inbound listener's TLS requires a client certificate from the mesh: without one, or
    /// with one from another CA, the handshake fails; the general server config (optional
    /// client certificates) is unchanged.
    #[tokio::test]
    async fn mesh_server_config_requires_a_client_certificate() {
        let api = "spiffe://cluster.local/ns/demo/sa/api";
        let web = "spiffe://cluster.local/ns/demo/sa/web";
        let new_ca = || {
            let key = ok(rcgen::KeyPair::generate());
            let mut params = ok(rcgen::CertificateParams::new(Vec::<String>::new()));
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let der = ok(params.self_signed(&key)).der().clone();
            (rcgen::Issuer::new(params, key), der)
        };
        let (issuer, ca) = new_ca();
        let server_id = identity(&issuer, &ca, api);
        let client_id = identity(&issuer, &ca, web);
        let mesh = server(server_id.mesh_server_config()).await;
        let optional = server(server_id.server_config()).await;

        assert_eq!(call(client_id.client_config(), mesh, api).await, b"hello");
        let mut anonymous = (*client_id.client_config()).clone();
        anonymous.client_auth_cert_resolver = Arc::new(NoClientCert);
        let anonymous = Arc::new(anonymous);
        assert_eq!(call(anonymous.clone(), mesh, api).await, b"");
        // Another CA's certificate (the client trusts both, so only the server can refuse).
        let (other_issuer, other_ca) = new_ca();
        let foreign = identity(&other_issuer, &other_ca, web);
        let mut foreign_cfg = (*client_id.client_config()).clone();
        foreign_cfg.client_auth_cert_resolver =
            Arc::new(CurrentCert(foreign.shared.state.subscribe()));
        assert_eq!(call(Arc::new(foreign_cfg), mesh, api).await, b"");
        // Unchanged: the general server config serves a client without a certificate.
        assert_eq!(call(anonymous, optional, api).await, b"hello");
    }

    /// The suite two proxies agree on, on the wire, is the preferred one (AES-128-GCM on a CPU
    /// with AES instructions, ChaCha20-Poly1305 without), and a peer that prefers another suite
    /// (an older proxy, ring's default order) still connects and gets its own first choice.
    #[tokio::test]
    async fn proxies_negotiate_the_preferred_suite_and_still_accept_others() {
        use rustls::CipherSuite::{
            TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
        };
        let api = "spiffe://cluster.local/ns/demo/sa/api";
        let web = "spiffe://cluster.local/ns/demo/sa/web";
        let key = ok(rcgen::KeyPair::generate());
        let mut params = ok(rcgen::CertificateParams::new(Vec::<String>::new()));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ok(params.self_signed(&key)).der().clone();
        let issuer = rcgen::Issuer::new(params, key);
        let server_id = identity(&issuer, &ca, api);
        let client_id = identity(&issuer, &ca, web);
        let addr = server(server_id.mesh_server_config()).await;
        let negotiated = |config: Arc<rustls::ClientConfig>| async move {
            let connector = tokio_rustls::TlsConnector::from(config);
            let tcp = ok(tokio::net::TcpStream::connect(addr).await);
            let mut tls = ok(connector.connect(server_name_for(api), tcp).await);
            let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
            // X25519, weft's first key-exchange group, whatever ring's default order (rustls
            // 0.23.48 put P-384 first); classical, not a post-quantum hybrid: ring has none
            // (docs/security.md, "Known limits").
            let group = tls
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| g.name());
            assert_eq!(group, Some(rustls::NamedGroup::X25519));
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            assert_eq!(out, b"hello");
            suite
        };

        let preferred = if aes_in_hardware() {
            TLS13_AES_128_GCM_SHA256
        } else {
            TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(negotiated(client_id.client_config()).await, Some(preferred));
        // Every suite ring offers is still offered, the preferred one first.
        let offered: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let default: Vec<_> = weft_common::tls::crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(offered.first(), Some(&preferred));
        assert_eq!(offered.len(), default.len());
        assert!(default.iter().all(|s| offered.contains(s)));

        // A peer with ring's default order (AES-256 first) connects with its choice.
        let mut older = weft_common::tls::crypto_provider();
        older
            .cipher_suites
            .retain(|s| s.suite() == TLS13_AES_256_GCM_SHA384);
        let older = Arc::new(older);
        // The proxy's own server verifier, on the older provider: the older peer verifies the
        // server as any proxy does.
        let verifier = weft_common::tls::AnchoredServerVerifier::new(
            MeshServerPeer(client_id.shared.state.subscribe()),
            Arc::clone(&older),
        );
        let older = ok(rustls::ClientConfig::builder_with_provider(older)
            .with_protocol_versions(&[&rustls::version::TLS13]))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentCert(client_id.shared.state.subscribe())));
        assert_eq!(
            negotiated(Arc::new(older)).await,
            Some(TLS13_AES_256_GCM_SHA384)
        );
    }

    #[test]
    fn other_names_carry_no_identity() {
        let name = ServerName::try_from("web.default.svc.cluster.local").unwrap();
        assert!(Expected::from_server_name(&name).is_none());
    }
}
