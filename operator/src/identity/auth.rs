//! Authenticating the token a proxy presents with its certificate request.
//!
//! - [`BootstrapToken`] (`--manifests` mode): the token must equal a shared secret. Bound to a
//!   [`PodDirectory`] (what the operator binary does), the service account is then the one the
//!   manifests give the named pod, never the one the caller claims; unbound (library use,
//!   tests), the claimed service account is trusted.
//! - [`TokenReview`] (Kubernetes): the projected ServiceAccount token (audience
//!   [`AUDIENCE`]) is checked with the TokenReview API; the service account and, when the
//!   token is bound to a pod, the pod name come from the API server's answer.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1 as authn;
use sha2::{Digest, Sha256};

/// Audience of the projected ServiceAccount token proxies present.
pub const AUDIENCE: &str = "weft.io/identity";
/// `extra` key in a TokenReview answer carrying the name of the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What the proxy claims to be.
#[derive(Clone, Copy, Debug)]
pub struct TokenClaim<'a> {
    pub token: &'a [u8],
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub service_account: &'a str,
}

/// Who the token proves the caller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedIdentity {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to, when known.
    pub pod_name: Option<String>,
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Bad, expired or foreign token (`UNAUTHENTICATED`).
    #[error("token not accepted: {0}")]
    Unauthenticated(String),
    /// The authenticator could not decide, e.g. the API server is unreachable (`UNAVAILABLE`).
    #[error("cannot authenticate now: {0}")]
    Unavailable(String),
    /// The token is good but the pod it names is not known (yet): `UNAVAILABLE`, retryable.
    #[error("{0}")]
    UnknownPod(String),
}

/// Checks a token and says whose it is.
pub trait TokenAuthenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        claim: TokenClaim<'a>,
    ) -> BoxFuture<'a, Result<AuthenticatedIdentity, AuthError>>;

    /// The pod directory this authenticator reads, if any: the runtime keeps it up to date
    /// with the pods of its model.
    fn pod_directory(&self) -> Option<Arc<PodDirectory>> {
        None
    }
}

type PodMap = BTreeMap<(String, String), String>;

/// The pods the operator's model holds, `(namespace, name) → service account`: what a
/// [`BootstrapToken`] binds a token holder to, as TokenReview binds a token to its pod.
///
/// Empty and "not loaded" until the runtime publishes the model's pods (after its first
/// compile); every later change of a Pod publishes again.
#[derive(Debug, Default)]
pub struct PodDirectory {
    pods: RwLock<Option<Arc<PodMap>>>,
}

impl PodDirectory {
    pub fn new() -> Arc<Self> {
        Arc::new(PodDirectory::default())
    }

    /// Replaces the directory with `pods`: `(namespace, name, service account)`.
    pub fn publish<'a>(&self, pods: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) {
        let map: PodMap = pods
            .into_iter()
            .map(|(ns, name, sa)| ((ns.to_owned(), name.to_owned()), sa.to_owned()))
            .collect();
        *self.pods.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(map));
    }

    /// The service account of pod `namespace/name`; `UnknownPod` (retryable) when the
    /// directory was not published yet or does not hold the pod.
    pub fn service_account(&self, namespace: &str, name: &str) -> Result<String, AuthError> {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(pods) = pods else {
            return Err(AuthError::UnknownPod(
                "the operator has not loaded its manifests yet; retry".into(),
            ));
        };
        pods.get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| {
                AuthError::UnknownPod(format!(
                    "pod {namespace}/{name} is not in the operator's manifests (yet): a \
                     certificate is issued only for a pod the manifests declare, as the \
                     service account they give it; retry once the pod is there"
                ))
            })
    }
}

/// Shared-secret authentication for `--manifests` mode.
pub struct BootstrapToken {
    digest: [u8; 32],
    /// When set, the service account comes from the pod the claim names, not from the claim.
    pods: Option<Arc<PodDirectory>>,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapToken(..)")
    }
}

fn trimmed(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..end]
}

impl BootstrapToken {
    /// The secret itself (trailing whitespace ignored). An empty secret accepts nothing.
    ///
    /// Unbound: the claimed service account is trusted. The operator binary always binds the
    /// token to its model's pods ([`BootstrapToken::bound_to`]).
    pub fn new(secret: &[u8]) -> Self {
        BootstrapToken {
            digest: Sha256::digest(trimmed(secret)).into(),
            pods: None,
        }
    }

    /// Binds the token to `pods`: a holder gets only the identity the directory gives the pod
    /// it names (the pod must be there; its service account is the pod's).
    pub fn bound_to(mut self, pods: Arc<PodDirectory>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Reads the secret from `--bootstrap-token-file`.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let secret = std::fs::read(path)?;
        if trimmed(&secret).is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Self::new(&secret))
    }

    /// Constant-time comparison (of SHA-256 digests, so the length does not leak either).
    fn matches(&self, token: &[u8]) -> bool {
        let token = trimmed(token);
        if token.is_empty() {
            return false;
        }
        let d: [u8; 32] = Sha256::digest(token).into();
        d.iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl TokenAuthenticator for BootstrapToken {
    fn authenticate<'a>(
        &'a self,
        claim: TokenClaim<'a>,
    ) -> BoxFuture<'a, Result<AuthenticatedIdentity, AuthError>> {
        let result = if !self.matches(claim.token) {
            Err(AuthError::Unauthenticated(
                "the bootstrap token does not match".into(),
            ))
        } else {
            let service_account = match &self.pods {
                Some(pods) => pods.service_account(claim.pod_namespace, claim.pod_name),
                None => Ok(claim.service_account.to_owned()),
            };
            service_account.map(|service_account| AuthenticatedIdentity {
                namespace: claim.pod_namespace.to_owned(),
                service_account,
                pod_name: Some(claim.pod_name.to_owned()),
            })
        };
        Box::pin(std::future::ready(result))
    }

    fn pod_directory(&self) -> Option<Arc<PodDirectory>> {
        self.pods.clone()
    }
}

/// Kubernetes TokenReview authentication.
#[derive(Clone)]
pub struct TokenReview {
    client: kube::Client,
    audience: String,
    timeout: Duration,
}

impl std::fmt::Debug for TokenReview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReview")
            .field("audience", &self.audience)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenReview {
    /// Uses audience [`AUDIENCE`] and a 10 s timeout per review.
    pub fn new(client: kube::Client) -> Self {
        TokenReview {
            client,
            audience: AUDIENCE.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Overrides the per-review timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn review(&self, token: &[u8]) -> Result<AuthenticatedIdentity, AuthError> {
        let token = std::str::from_utf8(trimmed(token))
            .map_err(|_| AuthError::Unauthenticated("token is not UTF-8".into()))?;
        if token.is_empty() {
            return Err(AuthError::Unauthenticated("empty token".into()));
        }
        let review = authn::TokenReview {
            spec: authn::TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: kube::Api<authn::TokenReview> = kube::Api::all(self.client.clone());
        let answer = tokio::time::timeout(
            self.timeout,
            api.create(&kube::api::PostParams::default(), &review),
        )
        .await
        .map_err(|_| AuthError::Unavailable("TokenReview timed out".into()))?
        .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        interpret(answer.status, &self.audience)
    }
}

/// Turns a TokenReview answer into an identity.
fn interpret(
    status: Option<authn::TokenReviewStatus>,
    audience: &str,
) -> Result<AuthenticatedIdentity, AuthError> {
    let status =
        status.ok_or_else(|| AuthError::Unavailable("TokenReview answer has no status".into()))?;
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the API server did not authenticate it".into());
        return Err(AuthError::Unauthenticated(why));
    }
    if let Some(auds) = &status.audiences {
        if !auds.iter().any(|a| a == audience) {
            return Err(AuthError::Unauthenticated(format!(
                "token is not for audience {audience}"
            )));
        }
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let mut parts = username.splitn(4, ':');
    let (Some("system"), Some("serviceaccount"), Some(ns), Some(sa)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Unauthenticated(format!(
            "{username:?} is not a service account"
        )));
    };
    let pod_name = user
        .extra
        .as_ref()
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|v| v.first())
        .cloned();
    Ok(AuthenticatedIdentity {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
        pod_name,
    })
}

impl TokenAuthenticator for TokenReview {
    fn authenticate<'a>(
        &'a self,
        claim: TokenClaim<'a>,
    ) -> BoxFuture<'a, Result<AuthenticatedIdentity, AuthError>> {
        Box::pin(self.review(claim.token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(token: &[u8]) -> TokenClaim<'_> {
        TokenClaim {
            token,
            pod_namespace: "default",
            pod_name: "web-0",
            service_account: "web",
        }
    }

    #[tokio::test]
    async fn bootstrap_token_accepts_only_the_secret() {
        let auth = BootstrapToken::new(b"s3cret\n");
        let ok = auth.authenticate(claim(b"s3cret")).await.unwrap();
        assert_eq!(ok.namespace, "default");
        assert_eq!(ok.service_account, "web");
        assert_eq!(ok.pod_name.as_deref(), Some("web-0"));
        for bad in [&b"s3cre"[..], b"s3cret2", b"", b"\n"] {
            assert!(matches!(
                auth.authenticate(claim(bad)).await,
                Err(AuthError::Unauthenticated(_))
            ));
        }
    }

    #[tokio::test]
    async fn bound_bootstrap_token_gives_the_manifests_service_account_only() {
        let pods = PodDirectory::new();
        let auth = BootstrapToken::new(b"s3cret").bound_to(pods.clone());
        // Before the model is loaded: retryable.
        assert!(matches!(
            auth.authenticate(claim(b"s3cret")).await,
            Err(AuthError::UnknownPod(_))
        ));
        pods.publish([("default", "web-0", "db"), ("default", "db-0", "db")]);
        // The claim says `web`; the manifests say the pod runs as `db`.
        let id = auth.authenticate(claim(b"s3cret")).await.unwrap();
        assert_eq!(
            id,
            AuthenticatedIdentity {
                namespace: "default".into(),
                service_account: "db".into(),
                pod_name: Some("web-0".into()),
            }
        );
        // A pod the manifests do not have.
        let ghost = TokenClaim {
            pod_name: "ghost-0",
            ..claim(b"s3cret")
        };
        match auth.authenticate(ghost).await {
            Err(AuthError::UnknownPod(m)) => assert!(m.contains("default/ghost-0"), "{m}"),
            other => panic!("{other:?}"),
        }
        // The secret is checked first: a wrong token learns nothing about pods.
        assert!(matches!(
            auth.authenticate(TokenClaim {
                pod_name: "ghost-0",
                ..claim(b"guess")
            })
            .await,
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(auth.pod_directory().is_some());
        assert!(BootstrapToken::new(b"s3cret").pod_directory().is_none());
    }

    /// The Kubernetes path: a TokenReview that really authenticates the operator's service
    /// account (e.g. a pod created with it) goes through the shared decision, which refuses it.
    #[test]
    fn token_review_of_the_operators_account_is_refused_by_the_decision() {
        use super::super::csr::SpiffeId;
        use super::super::service::{authorize, CertifyError, IdentityOptions};
        let operator =
            SpiffeId::parse("spiffe://cluster.local/ns/weft-system/sa/weft-operator").unwrap();
        let opts = IdentityOptions {
            reserved: vec![operator.clone()],
            ..IdentityOptions::default()
        };
        let answer = Some(authn::TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![AUDIENCE.into()]),
            user: Some(authn::UserInfo {
                username: Some("system:serviceaccount:weft-system:weft-operator".into()),
                extra: Some(
                    [(
                        POD_NAME_EXTRA.to_owned(),
                        vec!["weft-operator-7d9".to_owned()],
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            error: None,
        });
        let token = interpret(answer, AUDIENCE).unwrap();
        let decision = authorize(&opts, &operator, "weft-system", "weft-operator-7d9", &token);
        assert!(
            matches!(&decision, Err(CertifyError::Reserved(m)) if m.contains("weft-operator")),
            "{decision:?}"
        );
    }

    #[test]
    fn token_review_answers_are_interpreted() {
        let status = |authenticated: bool, username: &str, pod: Option<&str>| {
            Some(authn::TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(vec![AUDIENCE.into()]),
                user: Some(authn::UserInfo {
                    username: Some(username.into()),
                    extra: pod.map(|p| [(POD_NAME_EXTRA.to_owned(), vec![p.to_owned()])].into()),
                    ..Default::default()
                }),
                error: None,
            })
        };
        let id = interpret(
            status(true, "system:serviceaccount:shop:cart", Some("cart-1")),
            AUDIENCE,
        )
        .unwrap();
        assert_eq!(
            id,
            AuthenticatedIdentity {
                namespace: "shop".into(),
                service_account: "cart".into(),
                pod_name: Some("cart-1".into())
            }
        );
        assert!(matches!(
            interpret(
                status(false, "system:serviceaccount:shop:cart", None),
                AUDIENCE
            ),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            interpret(status(true, "alice", None), AUDIENCE),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            interpret(
                status(true, "system:serviceaccount:shop:cart", None),
                "other"
            ),
            Err(AuthError::Unauthenticated(_))
        ));
    }
}
