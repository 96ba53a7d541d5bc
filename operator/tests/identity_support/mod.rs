//! Shared helpers of the `identity_*` tests: the real `weft-operator` binary in `--manifests`
//! mode on 127.0.0.1 (from `operator_process`, which each test crate declares next to this
//! module), Certify requests, admin GETs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

#[allow(unused_imports)] // not every test crate uses every one
pub use crate::operator_process::{command, get, Operator};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use weft_proxy_api::v1::identity_client::IdentityClient;
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse};

pub const WAIT: Duration = Duration::from_secs(30);
pub const TOKEN: &str = "bootstrap-secret";
pub const OPERATOR_ID: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-operator";

/// A pod of the `demo` namespace, meshed, running as `sa` (`None`: no serviceAccountName).
pub fn pod(ns: &str, name: &str, sa: Option<&str>, ip: &str) -> String {
    let sa = sa
        .map(|sa| format!("  serviceAccountName: {sa}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: {name}, weft.io/proxy-version: test}}\nspec:\n{sa}  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

/// Writes a file atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// The token file for `--bootstrap-token-file`, in `dir`.
pub fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("write token");
    path
}

impl Operator {
    pub async fn client(&self) -> IdentityClient<tonic::transport::Channel> {
        IdentityClient::connect(format!("http://{}", self.discovery))
            .await
            .expect("connect to the discovery port")
    }
}

/// A CSR for `identity` (ECDSA P-256, the identity as the only URI SAN).
pub fn csr(identity: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_owned().try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// A Certify request for pod `ns/pod` claiming `identity`, with the right bootstrap token.
pub fn request(identity: &str, ns: &str, pod: &str) -> CertifyRequest {
    CertifyRequest {
        identity: identity.to_owned(),
        token: TOKEN.as_bytes().to_vec(),
        csr_der: csr(identity),
        pod_namespace: ns.to_owned(),
        pod_name: pod.to_owned(),
    }
}

pub async fn certify(
    client: &mut IdentityClient<tonic::transport::Channel>,
    req: CertifyRequest,
) -> Result<CertifyResponse, tonic::Status> {
    client.certify(req).await.map(|r| r.into_inner())
}

/// The only URI SAN of a DER certificate.
pub fn uri_san(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    let (_, cert) = parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    match san.value.general_names.as_slice() {
        [GeneralName::URI(u)] => u.to_string(),
        other => panic!("expected exactly one URI SAN, got {other:?}"),
    }
}

/// True when `leaf` is signed by `issuer`, and `issuer` by `anchor` (all DER).
pub fn chains_to(leaf: &[u8], issuer: &[u8], anchor: &[u8]) -> bool {
    use x509_parser::prelude::*;
    let (_, leaf) = parse_x509_certificate(leaf).unwrap();
    let (_, issuer) = parse_x509_certificate(issuer).unwrap();
    let (_, anchor) = parse_x509_certificate(anchor).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).is_ok()
        && issuer.verify_signature(Some(anchor.public_key())).is_ok()
}

/// The DER certificates of a PEM file.
pub fn pem_file_ders(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).expect("read PEM file");
    ::pem::parse_many(text)
        .expect("PEM")
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}
