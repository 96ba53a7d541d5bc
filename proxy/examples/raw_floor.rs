//! A forwarder without hyper, for `e2e/bench/proxy-bench.sh`'s optional `raw-1hop` path (issue
//! #20): how far below hyper's cost a hand-written HTTP/1.1 codec on the same runtime could go.
//! Benchmark tooling only, never part of a mesh, and not a proxy anyone should run: it exists to
//! measure the room between `floor-1hop` (hyper's server and weft's pool, `hyper_floor.rs`) and
//! HAProxy.
//!
//! ```text
//! scripts/build-dist.sh example:raw_floor     # into target/dist/examples, built as the proxy is
//! target/dist/examples/raw_floor <listen addr> <upstream addr>
//! ```
//!
//! What it does per request is the least an HTTP/1.1 proxy must: parse the request head
//! (`httparse`, the parser hyper uses), write a new head for the upstream without the hop-by-hop
//! headers, parse the response head, write a new head downstream, and copy `Content-Length`
//! bodies both ways. Each downstream connection keeps one upstream connection for as long as it
//! lives (HAProxy's `http-reuse safe` does much the same), on the same task: no pool, no channel
//! between tasks, no timers, one `current_thread` runtime and the proxy's allocator setting.
//!
//! What it leaves out, and a proxy could not: chunked bodies (answered by closing the
//! connection), `HEAD` and responses framed by closing the connection (a response without
//! `Content-Length` is taken as empty), `Expect`, upgrades, HTTP/1.0 keep-alive rules, head-read
//! and idle timeouts, retrying a request on an upstream connection the server closed (a kept
//! connection is replaced only when writing to it fails), and every feature of weft's.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest head read (as the proxy's `MAX_HEADER_BYTES`).
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a head may have.
const MAX_HEADERS: usize = 100;
/// Each connection's read buffers start at this size (hyper's first read is 8 KiB too).
const READ_BUF: usize = 8 * 1024;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: raw_floor <listen addr> <upstream addr>".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    weft_common::memory::keep_heap_top(weft_common::memory::HEAP_TOP_KEPT);
    let yield_before_write = std::env::var_os("RAW_FLOOR_YIELD").is_some_and(|v| v == "1");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream, yield_before_write))
}

async fn serve(
    listen: SocketAddr,
    upstream: SocketAddr,
    yield_before_write: bool,
) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            // A peer that breaks the rules or goes away ends the connection; nothing to report.
            let _ = Connection::new(upstream, yield_before_write)
                .serve(tcp)
                .await;
        });
    }
}

fn bad(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The hop-by-hop headers a proxy must not forward (RFC 9110, 7.6.1).
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// What a parsed head tells the forwarder about the message's body and the connection.
struct Framing {
    /// The head's length in the read buffer.
    head: usize,
    /// The body's length (`Content-Length`, or 0).
    body: usize,
    /// `Connection: close` was asked for.
    close: bool,
}

/// Copies the headers but the hop-by-hop ones into `out`, and reads the body's framing.
fn copy_headers(headers: &[httparse::Header<'_>], out: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    let mut body = 0;
    let mut close = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked bodies are not supported"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(bad("bad content-length"))?;
        }
        if h.name.eq_ignore_ascii_case("connection") {
            close |= h.value.eq_ignore_ascii_case(b"close");
        }
        if hop_by_hop(h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((body, close))
}

/// Parses a request head at the start of `buf` and writes the upstream's head into `out`.
/// `None`: the head is not complete yet.
fn request_head(buf: &[u8], out: &mut Vec<u8>) -> io::Result<Option<Framing>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf).map_err(|_| bad("bad request head"))? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (body, close) = copy_headers(req.headers, out)?;
    // HTTP/1.0 keep-alive is not supported: such a client's connection closes after the answer.
    let close = close || req.version != Some(1);
    Ok(Some(Framing { head, body, close }))
}

/// Parses a response head at the start of `buf` and writes the downstream's head into `out`.
fn response_head(buf: &[u8], out: &mut Vec<u8>) -> io::Result<Option<Framing>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut rsp = httparse::Response::new(&mut headers);
    let head = match rsp.parse(buf).map_err(|_| bad("bad response head"))? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let code = rsp.code.unwrap_or(502);
    if code < 200 {
        return Err(bad("interim responses are not supported"));
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(code).as_slice());
    out.push(b' ');
    out.extend_from_slice(rsp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut body, close) = copy_headers(rsp.headers, out)?;
    let close = close || rsp.version != Some(1);
    if code == 204 || code == 304 {
        body = 0;
    }
    Ok(Some(Framing { head, body, close }))
}

fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]
}

/// Reads more of `stream` into `buf`'s free space (growing it up to `MAX_HEAD`). `Ok(0)`: the
/// peer closed.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() >= MAX_HEAD {
        return Err(bad("head too large"));
    }
    if buf.capacity() == buf.len() {
        buf.reserve(READ_BUF);
    }
    stream.read_buf(buf).await
}

/// Writes `a` then `b` with vectored writes (one syscall when the socket takes both).
async fn write_two(stream: &mut TcpStream, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = stream
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// Copies `left` more body bytes from `from` to `to` through `buf`, whose bytes were all read
/// before; what `from` sent after the body stays in `buf`.
async fn copy_body(
    from: &mut TcpStream,
    to: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut left: usize,
) -> io::Result<()> {
    while left > 0 {
        buf.clear();
        if read_more(from, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = buf.len().min(left);
        to.write_all(&buf[..n]).await?;
        left -= n;
        if left == 0 {
            buf.drain(..n);
        }
    }
    Ok(())
}

struct Connection {
    upstream: SocketAddr,
    /// `RAW_FLOOR_YIELD=1`: each request waits for the other ready connections' turns before it
    /// is written upstream (an experiment on how often the backend preempts the forwarder).
    yield_before_write: bool,
    /// The upstream connection this downstream connection keeps.
    up: Option<TcpStream>,
    down_buf: Vec<u8>,
    up_buf: Vec<u8>,
    head: Vec<u8>,
}

impl Connection {
    fn new(upstream: SocketAddr, yield_before_write: bool) -> Self {
        Connection {
            upstream,
            yield_before_write,
            up: None,
            down_buf: Vec::with_capacity(READ_BUF),
            up_buf: Vec::with_capacity(READ_BUF),
            head: Vec::with_capacity(1024),
        }
    }

    async fn serve(mut self, mut down: TcpStream) -> io::Result<()> {
        loop {
            let req = loop {
                if let Some(req) = request_head(&self.down_buf, &mut self.head)? {
                    break req;
                }
                if read_more(&mut down, &mut self.down_buf).await? == 0 {
                    return Ok(()); // the client closed between requests (or mid-head)
                }
            };
            if self.yield_before_write {
                tokio::task::yield_now().await;
            }
            let in_buf = (self.down_buf.len() - req.head).min(req.body);
            let body_start = req.head;
            let whole = in_buf == req.body;
            self.send_request(body_start, in_buf, whole).await?;
            if !whole {
                let up = self.up.as_mut().ok_or(bad("no upstream"))?;
                copy_body(&mut down, up, &mut self.down_buf, req.body - in_buf).await?;
            } else {
                self.down_buf.drain(..body_start + in_buf);
            }
            self.forward_response(&mut down).await?;
            if req.close {
                return down.shutdown().await;
            }
        }
    }

    /// Writes the request head (in `self.head`) and the body bytes already read to the upstream,
    /// connecting first if needed; a kept connection that fails on the first write is replaced
    /// once when the whole request is in hand.
    async fn send_request(
        &mut self,
        body_start: usize,
        in_buf: usize,
        whole: bool,
    ) -> io::Result<()> {
        let body = &self.down_buf[body_start..body_start + in_buf];
        if let Some(up) = self.up.as_mut() {
            match write_two(up, &self.head, body).await {
                Ok(()) => return Ok(()),
                Err(e) if !whole => return Err(e),
                Err(_) => self.up = None,
            }
        }
        let up = TcpStream::connect(self.upstream).await?;
        up.set_nodelay(true)?;
        let up = self.up.insert(up);
        write_two(up, &self.head, body).await
    }

    /// Reads the response head and body from the upstream and writes them downstream; forgets
    /// the upstream connection if it is closing.
    async fn forward_response(&mut self, down: &mut TcpStream) -> io::Result<()> {
        let up = self.up.as_mut().ok_or(bad("no upstream"))?;
        let rsp = loop {
            if let Some(rsp) = response_head(&self.up_buf, &mut self.head)? {
                break rsp;
            }
            if read_more(up, &mut self.up_buf).await? == 0 {
                self.up = None;
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let in_buf = (self.up_buf.len() - rsp.head).min(rsp.body);
        write_two(down, &self.head, &self.up_buf[rsp.head..rsp.head + in_buf]).await?;
        if in_buf < rsp.body {
            copy_body(up, down, &mut self.up_buf, rsp.body - in_buf).await?;
        }
        // Anything after the body is not an answer to a request of ours.
        self.up_buf.clear();
        if rsp.close {
            self.up = None;
        }
        Ok(())
    }
}
