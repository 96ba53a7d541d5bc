//! SPIFFE identities, strict CSR validation and leaf issuance.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::ca::IssuerState;

/// Largest CSR accepted (bytes).
pub const MAX_CSR_LEN: usize = 16 * 1024;
/// Smallest RSA modulus accepted (bits).
pub const MIN_RSA_BITS: usize = 2048;

pub use weft_common::spiffe::{InvalidSpiffeId, SpiffeId};

/// Why a CSR was refused (all map to `INVALID_ARGUMENT`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("CSR is larger than {MAX_CSR_LEN} bytes")]
    TooLarge,
    #[error("CSR is not a DER PKCS#10 request: {0}")]
    Malformed(String),
    #[error("CSR key is not allowed: {0} (allowed: ECDSA P-256/P-384, RSA >= {MIN_RSA_BITS} bits, Ed25519)")]
    WeakKey(String),
    #[error("CSR signature algorithm {0} is not allowed")]
    WeakSignature(String),
    #[error("CSR signature does not verify")]
    BadSignature,
    #[error("CSR has no subjectAltName; exactly one URI SAN {expected} is required")]
    NoSan { expected: String },
    #[error("CSR must have exactly one SAN, the URI {expected}; found {found}")]
    WrongSans { expected: String, found: String },
}

impl CsrError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::WeakKey(_) | CsrError::WeakSignature(_) => "weak_key",
            CsrError::NoSan { .. } | CsrError::WrongSans { .. } => "san_mismatch",
            CsrError::TooLarge | CsrError::Malformed(_) | CsrError::BadSignature => "invalid_csr",
        }
    }
}

/// A CSR that passed every check: its public key, ready to be certified.
#[derive(Debug)]
pub struct ValidCsr {
    pub public_key: rcgen::SubjectPublicKeyInfo,
}

fn describe_general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(_) => "IP address".to_owned(),
        other => format!("{other:?}").chars().take(64).collect(),
    }
}

fn check_key(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let alg: &Oid<'_> = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return Ok(());
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) => Err(CsrError::WeakKey(format!("elliptic curve {c}"))),
            None => Err(CsrError::WeakKey(
                "elliptic curve without named curve".into(),
            )),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= MIN_RSA_BITS => Ok(()),
            Ok(PublicKey::RSA(rsa)) => {
                Err(CsrError::WeakKey(format!("RSA {} bits", rsa.key_size())))
            }
            _ => Err(CsrError::Malformed("unparsable RSA public key".into())),
        };
    }
    Err(CsrError::WeakKey(format!("key algorithm {alg}")))
}

/// Checks a CSR strictly: DER PKCS#10 with no trailing data, an allowed key, a valid self
/// signature (not SHA-1), and exactly one SAN which is the URI `expected`.
pub fn validate_csr(der: &[u8], expected: &SpiffeId) -> Result<ValidCsr, CsrError> {
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge);
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing data after the request".into(),
        ));
    }
    check_key(&csr)?;
    let sig_alg = &csr.signature_algorithm.algorithm;
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        return Err(CsrError::WeakSignature(format!("{sig_alg} (SHA-1)")));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let expected_uri = expected.to_string();
    let mut sans: Vec<String> = Vec::new();
    let mut uri_ok = 0usize;
    let mut san_extensions = 0usize;
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                san_extensions += 1;
                for name in &san.general_names {
                    if matches!(name, GeneralName::URI(u) if *u == expected_uri) {
                        uri_ok += 1;
                    }
                    sans.push(describe_general_name(name));
                }
            }
        }
    }
    if sans.is_empty() && san_extensions == 0 {
        return Err(CsrError::NoSan {
            expected: expected_uri,
        });
    }
    if san_extensions != 1 || sans.len() != 1 || uri_ok != 1 {
        let found = if sans.is_empty() {
            "an unreadable subjectAltName".to_owned()
        } else {
            sans.join(", ")
        };
        return Err(CsrError::WrongSans {
            expected: expected_uri,
            found,
        });
    }
    let public_key =
        rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
            .map_err(|e| CsrError::WeakKey(e.to_string()))?;
    Ok(ValidCsr { public_key })
}

/// A freshly issued leaf.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub leaf_der: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Errors from signing.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the issuer expires before the leaf could be valid")]
    IssuerExpired,
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// Issues a client+server-auth leaf for `identity` over `public_key`, valid from
/// `now - skew` to `min(now + lifetime, issuer expiry)`.
pub fn issue_leaf(
    issuer: &IssuerState,
    public_key: &rcgen::SubjectPublicKeyInfo,
    identity: &SpiffeId,
    lifetime: Duration,
    skew: Duration,
) -> Result<IssuedLeaf, IssueError> {
    let now = SystemTime::now();
    let not_before = now.checked_sub(skew).unwrap_or(now);
    let not_after = (now + lifetime).min(issuer.issuer_not_after());
    if not_after <= now {
        return Err(IssueError::IssuerExpired);
    }
    // Second precision on the wire: truncate so the reported times equal the certificate's.
    let trunc = |t: SystemTime| super::ca::to_system_time(super::ca::unix_secs(t));
    let (not_before, not_after) = (trunc(not_before), trunc(not_after));

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(super::ca::random_serial());
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params.signed_by(public_key, &issuer.signer)?;
    Ok(IssuedLeaf {
        leaf_der: cert.der().to_vec(),
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_exactly() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        for bad in [
            "",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
