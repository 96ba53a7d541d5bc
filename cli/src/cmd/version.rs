//! `weft version`: the client's version and, when a cluster is reachable, the operator replicas'
//! (from their pods' images) and the proxies' (from what each replica's `/proxies` reports and
//! the meshed pods' `weft.io/proxy-version` label).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::cluster::ClusterArgs;
use crate::OutputFormat;

#[derive(Debug, Default, Serialize)]
pub struct Versions {
    pub client: String,
    /// Why the cluster part is missing, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_unavailable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Operator pod → the image tag it runs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub operators: BTreeMap<String, String>,
    /// Proxy version → how many connected proxies report it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub proxies_connected: BTreeMap<String, usize>,
    /// `weft.io/proxy-version` label → how many meshed pods carry it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meshed_pods: BTreeMap<String, usize>,
}

/// The tag of an image reference (`weft/operator:0.1.0` → `0.1.0`), or the whole reference.
fn image_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once('@') {
        Some((_, digest)) => digest.to_string(),
        None => match last.split_once(':') {
            Some((_, tag)) => tag.to_string(),
            None => image.to_string(),
        },
    }
}

pub async fn run(
    client_only: bool,
    args: &ClusterArgs,
    namespace: &str,
    output: OutputFormat,
) -> anyhow::Result<u8> {
    let mut v = Versions {
        client: env!("CARGO_PKG_VERSION").to_string(),
        ..Versions::default()
    };
    if !client_only {
        if let Err(e) = cluster_part(args, namespace, &mut v).await {
            v.cluster_unavailable = Some(crate::term::error_text(&e));
        }
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(&v)?),
        _ => {
            println!("client: weft {}", v.client);
            if let Some(why) = &v.cluster_unavailable {
                println!("cluster: not shown ({why})");
            }
            if let Some(s) = &v.server {
                println!("server: Kubernetes {s}");
            }
            if v.server.is_some() && v.operators.is_empty() {
                println!("operator: no running replica in {namespace}");
            }
            for (pod, version) in &v.operators {
                println!("operator: {version} ({namespace}/{pod})");
            }
            for (version, n) in &v.proxies_connected {
                println!("proxies connected: {version} x{n}");
            }
            for (version, n) in &v.meshed_pods {
                println!("meshed pods (weft.io/proxy-version): {version} x{n}");
            }
        }
    }
    Ok(0)
}

async fn cluster_part(args: &ClusterArgs, namespace: &str, v: &mut Versions) -> anyhow::Result<()> {
    let cluster = args.connect().await?;
    let (_, _, git) = cluster.version().await?;
    v.server = Some(git);
    let replicas = super::proxies::operator_replicas(&cluster, namespace).await?;
    for r in &replicas {
        v.operators.insert(r.name.clone(), image_tag(&r.image));
        if let Ok(entries) = super::proxies::replica_proxies(&cluster, namespace, &r.name).await {
            for e in entries {
                let version = if e.proxy_version.is_empty() {
                    "unknown".to_string()
                } else {
                    e.proxy_version
                };
                *v.proxies_connected.entry(version).or_default() += 1;
            }
        }
    }
    let pods: Api<Pod> = Api::all(cluster.client.clone());
    if let Ok(list) = pods
        .list(&ListParams::default().labels("weft.io/proxy-version"))
        .await
    {
        for p in list.items {
            if let Some(version) = p
                .metadata
                .labels
                .and_then(|l| l.get("weft.io/proxy-version").cloned())
            {
                *v.meshed_pods.entry(version).or_default() += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("weft/operator:0.1.0"), "0.1.0");
        assert_eq!(image_tag("registry:5000/weft/operator:0.2.0"), "0.2.0");
        assert_eq!(image_tag("weft/operator"), "weft/operator");
    }
}
