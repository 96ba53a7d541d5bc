//! Mesh identity: the CA that issues proxies their mTLS certificates, and the `Certify` service.
//!
//! See `docs/identity.md` for the trust model, token flows and CSR rules.

pub mod auth;
pub mod ca;
pub mod control_tls;
pub mod csr;
pub mod service;

pub use auth::{
    AuthError, AuthenticatedIdentity, BootstrapToken, PodDirectory, TokenAuthenticator, TokenClaim,
    TokenReview,
};
pub use ca::{generate_ca, CaBundle, CaError, CaStore, IssuerState};
pub use control_tls::{ControlConnectInfo, ControlTls, ControlTlsError, ControlTlsOptions};
pub use csr::{CsrError, SpiffeId};
pub use service::{authorize, CertifyError, IdentityOptions, IdentityService};
