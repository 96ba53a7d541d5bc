//! The `Certify` gRPC service: token → identity → CSR check → leaf.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::{Request, Response, Status};
use weft_proxy_api::v1::identity_server::{Identity, IdentityServer};
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse};

use super::auth::{
    AuthError, AuthenticatedIdentity, TokenAuthenticator, TokenClaim, MAX_TOKEN_LEN,
};
use super::ca::CaStore;
use super::csr::{issue_leaf, validate_csr, IssueError, SpiffeId};

/// Default leaf lifetime.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default clock-skew allowance: `not_before` is backdated by this much.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Largest Certify request accepted (bytes).
pub const MAX_REQUEST_LEN: usize = 64 * 1024;
/// Default control-plane namespace (`--namespace`).
pub const DEFAULT_CONTROL_PLANE_NAMESPACE: &str = "weft-system";

/// Settings of the identity service.
#[derive(Clone, Debug)]
pub struct IdentityOptions {
    /// `--trust-domain`.
    pub trust_domain: String,
    /// Lifetime of issued leaves (capped by the issuer's own expiry).
    pub leaf_lifetime: Duration,
    /// How far `not_before` is backdated.
    pub clock_skew: Duration,
    /// The control plane's namespace (`--namespace`): no workload certificate is issued for
    /// any service account in it, the operator's own included.
    pub control_plane_namespace: String,
    /// Further identities never issued to a workload. The runtime adds the identity its
    /// discovery server certificate carries (`--namespace`/`--service-account`).
    pub reserved: Vec<SpiffeId>,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        IdentityOptions {
            trust_domain: "cluster.local".to_owned(),
            leaf_lifetime: DEFAULT_LEAF_LIFETIME,
            clock_skew: DEFAULT_CLOCK_SKEW,
            control_plane_namespace: DEFAULT_CONTROL_PLANE_NAMESPACE.to_owned(),
            reserved: Vec::new(),
        }
    }
}

impl IdentityOptions {
    /// Why `id` may never be issued to a workload, if it is reserved: an identity in the
    /// control plane's namespace, or one listed in `reserved` (the operator's own).
    pub fn reserved_reason(&self, id: &SpiffeId) -> Option<String> {
        if self.reserved.contains(id) {
            return Some(format!(
                "{id} is reserved for the control plane (the operator's own identity): \
                 it is never issued to a workload"
            ));
        }
        if id.namespace == self.control_plane_namespace {
            return Some(format!(
                "{id} is in the control plane's namespace {:?}: no workload certificate is \
                 issued there (it would let a workload pass for the operator)",
                self.control_plane_namespace
            ));
        }
        None
    }
}

/// The decision both token flows share, once the token has been authenticated: may the
/// holder of a token proven to be `token` get `requested` for pod `pod_namespace/pod_name`?
///
/// - Kubernetes: `token` comes from TokenReview (service account of the token; the pod it is
///   bound to, when the API server says).
/// - `--manifests`: `token` comes from [`super::auth::BootstrapToken`] bound to the model's
///   pods (the named pod's namespace, its service account in the manifests, the pod).
///
/// Refused: an identity that is not exactly the token's (other trust domain, namespace or
/// service account), a pod namespace or pod name other than the token's, and any reserved
/// identity ([`IdentityOptions::reserved_reason`]).
pub fn authorize(
    opts: &IdentityOptions,
    requested: &SpiffeId,
    pod_namespace: &str,
    pod_name: &str,
    token: &AuthenticatedIdentity,
) -> Result<(), CertifyError> {
    let allowed = SpiffeId {
        trust_domain: opts.trust_domain.clone(),
        namespace: token.namespace.clone(),
        service_account: token.service_account.clone(),
    };
    if let Some(why) = opts.reserved_reason(&allowed) {
        return Err(CertifyError::Reserved(why));
    }
    if *requested != allowed {
        let pod = match &token.pod_name {
            Some(pod) => format!(
                " (pod {}/{pod} runs as service account {:?})",
                token.namespace, token.service_account
            ),
            None => String::new(),
        };
        return Err(CertifyError::PermissionDenied(format!(
            "the token is for {allowed}, not {requested}{pod}"
        )));
    }
    if pod_namespace != token.namespace {
        return Err(CertifyError::PermissionDenied(format!(
            "pod namespace {pod_namespace:?} does not match the token's namespace {:?}",
            token.namespace
        )));
    }
    if let Some(pod) = &token.pod_name {
        if pod != pod_name {
            return Err(CertifyError::PermissionDenied(format!(
                "the token is bound to pod {pod:?}, not {pod_name:?}"
            )));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// Why a request was refused; each maps to one gRPC code and one metric reason.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A reserved identity (the control plane's): `PERMISSION_DENIED`.
    #[error("{0}")]
    Reserved(String),
    /// The pod is not known (yet): `UNAVAILABLE`, so proxies retry.
    #[error("{0}")]
    UnknownPod(String),
    #[error("{message}")]
    InvalidArgument {
        reason: &'static str,
        message: String,
    },
    #[error("{0}")]
    Unavailable(String),
}

impl CertifyError {
    /// Metric label (bounded set).
    pub fn reason(&self) -> &'static str {
        match self {
            CertifyError::Unauthenticated(_) => "unauthenticated",
            CertifyError::PermissionDenied(_) => "permission_denied",
            CertifyError::Reserved(_) => "reserved_identity",
            CertifyError::UnknownPod(_) => "unknown_pod",
            CertifyError::InvalidArgument { reason, .. } => reason,
            CertifyError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<CertifyError> for Status {
    fn from(e: CertifyError) -> Status {
        match e {
            CertifyError::Unauthenticated(m) => Status::unauthenticated(m),
            CertifyError::PermissionDenied(m) | CertifyError::Reserved(m) => {
                Status::permission_denied(m)
            }
            CertifyError::UnknownPod(m) => Status::unavailable(m),
            CertifyError::InvalidArgument { message, .. } => Status::invalid_argument(message),
            CertifyError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

fn invalid(reason: &'static str, message: impl Into<String>) -> CertifyError {
    CertifyError::InvalidArgument {
        reason,
        message: message.into(),
    }
}

/// The identity service: implements `weft.proxy.v1.Identity`.
#[derive(Clone)]
pub struct IdentityService {
    ca: Arc<CaStore>,
    auth: Arc<dyn TokenAuthenticator>,
    opts: IdentityOptions,
    issued: Counter,
    refused: Family<RefusalLabels, Counter>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityService")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl IdentityService {
    pub fn new(ca: Arc<CaStore>, auth: Arc<dyn TokenAuthenticator>, opts: IdentityOptions) -> Self {
        IdentityService {
            ca,
            auth,
            opts,
            issued: Counter::default(),
            refused: Family::default(),
        }
    }

    /// Registers `weft_identity_certificates_issued_total`,
    /// `weft_identity_certificates_refused_total{reason}`, `weft_identity_issuer_expiry_timestamp_seconds`
    /// and `weft_identity_trust_anchor_expiry_timestamp_seconds` (Unix times).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "weft_identity_certificates_issued",
            "Leaf certificates issued to proxies",
            self.issued.clone(),
        );
        registry.register(
            "weft_identity_certificates_refused",
            "Certify requests refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "weft_identity_issuer_expiry_timestamp_seconds",
            "Unix time at which the identity issuer certificate expires",
            self.ca.issuer_expiry_gauge(),
        );
        registry.register(
            "weft_identity_trust_anchor_expiry_timestamp_seconds",
            "Unix time at which the earliest trust anchor expires",
            self.ca.anchor_expiry_gauge(),
        );
    }

    /// The tonic service, ready for `Server::builder().add_service(...)`.
    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self).max_decoding_message_size(MAX_REQUEST_LEN)
    }

    /// Handles one request; counts the outcome.
    pub async fn certify(&self, req: &CertifyRequest) -> Result<CertifyResponse, CertifyError> {
        let result = self.certify_inner(req).await;
        match &result {
            Ok(_) => {
                self.issued.inc();
            }
            Err(e) => {
                self.refused
                    .get_or_create(&RefusalLabels { reason: e.reason() })
                    .inc();
            }
        }
        result
    }

    async fn certify_inner(&self, req: &CertifyRequest) -> Result<CertifyResponse, CertifyError> {
        let requested = SpiffeId::parse(&req.identity)
            .map_err(|e| invalid("invalid_request", e.to_string()))?;
        if req.token.len() > MAX_TOKEN_LEN {
            return Err(CertifyError::Unauthenticated("token too large".into()));
        }
        // Reserved identities are refused before any token is looked at (no TokenReview call).
        if requested.trust_domain == self.opts.trust_domain {
            if let Some(why) = self.opts.reserved_reason(&requested) {
                return Err(CertifyError::Reserved(why));
            }
        }
        let authenticated = self
            .auth
            .authenticate(TokenClaim {
                token: &req.token,
                pod_namespace: &req.pod_namespace,
                pod_name: &req.pod_name,
                service_account: &requested.service_account,
            })
            .await
            .map_err(|e| match e {
                AuthError::Unauthenticated(m) => CertifyError::Unauthenticated(m),
                AuthError::Unavailable(m) => CertifyError::Unavailable(m),
                AuthError::UnknownPod(m) => CertifyError::UnknownPod(m),
            })?;
        authorize(
            &self.opts,
            &requested,
            &req.pod_namespace,
            &req.pod_name,
            &authenticated,
        )?;

        let csr = validate_csr(&req.csr_der, &requested)
            .map_err(|e| invalid(e.reason(), e.to_string()))?;
        let issuer = self
            .ca
            .current()
            .ok_or_else(|| CertifyError::Unavailable("no identity issuer is loaded".into()))?;
        let leaf = issue_leaf(
            &issuer,
            &csr.public_key,
            &requested,
            self.opts.leaf_lifetime,
            self.opts.clock_skew,
        )
        .map_err(|e| match e {
            IssueError::IssuerExpired => {
                CertifyError::Unavailable("the identity issuer has expired".into())
            }
            IssueError::Sign(e) => CertifyError::Unavailable(format!("signing failed: {e}")),
        })?;
        tracing::debug!(identity = %requested, pod = %req.pod_name, "certificate issued");
        Ok(CertifyResponse {
            leaf_der: leaf.leaf_der,
            intermediates_der: issuer.intermediates_der().to_vec(),
            trust_anchors_der: issuer.anchors_der().to_vec(),
            not_before_unix_ms: unix_ms(leaf.not_before),
            not_after_unix_ms: unix_ms(leaf.not_after),
        })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let req = request.into_inner();
        match IdentityService::certify(self, &req).await {
            Ok(resp) => Ok(Response::new(resp)),
            Err(e) => {
                let pod = format!("{}/{}", req.pod_namespace, req.pod_name);
                if matches!(e, CertifyError::Reserved(_)) {
                    tracing::warn!(
                        identity = %req.identity,
                        %pod,
                        reason = e.reason(),
                        error = %e,
                        "certificate refused: reserved identity requested"
                    );
                } else {
                    tracing::info!(
                        identity = %req.identity,
                        %pod,
                        reason = e.reason(),
                        error = %e,
                        "certificate refused"
                    );
                }
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn token(ns: &str, sa: &str, pod: Option<&str>) -> AuthenticatedIdentity {
        AuthenticatedIdentity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: pod.map(Into::into),
        }
    }

    /// What the operator binary configures with its defaults.
    fn operator_options() -> IdentityOptions {
        IdentityOptions {
            reserved: vec![id("spiffe://cluster.local/ns/weft-system/sa/weft-operator")],
            ..IdentityOptions::default()
        }
    }

    #[test]
    fn the_decision_gives_only_the_tokens_identity() {
        let opts = operator_options();
        let web = token("demo", "web", Some("web-0"));
        let ok = authorize(
            &opts,
            &id("spiffe://cluster.local/ns/demo/sa/web"),
            "demo",
            "web-0",
            &web,
        );
        assert!(ok.is_ok(), "{ok:?}");
        for (requested, ns, pod, needle) in [
            // Another pod's service account.
            (
                "spiffe://cluster.local/ns/demo/sa/db",
                "demo",
                "web-0",
                "pod demo/web-0 runs as service account \"web\"",
            ),
            // A service account that exists nowhere.
            (
                "spiffe://cluster.local/ns/demo/sa/ghost",
                "demo",
                "web-0",
                "not spiffe://cluster.local/ns/demo/sa/ghost",
            ),
            // Another trust domain.
            (
                "spiffe://evil.org/ns/demo/sa/web",
                "demo",
                "web-0",
                "not spiffe://evil.org",
            ),
            // Another pod.
            (
                "spiffe://cluster.local/ns/demo/sa/web",
                "demo",
                "web-1",
                "bound to pod \"web-0\"",
            ),
            // Another namespace for the pod.
            (
                "spiffe://cluster.local/ns/demo/sa/web",
                "prod",
                "web-0",
                "pod namespace \"prod\"",
            ),
        ] {
            match authorize(&opts, &id(requested), ns, pod, &web) {
                Err(CertifyError::PermissionDenied(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{requested} for {ns}/{pod}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_control_plane_identities_are_reserved_on_every_path() {
        let opts = operator_options();
        let operator = id("spiffe://cluster.local/ns/weft-system/sa/weft-operator");
        // A token that really is the operator's service account (Kubernetes: a pod created
        // with it) still gets no workload certificate; neither does anything else in the
        // control plane's namespace.
        for (sa, requested) in [
            ("weft-operator", operator.clone()),
            (
                "other",
                id("spiffe://cluster.local/ns/weft-system/sa/other"),
            ),
        ] {
            let t = token("weft-system", sa, Some("x-0"));
            match authorize(&opts, &requested, "weft-system", "x-0", &t) {
                Err(e @ CertifyError::Reserved(_)) => {
                    assert_eq!(e.reason(), "reserved_identity");
                    assert_eq!(Status::from(e).code(), tonic::Code::PermissionDenied);
                }
                other => panic!("{requested}: {other:?}"),
            }
        }
        // The operator's own identity is reserved even outside the control-plane namespace
        // (`--service-account`/`--namespace` set apart from `control_plane_namespace`).
        let opts = IdentityOptions {
            control_plane_namespace: "mesh-system".into(),
            ..operator_options()
        };
        assert!(opts.reserved_reason(&operator).is_some());
        assert!(opts
            .reserved_reason(&id("spiffe://cluster.local/ns/mesh-system/sa/any"))
            .is_some());
        assert!(opts
            .reserved_reason(&id("spiffe://cluster.local/ns/demo/sa/web"))
            .is_none());
    }

    #[test]
    fn unknown_pods_are_retryable() {
        let e = CertifyError::UnknownPod("pod demo/x is not in the operator's manifests".into());
        assert_eq!(e.reason(), "unknown_pod");
        assert_eq!(Status::from(e).code(), tonic::Code::Unavailable);
    }
}
