//! `weft install`: the install manifests — the Helm chart rendered with its defaults — with fresh
//! certificates.
//!
//! The rendering is committed (`charts/weft/rendered/install.yaml`, made by
//! `e2e/scripts/render-install.sh`; a test fails when it drifts from the chart). Certificates are
//! never committed: every run generates a webhook CA and serving certificate, and a mesh trust
//! anchor with a separate issuer, and prints them as Secrets ahead of the chart's objects.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The committed rendering of the chart with its default values.
pub const RENDERED: &str = include_str!("../../../charts/weft/rendered/install.yaml");
/// Where the rendering says "the webhook CA bundle goes here".
pub const CA_PLACEHOLDER: &str = "WEFT_CA_BUNDLE_PLACEHOLDER";
/// The namespace the default rendering installs into.
pub const NAMESPACE: &str = "weft-system";

/// Builds the full install manifest. `save_anchor_key`: where to write the trust anchor's private
/// key (needed later to sign a new issuer); when `None` it is discarded.
pub fn render(trust_domain: &str, save_anchor_key: Option<&Path>) -> anyhow::Result<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let (ca_pem, tls_crt, tls_key) = webhook_certs(NAMESPACE)?;
    // The identity Secret is mounted as the operator's issuer directory: its keys are the file
    // names of one.
    use weft_common::ca::{CA_CERT_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE};
    let mesh = weft_common::ca::generate_ca(trust_domain)
        .map_err(|e| anyhow::anyhow!("generating the mesh trust anchor: {e}"))?;
    if let Some(path) = save_anchor_key {
        std::fs::write(path, &mesh.ca_key_pem)
            .with_context(|| format!("writing the trust anchor key to {}", path.display()))?;
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "# weft install manifests: apply with `weft install | kubectl apply -f -`.\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  annotations:\n    weft.io/inject: disabled\n\
         ---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: weft-webhook-tls\n  namespace: {NAMESPACE}\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n\
         ---\n\
         # The mesh trust anchor (ca.crt) and the issuer that signs proxies' certificates.\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: weft-identity\n  namespace: {NAMESPACE}\n  annotations:\n    helm.sh/resource-policy: keep\n\
         type: Opaque\ndata:\n  {CA_CERT_FILE}: {}\n  {ISSUER_CERT_FILE}: {}\n  {ISSUER_KEY_FILE}: {}\n---\n",
        b64(&tls_crt),
        b64(&tls_key),
        b64(&ca_pem),
        b64(&mesh.ca_cert_pem),
        b64(&mesh.issuer_cert_pem),
        b64(&mesh.issuer_key_pem),
    );
    out.push_str(&RENDERED.replace(CA_PLACEHOLDER, &b64(&ca_pem)));
    Ok(out)
}

/// A self-signed webhook CA and a serving certificate for `weft-operator.<ns>.svc`.
fn webhook_certs(namespace: &str) -> anyhow::Result<(String, String, String)> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "weft-webhook-ca");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = time_days(-1);
    ca.not_after = time_days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let names = vec![
        "weft-operator".to_string(),
        format!("weft-operator.{namespace}"),
        format!("weft-operator.{namespace}.svc"),
        format!("weft-operator.{namespace}.svc.cluster.local"),
    ];
    let mut leaf = CertificateParams::new(names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("weft-operator.{namespace}.svc"));
    leaf.distinguished_name = dn;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = time_days(-1);
    leaf.not_after = time_days(3650);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok((ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem()))
}

fn time_days(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_and_documents_parse() {
        let out = render("cluster.local", None).expect("renders");
        assert!(!out.contains(CA_PLACEHOLDER));
        let mut kinds = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&out) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("yaml");
            if let Some(k) = v.get("kind").and_then(|k| k.as_str()) {
                kinds.push(k.to_owned());
            }
        }
        for k in [
            "Namespace",
            "Secret",
            "Deployment",
            "CustomResourceDefinition",
            "MutatingWebhookConfiguration",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
        }
    }

    #[test]
    fn webhook_certificate_names_the_service() {
        let (_, crt, _) = webhook_certs("weft-system").expect("certs");
        let (_, pem) = x509_parser::pem::parse_x509_pem(crt.as_bytes()).expect("pem");
        let cert = pem.parse_x509().expect("x509");
        let san = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| format!("{:?}", s.value))
            .unwrap_or_default();
        assert!(san.contains("weft-operator.weft-system.svc"), "{san}");
    }
}
