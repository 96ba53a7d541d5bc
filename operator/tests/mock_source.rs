//! The Kubernetes source and the one reconcile loop together, against a mocked API server:
//! discovery, one list per watched kind, and the first snapshot held until every watcher has
//! listed. Time is the runtime's paused clock.

mod mock_api;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::sync::watch;
use weft_operator::admin::Health;
use weft_operator::compile::{CompileOptions, Compiler};
use weft_operator::discovery::snapshot_channel;
use weft_operator::model::Model;
use weft_operator::shutdown::Shutdown;
use weft_operator::source::kube::{KubeSource, SourceMetrics};
use weft_operator::source::reconcile::{Reconciler, RuntimeMetrics};
use weft_operator::source::Source;
use weft_operator::status::StatusBoard;

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

/// What the API server answers to every request but the watches (held open) and the Service
/// list (answered by the test).
fn answer(path: &str) -> Value {
    answer_with(path, true)
}

/// [`answer`], with the split group served or not (its CRD not installed yet).
fn answer_with(path: &str, split_served: bool) -> Value {
    match path {
        "/apis" if !split_served => {
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        }
        // No Gateway API CRDs installed: HTTPRoutes are not watched.
        "/apis/gateway.networking.k8s.io/v1" => json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "gateway.networking.k8s.io/v1", "resources": [],
        }),
        "/apis/discovery.k8s.io/v1" => json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
            "resources": [{"name": "endpointslices", "singularName": "endpointslice",
                           "namespaced": true, "kind": "EndpointSlice", "verbs": ["list", "watch"]}],
        }),
        // Only the split group is served: the other SMI kinds are not watched.
        "/apis" => json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": [{
                "name": "split.smi-spec.io",
                "versions": [{"groupVersion": "split.smi-spec.io/v1alpha4", "version": "v1alpha4"}],
                "preferredVersion": {"groupVersion": "split.smi-spec.io/v1alpha4", "version": "v1alpha4"},
            }],
        }),
        "/apis/split.smi-spec.io/v1alpha4" => json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "split.smi-spec.io/v1alpha4",
            "resources": [{"name": "trafficsplits", "singularName": "trafficsplit", "namespaced": true,
                           "kind": "TrafficSplit", "verbs": ["get", "list", "watch"]}],
        }),
        "/api/v1/namespaces" => list(
            "v1",
            "NamespaceList",
            vec![json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
            })],
        ),
        "/api/v1/serviceaccounts" => list("v1", "ServiceAccountList", vec![]),
        "/api/v1/pods" => list("v1", "PodList", vec![]),
        "/apis/discovery.k8s.io/v1/endpointslices" => {
            list("discovery.k8s.io/v1", "EndpointSliceList", vec![])
        }
        "/apis/split.smi-spec.io/v1alpha4/trafficsplits" => list(
            "split.smi-spec.io/v1alpha4",
            "TrafficSplitList",
            vec![json!({
                "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
                "metadata": {"name": "web", "namespace": "shop", "generation": 1},
                "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": 100}]},
            })],
        ),
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions" => json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": {"resourceVersion": "1"}, "items": [],
        }),
        other => panic!("unexpected request for {other}"),
    }
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.0.0.7", "ports": [{"port": 80}]},
    })
}

#[tokio::test(start_paused = true)]
async fn the_first_snapshot_waits_for_every_watcher_and_holds_the_whole_cluster() {
    let (client, mut server) = mock_api::client();
    let (snap_tx, mut snapshots) = snapshot_channel();
    let (status_tx, statuses) = watch::channel(Arc::new(Vec::new()));
    let health = Arc::new(Health::new());
    let reconciler = Reconciler::new(
        Model::new(),
        Compiler::new(CompileOptions::default()),
        snap_tx,
        Arc::new(StatusBoard::new()),
        health.clone(),
        RuntimeMetrics::default(),
    )
    .with_statuses(status_tx);
    let (trigger, shutdown) = Shutdown::new();
    let (tx, rx) = weft_operator::source::channel();
    let source = KubeSource {
        client,
        metrics: SourceMetrics::default(),
    };
    let source_task = tokio::spawn(source.run(tx, shutdown.clone()));
    let loop_task = tokio::spawn(weft_operator::source::reconcile::run(
        reconciler, rx, shutdown,
    ));

    // Answer everything but the Service list; watches stay open (held, unanswered). Until
    // every task is idle (the paused clock moves only then): every other watcher has listed.
    let mut open = Vec::new();
    let mut services = None;
    loop {
        tokio::select! {
            call = server.next() => {
                assert_eq!(call.method, Method::GET, "{}", call.path);
                if call.param("watch") == Some("true") {
                    open.push(call);
                } else if call.path == "/api/v1/services" {
                    assert!(services.is_none(), "the Service list asked twice");
                    services = Some(call);
                } else {
                    let body = answer(&call.path);
                    call.ok(body);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => break,
        }
    }
    let services = services.expect("the Service watcher lists");
    for listed in [
        "/api/v1/namespaces",
        "/api/v1/pods",
        "/apis/split.smi-spec.io/v1alpha4/trafficsplits",
    ] {
        assert!(
            open.iter().any(|c| c.path == listed),
            "{listed} listed, then watched"
        );
    }
    // And still no snapshot: the Service watcher has not listed.
    assert!(
        snapshots.borrow().is_none(),
        "compiled before every watcher listed"
    );

    services.ok(list("v1", "ServiceList", vec![service()]));
    snapshots.changed().await.unwrap();
    assert_eq!(snapshots.borrow().as_ref().map(|p| p.generation), Some(1));
    // The split read through the typed path is in the model: it has a status.
    let statuses = statuses.borrow().clone();
    assert!(
        statuses
            .iter()
            .any(|s| s.object.kind == "TrafficSplit" && s.object.name == "web"),
        "{statuses:?}"
    );
    assert_eq!(statuses[0].api_version, "split.smi-spec.io/v1alpha4");
    // The kinds not served are reported, not waited for.
    let unwatched = health.unwatched_kinds();
    assert!(
        unwatched.contains_key("traffictargets.access.smi-spec.io"),
        "{unwatched:?}"
    );
    assert!(!unwatched.contains_key("trafficsplits.split.smi-spec.io"));

    trigger.trigger();
    source_task.await.unwrap().unwrap();
    loop_task.await.unwrap();
    drop(open);
}

#[tokio::test(start_paused = true)]
async fn an_smi_kind_served_after_the_start_is_watched_and_compiled_in() {
    let (client, mut server) = mock_api::client();
    let (snap_tx, mut snapshots) = snapshot_channel();
    let (status_tx, statuses) = watch::channel(Arc::new(Vec::new()));
    let health = Arc::new(Health::new());
    let reconciler = Reconciler::new(
        Model::new(),
        Compiler::new(CompileOptions::default()),
        snap_tx,
        Arc::new(StatusBoard::new()),
        health.clone(),
        RuntimeMetrics::default(),
    )
    .with_statuses(status_tx);
    let (trigger, shutdown) = Shutdown::new();
    let (tx, rx) = weft_operator::source::channel();
    let source = KubeSource {
        client,
        metrics: SourceMetrics::default(),
    };
    let source_task = tokio::spawn(source.run(tx, shutdown.clone()));
    let loop_task = tokio::spawn(weft_operator::source::reconcile::run(
        reconciler, rx, shutdown,
    ));

    // Phase 1: no SMI group served. Phase 2 (after the first snapshot): the split CRD is
    // installed, and the supervisor's next look at discovery finds it.
    let mut open = Vec::new();
    let mut served = false;
    let mut listed_split = false;
    loop {
        tokio::select! {
            call = server.next() => {
                if call.param("watch") == Some("true") {
                    open.push(call);
                } else if call.path == "/api/v1/services" {
                    call.ok(list("v1", "ServiceList", vec![service()]));
                } else {
                    if call.path.starts_with("/apis/split.smi-spec.io/") {
                        assert!(served, "split looked at before it was served");
                    }
                    listed_split |= call.path == "/apis/split.smi-spec.io/v1alpha4/trafficsplits";
                    let body = answer_with(&call.path, served);
                    call.ok(body);
                }
            }
            r = snapshots.changed() => {
                r.unwrap();
                let generation = snapshots.borrow().as_ref().map(|p| p.generation);
                if generation == Some(1) {
                    assert!(statuses.borrow().is_empty());
                    assert!(health
                        .unwatched_kinds()
                        .contains_key("trafficsplits.split.smi-spec.io"));
                    served = true;
                } else if statuses.borrow().iter().any(|s| s.object.name == "web") {
                    break;
                }
            }
        }
    }
    assert!(!health
        .unwatched_kinds()
        .contains_key("trafficsplits.split.smi-spec.io"));
    assert!(listed_split);
    drop(open);
    trigger.trigger();
    source_task.await.unwrap().unwrap();
    loop_task.await.unwrap();
}
