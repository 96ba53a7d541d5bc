//! Where the mesh's trust anchors (the identity's public `ca.crt`) are read from a cluster.
//!
//! The chart publishes the trust anchor in the identity Secret (`weft-identity`, keys `ca.crt`,
//! `issuer.crt`, `issuer.key`), next to the issuer's private key. Reading that Secret reads the
//! key too, so commands that only need the certificate look first where it is public:
//! a ConfigMap [`ANCHORS_CONFIGMAP`] with a `ca.crt` key (not made by the chart yet; see
//! docs/cli.md), then the `WEFT_PROXY_TRUST_ANCHORS` the injector gave meshed pods. Only
//! `weft inject` (run by whoever deploys workloads, who can read the Secret) falls back to it.

use anyhow::{anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams};

use crate::cluster::{kube_error, Cluster, ClusterArgs};

/// A ConfigMap holding only the public trust anchors (`ca.crt`), if the installation has one.
pub const ANCHORS_CONFIGMAP: &str = "weft-trust-anchors";
/// The chart's identity Secret (trust anchor, issuer certificate and issuer key).
pub const IDENTITY_SECRET: &str = "weft-identity";
/// The key of the trust anchors in both.
pub const CA_KEY: &str = "ca.crt";
/// The proxy's environment variable with the trust anchors (set by the injector).
pub const PROXY_ENV: &str = "WEFT_PROXY_TRUST_ANCHORS";

/// Trust anchors and where they came from.
pub struct Anchors {
    pub pem: String,
    pub source: String,
}

/// Checks a PEM bundle of CA certificates: every block a CERTIFICATE that parses and is a CA,
/// at least one. `what` names the source in errors. Returns the bundle, trimmed, with a newline.
pub fn validate(text: &str, what: &str) -> anyhow::Result<String> {
    let mut count = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        let block = block.map_err(|e| anyhow!("{what}: not valid PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            bail!(
                "{what}: holds a {} block; trust anchors are CA certificates only",
                block.label
            );
        }
        let cert = block
            .parse_x509()
            .map_err(|e| anyhow!("{what}: certificate {count}: {e}"))?;
        if !cert.is_ca() {
            bail!("{what}: certificate {count} is not a CA");
        }
        count += 1;
    }
    if count == 0 {
        bail!("{what}: no CERTIFICATE block");
    }
    Ok(format!("{}\n", text.trim()))
}

/// The trust anchors from where they are public (ConfigMap, then a meshed pod's proxy), never
/// from a Secret. `Ok(None)` when neither exists.
pub async fn public(cluster: &Cluster, namespace: &str) -> anyhow::Result<Option<Anchors>> {
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
    match cms.get_opt(ANCHORS_CONFIGMAP).await {
        Ok(Some(cm)) => {
            if let Some(pem) = cm.data.and_then(|d| d.get(CA_KEY).cloned()) {
                let what = format!("configmap {namespace}/{ANCHORS_CONFIGMAP} {CA_KEY}");
                return Ok(Some(Anchors {
                    pem: validate(&pem, &what)?,
                    source: what,
                }));
            }
        }
        Ok(None) => {}
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        Err(e) => return Err(cluster.unreachable(&e)),
    }
    let pods: Api<Pod> = Api::all(cluster.client.clone());
    let list = pods
        .list(&ListParams::default().labels("weft.io/proxy-version"))
        .await
        .map_err(|e| anyhow!("listing meshed pods: {}", kube_error(&e)))?;
    for p in list.items {
        let spec = p.spec.unwrap_or_default();
        let pem = spec
            .containers
            .iter()
            .filter(|c| c.name == "weft-proxy")
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == PROXY_ENV)
            .and_then(|e| e.value.clone());
        if let Some(pem) = pem {
            let what = format!(
                "the {PROXY_ENV} of pod {}/{}",
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default()
            );
            return Ok(Some(Anchors {
                pem: validate(&pem, &what)?,
                source: what,
            }));
        }
    }
    Ok(None)
}

/// What `weft inject` sets when no `--trust-anchors` is given: read from the cluster (the
/// ConfigMap, else the identity Secret's `ca.crt` only), or a refusal naming both options.
pub async fn for_inject(args: &ClusterArgs, namespace: &str) -> anyhow::Result<String> {
    let refuse = |why: String| {
        anyhow!(
            "weft inject needs the mesh's trust anchors so that proxies verify the operator over TLS \
             (the default install refuses proxies without them), and {why}. Either pass \
             --trust-anchors FILE (the identity's ca.crt: `kubectl -n {namespace} get secret \
             {IDENTITY_SECRET} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > ca.crt`), or let \
             inject read them from the cluster weft is installed in with --kubeconfig/--context \
             (and --namespace if not {namespace})"
        )
    };
    let cluster = args.connect().await.map_err(|e| {
        refuse(format!(
            "no cluster to read them from: {}",
            crate::term::error_text(&e)
        ))
    })?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
    match cms.get_opt(ANCHORS_CONFIGMAP).await {
        Ok(Some(cm)) => {
            if let Some(pem) = cm.data.and_then(|d| d.get(CA_KEY).cloned()) {
                return validate(
                    &pem,
                    &format!("configmap {namespace}/{ANCHORS_CONFIGMAP} {CA_KEY}"),
                );
            }
        }
        Ok(None) => {}
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        Err(e) => {
            return Err(refuse(format!(
                "reading the cluster failed: {}",
                crate::term::error_text(&cluster.unreachable(&e))
            )))
        }
    }
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
    match secrets.get_opt(IDENTITY_SECRET).await {
        Ok(Some(s)) => {
            let what = format!("secret {namespace}/{IDENTITY_SECRET} {CA_KEY}");
            let bytes = s
                .data
                .and_then(|mut d| d.remove(CA_KEY))
                .ok_or_else(|| refuse(format!("{what} is missing")))?;
            let text = String::from_utf8(bytes.0)
                .map_err(|_| refuse(format!("{what} is not text")))?;
            validate(&text, &what)
        }
        Ok(None) => Err(refuse(format!(
            "{} has no configmap {namespace}/{ANCHORS_CONFIGMAP} or secret {namespace}/{IDENTITY_SECRET} (is weft installed in {namespace}?)",
            cluster.server
        ))),
        Err(e) => Err(refuse(format!(
            "reading secret {namespace}/{IDENTITY_SECRET} failed: {}",
            kube_error(&e)
        ))),
    }
}
