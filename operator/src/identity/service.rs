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

use super::auth::{AuthError, TokenAuthenticator, TokenClaim, MAX_TOKEN_LEN};
use super::ca::CaStore;
use super::csr::{issue_leaf, validate_csr, IssueError, SpiffeId};

/// Default leaf lifetime.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default clock-skew allowance: `not_before` is backdated by this much.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Largest Certify request accepted (bytes).
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// Settings of the identity service.
#[derive(Clone, Debug)]
pub struct IdentityOptions {
    /// `--trust-domain`.
    pub trust_domain: String,
    /// Lifetime of issued leaves (capped by the issuer's own expiry).
    pub leaf_lifetime: Duration,
    /// How far `not_before` is backdated.
    pub clock_skew: Duration,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        IdentityOptions {
            trust_domain: "cluster.local".to_owned(),
            leaf_lifetime: DEFAULT_LEAF_LIFETIME,
            clock_skew: DEFAULT_CLOCK_SKEW,
        }
    }
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
            CertifyError::InvalidArgument { reason, .. } => reason,
            CertifyError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<CertifyError> for Status {
    fn from(e: CertifyError) -> Status {
        match e {
            CertifyError::Unauthenticated(m) => Status::unauthenticated(m),
            CertifyError::PermissionDenied(m) => Status::permission_denied(m),
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
    /// `weft_identity_certificates_refused_total{reason}`, `weft_identity_issuer_expiry_seconds`
    /// and `weft_identity_trust_anchor_expiry_seconds` (Unix times).
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
            "weft_identity_issuer_expiry_seconds",
            "Unix time at which the identity issuer certificate expires",
            self.ca.issuer_expiry_gauge(),
        );
        registry.register(
            "weft_identity_trust_anchor_expiry_seconds",
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
            })?;

        // The token's identity must be exactly the one asked for.
        let allowed = SpiffeId {
            trust_domain: self.opts.trust_domain.clone(),
            namespace: authenticated.namespace.clone(),
            service_account: authenticated.service_account.clone(),
        };
        if requested != allowed {
            return Err(CertifyError::PermissionDenied(format!(
                "the token is for {allowed}, not {requested}"
            )));
        }
        if req.pod_namespace != authenticated.namespace {
            return Err(CertifyError::PermissionDenied(format!(
                "pod namespace {:?} does not match the token's namespace {:?}",
                req.pod_namespace, authenticated.namespace
            )));
        }
        if let Some(pod) = &authenticated.pod_name {
            if *pod != req.pod_name {
                return Err(CertifyError::PermissionDenied(format!(
                    "the token is bound to pod {pod:?}, not {:?}",
                    req.pod_name
                )));
            }
        }

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
                tracing::info!(
                    identity = %req.identity,
                    pod = %format!("{}/{}", req.pod_namespace, req.pod_name),
                    reason = e.reason(),
                    error = %e,
                    "certificate refused"
                );
                Err(e.into())
            }
        }
    }
}
