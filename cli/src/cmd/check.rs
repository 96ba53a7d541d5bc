//! `weft check [--pre]`: verifies a cluster before and after installing weft.
//!
//! Each check prints one line, `ok`, `warn` or `FAIL`, with what to do next when it is not ok.
//! The command exits 1 when any check failed (warnings do not fail it).
//!
//! Beyond "is it there", it checks what users depend on: that each webhook's caBundle signs the
//! certificate the webhook Service presents (a TLS handshake with an endpoint, as the API server
//! does), that one real conversion goes through the API server, that no pod of a meshed
//! namespace escaped injection, and certificate expiry from certificates only (never the
//! issuer's key: the operator's metrics and the public trust anchors).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::Client;

use super::webhooks::{self, Probe};
use crate::cluster::{kube_error, Cluster, ClusterArgs};

/// Names the Helm chart gives its objects (see charts/weft).
pub struct InstallNames {
    pub namespace: String,
    pub release: String,
    pub deployment: String,
    pub admin_service: String,
    pub admin_port: u16,
}

impl InstallNames {
    pub fn new(namespace: &str, release: &str) -> Self {
        InstallNames {
            namespace: namespace.to_owned(),
            release: release.to_owned(),
            deployment: super::proxies::OPERATOR_DEPLOYMENT.into(),
            admin_service: "weft-operator".into(),
            admin_port: super::proxies::ADMIN_PORT,
        }
    }
}

pub use super::verdict::{Check, Outcome};

fn check(name: &str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        outcome,
        detail: detail.into(),
    }
}

/// Runs the checks; `pre` limits them to what can be known before installing.
pub async fn run(pre: bool, args: &ClusterArgs, names: &InstallNames) -> Vec<Check> {
    let mut out = Vec::new();
    let cluster = match args.connect().await {
        Ok(c) => c,
        Err(e) => {
            out.push(check(
                "kubernetes-api",
                Outcome::Fail,
                crate::term::error_text(&e),
            ));
            return out;
        }
    };
    let client = cluster.client.clone();
    match cluster.version().await {
        Ok((major, minor, git)) => {
            if major == 1 && minor >= 20 {
                out.push(check(
                    "kubernetes-api",
                    Outcome::Ok,
                    format!("{} reachable, version {git}", cluster.server),
                ));
            } else {
                out.push(check(
                    "kubernetes-api",
                    Outcome::Fail,
                    format!("version {git} is older than 1.20, which weft needs"),
                ));
            }
        }
        Err(e) => {
            out.push(check(
                "kubernetes-api",
                Outcome::Fail,
                crate::term::error_text(&e),
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
            Ok(Some(crd)) if pre => {
                let (outcome, detail) = adoption(&crd, &names.release, &names.namespace);
                out.push(check(&format!("crd/{name}"), outcome, detail));
            }
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
                        Some(None) => out.push(check(
                            &format!("crd/{name}"),
                            Outcome::Fail,
                            "the conversion webhook's caBundle is not a PEM certificate; re-install with helm",
                        )),
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
                format!("cannot read: {}", kube_error(&e)),
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
            format!("cannot read deployment: {}", kube_error(&e)),
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

    out.extend(webhook_checks(&cluster, names).await);
    out.push(conversion_check(&cluster, names).await);
    out.push(uninjected_check(&client).await);
    out.extend(identity_checks(&cluster, names).await);
    out.extend(route_checks(&client).await);
    out
}

/// Gateway API routes with a Service parent: each must be `Accepted` and `ResolvedRefs` for the
/// generation it is at (weft's `status.parents[]` entries); a TrafficSplit an HTTPRoute overrides
/// is a warning. Kinds the cluster does not serve are skipped (one ok line says so).
async fn route_checks(client: &Client) -> Vec<Check> {
    use kube::api::DynamicObject;
    use kube::discovery::ApiResource;

    let mut out = Vec::new();
    let mut served_kinds = Vec::new();
    for (group, version, kind, plural) in super::routes::ROUTE_KINDS {
        let ar = ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: format!("{group}/{version}"),
            kind: kind.to_string(),
            plural: plural.to_string(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                served_kinds.push(*kind);
                for item in list.items {
                    let Ok(v) = serde_json::to_value(&item) else {
                        continue;
                    };
                    if let Some(r) = super::routes::live_route(kind, &v) {
                        out.push(super::routes::judge_route(&r));
                    }
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => out.push(check(
                plural,
                Outcome::Fail,
                format!("cannot list {group}/{version} {plural}: {}", kube_error(&e)),
            )),
        }
    }
    // TrafficSplits out of force because an HTTPRoute targets the same Service.
    if let Some(k) = weft_smi::kinds::SMI_KINDS
        .iter()
        .find(|k| k.kind == "TrafficSplit")
    {
        let v = k.storage().name;
        let ar = ApiResource {
            group: k.group.to_string(),
            version: v.to_string(),
            api_version: format!("{}/{v}", k.group),
            kind: k.kind.to_string(),
            plural: k.plural.to_string(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        if let Ok(list) = api.list(&ListParams::default()).await {
            let splits: Vec<(String, String, Vec<weft_smi::hub::Condition>)> = list
                .items
                .iter()
                .map(|i| {
                    let conds = i
                        .data
                        .pointer("/status/conditions")
                        .and_then(|c| serde_json::from_value(c.clone()).ok())
                        .unwrap_or_default();
                    (
                        i.metadata.namespace.clone().unwrap_or_default(),
                        i.metadata.name.clone().unwrap_or_default(),
                        conds,
                    )
                })
                .collect();
            out.extend(super::routes::overridden_splits(
                splits
                    .iter()
                    .map(|(n, m, c)| (n.as_str(), m.as_str(), c.as_slice())),
            ));
        }
    }
    if out.is_empty() {
        out.push(check(
            "gateway-api-routes",
            Outcome::Ok,
            if served_kinds.is_empty() {
                "the cluster serves no Gateway API route kind (HTTPRoute CRD not installed): nothing to check".to_string()
            } else {
                format!("no {} with a Service parent", served_kinds.join("/"))
            },
        ));
    }
    out
}

/// `--pre` on an existing SMI CRD: Helm installs over it only when it already belongs to the
/// release (annotations `meta.helm.sh/release-name`/`-namespace`, label
/// `app.kubernetes.io/managed-by: Helm`). Otherwise: fail, with the commands that adopt it.
pub fn adoption(
    crd: &CustomResourceDefinition,
    release: &str,
    namespace: &str,
) -> (Outcome, String) {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let ann = crd.metadata.annotations.clone().unwrap_or_default();
    let labels = crd.metadata.labels.clone().unwrap_or_default();
    let owner = ann.get("meta.helm.sh/release-name").map(String::as_str);
    let owner_ns = ann
        .get("meta.helm.sh/release-namespace")
        .map(String::as_str);
    let managed = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some("Helm");
    let adopt = format!(
        "to let `helm install {release} -n {namespace}` adopt it: \
         `kubectl annotate crd {name} meta.helm.sh/release-name={release} meta.helm.sh/release-namespace={namespace} --overwrite` and \
         `kubectl label crd {name} app.kubernetes.io/managed-by=Helm --overwrite`, \
         then with Helm 4 (server-side apply) add --force-conflicts to helm install, since fields \
         another tool set differently conflict; or, if nothing uses it, `kubectl delete crd {name}` \
         (deletes every object of the kind)"
    );
    match (owner, owner_ns, managed) {
        (Some(r), Some(n), true) if r == release && n == namespace => (
            Outcome::Ok,
            format!("exists, owned by Helm release {namespace}/{release}: the install adopts it"),
        ),
        (Some(r), n, true) => (
            Outcome::Fail,
            format!(
                "exists, owned by another Helm release ({}/{r}): helm refuses to install over it; uninstall that release, or {adopt}",
                n.unwrap_or("?")
            ),
        ),
        _ => (
            Outcome::Fail,
            format!("exists and belongs to no Helm release, so `helm install` refuses it; {adopt}"),
        ),
    }
}

/// A webhook of the release: what calls it, where, and the caBundle it is verified with.
struct Hook {
    /// `validating/weft-smi-validation`, `crd/trafficsplits.split.smi-spec.io (conversion)`.
    what: String,
    service_ns: String,
    service: String,
    port: i32,
    ca_bundle: Option<Vec<u8>>,
}

/// Every webhook the release's Service backs: validating, mutating, and each SMI CRD's
/// conversion.
async fn release_hooks(client: &Client, names: &InstallNames) -> Result<Vec<Hook>, String> {
    let mut hooks = Vec::new();
    let mine = |ns: &str| ns == names.namespace;
    // Validating and mutating webhooks share the client config type: collect, then map once.
    let mut admission: Vec<(String, WebhookClientConfig)> = Vec::new();
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    for c in vwcs.list(&ListParams::default()).await.map_err(|e| {
        format!(
            "listing validating webhook configurations: {}",
            kube_error(&e)
        )
    })? {
        let cname = c.metadata.name.unwrap_or_default();
        for w in c.webhooks.unwrap_or_default() {
            admission.push((format!("validating/{cname}"), w.client_config));
        }
    }
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for c in mwcs.list(&ListParams::default()).await.map_err(|e| {
        format!(
            "listing mutating webhook configurations: {}",
            kube_error(&e)
        )
    })? {
        let cname = c.metadata.name.unwrap_or_default();
        for w in c.webhooks.unwrap_or_default() {
            admission.push((format!("mutating/{cname}"), w.client_config));
        }
    }
    for (what, cc) in admission {
        if let Some(svc) = cc.service.filter(|s| mine(&s.namespace)) {
            hooks.push(Hook {
                what,
                service_ns: svc.namespace,
                service: svc.name,
                port: svc.port.unwrap_or(443),
                ca_bundle: cc.ca_bundle.map(|b| b.0),
            });
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for kind in weft_smi::kinds::SMI_KINDS.iter() {
        let name = kind.crd_name();
        let Ok(Some(crd)) = crds.get_opt(&name).await else {
            continue;
        };
        let cc = crd
            .spec
            .conversion
            .and_then(|c| c.webhook)
            .and_then(|w| w.client_config);
        if let Some(cc) = cc {
            if let Some(svc) = cc.service.filter(|s| mine(&s.namespace)) {
                hooks.push(Hook {
                    what: format!("conversion/{name}"),
                    service_ns: svc.namespace,
                    service: svc.name,
                    port: svc.port.unwrap_or(443),
                    ca_bundle: cc.ca_bundle.map(|b| b.0),
                });
            }
        }
    }
    Ok(hooks)
}

/// The ready endpoint addresses behind a Service port.
async fn service_endpoints(
    client: &Client,
    ns: &str,
    name: &str,
    port: i32,
) -> Result<Vec<std::net::SocketAddr>, String> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading service {ns}/{name}: {}", kube_error(&e)))?
        .ok_or_else(|| format!("service {ns}/{name} does not exist"))?;
    let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
    let sport = ports
        .iter()
        .find(|p| p.port == port)
        .ok_or_else(|| format!("service {ns}/{name} has no port {port}"))?;
    let port_name = sport.name.clone().unwrap_or_default();
    let eps = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading endpoints {ns}/{name}: {}", kube_error(&e)))?;
    let mut out = Vec::new();
    for subset in eps.and_then(|e| e.subsets).unwrap_or_default() {
        let eports = subset.ports.unwrap_or_default();
        let target = eports
            .iter()
            .find(|p| p.name.clone().unwrap_or_default() == port_name)
            .or_else(|| (eports.len() == 1).then(|| &eports[0]))
            .map(|p| p.port);
        let Some(target) = target.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for a in subset.addresses.unwrap_or_default() {
            if let Ok(ip) = a.ip.parse::<std::net::IpAddr>() {
                out.push(std::net::SocketAddr::new(ip, target));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// One line per webhook: its caBundle verifies the serving certificate of every ready endpoint.
async fn webhook_checks(cluster: &Cluster, names: &InstallNames) -> Vec<Check> {
    let hooks = match release_hooks(&cluster.client, names).await {
        Ok(h) => h,
        Err(e) => return vec![check("webhooks", Outcome::Fail, e)],
    };
    if hooks.is_empty() {
        return vec![check(
            "webhooks",
            Outcome::Fail,
            format!(
                "no webhook configuration points at a service in {}; is weft installed there?",
                names.namespace
            ),
        )];
    }
    // Handshakes are shared by hooks with the same service and caBundle.
    let mut cache: BTreeMap<(String, String, i32, Vec<u8>), Check> = BTreeMap::new();
    let mut out = Vec::new();
    for h in hooks {
        let name = format!("webhook/{}", h.what);
        let Some(ca) = h.ca_bundle.clone().filter(|b| !b.is_empty()) else {
            out.push(check(
                &name,
                Outcome::Fail,
                "no caBundle: the API server cannot verify the webhook, every call fails; re-install (helm upgrade, or `weft install | kubectl apply -f -`)",
            ));
            continue;
        };
        let key = (h.service_ns.clone(), h.service.clone(), h.port, ca.clone());
        if let Some(c) = cache.get(&key) {
            out.push(Check { name, ..c.clone() });
            continue;
        }
        let c = probe_hook(&cluster.client, &h, &ca).await;
        cache.insert(key, c.clone());
        out.push(Check { name, ..c });
    }
    out
}

async fn probe_hook(client: &Client, h: &Hook, ca: &[u8]) -> Check {
    let host = format!("{}.{}.svc", h.service, h.service_ns);
    let endpoints = match service_endpoints(client, &h.service_ns, &h.service, h.port).await {
        Ok(e) => e,
        Err(e) => {
            return check(
                "",
                Outcome::Fail,
                format!("{e}: every call to the webhook fails"),
            )
        }
    };
    if endpoints.is_empty() {
        return check(
            "",
            Outcome::Fail,
            format!(
                "service {}/{} has no ready endpoint: every call to the webhook fails (is the operator running? `kubectl -n {} get pods`)",
                h.service_ns, h.service, h.service_ns
            ),
        );
    }
    let mut verified = Vec::new();
    let mut rejected = Vec::new();
    let mut unreachable = Vec::new();
    let mut min_days: Option<f64> = None;
    for addr in endpoints.iter().take(10) {
        match webhooks::probe(*addr, &host, ca).await {
            Probe::Verified { days_left } => {
                verified.push(addr.to_string());
                if let Some(d) = days_left {
                    min_days = Some(min_days.map_or(d, |m: f64| m.min(d)));
                }
            }
            Probe::Rejected(why) => rejected.push(format!("{addr}: {why}")),
            Probe::Unreachable(why) => unreachable.push(format!("{addr}: {why}")),
        }
    }
    if !rejected.is_empty() {
        return check(
            "",
            Outcome::Fail,
            format!(
                "the caBundle does not verify the certificate served for {host} ({}); the API server's calls fail the same way (x509). Make the caBundle the CA of the webhook Secret's certificate: `helm upgrade`, or re-apply `weft install` output, then restart the operator",
                rejected.join("; ")
            ),
        );
    }
    if verified.is_empty() {
        return check(
            "",
            Outcome::Warn,
            format!(
                "cannot tell whether the caBundle matches: no endpoint of {host} is reachable from where check runs ({}); run check from inside the cluster network",
                unreachable.join("; ")
            ),
        );
    }
    match min_days {
        Some(d) if d < 30.0 => check(
            "",
            Outcome::Warn,
            format!("caBundle verifies {host} on {} endpoint(s), but the serving certificate expires in {d:.0} days; rotate it", verified.len()),
        ),
        _ => check(
            "",
            Outcome::Ok,
            format!(
                "caBundle verifies the certificate served for {host} by {}{}",
                verified.join(", "),
                if unreachable.is_empty() {
                    String::new()
                } else {
                    format!(" ({} endpoint(s) not reachable from here)", unreachable.len())
                }
            ),
        ),
    }
}

/// One real conversion through the API server: an SMI object read at a version other than the
/// one it is stored at (or, with none in the cluster, a dry-run create at such a version).
async fn conversion_check(cluster: &Cluster, names: &InstallNames) -> Check {
    const NAME: &str = "conversion";
    for kind in weft_smi::kinds::SMI_KINDS.iter() {
        let storage = kind.storage().name;
        let Some(other) = kind
            .versions
            .iter()
            .find(|v| v.served && v.name != storage)
            .map(|v| v.name)
        else {
            continue;
        };
        let path = format!("/apis/{}/{other}/{}?limit=1", kind.group, kind.plural);
        match cluster.get_text(&path).await {
            Ok(text) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if let Some(item) = v["items"].as_array().and_then(|i| i.first()) {
                    return check(
                        NAME,
                        Outcome::Ok,
                        format!(
                            "read {} {}/{} at {other} (stored at {storage}) through the conversion webhook",
                            kind.kind,
                            item["metadata"]["namespace"].as_str().unwrap_or_default(),
                            item["metadata"]["name"].as_str().unwrap_or_default()
                        ),
                    );
                }
            }
            Err(e) => {
                return check(
                    NAME,
                    Outcome::Fail,
                    format!(
                        "reading {} at {other} failed: {}; every client of that version (Flagger, Argo Rollouts, kubectl) fails the same way",
                        kind.plural,
                        crate::term::error_text(&e)
                    ),
                )
            }
        }
    }
    // No SMI object to read: convert a throwaway one (dry run: nothing is stored).
    let kind = &weft_smi::kinds::TRAFFIC_SPLIT;
    let Some(version) = kind
        .versions
        .iter()
        .find(|v| v.served && !v.storage)
        .map(|v| v.name)
    else {
        return check(
            NAME,
            Outcome::Warn,
            "no SMI kind serves two versions: nothing to convert",
        );
    };
    let body = serde_json::json!({
        "apiVersion": format!("{}/{version}", kind.group),
        "kind": kind.kind,
        "metadata": {"name": "weft-check-conversion", "namespace": names.namespace},
        "spec": {"service": "weft-check-root",
                 "backends": [{"service": "weft-check-backend", "weight": 1}]}
    });
    let path = format!(
        "/apis/{}/{version}/namespaces/{}/{}?dryRun=All",
        kind.group, names.namespace, kind.plural
    );
    let req = match http::Request::post(&path)
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
    {
        Ok(r) => r,
        Err(e) => return check(NAME, Outcome::Fail, e.to_string()),
    };
    match tokio::time::timeout(crate::cluster::API_TIMEOUT, cluster.client.request_text(req)).await {
        Ok(Ok(_)) => check(
            NAME,
            Outcome::Ok,
            format!(
                "no SMI object to read; a dry-run {} at {version} was converted to {} and back",
                kind.kind,
                kind.storage().name
            ),
        ),
        Ok(Err(kube::Error::Api(s))) if s.message.contains("conversion") => check(
            NAME,
            Outcome::Fail,
            format!("a dry-run {} at {version} failed in conversion: {}", kind.kind, s.message),
        ),
        Ok(Err(e)) => check(
            NAME,
            Outcome::Warn,
            format!(
                "no SMI object to read, and a dry-run create at {version} to test conversion was refused: {}",
                kube_error(&e)
            ),
        ),
        Err(_) => check(NAME, Outcome::Fail, "a dry-run create to test conversion got no answer within 10s"),
    }
}

fn enabled(m: &Option<BTreeMap<String, String>>) -> Option<bool> {
    m.as_ref()
        .and_then(|m| m.get("weft.io/inject"))
        .map(|v| v == "enabled")
}

/// Whether a pod should have been injected: the pod's own `weft.io/inject` annotation or
/// label wins, else its namespace's.
pub fn should_be_meshed(pod: &Pod, namespace_enabled: bool) -> bool {
    // The injector leaves host-network pods alone (their traffic cannot be redirected).
    if pod
        .spec
        .as_ref()
        .is_some_and(|s| s.host_network == Some(true))
    {
        return false;
    }
    let m = &pod.metadata;
    enabled(&m.annotations)
        .or_else(|| enabled(&m.labels))
        .unwrap_or(namespace_enabled)
}

/// Whether a pod runs the proxy.
pub fn is_meshed(pod: &Pod) -> bool {
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key("weft.io/proxy-version"));
    let container = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == "weft-proxy"));
    labelled && container
}

/// How to give an uninjected pod its proxy: restart what owns it.
pub fn restart_hint(pod: &Pod) -> String {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let owner = pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|r| r.controller == Some(true)).or(o.first()));
    match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            // A Deployment's ReplicaSet is `<deployment>-<pod-template-hash>`.
            let deployment = o.name.rsplit_once('-').map_or(o.name.as_str(), |(d, _)| d);
            format!("kubectl -n {ns} rollout restart deployment/{deployment}")
        }
        Some(o) if o.kind == "StatefulSet" || o.kind == "DaemonSet" => format!(
            "kubectl -n {ns} rollout restart {}/{}",
            o.kind.to_ascii_lowercase(),
            o.name
        ),
        Some(o) => format!(
            "kubectl -n {ns} delete pod {name} (its {} re-creates it)",
            o.kind
        ),
        None => format!("kubectl -n {ns} delete pod {name}, then create it again"),
    }
}

/// Pods that should run the proxy and do not (created while the injector was down, or before
/// the namespace was meshed): they are outside the mesh's policy and mTLS.
async fn uninjected_check(client: &Client) -> Check {
    const NAME: &str = "injection";
    let namespaces = match Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            return check(
                NAME,
                Outcome::Fail,
                format!("cannot list namespaces: {}", kube_error(&e)),
            )
        }
    };
    let meshed_ns: std::collections::BTreeSet<String> = namespaces
        .iter()
        .filter(|n| {
            enabled(&n.metadata.annotations)
                .or_else(|| enabled(&n.metadata.labels))
                .unwrap_or(false)
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let pods = match Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            return check(
                NAME,
                Outcome::Fail,
                format!("cannot list pods: {}", kube_error(&e)),
            )
        }
    };
    let mut missing = Vec::new();
    let mut meshed = 0;
    for p in &pods {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) || p.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if !should_be_meshed(p, meshed_ns.contains(&ns)) {
            continue;
        }
        if is_meshed(p) {
            meshed += 1;
        } else {
            missing.push(format!(
                "{ns}/{} (fix: {})",
                p.metadata.name.clone().unwrap_or_default(),
                restart_hint(p)
            ));
        }
    }
    if !missing.is_empty() {
        return check(
            NAME,
            Outcome::Fail,
            format!(
                "{} pod(s) should run the proxy and do not (created while the injector was unavailable?), so policy and mTLS do not apply to them: {}",
                missing.len(),
                missing.join("; ")
            ),
        );
    }
    check(
        NAME,
        Outcome::Ok,
        format!(
            "{meshed} pod(s) in {} meshed namespace(s), every one with its proxy",
            meshed_ns.len()
        ),
    )
}

/// Trust anchor and issuer expiry, from certificates only: the operator replicas' identity
/// metrics (`weft_identity_*_expiry_seconds`, read through the API server's pod proxy), else the
/// trust anchors where they are public. Never the identity Secret (it holds the issuer key).
async fn identity_checks(cluster: &Cluster, names: &InstallNames) -> Vec<Check> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut anchor: Option<(f64, String)> = None;
    let mut issuer: Option<(f64, String)> = None;
    if let Ok(replicas) = super::proxies::operator_replicas(cluster, &names.namespace).await {
        for r in replicas {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}:{}/proxy/metrics",
                names.namespace, r.name, names.admin_port
            );
            let Ok(text) = cluster.get_text(&path).await else {
                continue;
            };
            for s in crate::promtext::parse(&text) {
                let days = (s.value - now) / 86_400.0;
                let from = format!("operator {}/{}", names.namespace, r.name);
                let slot = match s.name.as_str() {
                    // The names before #18 too (an older operator).
                    "weft_identity_trust_anchor_expiry_timestamp_seconds"
                    | "weft_identity_trust_anchor_expiry_seconds" => &mut anchor,
                    "weft_identity_issuer_expiry_timestamp_seconds"
                    | "weft_identity_issuer_expiry_seconds" => &mut issuer,
                    _ => continue,
                };
                if slot.as_ref().is_none_or(|(d, _)| days < *d) {
                    *slot = Some((days, from));
                }
            }
        }
    }
    if anchor.is_none() {
        if let Ok(Some(a)) = super::anchors::public(cluster, &names.namespace).await {
            anchor = cert_days_left(a.pem.as_bytes()).map(|d| (d, a.source));
        }
    }
    let verdict = |name: &str, v: Option<(f64, String)>, missing: &str| match v {
        Some((d, from)) if d <= 0.0 => check(
            name,
            Outcome::Fail,
            format!(
                "expired {:.0} days ago (per {from}); rotate it (docs/identity.md)",
                -d
            ),
        ),
        Some((d, from)) if d < 30.0 => check(
            name,
            Outcome::Warn,
            format!("expires in {d:.0} days (per {from}); rotate it (docs/identity.md)"),
        ),
        Some((d, from)) => check(
            name,
            Outcome::Ok,
            format!("valid for {d:.0} more days (per {from})"),
        ),
        None => check(name, Outcome::Warn, missing.to_string()),
    };
    vec![
        verdict(
            "identity/trust-anchor",
            anchor,
            "expiry unknown: no operator replica's metrics and no public copy of ca.crt (configmap weft-trust-anchors or a meshed pod) to read it from; check never reads the identity Secret, which holds the issuer key",
        ),
        verdict(
            "identity/issuer",
            issuer,
            "expiry unknown: no operator replica's metrics to read it from; check never reads the identity Secret, which holds the issuer key",
        ),
    ]
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

    fn crd(annotations: serde_json::Value, labels: serde_json::Value) -> CustomResourceDefinition {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "trafficsplits.split.smi-spec.io",
                         "annotations": annotations, "labels": labels},
            "spec": {"group": "split.smi-spec.io", "scope": "Namespaced",
                     "names": {"plural": "trafficsplits", "kind": "TrafficSplit"},
                     "versions": []}
        }))
        .expect("crd")
    }

    #[test]
    fn pre_existing_crds_need_adopting_with_exact_commands() {
        let (o, d) = adoption(
            &crd(serde_json::json!({}), serde_json::json!({})),
            "weft",
            "weft-system",
        );
        assert_eq!(o, Outcome::Fail);
        assert!(d.contains("kubectl annotate crd trafficsplits.split.smi-spec.io meta.helm.sh/release-name=weft meta.helm.sh/release-namespace=weft-system --overwrite"), "{d}");
        assert!(d.contains("kubectl label crd trafficsplits.split.smi-spec.io app.kubernetes.io/managed-by=Helm --overwrite"), "{d}");
        let owned = crd(
            serde_json::json!({"meta.helm.sh/release-name": "weft", "meta.helm.sh/release-namespace": "weft-system"}),
            serde_json::json!({"app.kubernetes.io/managed-by": "Helm"}),
        );
        assert_eq!(adoption(&owned, "weft", "weft-system").0, Outcome::Ok);
        let (o, d) = adoption(&owned, "mesh", "weft-system");
        assert_eq!(o, Outcome::Fail);
        assert!(d.contains("another Helm release"), "{d}");
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn uninjected_pods_and_how_to_fix_them() {
        let plain = pod(serde_json::json!({
            "metadata": {"name": "web-7d9f-abcde", "namespace": "shop",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-7d9f", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert!(should_be_meshed(&plain, true));
        assert!(!is_meshed(&plain));
        assert_eq!(
            restart_hint(&plain),
            "kubectl -n shop rollout restart deployment/web"
        );
        let opted_out = pod(serde_json::json!({
            "metadata": {"name": "x", "namespace": "shop", "annotations": {"weft.io/inject": "disabled"}},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert!(!should_be_meshed(&opted_out, true));
        let host = pod(serde_json::json!({
            "metadata": {"name": "h", "namespace": "shop"},
            "spec": {"hostNetwork": true, "containers": [{"name": "app"}]}
        }));
        assert!(
            !should_be_meshed(&host, true),
            "the injector skips host-network pods"
        );
        let injected = pod(serde_json::json!({
            "metadata": {"name": "y", "namespace": "shop", "labels": {"weft.io/proxy-version": "0.1.0"}},
            "spec": {"containers": [{"name": "app"}, {"name": "weft-proxy"}]}
        }));
        assert!(is_meshed(&injected));
        assert!(restart_hint(&opted_out).contains("delete pod x"));
    }

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
