//! Helpers for the data-plane tests: a test certificate authority, small HTTP backends, and
//! builders of proto resources.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use weft_proxy::config::Config;
use weft_proxy::inbound::{self, InboundSettings};
use weft_proxy::metrics::Metrics;
use weft_proxy::outbound;
use weft_proxy::transport::MeshIdentity;
use weft_proxy_api::v1;

pub fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// An in-process inbound or outbound proxy on loopback. Dropping it starts its shutdown.
pub struct Proxy {
    pub addr: SocketAddr,
    pub config: watch::Sender<Arc<Config>>,
    pub metrics: Arc<Metrics>,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Stops accepting, lets the listener drain, and waits until it has finished.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

pub async fn start_outbound(config: Arc<Config>, identity: Arc<dyn MeshIdentity>) -> Proxy {
    start_outbound_with_grace(config, identity, outbound::DRAIN_GRACE).await
}

pub async fn start_outbound_with_grace(
    config: Arc<Config>,
    identity: Arc<dyn MeshIdentity>,
    grace: Duration,
) -> Proxy {
    let extras = outbound::Extras::default();
    start_outbound_with_extras(config, identity, grace, extras).await
}

/// The outbound listener keeping idle HTTP/1 keep-alive connections for `idle`.
pub async fn start_outbound_idle(
    config: Arc<Config>,
    identity: Arc<dyn MeshIdentity>,
    idle: Duration,
) -> Proxy {
    let extras = outbound::Extras {
        http1_idle: idle,
        ..outbound::Extras::default()
    };
    start_outbound_with_extras(config, identity, outbound::DRAIN_GRACE, extras).await
}

pub async fn start_outbound_with_extras(
    config: Arc<Config>,
    identity: Arc<dyn MeshIdentity>,
    grace: Duration,
    extras: outbound::Extras,
) -> Proxy {
    let listener = ok(TcpListener::bind("127.0.0.1:0").await);
    let addr = ok(listener.local_addr());
    let (tx, rx) = watch::channel(config);
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let m = metrics.clone();
    let done = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = outbound::serve_with(listener, rx, identity, m, shutdown, grace, extras).await;
    });
    Proxy {
        addr,
        config: tx,
        metrics,
        stop,
        done,
    }
}

pub async fn start_inbound(
    ip: &str,
    config: Arc<Config>,
    identity: Arc<dyn MeshIdentity>,
) -> Proxy {
    start_inbound_idle(ip, config, identity, InboundSettings::default().http1_idle).await
}

/// The inbound listener keeping idle HTTP/1 keep-alive connections for `idle`.
pub async fn start_inbound_idle(
    ip: &str,
    config: Arc<Config>,
    identity: Arc<dyn MeshIdentity>,
    idle: Duration,
) -> Proxy {
    let listener = ok(TcpListener::bind(format!("{ip}:0")).await);
    let addr = ok(listener.local_addr());
    let (tx, rx) = watch::channel(config);
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let m = metrics.clone();
    let settings = InboundSettings {
        app_ip: addr.ip(),
        drain_grace: Duration::from_secs(1),
        http1_idle: idle,
        ..Default::default()
    };
    let done = tokio::spawn(async move {
        let _ = inbound::serve(listener, settings, rx, identity, m, async {
            let _ = stopped.await;
        })
        .await;
    });
    Proxy {
        addr,
        config: tx,
        metrics,
        stop,
        done,
    }
}

/// A test mesh CA issuing leaf certificates with a DNS name derived from the identity.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_der: CertificateDer<'static>,
    known: Arc<std::sync::Mutex<HashMap<Vec<u8>, String>>>,
}

fn dns_for(identity: &str) -> String {
    // spiffe://td/ns/<ns>/sa/<sa> -> <sa>.<ns>.mesh.test
    let parts: Vec<&str> = identity.split('/').collect();
    match parts.as_slice() {
        [.., "ns", ns, "sa", sa] => format!("{sa}.{ns}.mesh.test"),
        _ => "invalid.mesh.test".to_string(),
    }
}

impl TestCa {
    pub fn new() -> Self {
        let key = ok(rcgen::KeyPair::generate());
        let mut params = ok(rcgen::CertificateParams::new(Vec::<String>::new()));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = ok(params.self_signed(&key));
        let ca_der = cert.der().clone();
        let issuer = rcgen::Issuer::new(params, key);
        TestCa {
            issuer,
            ca_der,
            known: Arc::default(),
        }
    }

    /// An identity whose TLS configurations use the proxy's crypto provider
    /// (`weft_proxy::identity::provider`: ring, the mesh's cipher suite preference).
    pub fn identity(&self, identity: &str) -> Arc<dyn MeshIdentity> {
        self.identity_with_provider(identity, weft_proxy::identity::provider())
    }

    /// [`TestCa::identity`] with TLS configurations built on `provider`.
    pub fn identity_with_provider(
        &self,
        identity: &str,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Arc<dyn MeshIdentity> {
        let key = ok(rcgen::KeyPair::generate());
        let mut params = ok(rcgen::CertificateParams::new(vec![dns_for(identity)]));
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(ok(rcgen::string::Ia5String::try_from(
                identity.to_string(),
            ))));
        let cert = ok(params.signed_by(&key, &self.issuer));
        let der = cert.der().clone();
        if let Ok(mut k) = self.known.lock() {
            k.insert(der.to_vec(), identity.to_string());
        }
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut roots = rustls::RootCertStore::empty();
        ok(roots.add(self.ca_der.clone()));
        let roots = Arc::new(roots);
        let verifier = ok(rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build());
        let server = ok(ok(
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions(),
        )
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![der.clone()], key_der.clone_key()));
        let client = ok(ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions())
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![der], key_der));
        Arc::new(TestIdentity {
            server: Arc::new(server),
            client: Arc::new(client),
            known: self.known.clone(),
        })
    }
}

struct TestIdentity {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    known: Arc<std::sync::Mutex<HashMap<Vec<u8>, String>>>,
}

impl MeshIdentity for TestIdentity {
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        Some(self.server.clone())
    }
    fn client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        Some(self.client.clone())
    }
    fn server_name_for(&self, identity: &str) -> Option<ServerName<'static>> {
        ServerName::try_from(dns_for(identity)).ok()
    }
    fn peer_identity(&self, certs: &[CertificateDer<'_>]) -> Option<String> {
        let leaf = certs.first()?;
        self.known.lock().ok()?.get(leaf.as_ref()).cloned()
    }
}

/// A backend answering every request with `name` in the body and `x-backend: name`, echoing
/// `x-weft-client-id`, and for `/trailers` sending `grpc-status: 0` as a trailer. `/slow` waits
/// for ever. Serves HTTP/1.1 or HTTP/2 (prior knowledge).
pub async fn backend(addr: &str, name: &'static str, http2: bool) -> SocketAddr {
    let listener = ok(TcpListener::bind(addr).await);
    let local = ok(listener.local_addr());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(name, req).await)
                });
                let io = TokioIo::new(stream);
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    local
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(name: &'static str, req: Request<Incoming>) -> Response<TestBody> {
    let client = req
        .headers()
        .get("x-weft-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req.uri().path().to_string();
    if path == "/slow" {
        std::future::pending::<()>().await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut builder = Response::builder()
        .header("x-backend", name)
        .header("x-client-id", client);
    if let Some(n) = path.strip_prefix("/bytes/") {
        // N bytes of a pattern (`pattern_byte`), and how many the request carried.
        let n: usize = n.parse().unwrap_or(0);
        let data: Vec<u8> = (0..n).map(pattern_byte).collect();
        builder = builder.header("x-request-bytes", body.len());
        return ok(builder.body(Full::new(Bytes::from(data)).boxed()));
    }
    if path == "/trailers" {
        builder = builder.header("content-type", "application/grpc");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(format!(
                "{name}:{}",
                body.len()
            )))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let stream = futures_lite_stream(frames);
        return ok(builder.body(stream));
    }
    ok(builder.body(Full::new(Bytes::from(name)).boxed()))
}

/// The byte at offset `i` of a `/bytes/N` answer.
pub fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn futures_lite_stream(frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>>) -> TestBody {
    http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed()
}

pub fn res(name: &str, kind: v1::resource::Kind) -> (String, v1::Resource) {
    (
        name.to_string(),
        v1::Resource {
            name: name.to_string(),
            version: "t".to_string(),
            kind: Some(kind),
        },
    )
}

/// A server proxy's inbound policy for the pod `identity`: the app's HTTP/1 port, open to every
/// client (no TrafficTarget).
pub fn open_inbound(identity: &str, app: SocketAddr) -> Arc<Config> {
    config(vec![res(
        "inbound",
        v1::resource::Kind::Inbound(v1::InboundPolicy {
            identity: identity.into(),
            default_policy: v1::DefaultPolicy::Allow as i32,
            ports: vec![v1::InboundPort {
                port: u32::from(app.port()),
                protocol: v1::Protocol::Http1 as i32,
                ..Default::default()
            }],
        }),
    )])
}

/// `Authorization.clients` admitting these mesh identities.
pub fn mesh_clients(ids: &[&str]) -> Option<v1::authorization::Clients> {
    Some(v1::authorization::Clients::Mesh(v1::MeshClients {
        identities: ids.iter().map(|id| id.to_string()).collect(),
    }))
}

/// `Authorization.clients` admitting any client (the kubelet's probes).
pub fn probe_clients() -> Option<v1::authorization::Clients> {
    Some(v1::authorization::Clients::Probes(v1::KubeletProbes {}))
}

pub fn endpoint(addr: SocketAddr, identity: &str, inbound_port: u16) -> v1::Endpoint {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    v1::Endpoint {
        ip,
        port: u32::from(addr.port()),
        identity: identity.to_string(),
        inbound_port: u32::from(inbound_port),
        pod: format!("demo/{addr}"),
        workload: String::new(),
    }
}

pub fn endpoints(name: &str, eps: Vec<v1::Endpoint>) -> (String, v1::Resource) {
    res(
        name,
        v1::resource::Kind::Endpoints(v1::EndpointSet { endpoints: eps }),
    )
}

pub fn weighted(service: &str, weight: u64, set: &str) -> v1::WeightedBackend {
    v1::WeightedBackend {
        service: service.to_string(),
        weight,
        endpoint_set: set.to_string(),
        ..Default::default()
    }
}

pub fn outbound(
    ns: &str,
    name: &str,
    port: u16,
    protocol: v1::Protocol,
    routes: Vec<v1::Route>,
    policy: Option<v1::TrafficPolicy>,
) -> (String, v1::Resource) {
    res(
        &format!("outbound:{name}.{ns}"),
        v1::resource::Kind::Outbound(v1::OutboundService {
            namespace: ns.to_string(),
            name: name.to_string(),
            cluster_ips: vec![],
            ports: vec![v1::OutboundPort {
                port: u32::from(port),
                protocol: protocol as i32,
                routes,
            }],
            policy,
        }),
    )
}

pub fn config(resources: Vec<(String, v1::Resource)>) -> Arc<Config> {
    let map: BTreeMap<String, v1::Resource> = resources.into_iter().collect();
    Arc::new(ok(Config::from_resources("test", &map)))
}
