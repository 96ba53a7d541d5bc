//! `weft proxies`: which proxy runs which config version, lagging or NACKing proxies first.

use anyhow::anyhow;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use crate::cluster::{kube_error, Cluster};
use crate::OutputFormat;

/// The operator Deployment's name in the chart (charts/weft/templates/deployment.yaml).
pub const OPERATOR_DEPLOYMENT: &str = "weft-operator";
/// Its pods' labels when the Deployment cannot be read (the chart's `weft.selectorLabels`,
/// without the release-specific instance label).
pub const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/name=weft,app.kubernetes.io/component=operator";
/// The operator's admin port (`--admin-addr=0.0.0.0:9990` in the chart).
pub const ADMIN_PORT: u16 = 9990;

/// A running operator replica.
#[derive(Clone, Debug)]
pub struct Replica {
    pub name: String,
    /// The image its operator container runs (`weft/operator:0.1.0`).
    pub image: String,
}

/// The running operator pods in `namespace`: those the Deployment's selector matches (or the
/// chart's labels when the Deployment cannot be read). Errors name the namespace and next step.
pub async fn operator_replicas(cluster: &Cluster, namespace: &str) -> anyhow::Result<Vec<Replica>> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), namespace);
    let selector = match deployments.get_opt(OPERATOR_DEPLOYMENT).await {
        Ok(Some(d)) => d
            .spec
            .and_then(|s| s.selector.match_labels)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| OPERATOR_SELECTOR.to_string()),
        Ok(None) => OPERATOR_SELECTOR.to_string(),
        Err(kube::Error::Api(s)) if s.code == 403 => OPERATOR_SELECTOR.to_string(),
        Err(e) => return Err(cluster.unreachable(&e)),
    };
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| match &e {
            kube::Error::Api(_) => anyhow!(
                "cannot list the operator pods in {namespace} ({selector}): {}",
                kube_error(&e)
            ),
            _ => cluster.unreachable(&e),
        })?;
    let mut out: Vec<Replica> = list
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            p.metadata.name.map(|name| Replica { name, image })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `GET /proxies` of one operator pod, through the API server's pod proxy.
pub async fn replica_proxies(
    cluster: &Cluster,
    namespace: &str,
    pod: &str,
) -> anyhow::Result<Vec<ProxyEntry>> {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{ADMIN_PORT}/proxy/proxies");
    let text = cluster
        .get_text(&path)
        .await
        .map_err(|e| anyhow!("GET /proxies of {namespace}/{pod} through the API server: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        anyhow!("{namespace}/{pod} answered /proxies with something that is not JSON")
    })?;
    let mut entries = parse(&v)?;
    for e in &mut entries {
        e.replica = pod.to_string();
    }
    Ok(entries)
}

/// Every replica's connected proxies, merged and ordered; plus one message per replica that
/// could not be read. Fails when there is no running replica or none could be read.
pub async fn from_cluster(
    cluster: &Cluster,
    namespace: &str,
) -> anyhow::Result<(Vec<ProxyEntry>, Vec<String>)> {
    let replicas = operator_replicas(cluster, namespace).await?;
    if replicas.is_empty() {
        return Err(anyhow!(
            "no running operator pod in namespace {namespace} (on {}). Is weft installed there? \
             Pass --namespace, or see `kubectl -n {namespace} get pods`",
            cluster.server
        ));
    }
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for r in &replicas {
        match replica_proxies(cluster, namespace, &r.name).await {
            Ok(e) => entries.extend(e),
            Err(e) => errors.push(crate::term::error_text(&e)),
        }
    }
    if errors.len() == replicas.len() {
        return Err(anyhow!("{}", errors.join("; ")));
    }
    entries.sort_by(|a, b| (a.sync(), &a.pod).cmp(&(b.sync(), &b.pod)));
    Ok((entries, errors))
}

/// One entry of the operator's `GET /proxies`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ProxyEntry {
    pub pod: String,
    pub identity: String,
    pub proxy_version: String,
    pub connected_since: String,
    pub last_sent_version: Option<String>,
    pub last_acked_version: Option<String>,
    pub last_nack_error: Option<String>,
    pub pushes: u64,
    pub acks: u64,
    pub nacks: u64,
    /// The operator replica (pod) the proxy is connected to; empty in local mode.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub replica: String,
}

/// Where a proxy stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Sync {
    /// Its last answer was a NACK: it runs an older config than it was sent.
    Nacked,
    /// It has not ACKed the latest config sent yet.
    Lagging,
    Current,
}

impl ProxyEntry {
    pub fn sync(&self) -> Sync {
        if self.last_nack_error.is_some() {
            Sync::Nacked
        } else if self.last_sent_version.is_some()
            && self.last_sent_version == self.last_acked_version
        {
            Sync::Current
        } else {
            Sync::Lagging
        }
    }
}

/// Parses `/proxies` and orders it: NACKing first, then lagging, then in sync; by pod within.
pub fn parse(json: &serde_json::Value) -> anyhow::Result<Vec<ProxyEntry>> {
    let mut entries: Vec<ProxyEntry> = serde_json::from_value(json.clone())?;
    entries.sort_by(|a, b| (a.sync(), &a.pod).cmp(&(b.sync(), &b.pod)));
    Ok(entries)
}

pub fn print(entries: &[ProxyEntry], format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(entries)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(entries)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            let replicas = entries.iter().any(|e| !e.replica.is_empty());
            let rw = entries
                .iter()
                .map(|e| e.replica.len())
                .max()
                .unwrap_or(7)
                .max(7);
            let w = entries
                .iter()
                .map(|e| e.pod.len())
                .max()
                .unwrap_or(3)
                .max(3);
            print!(
                "{:<w$} {:<8} {:<16} {:<16}",
                "POD", "STATUS", "SENT", "ACKED"
            );
            if replicas {
                print!(" {:<rw$}", "REPLICA");
            }
            if wide {
                print!(" {:<8} {:<25} IDENTITY", "PROXY", "CONNECTED");
            }
            println!(" LAST NACK");
            for e in entries {
                let status = match e.sync() {
                    Sync::Nacked => "NACK",
                    Sync::Lagging => "lagging",
                    Sync::Current => "in-sync",
                };
                print!(
                    "{:<w$} {:<8} {:<16} {:<16}",
                    e.pod,
                    status,
                    e.last_sent_version.as_deref().unwrap_or("-"),
                    e.last_acked_version.as_deref().unwrap_or("-")
                );
                if replicas {
                    print!(" {:<rw$}", e.replica);
                }
                if wide {
                    print!(
                        " {:<8} {:<25} {}",
                        e.proxy_version, e.connected_since, e.identity
                    );
                }
                println!(" {}", e.last_nack_error.as_deref().unwrap_or(""));
            }
            if entries.is_empty() {
                println!("(no proxy is connected)");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nacking_and_lagging_come_first() {
        let json = serde_json::json!([
            {"pod": "demo/a", "last_sent_version": "v2", "last_acked_version": "v2"},
            {"pod": "demo/b", "last_sent_version": "v2", "last_acked_version": "v1"},
            {"pod": "demo/c", "last_sent_version": "v2", "last_acked_version": "v1", "last_nack_error": "bad regex"},
        ]);
        let e = parse(&json).expect("parses");
        let order: Vec<_> = e.iter().map(|x| (x.pod.as_str(), x.sync())).collect();
        assert_eq!(
            order,
            vec![
                ("demo/c", Sync::Nacked),
                ("demo/b", Sync::Lagging),
                ("demo/a", Sync::Current)
            ]
        );
    }
}
