//! The operator's aggregated API server (Kubernetes API aggregation): an HTTPS listener that
//! only the API server's front proxy may use, routing `/apis/<group>/...` to a registered
//! [`GroupHandler`] (`metrics.smi-spec.io`, `tap.weft.io`).
//!
//! Authentication, as every aggregated API server does it: the TLS handshake requires a client
//! certificate that chains to the requestheader client CA, and whose common name is one of the
//! allowed names when any are set (both from ConfigMap
//! `kube-system/extension-apiserver-authentication`, or flags outside Kubernetes). A client
//! without such a certificate never gets a request in: the handshake fails. Over a verified
//! connection the user is taken from the `X-Remote-User`/`X-Remote-Group`/`X-Remote-Extra-*`
//! headers (names from the same ConfigMap) into a [`Caller`]; a request without a user gets 401.
//! The API server has already authorized the user for the resource (RBAC on
//! `metrics.smi-spec.io`), so handlers trust it.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tokio::net::TcpListener;

use crate::admin::{json as json_response, serve_http, Body};
use crate::aggregated::{Caller, GroupHandler};
use crate::shutdown::Shutdown;
use crate::webhook::TlsPem;

/// The ConfigMap the API server publishes its requestheader settings in.
pub const AUTH_CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const AUTH_CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("reading ConfigMap kube-system/extension-apiserver-authentication: {0}")]
    ConfigMap(String),
    #[error("no requestheader-client-ca-file in the authentication ConfigMap: the API server does not run the aggregation layer (--requestheader-client-ca-file)")]
    NoClientCa,
    #[error("invalid {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("requestheader client CA: {0}")]
    Ca(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Serving(#[from] crate::webhook::WebhookError),
}

/// How the front proxy (the API server) authenticates to us and names the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontProxy {
    /// PEM of the CA(s) the front proxy's client certificate chains to.
    pub client_ca_pem: String,
    /// Common names allowed on that certificate; empty: any certificate of the CA.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

fn json_list(
    data: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Vec<String>, ApiServerError> {
    match data.get(key) {
        None => Ok(Vec::new()),
        Some(s) if s.trim().is_empty() => Ok(Vec::new()),
        Some(s) => serde_json::from_str(s).map_err(|e| ApiServerError::Invalid {
            key,
            reason: e.to_string(),
        }),
    }
}

impl FrontProxy {
    /// Kubernetes' defaults for the header names, with `client_ca_pem` and `allowed_names`.
    pub fn new(client_ca_pem: String, allowed_names: Vec<String>) -> Self {
        FrontProxy {
            client_ca_pem,
            allowed_names,
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        }
    }

    /// From the data of ConfigMap `kube-system/extension-apiserver-authentication`.
    pub fn from_configmap_data(data: &BTreeMap<String, String>) -> Result<Self, ApiServerError> {
        let ca = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
            .ok_or(ApiServerError::NoClientCa)?;
        let username_headers = json_list(data, "requestheader-username-headers")?;
        if username_headers.is_empty() {
            return Err(ApiServerError::Invalid {
                key: "requestheader-username-headers",
                reason: "empty".into(),
            });
        }
        Ok(FrontProxy {
            client_ca_pem: ca.clone(),
            allowed_names: json_list(data, "requestheader-allowed-names")?,
            username_headers,
            group_headers: json_list(data, "requestheader-group-headers")?,
            extra_prefixes: json_list(data, "requestheader-extra-headers-prefix")?,
        })
    }

    /// Reads the ConfigMap (needs the `extension-apiserver-authentication-reader` Role).
    pub async fn from_cluster(client: &kube::Client) -> Result<Self, ApiServerError> {
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), AUTH_CONFIGMAP_NAMESPACE);
        let cm = api
            .get(AUTH_CONFIGMAP_NAME)
            .await
            .map_err(|e| ApiServerError::ConfigMap(e.to_string()))?;
        Self::from_configmap_data(&cm.data.unwrap_or_default())
    }

    /// The user of a request that came over a verified front-proxy connection; `None` when the
    /// headers name none.
    pub fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let user = self.username_headers.iter().find_map(|h| {
            headers
                .get_all(h.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| !v.is_empty())
                .map(str::to_owned)
        })?;
        let mut groups = Vec::new();
        for h in &self.group_headers {
            for v in headers.get_all(h.as_str()) {
                if let Ok(v) = v.to_str() {
                    groups.push(v.to_owned());
                }
            }
        }
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            let lower = name.as_str();
            for prefix in &self.extra_prefixes {
                let p = prefix.to_ascii_lowercase();
                if let Some(key) = lower.strip_prefix(p.as_str()).filter(|k| !k.is_empty()) {
                    if let Ok(v) = value.to_str() {
                        extra
                            .entry(percent_decode(key))
                            .or_default()
                            .push(v.to_owned());
                    }
                }
            }
        }
        Some(Caller {
            user,
            groups,
            extra,
        })
    }

    /// A TLS acceptor serving `serving`, requiring a client certificate of the front proxy.
    pub fn acceptor(&self, serving: &TlsPem) -> Result<tokio_rustls::TlsAcceptor, ApiServerError> {
        let provider = Arc::new(weft_common::tls::crypto_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.client_ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| ApiServerError::Ca(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ApiServerError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ApiServerError::Ca("no certificate".into()));
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| ApiServerError::Ca(e.to_string()))?;
        let verifier = Arc::new(FrontProxyVerifier {
            inner,
            allowed_names: self.allowed_names.clone(),
        });
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(serving.cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| crate::webhook::WebhookError::Pem(e.to_string()))?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
            .map_err(|e| crate::webhook::WebhookError::Pem(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// `%XX` escapes decoded (Kubernetes escapes extra keys in header names so).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The common name of a certificate's subject.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The webpki verifier of the requestheader CA, then the allowed-names check on the leaf.
#[derive(Debug)]
struct FrontProxyVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed_names: Vec<String>,
}

impl ClientCertVerifier for FrontProxyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed_names.is_empty() {
            return Ok(verified);
        }
        match common_name(end_entity) {
            Some(cn) if self.allowed_names.contains(&cn) => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// One API group served, with its version (for the `/apis` discovery document).
#[derive(Clone)]
pub struct ServedGroup {
    pub handler: Arc<dyn GroupHandler>,
    pub version: &'static str,
}

/// What the server needs to answer.
#[derive(Clone)]
pub struct ApiServerState {
    pub front_proxy: Arc<FrontProxy>,
    pub groups: Vec<ServedGroup>,
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    crate::trafficmetrics::status(code, message)
}

/// Answers one request that came over a verified front-proxy connection.
pub async fn handle(state: &ApiServerState, req: Request<Incoming>) -> Response<Body> {
    let Some(caller) = state.front_proxy.caller(req.headers()) else {
        return status(
            StatusCode::UNAUTHORIZED,
            "no user in the front-proxy headers",
        );
    };
    let path = req.uri().path().to_string();
    if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        return crate::admin::text(StatusCode::OK, "ok");
    }
    if path == "/apis" || path == "/apis/" {
        let groups: Vec<_> = state
            .groups
            .iter()
            .map(|g| {
                let gv = json!({"groupVersion": format!("{}/{}", g.handler.group(), g.version),
                                "version": g.version});
                json!({"name": g.handler.group(), "versions": [gv.clone()],
                       "preferredVersion": gv})
            })
            .collect();
        return json_response(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        );
    }
    let group = path
        .strip_prefix("/apis/")
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match group.and_then(|g| state.groups.iter().find(|s| s.handler.group() == g)) {
        Some(served) => served.handler.handle(req, caller).await,
        None => status(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves the aggregated API over TLS on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: ApiServerState,
    shutdown: Shutdown,
) {
    let state = Arc::new(state);
    serve_http(listener, Some(tls), shutdown, move |req| {
        let state = state.clone();
        async move { handle(&state, req).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_authentication_configmap() {
        let data = BTreeMap::from([
            (
                "requestheader-client-ca-file".to_string(),
                "PEM".to_string(),
            ),
            (
                "requestheader-allowed-names".to_string(),
                r#"["front-proxy-client"]"#.to_string(),
            ),
            (
                "requestheader-username-headers".to_string(),
                r#"["X-Remote-User"]"#.to_string(),
            ),
            (
                "requestheader-group-headers".to_string(),
                r#"["X-Remote-Group"]"#.to_string(),
            ),
            (
                "requestheader-extra-headers-prefix".to_string(),
                r#"["X-Remote-Extra-"]"#.to_string(),
            ),
        ]);
        let fp = FrontProxy::from_configmap_data(&data).unwrap();
        assert_eq!(fp, {
            let mut f = FrontProxy::new("PEM".into(), vec!["front-proxy-client".into()]);
            f.username_headers = vec!["X-Remote-User".into()];
            f
        });
        assert!(matches!(
            FrontProxy::from_configmap_data(&BTreeMap::new()),
            Err(ApiServerError::NoClientCa)
        ));
    }

    #[test]
    fn the_caller_comes_from_the_configured_headers() {
        let fp = FrontProxy::new("PEM".into(), vec![]);
        let mut h = HeaderMap::new();
        assert_eq!(fp.caller(&h), None, "no user: unauthenticated");
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "devs".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        h.append("x-remote-extra-scopes%2fa", "x".parse().unwrap());
        let c = fp.caller(&h).unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.groups, vec!["devs", "system:authenticated"]);
        assert_eq!(c.extra["scopes/a"], vec!["x"]);
    }

    #[test]
    fn percent_decoding_leaves_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("a%zz%"), "a%zz%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
