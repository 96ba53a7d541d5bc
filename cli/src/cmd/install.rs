//! `weft install`: the install manifests — the Helm chart rendered with its defaults — with fresh
//! certificates.
//!
//! The rendering is committed (`charts/weft/rendered/install.yaml`, made by
//! `e2e/scripts/render-install.sh`; a test fails when it drifts from the chart). Certificates are
//! never committed: a run generates a webhook CA and serving certificate, and a mesh trust anchor
//! with a separate issuer, and prints them as Secrets ahead of the chart's objects.
//!
//! When a cluster is reachable, install renders for it: for its Kubernetes version (before 1.21
//! the PodDisruptionBudget is `policy/v1beta1`), and without the Secrets it already has, so that
//! applying the output again never replaces the trust anchor under running proxies nor the
//! webhook certificate under the caBundle the API server trusts.

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

/// The identity Secret (trust anchor, issuer) the rendering mounts.
pub const IDENTITY_SECRET: &str = "weft-identity";
/// The webhook serving certificate Secret the rendering mounts.
pub const WEBHOOK_SECRET: &str = "weft-webhook-tls";
/// The newest Kubernetes minor version install renders for when it cannot ask the cluster.
pub const NEWEST: (u32, u32) = (1, 33);

/// What install renders for.
#[derive(Clone, Debug)]
pub struct Target {
    /// Kubernetes `(major, minor)`.
    pub version: (u32, u32),
    /// Where the version came from, for the header comment.
    pub version_source: String,
    /// The cluster already has the identity Secret: leave it out.
    pub identity_exists: bool,
    /// The cluster's webhook Secret's `ca.crt` when it has one: leave the Secret out and use
    /// this as the caBundle.
    pub webhook_ca: Option<String>,
}

/// `1.20`, `v1.20.2`, `1.21+` → `(1, 20)`.
pub fn parse_kube_version(s: &str) -> Result<(u32, u32), String> {
    let t = s.trim().trim_start_matches('v');
    let mut parts = t.split('.');
    let major = parts.next().and_then(|m| m.parse::<u32>().ok());
    let minor = parts
        .next()
        .map(|m| m.trim_end_matches('+'))
        .and_then(|m| m.parse::<u32>().ok());
    match (major, minor) {
        (Some(1), Some(minor)) => Ok((1, minor)),
        _ => Err(format!(
            "`{s}` is not a Kubernetes version like 1.20 or v1.20.2"
        )),
    }
}

impl Target {
    /// No cluster: `flag` or the newest version, fresh Secrets.
    pub fn offline(flag: Option<(u32, u32)>) -> Target {
        Target {
            version: flag.unwrap_or(NEWEST),
            version_source: match flag {
                Some(_) => "--kube-version".into(),
                None => "the newest supported version (no cluster asked)".into(),
            },
            identity_exists: false,
            webhook_ca: None,
        }
    }

    /// Asks the cluster (when a configuration exists) for its version and the Secrets it has.
    /// No configuration at all: offline, with a note on stderr. A configuration whose cluster
    /// cannot be read: an error (rendering fresh Secrets could replace the live trust anchor).
    pub async fn discover(
        args: &crate::cluster::ClusterArgs,
        flag: Option<(u32, u32)>,
    ) -> anyhow::Result<Target> {
        let explicit = args.kubeconfig.is_some() || args.context.is_some();
        let cluster = match args.connect().await {
            Ok(c) => c,
            Err(e) if !explicit => {
                eprintln!(
                    "weft install: no cluster to ask ({}); rendering for Kubernetes {}.{} with a fresh identity",
                    crate::term::error_text(&e),
                    flag.unwrap_or(NEWEST).0,
                    flag.unwrap_or(NEWEST).1
                );
                return Ok(Target::offline(flag));
            }
            Err(e) => return Err(e),
        };
        let fail = |what: &str, e: anyhow::Error| {
            anyhow::anyhow!(
                "{what}: {}. Without it install could replace the live trust anchor; pass --offline to render a fresh identity anyway",
                crate::term::error_text(&e)
            )
        };
        let (major, minor, git) = cluster
            .version()
            .await
            .map_err(|e| fail("cannot ask the cluster for its version", e))?;
        let (version, version_source) = match flag {
            Some(v) => (v, format!("--kube-version (the cluster runs {git})")),
            None => ((major, minor), format!("the cluster's version {git}")),
        };
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(cluster.client.clone(), NAMESPACE);
        let read = |e: kube::Error, name: &str| {
            fail(
                &format!("cannot tell whether secret {NAMESPACE}/{name} exists"),
                anyhow::anyhow!("{}", crate::cluster::kube_error(&e)),
            )
        };
        let identity_exists = secrets
            .get_metadata_opt(IDENTITY_SECRET)
            .await
            .map_err(|e| read(e, IDENTITY_SECRET))?
            .is_some();
        let webhook_ca = match secrets
            .get_opt(WEBHOOK_SECRET)
            .await
            .map_err(|e| read(e, WEBHOOK_SECRET))?
        {
            Some(s) => {
                let data = s.data.unwrap_or_default();
                let complete = ["tls.crt", "tls.key", "ca.crt"]
                    .iter()
                    .all(|k| data.get(*k).is_some_and(|v| !v.0.is_empty()));
                if complete {
                    data.get("ca.crt")
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                } else {
                    None
                }
            }
            None => None,
        };
        Ok(Target {
            version,
            version_source,
            identity_exists,
            webhook_ca,
        })
    }
}

/// The chart renders `policy/v1` PodDisruptionBudgets; Kubernetes before 1.21 serves only
/// `policy/v1beta1` (same fields for what the chart sets).
pub fn for_version(rendered: &str, (major, minor): (u32, u32)) -> String {
    if major == 1 && minor < 21 {
        rendered.replace(
            "apiVersion: policy/v1\nkind: PodDisruptionBudget",
            "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget",
        )
    } else {
        rendered.to_string()
    }
}

/// Builds the full install manifest. `save_anchor_key`: where to write the trust anchor's private
/// key (needed later to sign a new issuer); when `None` it is discarded.
pub fn render(
    trust_domain: &str,
    save_anchor_key: Option<&Path>,
    target: &Target,
) -> anyhow::Result<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut out = String::new();
    let _ = write!(
        out,
        "# weft install manifests: apply with `weft install | kubectl apply -f -`.\n\
         # Rendered for Kubernetes {}.{} ({}).\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  annotations:\n    weft.io/inject: disabled\n---\n",
        target.version.0, target.version.1, target.version_source
    );
    let ca_pem = match &target.webhook_ca {
        Some(ca) => {
            let _ = writeln!(
                out,
                "# secret {NAMESPACE}/{WEBHOOK_SECRET} already exists in the cluster: kept (not \
                 printed), and its ca.crt is the webhooks' caBundle."
            );
            ca.clone()
        }
        None => {
            let (ca_pem, tls_crt, tls_key) = webhook_certs(NAMESPACE)?;
            let _ = write!(
                out,
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {WEBHOOK_SECRET}\n  namespace: {NAMESPACE}\n\
                 type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n---\n",
                b64(&tls_crt),
                b64(&tls_key),
                b64(&ca_pem),
            );
            ca_pem
        }
    };
    if target.identity_exists {
        if save_anchor_key.is_some() {
            anyhow::bail!(
                "secret {NAMESPACE}/{IDENTITY_SECRET} already exists in the cluster, so install \
                 keeps its trust anchor and generates none: there is no new key to save \
                 (drop --save-trust-anchor-key)"
            );
        }
        let _ = writeln!(
            out,
            "# secret {NAMESPACE}/{IDENTITY_SECRET} already exists in the cluster: kept (not \
             printed), so running proxies keep trusting its trust anchor."
        );
    } else {
        // The identity Secret is mounted as the operator's issuer directory: its keys are the
        // file names of one.
        use weft_common::ca::{CA_CERT_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE};
        let mesh = weft_common::ca::generate_ca(trust_domain)
            .map_err(|e| anyhow::anyhow!("generating the mesh trust anchor: {e}"))?;
        if let Some(path) = save_anchor_key {
            std::fs::write(path, &mesh.ca_key_pem)
                .with_context(|| format!("writing the trust anchor key to {}", path.display()))?;
        }
        let _ = write!(
            out,
            "# The mesh trust anchor (ca.crt) and the issuer that signs proxies' certificates.\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: {IDENTITY_SECRET}\n  namespace: {NAMESPACE}\n  annotations:\n    helm.sh/resource-policy: keep\n\
             type: Opaque\ndata:\n  {CA_CERT_FILE}: {}\n  {ISSUER_CERT_FILE}: {}\n  {ISSUER_KEY_FILE}: {}\n---\n",
            b64(&mesh.ca_cert_pem),
            b64(&mesh.issuer_cert_pem),
            b64(&mesh.issuer_key_pem),
        );
    }
    out.push_str(&for_version(
        &RENDERED.replace(CA_PLACEHOLDER, &b64(&ca_pem)),
        target.version,
    ));
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
        let out = render("cluster.local", None, &Target::offline(None)).expect("renders");
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
    fn the_disruption_budget_follows_the_server_version() {
        let pdb = |v| {
            let out = render("cluster.local", None, &Target::offline(Some(v))).expect("renders");
            let found = serde_yaml::Deserializer::from_str(&out)
                .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
                .find(|v| v["kind"] == "PodDisruptionBudget")
                .map(|v| v["apiVersion"].as_str().unwrap_or_default().to_string());
            found
        };
        use serde::Deserialize;
        assert_eq!(pdb((1, 20)).as_deref(), Some("policy/v1beta1"));
        assert_eq!(pdb((1, 21)).as_deref(), Some("policy/v1"));
        assert_eq!(pdb(NEWEST).as_deref(), Some("policy/v1"));
        assert_eq!(parse_kube_version("v1.20.2"), Ok((1, 20)));
        assert_eq!(parse_kube_version("1.21+"), Ok((1, 21)));
        assert!(parse_kube_version("twenty").is_err());
    }

    #[test]
    fn existing_secrets_are_left_out_and_their_ca_is_the_bundle() {
        let target = Target {
            version: (1, 20),
            version_source: "test".into(),
            identity_exists: true,
            webhook_ca: Some("EXISTING-CA".into()),
        };
        let out = render("cluster.local", None, &target).expect("renders");
        assert!(!out.contains("name: weft-identity\n  namespace"), "{out}");
        assert!(!out.contains("kind: Secret"), "no Secret printed");
        assert!(out.contains("weft-identity already exists"));
        let bundle = base64::engine::general_purpose::STANDARD.encode("EXISTING-CA");
        assert!(out.contains(&bundle), "the kept CA is the caBundle");
        assert!(render("cluster.local", Some(Path::new("/tmp/x")), &target).is_err());
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
