//! Header values copied out of the buffers they were parsed from before an HTTP/2 connection
//! encodes them (issue #20: memory after load with HTTP/2 clients).
//!
//! hyper parses an HTTP/1 head in place: each header value is a slice of the connection's read
//! buffer (8 KiB, up to the head limit), and a slice keeps the whole buffer allocated. On an
//! HTTP/1 connection that lasts until the head is written. On an HTTP/2 connection it can last as
//! long as the connection: `h2`'s HPACK encoder keeps the values it indexes (every header but a
//! few such as `content-length`, `etag`, `set-cookie`) in its dynamic table, up to 4 KiB of
//! entries, and so keeps alive the read buffer of every response (or request) that brought a new
//! value. A `date` that changes every second, a request id, a trace header: each new value is an
//! entry of some 40 to 100 bytes that holds 8 KiB or more. Measured with the benchmark's HTTP/2
//! client (64 connections, nginx answering with `date`, `server`, `last-modified` and
//! `content-type`), the upstream read buffers held this way were the largest part of the heap
//! (docs/benchmarks.md, "HTTP/2 header tables holding read buffers").
//!
//! [`detach`] copies all the values of one head into one allocation of their own size: a table
//! entry then holds that block (the head's values, usually under 200 bytes), not a read buffer.
//! It is applied where the proxy hands a head to `h2`: responses on its HTTP/2 server
//! connections, requests on its HTTP/2 client connections. Trailers are not copied: they come
//! from HTTP/2 peers (values `h2` decoded into their own allocations, or slices of a frame) or from
//! a chunked HTTP/1 body, and are rare.

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue};

/// Moves every value of `headers` into one shared block of exactly their total length, in
/// order; sensitivity marks are kept. A value that would not re-validate (none can: each was a
/// valid `HeaderValue`) is left as it was.
pub fn detach(headers: &mut HeaderMap) {
    let total: usize = headers.values().map(HeaderValue::len).sum();
    if total == 0 {
        return;
    }
    let mut block = BytesMut::with_capacity(total);
    for v in headers.values() {
        block.extend_from_slice(v.as_bytes());
    }
    let mut block = block.freeze();
    for v in headers.values_mut() {
        let part = block.split_to(v.len());
        if let Ok(mut own) = HeaderValue::from_maybe_shared(part) {
            own.set_sensitive(v.is_sensitive());
            *v = own;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn values_keep_their_bytes_order_and_sensitivity() {
        let mut h = HeaderMap::new();
        h.insert(
            "date",
            HeaderValue::from_static("Sat, 05 Dec 2026 08:00:00 GMT"),
        );
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static(""));
        h.append("x-multi", HeaderValue::from_static("c"));
        let mut secret = HeaderValue::from_static("Bearer t");
        secret.set_sensitive(true);
        h.insert("authorization", secret);
        let before = h.clone();

        detach(&mut h);

        assert_eq!(h, before);
        assert!(h["authorization"].is_sensitive());
        assert!(!h["date"].is_sensitive());
        let multi: Vec<&[u8]> = h.get_all("x-multi").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(multi, [&b"a"[..], b"", b"c"]);
    }

    #[test]
    fn a_value_no_longer_holds_the_buffer_it_was_parsed_from() {
        // A head parsed in place: the value is a slice of an 8 KiB read buffer.
        let read_buf = Bytes::from(vec![b'v'; 8 * 1024]);
        let mut h = HeaderMap::new();
        let parsed = HeaderValue::from_maybe_shared(read_buf.slice(100..110));
        h.insert("x-request-id", parsed.expect("valid"));
        let buffer_at = read_buf.as_ptr() as usize..read_buf.as_ptr() as usize + read_buf.len();
        assert!(buffer_at.contains(&(h["x-request-id"].as_bytes().as_ptr() as usize)));

        detach(&mut h);

        let value_at = h["x-request-id"].as_bytes().as_ptr() as usize;
        assert!(
            !buffer_at.contains(&value_at),
            "still a slice of the read buffer"
        );
        assert_eq!(h["x-request-id"], "vvvvvvvvvv");
        // The buffer is now referenced by `read_buf` alone: it would be freed with it.
        assert!(read_buf.is_unique(), "the buffer is still shared");
    }

    #[test]
    fn an_empty_map_allocates_nothing() {
        let mut h = HeaderMap::new();
        detach(&mut h);
        assert!(h.is_empty());
        let mut h = HeaderMap::new();
        h.insert("x-empty", HeaderValue::from_static(""));
        detach(&mut h);
        assert_eq!(h["x-empty"], "");
    }
}
