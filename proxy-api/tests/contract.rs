//! The Discovery and Identity contracts, exercised end to end over gRPC on loopback: a tiny
//! test server (its responses built by the test double in `support/`) and a client that uses the
//! crate's client logic (`ClientState`).
#![cfg(all(feature = "client", feature = "server"))]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use support::{full_state_response, incremental_response, versioned_resource};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use weft_proxy_api::names::{endpoints_name, outbound_name, INBOUND};
use weft_proxy_api::v1::discovery_client::DiscoveryClient;
use weft_proxy_api::v1::discovery_request::Request as Req;
use weft_proxy_api::v1::discovery_server::{Discovery, DiscoveryServer};
use weft_proxy_api::v1::identity_client::IdentityClient;
use weft_proxy_api::v1::identity_server::{Identity, IdentityServer};
use weft_proxy_api::v1::{
    resource, CertifyRequest, CertifyResponse, DiscoveryRequest, DiscoveryResponse, Endpoint,
    EndpointSet, InboundPolicy, Subscribe,
};
use weft_proxy_api::ClientState;
use weft_proxy_api::ResourceMap;

/// Upper bound for every network wait in these tests (never reached when things work).
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Test Discovery server: publishes the latest snapshot of one proxy's resources from a
// `watch`, and reports every Ack/Nack it receives on `answers`.

struct RefDiscovery {
    snapshots: watch::Receiver<ResourceMap>,
    answers: mpsc::Sender<DiscoveryRequest>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for RefDiscovery {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(WAIT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Subscribe received"))??;
        let Some(DiscoveryRequest {
            request: Some(Req::Subscribe(subscribe)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be Subscribe",
            ));
        };

        let mut snapshots = self.snapshots.clone();
        let answers = self.answers.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut nonce = 0u64;
            let mut sent = snapshots.borrow_and_update().clone();
            nonce += 1;
            let first = full_state_response(&sent, &subscribe.known_versions, nonce.to_string());
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let current = snapshots.borrow_and_update().clone();
                        nonce += 1;
                        if let Some(resp) = incremental_response(&sent, &current, nonce.to_string()) {
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                        sent = current;
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(msg)) => {
                            if answers.send(msg).await.is_err() {
                                return;
                            }
                        }
                        // The proxy went away.
                        Ok(None) | Err(_) => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

// A dummy Identity service: "signs" by echoing the CSR, refuses an empty token.
struct DummyIdentity;

#[tonic::async_trait]
impl Identity for DummyIdentity {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let req = request.into_inner();
        if req.token.is_empty() {
            return Err(Status::unauthenticated("missing token"));
        }
        Ok(Response::new(CertifyResponse {
            leaf_der: req.csr_der,
            intermediates_der: vec![b"intermediate".to_vec()],
            trust_anchors_der: vec![b"root".to_vec()],
            not_before_unix_ms: 1_000,
            not_after_unix_ms: 2_000,
        }))
    }
}

struct TestServer {
    addr: SocketAddr,
    snapshots: watch::Sender<ResourceMap>,
    answers: mpsc::Receiver<DiscoveryRequest>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(initial: ResourceMap) -> Self {
        let listener = within("bind", tokio::net::TcpListener::bind("127.0.0.1:0"))
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let (snapshots, snapshots_rx) = watch::channel(initial);
        let (answers_tx, answers) = mpsc::channel(16);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let discovery = RefDiscovery {
            snapshots: snapshots_rx,
            answers: answers_tx,
        };
        let task = tokio::spawn(
            Server::builder()
                .add_service(DiscoveryServer::new(discovery))
                .add_service(IdentityServer::new(DummyIdentity))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = shutdown_rx.await;
                }),
        );
        Self {
            addr,
            snapshots,
            answers,
            shutdown,
            task,
        }
    }

    async fn channel(&self) -> Channel {
        within(
            "connect",
            Channel::from_shared(format!("http://{}", self.addr))
                .unwrap_or_else(|e| panic!("uri: {e}"))
                .connect(),
        )
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
    }

    async fn next_answer(&mut self) -> Req {
        within("an Ack or Nack", self.answers.recv())
            .await
            .and_then(|a| a.request)
            .unwrap_or_else(|| panic!("server saw no answer"))
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        within("server shutdown", self.task)
            .await
            .unwrap_or_else(|e| panic!("server task: {e}"))
            .unwrap_or_else(|e| panic!("server: {e}"));
    }
}

/// One proxy-side Discovery stream.
struct Proxy {
    to_server: mpsc::Sender<DiscoveryRequest>,
    from_server: Streaming<DiscoveryResponse>,
}

impl Proxy {
    async fn connect(channel: Channel, first: DiscoveryRequest) -> Result<Self, Status> {
        let (to_server, rx) = mpsc::channel(8);
        to_server
            .send(first)
            .await
            .unwrap_or_else(|e| panic!("queue first message: {e}"));
        let mut client = DiscoveryClient::new(channel);
        let from_server = within("stream open", client.stream(ReceiverStream::new(rx)))
            .await?
            .into_inner();
        Ok(Self {
            to_server,
            from_server,
        })
    }

    async fn recv(&mut self) -> Result<DiscoveryResponse, Status> {
        within("a DiscoveryResponse", self.from_server.message())
            .await?
            .ok_or_else(|| Status::unavailable("stream ended"))
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.to_server
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("send to server: {e}"));
    }
}

fn subscribe(known: &ClientState) -> DiscoveryRequest {
    DiscoveryRequest::subscribe(Subscribe {
        pod_namespace: "demo".into(),
        pod_name: "web-0".into(),
        service_account: "web".into(),
        proxy_version: "0.1.0".into(),
        known_versions: known.known_versions(),
        ..Default::default()
    })
}

fn inbound() -> weft_proxy_api::v1::Resource {
    versioned_resource(
        INBOUND,
        resource::Kind::Inbound(InboundPolicy {
            identity: "spiffe://cluster.local/ns/demo/sa/web".into(),
            ..Default::default()
        }),
    )
}

fn endpoints(service: &str, ips: &[u8]) -> weft_proxy_api::v1::Resource {
    versioned_resource(
        endpoints_name(service, "demo", 80),
        resource::Kind::Endpoints(EndpointSet {
            endpoints: ips
                .iter()
                .map(|last| Endpoint {
                    ip: vec![10, 0, 0, *last],
                    port: 8080,
                    ..Default::default()
                })
                .collect(),
        }),
    )
}

fn map(resources: impl IntoIterator<Item = weft_proxy_api::v1::Resource>) -> ResourceMap {
    resources.into_iter().map(|r| (r.name.clone(), r)).collect()
}

#[tokio::test]
async fn discovery_subscribe_push_ack_nack_and_reconnect() {
    let mut server = TestServer::start(map([inbound()])).await;
    let mut client = ClientState::new();

    // Subscribe: the first response comes at once, with the full state.
    let mut proxy = Proxy::connect(server.channel().await, subscribe(&client))
        .await
        .unwrap_or_else(|s| panic!("subscribe refused: {s}"));
    let first = proxy.recv().await.unwrap_or_else(|s| panic!("{s}"));
    assert!(first.full_state);
    assert!(first.unchanged.is_empty());
    let (answer, outcome) = client.handle(&first);
    assert_eq!(outcome, Ok(()));
    proxy.send(answer).await;
    let Req::Ack(ack) = server.next_answer().await else {
        panic!("expected an Ack");
    };
    assert_eq!(
        (ack.nonce, ack.version),
        (first.nonce.clone(), first.version)
    );
    assert_eq!(client.resources(), &map([inbound()]));

    // A change on the server is pushed as an incremental update, and acknowledged.
    let second = map([inbound(), endpoints("api", &[1, 2])]);
    server.snapshots.send_replace(second.clone());
    let push = proxy.recv().await.unwrap_or_else(|s| panic!("{s}"));
    assert!(!push.full_state);
    assert_eq!(push.resources, vec![endpoints("api", &[1, 2])]);
    assert_ne!(push.nonce, first.nonce);
    let (answer, outcome) = client.handle(&push);
    assert_eq!(outcome, Ok(()));
    proxy.send(answer).await;
    assert!(matches!(server.next_answer().await, Req::Ack(a) if a.nonce == push.nonce));
    assert_eq!(client.resources(), &second);
    let good_version = client.version().to_owned();

    // An invalid update (an outbound name carrying endpoints) is NACKed; the proxy keeps the old
    // resources and reports the version it keeps.
    let mut bad = endpoints("api", &[3]);
    bad.name = outbound_name("api", "demo");
    server
        .snapshots
        .send_replace(map([inbound(), endpoints("api", &[1, 2]), bad]));
    let push = proxy.recv().await.unwrap_or_else(|s| panic!("{s}"));
    let (answer, outcome) = client.handle(&push);
    assert!(outcome.is_err());
    proxy.send(answer).await;
    let Req::Nack(nack) = server.next_answer().await else {
        panic!("expected a Nack");
    };
    assert_eq!(nack.nonce, push.nonce);
    assert_eq!(nack.kept_version, good_version);
    assert_eq!(nack.resource_names, vec![outbound_name("api", "demo")]);
    assert!(nack.error.contains("outbound"), "{}", nack.error);
    assert_eq!(client.resources(), &second);
    assert_eq!(client.version(), good_version);

    // The proxy disconnects; meanwhile the config changes. On reconnect it reports what it
    // holds: the first response is a full state that marks the still-current resources as
    // unchanged and resends only the rest.
    drop(proxy);
    let third = map([
        inbound(),
        endpoints("api", &[1, 2, 3]),
        endpoints("db", &[9]),
    ]);
    server.snapshots.send_replace(third.clone());
    let mut proxy = Proxy::connect(server.channel().await, subscribe(&client))
        .await
        .unwrap_or_else(|s| panic!("resubscribe refused: {s}"));
    let first = proxy.recv().await.unwrap_or_else(|s| panic!("{s}"));
    assert!(first.full_state);
    assert_eq!(first.unchanged, vec![INBOUND.to_owned()]);
    let mut resent: Vec<_> = first.resources.iter().map(|r| r.name.clone()).collect();
    resent.sort();
    assert_eq!(
        resent,
        vec![
            endpoints_name("api", "demo", 80),
            endpoints_name("db", "demo", 80)
        ]
    );
    let (answer, outcome) = client.handle(&first);
    assert_eq!(outcome, Ok(()));
    proxy.send(answer).await;
    assert!(matches!(server.next_answer().await, Req::Ack(_)));
    assert_eq!(client.resources(), &third);

    drop(proxy);
    server.stop().await;
}

#[tokio::test]
async fn discovery_rejects_a_first_message_that_is_not_subscribe() {
    let server = TestServer::start(map([inbound()])).await;
    let ack_first = DiscoveryRequest::ack(&DiscoveryResponse {
        nonce: "1".into(),
        ..Default::default()
    });
    // The refusal may surface when opening the stream or on its first message.
    let status = match Proxy::connect(server.channel().await, ack_first).await {
        Err(status) => status,
        Ok(mut proxy) => match proxy.recv().await {
            Err(status) => status,
            Ok(resp) => panic!("expected INVALID_ARGUMENT, got {resp:?}"),
        },
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    server.stop().await;
}

#[tokio::test]
async fn identity_certify_round_trip_and_refusal() {
    let server = TestServer::start(ResourceMap::new()).await;
    let mut client = IdentityClient::new(server.channel().await);
    let request = CertifyRequest {
        identity: "spiffe://cluster.local/ns/demo/sa/web".into(),
        token: b"token".to_vec(),
        csr_der: b"csr".to_vec(),
        pod_namespace: "demo".into(),
        pod_name: "web-0".into(),
    };
    let resp = within("certify", client.certify(request.clone()))
        .await
        .unwrap_or_else(|s| panic!("certify: {s}"))
        .into_inner();
    assert_eq!(resp.leaf_der, b"csr");
    assert_eq!(resp.trust_anchors_der, vec![b"root".to_vec()]);
    assert!(resp.not_before_unix_ms < resp.not_after_unix_ms);

    let refused = within(
        "certify",
        client.certify(CertifyRequest {
            token: Vec::new(),
            ..request
        }),
    )
    .await
    .err()
    .map(|s| s.code());
    assert_eq!(refused, Some(Code::Unauthenticated));
    server.stop().await;
}

#[tokio::test]
async fn reconnect_to_a_restarted_control_plane_resends_nothing_unchanged() {
    let config = map([inbound(), endpoints("api", &[1, 2])]);
    let mut server = TestServer::start(config.clone()).await;
    let mut client = ClientState::new();
    let mut proxy = Proxy::connect(server.channel().await, subscribe(&client))
        .await
        .unwrap_or_else(|s| panic!("subscribe refused: {s}"));
    let first = proxy.recv().await.unwrap_or_else(|s| panic!("{s}"));
    let (answer, outcome) = client.handle(&first);
    assert_eq!(outcome, Ok(()));
    proxy.send(answer).await;
    assert!(matches!(server.next_answer().await, Req::Ack(_)));
    drop(proxy);
    server.stop().await;

    // A new control-plane process (new port, no memory of the proxy) computing the same config:
    // versions are content hashes, so everything the proxy holds is still current.
    let mut restarted = TestServer::start(config.clone()).await;
    let mut proxy = Proxy::connect(restarted.channel().await, subscribe(&client))
        .await
        .unwrap_or_else(|s| panic!("resubscribe refused: {s}"));
    let first = proxy.recv().await.unwrap_or_else(|s| panic!("{s}"));
    assert!(first.full_state);
    assert!(first.resources.is_empty());
    let mut unchanged = first.unchanged.clone();
    unchanged.sort();
    assert_eq!(unchanged, config.keys().cloned().collect::<Vec<_>>());
    let kept_version = client.version().to_owned();
    let (answer, outcome) = client.handle(&first);
    assert_eq!(outcome, Ok(()));
    assert_eq!(client.version(), kept_version);
    proxy.send(answer).await;
    assert!(matches!(restarted.next_answer().await, Req::Ack(_)));
    assert_eq!(client.resources(), &config);
    drop(proxy);
    restarted.stop().await;
}
