//! The operator writes Discovery responses by hand, straight in protobuf wire format, from
//! pre-encoded shared chunks (`discovery/encode.rs`). `weft-proxy-api` owns the wire: this test
//! holds the operator's bytes to the generated prost types of that crate.
//!
//! Each response is taken off a real Discovery stream as raw bytes (a codec that does not
//! decode), then decoded with `prost::Message::decode` into `v1::DiscoveryResponse` and compared
//! with the response built from the generated types for the same compiled snapshot: the decoded
//! value must be equal, and re-encoding it with prost must give back the very bytes the operator
//! sent (the hand encoding is the canonical one). Finally the proxy's client logic
//! (`weft_proxy_api::ClientState`, i.e. `apply_response`) must accept each response and end up
//! holding exactly the snapshot's resources.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Server};
use tonic::{Status, Streaming};
use weft_operator::compile::ToProto;
use weft_operator::compile::{compile, CompileOptions, Compiled, ProxyConfig, ProxyKey};
use weft_operator::discovery::{
    snapshot_channel, DiscoveryMetrics, DiscoveryService, ProxyRegistry, Published, ServiceOptions,
    SnapshotTx,
};
use weft_operator::model::manifests::parse_manifests;
use weft_operator::model::Model;
use weft_operator::shutdown::Shutdown;
use weft_proxy_api::v1::{self, discovery_request::Request as Req};
use weft_proxy_api::{ClientState, ResourceMap};

/// Upper bound of every network wait (never reached when things work).
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A gRPC codec that hands responses over undecoded.

#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

struct RequestEncoder;
struct RawDecoder;

impl Encoder for RequestEncoder {
    type Item = v1::DiscoveryRequest;
    type Error = Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encode: {e}")))
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = v1::DiscoveryRequest;
    type Decode = Vec<u8>;
    type Encoder = RequestEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots and the server.

/// Four pods of service account `app` behind `web`, `web-v1` and (optionally) `web-v2`, with a
/// TrafficSplit of `web` sending `w2`% to `web-v2`.
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
    let (objects, _) = parse_manifests(&text, false).unwrap_or_else(|e| panic!("{e:?}"));
    compile(&Model::from_objects(objects), &CompileOptions::default())
}

fn publish(tx: &SnapshotTx, generation: u64, compiled: Compiled) -> Arc<Compiled> {
    let compiled = Arc::new(compiled);
    tx.send_replace(Some(Arc::new(Published {
        generation,
        changed_at: Instant::now(),
        compiled: Arc::clone(&compiled),
    })));
    compiled
}

fn key() -> ProxyKey {
    ProxyKey::new("demo", "app-0")
}

fn proxy_of(compiled: &Compiled) -> Arc<ProxyConfig> {
    compiled
        .proxy(&key())
        .unwrap_or_else(|| panic!("no config for demo/app-0"))
}

/// The operator's Discovery service on a loopback port (plaintext).
async fn serve(snapshots: weft_operator::discovery::SnapshotRx) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    let (trigger, shutdown) = Shutdown::new();
    let service = DiscoveryService::new(
        snapshots,
        Arc::new(ProxyRegistry::new()),
        DiscoveryMetrics::default(),
        shutdown,
        ServiceOptions::default(),
    );
    tokio::spawn(async move {
        // Keep the trigger alive as long as the server runs.
        let _trigger = trigger;
        let _ = Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    addr
}

/// One proxy-side stream whose responses arrive as raw bytes.
struct RawStream {
    tx: mpsc::Sender<v1::DiscoveryRequest>,
    rx: Streaming<Vec<u8>>,
}

impl RawStream {
    async fn open(addr: std::net::SocketAddr, known: BTreeMap<String, String>) -> RawStream {
        let channel = tokio::time::timeout(
            WAIT,
            Channel::from_shared(format!("http://{addr}"))
                .unwrap_or_else(|e| panic!("uri: {e}"))
                .connect(),
        )
        .await
        .unwrap_or_else(|_| panic!("connect timed out"))
        .unwrap_or_else(|e| panic!("connect: {e}"));
        let (tx, rx) = mpsc::channel(8);
        tx.send(v1::DiscoveryRequest::subscribe(v1::Subscribe {
            pod_namespace: "demo".into(),
            pod_name: "app-0".into(),
            service_account: "app".into(),
            proxy_version: "0.1.0".into(),
            known_versions: known,
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|e| panic!("queue subscribe: {e}"));
        let mut grpc = tonic::client::Grpc::new(channel);
        tokio::time::timeout(WAIT, grpc.ready())
            .await
            .unwrap_or_else(|_| panic!("ready timed out"))
            .unwrap_or_else(|e| panic!("ready: {e}"));
        let response = tokio::time::timeout(
            WAIT,
            grpc.streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                http::uri::PathAndQuery::from_static("/weft.proxy.v1.Discovery/Stream"),
                RawCodec,
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("stream open timed out"))
        .unwrap_or_else(|s| panic!("stream refused: {s}"));
        RawStream {
            tx,
            rx: response.into_inner(),
        }
    }

    /// The next response: its bytes as the operator wrote them, and their prost decoding.
    async fn next(&mut self) -> (Vec<u8>, v1::DiscoveryResponse) {
        let raw = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .unwrap_or_else(|_| panic!("no response in time"))
            .unwrap_or_else(|s| panic!("stream error: {s}"))
            .unwrap_or_else(|| panic!("stream ended"));
        let decoded = v1::DiscoveryResponse::decode(raw.as_slice())
            .unwrap_or_else(|e| panic!("the operator's bytes do not decode: {e}"));
        (raw, decoded)
    }

    async fn send(&self, req: v1::DiscoveryRequest) {
        self.tx
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }
}

/// The decoded response equals `want` (built from the generated types) and prost encodes `want`
/// to exactly the operator's bytes.
fn assert_wire_identical(raw: &[u8], got: &v1::DiscoveryResponse, want: &v1::DiscoveryResponse) {
    assert_eq!(got, want);
    assert_eq!(
        want.encode_to_vec(),
        raw,
        "the operator's encoding differs from prost's"
    );
}

/// A proxy's resources as the generated types.
fn resources_of(proxy: &ProxyConfig) -> ResourceMap {
    proxy
        .resources()
        .map(|r| (r.name.clone(), r.to_proto()))
        .collect()
}

/// The proxy applies `resp` (`apply_response` through `ClientState`) and ACKs it.
async fn apply(client: &mut ClientState, stream: &RawStream, resp: &v1::DiscoveryResponse) {
    let (answer, outcome) = client.handle(resp);
    assert_eq!(
        outcome,
        Ok(()),
        "the proxy rejected the operator's response"
    );
    assert!(matches!(&answer.request, Some(Req::Ack(a)) if a.nonce == resp.nonce));
    stream.send(answer).await;
}

#[tokio::test]
async fn full_incremental_and_reconnect_responses_match_the_generated_types() {
    let (tx, rx) = snapshot_channel();
    let before = publish(&tx, 1, snapshot(0, true));
    let addr = serve(rx).await;
    let old = proxy_of(&before);

    // First response of a stream: the full state, inbound first, then every shared resource.
    let mut stream = RawStream::open(addr, BTreeMap::new()).await;
    let (raw, first) = stream.next().await;
    let want = v1::DiscoveryResponse {
        nonce: first.nonce.clone(),
        version: old.version.clone(),
        full_state: true,
        resources: old.resources().map(|r| r.to_proto()).collect(),
        ..Default::default()
    };
    assert!(!first.nonce.is_empty());
    assert!(want.resources.len() > 3, "{want:?}");
    assert_wire_identical(&raw, &first, &want);
    let mut client = ClientState::new();
    apply(&mut client, &stream, &first).await;
    assert_eq!(client.resources(), &resources_of(&old));
    assert_eq!(client.version(), old.version);

    // A change: the incremental response carries what changed (inbound first when it did) and
    // the removed names, in the operator's order.
    let after = publish(&tx, 2, snapshot(50, false));
    let new = proxy_of(&after);
    let (raw, push) = stream.next().await;
    let mut changed = Vec::new();
    if old.inbound.version != new.inbound.version {
        changed.push(new.inbound.to_proto());
    }
    changed.extend(
        new.shared
            .iter()
            .filter(|r| old.shared.get(&r.name).map(|o| &o.version) != Some(&r.version))
            .map(|r| r.to_proto()),
    );
    let removed: Vec<String> = old
        .shared
        .iter()
        .filter(|r| new.shared.get(&r.name).is_none())
        .map(|r| r.name.clone())
        .collect();
    assert!(!changed.is_empty() && !removed.is_empty());
    let want = v1::DiscoveryResponse {
        nonce: push.nonce.clone(),
        version: new.version.clone(),
        full_state: false,
        resources: changed,
        removed,
        unchanged: Vec::new(),
        ..Default::default()
    };
    assert_ne!(push.nonce, first.nonce);
    assert_wire_identical(&raw, &push, &want);
    apply(&mut client, &stream, &push).await;
    assert_eq!(client.resources(), &resources_of(&new));
    assert_eq!(client.version(), new.version);
    drop(stream);

    // Reconnect reporting what the proxy holds: nothing is resent, everything is unchanged.
    let mut stream = RawStream::open(addr, client.known_versions()).await;
    let (raw, again) = stream.next().await;
    let want = v1::DiscoveryResponse {
        nonce: again.nonce.clone(),
        version: new.version.clone(),
        full_state: true,
        unchanged: new.resources().map(|r| r.name.clone()).collect(),
        ..Default::default()
    };
    assert_wire_identical(&raw, &again, &want);
    apply(&mut client, &stream, &again).await;
    assert_eq!(client.resources(), &resources_of(&new));
}

#[tokio::test]
async fn reconnect_with_stale_versions_resends_only_what_changed() {
    let (tx, rx) = snapshot_channel();
    let before = publish(&tx, 1, snapshot(0, true));
    let addr = serve(rx).await;
    let old = proxy_of(&before);

    // The proxy holds the old snapshot; the config changes while it is away.
    let mut client = ClientState::new();
    let mut stream = RawStream::open(addr, BTreeMap::new()).await;
    let (_, first) = stream.next().await;
    apply(&mut client, &stream, &first).await;
    assert_eq!(client.resources(), &resources_of(&old));
    drop(stream);
    let after = publish(&tx, 2, snapshot(50, false));
    let new = proxy_of(&after);

    let mut stream = RawStream::open(addr, client.known_versions()).await;
    let (raw, resp) = stream.next().await;
    let known = client.known_versions();
    let (unchanged, resent): (Vec<_>, Vec<_>) = new
        .resources()
        .partition(|r| known.get(&r.name) == Some(&r.version));
    let want = v1::DiscoveryResponse {
        nonce: resp.nonce.clone(),
        version: new.version.clone(),
        full_state: true,
        resources: resent.iter().map(|r| r.to_proto()).collect(),
        removed: Vec::new(),
        unchanged: unchanged.iter().map(|r| r.name.clone()).collect(),
        ..Default::default()
    };
    assert!(!want.resources.is_empty() && !want.unchanged.is_empty());
    assert_wire_identical(&raw, &resp, &want);
    // A full state drops what the proxy held but the snapshot no longer has (web-v2).
    apply(&mut client, &stream, &resp).await;
    assert_eq!(client.resources(), &resources_of(&new));
    assert_eq!(client.version(), new.version);
}
