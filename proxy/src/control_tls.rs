//! TLS to the operator's discovery/identity port, verified against out-of-band trust anchors.
//!
//! The proxy accepts the operator's certificate when its chain verifies up to one of the trust
//! anchors (`WEFT_PROXY_TRUST_ANCHORS`) and its name is the expected one:
//! - with `WEFT_PROXY_CONTROL_IDENTITY` set, the certificate's only SPIFFE URI SAN equals it;
//! - otherwise, a DNS SAN matches the host of the `WEFT_PROXY_CONTROL_ADDR` entry connected to
//!   (an IP host needs `WEFT_PROXY_CONTROL_IDENTITY`).
//!
//! Nothing learnt over this connection is trusted more than these anchors. See
//! `docs/identity.md`.
//!
//! [`ControlConnector`] dials the operator for both Discovery and Identity: it resolves the
//! control address again on every attempt and fails over between the addresses (operator
//! replicas) it finds; see `docs/proxy.md`, "Control plane fail-over".
//!
//! Once the proxy holds its mesh certificate, the Discovery connection presents it as client
//! certificate ([`ControlTls::with_client_cert`]); `Certify` connections do not need one.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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

    /// A tonic connector over TLS to the host and port of the URI tonic connects to (see
    /// [`ControlConnector`] for a list of targets).
    pub fn connector(&self, connect_timeout: Duration) -> ControlConnector {
        ControlConnector::new(Vec::new(), Some(self.clone()), connect_timeout)
    }

    /// The TLS server name for a connection to `host`: the host itself when the operator is
    /// checked by DNS name (each entry of the control address is checked against its own name),
    /// the informative `weft-discovery` when it is checked by SPIFFE ID.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, InvalidControlName> {
        match &self.peer {
            ControlPeer::Identity(_) => Ok(self.server_name.clone()),
            ControlPeer::DnsName(_) => ServerName::try_from(host.to_owned())
                .map_err(|_| InvalidControlName(host.to_owned())),
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

/// One entry of `WEFT_PROXY_CONTROL_ADDR`: a host (a DNS name or an IP address, without
/// brackets) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlTarget {
    pub host: String,
    pub port: u16,
}

impl ControlTarget {
    /// The target of an `http://host:port` URI (`None` without a host or a port).
    pub fn from_uri(uri: &str) -> Option<ControlTarget> {
        let uri: Uri = uri.parse().ok()?;
        Some(ControlTarget {
            host: uri
                .host()?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16()?,
        })
    }
}

impl std::fmt::Display for ControlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// At most this many resolved addresses are tried per connection attempt (a DNS answer with
/// hundreds of records must not turn one attempt into minutes of timeouts).
pub const MAX_ADDRESSES_PER_ATTEMPT: usize = 16;

/// The control connection's byte stream (TCP, or TLS over TCP).
pub trait ControlIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> ControlIo for T {}

/// The dialer of the discovery and identity channels (for `Endpoint::connect_with_connector`):
/// on every connection attempt it resolves every target again (a headless Service or a DNS name
/// with several addresses spreads proxies over operator replicas; a ClusterIP relies on
/// kube-proxy), then tries the addresses in a random rotation, each bounded by
/// `connect_timeout` (TCP connect and TLS handshake), and returns the first that works. A dead
/// replica thus costs one timeout (or one refused connect), not a reconnect backoff.
///
/// The URI tonic passes in is used only when no target is given. Over TLS each target's
/// certificate is checked as [`ControlTls`] says, with the target's own host as DNS name.
#[derive(Clone, Debug)]
pub struct ControlConnector {
    targets: Arc<[ControlTarget]>,
    tls: Option<ControlTls>,
    connect_timeout: Duration,
    /// The address of the last connection made (shared by the clones tonic makes).
    last: Arc<std::sync::Mutex<Option<String>>>,
}

impl ControlConnector {
    pub fn new(
        targets: Vec<ControlTarget>,
        tls: Option<ControlTls>,
        connect_timeout: Duration,
    ) -> Self {
        ControlConnector {
            targets: targets.into(),
            tls,
            connect_timeout,
            last: Arc::default(),
        }
    }

    /// `host:port (ip:port)` of the last connection this connector (or a clone) made.
    pub fn last_connected(&self) -> Option<String> {
        self.last.lock().ok().and_then(|last| last.clone())
    }

    /// Resolves every target now and returns the addresses to try, in a random rotation.
    async fn candidates(&self) -> (Vec<(usize, SocketAddr)>, Vec<String>) {
        let mut out: Vec<(usize, SocketAddr)> = Vec::new();
        let mut errors = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            if let Ok(ip) = target.host.parse::<IpAddr>() {
                out.push((i, SocketAddr::new(ip, target.port)));
                continue;
            }
            let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
            match tokio::time::timeout(self.connect_timeout, lookup).await {
                Ok(Ok(addrs)) => {
                    for addr in addrs {
                        if !out.iter().any(|(_, a)| *a == addr) {
                            out.push((i, addr));
                        }
                    }
                }
                Ok(Err(e)) => errors.push(format!("resolve {target}: {e}")),
                Err(_) => errors.push(format!("resolve {target}: timed out")),
            }
        }
        rotate_randomly(&mut out);
        out.truncate(MAX_ADDRESSES_PER_ATTEMPT);
        (out, errors)
    }

    /// TCP, then TLS when configured, to one address of target `target`.
    async fn dial(
        &self,
        target: &ControlTarget,
        addr: SocketAddr,
    ) -> Result<Box<dyn ControlIo>, String> {
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {target} ({addr}): {e}"))?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &self.tls else {
                return Ok(Box::new(tcp) as Box<dyn ControlIo>);
            };
            let name = tls
                .server_name_for(&target.host)
                .map_err(|e| e.to_string())?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
            let stream = connector.connect(name, tcp).await.map_err(|e| {
                format!(
                    "TLS to the operator at {target} ({addr}, expected {}): {e}",
                    tls.peer
                )
            })?;
            Ok(Box::new(stream) as Box<dyn ControlIo>)
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                format!(
                    "connect to {target} ({addr}) timed out after {:?}",
                    self.connect_timeout
                )
            })?
    }

    /// One connection attempt over every resolved address.
    pub async fn connect(&self) -> Result<Box<dyn ControlIo>, String> {
        let (candidates, mut errors) = self.candidates().await;
        for (i, addr) in candidates {
            let target = &self.targets[i];
            match self.dial(target, addr).await {
                Ok(io) => {
                    tracing::debug!(%target, %addr, "control connection established");
                    if let Ok(mut last) = self.last.lock() {
                        *last = Some(format!("{target} ({addr})"));
                    }
                    return Ok(io);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "control address failed; trying the next one");
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            errors.push("no control address configured".to_string());
        }
        Err(errors.join("; "))
    }
}

/// Rotates `items` by a random offset: each replica is first equally often, and a failed one
/// is followed by the others.
fn rotate_randomly<T>(items: &mut [T]) {
    if items.len() > 1 {
        let offset = rand::random_range(0..items.len());
        items.rotate_left(offset);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for ControlConnector {
    type Response = TokioIo<Box<dyn ControlIo>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut this = self.clone();
        Box::pin(async move {
            if this.targets.is_empty() {
                let target = ControlTarget::from_uri(&uri.to_string())
                    .ok_or_else(|| format!("control address {uri} has no host or port"))?;
                this.targets = vec![target].into();
            }
            let io = this.connect().await?;
            Ok(TokioIo::new(io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_uris() {
        assert_eq!(
            ControlTarget::from_uri("http://[::1]:8086"),
            Some(ControlTarget {
                host: "::1".into(),
                port: 8086
            })
        );
        assert_eq!(
            ControlTarget::from_uri("http://weft-discovery.weft:8086")
                .map(|t| t.to_string())
                .as_deref(),
            Some("weft-discovery.weft:8086")
        );
        assert_eq!(ControlTarget::from_uri("http://nohost"), None);
    }

    #[test]
    fn rotation_keeps_every_address_and_varies_the_first() {
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut v = vec![1, 2, 3];
            rotate_randomly(&mut v);
            let mut sorted = v.clone();
            sorted.sort();
            assert_eq!(sorted, vec![1, 2, 3]);
            firsts.insert(v[0]);
        }
        assert_eq!(firsts.len(), 3);
    }

    #[tokio::test]
    async fn a_dead_address_is_skipped_for_a_live_one() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_port = live.local_addr().unwrap().port();
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let target = |port| ControlTarget {
            host: "127.0.0.1".into(),
            port,
        };
        let connector = ControlConnector::new(
            vec![target(dead_port), target(live_port)],
            None,
            Duration::from_secs(2),
        );
        for _ in 0..10 {
            connector.connect().await.unwrap();
            live.accept().await.unwrap();
        }
        let all_dead = ControlConnector::new(vec![target(dead_port)], None, Duration::from_secs(2));
        let err = match all_dead.connect().await {
            Ok(_) => panic!("connected to a closed port"),
            Err(e) => e,
        };
        assert!(err.contains(&format!("127.0.0.1:{dead_port}")), "{err}");
    }
}
