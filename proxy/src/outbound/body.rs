//! A request body of unknown length (chunked, HTTP/2 without `content-length`) that is copied
//! while it is sent, so that the request can be retried: up to
//! [`MAX_RETRY_BODY_BYTES`](weft_common::reliability::MAX_RETRY_BODY_BYTES). A body that grows
//! beyond it (or carries trailers, or fails) streams on untouched and the copy is dropped: that
//! request is never retried. Nothing waits for the body before sending, so a streaming client
//! (a gRPC client stream) is never held up.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use crate::http::{Body, BoxError};

#[derive(Debug, Default)]
struct State {
    chunks: Vec<Bytes>,
    len: u64,
    /// The copy was given up: too long, trailers, or an error.
    spoilt: bool,
    /// The whole body went through.
    complete: bool,
}

/// The copy of a body sent through a [`Tee`].
#[derive(Debug)]
pub struct Capture {
    limit: u64,
    state: Mutex<State>,
}

impl Capture {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Capture {
            limit,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The whole body, if it went through completely within the limit.
    pub fn replay(&self) -> Option<Bytes> {
        let s = self.lock();
        if s.spoilt || !s.complete {
            return None;
        }
        let mut out = BytesMut::with_capacity(usize::try_from(s.len).unwrap_or(0));
        for c in &s.chunks {
            out.extend_from_slice(c);
        }
        Some(out.freeze())
    }

    /// Whether [`Capture::replay`] has the whole body (without copying it).
    pub fn ready(&self) -> bool {
        let s = self.lock();
        s.complete && !s.spoilt
    }

    /// Whether the copy was given up (the request cannot be retried).
    #[cfg(test)]
    pub fn spoilt(&self) -> bool {
        self.lock().spoilt
    }

    fn data(&self, d: &Bytes) {
        let mut s = self.lock();
        if s.spoilt {
            return;
        }
        s.len = s.len.saturating_add(d.len() as u64);
        if s.len > self.limit {
            s.spoilt = true;
            s.chunks = Vec::new();
        } else {
            s.chunks.push(d.clone());
        }
    }

    fn spoil(&self) {
        let mut s = self.lock();
        s.spoilt = true;
        s.chunks = Vec::new();
    }

    fn complete(&self) {
        self.lock().complete = true;
    }
}

/// A body passed through while [`Capture`] copies it.
pub struct Tee {
    inner: Body,
    capture: Arc<Capture>,
}

impl Tee {
    pub fn new(inner: Body, capture: Arc<Capture>) -> Self {
        Tee { inner, capture }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.capture.complete();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.capture.spoil();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                match frame.data_ref() {
                    Some(d) => this.capture.data(d),
                    // Trailers cannot be replayed from bytes alone.
                    None => this.capture.spoil(),
                }
                if this.inner.is_end_stream() {
                    this.capture.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.capture.complete();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(parts: Vec<&'static [u8]>) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .into_iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn copies_a_short_body_and_gives_up_a_long_one() {
        let c = Capture::new(8);
        let sent = Tee::new(chunks(vec![b"abc", b"def"]), c.clone())
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap();
        assert_eq!(&sent[..], b"abcdef");
        assert!(c.ready());
        assert_eq!(c.replay().as_deref(), Some(&b"abcdef"[..]));

        let c = Capture::new(8);
        let sent = Tee::new(chunks(vec![b"abcde", b"fghij"]), c.clone())
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap();
        // Sent in full, but not replayable.
        assert_eq!(&sent[..], b"abcdefghij");
        assert!(c.spoilt());
        assert_eq!(c.replay(), None);

        // Not yet read to its end: not replayable either.
        let c = Capture::new(8);
        let mut tee = Tee::new(chunks(vec![b"abc", b"def"]), c.clone());
        let _ = tee.frame().await;
        assert_eq!(c.replay(), None);
    }
}
