//! The webhook HTTPS server: CRD conversion (`/convert`), validating admission (`/validate`) and
//! the sidecar injector (`/inject`, from [`crate::inject`]).

pub mod admission;
pub mod convert;

use std::path::Path;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::admin::{json, read_body, serve_http, text, Body};
use crate::shutdown::Shutdown;

pub use admission::{Validator, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing PEM: {0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate chain and key, PEM encoded.
#[derive(Clone)]
pub struct TlsPem {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem").finish_non_exhaustive()
    }
}

impl TlsPem {
    /// Reads `tls.crt` and `tls.key` from `dir` (a mounted `kubernetes.io/tls` Secret).
    pub fn from_dir(dir: &Path) -> Result<Self, WebhookError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| WebhookError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(TlsPem {
            cert_chain_pem: read("tls.crt")?,
            key_pem: read("tls.key")?,
        })
    }

    /// A rustls acceptor serving this certificate (HTTP/1.1 only).
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, WebhookError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| WebhookError::Pem(e.to_string()))?;
        if certs.is_empty() {
            return Err(WebhookError::Pem("no certificate in tls.crt".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| WebhookError::Pem(e.to_string()))?;
        let provider = Arc::new(weft_common::tls::crypto_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// What the webhook handlers need.
#[derive(Clone)]
pub struct WebhookState {
    pub validator: Validator,
    /// Injector settings; `None` disables `/inject` (answered with 404).
    pub inject: Option<Arc<crate::inject::InjectSettings>>,
    /// Used by the injector to read Namespace annotations.
    pub client: Option<kube::Client>,
}

/// Answers one webhook request.
pub async fn handle(state: &WebhookState, req: Request<Incoming>) -> Response<Body> {
    if req.method() == Method::GET && req.uri().path() == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let path = req.uri().path().to_string();
    if !matches!(path.as_str(), "/convert" | "/validate" | "/inject") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
    };
    let review: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}\n")),
    };
    let answer = match path.as_str() {
        "/convert" => convert::review(&review),
        "/validate" => admission::review(&review, &state.validator),
        _ => match &state.inject {
            Some(settings) => {
                match crate::inject::handle_admission(review, settings, state.client.as_ref()).await
                {
                    Ok(answer) => answer,
                    // Undecidable: a webhook failure, so the webhook's failurePolicy applies.
                    Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                }
            }
            None => return text(StatusCode::NOT_FOUND, "injector disabled\n"),
        },
    };
    json(StatusCode::OK, &answer)
}

/// Serves the webhooks over TLS on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: WebhookState,
    shutdown: Shutdown,
) {
    let state = Arc::new(state);
    serve_http(listener, Some(tls), shutdown, move |req| {
        let state = state.clone();
        async move { handle(&state, req).await }
    })
    .await
}
