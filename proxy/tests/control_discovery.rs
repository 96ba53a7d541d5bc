//! The real discovery client against an in-process fake operator on 127.0.0.1.

mod control_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use control_support::*;
use tokio::sync::watch;
use weft_proxy::config::{self, Config};
use weft_proxy::control::{Backoff, DiscoveryClient, ProxyId, Settings, Status};

struct Proxy {
    config: watch::Receiver<Arc<Config>>,
    status: watch::Receiver<Status>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_client(uri: String) -> Proxy {
    start_client_with(uri, |_| {})
}

fn start_client_with(uri: String, tweak: impl FnOnce(&mut Settings)) -> Proxy {
    let mut settings = Settings::new(
        uri,
        ProxyId {
            pod_namespace: "demo".into(),
            pod_name: "client-0".into(),
            service_account: "client".into(),
        },
    );
    settings.backoff = Backoff {
        min: Duration::from_millis(10),
        max: Duration::from_millis(200),
    };
    tweak(&mut settings);
    let (tx, rx) = config::channel();
    let client = DiscoveryClient::new(settings, tx);
    let status = client.status();
    Proxy {
        config: rx,
        status,
        task: tokio::spawn(client.run()),
    }
}

async fn wait_config(proxy: &mut Proxy, version: &str) -> Arc<Config> {
    let cfg = tokio::time::timeout(WAIT, proxy.config.wait_for(|c| c.version == version))
        .await
        .expect("timed out waiting for config")
        .expect("config channel closed");
    Arc::clone(&cfg)
}

async fn wait_status(proxy: &mut Proxy, what: impl FnMut(&Status) -> bool) -> Status {
    tokio::time::timeout(WAIT, proxy.status.wait_for(what))
        .await
        .expect("timed out waiting for status")
        .expect("status channel closed")
        .clone()
}

fn v1_resources() -> Vec<weft_proxy_api::v1::Resource> {
    vec![
        inbound("spiffe://cluster.local/ns/demo/sa/client"),
        outbound("demo", "web", 80, "/api"),
        endpoints("demo", "web", 80, &[8080]),
    ]
}

async fn connected_with_v1() -> (FakeOperator, Proxy) {
    let mut op = FakeOperator::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut proxy = start_client(op.uri());
    let sub = op.expect_subscribe().await;
    assert_eq!(sub.pod_namespace, "demo");
    assert_eq!(sub.pod_name, "client-0");
    assert_eq!(sub.service_account, "client");
    assert_eq!(sub.proxy_version, env!("CARGO_PKG_VERSION"));
    assert!(sub.known_versions.is_empty());
    op.push(full_state("n1", "v1", v1_resources())).await;
    let ack = op.expect_ack().await;
    assert_eq!((ack.nonce.as_str(), ack.version.as_str()), ("n1", "v1"));
    wait_config(&mut proxy, "v1").await;
    (op, proxy)
}

#[tokio::test]
async fn first_config_is_applied_and_acked() {
    let (_op, mut proxy) = connected_with_v1().await;
    let cfg = proxy.config.borrow().clone();
    assert_eq!(cfg.version, "v1");
    assert_eq!(
        cfg.inbound.identity,
        "spiffe://cluster.local/ns/demo/sa/client"
    );
    let web = cfg.service("demo", "web").expect("web.demo in config");
    assert_eq!(web.ports[0].port, 80);
    let status = wait_status(&mut proxy, |s| s.connected).await;
    assert_eq!(status.version.as_deref(), Some("v1"));
    assert_eq!(status.updates, 1);
    assert_eq!(status.last_nack, None);
}

#[tokio::test]
async fn invalid_update_is_nacked_and_the_old_config_kept() {
    let (mut op, mut proxy) = connected_with_v1().await;

    op.push(incremental(
        "n2",
        "v2",
        vec![outbound("demo", "web", 80, "/api/(unclosed")],
        vec![],
    ))
    .await;
    let nack = op.expect_nack().await;
    assert_eq!(nack.nonce, "n2");
    assert_eq!(nack.kept_version, "v1");
    assert!(nack.error.contains("path_regex"), "{}", nack.error);
    assert_eq!(nack.resource_names, ["outbound:web.demo"]);

    let status = wait_status(&mut proxy, |s| s.nacks == 1).await;
    assert_eq!(status.version.as_deref(), Some("v1"));
    assert!(status
        .last_nack
        .as_deref()
        .unwrap_or("")
        .contains("path_regex"));
    assert_eq!(proxy.config.borrow().version, "v1");

    // A later valid update applies on top of v1 (not of the rejected v2), and clears the NACK.
    op.push(incremental(
        "n3",
        "v3",
        vec![outbound("demo", "api", 8080, "/")],
        vec![],
    ))
    .await;
    let ack = op.expect_ack().await;
    assert_eq!((ack.nonce.as_str(), ack.version.as_str()), ("n3", "v3"));
    let cfg = wait_config(&mut proxy, "v3").await;
    let web = cfg.service("demo", "web").expect("web.demo kept");
    let api_match = &web.ports[0].routes[0].matches[0];
    let re = api_match.path.as_ref().expect("path regex");
    assert!(
        re.is_match("/api/users"),
        "web.demo still routes with v1's regex"
    );
    assert!(cfg.service("demo", "api").is_some());
    let status = wait_status(&mut proxy, |s| s.version.as_deref() == Some("v3")).await;
    assert_eq!(status.last_nack, None);
}

#[tokio::test]
async fn pushes_after_a_change_add_replace_and_remove() {
    let (op, mut proxy) = connected_with_v1().await;
    let mut op = op;
    op.push(incremental(
        "n2",
        "v2",
        vec![endpoints("demo", "web", 80, &[8080, 8081])],
        vec![],
    ))
    .await;
    op.expect_ack().await;
    let cfg = wait_config(&mut proxy, "v2").await;
    let web = cfg.service("demo", "web").expect("web.demo");
    assert_eq!(
        web.ports[0].routes[0].backends[0].endpoints.endpoints.len(),
        2
    );

    op.push(incremental("n3", "v3", vec![], vec!["outbound:web.demo"]))
        .await;
    op.expect_ack().await;
    let cfg = wait_config(&mut proxy, "v3").await;
    assert!(cfg.service("demo", "web").is_none());
}

#[tokio::test]
async fn reconnects_with_known_versions_and_keeps_config_meanwhile() {
    let (op, mut proxy) = connected_with_v1().await;
    let addr = op.stop().await;

    // Away: disconnected, still serving v1.
    let status = wait_status(&mut proxy, |s| !s.connected && s.reconnects >= 1).await;
    assert_eq!(status.version.as_deref(), Some("v1"));
    assert_eq!(proxy.config.borrow().version, "v1");
    assert!(proxy.config.borrow().service("demo", "web").is_some());

    // Back on the same address: the proxy reports what it holds.
    let mut op = FakeOperator::start(addr).await;
    let sub = op.expect_subscribe().await;
    let expected: BTreeMap<String, String> = v1_resources()
        .into_iter()
        .map(|r| (r.name, r.version))
        .collect();
    assert_eq!(sub.known_versions, expected);

    // Full state keeping two resources as they are, replacing the endpoints.
    let mut resp = full_state("m1", "v2", vec![endpoints("demo", "web", 80, &[9090])]);
    resp.unchanged = vec!["inbound".into(), "outbound:web.demo".into()];
    op.push(resp).await;
    let ack = op.expect_ack().await;
    assert_eq!((ack.nonce.as_str(), ack.version.as_str()), ("m1", "v2"));
    let cfg = wait_config(&mut proxy, "v2").await;
    let web = cfg.service("demo", "web").expect("kept as unchanged");
    let eps = &web.ports[0].routes[0].backends[0].endpoints.endpoints;
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].addr.port(), 9090);
    let status = wait_status(&mut proxy, |s| s.connected).await;
    assert!(status.reconnects >= 1);

    // A full state drops whatever it does not list.
    op.push(full_state(
        "m2",
        "v3",
        vec![inbound("spiffe://x/ns/demo/sa/client")],
    ))
    .await;
    op.expect_ack().await;
    let cfg = wait_config(&mut proxy, "v3").await;
    assert!(cfg.service("demo", "web").is_none());
}

#[tokio::test]
async fn silent_operator_is_left_and_retried() {
    let mut op = FakeOperator::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut proxy = start_client_with(op.uri(), |s| {
        s.first_response_timeout = Duration::from_millis(200);
    });
    // The operator accepts the subscription but never answers: the client gives up on that
    // stream and subscribes again, still without a config.
    op.expect_subscribe().await;
    op.expect_subscribe().await;
    let status = wait_status(&mut proxy, |s| s.reconnects >= 1).await;
    assert!(!status.connected);
    assert_eq!(status.version, None);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{status:?}"
    );
    assert_eq!(proxy.config.borrow().version, "");

    // Answering now works as usual (on the current stream, or on the next one if the client
    // just gave up on it).
    op.reply_on_subscribe(full_state("n1", "v1", v1_resources()));
    op.try_push(full_state("n1", "v1", v1_resources())).await;
    wait_config(&mut proxy, "v1").await;
}
