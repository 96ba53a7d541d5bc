//! The mesh certificate authority: a trust anchor (root) and an issuer (intermediate).
//!
//! The issuer is loaded from a directory holding PEM `ca.crt` (one or more trust anchors),
//! `issuer.crt` (the issuer certificate, optionally followed by further intermediates up to an
//! anchor) and `issuer.key` (PKCS#8), or generated (`--manifests` mode: written to the directory
//! when it holds none, so that restarts keep the CA; in memory without a directory). A directory
//! is polled for changes; a broken new set of files is logged and the previous issuer stays in
//! force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;
use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use x509_parser::certificate::X509Certificate;

pub(crate) use weft_common::ca::random_serial;
pub use weft_common::ca::{
    generate_ca, CaBundle, GenerateError, CA_CERT_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE,
    ISSUER_LIFETIME, ROOT_LIFETIME,
};

/// Errors from loading or generating CA material.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: no PEM CERTIFICATE block found")]
    NoCertificate { file: &'static str },
    #[error("{file}: invalid PEM: {reason}")]
    Pem { file: &'static str, reason: String },
    #[error("{file}: invalid certificate: {reason}")]
    Certificate { file: &'static str, reason: String },
    #[error("issuer.key: {0} (expected an unencrypted PKCS#8 `PRIVATE KEY`: ECDSA P-256/P-384, Ed25519 or RSA)")]
    Key(String),
    #[error("issuer.key does not match the public key of issuer.crt")]
    KeyMismatch,
    #[error("issuer.crt is not a CA certificate (basicConstraints CA:TRUE required)")]
    NotCa,
    #[error("issuer.crt does not chain to any trust anchor in ca.crt")]
    Untrusted,
    #[error("{what} expired or not yet valid")]
    Expired { what: &'static str },
    #[error("generating CA material: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "{dir}: holds {present} but not {missing}: refusing to generate an issuer over a partial \
         one (restore the missing files, or remove the others to generate a new CA, which \
         every proxy must then be restarted to trust)"
    )]
    PartialIssuerDir {
        dir: PathBuf,
        present: String,
        missing: String,
    },
}

impl From<GenerateError> for CaError {
    fn from(e: GenerateError) -> Self {
        match e {
            GenerateError::Key(reason) => CaError::Key(reason),
            GenerateError::Generate(e) => CaError::Generate(e),
        }
    }
}

/// An issuer ready to sign: signing key, chain and trust anchors.
pub struct IssuerState {
    pub(crate) signer: rcgen::Issuer<'static, KeyPair>,
    /// DER intermediates, the issuer first.
    pub(crate) chain_der: Vec<Vec<u8>>,
    /// DER trust anchors.
    pub(crate) anchors_der: Vec<Vec<u8>>,
    issuer_not_after: SystemTime,
    anchors_not_after: SystemTime,
}

impl std::fmt::Debug for IssuerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerState")
            .field("intermediates", &self.chain_der.len())
            .field("anchors", &self.anchors_der.len())
            .field("issuer_not_after", &self.issuer_not_after)
            .finish_non_exhaustive()
    }
}

impl IssuerState {
    /// When the issuer certificate expires.
    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }
    /// When the first trust anchor expires.
    pub fn anchors_not_after(&self) -> SystemTime {
        self.anchors_not_after
    }
    /// DER of the issuer certificate.
    pub fn issuer_der(&self) -> &[u8] {
        self.chain_der
            .first()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
    /// DER of the trust anchors.
    pub fn anchors_der(&self) -> &[Vec<u8>] {
        &self.anchors_der
    }
    /// DER of the intermediates, the issuer first.
    pub fn intermediates_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }

    /// Parses and checks PEM material: the key matches the issuer, the issuer is a CA, the chain
    /// verifies up to one of the anchors, and every certificate is currently valid.
    pub fn from_pem(ca_pem: &str, issuer_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let anchors_der = pem_certs(ca_pem, CA_CERT_FILE)?;
        let chain_der = pem_certs(issuer_pem, ISSUER_CERT_FILE)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))?;
        let now = SystemTime::now();

        let anchors = parse_all(&anchors_der, CA_CERT_FILE)?;
        let chain = parse_all(&chain_der, ISSUER_CERT_FILE)?;
        let (issuer, _) = chain.split_first().ok_or(CaError::NoCertificate {
            file: ISSUER_CERT_FILE,
        })?;
        if issuer.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        if !issuer.is_ca() {
            return Err(CaError::NotCa);
        }
        let valid_now = |c: &X509Certificate<'_>| {
            let t = unix_secs(now);
            c.validity().not_before.timestamp() <= t && t <= c.validity().not_after.timestamp()
        };
        if !chain.iter().all(valid_now) {
            return Err(CaError::Expired { what: "issuer.crt" });
        }
        // Each intermediate is signed by the next; the last by one of the anchors.
        for pair in chain.windows(2) {
            if pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .is_err()
            {
                return Err(CaError::Untrusted);
            }
        }
        let last = chain.last().ok_or(CaError::Untrusted)?;
        let signed_by_anchor = anchors.iter().any(|a| {
            valid_now(a)
                && a.subject() == last.issuer()
                && last.verify_signature(Some(a.public_key())).is_ok()
        });
        if !signed_by_anchor {
            return Err(CaError::Untrusted);
        }
        let issuer_not_after = to_system_time(issuer.validity().not_after.timestamp());
        let anchors_not_after = anchors
            .iter()
            .map(|a| to_system_time(a.validity().not_after.timestamp()))
            .min()
            .unwrap_or(UNIX_EPOCH);
        let signer =
            rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(chain_der[0].as_slice()), key)
                .map_err(|e| CaError::Certificate {
                    file: ISSUER_CERT_FILE,
                    reason: e.to_string(),
                })?;
        drop(chain);
        drop(anchors);
        Ok(IssuerState {
            signer,
            chain_der,
            anchors_der,
            issuer_not_after,
            anchors_not_after,
        })
    }

    /// Loads `ca.crt`, `issuer.crt` and `issuer.key` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, CaError> {
        let files = read_dir_files(dir)?;
        Self::from_pem(&files[0], &files[1], &files[2])
    }

    /// From a generated bundle.
    pub fn from_bundle(bundle: &CaBundle) -> Result<Self, CaError> {
        Self::from_pem(
            &bundle.ca_cert_pem,
            &bundle.issuer_cert_pem,
            &bundle.issuer_key_pem,
        )
    }
}

fn read_dir_files(dir: &Path) -> Result<[String; 3], CaError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })
    };
    Ok([
        read(CA_CERT_FILE)?,
        read(ISSUER_CERT_FILE)?,
        read(ISSUER_KEY_FILE)?,
    ])
}

fn pem_certs(pem_text: &str, file: &'static str) -> Result<Vec<Vec<u8>>, CaError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| CaError::Pem {
        file,
        reason: e.to_string(),
    })?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    if certs.is_empty() {
        return Err(CaError::NoCertificate { file });
    }
    Ok(certs)
}

fn parse_all<'a>(
    ders: &'a [Vec<u8>],
    file: &'static str,
) -> Result<Vec<X509Certificate<'a>>, CaError> {
    ders.iter()
        .map(|der| match x509_parser::parse_x509_certificate(der) {
            Ok(([], cert)) => Ok(cert),
            Ok(_) => Err(CaError::Certificate {
                file,
                reason: "trailing data after certificate".into(),
            }),
            Err(e) => Err(CaError::Certificate {
                file,
                reason: e.to_string(),
            }),
        })
        .collect()
}

pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(unix.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Where the CA material comes from.
#[derive(Clone, Debug)]
enum Source {
    /// Generated in memory; nothing to reload.
    Memory,
    /// A directory polled for changes.
    Dir(PathBuf),
}

/// Holds the current issuer; cheap to share (`Arc<CaStore>`), hot-reloadable.
#[derive(Debug)]
pub struct CaStore {
    current: watch::Sender<Option<Arc<IssuerState>>>,
    source: Source,
    /// Hash of the last directory contents tried, so a broken file is reported once.
    last_seen: std::sync::Mutex<Option<[u8; 32]>>,
    issuer_expiry: Gauge,
    anchor_expiry: Gauge,
}

impl CaStore {
    fn with(state: Option<IssuerState>, source: Source) -> Self {
        let store = CaStore {
            current: watch::Sender::new(None),
            source,
            last_seen: std::sync::Mutex::new(None),
            issuer_expiry: Gauge::default(),
            anchor_expiry: Gauge::default(),
        };
        if let Some(state) = state {
            store.install(state);
        }
        store
    }

    fn install(&self, state: IssuerState) {
        self.issuer_expiry.set(unix_secs(state.issuer_not_after));
        self.anchor_expiry.set(unix_secs(state.anchors_not_after));
        self.current.send_replace(Some(Arc::new(state)));
    }

    /// A CA generated in memory (ECDSA P-256): manifests mode without `--identity-issuer`.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let bundle = generate_ca(trust_domain)?;
        Ok(Self::with(
            Some(IssuerState::from_bundle(&bundle)?),
            Source::Memory,
        ))
    }

    /// A fixed CA from PEM material (not reloaded).
    pub fn from_bundle(bundle: &CaBundle) -> Result<Self, CaError> {
        Ok(Self::with(
            Some(IssuerState::from_bundle(bundle)?),
            Source::Memory,
        ))
    }

    /// Loads from `dir` (must succeed now); later changes are picked up by [`CaStore::watch`].
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self, CaError> {
        let dir = dir.into();
        let store = Self::with(None, Source::Dir(dir));
        store.reload()?;
        Ok(store)
    }

    /// `--identity-issuer DIR` (`--manifests` mode) or a CA generated in memory.
    ///
    /// - `DIR` with `ca.crt`, `issuer.crt` and `issuer.key`: loaded (and watched).
    /// - `DIR` with none of them (or missing): a CA is generated and written there
    ///   ([`CaBundle::write_new_issuer_dir`]), then loaded from it, so that a restarted
    ///   operator keeps its CA.
    /// - `DIR` with some of them only: [`CaError::PartialIssuerDir`], nothing is written.
    /// - no `DIR`: generated in memory; a restart generates another CA.
    pub fn load_or_generate(dir: Option<&Path>, trust_domain: &str) -> Result<Self, CaError> {
        let Some(dir) = dir else {
            return Self::generate(trust_domain);
        };
        let names = [CA_CERT_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE];
        let (present, missing): (Vec<&str>, Vec<&str>) = names
            .into_iter()
            .partition(|name| std::fs::symlink_metadata(dir.join(name)).is_ok());
        if missing.is_empty() {
            return Self::from_dir(dir);
        }
        if !present.is_empty() {
            return Err(CaError::PartialIssuerDir {
                dir: dir.to_path_buf(),
                present: present.join(", "),
                missing: missing.join(", "),
            });
        }
        if let Ok(meta) = std::fs::metadata(dir) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the identity issuer directory is writable by others: they could replace the issuer"
                );
            }
        }
        let bundle = generate_ca(trust_domain)?;
        bundle
            .write_new_issuer_dir(dir)
            .map_err(|source| CaError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        tracing::info!(
            dir = %dir.display(),
            "no issuer in the directory: generated a new CA and wrote ca.crt, issuer.crt and \
             issuer.key there (restarts reuse them; the root key is not kept)"
        );
        Self::from_dir(dir)
    }

    /// The issuer in force, if any.
    pub fn current(&self) -> Option<Arc<IssuerState>> {
        self.current.borrow().clone()
    }

    /// Notified whenever a new issuer is installed.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<IssuerState>>> {
        self.current.subscribe()
    }

    /// Unix time (seconds) at which the current issuer expires (0 if none); a gauge.
    pub fn issuer_expiry_gauge(&self) -> Gauge {
        self.issuer_expiry.clone()
    }

    /// Unix time (seconds) at which the earliest trust anchor expires (0 if none); a gauge.
    pub fn anchor_expiry_gauge(&self) -> Gauge {
        self.anchor_expiry.clone()
    }

    /// Re-reads the directory. `Ok(true)` if a new issuer was installed, `Ok(false)` if nothing
    /// changed (or the source is in memory); on error the previous issuer stays.
    pub fn reload(&self) -> Result<bool, CaError> {
        let Source::Dir(dir) = &self.source else {
            return Ok(false);
        };
        let files = read_dir_files(dir)?;
        let mut hasher = Sha256::new();
        for f in &files {
            hasher.update((f.len() as u64).to_be_bytes());
            hasher.update(f.as_bytes());
        }
        let digest: [u8; 32] = hasher.finalize().into();
        {
            let mut last = self
                .last_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *last == Some(digest) {
                return Ok(false);
            }
            *last = Some(digest);
        }
        let state = IssuerState::from_pem(&files[0], &files[1], &files[2])?;
        tracing::info!(
            dir = %dir.display(),
            expires_unix = unix_secs(state.issuer_not_after),
            "identity issuer loaded"
        );
        self.install(state);
        Ok(true)
    }

    /// Polls the directory every `interval` and reloads on change; runs forever (drop the
    /// future to stop). Errors are logged and the previous issuer stays in force.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        if matches!(self.source, Source::Memory) {
            return std::future::pending().await;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let store = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || store.reload()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "identity issuer not reloaded; keeping the current one")
                }
                Err(e) => tracing::warn!(error = %e, "identity issuer reload task failed"),
            }
        }
    }
}
