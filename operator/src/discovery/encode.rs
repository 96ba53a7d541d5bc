//! Responses encoded once, shared by every stream.
//!
//! A `DiscoveryResponse` is written straight in protobuf wire format. The per-stream part (nonce,
//! version, the pod's own `inbound` resource) is small; the shared outbound and endpoints
//! resources are encoded once per snapshot and their bytes (`Bytes`, reference counted) are
//! handed to every stream as they are: a first response to 1,000 proxies holds one copy of the
//! shared resources, and an incremental push holds one copy of the difference between two
//! snapshots. Repeated fields may appear in any order on the wire, so a response is the
//! concatenation of its fields.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, message as pb_message, WireType};
use tonic::Status;

use crate::compile::{SharedResources, VersionedResource};

/// Wire tags of `DiscoveryResponse`.
const NONCE: u32 = 1;
const VERSION: u32 = 2;
const FULL_STATE: u32 = 3;
const RESOURCES: u32 = 4;
const REMOVED: u32 = 5;
const UNCHANGED: u32 = 6;

/// gRPC message prefix: compressed flag and big-endian length.
const GRPC_HEADER: usize = 5;

/// Shared chunks shorter than this are copied into the per-stream part instead of being sent
/// as their own HTTP/2 DATA frame.
const COPY_BELOW: usize = 512;

/// A gRPC-framed message (prefix included), as the chunks to write in order.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) parts: Vec<Bytes>,
}

impl Encoded {
    /// Total bytes on the wire.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }
}

enum Part {
    Own(BytesMut),
    Shared(Bytes),
}

/// Builds one `DiscoveryResponse` from per-stream fields and shared, pre-encoded chunks.
pub(crate) struct ResponseBuilder {
    parts: Vec<Part>,
    /// Message length (without the gRPC prefix).
    len: usize,
}

impl ResponseBuilder {
    /// A response with its header fields.
    pub(crate) fn new(nonce: &str, version: &str, full_state: bool) -> Self {
        let mut first = BytesMut::with_capacity(GRPC_HEADER + 64);
        first.put_bytes(0, GRPC_HEADER);
        let mut b = ResponseBuilder {
            parts: vec![Part::Own(first)],
            len: 0,
        };
        let own = b.own();
        let start = own.len();
        if !nonce.is_empty() {
            put_str(NONCE, nonce, own);
        }
        if !version.is_empty() {
            put_str(VERSION, version, own);
        }
        if full_state {
            encode_key(FULL_STATE, WireType::Varint, own);
            encode_varint(1, own);
        }
        b.len += own.len() - start;
        b
    }

    fn own(&mut self) -> &mut BytesMut {
        if !matches!(self.parts.last(), Some(Part::Own(_))) {
            self.parts.push(Part::Own(BytesMut::new()));
        }
        match self.parts.last_mut() {
            Some(Part::Own(b)) => b,
            // Pushed just above.
            _ => unreachable!("last part is owned"),
        }
    }

    /// Appends a resource encoded for this stream only.
    pub(crate) fn resource(&mut self, r: &VersionedResource) {
        let msg = r.to_proto();
        let own = self.own();
        let start = own.len();
        pb_message::encode(RESOURCES, &msg, own);
        self.len += own.len() - start;
    }

    /// Appends already encoded fields (shared between streams).
    pub(crate) fn shared(&mut self, chunk: &Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        if chunk.len() < COPY_BELOW {
            self.own().extend_from_slice(chunk);
        } else {
            self.parts.push(Part::Shared(chunk.clone()));
        }
    }

    /// Appends `unchanged` names.
    pub(crate) fn unchanged(&mut self, names: &[String]) {
        let own = self.own();
        let start = own.len();
        for n in names {
            put_str(UNCHANGED, n, own);
        }
        self.len += own.len() - start;
    }

    /// The framed message.
    pub(crate) fn finish(mut self) -> Result<Encoded, Status> {
        let len = u32::try_from(self.len)
            .map_err(|_| Status::resource_exhausted("response larger than 4 GiB"))?;
        if let Some(Part::Own(first)) = self.parts.first_mut() {
            first[1..GRPC_HEADER].copy_from_slice(&len.to_be_bytes());
        }
        let parts = self
            .parts
            .into_iter()
            .filter_map(|p| match p {
                Part::Own(b) if b.is_empty() => None,
                Part::Own(b) => Some(b.freeze()),
                Part::Shared(b) => Some(b),
            })
            .collect();
        Ok(Encoded { parts })
    }
}

/// A string field (tag, length, bytes).
fn put_str(tag: u32, s: &str, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.extend_from_slice(s.as_bytes());
}

/// `resources` field entry (tag, length, message) of one resource.
fn resource_entry(r: &VersionedResource) -> Bytes {
    let mut buf = BytesMut::new();
    pb_message::encode(RESOURCES, &r.to_proto(), &mut buf);
    buf.freeze()
}

const KEEP_FULL: usize = 2;
const KEEP_DIFFS: usize = 8;

#[derive(Default)]
struct Inner {
    /// Encoded entry of each shared resource of the latest target, by name: (version, entry).
    entries: HashMap<String, (String, Bytes)>,
    /// The shared resources `entries` was last pruned to.
    pruned_for: Option<Arc<SharedResources>>,
    /// Every shared resource, encoded: `resources` entries.
    full: VecDeque<(Arc<SharedResources>, Bytes)>,
    /// From one set of shared resources to another: `resources` entries of what was added or
    /// changed, then `removed` names.
    diffs: VecDeque<(Arc<SharedResources>, Arc<SharedResources>, Bytes)>,
}

impl Inner {
    /// Drops entries of resources `target` does not have, once per new target.
    fn prune(&mut self, target: &Arc<SharedResources>) {
        if self
            .pruned_for
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, target))
        {
            return;
        }
        self.entries.retain(|name, _| target.get(name).is_some());
        self.pruned_for = Some(target.clone());
    }

    fn entry(&mut self, r: &VersionedResource) -> Bytes {
        if let Some((version, bytes)) = self.entries.get(&r.name) {
            if *version == r.version {
                return bytes.clone();
            }
        }
        let bytes = resource_entry(r);
        self.entries
            .insert(r.name.clone(), (r.version.clone(), bytes.clone()));
        bytes
    }
}

/// Encoded shared resources and snapshot differences, computed by the first stream that needs
/// them and reused by the others.
#[derive(Default)]
pub(crate) struct EncodeCache {
    inner: Mutex<Inner>,
}

impl EncodeCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The cache holds no invariant a panicking holder could break beyond a stale entry.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every resource of `shared`, as `resources` entries.
    pub(crate) fn full(&self, shared: &Arc<SharedResources>) -> Bytes {
        let mut inner = self.lock();
        if let Some((_, b)) = inner.full.iter().find(|(s, _)| Arc::ptr_eq(s, shared)) {
            return b.clone();
        }
        inner.prune(shared);
        let entries: Vec<Bytes> = shared.iter().map(|r| inner.entry(r)).collect();
        let mut buf = BytesMut::with_capacity(entries.iter().map(Bytes::len).sum());
        for e in &entries {
            buf.extend_from_slice(e);
        }
        let bytes = buf.freeze();
        if inner.full.len() >= KEEP_FULL {
            inner.full.pop_front();
        }
        inner.full.push_back((shared.clone(), bytes.clone()));
        bytes
    }

    /// What changes from `from` to `to`: `resources` entries, then `removed` names.
    pub(crate) fn diff(&self, from: &Arc<SharedResources>, to: &Arc<SharedResources>) -> Bytes {
        let mut inner = self.lock();
        if let Some((_, _, b)) = inner
            .diffs
            .iter()
            .find(|(f, t, _)| Arc::ptr_eq(f, from) && Arc::ptr_eq(t, to))
        {
            return b.clone();
        }
        inner.prune(to);
        let mut buf = BytesMut::new();
        for r in to.iter() {
            if from.get(&r.name).map(|o| &o.version) != Some(&r.version) {
                let e = inner.entry(r);
                buf.extend_from_slice(&e);
            }
        }
        for r in from.iter() {
            if to.get(&r.name).is_none() {
                put_str(REMOVED, &r.name, &mut buf);
            }
        }
        let bytes = buf.freeze();
        if inner.diffs.len() >= KEEP_DIFFS {
            inner.diffs.pop_front();
        }
        inner
            .diffs
            .push_back((from.clone(), to.clone(), bytes.clone()));
        bytes
    }

    /// The `resources` entry of one shared resource of `shared`.
    pub(crate) fn entry(&self, shared: &Arc<SharedResources>, r: &VersionedResource) -> Bytes {
        let mut inner = self.lock();
        inner.prune(shared);
        inner.entry(r)
    }
}
