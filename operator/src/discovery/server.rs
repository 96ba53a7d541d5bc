//! The `weft.proxy.v1.Discovery` gRPC service, wired by hand so responses can be written from
//! shared pre-encoded chunks (see `encode`). Requests are decoded with tonic's `Streaming`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::Status;
use weft_proxy_api::v1;

use super::encode::Queued;
use super::DiscoveryService;
use crate::identity::{ControlConnectInfo, SpiffeId};

/// Path of the only method.
const STREAM_PATH: &str = "/weft.proxy.v1.Discovery/Stream";
/// Largest request message accepted (ACKs and NACKs are small).
const MAX_REQUEST: usize = 1024 * 1024;

/// The tower service to add to a tonic `Router`.
#[derive(Clone)]
pub struct DiscoveryServer {
    inner: DiscoveryService,
}

impl DiscoveryServer {
    pub(crate) fn new(inner: DiscoveryService) -> Self {
        DiscoveryServer { inner }
    }
}

impl NamedService for DiscoveryServer {
    const NAME: &'static str = v1::discovery_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for DiscoveryServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        if let Some(enc) = req.headers().get("grpc-encoding") {
            if enc.as_bytes() != b"identity" {
                return Box::pin(async {
                    Ok(Status::unimplemented("request compression is not supported").into_http())
                });
            }
        }
        let peer = Peer::from_extensions(req.extensions());
        let inbound =
            Streaming::new_request(RequestDecoder, req.into_body(), None, Some(MAX_REQUEST));
        let service = self.inner.clone();
        Box::pin(async move {
            match service.open(inbound, peer).await {
                Ok(rx) => {
                    let mut response =
                        http::Response::new(tonic::body::Body::new(ResponseBody::new(rx)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        tonic::metadata::GRPC_CONTENT_TYPE,
                    );
                    Ok(response)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Who is at the other end of a stream, as far as the connection proves it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peer {
    pub remote_addr: String,
    pub tls: bool,
    /// The verified client certificate's SPIFFE ID (see [`ControlConnectInfo`]).
    pub identity: Option<Result<SpiffeId, String>>,
}

impl Peer {
    fn from_extensions(ext: &http::Extensions) -> Peer {
        if let Some(info) = ext.get::<ControlConnectInfo>() {
            return Peer {
                remote_addr: info
                    .remote_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                tls: info.tls,
                identity: info.client_identity.clone(),
            };
        }
        // Served on a plain TCP listener (not through `control_tls::incoming`).
        Peer {
            remote_addr: ext
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .map(|a| a.to_string())
                .unwrap_or_default(),
            ..Peer::default()
        }
    }
}

/// Decodes `DiscoveryRequest`s with a small initial buffer.
struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = v1::DiscoveryRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let len = src.remaining();
        let msg = <v1::DiscoveryRequest as prost::Message>::decode(src.copy_to_bytes(len))
            .map_err(|e| Status::internal(format!("decoding DiscoveryRequest: {e}")))?;
        Ok(Some(msg))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(256, 32 * 1024)
    }
}

/// Response body: the chunks of each queued message, then the gRPC status trailers.
struct ResponseBody {
    rx: mpsc::Receiver<Queued>,
    parts: std::vec::IntoIter<Bytes>,
    done: bool,
}

impl ResponseBody {
    fn new(rx: mpsc::Receiver<Queued>) -> Self {
        ResponseBody {
            rx,
            parts: Vec::new().into_iter(),
            done: false,
        }
    }
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.clear();
        map.insert(
            tonic::Status::GRPC_STATUS,
            (tonic::Code::Internal as i32).into(),
        );
    }
    map
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            if let Some(part) = self.parts.next() {
                return Poll::Ready(Some(Ok(Frame::data(part))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(encoded))) => self.parts = encoded.parts.into_iter(),
                Poll::Ready(Some(Err(status))) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let ok = Status::new(tonic::Code::Ok, "");
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&ok)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.parts.len() == 0
    }
}
