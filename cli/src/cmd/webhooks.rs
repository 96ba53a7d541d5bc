//! Does a webhook's `caBundle` sign the certificate its Service actually presents?
//!
//! The API server calls a webhook at `https://<service>.<namespace>.svc:<port>` and verifies the
//! serving certificate against the `caBundle` of the configuration, for that host name. This
//! module does the same handshake from where `weft check` runs: it connects to each ready
//! endpoint of the Service and verifies the presented chain with the caBundle as the only root,
//! with the Service's DNS name as SNI and as the name to verify.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// How long a connection to one endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The result of one handshake.
#[derive(Debug, PartialEq)]
pub enum Probe {
    /// The caBundle verifies the presented certificate for the name; days until the serving
    /// certificate expires.
    Verified { days_left: Option<f64> },
    /// The endpoint answered TLS, but the caBundle does not verify its certificate (the
    /// API server's calls fail the same way).
    Rejected(String),
    /// No TLS conversation from here (not routable, refused, timed out): nothing is known.
    Unreachable(String),
}

/// The certificates of a PEM caBundle. Errors when there is none.
pub fn bundle_roots(ca_bundle: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(ca_bundle) {
        let cert = cert.map_err(|e| format!("the caBundle is not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the caBundle holds a certificate rustls cannot use: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("the caBundle holds no certificate".into());
    }
    Ok(roots)
}

/// Handshakes with `addr`, verifying against `ca_bundle` (PEM) for `host`.
pub async fn probe(addr: SocketAddr, host: &str, ca_bundle: &[u8]) -> Probe {
    let roots = match bundle_roots(ca_bundle) {
        Ok(r) => r,
        Err(e) => return Probe::Rejected(e),
    };
    let provider = Arc::new(weft_common::tls::crypto_provider());
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        Err(e) => return Probe::Unreachable(format!("TLS setup: {e}")),
    };
    let name = match ServerName::try_from(host.to_string()) {
        Ok(n) => n,
        Err(e) => return Probe::Rejected(format!("`{host}` is not a DNS name: {e}")),
    };
    let tcp =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Probe::Unreachable(crate::cluster::io_cause(&e)),
            Err(_) => {
                return Probe::Unreachable(format!(
                    "no connection within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            }
        };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => {
            let days_left = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| der_days_left(c.as_ref()));
            Probe::Verified { days_left }
        }
        Ok(Err(e)) => {
            // rustls reports a certificate the roots do not verify as InvalidData wrapping
            // `invalid peer certificate: ...`.
            let text = e.to_string();
            if text.contains("certificate") {
                Probe::Rejected(text)
            } else {
                Probe::Unreachable(format!("TLS handshake: {text}"))
            }
        }
        Err(_) => Probe::Unreachable(format!(
            "no TLS handshake within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Days until a DER certificate expires.
pub fn der_days_left(der: &[u8]) -> Option<f64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some((cert.validity().not_after.timestamp() - now) as f64 / 86_400.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    struct Ca {
        pem: String,
        issuer: rcgen::Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).expect("ca");
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// A TLS server on loopback presenting a certificate for `names` signed by `ca`.
    async fn server(ca: &Ca, names: &[&str]) -> SocketAddr {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
        let provider = Arc::new(weft_common::tls::crypto_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(s).await;
                });
            }
        });
        addr
    }

    const HOST: &str = "weft-operator.weft-system.svc";

    #[tokio::test]
    async fn the_right_bundle_verifies_and_another_ca_is_rejected() {
        let good = ca("webhook-ca");
        let other = ca("stale-ca");
        let addr = server(&good, &[HOST]).await;
        match probe(addr, HOST, good.pem.as_bytes()).await {
            Probe::Verified { days_left } => assert!(days_left.is_some()),
            p => panic!("expected verified: {p:?}"),
        }
        match probe(addr, HOST, other.pem.as_bytes()).await {
            Probe::Rejected(why) => assert!(why.contains("certificate"), "{why}"),
            p => panic!("a stale caBundle must be rejected: {p:?}"),
        }
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_rejected() {
        let good = ca("webhook-ca");
        let addr = server(&good, &["something-else.default.svc"]).await;
        assert!(matches!(
            probe(addr, HOST, good.pem.as_bytes()).await,
            Probe::Rejected(_)
        ));
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_and_garbage_is_rejected() {
        let good = ca("webhook-ca");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        match probe(addr, HOST, good.pem.as_bytes()).await {
            Probe::Unreachable(why) => assert!(why.contains("refused"), "{why}"),
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            probe(addr, HOST, b"not pem").await,
            Probe::Rejected(_)
        ));
    }
}
