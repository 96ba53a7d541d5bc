//! The operator runtime in `--manifests` mode, driven in-process on loopback with real gRPC
//! clients: first response, pushes after file edits, ACK/NACK in `/proxies`, coalescing,
//! deletes, malformed files, status conditions, reconnects and shutdown.

mod runtime_support;

use runtime_support::*;
use weft_operator::runtime::{Runtime, RuntimeConfig};

async fn start(dir: &std::path::Path) -> Runtime {
    let runtime = Runtime::start(RuntimeConfig::manifests_on_loopback(dir))
        .await
        .expect("runtime starts");
    until(runtime.admin_addr, "/ready", |code, _| code == 200).await;
    runtime
}

fn weights(w1: u64, w2: u64) -> Vec<(String, u64)> {
    vec![("web-v1".to_string(), w1), ("web-v2".to_string(), w2)]
}

#[tokio::test]
async fn first_response_then_incremental_push_after_edit_and_ack_in_proxies() {
    let dir = mesh_dir();
    let rt = start(dir.path()).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "web-0").await;

    let first = proxy.next().await;
    assert!(first.full_state);
    assert!(!first.version.is_empty());
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains(&"inbound"), "{names:?}");
    assert!(names.contains(&"outbound:web.demo"), "{names:?}");
    assert_eq!(split_weights(&first), Some(weights(100, 0)));
    proxy.ack(&first).await;

    write_atomic(&dir.path().join("split.yaml"), &split(20, 80));
    let push = proxy.next().await;
    assert!(!push.full_state);
    assert_ne!(push.version, first.version);
    assert_eq!(split_weights(&push), Some(weights(20, 80)));
    // Only what changed is sent: the inbound policy did not.
    assert!(push.resources.iter().all(|r| r.name != "inbound"));
    proxy.ack(&push).await;

    let version = push.version.clone();
    let body = until(rt.admin_addr, "/proxies", |_, b| b.contains(&version)).await;
    let proxies: serde_json::Value = serde_json::from_str(&body).expect("json");
    let entry = &proxies[0];
    assert_eq!(entry["pod"], "demo/web-0");
    assert_eq!(entry["identity"], "spiffe://cluster.local/ns/demo/sa/web");
    assert!(entry["connected_since"].as_str().is_some());
    until(rt.admin_addr, "/proxies", |_, b| {
        let v: serde_json::Value = serde_json::from_str(b).unwrap_or_default();
        v[0]["last_acked_version"] == version.as_str()
            && v[0]["last_sent_version"] == version.as_str()
    })
    .await;

    let (_, metrics) = get(rt.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("weft_operator_discovery_connected_proxies 1"),
        "{metrics}"
    );
    assert!(metrics.contains("weft_operator_discovery_push_to_ack_seconds_count"));

    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn nack_is_recorded_and_the_rejected_version_is_not_resent() {
    let dir = mesh_dir();
    let rt = start(dir.path()).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "web-0").await;
    let first = proxy.next().await;
    proxy
        .nack(&first, "outbound \"web.demo\": invalid route")
        .await;

    until(rt.admin_addr, "/proxies", |_, b| {
        b.contains("outbound \\\"web.demo\\\": invalid route")
    })
    .await;
    let (_, metrics) = get(rt.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("weft_operator_discovery_nacks_total 1"),
        "{metrics}"
    );

    // The next change is sent as full state (the proxy kept its previous config).
    write_atomic(&dir.path().join("split.yaml"), &split(50, 50));
    let next = proxy.next().await;
    assert!(next.full_state);
    assert_eq!(split_weights(&next), Some(weights(50, 50)));
    proxy.ack(&next).await;
    until(rt.admin_addr, "/proxies", |_, b| {
        let v: serde_json::Value = serde_json::from_str(b).unwrap_or_default();
        v[0]["last_nack_error"].is_null() && v[0]["last_acked_version"] == next.version.as_str()
    })
    .await;
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn first_message_must_be_subscribe() {
    let dir = mesh_dir();
    let rt = start(dir.path()).await;
    let ack = weft_proxy_api::v1::DiscoveryRequest {
        request: Some(weft_proxy_api::v1::discovery_request::Request::Ack(
            weft_proxy_api::v1::Ack::default(),
        )),
    };
    let err = match Proxy::open(rt.discovery_addr, ack).await {
        Ok(mut p) => p.rx.message().await.expect_err("stream refused"),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = match Proxy::open(rt.discovery_addr, subscribe("", "", &[])).await {
        Ok(mut p) => p.rx.message().await.expect_err("stream refused"),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_burst_of_edits_is_coalesced_and_ends_in_the_final_state() {
    let dir = mesh_dir();
    let rt = start(dir.path()).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "web-0").await;
    let first = proxy.next().await;
    proxy.ack(&first).await;

    let path = dir.path().join("split.yaml");
    for i in 1..=100u64 {
        write_atomic(&path, &split(100 - i, i));
    }
    let mut pushes = 0;
    loop {
        let r = proxy.next().await;
        pushes += 1;
        proxy.ack(&r).await;
        if split_weights(&r) == Some(weights(0, 100)) {
            break;
        }
    }
    assert!(pushes < 50, "100 edits gave {pushes} pushes");
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn deleting_a_file_removes_its_objects() {
    let dir = mesh_dir();
    let rt = start(dir.path()).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "web-0").await;
    let first = proxy.next().await;
    assert!(split_weights(&first).is_some());
    proxy.ack(&first).await;

    std::fs::remove_file(dir.path().join("services.yaml")).expect("remove");
    let push = proxy.next().await;
    assert!(!push.full_state);
    assert!(
        push.removed.iter().any(|n| n == "outbound:web.demo"),
        "{:?}",
        push.removed
    );
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_malformed_file_keeps_the_last_good_config_and_is_reported() {
    let dir = mesh_dir();
    let rt = start(dir.path()).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "web-0").await;
    let first = proxy.next().await;
    proxy.ack(&first).await;
    let generation = rt.snapshot().expect("snapshot").generation;

    write_atomic(
        &dir.path().join("split.yaml"),
        "kind: TrafficSplit\nspec: [unclosed\n",
    );
    let body = until(rt.admin_addr, "/status", |_, b| b.contains("split.yaml")).await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        status["sourceErrors"]["split.yaml"].as_str().is_some(),
        "{status}"
    );
    let (code, ready) = get(rt.admin_addr, "/ready").await;
    assert_eq!(code, 200);
    assert!(ready.contains("split.yaml"), "{ready}");
    let (_, metrics) = get(rt.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("weft_operator_manifest_errors 1"),
        "{metrics}"
    );
    // Nothing was recompiled from the broken file.
    assert_eq!(rt.snapshot().expect("snapshot").generation, generation);

    // A later good edit applies.
    write_atomic(&dir.path().join("split.yaml"), &split(30, 70));
    let push = proxy.next().await;
    assert_eq!(split_weights(&push), Some(weights(30, 70)));
    until(rt.admin_addr, "/status", |_, b| !b.contains("split.yaml")).await;
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn status_conditions_are_computed_and_served() {
    let dir = mesh_dir();
    write_atomic(
        &dir.path().join("split.yaml"),
        &split(100, 0).replace("web-v2", "web-missing"),
    );
    let rt = start(dir.path()).await;
    let body = until(rt.admin_addr, "/status", |_, b| b.contains("TrafficSplit")).await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    let split = status["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["object"]["kind"] == "TrafficSplit")
        .expect("split status");
    assert_eq!(split["object"]["name"], "canary");
    assert_eq!(split["apiVersion"], "split.smi-spec.io/v1alpha4");
    let conditions = split["conditions"].as_array().expect("conditions");
    let resolved = conditions
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .expect("ResolvedRefs");
    assert_eq!(resolved["status"], "False", "{resolved}");
    assert!(
        resolved["message"]
            .as_str()
            .unwrap_or("")
            .contains("web-missing"),
        "{resolved}"
    );
    assert!(resolved["lastTransitionTime"].as_str().is_some());
    assert!(conditions.iter().any(|c| c["type"] == "Accepted"));
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn reconnect_with_known_versions_gets_unchanged() {
    let dir = mesh_dir();
    let rt = start(dir.path()).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "web-0").await;
    let first = proxy.next().await;
    proxy.ack(&first).await;
    drop(proxy);

    let known: Vec<(String, String)> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let known_ref: Vec<(&str, &str)> = known
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut again = Proxy::open(rt.discovery_addr, subscribe("demo", "web-0", &known_ref))
        .await
        .expect("stream");
    let r = again.next().await;
    assert!(r.full_state);
    assert!(r.resources.is_empty(), "{:?}", r.resources);
    assert_eq!(r.unchanged.len(), first.resources.len());
    assert_eq!(r.version, first.version);
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn unknown_pod_gets_a_default_config_and_shutdown_closes_with_unavailable() {
    let dir = mesh_dir();
    let rt = start(dir.path()).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "not-yet-there").await;
    let first = proxy.next().await;
    assert!(first.full_state);
    assert!(first.resources.iter().any(|r| r.name == "inbound"));

    rt.shutdown();
    let end = tokio::time::timeout(WAIT, proxy.rx.message())
        .await
        .expect("stream ended");
    match end {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        Ok(other) => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    rt.wait().await.expect("clean shutdown");
}
