//! `weft check [--pre]`: verifies a cluster before and after installing weft.
//!
//! Each check prints one line, `ok`, `warn` or `FAIL`, with what to do next when it is not ok.
//! The command exits 1 when any check failed (warnings do not fail it).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::Client;
use serde::Serialize;

/// Names the Helm chart gives its objects (see charts/weft).
pub struct InstallNames {
    pub namespace: String,
    pub deployment: String,
    pub admin_service: String,
    pub admin_port: u16,
    pub identity_secret: String,
}

impl InstallNames {
    pub fn new(namespace: &str) -> Self {
        InstallNames {
            namespace: namespace.to_owned(),
            deployment: "weft-operator".into(),
            admin_service: "weft-operator".into(),
            admin_port: 9990,
            identity_secret: "weft-identity".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
}

fn check(name: &str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        outcome,
        detail: detail.into(),
    }
}

/// Runs the checks; `pre` limits them to what can be known before installing.
pub async fn run(pre: bool, names: &InstallNames) -> Vec<Check> {
    let mut out = Vec::new();
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            out.push(check(
                "kubernetes-api",
                Outcome::Fail,
                format!("no usable kubeconfig or in-cluster config: {e}; set KUBECONFIG"),
            ));
            return out;
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(v)) => {
            let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
            if v.major == "1" && minor >= 20 {
                out.push(check(
                    "kubernetes-api",
                    Outcome::Ok,
                    format!("reachable, version {}", v.git_version),
                ));
            } else {
                out.push(check(
                    "kubernetes-api",
                    Outcome::Fail,
                    format!(
                        "version {} is older than 1.20, which weft needs",
                        v.git_version
                    ),
                ));
            }
        }
        Ok(Err(e)) => {
            out.push(check(
                "kubernetes-api",
                Outcome::Fail,
                format!("not reachable: {e}"),
            ));
            return out;
        }
        Err(_) => {
            out.push(check(
                "kubernetes-api",
                Outcome::Fail,
                "no answer within 10 s",
            ));
            return out;
        }
    }

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // The SMI CRDs weft serves and the versions each must serve: the one kind table.
    for kind in weft_smi::kinds::SMI_KINDS.iter() {
        let name = &kind.crd_name();
        let versions: Vec<&str> = kind
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name)
            .collect();
        match crds.get_opt(name).await {
            Ok(Some(crd)) if pre => out.push(check(
                &format!("crd/{name}"),
                Outcome::Warn,
                format!(
                    "already exists (served versions: {}); installing weft takes it over",
                    served(&crd).join(", ")
                ),
            )),
            Ok(None) if pre => {}
            Ok(Some(crd)) => {
                let s = served(&crd);
                let missing: Vec<&str> = versions
                    .iter()
                    .copied()
                    .filter(|v| !s.iter().any(|x| x == v))
                    .collect();
                let established = crd
                    .status
                    .as_ref()
                    .and_then(|st| st.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                let ca = crd
                    .spec
                    .conversion
                    .as_ref()
                    .and_then(|c| c.webhook.as_ref())
                    .and_then(|w| w.client_config.as_ref())
                    .and_then(|c| c.ca_bundle.as_ref())
                    .map(|b| b.0.clone());
                if !missing.is_empty() || !established {
                    out.push(check(
                        &format!("crd/{name}"),
                        Outcome::Fail,
                        format!("established={established}, versions not served: {missing:?}; re-run `weft install | kubectl apply -f -`"),
                    ));
                } else {
                    match ca.as_deref().map(cert_days_left) {
                        Some(Some(days)) if days < 30.0 => out.push(check(
                            &format!("crd/{name}"),
                            Outcome::Warn,
                            format!("conversion webhook CA expires in {days:.0} days; upgrade the chart to rotate it"),
                        )),
                        Some(Some(_)) => out.push(check(&format!("crd/{name}"), Outcome::Ok, format!("established, serves {}", s.join(", ")))),
                        _ => out.push(check(
                            &format!("crd/{name}"),
                            Outcome::Fail,
                            "no CA bundle for the conversion webhook; the chart fills it in: re-install with helm",
                        )),
                    }
                }
            }
            Ok(None) => out.push(check(
                &format!("crd/{name}"),
                Outcome::Fail,
                "missing; install the chart (or `weft crds | kubectl apply -f -`)",
            )),
            Err(e) => out.push(check(
                &format!("crd/{name}"),
                Outcome::Fail,
                format!("cannot read: {e}"),
            )),
        }
    }
    if pre {
        return out;
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &names.namespace);
    let mut selector = None;
    match deployments.get_opt(&names.deployment).await {
        Ok(Some(d)) => {
            selector = d
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .filter(|l| !l.is_empty())
                .map(|l| {
                    l.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                });
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let (outcome, detail) =
                operator_replicas(ready, want, &names.namespace, &names.deployment);
            out.push(check("operator", outcome, detail));
        }
        Ok(None) => out.push(check(
            "operator",
            Outcome::Fail,
            format!(
                "no deployment {}/{}; is weft installed?",
                names.namespace, names.deployment
            ),
        )),
        Err(e) => out.push(check(
            "operator",
            Outcome::Fail,
            format!("cannot read deployment: {e}"),
        )),
    }

    // The operator's admin API through the API server's service proxy.
    let base = format!(
        "/api/v1/namespaces/{}/services/{}:{}/proxy",
        names.namespace, names.admin_service, names.admin_port
    );
    match get_text(&client, &format!("{base}/ready")).await {
        Ok(_) => out.push(check(
            "operator-ready",
            Outcome::Ok,
            "GET /ready answered 200",
        )),
        Err(e) => out.push(check(
            "operator-ready",
            Outcome::Fail,
            format!("GET /ready: {e}"),
        )),
    }
    out.push(proxies_check(&client, names, &base, selector.as_deref()).await);

    let secrets: Api<Secret> = Api::namespaced(client, &names.namespace);
    match secrets.get_opt(&names.identity_secret).await {
        Ok(Some(s)) => {
            let data = s.data.unwrap_or_default();
            // The Secret is mounted as the issuer directory: its keys are the file names.
            for key in [
                weft_common::ca::CA_CERT_FILE,
                weft_common::ca::ISSUER_CERT_FILE,
            ] {
                match data.get(key).map(|b| cert_days_left(&b.0)) {
                    Some(Some(days)) if days < 30.0 => out.push(check(
                        &format!("identity/{key}"),
                        Outcome::Warn,
                        format!("expires in {days:.0} days; rotate it (docs/identity.md)"),
                    )),
                    Some(Some(days)) => out.push(check(
                        &format!("identity/{key}"),
                        Outcome::Ok,
                        format!("valid for {days:.0} more days"),
                    )),
                    _ => out.push(check(
                        &format!("identity/{key}"),
                        Outcome::Fail,
                        "missing or not a PEM certificate",
                    )),
                }
            }
        }
        Ok(None) => out.push(check(
            "identity",
            Outcome::Fail,
            format!(
                "no secret {}/{} with the trust anchor and issuer",
                names.namespace, names.identity_secret
            ),
        )),
        Err(e) => out.push(check(
            "identity",
            Outcome::Fail,
            format!("cannot read: {e}"),
        )),
    }
    out
}

/// The verdict on the operator Deployment's ready replicas, saying what a user loses without one.
fn operator_replicas(ready: i32, want: i32, ns: &str, deployment: &str) -> (Outcome, String) {
    const WITHOUT: &str = "proxies keep their last config but get no changes and no new \
        certificates, and new pods in meshed namespaces are not injected";
    match (ready, want) {
        (r, w) if r >= 1 && r >= w => (Outcome::Ok, format!("{r}/{w} replicas ready")),
        (r, w) if r >= 1 => (
            Outcome::Warn,
            format!("{r}/{w} replicas ready; see `kubectl -n {ns} describe deployment {deployment}`"),
        ),
        (_, 0) => (
            Outcome::Fail,
            format!("the operator is scaled to 0 replicas: {WITHOUT}"),
        ),
        (_, w) => (
            Outcome::Fail,
            format!("0/{w} replicas ready: {WITHOUT}; see `kubectl -n {ns} logs deployment/{deployment}`"),
        ),
    }
}

/// Every meshed pod's proxy connected to an operator replica and ACKing the latest config.
///
/// Each replica serves discovery, so `/proxies` is read from every operator pod (through the API
/// server's pod proxy) and merged; without the Deployment's selector, from the admin Service.
async fn proxies_check(
    client: &Client,
    names: &InstallNames,
    base: &str,
    selector: Option<&str>,
) -> Check {
    use k8s_openapi::api::core::v1::Pod;
    let mut paths = Vec::new();
    match selector {
        Some(sel) => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
            match pods
                .list(&kube::api::ListParams::default().labels(sel))
                .await
            {
                Ok(list) => {
                    for p in list.items {
                        let running =
                            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                        if let (true, Some(name)) = (running, p.metadata.name) {
                            paths.push(format!(
                                "/api/v1/namespaces/{}/pods/{name}:{}/proxy/proxies",
                                names.namespace, names.admin_port
                            ));
                        }
                    }
                }
                Err(e) => {
                    return check(
                        "proxies",
                        Outcome::Fail,
                        format!("cannot list operator pods: {e}"),
                    )
                }
            }
        }
        None => paths.push(format!("{base}/proxies")),
    }
    if paths.is_empty() {
        return check(
            "proxies",
            Outcome::Fail,
            "no running operator pod to ask which proxies are connected",
        );
    }
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for path in &paths {
        let parsed = get_text(client, path).await.and_then(|text| {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            super::proxies::parse(&v)
        });
        match parsed {
            Ok(e) => entries.extend(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.len() == paths.len() {
        return check(
            "proxies",
            Outcome::Fail,
            format!("GET /proxies: {}", errors.join("; ")),
        );
    }
    let meshed = match super::stat::cluster_targets(client, None).await {
        Ok(t) => t.iter().filter_map(|t| t.pod_name()).collect::<Vec<_>>(),
        Err(e) => {
            return check(
                "proxies",
                Outcome::Fail,
                format!("cannot list meshed pods: {e}"),
            )
        }
    };
    let (outcome, detail) = judge_proxies(&entries, &meshed);
    check("proxies", outcome, detail)
}

/// The verdict on connected proxies (`entries`, from `/proxies`) against the meshed pods
/// (`namespace/name`) that are running.
fn judge_proxies(entries: &[super::proxies::ProxyEntry], meshed: &[String]) -> (Outcome, String) {
    let bad: Vec<String> = entries
        .iter()
        .filter(|e| e.sync() != super::proxies::Sync::Current)
        .map(|e| format!("{} ({:?})", e.pod, e.sync()))
        .collect();
    if !bad.is_empty() {
        return (
            Outcome::Fail,
            format!("not in sync: {}; see `weft proxies`", bad.join(", ")),
        );
    }
    let connected: std::collections::BTreeSet<&str> =
        entries.iter().map(|e| e.pod.as_str()).collect();
    let missing: Vec<&str> = meshed
        .iter()
        .map(String::as_str)
        .filter(|p| !connected.contains(p))
        .collect();
    if !missing.is_empty() {
        const SHOWN: usize = 5;
        let more = missing.len().saturating_sub(SHOWN);
        let mut list = missing
            .iter()
            .take(SHOWN)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if more > 0 {
            list.push_str(&format!(" and {more} more"));
        }
        return (
            Outcome::Warn,
            format!(
                "{} of {} meshed pods have a connected proxy; none from {list} (starting, or reconnecting after an operator restart? see their weft-proxy logs)",
                meshed.len() - missing.len(),
                meshed.len()
            ),
        );
    }
    if meshed.is_empty() && entries.is_empty() {
        return (Outcome::Ok, "no meshed pods yet".into());
    }
    (
        Outcome::Ok,
        format!("{} connected, all ACKed the latest config", entries.len()),
    )
}

async fn get_text(client: &Client, path: &str) -> anyhow::Result<String> {
    let req = http::Request::get(path).body(Vec::new())?;
    let text = tokio::time::timeout(Duration::from_secs(10), client.request_text(req))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 10 s"))??;
    Ok(text)
}

fn served(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| v.name.clone())
        .collect()
}

/// Days until the first certificate in a PEM bundle expires.
pub fn cert_days_left(pem_bytes: &[u8]) -> Option<f64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_bytes).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some((not_after - now) as f64 / 86_400.0)
}

pub fn print(checks: &[Check]) {
    for c in checks {
        let tag = match c.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        println!("{tag} {:<40} {}", c.name, c.detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_replicas_say_what_is_lost() {
        assert_eq!(
            operator_replicas(1, 1, "weft-system", "weft-operator").0,
            Outcome::Ok
        );
        assert_eq!(
            operator_replicas(1, 2, "weft-system", "weft-operator").0,
            Outcome::Warn
        );
        let (o, d) = operator_replicas(0, 0, "weft-system", "weft-operator");
        assert_eq!(o, Outcome::Fail);
        assert!(
            d.contains("scaled to 0") && d.contains("no new certificates"),
            "{d}"
        );
        let (o, d) = operator_replicas(0, 1, "weft-system", "weft-operator");
        assert_eq!(o, Outcome::Fail);
        assert!(
            d.contains("kubectl -n weft-system logs deployment/weft-operator"),
            "{d}"
        );
    }

    fn entry(pod: &str, sent: &str, acked: &str) -> super::super::proxies::ProxyEntry {
        super::super::proxies::ProxyEntry {
            pod: pod.into(),
            last_sent_version: Some(sent.into()),
            last_acked_version: Some(acked.into()),
            ..Default::default()
        }
    }

    #[test]
    fn proxies_missing_lagging_or_all_in_sync() {
        let meshed = vec!["shop/a".to_string(), "shop/b".to_string()];
        let (o, d) = judge_proxies(
            &[entry("shop/a", "v2", "v2"), entry("shop/b", "v2", "v2")],
            &meshed,
        );
        assert_eq!(o, Outcome::Ok, "{d}");
        let (o, d) = judge_proxies(&[entry("shop/a", "v2", "v2")], &meshed);
        assert_eq!(o, Outcome::Warn);
        assert!(d.contains("1 of 2") && d.contains("shop/b"), "{d}");
        let (o, d) = judge_proxies(
            &[entry("shop/a", "v2", "v1"), entry("shop/b", "v2", "v2")],
            &meshed,
        );
        assert_eq!(o, Outcome::Fail);
        assert!(d.contains("shop/a"), "{d}");
        assert_eq!(judge_proxies(&[], &[]).0, Outcome::Ok);
    }
}
