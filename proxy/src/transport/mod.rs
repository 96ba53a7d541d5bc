//! Listeners and connections: the accept loop with graceful drain, `SO_ORIGINAL_DST`, mTLS
//! between proxies, the transport header and protocol detection.

pub mod detect;
pub mod header;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use detect::{detect, read_head, sniff, Detected, Head, PrefixedIo, Sniff, Sniffer};
pub use header::{Hint, TransportHeader};

/// Time allowed to connect to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for a TLS handshake plus the transport header.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to send its first bytes before the connection is treated as opaque.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time an inbound client has to send a complete request head (or bytes that cannot be HTTP)
/// on the detection path; then the connection is closed, never relayed (slowloris). Counted
/// from the connection's start (after the TLS handshake on the mesh path), or from the first
/// byte when a server-speaks-first connection is already relayed.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The mesh identity as the data plane needs it. Implemented by `crate::identity::Identity`;
/// tests provide their own. Methods return `None` while no certificate is held.
pub trait MeshIdentity: Send + Sync + 'static {
    /// Server config for the inbound listener (requests client certificates).
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>>;
    /// Client config for connections to other proxies (presents our certificate).
    fn client_config(&self) -> Option<Arc<rustls::ClientConfig>>;
    /// The TLS server name under which a peer with SPIFFE `identity` is verified.
    fn server_name_for(&self, identity: &str) -> Option<ServerName<'static>>;
    /// The SPIFFE identity in a verified peer certificate chain.
    fn peer_identity(&self, certs: &[CertificateDer<'_>]) -> Option<String>;
}

/// A mesh without identity: every mTLS operation fails (plaintext paths still work).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoIdentity;

impl MeshIdentity for NoIdentity {
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        None
    }
    fn client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        None
    }
    fn server_name_for(&self, _identity: &str) -> Option<ServerName<'static>> {
        None
    }
    fn peer_identity(&self, _certs: &[CertificateDer<'_>]) -> Option<String> {
        None
    }
}

/// The destination a connection had before an iptables `REDIRECT`, if it was redirected (it
/// differs from both ends of the connection). `None` without transparent interception.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let dst = dst.ok()?.as_socket()?;
    // Without NAT, conntrack may answer with either direction of the tuple: only a destination
    // that is neither end of this connection means the connection was redirected.
    let peer = stream.peer_addr().ok()?;
    (dst != local && dst != peer).then_some(dst)
}

/// Errors of connections between proxies.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("no mesh identity yet: cannot open mTLS to {0}")]
    NoIdentity(SocketAddr),
    #[error("invalid peer identity {0:?}")]
    ServerName(String),
    #[error("TLS to {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS to {addr}: handshake timed out")]
    TlsTimeout { addr: SocketAddr },
    #[error("peer at {addr} is {got:?}, expected {expected}")]
    WrongPeer {
        addr: SocketAddr,
        expected: String,
        got: Option<String>,
    },
}

/// Opens a TCP connection with [`CONNECT_TIMEOUT`] and `TCP_NODELAY`.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, TransportError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(source)) => Err(TransportError::Connect { addr, source }),
        Err(_) => Err(TransportError::ConnectTimeout(addr)),
    }
}

pub type MeshStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to another proxy's inbound port over mTLS, checks that it is `identity`, and sends
/// the transport header.
pub async fn connect_mesh(
    identity: &dyn MeshIdentity,
    addr: SocketAddr,
    expected: &str,
    header: TransportHeader,
) -> Result<MeshStream, TransportError> {
    let client = identity
        .client_config()
        .ok_or(TransportError::NoIdentity(addr))?;
    let name = identity
        .server_name_for(expected)
        .ok_or_else(|| TransportError::ServerName(expected.to_string()))?;
    let tcp = connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client);
    let handshake = async {
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| TransportError::Tls { addr, source })?;
        let got = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| identity.peer_identity(certs));
        if got.as_deref() != Some(expected) {
            return Err(TransportError::WrongPeer {
                addr,
                expected: expected.to_string(),
                got,
            });
        }
        header
            .write(&mut tls)
            .await
            .map_err(|source| TransportError::Tls { addr, source })?;
        Ok(tls)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::TlsTimeout { addr }),
    }
}

/// Relays bytes both ways until both sides are done (or either fails); returns the bytes moved
/// (client→server, server→client), counted as they are read, so a reset connection still
/// reports what it carried.
pub async fn relay<A, B>(a: A, b: B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = Counted::new(a);
    let mut b = Counted::new(b);
    if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
        tracing::debug!(error = %e, "relay ended with an error");
    }
    (a.read, b.read)
}

/// An IO that counts the bytes read from it.
struct Counted<T> {
    inner: T,
    read: u64,
}

impl<T> Counted<T> {
    fn new(inner: T) -> Self {
        Counted { inner, read: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read = self.read.saturating_add(n as u64);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Signals connections that the listener is draining.
#[derive(Clone, Debug)]
pub struct Drain {
    rx: watch::Receiver<bool>,
}

impl Drain {
    /// Resolves when draining starts.
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }
}

/// Accepts connections until `shutdown` resolves, handing each to `handle` on its own task; then
/// stops accepting, signals drain, and waits up to `grace` for connections to finish (the rest are
/// aborted).
pub async fn serve_loop<H, F>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(TcpStream, SocketAddr, Drain) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(handle(stream, peer, Drain { rx: drain_rx.clone() }));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let wait_all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, wait_all).await.is_err() {
        tasks.abort_all();
    }
    Ok(())
}

/// The proxy's identity for its data plane: inbound TLS requires a client certificate
/// ([`crate::identity::Identity::mesh_server_config`]).
impl MeshIdentity for crate::identity::Identity {
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.is_ready().then(|| self.mesh_server_config())
    }
    fn client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.is_ready()
            .then(|| crate::identity::Identity::client_config(self))
    }
    fn server_name_for(&self, identity: &str) -> Option<ServerName<'static>> {
        Some(crate::identity::server_name_for(identity))
    }
    fn peer_identity(&self, certs: &[CertificateDer<'_>]) -> Option<String> {
        crate::identity::peer_identity(certs)
    }
}
