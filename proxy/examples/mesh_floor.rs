//! The floor under weft-proxy's two hops with mTLS: what hyper, `h2`, rustls and tokio alone cost
//! to carry a request across the mesh link, for `e2e/bench/proxy-bench.sh`'s optional
//! `floor-2hop-mtls` path (issue #20). Benchmark tooling only, never part of a mesh.
//!
//! ```text
//! scripts/build-dist.sh example:mesh_floor     # into target/dist/examples, built as the proxy is
//! mesh_floor client <listen addr> <server half's addr> <pki dir> [h2]
//! mesh_floor server <listen addr> <upstream addr> <pki dir>
//! ```
//!
//! Two processes, like the two proxies: each on one `current_thread` runtime (the sidecar's
//! default) with the proxy's allocator setting. The client half serves HTTP/1.1 (or HTTP/2 with
//! prior knowledge, `h2`) with the proxy's server limits (`weft_proxy::http::serve_downstream`)
//! and sends every request on the proxy's own mesh pool (`outbound::pool::MeshPool`: one HTTP/2
//! connection over mutual TLS, the transport header, frames coalesced into one write per poll).
//! The server half accepts that connection the way the inbound proxy does (the proxy's TLS
//! provider, TLS 1.3 only, a client certificate required and verified, no resumption; the
//! transport header read), serves it with the proxy's HTTP/2 server, and forwards every request on
//! the proxy's HTTP/1.1 upstream pool (`Http1Pool`) to the one upstream address.
//!
//! The certificates are the benchmark's own (`make_pki` in `e2e/bench/lib.sh`: `ca.crt`, and
//! `client.crt`/`client.key`, `server.crt`/`server.key`, ECDSA P-256, the names `client.bench` and
//! `server.bench`), the ones HAProxy's pair uses. rustls verifies each peer's chain against the
//! CA; the identity a verified chain stands for is its half's peer (there are two certificates).
//!
//! What weft-proxy does on top of this - routing by authority, splits, balancing, authorization
//! by mesh identity and path, metrics and classification on both sides, the client-id header,
//! hop-by-hop headers on the way in as well as out, deadlines, retries, circuit breaking, load
//! shedding, header values detached from `h2`'s tables, tap and tracing hooks, certificates from
//! the control plane - is what the gap between `weft-2hop-mtls` and this path in one run measures.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode, Version};
use hyper::body::Incoming;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use weft_proxy::http::pool::Http1Pool;
use weft_proxy::http::{
    boxed, empty, serve_downstream, set_upstream_authority, strip_hop_by_hop, BoxError,
};
use weft_proxy::outbound::pool::MeshPool;
use weft_proxy::transport::{self, Drain, Hint, MeshIdentity, TransportHeader};

/// The app port the transport header names (the server half forwards every request to its one
/// upstream whatever it says).
const APP_PORT: u16 = 8080;
/// The authority the client half's requests carry on the link.
const AUTHORITY: &str = "server.bench:8080";
/// The proxy's idle timeout for HTTP/1.1 keep-alive connections.
const IDLE: Duration = weft_proxy::http::idle::KEEP_ALIVE_IDLE_TIMEOUT;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: mesh_floor client <listen> <server half> <pki dir> [h2] | \
                 mesh_floor server <listen> <upstream> <pki dir>";
    let (mode, listen, to, pki) = match args.as_slice() {
        [mode, listen, to, pki, ..] => (mode.as_str(), listen, to, Path::new(pki)),
        _ => return Err(usage.into()),
    };
    let listen: SocketAddr = listen.parse()?;
    let to: SocketAddr = to.parse()?;
    let client_h2 = match args.get(4).map(String::as_str) {
        None => false,
        Some("h2") if mode == "client" => true,
        Some(other) => return Err(format!("unknown option {other:?}; {usage}").into()),
    };
    let (me, peer) = match mode {
        "client" => ("client", "server"),
        "server" => ("server", "client"),
        _ => return Err(usage.into()),
    };
    let identity: Arc<dyn MeshIdentity> = Arc::new(FloorIdentity::load(pki, me, peer)?);
    // As the proxy sets its allocator (a process setting, not a feature of weft's).
    weft_common::memory::keep_heap_top(weft_common::memory::HEAP_TOP_KEPT);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let forever = std::future::pending::<()>();
        if mode == "client" {
            let pool = Arc::new(MeshPool::default());
            transport::serve_loop(listener, forever, IDLE, move |tcp, _, drain| {
                client_connection(tcp, drain, client_h2, identity.clone(), pool.clone(), to)
            })
            .await?;
        } else {
            let pool = Http1Pool::default();
            transport::serve_loop(listener, forever, IDLE, move |tcp, _, drain| {
                server_connection(tcp, drain, identity.clone(), pool.clone(), to)
            })
            .await?;
        }
        Ok(())
    })
}

/// The client half: one downstream connection, every request sent on the mesh pool.
async fn client_connection(
    tcp: TcpStream,
    drain: Drain,
    http2: bool,
    identity: Arc<dyn MeshIdentity>,
    pool: Arc<MeshPool>,
    server: SocketAddr,
) {
    let peer: Arc<str> = Arc::from("server");
    serve_downstream(
        tcp,
        http2,
        IDLE,
        drain,
        move |req: http::Request<Incoming>| {
            let (identity, pool, peer) = (identity.clone(), pool.clone(), peer.clone());
            let req = Box::new(req);
            async move {
                let mut req = (*req).map(boxed);
                strip_hop_by_hop(req.headers_mut());
                // Parsed per request (one copy), as a proxy parses each request's own.
                let Ok(authority) = http::uri::Authority::try_from(AUTHORITY) else {
                    return status(StatusCode::INTERNAL_SERVER_ERROR);
                };
                if set_upstream_authority(&mut req, authority).is_err() {
                    return status(StatusCode::BAD_REQUEST);
                }
                *req.version_mut() = Version::HTTP_2;
                let Ok(mut sender) = pool
                    .sender(&*identity, server, &peer, APP_PORT, Hint::Http1)
                    .await
                else {
                    return status(StatusCode::BAD_GATEWAY);
                };
                match sender.send_request(req).await {
                    Ok(rsp) => rsp.map(boxed),
                    Err(_) => status(StatusCode::BAD_GATEWAY),
                }
            }
        },
    )
    .await;
}

/// The server half: one mesh connection (mTLS, the transport header, then HTTP/2), every request
/// forwarded on the HTTP/1.1 pool.
async fn server_connection(
    tcp: TcpStream,
    drain: Drain,
    identity: Arc<dyn MeshIdentity>,
    pool: Http1Pool,
    upstream: SocketAddr,
) {
    let Some(config) = identity.server_config() else {
        return;
    };
    let accept = async {
        let mut tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .ok()?;
        // A chain rustls verified against the CA, as the inbound proxy requires.
        let certs = tls.get_ref().1.peer_certificates()?;
        identity.peer_identity(certs)?;
        TransportHeader::read(&mut tls).await.ok()?;
        Some(tls)
    };
    let Ok(Some(tls)) = tokio::time::timeout(transport::HANDSHAKE_TIMEOUT, accept).await else {
        return;
    };
    serve_downstream(
        tls,
        true,
        IDLE,
        drain,
        move |req: http::Request<Incoming>| {
            let pool = pool.clone();
            let req = Box::new(req);
            async move {
                let mut req = Box::new((*req).map(boxed));
                strip_hop_by_hop(req.headers_mut());
                *req.version_mut() = Version::HTTP_11;
                match pool.send(upstream, req).await {
                    Ok(rsp) => rsp.map(boxed),
                    Err(_) => status(StatusCode::BAD_GATEWAY),
                }
            }
        },
    )
    .await;
}

fn status(code: StatusCode) -> Response<weft_proxy::http::Body> {
    let mut rsp = Response::new(empty());
    *rsp.status_mut() = code;
    rsp
}

/// One half's certificate and trust, from the benchmark's PEM files.
struct FloorIdentity {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    peer: &'static str,
}

impl FloorIdentity {
    fn load(pki: &Path, me: &str, peer: &'static str) -> Result<Self, BoxError> {
        let ca = CertificateDer::from_pem_file(pki.join("ca.crt"))?;
        let chain = vec![CertificateDer::from_pem_file(
            pki.join(format!("{me}.crt")),
        )?];
        let key = PrivateKeyDer::from_pem_file(pki.join(format!("{me}.key")))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca)?;
        let roots = Arc::new(roots);
        let provider = weft_proxy::identity::provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        // As the proxy: every connection verifies the peer's certificate.
        weft_proxy::identity::no_resumption_server(&mut server);
        weft_proxy::identity::no_resumption_client(&mut client);
        Ok(FloorIdentity {
            server: Arc::new(server),
            client: Arc::new(client),
            peer,
        })
    }
}

impl MeshIdentity for FloorIdentity {
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        Some(self.server.clone())
    }
    fn client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        Some(self.client.clone())
    }
    fn server_name_for(&self, identity: &str) -> Option<ServerName<'static>> {
        ServerName::try_from(format!("{identity}.bench")).ok()
    }
    fn peer_identity(&self, certs: &[CertificateDer<'_>]) -> Option<String> {
        // Called only on a chain rustls has verified against the benchmark's CA, which issued
        // two certificates: the peer's is the one that is not ours.
        certs.first().map(|_| self.peer.to_string())
    }
}
