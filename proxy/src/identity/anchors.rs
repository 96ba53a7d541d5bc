//! Trust anchors given to the proxy out of band (`WEFT_PROXY_TRUST_ANCHORS[_FILE]`).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// One or more CA certificates the proxy trusts: for the operator's discovery certificate and
/// for its peers' certificates.
#[derive(Clone)]
pub struct TrustAnchors {
    der: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("certificates", &self.der.len())
            .finish()
    }
}

/// PEM text that is not a usable set of trust anchors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnchorsError {
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("no CERTIFICATE block in the PEM text")]
    Empty,
    #[error("certificate {index} is not a usable trust anchor: {reason}")]
    Certificate { index: usize, reason: String },
}

impl TrustAnchors {
    /// Parses PEM text with one or more `CERTIFICATE` blocks (other blocks are ignored).
    pub fn from_pem(pem: &str) -> Result<Self, AnchorsError> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AnchorsError::Pem(e.to_string()))?;
        Self::from_der(der)
    }

    /// From DER certificates.
    pub fn from_der(der: Vec<CertificateDer<'static>>) -> Result<Self, AnchorsError> {
        if der.is_empty() {
            return Err(AnchorsError::Empty);
        }
        let mut roots = RootCertStore::empty();
        for (index, cert) in der.iter().enumerate() {
            roots
                .add(cert.clone())
                .map_err(|e| AnchorsError::Certificate {
                    index,
                    reason: e.to_string(),
                })?;
        }
        Ok(TrustAnchors {
            der,
            roots: Arc::new(roots),
        })
    }

    /// The certificates, as given.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.der
    }

    /// The root store built from them.
    pub fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }

    /// True when `other` holds the same certificates (in any order).
    pub fn same_as(&self, other: &[Vec<u8>]) -> bool {
        let mut mine: Vec<&[u8]> = self.der.iter().map(|c| c.as_ref()).collect();
        let mut theirs: Vec<&[u8]> = other.iter().map(Vec::as_slice).collect();
        mine.sort_unstable();
        theirs.sort_unstable();
        mine == theirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        assert_eq!(TrustAnchors::from_pem("").unwrap_err(), AnchorsError::Empty);
        assert_eq!(
            TrustAnchors::from_pem("hello").unwrap_err(),
            AnchorsError::Empty
        );
        assert!(matches!(
            TrustAnchors::from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            Err(AnchorsError::Pem(_))
        ));
        assert!(matches!(
            TrustAnchors::from_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ),
            Err(AnchorsError::Certificate { index: 0, .. })
        ));
    }

    #[test]
    fn generated_ca_parses() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let anchors = TrustAnchors::from_pem(&format!("{}{}", ca.pem(), ca.pem())).unwrap();
        assert_eq!(anchors.certificates().len(), 2);
        assert!(anchors.same_as(&[ca.der().to_vec(), ca.der().to_vec()]));
        assert!(!anchors.same_as(&[ca.der().to_vec()]));
    }
}
