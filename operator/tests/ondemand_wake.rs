//! On-demand discovery streams act only on changes to what they watch (issue #19): the operator
//! in `--manifests` mode with `--discovery-mode on-demand`, driven in-process on loopback with
//! real gRPC streams. A stream keeps its view without rebuilding it when a snapshot changes
//! nothing it depends on; these tests check the outcomes of that shortcut: a change to a
//! watched Service reaches the stream, whether it arrives through the Service's name, its
//! ClusterIP (`ip:` watches, including an address that only later gets a Service) or a
//! Gateway API consumer variant; a change to an unrelated Service sends nothing.

mod runtime_support;

use runtime_support::*;
use weft_operator::discovery::DiscoveryMode;
use weft_operator::runtime::{Runtime, RuntimeConfig};
use weft_proxy_api::v1;
use weft_proxy_api::v1::discovery_request::Request as Req;

async fn start(dir: &std::path::Path) -> Runtime {
    let mut config = RuntimeConfig::manifests_on_loopback(dir);
    config.discovery_mode = DiscoveryMode::OnDemand;
    let runtime = Runtime::start(config).await.expect("runtime starts");
    until(runtime.admin_addr, "/ready", |code, _| code == 200).await;
    runtime
}

/// An on-demand stream of pod `ns/pod` watching `watch` from the start; its first response
/// (ACKed).
async fn on_demand(
    rt: &Runtime,
    ns: &str,
    pod: &str,
    watch: &[&str],
) -> (Proxy, v1::DiscoveryResponse) {
    let mut proxy = Proxy::open(
        rt.discovery_addr,
        v1::DiscoveryRequest {
            request: Some(Req::Subscribe(v1::Subscribe {
                pod_namespace: ns.into(),
                pod_name: pod.into(),
                service_account: "web".into(),
                proxy_version: "test".into(),
                on_demand: true,
                watch: watch.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            })),
        },
    )
    .await
    .expect("discovery stream");
    let first = proxy.next().await;
    assert!(first.full_state && first.on_demand, "{first:?}");
    proxy.ack(&first).await;
    (proxy, first)
}

/// Watches `name`; the next response is the answer (ACKed).
async fn watch(proxy: &mut Proxy, name: &str) -> v1::DiscoveryResponse {
    proxy
        .tx
        .send(v1::DiscoveryRequest {
            request: Some(Req::Watch(v1::Watch {
                names: vec![name.to_string()],
            })),
        })
        .await
        .expect("send watch");
    let r = proxy.next().await;
    proxy.ack(&r).await;
    r
}

fn names(r: &v1::DiscoveryResponse) -> Vec<&str> {
    let mut n: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
    n.sort();
    n
}

/// The addresses of endpoint set `set` in `r`, if it carries it.
fn endpoint_ips(r: &v1::DiscoveryResponse, set: &str) -> Option<Vec<Vec<u8>>> {
    let res = r.resources.iter().find(|x| x.name == set)?;
    let Some(v1::resource::Kind::Endpoints(eps)) = &res.kind else {
        return None;
    };
    Some(eps.endpoints.iter().map(|e| e.ip.clone()).collect())
}

/// The Service an `ip:` resolution in `r` names, if `r` carries it.
fn resolution(r: &v1::DiscoveryResponse, name: &str) -> Option<String> {
    let res = r.resources.iter().find(|x| x.name == name)?;
    match &res.kind {
        Some(v1::resource::Kind::Ip(ip)) => Some(ip.service.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn only_changes_to_what_a_stream_watches_reach_it_by_name_address_or_consumer_variant() {
    let dir = mesh_dir();
    write_atomic(&dir.path().join("client.yaml"), CLIENT);
    let rt = start(dir.path()).await;

    // By name; by address (web-v2's ClusterIP, and one no Service has yet); in a consumer
    // namespace, by name.
    let (mut by_name, first) = on_demand(&rt, "demo", "web-0", &["outbound:web.demo"]).await;
    // web's TrafficSplit sends to web-v1 and web-v2: their endpoints come with it.
    assert_eq!(
        names(&first),
        vec![
            "endpoints:web-v1.demo:80",
            "endpoints:web-v2.demo:80",
            "endpoints:web.demo:80",
            "inbound",
            "outbound:web.demo"
        ]
    );
    let (mut by_ip, first) =
        on_demand(&rt, "demo", "web-1", &["ip:10.96.0.12", "ip:10.96.0.30"]).await;
    assert_eq!(
        resolution(&first, "ip:10.96.0.12").as_deref(),
        Some("outbound:web-v2.demo")
    );
    assert_eq!(resolution(&first, "ip:10.96.0.30").as_deref(), Some(""));
    assert!(endpoint_ips(&first, "endpoints:web-v2.demo:80").is_some());
    let (mut consumer, first) = on_demand(&rt, "client", "caller", &["outbound:web.demo"]).await;
    assert!(names(&first).contains(&"outbound:web.demo"), "{first:?}");
    // A push-all stream: the witness that the operator compiled a change.
    let mut witness = Proxy::connect(rt.discovery_addr, "web-0").await;
    let w = witness.next().await;
    witness.ack(&w).await;

    // An unrelated Service appears: the push-all stream gets it; an on-demand stream's next
    // response is the answer to a later Watch, carrying just what that Watch added.
    write_atomic(
        &dir.path().join("unrelated.yaml"),
        &service("unrelated", "app: nobody", 40),
    );
    let w = witness.next().await;
    assert!(
        names(&w).contains(&"outbound:unrelated.demo"),
        "{:?}",
        names(&w)
    );
    witness.ack(&w).await;
    for (proxy, what) in [
        (&mut by_name, "by name"),
        (&mut by_ip, "by address"),
        (&mut consumer, "consumer"),
    ] {
        let answer = watch(proxy, "outbound:web-v1.demo").await;
        let got = names(&answer);
        assert!(
            got.contains(&"outbound:web-v1.demo")
                && got
                    .iter()
                    .all(|n| ["outbound:web-v1.demo", "endpoints:web-v1.demo:80"].contains(n)),
            "{what}: the unrelated change was sent, or the Watch was not answered first: {got:?}"
        );
    }

    // web-1 moves to another address: the endpoints of web and web-v2 change; every stream
    // that watches them, by name or by address, gets the new endpoints.
    write_atomic(
        &dir.path().join("base.yaml"),
        &BASE.replace("127.0.0.12", "127.0.0.13"),
    );
    let moved = vec![127, 0, 0, 13];
    for (proxy, set, what) in [
        (&mut by_name, "endpoints:web.demo:80", "by name"),
        (&mut by_ip, "endpoints:web-v2.demo:80", "by address"),
        (&mut consumer, "endpoints:web.demo:80", "consumer"),
    ] {
        let push = proxy.next().await;
        assert!(!push.full_state);
        let ips = endpoint_ips(&push, set).unwrap_or_else(|| panic!("{what}: {push:?}"));
        assert!(ips.contains(&moved), "{what}: {ips:?}");
        proxy.ack(&push).await;
    }

    // A Service takes the address nobody had: the stream that watches that address learns it
    // (the Service's name was in nothing the stream held).
    write_atomic(
        &dir.path().join("late.yaml"),
        &service("late", "app: web", 30),
    );
    let push = by_ip.next().await;
    assert_eq!(
        resolution(&push, "ip:10.96.0.30").as_deref(),
        Some("outbound:late.demo"),
        "{push:?}"
    );
    assert!(names(&push).contains(&"outbound:late.demo"), "{push:?}");
    by_ip.ack(&push).await;

    // A consumer route on web in the caller's namespace: the caller's stream gets the variant
    // in place of the shared resource.
    write_atomic(&dir.path().join("route.yaml"), CONSUMER_ROUTE);
    let push = consumer.next().await;
    assert!(
        names(&push).contains(&"outbound:web.demo@client"),
        "{push:?}"
    );
    assert!(
        push.removed.iter().any(|n| n == "outbound:web.demo"),
        "{:?}",
        push.removed
    );
    consumer.ack(&push).await;

    // The stream in the Service's own namespace got nothing from it: its next response is the
    // answer to a Watch.
    let answer = watch(&mut by_name, "outbound:web-v2.demo").await;
    assert_eq!(names(&answer), vec!["outbound:web-v2.demo"]);

    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

/// A meshed pod addressed by its IP (what a headless Service or a StatefulSet pod's name
/// resolves to): the `ip:` resolution names no Service, and the endpoint set that holds the pod
/// comes with it (the pod's identity, so the proxy tunnels over mTLS to that pod), never the
/// Service's routing. When the pod moves, the stream watching its old address loses the set and
/// the one watching the new address (which depended on no name) gains it.
#[tokio::test]
async fn a_meshed_pods_ip_brings_the_endpoint_set_that_holds_it_and_follows_the_pod() {
    let dir = mesh_dir();
    write_atomic(&dir.path().join("client.yaml"), CLIENT);
    let rt = start(dir.path()).await;

    // web-1 (127.0.0.12) is an endpoint of web and web-v2; the first set in name order answers.
    let (mut old, first) = on_demand(&rt, "demo", "web-0", &["ip:127.0.0.12"]).await;
    assert_eq!(resolution(&first, "ip:127.0.0.12").as_deref(), Some(""));
    assert_eq!(
        names(&first),
        vec!["endpoints:web-v2.demo:80", "inbound", "ip:127.0.0.12"]
    );
    let (mut new, first) = on_demand(&rt, "client", "caller", &["ip:127.0.0.13"]).await;
    assert_eq!(names(&first), vec!["inbound", "ip:127.0.0.13"]);

    write_atomic(
        &dir.path().join("base.yaml"),
        &BASE.replace("127.0.0.12", "127.0.0.13"),
    );
    let push = new.next().await;
    assert_eq!(
        endpoint_ips(&push, "endpoints:web-v2.demo:80"),
        Some(vec![vec![127, 0, 0, 13]]),
        "{push:?}"
    );
    assert_eq!(
        resolution(&push, "ip:127.0.0.13"),
        None,
        "unchanged: {push:?}"
    );
    new.ack(&push).await;
    let push = loop {
        let p = old.next().await;
        old.ack(&p).await;
        if !p.removed.is_empty() {
            break p;
        }
    };
    assert_eq!(push.removed, vec!["endpoints:web-v2.demo:80".to_string()]);

    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}
