//! A stand-in for Linkerd's control plane, so that `e2e/bench/proxy-bench.sh` can run
//! linkerd2-proxy, the closest Rust sidecar, in the same layout as weft (issue #20: the optional
//! `linkerd-1hop` path). Benchmark tooling only, never part of a mesh.
//!
//! ```text
//! cargo run -p weft-proxy --example linkerd_standin -- <listen addr> <leaf certificate DER file>
//! ```
//!
//! One plaintext HTTP/2 (gRPC) listener, on loopback, where linkerd2-proxy connects without TLS:
//!
//! - `io.linkerd.proxy.identity.Identity/Certify` answers with the leaf certificate in the file
//!   (issued beforehand, by the benchmark's test CA, for the CSR the proxy will send) and an
//!   expiry a day away;
//! - every other method (destination, profile and policy lookups) answers `UNIMPLEMENTED`, on
//!   which linkerd2-proxy forwards a connection to its original destination without discovery.
//!
//! The messages are encoded by hand (three fields); the request is not read beyond its end.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

const CERTIFY: &str = "/io.linkerd.proxy.identity.Identity/Certify";
const VALID_FOR: Duration = Duration::from_secs(24 * 3600);

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn varint(mut v: u64, out: &mut BytesMut) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// `CertifyResponse { leaf_certificate: 1, intermediate_certificates: 2, valid_until: 3 }`, with
/// `valid_until` a `google.protobuf.Timestamp { seconds: 1 }`, in a gRPC message frame.
fn certify_response(leaf: &[u8]) -> Bytes {
    let until = (SystemTime::now() + VALID_FOR)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut ts = BytesMut::new();
    ts.put_u8(0x08);
    varint(until, &mut ts);
    let mut msg = BytesMut::new();
    msg.put_u8(0x0a);
    varint(leaf.len() as u64, &mut msg);
    msg.put_slice(leaf);
    msg.put_u8(0x1a);
    varint(ts.len() as u64, &mut msg);
    msg.put_slice(&ts);
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

async fn serve(req: Request<Incoming>, leaf: Bytes) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    // Read the request to its end (the CSR is not needed: the certificate is issued already).
    let _ = req.into_body().collect().await;
    let grpc = HeaderValue::from_static("application/grpc");
    if path == CERTIFY {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(certify_response(&leaf))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(tokio_stream::iter(frames)).boxed();
        let mut rsp = Response::new(body);
        rsp.headers_mut().insert("content-type", grpc);
        eprintln!("linkerd_standin: {path}: certified");
        return Ok(rsp);
    }
    // Trailers-only: UNIMPLEMENTED in the response head, no body.
    let mut rsp = Response::new(http_body_util::Empty::new().boxed());
    let h = rsp.headers_mut();
    h.insert("content-type", grpc);
    h.insert("grpc-status", HeaderValue::from_static("12"));
    h.insert(
        "grpc-message",
        HeaderValue::from_static("weft benchmark stand-in"),
    );
    Ok(rsp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(leaf)) = (args.next(), args.next()) else {
        return Err("usage: linkerd_standin <listen addr> <leaf certificate DER file>".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let leaf = Bytes::from(std::fs::read(&leaf)?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("linkerd_standin: listening on {addr}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let leaf = leaf.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| serve(req, leaf.clone()));
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
