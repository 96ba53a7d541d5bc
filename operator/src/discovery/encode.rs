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

use super::proto::ToProto;
use crate::compile::{SharedResources, VersionedResource};

/// Wire tags of `DiscoveryResponse`.
const NONCE: u32 = 1;
const VERSION: u32 = 2;
const FULL_STATE: u32 = 3;
const RESOURCES: u32 = 4;
const REMOVED: u32 = 5;
const UNCHANGED: u32 = 6;
const ON_DEMAND: u32 = 7;

/// gRPC message prefix: compressed flag and big-endian length.
const GRPC_HEADER: usize = 5;

/// Shared chunks shorter than this are copied into the per-stream part instead of being sent
/// as their own HTTP/2 DATA frame.
const COPY_BELOW: usize = 512;

/// What a stream queues for its response body: a message, or the status that ends it (boxed:
/// the queue's slots are allocated in blocks of 32, and a `Status` is large).
pub(crate) type Queued = Result<Encoded, Box<Status>>;

/// A gRPC-framed message (prefix included), as the chunks to write in order.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) parts: Vec<Bytes>,
}

impl Encoded {
    /// Total bytes on the wire.
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

    /// Appends a wire resource encoded for this stream only (on-demand `ip:` resolutions).
    pub(crate) fn proto(&mut self, msg: &weft_proxy_api::v1::Resource) {
        let own = self.own();
        let start = own.len();
        pb_message::encode(RESOURCES, msg, own);
        self.len += own.len() - start;
    }

    /// Appends `removed` names.
    pub(crate) fn removed(&mut self, names: &[String]) {
        let own = self.own();
        let start = own.len();
        for n in names {
            put_str(REMOVED, n, own);
        }
        self.len += own.len() - start;
    }

    /// Sets `on_demand`: this stream is served on demand.
    pub(crate) fn on_demand(&mut self) {
        let own = self.own();
        let start = own.len();
        encode_key(ON_DEMAND, WireType::Varint, own);
        encode_varint(1, own);
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
    /// Drops entries of resources `target` does not have, once per new target, and only once
    /// there are more entries than `target` has resources (a stale entry costs memory, never a
    /// wrong answer: an entry is used only for its version). So a snapshot that changes one
    /// resource costs O(1) here, not O(entries), and the entries never outnumber the
    /// resources of the mesh by more than one.
    fn prune(&mut self, target: &Arc<SharedResources>) {
        if self.entries.len() <= target.len()
            || self
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, CompileOptions, Compiled, ProxyKey};
    use crate::model::manifests::parse_manifests;
    use crate::model::Model;
    use prost::Message;
    use weft_proxy_api::v1;

    fn snapshot(w2: u32, with_v2: bool) -> Compiled {
        let mut text = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app, namespace: demo}\n",
        );
        for i in 0..4 {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{i}\n  namespace: demo\n  labels: {{app: app, version: v{v}, weft.io/proxy-version: \"0.1.0\"}}\nspec:\n  serviceAccountName: app\n  containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]\nstatus:\n  podIP: 127.0.0.{ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
                v = 1 + i % 2,
                ip = 10 + i
            ));
        }
        let mut services = vec![("web", "app: app"), ("web-v1", "app: app, version: v1")];
        if with_v2 {
            services.push(("web-v2", "app: app, version: v2"));
        }
        for (n, (name, sel)) in services.iter().enumerate() {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.{}\n  selector: {{{sel}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n",
                10 + n
            ));
        }
        text.push_str(&format!(
            "---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: canary, namespace: demo}}\nspec:\n  service: web\n  backends:\n  - {{service: web-v1, weight: {}}}\n  - {{service: web-v2, weight: {w2}}}\n",
            100 - w2
        ));
        let (objects, _) = parse_manifests(&text, false).unwrap();
        compile(&Model::from_objects(objects), &CompileOptions::default())
    }

    /// Strips and checks the gRPC prefix, then decodes.
    fn decode(encoded: &Encoded) -> v1::DiscoveryResponse {
        let wire: Vec<u8> = encoded.parts.iter().flat_map(|p| p.to_vec()).collect();
        assert_eq!(wire.len(), encoded.len());
        assert_eq!(wire[0], 0, "not compressed");
        let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
        assert_eq!(len, wire.len() - GRPC_HEADER);
        v1::DiscoveryResponse::decode(&wire[GRPC_HEADER..]).unwrap()
    }

    #[test]
    fn full_response_is_every_resource_and_shares_the_encoding() {
        let compiled = snapshot(0, true);
        let cache = EncodeCache::default();
        let key = ProxyKey::new("demo", "app-0");
        let proxy = compiled.proxy(&key).unwrap();
        let mut b = ResponseBuilder::new("1", &proxy.version, true);
        b.resource(&proxy.inbound);
        b.shared(&cache.full(&proxy.shared));
        let got = decode(&b.finish().unwrap());
        let want = v1::DiscoveryResponse {
            nonce: "1".into(),
            version: proxy.version.clone(),
            full_state: true,
            resources: proxy.resources().map(|r| r.to_proto()).collect(),
            ..Default::default()
        };
        assert_eq!(got, want);
        assert!(got.resources.len() > 3, "{got:?}");

        // Another proxy gets the very same bytes for the shared part.
        let other = compiled.proxy(&ProxyKey::new("demo", "app-1")).unwrap();
        let a = cache.full(&proxy.shared);
        let b = cache.full(&other.shared);
        assert_eq!(a.as_ptr(), b.as_ptr());
    }

    #[test]
    fn diff_carries_changed_resources_and_removed_names() {
        let before = snapshot(0, true);
        let after = snapshot(50, false);
        let key = ProxyKey::new("demo", "app-0");
        let old = before.proxy(&key).unwrap();
        let new = after.proxy(&key).unwrap();
        let cache = EncodeCache::default();
        let mut b = ResponseBuilder::new("2", &new.version, false);
        b.shared(&cache.diff(&old.shared, &new.shared));
        let got = decode(&b.finish().unwrap());
        assert!(!got.full_state);
        assert_eq!(got.version, new.version);

        let changed: Vec<v1::Resource> = new
            .shared
            .iter()
            .filter(|r| old.shared.get(&r.name).map(|o| &o.version) != Some(&r.version))
            .map(|r| r.to_proto())
            .collect();
        let removed: Vec<String> = old
            .shared
            .iter()
            .filter(|r| new.shared.get(&r.name).is_none())
            .map(|r| r.name.clone())
            .collect();
        assert!(!changed.is_empty() && !removed.is_empty());
        assert!(removed.iter().any(|n| n.starts_with("outbound:web-v2.")));
        assert_eq!(got.resources, changed);
        assert_eq!(got.removed, removed);

        // A proxy that applies full(old) and then the diff holds full(new).
        let full = |p: &crate::compile::ProxyConfig| {
            let mut b = ResponseBuilder::new("1", &p.version, true);
            b.resource(&p.inbound);
            b.shared(&cache.full(&p.shared));
            decode(&b.finish().unwrap())
        };
        let mut held = std::collections::BTreeMap::new();
        weft_proxy_api::apply_response(&mut held, &full(&old)).unwrap();
        let mut push = ResponseBuilder::new("2", &new.version, false);
        if old.inbound.version != new.inbound.version {
            push.resource(&new.inbound);
        }
        push.shared(&cache.diff(&old.shared, &new.shared));
        weft_proxy_api::apply_response(&mut held, &decode(&push.finish().unwrap())).unwrap();
        let mut want = std::collections::BTreeMap::new();
        weft_proxy_api::apply_response(&mut want, &full(&new)).unwrap();
        assert_eq!(held, want);
    }

    #[test]
    fn reconnect_entries_and_unchanged_names() {
        let compiled = snapshot(0, true);
        let proxy = compiled.proxy(&ProxyKey::new("demo", "app-0")).unwrap();
        let cache = EncodeCache::default();
        let mut b = ResponseBuilder::new("1", &proxy.version, true);
        let mut unchanged = Vec::new();
        for (i, r) in proxy.shared.iter().enumerate() {
            if i % 2 == 0 {
                unchanged.push(r.name.clone());
            } else {
                b.shared(&cache.entry(&proxy.shared, r));
            }
        }
        b.unchanged(&unchanged);
        let got = decode(&b.finish().unwrap());
        let sent: Vec<v1::Resource> = proxy
            .shared
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, r)| r.to_proto())
            .collect();
        assert_eq!(got.resources, sent);
        assert_eq!(got.unchanged, unchanged);
    }
}
