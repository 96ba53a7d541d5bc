//! Generation of weft's mesh CA material (feature `ca`): a trust anchor (root) and an issuer
//! (intermediate) as PEM, the names of the files of an issuer directory, and the writing of
//! such a directory. `weft install`, `weft demo`, the operator (`--manifests` mode) and tests
//! generate CAs here; the operator loads, checks and watches them (`weft_operator::identity::ca`).
//!
//! The only I/O of this crate: [`CaBundle::write_issuer_dir`] and
//! [`CaBundle::write_new_issuer_dir`] write files with `std::fs` (blocking, no async runtime).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};

/// Why CA material could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The root key of a bundle does not parse.
    #[error("issuer.key: {0} (expected an unencrypted PKCS#8 `PRIVATE KEY`: ECDSA P-256/P-384, Ed25519 or RSA)")]
    Key(String),
    /// Key generation or signing failed.
    #[error("generating CA material: {0}")]
    Generate(#[from] rcgen::Error),
}

/// File names inside an issuer directory (`--identity-issuer DIR`).
pub const CA_CERT_FILE: &str = "ca.crt";
/// The issuer certificate (PEM), optionally followed by more intermediates.
pub const ISSUER_CERT_FILE: &str = "issuer.crt";
/// The issuer private key (PEM, PKCS#8).
pub const ISSUER_KEY_FILE: &str = "issuer.key";

/// Lifetime of a generated trust anchor.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated issuer.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// PEM material for a CA: what `weft install`, the chart and tests write to disk.
#[derive(Clone, Debug)]
pub struct CaBundle {
    /// Trust anchor certificate (PEM), written as `ca.crt`.
    pub ca_cert_pem: String,
    /// Trust anchor private key (PEM, PKCS#8). Not needed by the operator; keep it offline.
    pub ca_key_pem: String,
    /// Issuer certificate (PEM), written as `issuer.crt`.
    pub issuer_cert_pem: String,
    /// Issuer private key (PEM, PKCS#8), written as `issuer.key`.
    pub issuer_key_pem: String,
}

impl CaBundle {
    /// Writes `ca.crt`, `issuer.crt` and `issuer.key` (mode 0600) into `dir`, each atomically
    /// (write to a temporary file, then rename). The root key is not written.
    pub fn write_issuer_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_atomic(&dir.join(CA_CERT_FILE), self.ca_cert_pem.as_bytes(), 0o644)?;
        write_atomic(
            &dir.join(ISSUER_KEY_FILE),
            self.issuer_key_pem.as_bytes(),
            0o600,
        )?;
        write_atomic(
            &dir.join(ISSUER_CERT_FILE),
            self.issuer_cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    /// Writes `ca.crt`, `issuer.crt` and `issuer.key` (mode 0600) into `dir` (created with mode
    /// 0700 when missing) without ever replacing a file: each is written to a temporary file,
    /// synced, then hard-linked into place, which fails if the name exists. The root key is
    /// not written. Used by `--identity-issuer DIR` when `DIR` holds no issuer yet (the operator
    /// warns about a directory others may write before calling this).
    pub fn write_new_issuer_dir(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // The key first: a crash part-way leaves a partial directory, which is refused at the
        // next start rather than silently replaced.
        for (name, contents, mode) in [
            (ISSUER_KEY_FILE, self.issuer_key_pem.as_bytes(), 0o600),
            (ISSUER_CERT_FILE, self.issuer_cert_pem.as_bytes(), 0o644),
            (CA_CERT_FILE, self.ca_cert_pem.as_bytes(), 0o644),
        ] {
            write_new(&dir.join(name), contents, mode)?;
        }
        std::fs::File::open(dir)?.sync_all()
    }

    /// A new issuer (fresh key) under the same trust anchor: issuer rotation.
    pub fn rotate_issuer(&self, trust_domain: &str) -> Result<CaBundle, GenerateError> {
        let root_key =
            KeyPair::from_pem(&self.ca_key_pem).map_err(|e| GenerateError::Key(e.to_string()))?;
        let root = rcgen::Issuer::from_ca_cert_pem(&self.ca_cert_pem, root_key)?;
        let (issuer_cert_pem, issuer_key_pem) = new_issuer(&root, trust_domain)?;
        Ok(CaBundle {
            ca_cert_pem: self.ca_cert_pem.clone(),
            ca_key_pem: self.ca_key_pem.clone(),
            issuer_cert_pem,
            issuer_key_pem,
        })
    }
}

/// Writes `contents` to `path` with `mode` and syncs it to disk.
fn write_synced(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, contents, mode)?;
    std::fs::rename(&tmp, path)
}

/// Writes `path` atomically and never over an existing file (`AlreadyExists` then).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = write_synced(&tmp, contents, mode).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    result
}

pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and of minimal DER length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn validity(lifetime: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = SystemTime::now();
    let not_before = now.checked_sub(Duration::from_secs(300)).unwrap_or(now);
    (not_before.into(), (now + lifetime).into())
}

fn new_issuer(
    root: &rcgen::Issuer<'_, KeyPair>,
    trust_domain: &str,
) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("weft issuer {trust_domain}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    (params.not_before, params.not_after) = validity(ISSUER_LIFETIME);
    let cert = params.signed_by(&key, root)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates a fresh trust anchor and issuer (ECDSA P-256), e.g. for `weft install` or tests.
pub fn generate_ca(trust_domain: &str) -> Result<CaBundle, GenerateError> {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("weft root CA {trust_domain}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    (params.not_before, params.not_after) = validity(ROOT_LIFETIME);
    let root_cert = params.self_signed(&root_key)?;
    let ca_key_pem = root_key.serialize_pem();
    let root = rcgen::Issuer::new(params, root_key);
    let (issuer_cert_pem, issuer_key_pem) = new_issuer(&root, trust_domain)?;
    Ok(CaBundle {
        ca_cert_pem: root_cert.pem(),
        ca_key_pem,
        issuer_cert_pem,
        issuer_key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ca_is_a_root_and_an_issuer_written_to_a_directory() {
        let bundle = generate_ca("cluster.local").unwrap_or_else(|e| panic!("{e}"));
        for pem in [&bundle.ca_cert_pem, &bundle.issuer_cert_pem] {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        let rotated = bundle
            .rotate_issuer("cluster.local")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rotated.ca_cert_pem, bundle.ca_cert_pem);
        assert_ne!(rotated.issuer_key_pem, bundle.issuer_key_pem);

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        bundle
            .write_issuer_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).ok();
        assert_eq!(read(CA_CERT_FILE), Some(bundle.ca_cert_pem.clone()));
        assert_eq!(read(ISSUER_CERT_FILE), Some(bundle.issuer_cert_pem.clone()));
        assert_eq!(read(ISSUER_KEY_FILE), Some(bundle.issuer_key_pem.clone()));

        // A new issuer directory is never written over an existing one.
        let fresh = dir.path().join("fresh");
        rotated
            .write_new_issuer_dir(&fresh)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(bundle.write_new_issuer_dir(&fresh).is_err());
        assert_eq!(
            std::fs::read_to_string(fresh.join(ISSUER_KEY_FILE)).ok(),
            Some(rotated.issuer_key_pem)
        );
    }
}
