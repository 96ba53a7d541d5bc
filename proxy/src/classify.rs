//! Response classification (success / failure) for the Linkerd-compatible `response_total`, and
//! the body wrapper that sees a response to its end (gRPC puts its status in the trailers).
//!
//! The rule, in one place ([`classify`]): a response is a **failure** when
//! - it is gRPC (`content-type: application/grpc…`) and its `grpc-status`, from the response
//!   headers (trailers-only) or the trailers, is not `0` (OK), or is missing at the end of the
//!   stream; or
//! - its HTTP status is `5xx`; or
//! - its body broke (an error while streaming it), or a gRPC response was dropped before its end
//!   (cancelled).
//!
//! Anything else is a **success** (`4xx` included: the client's mistake, as Linkerd counts it).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};

use crate::http::{Body, BoxError};
use crate::metrics::{Metrics, Outcome, Series, FAILURE, SUCCESS};

/// How a response stream ended, as far as the proxy saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The stream reached its end (trailers or end of body).
    Complete,
    /// The body failed while streaming.
    Error,
    /// The response was dropped before its end (the client went away).
    Dropped,
}

/// The one classification rule (see the module doc).
pub fn classify(
    status: StatusCode,
    grpc: bool,
    grpc_status: Option<u16>,
    end: End,
) -> &'static str {
    if end == End::Error || status.is_server_error() {
        return FAILURE;
    }
    // gRPC: only `grpc-status: 0` is OK; none at the end of the stream (or dropped before it
    // came) is not.
    if grpc && grpc_status != Some(0) {
        return FAILURE;
    }
    SUCCESS
}

/// True when `headers` (of a response) say gRPC.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` in `headers`, if any and numeric.
pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get(crate::http::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u16>().ok())
}

/// Records `rsp` in the Linkerd-compatible families: `request_total` and `response_latency_ms`
/// now (the response head is ready), `response_total` when its stream ends.
pub fn observe(
    metrics: &Arc<Metrics>,
    series: Series,
    rsp: Response<Body>,
    latency: Duration,
) -> Response<Body> {
    series.observe(latency);
    let status = rsp.status();
    let grpc = is_grpc(rsp.headers());
    let grpc_status = grpc_status(rsp.headers());
    rsp.map(|inner| {
        let observed = Observed {
            inner,
            pending: Some(Pending {
                metrics: Arc::clone(metrics),
                series,
                status,
                grpc,
                grpc_status,
            }),
        };
        crate::http::boxed(observed)
    })
}

struct Pending {
    metrics: Arc<Metrics>,
    series: Series,
    status: StatusCode,
    grpc: bool,
    grpc_status: Option<u16>,
}

impl Pending {
    fn finish(self, end: End) {
        let classification = classify(self.status, self.grpc, self.grpc_status, end);
        self.series.respond(
            &self.metrics,
            Outcome {
                status: self.status,
                grpc_status: self.grpc.then_some(self.grpc_status).flatten(),
                classification,
            },
        );
    }
}

/// A response body that records its response in `response_total` once, when it ends, fails or
/// is dropped.
struct Observed {
    inner: Body,
    pending: Option<Pending>,
}

impl Observed {
    fn finish(&mut self, end: End) {
        if let Some(p) = self.pending.take() {
            p.finish(end);
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(p)) = (frame.trailers_ref(), this.pending.as_mut()) {
                    if let Some(code) = grpc_status(trailers) {
                        p.grpc_status = Some(code);
                    }
                }
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.finish(End::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(End::Error),
            Poll::Ready(None) => this.finish(End::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let end = if self.inner.is_end_stream() {
            End::Complete
        } else {
            End::Dropped
        };
        self.finish(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        let ok = StatusCode::OK;
        assert_eq!(classify(ok, false, None, End::Complete), SUCCESS);
        assert_eq!(
            classify(StatusCode::NOT_FOUND, false, None, End::Complete),
            SUCCESS
        );
        assert_eq!(
            classify(StatusCode::FORBIDDEN, false, None, End::Complete),
            SUCCESS
        );
        assert_eq!(
            classify(
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                None,
                End::Complete
            ),
            FAILURE
        );
        assert_eq!(
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                true,
                Some(0),
                End::Complete
            ),
            FAILURE
        );
        assert_eq!(classify(ok, true, Some(0), End::Complete), SUCCESS);
        assert_eq!(classify(ok, true, Some(14), End::Complete), FAILURE);
        assert_eq!(classify(ok, true, None, End::Complete), FAILURE);
        assert_eq!(classify(ok, true, None, End::Dropped), FAILURE);
        assert_eq!(classify(ok, false, None, End::Dropped), SUCCESS);
        assert_eq!(classify(ok, false, None, End::Error), FAILURE);
    }

    fn grpc_response(code: Option<&'static str>) -> Response<Body> {
        use http_body_util::BodyExt;
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))];
        if let Some(code) = code {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static(code));
            frames.push(Ok(Frame::trailers(trailers)));
        }
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed();
        let mut rsp = Response::new(body);
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        rsp
    }

    #[tokio::test]
    async fn a_grpc_status_in_the_trailers_classifies_the_response_when_it_ends() {
        use http_body_util::BodyExt;
        let metrics = Arc::new(Metrics::new());
        let labels = || {
            use crate::metrics::{LabelValue, RequestLabels, SeriesKey, INBOUND};
            let authority = LabelValue::from("x");
            let key = SeriesKey {
                direction: INBOUND,
                authority: &authority,
                route: &LabelValue::EMPTY,
                backend: &LabelValue::EMPTY,
                status_class: "2xx",
                endpoint: None,
                client: None,
            };
            metrics.series(key, || {
                let request = RequestLabels {
                    direction: INBOUND,
                    authority: authority.clone(),
                    route: LabelValue::EMPTY,
                    backend: LabelValue::EMPTY,
                    status_class: "2xx",
                    peer: LabelValue::EMPTY,
                };
                (request, metrics.traffic(INBOUND, authority.clone(), None))
            })
        };
        // Read to the end: the trailers' status counts.
        for code in ["13", "0"] {
            let rsp = observe(
                &metrics,
                labels(),
                grpc_response(Some(code)),
                Duration::from_millis(1),
            );
            let text = metrics.encode();
            assert!(!text.contains(&format!("grpc_status=\"{code}\"")), "{text}");
            let collected = rsp.into_body().collect().await.unwrap();
            assert!(collected.trailers().is_some());
        }
        // Dropped before its end: no status, a failure.
        drop(observe(
            &metrics,
            labels(),
            grpc_response(Some("0")),
            Duration::from_millis(1),
        ));
        let text = metrics.encode();
        assert!(text.contains("response_total{direction=\"inbound\",authority=\"x\",tls=\"false\",classification=\"failure\",status_code=\"200\",grpc_status=\"13\"} 1"), "{text}");
        assert!(text.contains("response_total{direction=\"inbound\",authority=\"x\",tls=\"false\",classification=\"success\",status_code=\"200\",grpc_status=\"0\"} 1"), "{text}");
        assert!(text.contains("response_total{direction=\"inbound\",authority=\"x\",tls=\"false\",classification=\"failure\",status_code=\"200\"} 1"), "{text}");
        assert!(
            text.contains("request_total{direction=\"inbound\",authority=\"x\",tls=\"false\"} 3"),
            "{text}"
        );
    }
}
