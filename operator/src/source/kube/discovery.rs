//! Discovery of what the API server serves: EndpointSlice v1 or core Endpoints, and the
//! version of each SMI kind to watch. [`SMI_KINDS`] is the one table of the SMI kinds weft
//! reads, taken from the `weft_smi` types (group, kind, plural, storage version).

use std::sync::LazyLock;

use kube::api::ApiResource;
use kube::Client;
use weft_common::Backoff;

/// One resource to watch.
#[derive(Clone, Debug)]
pub enum Watched {
    Namespaces,
    ServiceAccounts,
    Pods,
    Services,
    EndpointSlices,
    Endpoints,
    /// An SMI kind at the API server's preferred version.
    Smi(ApiResource),
    /// Gateway API `gateway.networking.k8s.io/v1` HTTPRoutes (when served at start).
    HttpRoutes,
    /// Gateway API `gateway.networking.k8s.io/v1` GRPCRoutes (when served at start).
    GrpcRoutes,
}

impl Watched {
    pub fn name(&self) -> String {
        match self {
            Watched::Namespaces => "namespaces".into(),
            Watched::ServiceAccounts => "serviceaccounts".into(),
            Watched::Pods => "pods".into(),
            Watched::Services => "services".into(),
            Watched::EndpointSlices => "endpointslices".into(),
            Watched::Endpoints => "endpoints".into(),
            Watched::Smi(ar) => smi_watch_name(ar),
            Watched::HttpRoutes => HTTP_ROUTES_CRD.into(),
            Watched::GrpcRoutes => GRPC_ROUTES_CRD.into(),
        }
    }
}

/// The name of the HTTPRoute CRD, and of its watcher.
pub const HTTP_ROUTES_CRD: &str = "httproutes.gateway.networking.k8s.io";
/// The name of the GRPCRoute CRD, and of its watcher.
pub const GRPC_ROUTES_CRD: &str = "grpcroutes.gateway.networking.k8s.io";

/// The name of an SMI kind's watcher: `<plural>.<group>`, its CRD's name.
pub fn smi_watch_name(ar: &ApiResource) -> String {
    format!("{}.{}", ar.plural, ar.group)
}

/// One SMI kind weft reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmiKind {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// The version weft writes when it has not read one (the CRDs' storage version).
    pub api_version: &'static str,
}

impl SmiKind {
    /// `<plural>.<group>`: the name of its CRD, and of its watcher.
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// The kind named `kind` (as in `kind:` of an object), if weft reads it.
    pub fn named(kind: &str) -> Option<&'static SmiKind> {
        SMI_KINDS.iter().find(|k| k.kind == kind)
    }

    pub(super) fn is(&self, ar: &ApiResource) -> bool {
        ar.group == self.group && ar.kind == self.kind
    }
}

/// The SMI kinds weft reads, as the watchers need them: a view of the one kind table,
/// `weft_smi::kinds::SMI_KINDS` (the version written when none was read is the storage version).
pub static SMI_KINDS: LazyLock<[SmiKind; 5]> = LazyLock::new(|| {
    weft_smi::kinds::SMI_KINDS.map(|k| SmiKind {
        group: k.group,
        kind: k.kind,
        plural: k.plural,
        api_version: k.storage().api_version,
    })
});

/// Why an SMI kind that is not served is not watched (`/ready`, `/status`).
pub const NOT_SERVED: &str =
    "not served by the API server (is its CRD installed and Established?); watched as soon as it is";

/// Whether a CustomResourceDefinition name is one of an SMI group's.
pub(super) fn is_smi_crd(name: &str) -> bool {
    SMI_KINDS
        .iter()
        .any(|k| name.strip_suffix(k.group).is_some_and(|p| p.ends_with('.')))
}

/// Decides what to watch by asking the API server what it serves: EndpointSlice v1 or core
/// Endpoints, and the preferred version of each SMI kind. SMI kinds whose CRDs are missing are
/// left out with a warning; [`super::run`] keeps looking for them and watches each as soon as it is
/// served.
///
/// An unreachable or unavailable API server (connection errors, 5xx, 429) is not taken for
/// "not served": discovery waits and retries (backoff up to 10 s) until it gets an answer, so an
/// operator started while the API server is down does not come up blind to the SMI kinds.
pub async fn discover(client: &Client) -> Vec<Watched> {
    let mut out = vec![
        Watched::Namespaces,
        Watched::ServiceAccounts,
        Watched::Pods,
        Watched::Services,
    ];
    let slices_v1 = with_retry("discovery.k8s.io/v1", || {
        client.list_api_group_resources("discovery.k8s.io/v1")
    })
    .await
    .map(|l| l.resources.iter().any(|r| r.name == "endpointslices"))
    .unwrap_or(false);
    if slices_v1 {
        out.push(Watched::EndpointSlices);
    } else {
        tracing::info!("discovery.k8s.io/v1 EndpointSlice not served; watching core v1 Endpoints");
        out.push(Watched::Endpoints);
    }
    let gateway_resources: Vec<String> = with_retry(weft_core::model::gateway::API_VERSION, || {
        client.list_api_group_resources(weft_core::model::gateway::API_VERSION)
    })
    .await
    .map(|l| l.resources.into_iter().map(|r| r.name).collect())
    .unwrap_or_default();
    let http_routes = gateway_resources.iter().any(|r| r == "httproutes");
    if gateway_resources.iter().any(|r| r == "grpcroutes") {
        out.push(Watched::GrpcRoutes);
    } else {
        tracing::info!(
            crd = GRPC_ROUTES_CRD,
            "Gateway API GRPCRoute v1 not served; not watched (restart the operator after \
             installing the Gateway API CRDs)"
        );
    }
    if http_routes {
        out.push(Watched::HttpRoutes);
    } else {
        tracing::info!(
            crd = HTTP_ROUTES_CRD,
            "Gateway API HTTPRoute v1 not served; not watched (restart the operator after \
             installing the Gateway API CRDs)"
        );
    }
    match with_retry("SMI API groups", || discover_smi(client)).await {
        Ok(served) => {
            for (k, s) in SMI_KINDS.iter().zip(served) {
                match s {
                    Some(ar) => out.push(Watched::Smi(ar)),
                    None => tracing::warn!(
                        crd = %k.crd_name(),
                        "SMI kind not served (is the CRD installed?); watching for it"
                    ),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "SMI discovery failed; retrying in the background"),
    }
    out
}

/// Asks the API server at which version it serves each of [`SMI_KINDS`] (`None`: not served).
pub(super) async fn discover_smi(client: &Client) -> Result<Vec<Option<ApiResource>>, kube::Error> {
    let mut groups: Vec<&str> = SMI_KINDS.iter().map(|k| k.group).collect();
    groups.dedup();
    let found = kube::Discovery::new(client.clone())
        .filter(&groups)
        .run()
        .await?;
    Ok(SMI_KINDS
        .iter()
        .map(|k| {
            let g = found.get(k.group)?;
            // The group's preferred version first, then the others by priority.
            let preferred = g.preferred_version_or_latest().to_string();
            let versions: Vec<Vec<ApiResource>> = std::iter::once(preferred.as_str())
                .chain(g.versions().filter(|v| *v != preferred))
                .map(|v| {
                    g.versioned_resources(v)
                        .into_iter()
                        .map(|(ar, _)| ar)
                        .collect()
                })
                .collect();
            first_serving(&versions, k)
        })
        .collect())
}

/// The first resource of `kind` in `versions` (each a version's resources, best first).
pub(super) fn first_serving(versions: &[Vec<ApiResource>], kind: &SmiKind) -> Option<ApiResource> {
    versions
        .iter()
        .flat_map(|v| v.iter())
        .find(|ar| kind.is(ar))
        .cloned()
}

/// Whether a discovery error says nothing about what is served (the server did not answer, or
/// answered that it is unavailable).
pub(super) fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        // A definite answer read from the server ("no such group", ...).
        kube::Error::Discovery(_) => false,
        _ => true,
    }
}

/// Retries of an unanswered discovery: from 250 ms doubling up to 10 s, jittered.
const DISCOVERY_RETRY: Backoff = Backoff::new(
    std::time::Duration::from_millis(250),
    std::time::Duration::from_secs(10),
);

/// Runs `call` until it succeeds or fails with a definite answer (see [`is_transient`]).
async fn with_retry<T, F, Fut>(what: &str, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if is_transient(&e) => {
                let delay = DISCOVERY_RETRY.delay(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(api = what, error = %e, retry_in = ?delay, "API server unreachable during discovery; retrying");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    #[test]
    fn smi_crd_names() {
        assert_eq!(SMI_KINDS[0].crd_name(), "trafficsplits.split.smi-spec.io");
        assert!(is_smi_crd("trafficsplits.split.smi-spec.io"));
        assert!(is_smi_crd("tcproutes.specs.smi-spec.io"));
        assert!(is_smi_crd("somethingnew.specs.smi-spec.io"));
        assert!(!is_smi_crd("specs.smi-spec.io"));
        assert!(!is_smi_crd("foo.notsplit.smi-spec.io"));
        assert!(!is_smi_crd("certificates.cert-manager.io"));
    }

    #[test]
    fn a_kind_is_watched_at_the_first_version_that_serves_it() {
        let tcp = SMI_KINDS[3];
        let v4 = vec![ar(
            "specs.smi-spec.io",
            "v1alpha4",
            "HTTPRouteGroup",
            "httproutegroups",
        )];
        let v3 = vec![
            ar(
                "specs.smi-spec.io",
                "v1alpha3",
                "HTTPRouteGroup",
                "httproutegroups",
            ),
            ar("specs.smi-spec.io", "v1alpha3", "TCPRoute", "tcproutes"),
        ];
        let v2 = vec![ar("specs.smi-spec.io", "v1alpha2", "TCPRoute", "tcproutes")];
        // Not in the preferred version: the next one that has it.
        let got = first_serving(&[v4.clone(), v3.clone(), v2], &tcp).unwrap();
        assert_eq!(got.api_version, "specs.smi-spec.io/v1alpha3");
        assert_eq!(
            first_serving(&[v4.clone(), v3], &SMI_KINDS[2])
                .unwrap()
                .version,
            "v1alpha4"
        );
        assert_eq!(first_serving(&[v4], &tcp), None);
        assert_eq!(first_serving(&[], &tcp), None);
        // Same kind name in another group does not count.
        let other = vec![ar("example.com", "v1", "TCPRoute", "tcproutes")];
        assert_eq!(first_serving(&[other], &tcp), None);
    }
}
