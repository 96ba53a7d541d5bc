//! TLS to the operator's discovery/identity port, verified against out-of-band trust anchors.
//!
//! The proxy accepts the operator's certificate when its chain verifies up to one of the trust
//! anchors (`WEFT_PROXY_TRUST_ANCHORS`) and its name is the expected one:
//! - with `WEFT_PROXY_CONTROL_IDENTITY` set, the certificate's only SPIFFE URI SAN equals it;
//! - otherwise, a DNS SAN matches the host of `WEFT_PROXY_CONTROL_ADDR` (an IP host needs
//!   `WEFT_PROXY_CONTROL_IDENTITY`).
//!
//! Nothing learnt over this connection is trusted more than these anchors. See
//! `docs/identity.md`.
//!
//! Once the proxy holds its mesh certificate, the Discovery connection presents it as client
//! certificate ([`ControlTls::with_client_cert`]); `Certify` connections do not need one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ParsedCertificate;
use rustls::{Error, RootCertStore};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use weft_common::tls::{not_valid_for_name, AnchoredServerVerifier, ServerPeer};

use crate::identity::{peer_identity, provider, TrustAnchors};

/// Who the operator must prove to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlPeer {
    /// Its certificate's SPIFFE URI SAN (`WEFT_PROXY_CONTROL_IDENTITY`).
    Identity(String),
    /// A DNS SAN: the host of `WEFT_PROXY_CONTROL_ADDR`.
    DnsName(String),
}

impl std::fmt::Display for ControlPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlPeer::Identity(id) => write!(f, "{id}"),
            ControlPeer::DnsName(name) => write!(f, "DNS:{name}"),
        }
    }
}

/// The TLS client for the control connection.
#[derive(Clone)]
pub struct ControlTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    peer: ControlPeer,
}

impl std::fmt::Debug for ControlTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlTls")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A control peer name that cannot be used in TLS.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid DNS name for the operator")]
pub struct InvalidControlName(pub String);

impl ControlTls {
    /// TLS 1.2/1.3 with ALPN `h2`, verifying the operator against `anchors` as `peer`.
    pub fn new(anchors: &TrustAnchors, peer: ControlPeer) -> Result<Self, InvalidControlName> {
        let server_name = match &peer {
            // The SNI is informative only; the check is on the URI SAN.
            ControlPeer::Identity(_) => ServerName::try_from("weft-discovery")
                .map_err(|_| InvalidControlName("weft-discovery".into()))?,
            ControlPeer::DnsName(name) => {
                ServerName::try_from(name.clone()).map_err(|_| InvalidControlName(name.clone()))?
            }
        };
        let provider = provider();
        let verifier = Arc::new(AnchoredServerVerifier::new(
            ControlServerPeer {
                roots: anchors.roots(),
                peer: peer.clone(),
            },
            Arc::clone(&provider),
        ));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            });
        let Ok(mut config) = config else {
            unreachable!("ring supports the default TLS versions")
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ControlTls {
            config: Arc::new(config),
            server_name,
            peer,
        })
    }

    /// The same TLS client presenting the certificate `resolver` gives (if any) as client
    /// certificate: the operator then knows which mesh identity connects (Discovery checks it
    /// against the subscribed pod).
    pub fn with_client_cert(&self, resolver: Arc<dyn ResolvesClientCert>) -> ControlTls {
        let mut config = (*self.config).clone();
        config.client_auth_cert_resolver = resolver;
        // No resumption: each connection presents the certificate in force.
        config.resumption = rustls::client::Resumption::disabled();
        ControlTls {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
            peer: self.peer.clone(),
        }
    }

    /// Who the operator must prove to be.
    pub fn peer(&self) -> &ControlPeer {
        &self.peer
    }

    /// A tonic connector: TCP to the URI's authority, then this TLS handshake.
    pub fn connector(&self, connect_timeout: Duration) -> TlsConnector {
        TlsConnector {
            tls: self.clone(),
            connect_timeout,
        }
    }
}

/// The operator must chain to the out-of-band anchors and be `peer`.
#[derive(Debug)]
struct ControlServerPeer {
    roots: Arc<RootCertStore>,
    peer: ControlPeer,
}

impl ServerPeer for ControlServerPeer {
    fn roots(&self) -> Result<Arc<RootCertStore>, Error> {
        Ok(Arc::clone(&self.roots))
    }

    fn check_peer(
        &self,
        leaf: &ParsedCertificate<'_>,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
    ) -> Result<(), Error> {
        match &self.peer {
            ControlPeer::DnsName(_) => rustls::client::verify_server_name(leaf, server_name),
            ControlPeer::Identity(expected) => {
                if peer_identity(std::slice::from_ref(end_entity)).as_deref()
                    == Some(expected.as_str())
                {
                    Ok(())
                } else {
                    Err(not_valid_for_name())
                }
            }
        }
    }
}

/// Connects TCP to the URI's host and port and runs the TLS handshake (for
/// `Endpoint::connect_with_connector`).
#[derive(Clone, Debug)]
pub struct TlsConnector {
    tls: ControlTls,
    connect_timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("control address {uri} has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| format!("control address {uri} has no port"))?;
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                connector.connect(tls.server_name.clone(), tcp).await
            };
            let stream = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| format!("TLS connect to {uri} timed out after {timeout:?}"))?
                .map_err(|e| {
                    format!("TLS to the operator at {uri} (expected {}): {e}", tls.peer)
                })?;
            Ok(TokioIo::new(stream))
        })
    }
}
