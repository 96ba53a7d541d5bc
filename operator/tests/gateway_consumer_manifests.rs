//! Gateway API consumer routes through the operator in `--manifests` mode, with real gRPC
//! discovery streams on loopback: a proxy in the consumer route's namespace is sent the consumer
//! variant of the Service's outbound resource (and not the shared one), a proxy elsewhere the
//! shared one; deleting the route gives the consumer's proxy the shared resource back.

mod runtime_support;

use runtime_support::*;
use weft_operator::runtime::{Runtime, RuntimeConfig};
use weft_proxy_api::v1;

/// A route's name and its backends' services.
type RouteBackends = (String, Vec<String>);

/// The routes of the outbound resource for `demo/web` in a response: (resource name, routes).
fn web_routes(r: &v1::DiscoveryResponse) -> Vec<(String, Vec<RouteBackends>)> {
    r.resources
        .iter()
        .filter_map(|res| match &res.kind {
            Some(v1::resource::Kind::Outbound(o)) if o.namespace == "demo" && o.name == "web" => {
                let routes = o
                    .ports
                    .iter()
                    .flat_map(|p| &p.routes)
                    .map(|rt| {
                        (
                            rt.name.clone(),
                            rt.backends.iter().map(|b| b.service.clone()).collect(),
                        )
                    })
                    .collect();
                Some((res.name.clone(), routes))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_consumer_route_reaches_only_the_proxies_of_its_namespace() {
    let dir = mesh_dir();
    write_atomic(&dir.path().join("client.yaml"), CLIENT);
    write_atomic(&dir.path().join("route.yaml"), CONSUMER_ROUTE);
    let rt = Runtime::start(RuntimeConfig::manifests_on_loopback(dir.path()))
        .await
        .expect("runtime starts");
    until(rt.admin_addr, "/ready", |code, _| code == 200).await;

    let mut caller = Proxy::open(rt.discovery_addr, subscribe("client", "caller", &[]))
        .await
        .expect("discovery stream");
    let first = caller.next().await;
    assert!(first.full_state);
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(!names.contains(&"outbound:web.demo"), "{names:?}");
    assert_eq!(
        web_routes(&first),
        vec![(
            "outbound:web.demo@client".to_string(),
            vec![(
                "httproute:client/to-v2/rule-0".to_string(),
                vec!["web-v2".to_string()]
            )]
        )],
        "the consumer's proxy: the consumer route, to web-v2"
    );
    caller.ack(&first).await;

    // A proxy in the Service's own namespace: the shared resource, with the SMI split.
    let mut server = Proxy::connect(rt.discovery_addr, "web-0").await;
    let other = server.next().await;
    let routes = web_routes(&other);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].0, "outbound:web.demo");
    assert!(routes[0].1[0].0.starts_with("split:"), "{routes:?}");
    assert!(other
        .resources
        .iter()
        .all(|r| r.name != "outbound:web.demo@client"));
    assert_eq!(
        split_weights(&other),
        Some(vec![("web-v1".to_string(), 100), ("web-v2".to_string(), 0)])
    );

    // The route goes: the consumer's proxy is told to drop the variant and gets the shared
    // resource.
    std::fs::remove_file(dir.path().join("route.yaml")).expect("remove route");
    let push = caller.next().await;
    assert!(!push.full_state);
    assert!(
        push.removed.iter().any(|n| n == "outbound:web.demo@client"),
        "{:?}",
        push.removed
    );
    let routes = web_routes(&push);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].0, "outbound:web.demo");

    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}
