//! The transport header and protocol detection, on fuzzed bytes delivered in fuzzed chunks.
//!
//! Input layout: byte 0 chooses how the rest (the stream) is cut into reads (a chunking seed)
//! and whether the stream ends with EOF or with a read error; the rest is the stream.
//!
//! Invariants:
//! - `TransportHeader::read` never panics; it succeeds exactly when the first 8 bytes decode,
//!   and then re-encoding gives those 8 bytes back (one canonical form), the port is not 0, and
//!   nothing after the header was consumed;
//! - `detect` never panics; its answer does not depend on how the bytes were chunked (the same
//!   as when they all arrive at once), and the returned IO replays every byte exactly once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use weft_proxy::transport::{header, Detected, TransportHeader};

use crate::Features;

pub const DICTIONARY: &[&str] = &[
    "WEFT",
    "WEFT\u{1}",
    "WEFT\u{1}\u{1f}\u{90}\u{3}",
    "WEFT\u{1}\u{10}\u{2c}\u{0}",
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "PRI * HTTP/2.0",
    "GET / HTTP/1.1\r\n",
    "get / HTTP/1.1\r\n",
    "POST ",
    "CONNECT ",
    "M-SEARCH ",
    "\r\n\r\n",
    "\u{16}\u{3}\u{1}",
    "x-weft-client-id: spiffe://cluster.local/ns/shop/sa/admin\r\n",
];

/// A reader that yields `data` in the given chunk sizes, then EOF or an error.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next: usize,
    fail_at_end: bool,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos >= this.data.len() {
            if this.fail_at_end {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")));
            }
            return Poll::Ready(Ok(()));
        }
        let size = this
            .sizes
            .get(this.next)
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        this.next += 1;
        let n = size.min(this.data.len() - this.pos).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Splits the input into (control byte, stream) and builds chunk sizes from the control byte.
fn chunked(data: &[u8]) -> (Chunked, Vec<u8>) {
    let (control, stream) = match data.split_first() {
        Some((c, s)) => (*c, s.to_vec()),
        None => (0, Vec::new()),
    };
    let mut x = u32::from(control) | 0x100;
    let max = 1 + usize::from(control & 0x0f);
    let sizes = (0..stream.len())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1 + (x as usize) % max
        })
        .collect();
    let reader = Chunked {
        data: stream.clone(),
        pos: 0,
        sizes,
        next: 0,
        fail_at_end: control & 0x80 != 0,
    };
    (reader, stream)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

thread_local! {
    static RT: tokio::runtime::Runtime = runtime();
}

/// The transport header target.
pub fn header(data: &[u8], f: &mut Features) {
    let (mut reader, stream) = chunked(data);
    let fail_at_end = reader.fail_at_end;
    RT.with(|rt| {
        rt.block_on(async {
            let result = TransportHeader::read(&mut reader).await;
            match (&result, stream.get(..header::LEN)) {
                (Ok(h), Some(first)) => {
                    f.hit(("ok", h.hint as u8));
                    assert_eq!(
                        &h.encode()[..],
                        first,
                        "header does not re-encode to its bytes"
                    );
                    assert_ne!(h.port, 0, "port 0 accepted");
                    let first: [u8; header::LEN] = first.try_into().unwrap_or([0; header::LEN]);
                    assert!(TransportHeader::decode(&first).is_ok());
                    // Nothing after the header was consumed.
                    let mut rest = Vec::new();
                    let r = reader.read_to_end(&mut rest).await;
                    assert!(r.is_ok() || fail_at_end, "reading the rest: {r:?}");
                    assert_eq!(
                        rest,
                        stream[header::LEN..],
                        "bytes after the header were lost"
                    );
                }
                (Ok(h), None) => panic!("a header ({h:?}) read from {} bytes", stream.len()),
                (Err(e), Some(first)) => {
                    f.hit(("error", e.to_string().chars().take(24).collect::<String>()));
                    let first: [u8; header::LEN] = first.try_into().unwrap_or([0; header::LEN]);
                    assert!(
                        TransportHeader::decode(&first).is_err(),
                        "read fails ({e}) on 8 bytes that decode"
                    );
                }
                (Err(_), None) => f.hit("short"),
            }
        })
    });
}

async fn detect_all(reader: Chunked) -> (io::Result<Detected>, Vec<u8>) {
    match weft_proxy::transport::detect(reader, Duration::from_secs(3600)).await {
        Ok((d, mut io)) => {
            let mut replay = Vec::new();
            let _ = io.read_to_end(&mut replay).await;
            (Ok(d), replay)
        }
        Err(e) => (Err(e), Vec::new()),
    }
}

/// The protocol detection target.
pub fn detect(data: &[u8], f: &mut Features) {
    let (reader, stream) = chunked(data);
    let fail_at_end = reader.fail_at_end;
    let whole = Chunked {
        data: stream.clone(),
        pos: 0,
        sizes: vec![usize::MAX],
        next: 0,
        fail_at_end,
    };
    RT.with(|rt| {
        rt.block_on(async {
            let (chunked_result, replay) = detect_all(reader).await;
            let (whole_result, _) = detect_all(whole).await;
            match (&chunked_result, &whole_result) {
                (Ok(a), Ok(b)) => {
                    f.hit(("detected", format!("{a:?}")));
                    assert_eq!(a, b, "detection depends on how the bytes are chunked");
                    if !fail_at_end {
                        assert_eq!(replay, stream, "the detected IO does not replay the stream");
                    } else {
                        assert!(
                            stream.starts_with(&replay),
                            "the detected IO replays bytes that were not sent"
                        );
                    }
                }
                (Err(_), Err(_)) => {
                    f.hit("io-error");
                    assert!(fail_at_end, "detection failed on a stream without errors");
                }
                _ => panic!(
                    "chunking changes whether detection fails: chunked {chunked_result:?}, whole {whole_result:?}"
                ),
            }
        })
    });
}
