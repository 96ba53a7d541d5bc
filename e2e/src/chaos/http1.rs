//! Just enough HTTP/1.1 for the benchmark's backend and load generator: read a message head,
//! skip (or keep a bounded prefix of) a body framed by `Content-Length` or chunked encoding.
//! No allocation grows with input beyond [`MAX_HEAD`] and the caller's body cap.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest message head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// A message head: its first line and its header fields, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Parses a head (without the blank line that ends it).
    pub fn parse(bytes: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let start_line = lines.next().unwrap_or_default().to_string();
        if start_line.is_empty() {
            return Err(invalid("empty start line"));
        }
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid("header line without a colon"))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Head {
            start_line,
            headers,
        })
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status of a response's start line (`HTTP/1.1 503 Service Unavailable`).
    pub fn status(&self) -> Option<u16> {
        let mut parts = self.start_line.split(' ');
        let version = parts.next()?;
        if !version.starts_with("HTTP/1.") {
            return None;
        }
        parts
            .next()?
            .parse()
            .ok()
            .filter(|s| (100..1000).contains(s))
    }

    /// Method and target of a request's start line (`GET /x HTTP/1.1`).
    pub fn request(&self) -> Option<(&str, &str)> {
        let mut parts = self.start_line.split(' ');
        let method = parts.next()?;
        let target = parts.next()?;
        parts
            .next()
            .filter(|v| v.starts_with("HTTP/1."))
            .map(|_| (method, target))
    }

    /// Whether the connection closes after this message.
    pub fn closes(&self) -> bool {
        let connection = self.header("connection").unwrap_or_default();
        if connection.eq_ignore_ascii_case("close") {
            return true;
        }
        self.start_line.contains("HTTP/1.0") && !connection.eq_ignore_ascii_case("keep-alive")
    }

    /// How the body that follows is delimited.
    pub fn framing(&self) -> io::Result<Framing> {
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Framing::Chunked);
        }
        match self.header("content-length") {
            Some(v) => v
                .parse()
                .map(Framing::Length)
                .map_err(|_| invalid("bad content-length")),
            None => Ok(Framing::Length(0)),
        }
    }
}

/// How a body is delimited (a response without either header is taken as empty: every peer of
/// the benchmark frames its bodies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One connection with its read buffer (bytes received beyond the message being read).
pub struct Conn<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S) -> Self {
        Conn {
            io,
            buf: Vec::with_capacity(4096),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Bytes already received and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads the next message head; `None` when the peer closed the connection cleanly before
    /// sending any byte of it.
    pub async fn read_head(&mut self) -> io::Result<Option<Head>> {
        let mut searched: usize = 0;
        loop {
            if let Some(pos) = find(&self.buf[searched.saturating_sub(3)..], b"\r\n\r\n") {
                let end = searched.saturating_sub(3) + pos;
                let head = Head::parse(&self.buf[..end])?;
                self.buf.drain(..end + 4);
                return Ok(Some(head));
            }
            searched = self.buf.len();
            if searched > MAX_HEAD {
                return Err(invalid("head too long"));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Reads a body; keeps at most `keep` of its first bytes in `into`, skips the rest.
    pub async fn read_body(
        &mut self,
        framing: Framing,
        into: &mut Vec<u8>,
        keep: usize,
    ) -> io::Result<u64> {
        match framing {
            Framing::Length(n) => self.skip(n, into, keep).await.map(|()| n),
            Framing::Chunked => {
                let mut total = 0u64;
                loop {
                    let line = self.read_line().await?;
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
                    if size == 0 {
                        // Trailers, up to the blank line.
                        while !self.read_line().await?.is_empty() {}
                        return Ok(total);
                    }
                    self.skip(size, into, keep).await?;
                    total = total.saturating_add(size);
                    if !self.read_line().await?.is_empty() {
                        return Err(invalid("chunk not followed by CRLF"));
                    }
                }
            }
        }
    }

    async fn skip(&mut self, mut n: u64, into: &mut Vec<u8>, keep: usize) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
            let room = keep.saturating_sub(into.len()).min(take);
            into.extend_from_slice(&self.buf[..room]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A `http://host:port/path` URL, split (no other form is needed here).
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Some((authority, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_heads_and_bodies_of_both_framings_back_to_back() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut conn = Conn::new(tokio::io::join(&wire[..], tokio::io::sink()));
        let head = conn.read_head().await.unwrap().unwrap();
        assert_eq!(head.status(), Some(200));
        assert!(!head.closes());
        let mut body = Vec::new();
        let n = conn
            .read_body(head.framing().unwrap(), &mut body, 3)
            .await
            .unwrap();
        assert_eq!((n, body.as_slice()), (5, &b"hel"[..]));
        let head = conn.read_head().await.unwrap().unwrap();
        assert_eq!(head.status(), Some(503));
        assert!(head.closes());
        let mut body = Vec::new();
        let n = conn
            .read_body(head.framing().unwrap(), &mut body, 64)
            .await
            .unwrap();
        assert_eq!((n, body.as_slice()), (5, &b"abcde"[..]));
        assert!(conn.read_head().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_head_cut_short_or_too_long_is_an_error_not_a_message() {
        let mut conn = Conn::new(tokio::io::join(
            &b"HTTP/1.1 200 OK\r\n"[..],
            tokio::io::sink(),
        ));
        assert!(conn.read_head().await.is_err());
        let long = vec![b'a'; MAX_HEAD + 10];
        let mut conn = Conn::new(tokio::io::join(&long[..], tokio::io::sink()));
        assert!(conn.read_head().await.is_err());
    }

    #[test]
    fn start_lines_and_urls() {
        let h = Head::parse(b"GET /healthz?x=1 HTTP/1.1\r\nHost: a").unwrap();
        assert_eq!(h.request(), Some(("GET", "/healthz?x=1")));
        assert_eq!(h.header("HOST"), Some("a"));
        assert_eq!(h.status(), None);
        assert_eq!(
            split_url("http://127.0.0.1:9/set?mode=ok"),
            Some(("127.0.0.1:9".into(), "/set?mode=ok".into()))
        );
        assert_eq!(split_url("http://h"), Some(("h:80".into(), "/".into())));
        assert_eq!(split_url("https://h/"), None);
    }
}
