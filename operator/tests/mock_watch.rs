//! The watch adapter against a mocked API server: list and watch requests are checked and
//! answered, and what comes out on the source channel is the model's typed changes.

mod mock_api;

use http::{Method, StatusCode};
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::{json, Value};
use weft_operator::model::{ClusterObject, Kind, ObjectKey};
use weft_operator::source::kube::{reflect, ResourceLabels, SourceMetrics};
use weft_operator::source::{Change, SourceEvent, SourceRx};

fn service(name: &str, port: u32, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv},
        "spec": {"clusterIP": "10.0.0.7", "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    })
}

fn list(kind: &str, items: Vec<Value>, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})
}

/// What the model reads from the object's JSON form: the typed path must give the same.
fn model(v: &Value) -> ClusterObject {
    ClusterObject::from_value(v).unwrap()
}

async fn changes(rx: &mut SourceRx) -> Vec<Change> {
    match rx.recv().await.expect("the watcher stopped") {
        SourceEvent::Changes { changes, .. } => changes,
        other => panic!("expected changes, got {other:?}"),
    }
}

fn invalid(metrics: &SourceMetrics, resource: &str) -> u64 {
    metrics
        .invalid_objects
        .get_or_create(&ResourceLabels {
            resource: resource.into(),
        })
        .get()
}

#[tokio::test(start_paused = true)]
async fn watch_events_become_typed_model_changes_and_a_bad_object_keeps_its_last_good_version() {
    let (client, mut server) = mock_api::client();
    let (tx, mut rx) = weft_operator::source::channel();
    let metrics = SourceMetrics::default();
    let task = tokio::spawn(reflect::<core::Service>(
        Api::all(client),
        "services".into(),
        tx,
        metrics.clone(),
    ));

    // The initial listing: one batch, then Synced.
    let call = server.expect(Method::GET, "/api/v1/services").await;
    assert_eq!(call.param("watch"), None, "{:?}", call.query);
    call.ok(list("ServiceList", vec![service("web", 80, "10")], "10"));
    assert_eq!(
        changes(&mut rx).await,
        vec![Change::Upsert(model(&service("web", 80, "10")))]
    );
    assert!(matches!(rx.recv().await, Some(SourceEvent::Synced(n)) if n == "services"));

    // Watch from the listed resourceVersion: a bad update (port out of range) of web, api
    // added, api deleted.
    let call = server.expect(Method::GET, "/api/v1/services").await;
    assert_eq!(call.param("watch"), Some("true"), "{:?}", call.query);
    assert_eq!(call.param("resourceVersion"), Some("10"));
    call.raw(
        StatusCode::OK,
        mock_api::watch_events(&[
            ("MODIFIED", service("web", 70000, "11")),
            ("ADDED", service("api", 8080, "12")),
            ("DELETED", service("api", 8080, "13")),
        ]),
    );
    assert_eq!(
        changes(&mut rx).await,
        vec![Change::Upsert(model(&service("api", 8080, "12")))],
        "the bad update of web is skipped: its last good version stays"
    );
    assert_eq!(
        changes(&mut rx).await,
        vec![Change::Remove(ObjectKey::new(Kind::Service, "shop", "api"))]
    );
    assert_eq!(invalid(&metrics, "services"), 1);

    // The watch expires (410 Gone): the watcher re-lists. web is still unreadable and db is
    // new: db comes in, and web is not removed.
    let call = server.expect(Method::GET, "/api/v1/services").await;
    assert_eq!(call.param("watch"), Some("true"));
    assert_eq!(call.param("resourceVersion"), Some("13"));
    call.raw(
        StatusCode::OK,
        mock_api::watch_events(&[(
            "ERROR",
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                   "reason": "Expired", "message": "too old", "code": 410}),
        )]),
    );
    let call = server.expect(Method::GET, "/api/v1/services").await;
    assert_eq!(call.param("watch"), None, "a re-list: {:?}", call.query);
    call.ok(list(
        "ServiceList",
        vec![service("web", 70000, "20"), service("db", 5432, "21")],
        "21",
    ));
    assert_eq!(
        changes(&mut rx).await,
        vec![Change::Upsert(model(&service("db", 5432, "21")))]
    );
    assert_eq!(invalid(&metrics, "services"), 2);

    // web is deleted for real: removed.
    let call = server.expect(Method::GET, "/api/v1/services").await;
    assert_eq!(call.param("resourceVersion"), Some("21"));
    call.raw(
        StatusCode::OK,
        mock_api::watch_events(&[("DELETED", service("web", 70000, "22"))]),
    );
    assert_eq!(
        changes(&mut rx).await,
        vec![Change::Remove(ObjectKey::new(Kind::Service, "shop", "web"))]
    );
    drop(rx);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_smi_object_of_the_served_version_becomes_its_model_object() {
    let (client, mut server) = mock_api::client();
    let (tx, mut rx) = weft_operator::source::channel();
    let ar = ApiResource {
        group: "split.smi-spec.io".into(),
        version: "v1alpha4".into(),
        api_version: "split.smi-spec.io/v1alpha4".into(),
        kind: "TrafficSplit".into(),
        plural: "trafficsplits".into(),
    };
    let task = tokio::spawn(reflect::<DynamicObject>(
        Api::all_with(client, &ar),
        "trafficsplits.split.smi-spec.io".into(),
        tx,
        SourceMetrics::default(),
    ));
    let split = json!({
        "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3", "generation": 2},
        "spec": {"service": "web", "backends": [
            {"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10},
        ]},
    });
    let bad = json!({
        "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "odd", "namespace": "shop", "resourceVersion": "4"},
        "spec": {"service": 7, "backends": "none"},
    });
    server
        .expect(
            Method::GET,
            "/apis/split.smi-spec.io/v1alpha4/trafficsplits",
        )
        .await
        .ok(json!({
            "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplitList",
            "metadata": {"resourceVersion": "4"}, "items": [split, bad],
        }));
    assert_eq!(changes(&mut rx).await, vec![Change::Upsert(model(&split))]);
    assert!(matches!(rx.recv().await, Some(SourceEvent::Synced(_))));
    drop(rx);
    task.abort();
}
