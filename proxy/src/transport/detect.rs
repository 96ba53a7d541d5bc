//! Protocol detection from a connection's first bytes, and an IO wrapper that replays them.
//!
//! Two detectors:
//! - [`classify`] / [`detect`]: the outbound proxy's quick guess (an upper-case method and a
//!   space → HTTP/1; silence or anything else → opaque). It only picks how to route.
//! - [`sniff`] / [`read_head`]: the inbound proxy's decision, which guards the app. It reads the
//!   bytes as leniently as any HTTP server might and only calls them opaque when they cannot be
//!   the start of an HTTP request; an HTTP/1 request is buffered until its head is complete.

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

/// The most the inbound detection buffers: a request head that is still incomplete at this size
/// is handed to the HTTP server (which answers `431`), never relayed.
pub const MAX_HEAD: usize = 64 * 1024;

/// What the first bytes of a client's stream are, for the inbound proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniff {
    /// Could still be an HTTP request: more bytes are needed.
    NeedMore,
    /// The HTTP/2 connection preface, complete.
    Http2,
    /// An HTTP/1 request line, complete. `head`: the whole request head (through the empty
    /// line) is buffered, or [`MAX_HEAD`] bytes are.
    Http1 { head: bool },
    /// Cannot be the start of an HTTP request.
    NotHttp,
}

/// RFC 9110 `tchar`: the characters of a method token (any case).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t')
}

/// Leading blanks and empty lines skipped before a request line; more count as HTTP (fail
/// closed: the HTTP server skips them too).
const MAX_LEADING_BLANKS: usize = 64;
/// Longest method token; a longer token counts as HTTP (fail closed).
const MAX_METHOD_TOKEN: usize = 64;
/// Longest request line; a longer line still undecided counts as HTTP (fail closed).
const MAX_REQUEST_LINE: usize = 16 * 1024;

/// Decides from `buf` alone whether it is, could still be, or cannot be an HTTP request.
///
/// Deliberately lenient, so that nothing an HTTP server might accept is called opaque: leading
/// empty lines and blanks are skipped; any token is a method, lower case included; the request
/// line is `method`, blanks, then anything up to a line feed that contains a blank followed by
/// `HTTP/` in any case (a CR is optional). A line without a version (HTTP/0.9, `get key` of a
/// text protocol) is not HTTP: it cannot carry header fields. Bytes that are still undecided at
/// a limit (64 leading blanks, a 64-byte method, a 16 KiB request line, [`MAX_HEAD`]) count as
/// HTTP (fail closed).
pub fn sniff(buf: &[u8]) -> Sniff {
    Sniffer::default().feed(buf)
}

/// [`sniff`], incrementally: [`Sniffer::feed`] takes the whole buffer each time and looks at
/// each byte once, so a client sending one byte at a time costs linear time.
#[derive(Clone, Debug, Default)]
pub struct Sniffer {
    /// Bytes of the buffer already looked at.
    pos: usize,
    phase: Phase,
    /// Length of the current token or line (phase dependent).
    len: usize,
    /// Bytes of `HTTP/` matched after a blank, in the request line.
    version: usize,
    /// The request line has a version.
    versioned: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Blanks,
    Method,
    Target,
    Headers,
    Done(Sniff),
}

impl Sniffer {
    /// The verdict on `buf`, which must extend the buffer given last time.
    pub fn feed(&mut self, buf: &[u8]) -> Sniff {
        for &b in buf.get(self.pos..).unwrap_or_default() {
            if let Phase::Done(_) = self.phase {
                break;
            }
            self.pos += 1;
            self.phase = self.step(b);
        }
        // HTTP/2 prior knowledge takes precedence (its preface reads as an HTTP/1 head too).
        let n = buf.len().min(H2_PREFACE.len());
        if n > 0 && buf[..n] == H2_PREFACE[..n] {
            return if n == H2_PREFACE.len() {
                Sniff::Http2
            } else {
                Sniff::NeedMore
            };
        }
        match self.phase {
            Phase::Done(verdict) => verdict,
            _ if buf.len() >= MAX_HEAD => Sniff::Http1 { head: true },
            Phase::Headers => Sniff::Http1 { head: false },
            _ => Sniff::NeedMore,
        }
    }

    fn step(&mut self, b: u8) -> Phase {
        const FAIL_CLOSED: Phase = Phase::Done(Sniff::Http1 { head: true });
        match self.phase {
            Phase::Blanks if matches!(b, b'\r' | b'\n') || is_blank(b) => {
                self.len += 1;
                if self.len > MAX_LEADING_BLANKS {
                    FAIL_CLOSED
                } else {
                    Phase::Blanks
                }
            }
            Phase::Blanks | Phase::Method if is_tchar(b) => {
                if self.phase == Phase::Blanks {
                    self.len = 0;
                }
                self.len += 1;
                if self.len > MAX_METHOD_TOKEN {
                    FAIL_CLOSED
                } else {
                    Phase::Method
                }
            }
            Phase::Blanks => Phase::Done(Sniff::NotHttp),
            Phase::Method if is_blank(b) => {
                self.len = 0;
                self.version = 1;
                Phase::Target
            }
            Phase::Method => Phase::Done(Sniff::NotHttp),
            Phase::Target if b == b'\n' => {
                if self.versioned {
                    self.len = 0;
                    Phase::Headers
                } else {
                    Phase::Done(Sniff::NotHttp)
                }
            }
            Phase::Target => {
                self.len += 1;
                if is_blank(b) {
                    self.version = 1;
                } else if self.version >= 1
                    && self.version <= 5
                    && b.to_ascii_uppercase() == b"HTTP/"[self.version - 1]
                {
                    self.version += 1;
                    if self.version == 6 {
                        self.versioned = true;
                    }
                } else {
                    self.version = 0;
                }
                if self.len > MAX_REQUEST_LINE {
                    FAIL_CLOSED
                } else {
                    Phase::Target
                }
            }
            // The head ends at the first empty line (CRLF or a bare LF).
            Phase::Headers if b == b'\n' => {
                if self.len == 0 {
                    Phase::Done(Sniff::Http1 { head: true })
                } else {
                    self.len = 0;
                    Phase::Headers
                }
            }
            Phase::Headers => {
                if b != b'\r' {
                    self.len += 1;
                }
                Phase::Headers
            }
            Phase::Done(v) => Phase::Done(v),
        }
    }
}

/// How [`read_head`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// An HTTP/1 request head (complete, or [`MAX_HEAD`] bytes, or cut short by the client's
    /// end of stream after a complete request line).
    Http1,
    /// The HTTP/2 preface.
    Http2,
    /// Bytes that cannot be HTTP.
    NotHttp,
    /// Nothing arrived before the silence deadline.
    Silent,
    /// The client ended its stream before the bytes were decided (no complete request line).
    Eof,
    /// The deadline passed with the bytes undecided (a partial request, a slow client).
    TimedOut,
}

/// Reads from `io` into `buf` until [`sniff`] decides, the client ends its stream, or a
/// deadline passes: `silence` applies while nothing has arrived (for server-speaks-first
/// protocols), `deadline` always (the request-head timeout).
pub async fn read_head<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    silence: Option<tokio::time::Instant>,
    deadline: tokio::time::Instant,
) -> std::io::Result<Head> {
    let mut sniffer = Sniffer::default();
    loop {
        match sniffer.feed(buf) {
            Sniff::Http2 => return Ok(Head::Http2),
            Sniff::Http1 { head: true } => return Ok(Head::Http1),
            Sniff::NotHttp => return Ok(Head::NotHttp),
            Sniff::NeedMore | Sniff::Http1 { head: false } => {}
        }
        let silent_until = silence.filter(|s| buf.is_empty() && *s < deadline);
        let until = silent_until.unwrap_or(deadline);
        buf.reserve(1024);
        match tokio::time::timeout_at(until, io.read_buf(buf)).await {
            Ok(Ok(0)) => {
                return Ok(match sniffer.feed(buf) {
                    Sniff::Http1 { .. } => Head::Http1,
                    Sniff::Http2 => Head::Http2,
                    Sniff::NotHttp => Head::NotHttp,
                    Sniff::NeedMore => Head::Eof,
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) if silent_until.is_some() => return Ok(Head::Silent),
            Err(_) => return Ok(Head::TimedOut),
        }
    }
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

    #[test]
    fn sniffs_anything_an_http_server_might_read() {
        let http1 = |head| Sniff::Http1 { head };
        // Complete heads, any token method, lower case, bare LF, leading empty lines.
        for req in [
            &b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..],
            b"get / HTTP/1.1\r\nx-weft-client-id: x\r\n\r\n",
            b"M-SEARCH * http/1.1\n\n",
            b"\r\n\r\nGET /x HTTP/1.0\r\n\r\n",
            b" \tPOST\t/x\tHTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXY",
        ] {
            assert_eq!(sniff(req), http1(true), "{}", String::from_utf8_lossy(req));
        }
        // Every prefix of an HTTP request is undecided (or a request line without its head).
        let req = b"get /x HTTP/1.1\r\nx-weft-client-id: spiffe://td/ns/a/sa/admin\r\n\r\n";
        for n in 0..req.len() {
            let got = sniff(&req[..n]);
            assert!(
                matches!(got, Sniff::NeedMore | Sniff::Http1 { head: false }),
                "{n}: {got:?}"
            );
        }
        assert_eq!(sniff(req), http1(true));
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nhost: a\r\n"), http1(false));
        // HTTP/2 prior knowledge.
        assert_eq!(sniff(H2_PREFACE), Sniff::Http2);
        assert_eq!(sniff(&H2_PREFACE[..10]), Sniff::NeedMore);
        // Cannot be HTTP.
        for bytes in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"\x00binary",
            b"*1\r\n$4\r\nPING\r\n",
            b"get key\r\n",
            b"EHLO mail.example\r\n",
            b"GET /\r\n",
            b"SET k v\r\n",
            b"(GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(
                sniff(bytes),
                Sniff::NotHttp,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Fed incrementally, the verdicts are the same as on each prefix.
        for bytes in [
            &req[..],
            H2_PREFACE,
            b"\r\n get / HTTP/1.1\nx:y\n\n",
            b"get key\r\n",
        ] {
            let mut sniffer = Sniffer::default();
            for n in 0..=bytes.len() {
                assert_eq!(sniffer.feed(&bytes[..n]), sniff(&bytes[..n]), "{n}");
            }
        }
        // Undecided at a limit: HTTP (fail closed).
        assert_eq!(sniff(&[b'\n'; 100]), http1(true));
        assert_eq!(sniff(&[b'a'; 100]), http1(true));
        assert_eq!(sniff(&vec![b'A'; MAX_HEAD]), http1(true));
        let mut long = b"GET /".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(sniff(&long), http1(true));
    }

    #[tokio::test(start_paused = true)]
    async fn read_head_waits_for_the_head_then_times_out() {
        use tokio::time::{Duration as D, Instant};
        // A slow request line: still HTTP, whatever the pauses.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for b in b"get / HTTP/1.1\r\nx: y\r\n\r\n" {
                tokio::time::sleep(D::from_millis(300)).await;
                let _ = client.write_all(&[*b]).await;
            }
            client
        });
        let start = Instant::now();
        let mut buf = BytesMut::new();
        let head = read_head(
            &mut server,
            &mut buf,
            Some(start + D::from_secs(1)),
            start + D::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(head, Head::Http1);
        let _client = writer.await;
        // A dripping client is cut off at the deadline.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nx: ")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        let mut buf = BytesMut::new();
        let head = read_head(
            &mut server,
            &mut buf,
            Some(start + D::from_secs(1)),
            start + D::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(head, Head::TimedOut);
        // Silence: server speaks first.
        let (_client, mut server) = tokio::io::duplex(1024);
        let start = Instant::now();
        let mut buf = BytesMut::new();
        let head = read_head(
            &mut server,
            &mut buf,
            Some(start + D::from_secs(1)),
            start + D::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(head, Head::Silent);
        // Without a silence deadline (HTTP ports), silence is a timeout.
        let head = read_head(
            &mut server,
            &mut buf,
            None,
            Instant::now() + D::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(head, Head::TimedOut);
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
