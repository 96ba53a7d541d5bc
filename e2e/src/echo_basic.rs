//! Upstream Gateway API conformance's echo application (`conformance/echo-basic/`, v1.5.1), as
//! far as the mesh tests read it, and the client that runs inside a meshed pod.
//!
//! * HTTP ([`serve_http`]): every path answers `200` with upstream's `RequestAssertions` JSON:
//!   `path` (the request target, query included), `host`, `method`, `proto`, `headers` (as
//!   received, every value), `namespace`, `ingress`, `service`, `pod` (from the env `NAMESPACE`,
//!   `INGRESS_NAME`, `SERVICE_NAME`, `POD_NAME`).
//! * gRPC ([`serve_grpc`]): `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho` with `Echo`
//!   and `EchoTwo` answering `EchoResponse { assertions }` (method, request headers,
//!   `:authority`, the pod context), `EchoThree` `UNIMPLEMENTED`, as upstream. The messages are
//!   declared here with `prost` derives (field numbers of upstream's `grpcecho.proto`): no
//!   protoc, no build step.
//! * The client ([`request`]): one request per [`Reply`] line, sent from wherever it runs (the
//!   tests run it in a meshed pod's network namespace, so it goes through that pod's proxy, as
//!   upstream's `echo.ConnectToApp` does). It never follows redirects.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

/// Where the answering pod runs (upstream's `Context`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PodContext {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub ingress: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub pod: String,
}

impl PodContext {
    /// From `NAMESPACE`, `INGRESS_NAME`, `SERVICE_NAME`, `POD_NAME` (upstream's variables).
    pub fn from_env() -> PodContext {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        PodContext {
            namespace: var("NAMESPACE"),
            ingress: var("INGRESS_NAME"),
            service: var("SERVICE_NAME"),
            pod: var("POD_NAME"),
        }
    }
}

/// Upstream's `RequestAssertions` (HTTP body).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestAssertions {
    pub path: String,
    pub host: String,
    pub method: String,
    pub proto: String,
    pub headers: BTreeMap<String, Vec<String>>,
    #[serde(flatten)]
    pub context: PodContext,
}

/// Most bytes of a request body the HTTP server reads (the rest is dropped with the
/// connection).
const MAX_BODY: usize = 1 << 20;

fn header_map(h: &http::HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        out.entry(canonical(k.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    out
}

/// Go's canonical header name (`x-header-set` → `X-Header-Set`), as upstream's JSON shows.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

async fn answer_http(
    req: http::Request<hyper::body::Incoming>,
    ctx: Arc<PodContext>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Drain (bounded) so that keep-alive works.
    let _ = http_body_util::Limited::new(body, MAX_BODY).collect().await;
    let host = parts
        .headers
        .get(http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut headers = header_map(&parts.headers);
    // Go's server moves Host out of the header map.
    headers.remove("Host");
    let a = RequestAssertions {
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        host,
        method: parts.method.to_string(),
        proto: match parts.version {
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
        .into(),
        headers,
        context: (*ctx).clone(),
    };
    let body = serde_json::to_vec(&a).unwrap_or_default();
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// Serves echo-basic's HTTP answers (HTTP/1.1 and cleartext HTTP/2) on `listener`.
pub async fn serve_http(listener: TcpListener, ctx: PodContext) -> anyhow::Result<()> {
    let ctx = Arc::new(ctx);
    loop {
        let (stream, _) = listener.accept().await?;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer_http(req, ctx.clone()));
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                eprintln!("echo-basic http connection: {e}");
            }
        });
    }
}

/// gRPC messages of upstream's `grpcecho.proto` (package
/// `gateway_api_conformance.echo_basic.grpcecho`), declared by hand.
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Header {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Context {
        #[prost(string, tag = "1")]
        pub namespace: String,
        #[prost(string, tag = "2")]
        pub ingress: String,
        #[prost(string, tag = "3")]
        pub service_name: String,
        #[prost(string, tag = "4")]
        pub pod: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TlsAssertions {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub negotiated_protocol: String,
        #[prost(string, tag = "3")]
        pub server_name: String,
        #[prost(string, tag = "4")]
        pub cipher_suite: String,
        #[prost(string, repeated, tag = "5")]
        pub peer_certificates: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Assertions {
        #[prost(string, tag = "1")]
        pub fully_qualified_method: String,
        #[prost(message, repeated, tag = "2")]
        pub headers: Vec<Header>,
        #[prost(string, tag = "3")]
        pub authority: String,
        #[prost(message, optional, tag = "4")]
        pub context: Option<Context>,
        #[prost(message, optional, tag = "5")]
        pub tls_assertions: Option<TlsAssertions>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoResponse {
        #[prost(message, optional, tag = "1")]
        pub assertions: Option<Assertions>,
        #[prost(message, optional, tag = "2")]
        pub request: Option<EchoRequest>,
    }
}

/// The gRPC service's full name.
pub const GRPC_SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// `GrpcEcho` as a tower service (what tonic's generated code would be).
#[derive(Clone, Debug)]
pub struct GrpcEchoServer {
    ctx: Arc<pb::Context>,
}

impl GrpcEchoServer {
    pub fn new(ctx: &PodContext) -> GrpcEchoServer {
        GrpcEchoServer {
            ctx: Arc::new(pb::Context {
                namespace: ctx.namespace.clone(),
                ingress: ctx.ingress.clone(),
                service_name: ctx.service.clone(),
                pod: ctx.pod.clone(),
            }),
        }
    }
}

struct EchoMethod {
    method: &'static str,
    authority: String,
    ctx: Arc<pb::Context>,
}

impl tonic::server::UnaryService<pb::EchoRequest> for EchoMethod {
    type Response = pb::EchoResponse;
    type Future = tonic::codegen::BoxFuture<tonic::Response<pb::EchoResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<pb::EchoRequest>) -> Self::Future {
        let mut headers = vec![pb::Header {
            key: ":authority".into(),
            value: self.authority.clone(),
        }];
        for (k, v) in request.metadata().clone().into_headers().iter() {
            headers.push(pb::Header {
                key: k.as_str().to_string(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            });
        }
        let resp = pb::EchoResponse {
            assertions: Some(pb::Assertions {
                fully_qualified_method: format!("/{GRPC_SERVICE}/{}", self.method),
                headers,
                authority: self.authority.clone(),
                context: Some((*self.ctx).clone()),
                tls_assertions: None,
            }),
            request: Some(request.into_inner()),
        };
        Box::pin(async move { Ok(tonic::Response::new(resp)) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for GrpcEchoServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = match req.uri().path().strip_prefix(&format!("/{GRPC_SERVICE}/")) {
            Some("Echo") => Some("Echo"),
            Some("EchoTwo") => Some("EchoTwo"),
            // EchoThree is upstream's intentionally unimplemented method.
            _ => None,
        };
        let Some(method) = method else {
            return Box::pin(async move {
                Ok(tonic::Status::unimplemented("not implemented").into_http())
            });
        };
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            })
            .unwrap_or_default();
        let svc = EchoMethod {
            method,
            authority,
            ctx: self.ctx.clone(),
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(svc, req).await)
        })
    }
}

impl tonic::server::NamedService for GrpcEchoServer {
    const NAME: &'static str = GRPC_SERVICE;
}

/// Serves `GrpcEcho` (cleartext HTTP/2) on `listener`.
pub async fn serve_grpc(listener: TcpListener, ctx: PodContext) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(GrpcEchoServer::new(&ctx))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

/// One request's outcome as the client prints it (one JSON line).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    /// The HTTP status; for gRPC 200 when the call succeeded, else 0 with `error`.
    pub code: u16,
    /// The backend pod that answered (`pod` of its answer; upstream's `Hostname`).
    pub hostname: String,
    /// The backend's namespace.
    pub namespace: String,
    /// The request as the backend received it (HTTP; `None` when the answer was not
    /// echo-basic's, e.g. a redirect or an error from the proxy).
    pub request: Option<RequestAssertions>,
    /// gRPC: the request headers the backend saw (lower-case keys).
    pub grpc_headers: BTreeMap<String, Vec<String>>,
    /// The response's headers (lower-case names).
    pub response_headers: BTreeMap<String, Vec<String>>,
    /// The response body when it was not echo-basic's JSON (first 512 bytes).
    pub body: String,
    /// Why no response came.
    pub error: Option<String>,
}

/// What to send.
#[derive(Clone, Debug)]
pub struct Request {
    /// `http://host[:port]/path?query` or `grpc://host[:port]`.
    pub url: String,
    pub method: String,
    /// Header name and value, in order (a `Host` header replaces the URL's authority).
    pub headers: Vec<(String, String)>,
    /// DNS search suffixes tried after the bare name (as a pod's `resolv.conf` search list).
    pub search: Vec<String>,
}

/// The parts of a request URL.
struct Target {
    grpc: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let (grpc, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("grpc://") {
        (true, r)
    } else {
        return Err(format!("{url:?}: only http:// and grpc:// URLs"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        ),
        _ => (authority.to_string(), if grpc { 7070 } else { 80 }),
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(Target {
        grpc,
        host,
        port,
        path,
    })
}

/// Resolves `host` as a pod would: an IP literal as is, else the name, then the name with each
/// search suffix (through `/etc/hosts`, which the test kubelet writes per pod).
async fn resolve(host: &str, port: u16, search: &[String]) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok((ip, port).into());
    }
    let mut names = vec![host.to_string()];
    names.extend(search.iter().map(|s| format!("{host}.{s}")));
    for name in &names {
        if let Ok(mut addrs) = tokio::net::lookup_host((name.as_str(), port)).await {
            if let Some(a) = addrs.find(|a| a.is_ipv4()) {
                return Ok(a);
            }
        }
    }
    Err(format!("cannot resolve {host} (tried {names:?})"))
}

/// Most bytes of a response body the client reads.
const MAX_REPLY: usize = 1 << 20;

/// Each request's limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `req` once; never follows redirects.
pub async fn request(req: &Request) -> Reply {
    match tokio::time::timeout(REQUEST_TIMEOUT, request_inner(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Reply {
            error: Some(e),
            ..Reply::default()
        },
        Err(_) => Reply {
            error: Some(format!("no answer within {REQUEST_TIMEOUT:?}")),
            ..Reply::default()
        },
    }
}

async fn request_inner(req: &Request) -> Result<Reply, String> {
    let t = parse_url(&req.url)?;
    let addr = resolve(&t.host, t.port, &req.search).await?;
    let default_port = if t.grpc { 7070 } else { 80 };
    let authority = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            let h = if t.host.contains(':') {
                format!("[{}]", t.host)
            } else {
                t.host.clone()
            };
            if t.port == default_port && !t.grpc {
                h
            } else {
                format!("{h}:{}", t.port)
            }
        });
    if t.grpc {
        grpc_request(addr, &authority, req).await
    } else {
        http_request(addr, &authority, &t.path, req).await
    }
}

async fn http_request(
    addr: std::net::SocketAddr,
    authority: &str,
    path: &str,
    req: &Request,
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(path)
        .header(http::header::HOST, authority);
    for (k, v) in &req.headers {
        if !k.eq_ignore_ascii_case("host") {
            builder = builder.header(k.as_str(), v.as_str());
        }
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let (parts, body) = resp.into_parts();
    let bytes = http_body_util::Limited::new(body, MAX_REPLY)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let mut reply = Reply {
        code: parts.status.as_u16(),
        response_headers: lower_map(&parts.headers),
        ..Reply::default()
    };
    match serde_json::from_slice::<RequestAssertions>(&bytes) {
        Ok(a) => {
            reply.hostname = a.context.pod.clone();
            reply.namespace = a.context.namespace.clone();
            reply.request = Some(a);
        }
        Err(_) => {
            reply.body = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        }
    }
    Ok(reply)
}

fn lower_map(h: &http::HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        out.entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    out
}

async fn grpc_request(
    addr: std::net::SocketAddr,
    authority: &str,
    req: &Request,
) -> Result<Reply, String> {
    let origin: http::Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| format!("authority {authority:?}: {e}"))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .origin(origin)
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| format!("not ready: {e}"))?;
    let mut request = tonic::Request::new(pb::EchoRequest {});
    for (k, v) in &req.headers {
        if k.eq_ignore_ascii_case("host") {
            continue;
        }
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("header {k:?}: {e}"))?;
        let val = v.parse().map_err(|e| format!("header {k:?} value: {e}"))?;
        request.metadata_mut().append(key, val);
    }
    let path = http::uri::PathAndQuery::from_static(
        "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo",
    );
    let result: Result<tonic::Response<pb::EchoResponse>, tonic::Status> = client
        .unary(request, path, tonic_prost::ProstCodec::default())
        .await;
    let resp = match result {
        Ok(r) => r,
        Err(status) => {
            return Ok(Reply {
                code: 0,
                error: Some(format!("grpc {:?}: {}", status.code(), status.message())),
                ..Reply::default()
            })
        }
    };
    let response_headers = lower_map(&resp.metadata().clone().into_headers());
    let a = resp.into_inner().assertions.unwrap_or_default();
    let ctx = a.context.unwrap_or_default();
    let mut grpc_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in a.headers {
        grpc_headers
            .entry(h.key.to_ascii_lowercase())
            .or_default()
            .push(h.value);
    }
    Ok(Reply {
        code: 200,
        hostname: ctx.pod,
        namespace: ctx.namespace,
        grpc_headers,
        response_headers,
        ..Reply::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_upstreams_client() {
        let t = parse_url("http://echo/v2?x=1").unwrap();
        assert_eq!(
            (t.grpc, t.host.as_str(), t.port, t.path.as_str()),
            (false, "echo", 80, "/v2?x=1")
        );
        let t = parse_url("http://echo?animal=whale").unwrap();
        assert_eq!(t.path, "/?animal=whale");
        let t = parse_url("grpc://echo:7070").unwrap();
        assert_eq!((t.grpc, t.port, t.path.as_str()), (true, 7070, "/"));
        let t = parse_url("http://10.0.0.1:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.1", 8080));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://echo:x/").is_err());
    }

    #[test]
    fn header_names_are_canonical_as_in_go() {
        assert_eq!(canonical("x-header-set"), "X-Header-Set");
        assert_eq!(canonical("VERSION"), "Version");
    }

    #[tokio::test]
    async fn http_and_grpc_answers_carry_what_the_tests_assert() {
        let ctx = PodContext {
            namespace: "ns".into(),
            ingress: String::new(),
            service: "echo".into(),
            pod: "echo-v1-abc".into(),
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = l.local_addr().unwrap();
        tokio::spawn(serve_http(l, ctx.clone()));
        let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = g.local_addr().unwrap();
        tokio::spawn(serve_grpc(g, ctx.clone()));

        let r = request(&Request {
            url: format!("http://{http_addr}/a/b?c=d"),
            method: "GET".into(),
            headers: vec![
                ("X-Test".into(), "one".into()),
                ("x-test".into(), "two".into()),
                ("Host".into(), "echo".into()),
            ],
            search: vec![],
        })
        .await;
        assert_eq!(r.code, 200, "{r:?}");
        assert_eq!(r.hostname, "echo-v1-abc");
        assert_eq!(r.namespace, "ns");
        let a = r.request.unwrap();
        assert_eq!(a.path, "/a/b?c=d");
        assert_eq!(a.host, "echo");
        assert_eq!(a.method, "GET");
        assert_eq!(a.headers["X-Test"], vec!["one", "two"]);
        assert!(!a.headers.contains_key("Host"));

        let r = request(&Request {
            url: format!("grpc://{grpc_addr}"),
            method: String::new(),
            headers: vec![("X-Grpc".into(), "g".into())],
            search: vec![],
        })
        .await;
        assert_eq!(r.code, 200, "{r:?}");
        assert_eq!(r.hostname, "echo-v1-abc");
        assert_eq!(r.grpc_headers["x-grpc"], vec!["g"]);
        assert_eq!(r.grpc_headers[":authority"], vec![grpc_addr.to_string()]);
    }
}
