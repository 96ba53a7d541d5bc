//! A scripted fake operator (Discovery gRPC server on 127.0.0.1) and resource builders, shared by
//! the control and proxy process tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use weft_proxy_api::v1::discovery_request::Request as Req;
use weft_proxy_api::v1::discovery_server::{Discovery, DiscoveryServer};
use weft_proxy_api::v1::{self, DiscoveryRequest, DiscoveryResponse};

/// How long a test waits for anything before failing: a deadline, never a measurement, so it
/// is generous. A debug build of the proxy acknowledging `admin_bounds`' 3,000-service config
/// once took longer than 20 s on a 2-core machine that was also building and running CI.
pub const WAIT: Duration = Duration::from_secs(60);

/// What the fake operator saw from the proxy.
#[derive(Debug)]
pub enum Event {
    Subscribed(v1::Subscribe),
    Ack(v1::Ack),
    Nack(v1::Nack),
    StreamClosed,
}

type Outbox = mpsc::Sender<Result<DiscoveryResponse, Status>>;

#[derive(Clone)]
struct Fake {
    events: mpsc::Sender<Event>,
    /// The response stream of the latest subscription.
    current: Arc<Mutex<Option<Outbox>>>,
    /// Sent right after each Subscribe (the protocol's prompt first response), if set.
    on_subscribe: Arc<Mutex<Option<DiscoveryResponse>>>,
}

#[tonic::async_trait]
impl Discovery for Fake {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = requests.next().await {
                let event = match req.request {
                    Some(Req::Subscribe(s)) => {
                        *lock(&fake.current) = Some(tx.clone());
                        let first = lock(&fake.on_subscribe).clone();
                        let event = Event::Subscribed(s);
                        let _ = fake.events.send(event).await;
                        if let Some(first) = first {
                            let _ = tx.send(Ok(first)).await;
                        }
                        continue;
                    }
                    Some(Req::Ack(a)) => Event::Ack(a),
                    Some(Req::Nack(n)) => Event::Nack(n),
                    // On-demand requests: this fake serves everything (push-all).
                    Some(Req::Watch(_)) | Some(Req::Unwatch(_)) | None => continue,
                };
                let _ = fake.events.send(event).await;
            }
            let _ = fake.events.send(Event::StreamClosed).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Discovery server on 127.0.0.1 that records what the proxy sends and pushes what the test
/// says.
pub struct FakeOperator {
    pub addr: SocketAddr,
    fake: Fake,
    events: mpsc::Receiver<Event>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeOperator {
    /// Starts on `addr` (use port 0 for any free port).
    pub async fn start(addr: SocketAddr) -> Self {
        Self::start_with(addr, |routes| routes).await
    }

    /// Like [`FakeOperator::start`], with more services (e.g. Identity) on the same server.
    pub async fn start_with(addr: SocketAddr, more: impl FnOnce(Routes) -> Routes) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind fake operator");
        let addr = listener.local_addr().expect("local addr");
        let (events_tx, events) = mpsc::channel(64);
        let fake = Fake {
            events: events_tx,
            current: Arc::default(),
            on_subscribe: Arc::default(),
        };
        let routes = more(Routes::new(DiscoveryServer::new(fake.clone())));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            addr,
            fake,
            events,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer every future Subscribe with `resp` right away.
    pub fn reply_on_subscribe(&self, resp: DiscoveryResponse) {
        *lock(&self.fake.on_subscribe) = Some(resp);
    }

    /// Sends `resp` on the latest stream.
    pub async fn push(&self, resp: DiscoveryResponse) {
        let tx = lock(&self.fake.current)
            .clone()
            .expect("no proxy subscribed");
        tx.send(Ok(resp)).await.expect("stream closed");
    }

    /// Sends `resp` on the latest stream if it is still open.
    pub async fn try_push(&self, resp: DiscoveryResponse) {
        let current = lock(&self.fake.current).clone();
        if let Some(tx) = current {
            let _ = tx.send(Ok(resp)).await;
        }
    }

    /// The next thing the proxy did.
    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for the proxy")
            .expect("fake operator gone")
    }

    pub async fn expect_subscribe(&mut self) -> v1::Subscribe {
        loop {
            match self.next_event().await {
                Event::Subscribed(s) => return s,
                Event::StreamClosed => continue,
                other => panic!("expected Subscribe, got {other:?}"),
            }
        }
    }

    pub async fn expect_ack(&mut self) -> v1::Ack {
        match self.next_event().await {
            Event::Ack(a) => a,
            other => panic!("expected Ack, got {other:?}"),
        }
    }

    pub async fn expect_nack(&mut self) -> v1::Nack {
        match self.next_event().await {
            Event::Nack(n) => n,
            other => panic!("expected Nack, got {other:?}"),
        }
    }

    /// Stops like a crashed operator: the stream fails, the listener closes.
    pub async fn stop(self) -> SocketAddr {
        let current = lock(&self.fake.current).take();
        if let Some(tx) = current {
            let _ = tx.send(Err(Status::unavailable("operator stopping"))).await;
        }
        self.server.abort();
        let _ = self.server.await;
        self.addr
    }
}

// ---------------------------------------------------------------------------------------------
// Resource builders.

pub fn inbound(identity: &str) -> v1::Resource {
    v1::Resource {
        name: "inbound".into(),
        version: format!("in-{identity}"),
        kind: Some(v1::resource::Kind::Inbound(v1::InboundPolicy {
            identity: identity.into(),
            default_policy: v1::DefaultPolicy::Allow as i32,
            ports: vec![],
        })),
    }
}

/// `outbound:<name>.<ns>` on `port`, one route matching `path_regex` and a catch-all, both to
/// the `endpoints:<name>.<ns>:<port>` set.
pub fn outbound(ns: &str, name: &str, port: u32, path_regex: &str) -> v1::Resource {
    let set = format!("endpoints:{name}.{ns}:{port}");
    let backend = v1::WeightedBackend {
        service: name.into(),
        weight: 1,
        endpoint_set: set,
        ..Default::default()
    };
    v1::Resource {
        name: format!("outbound:{name}.{ns}"),
        version: format!("out-{path_regex}"),
        kind: Some(v1::resource::Kind::Outbound(v1::OutboundService {
            namespace: ns.into(),
            name: name.into(),
            cluster_ips: vec![],
            ports: vec![v1::OutboundPort {
                port,
                protocol: v1::Protocol::Http1 as i32,
                routes: vec![
                    v1::Route {
                        name: "api".into(),
                        matches: vec![v1::HttpMatch {
                            name: "api".into(),
                            path_regex: path_regex.into(),
                            methods: vec![],
                            headers: vec![],
                            ..Default::default()
                        }],
                        backends: vec![backend.clone()],
                        ..Default::default()
                    },
                    v1::Route {
                        name: "default".into(),
                        matches: vec![],
                        backends: vec![backend],
                        ..Default::default()
                    },
                ],
            }],
            policy: None,
        })),
    }
}

/// `endpoints:<name>.<ns>:<port>` with plain (unmeshed) endpoints on 127.0.0.1.
pub fn endpoints(ns: &str, name: &str, port: u32, app_ports: &[u16]) -> v1::Resource {
    v1::Resource {
        name: format!("endpoints:{name}.{ns}:{port}"),
        version: format!("ep-{app_ports:?}"),
        kind: Some(v1::resource::Kind::Endpoints(v1::EndpointSet {
            endpoints: app_ports
                .iter()
                .map(|p| v1::Endpoint {
                    ip: vec![127, 0, 0, 1],
                    port: u32::from(*p),
                    identity: String::new(),
                    inbound_port: 0,
                    pod: format!("{ns}/{name}-{p}"),
                    workload: String::new(),
                })
                .collect(),
        })),
    }
}

pub fn full_state(nonce: &str, version: &str, resources: Vec<v1::Resource>) -> DiscoveryResponse {
    DiscoveryResponse {
        nonce: nonce.into(),
        version: version.into(),
        full_state: true,
        resources,
        removed: vec![],
        unchanged: vec![],
        ..Default::default()
    }
}

pub fn incremental(
    nonce: &str,
    version: &str,
    resources: Vec<v1::Resource>,
    removed: Vec<&str>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        nonce: nonce.into(),
        version: version.into(),
        full_state: false,
        resources,
        removed: removed.into_iter().map(String::from).collect(),
        unchanged: vec![],
        ..Default::default()
    }
}
