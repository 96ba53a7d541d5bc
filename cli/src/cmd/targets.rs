//! Where proxies are read from (`--proxy-admin`, a demo's proxies, or meshed pods through the
//! API server's pod proxy), for `weft stat` and `weft edges`.

use std::time::Duration;

use anyhow::bail;

use crate::admin_http;

/// Where a proxy's `/metrics` is read from.
#[derive(Clone, Debug)]
pub enum Target {
    /// The proxy's admin address (`host:port`), reachable from here.
    Direct(String),
    /// A meshed pod, read through the Kubernetes API server's pod proxy (no port-forward).
    Pod {
        namespace: String,
        name: String,
        admin_port: u16,
    },
}

impl Target {
    /// `namespace/name` of a pod target.
    pub fn pod_name(&self) -> Option<String> {
        match self {
            Target::Direct(_) => None,
            Target::Pod {
                namespace, name, ..
            } => Some(format!("{namespace}/{name}")),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Target::Direct(a) => a.clone(),
            Target::Pod {
                namespace, name, ..
            } => format!("{namespace}/{name}"),
        }
    }
}

/// The proxies to read: `--proxy-admin` addresses (with a running `weft demo`'s for `--demo`:
/// `crate::demo::proxy_admins`, added by the caller), else
/// the meshed pods of the cluster (of `namespace`, or of every namespace), read through the API
/// server's pod proxy with the returned client.
pub async fn resolve_targets(
    proxy_admin: Vec<String>,
    namespace: Option<&str>,
    cluster: &crate::cluster::ClusterArgs,
) -> anyhow::Result<(Vec<Target>, Option<kube::Client>)> {
    let targets: Vec<Target> = proxy_admin.into_iter().map(Target::Direct).collect();
    if !targets.is_empty() {
        return Ok((targets, None));
    }
    let client = cluster
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "no --proxy-admin or --demo given, and {}",
                crate::term::error_text(&e)
            )
        })?
        .client;
    let targets = cluster_targets(&client, namespace).await?;
    Ok((targets, Some(client)))
}

/// The meshed pods (label `weft.io/proxy-version`) of `namespace`, or of every namespace.
pub async fn cluster_targets(
    client: &kube::Client,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<Target>> {
    use k8s_openapi::api::core::v1::Pod;
    let api: kube::Api<Pod> = match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    let pods = api
        .list(&kube::api::ListParams::default().labels("weft.io/proxy-version"))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| Target::Pod {
            namespace: p.metadata.namespace.unwrap_or_default(),
            name: p.metadata.name.unwrap_or_default(),
            admin_port: 4191,
        })
        .collect())
}

/// Fetches `path` of a proxy's admin API; `Ok(None)` when a pod could not be read (skipped
/// with a message on stderr, `what` naming the command).
pub async fn fetch(
    t: &Target,
    client: Option<&kube::Client>,
    path: &str,
    what: &str,
) -> anyhow::Result<Option<String>> {
    Ok(Some(match (t, client) {
        (Target::Direct(addr), _) => {
            let (status, body) = admin_http::get(addr, path, Duration::from_secs(3)).await?;
            if status != 200 {
                bail!("{addr}{path} answered {status}");
            }
            body
        }
        (
            Target::Pod {
                namespace,
                name,
                admin_port,
            },
            Some(client),
        ) => {
            let path =
                format!("/api/v1/namespaces/{namespace}/pods/{name}:{admin_port}/proxy{path}");
            let req = http::Request::get(path).body(Vec::new())?;
            match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
                Ok(Ok(text)) => text,
                Ok(Err(e)) => {
                    eprintln!("{what}: skipping {namespace}/{name}: {e}");
                    return Ok(None);
                }
                Err(_) => {
                    eprintln!("{what}: skipping {namespace}/{name}: no answer within 5 s");
                    return Ok(None);
                }
            }
        }
        (Target::Pod { .. }, None) => bail!("reading pods needs a Kubernetes client"),
    }))
}
