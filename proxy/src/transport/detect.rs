//! Protocol detection from a connection's first bytes, and an IO wrapper that replays them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (prior knowledge).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest method token looked at.
const MAX_METHOD: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
}

/// Decides from `buf` alone, or `None` if more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    // HTTP/2 prior knowledge.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    // HTTP/1.x request line: an upper-case method token followed by a space.
    for (i, b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => continue,
            b' ' if i > 0 => return Some(Detected::Http1),
            _ => return Some(Detected::Opaque),
        }
    }
    if buf.len() > MAX_METHOD {
        Some(Detected::Opaque)
    } else {
        None
    }
}

/// Reads from `io` until the protocol is known, at most `timeout` (server-speaks-first protocols
/// send nothing: they are opaque after the timeout). Returns the protocol and an IO that replays
/// the bytes read.
pub async fn detect<T: AsyncRead + Unpin>(
    mut io: T,
    timeout: Duration,
) -> std::io::Result<(Detected, PrefixedIo<T>)> {
    let mut buf = BytesMut::with_capacity(64);
    let read = async {
        loop {
            if let Some(d) = classify(&buf) {
                return Ok(d);
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Ok(Detected::Opaque);
            }
        }
    };
    let detected = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Err(e),
        Err(_) => Detected::Opaque,
    };
    Ok((detected, PrefixedIo::new(buf, io)))
}

/// An IO that first yields `prefix`, then reads from the inner IO. Writes go straight through.
#[derive(Debug)]
pub struct PrefixedIo<T> {
    prefix: BytesMut,
    inner: T,
}

impl<T> PrefixedIo<T> {
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        PrefixedIo { prefix, inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST "), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b"hello"), Some(Detected::Opaque));
        assert_eq!(classify(b" GET"), Some(Detected::Opaque));
        assert_eq!(
            classify(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Some(Detected::Opaque)
        );
    }

    #[tokio::test]
    async fn detects_and_replays() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /x HTTP/1.1\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (d, mut io) = detect(server, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d, Detected::Http1);
        let mut got = vec![0u8; 19];
        io.read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got, b"GET /x HTTP/1.1\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_clients_are_opaque_after_timeout() {
        let (_client, server) = tokio::io::duplex(1024);
        let (d, _) = detect(server, Duration::from_secs(1))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d, Detected::Opaque);
    }
}
