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

/// The SMI CRDs weft serves, with the versions each must serve.
pub const SMI_CRDS: &[(&str, &[&str])] = &[
    (
        "trafficsplits.split.smi-spec.io",
        &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
    ),
    (
        "traffictargets.access.smi-spec.io",
        &["v1alpha1", "v1alpha2", "v1alpha3"],
    ),
    (
        "httproutegroups.specs.smi-spec.io",
        &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
    ),
    (
        "tcproutes.specs.smi-spec.io",
        &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
    ),
    (
        "udproutes.specs.smi-spec.io",
        &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
    ),
];

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
    for (name, versions) in SMI_CRDS {
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
    match deployments.get_opt(&names.deployment).await {
        Ok(Some(d)) => {
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            out.push(check(
                "operator",
                if ready >= 1 {
                    Outcome::Ok
                } else {
                    Outcome::Fail
                },
                format!("{ready}/{want} replicas ready"),
            ));
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
    match get_text(&client, &format!("{base}/proxies")).await {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text)
            .map_err(anyhow::Error::from)
            .and_then(|v| super::proxies::parse(&v))
        {
            Ok(entries) => {
                let bad: Vec<String> = entries
                    .iter()
                    .filter(|e| e.sync() != super::proxies::Sync::Current)
                    .map(|e| format!("{} ({:?})", e.pod, e.sync()))
                    .collect();
                if bad.is_empty() {
                    out.push(check(
                        "proxies",
                        Outcome::Ok,
                        format!("{} connected, all ACKed the latest config", entries.len()),
                    ));
                } else {
                    out.push(check(
                        "proxies",
                        Outcome::Fail,
                        format!("not in sync: {}; see `weft proxies`", bad.join(", ")),
                    ));
                }
            }
            Err(e) => out.push(check(
                "proxies",
                Outcome::Fail,
                format!("bad /proxies answer: {e}"),
            )),
        },
        Err(e) => out.push(check(
            "proxies",
            Outcome::Fail,
            format!("GET /proxies: {e}"),
        )),
    }

    let secrets: Api<Secret> = Api::namespaced(client, &names.namespace);
    match secrets.get_opt(&names.identity_secret).await {
        Ok(Some(s)) => {
            let data = s.data.unwrap_or_default();
            for key in ["ca.crt", "issuer.crt"] {
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
