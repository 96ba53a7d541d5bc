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
//! [`detach`] copies the values `h2` may keep into an allocation of their own size (one block for
//! a usual head, at most 512 bytes a block): a table entry then holds that block (usually under
//! 200 bytes), not a read buffer. The values `h2` never keeps stay as they are (they go when the
//! head is encoded): sensitive ones, those of the headers its encoder never indexes by value
//! (`h2`'s list, after nghttp2's: `age`, `authorization`, `content-length`, `etag`,
//! `if-modified-since`, `if-none-match`, `location`, `cookie`, `set-cookie`), and those too large
//! for an entry (over 3/4 of its table, which it caps at 4 KiB). Copying those too would put a
//! large value (a cookie, a padded header) in the block that every small entry of the same head
//! holds. If a later `h2` kept more than this rule copies, the values it missed would hold their
//! read buffer again, as before: a memory cost, never a change to what is sent.
//!
//! It is applied where the proxy hands a head to `h2`: responses on its HTTP/2 server
//! connections, requests on its HTTP/2 client connections (the mesh link, plain HTTP/2
//! upstreams). Trailers are not copied: they come from HTTP/2 peers (values `h2` decoded into
//! their own allocations, or slices of a frame) or from a chunked HTTP/1 body, and are rare.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// The most `h2`'s HPACK encoder keeps in its table (its `DEFAULT_MAX_ALLOWED_SIZE`; a peer may
/// ask for less, never for more).
const TABLE_MAX: usize = 4096;
/// What HPACK counts for an entry besides its name and value (RFC 7541, 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Whether `h2`'s encoder may keep `value` in its table: not sensitive, not of a header it never
/// indexes by value, and small enough for an entry (`h2` does not index an entry larger than 3/4
/// of its table).
fn may_be_kept(name: &HeaderName, value: &HeaderValue) -> bool {
    let never = matches!(
        *name,
        header::AGE
            | header::AUTHORIZATION
            | header::CONTENT_LENGTH
            | header::ETAG
            | header::IF_MODIFIED_SINCE
            | header::IF_NONE_MATCH
            | header::LOCATION
            | header::COOKIE
            | header::SET_COOKIE
    );
    !never
        && !value.is_sensitive()
        && (name.as_str().len() + value.len() + ENTRY_OVERHEAD) * 4 <= TABLE_MAX * 3
}

/// The most bytes of values one block holds, and so the most a table entry keeps alive besides
/// its own value: with at most 4 KiB of entries of at least 33 bytes each, an `h2` connection's
/// table holds at most ~64 KiB however its heads are made (a head of many small values would
/// otherwise put all of them in every entry's block).
const BLOCK_MAX: usize = 512;

/// Copies every value of `headers` that `h2` may keep ([`may_be_kept`]) out of the buffer it was
/// parsed from: values of up to [`BLOCK_MAX`] bytes into shared blocks of at most that size, sized
/// to what is left to copy (one block for a usual head), larger ones into allocations of their
/// own. The others are left as they are. A value that would not re-validate (none can: each was a
/// valid `HeaderValue`) is left as it was.
pub fn detach(headers: &mut HeaderMap) {
    let mut small: usize = headers
        .iter()
        .filter(|(n, v)| may_be_kept(n, v) && v.len() <= BLOCK_MAX)
        .map(|(_, v)| v.len())
        .sum();
    let mut block = BytesMut::new();
    for (n, v) in headers.iter_mut() {
        if !may_be_kept(n, v) {
            continue;
        }
        let len = v.len();
        let part = if len > BLOCK_MAX {
            Bytes::copy_from_slice(v.as_bytes())
        } else {
            // After a split, `block` is the unused rest of its allocation.
            if block.capacity() < len {
                block = BytesMut::with_capacity(small.min(BLOCK_MAX));
            }
            block.extend_from_slice(v.as_bytes());
            small -= len;
            block.split_to(len).freeze()
        };
        if let Ok(own) = HeaderValue::from_maybe_shared(part) {
            *v = own;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut secret = HeaderValue::from_static("t");
        secret.set_sensitive(true);
        h.insert("x-token", secret);
        h.insert("cookie", HeaderValue::from_static("a=b"));
        let before = h.clone();

        detach(&mut h);

        assert_eq!(h, before);
        assert!(h["x-token"].is_sensitive());
        assert!(!h["date"].is_sensitive());
        let multi: Vec<&[u8]> = h.get_all("x-multi").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(multi, [&b"a"[..], b"", b"c"]);
    }

    /// A head parsed in place: `names` each with a value that is a slice of one 16 KiB read
    /// buffer (`len` bytes each), sensitive when asked.
    fn parsed(names: &[(&'static str, usize, bool)]) -> (Bytes, HeaderMap) {
        let read_buf = Bytes::from(vec![b'v'; 16 * 1024]);
        let mut h = HeaderMap::new();
        let mut at = 0;
        for &(name, len, sensitive) in names {
            let value = HeaderValue::from_maybe_shared(read_buf.slice(at..at + len));
            let mut value = value.expect("valid");
            value.set_sensitive(sensitive);
            h.append(name, value);
            at += len;
        }
        (read_buf, h)
    }

    fn in_buffer(buf: &Bytes, v: &HeaderValue) -> bool {
        let at = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        at.contains(&(v.as_bytes().as_ptr() as usize))
    }

    #[test]
    fn a_value_h2_may_keep_no_longer_holds_the_buffer_it_was_parsed_from() {
        let (read_buf, mut h) = parsed(&[("x-request-id", 10, false)]);
        assert!(in_buffer(&read_buf, &h["x-request-id"]));

        detach(&mut h);

        assert!(!in_buffer(&read_buf, &h["x-request-id"]), "still a slice");
        assert_eq!(h["x-request-id"], "vvvvvvvvvv");
        // The buffer is now referenced by `read_buf` alone: it would be freed with it.
        assert!(read_buf.is_unique(), "the buffer is still shared");
    }

    #[test]
    fn values_h2_never_keeps_are_not_copied_into_the_block() {
        let (read_buf, mut h) = parsed(&[
            ("x-small", 8, false),
            ("x-large", 3 * 1024, false),
            ("cookie", 100, false),
            ("x-secret", 20, true),
        ]);

        detach(&mut h);

        assert!(!in_buffer(&read_buf, &h["x-small"]));
        // Left where they were: the block the small value holds stays small.
        for name in ["x-large", "cookie", "x-secret"] {
            assert!(in_buffer(&read_buf, &h[name]), "{name} was copied");
        }
        assert!(h["x-secret"].is_sensitive());
    }

    #[test]
    fn an_entry_just_small_enough_is_copied_and_one_byte_more_is_not() {
        // (name + value + 32) * 4 <= 4096 * 3: with a 6-byte name, values up to 3,034 bytes.
        let (read_buf, mut h) = parsed(&[("x-edge", 3034, false), ("x-over", 3035, false)]);
        detach(&mut h);
        assert!(!in_buffer(&read_buf, &h["x-edge"]));
        assert!(in_buffer(&read_buf, &h["x-over"]));
    }

    /// The addresses `[start, end)` of the runs of values laid out back to back in memory: the
    /// blocks they were copied into.
    fn blocks(h: &HeaderMap) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for v in h.values() {
            let start = v.as_bytes().as_ptr() as usize;
            match runs.last_mut() {
                Some(run) if run.1 == start => run.1 += v.len(),
                _ => runs.push((start, start + v.len())),
            }
        }
        runs
    }

    #[test]
    fn a_head_of_many_small_values_is_copied_into_blocks_of_at_most_512_bytes() {
        // 100 values of 30 bytes: 3,000 bytes a table entry would keep alive in one block.
        let names: Vec<(&'static str, usize, bool)> =
            (0..100).map(|_| ("x-many", 30, false)).collect();
        let (read_buf, mut h) = parsed(&names);
        detach(&mut h);
        assert!(read_buf.is_unique(), "a value still holds the read buffer");
        let runs = blocks(&h);
        assert!(runs.len() >= 6, "{} blocks", runs.len());
        for (start, end) in runs {
            assert!(end - start <= BLOCK_MAX, "a block of {} bytes", end - start);
        }
        assert_eq!(h.get_all("x-many").iter().count(), 100);
        assert!(h
            .get_all("x-many")
            .iter()
            .all(|v| v.as_bytes() == [b'v'; 30]));
    }

    #[test]
    fn a_usual_head_is_one_block_of_exactly_its_values() {
        let (_read_buf, mut h) = parsed(&[
            ("server", 5, false),
            ("date", 29, false),
            ("content-type", 9, false),
            ("content-length", 4, false),
        ]);
        detach(&mut h);
        // `content-length` is never kept by `h2`: left alone; the three others back to back.
        let kept: Vec<&HeaderValue> = ["server", "date", "content-type"].map(|n| &h[n]).into();
        let start = kept[0].as_bytes().as_ptr() as usize;
        assert_eq!(kept[1].as_bytes().as_ptr() as usize, start + 5);
        assert_eq!(kept[2].as_bytes().as_ptr() as usize, start + 34);
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
