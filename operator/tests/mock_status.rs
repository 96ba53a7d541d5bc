//! The status writer against a mocked API server: each request is checked (method, path,
//! query, body) and answered.

mod mock_api;

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::json;
use tokio::sync::watch;
use weft_operator::shutdown::Shutdown;
use weft_operator::status::writer::{StatusMetrics, StatusWriter};
use weft_operator::status::{ObjectRef, ObjectStatus};
use weft_smi::hub::Condition;

fn condition(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: format!("{type_} is {status}"),
        observed_generation: Some(3),
        last_transition_time: None,
    }
}

fn status_of(
    api_version: &str,
    kind: &str,
    name: &str,
    conditions: Vec<Condition>,
) -> ObjectStatus {
    ObjectStatus {
        object: ObjectRef {
            group: api_version.split('/').next().unwrap().into(),
            kind: kind.into(),
            namespace: "shop".into(),
            name: name.into(),
        },
        api_version: api_version.into(),
        conditions,
        parents: Vec::new(),
    }
}

fn split(name: &str) -> ObjectStatus {
    status_of(
        "split.smi-spec.io/v1alpha4",
        "TrafficSplit",
        name,
        vec![condition("Accepted", "True", "Valid")],
    )
}

/// The object as the API server returns it from `GET .../status`.
fn current(
    api_version: &str,
    kind: &str,
    name: &str,
    status: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "5", "generation": 3,
                     "uid": format!("uid-of-{name}")},
        "spec": {}, "status": status,
    })
}

/// Answers the status read of `path` with `status`, then checks the server-side apply patch
/// that follows and answers it with `code`.
async fn read_then_apply(
    server: &mut mock_api::ApiServer,
    path: &str,
    status: serde_json::Value,
    code: u16,
) -> serde_json::Value {
    let get = server.expect(Method::GET, path).await;
    let (api_version, kind, name) = object_of(path);
    get.ok(current(&api_version, &kind, &name, status));
    let patch = server.expect(Method::PATCH, path).await;
    assert_eq!(
        patch.param("fieldManager"),
        Some("weft"),
        "{:?}",
        patch.query
    );
    assert_eq!(patch.param("force"), Some("true"), "{:?}", patch.query);
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let body = patch.body.clone();
    if code == 200 {
        patch.ok(body.clone());
    } else {
        patch.fail(code, "Conflict");
    }
    body
}

/// (apiVersion, kind, name) of a `/apis/<group>/<version>/namespaces/shop/<plural>/<name>/status`.
fn object_of(path: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.split('/').collect();
    let kind = match parts[6] {
        "trafficsplits" => "TrafficSplit",
        "traffictargets" => "TrafficTarget",
        "httproutegroups" => "HTTPRouteGroup",
        "tcproutes" => "TCPRoute",
        "udproutes" => "UDPRoute",
        other => panic!("unexpected plural {other}"),
    };
    (
        format!("{}/{}", parts[2], parts[3]),
        kind.to_string(),
        parts[7].to_string(),
    )
}

#[tokio::test]
async fn status_is_applied_to_the_status_subresource_with_field_manager_weft() {
    let (client, mut server) = mock_api::client();
    let mut writer = StatusWriter::new(client, Some("op-0".into()), StatusMetrics::default());
    let statuses = vec![
        split("web"),
        status_of(
            "access.smi-spec.io/v1alpha3",
            "TrafficTarget",
            "allow",
            vec![condition("Accepted", "True", "Valid")],
        ),
        status_of(
            "specs.smi-spec.io/v1alpha4",
            "HTTPRouteGroup",
            "routes",
            vec![condition("Accepted", "True", "Valid")],
        ),
    ];
    let task = tokio::spawn(async move { writer.write(&statuses).await });

    let body = read_then_apply(
        &mut server,
        "/apis/split.smi-spec.io/v1alpha4/namespaces/shop/trafficsplits/web/status",
        json!({}),
        200,
    )
    .await;
    assert_eq!(body["apiVersion"], "split.smi-spec.io/v1alpha4");
    assert_eq!(body["kind"], "TrafficSplit");
    assert_eq!(body["metadata"]["name"], "web");
    assert_eq!(body["metadata"]["namespace"], "shop");
    let conditions = body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(conditions[0]["reason"], "Valid");
    assert_eq!(conditions[0]["observedGeneration"], 3);
    assert!(conditions[0]["lastTransitionTime"].is_string(), "{body}");
    // The plural of each kind is the smi types' own, never a guess.
    read_then_apply(
        &mut server,
        "/apis/access.smi-spec.io/v1alpha3/namespaces/shop/traffictargets/allow/status",
        json!({}),
        200,
    )
    .await;
    read_then_apply(
        &mut server,
        "/apis/specs.smi-spec.io/v1alpha4/namespaces/shop/httproutegroups/routes/status",
        json!({}),
        200,
    )
    .await;
    let errors = task.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        !server.has_pending(),
        "no Event for conditions that are not problems"
    );
}

#[tokio::test]
async fn an_unchanged_status_is_read_and_not_patched_and_its_transition_time_kept() {
    let (client, mut server) = mock_api::client();
    let mut writer = StatusWriter::new(client, None, StatusMetrics::default());
    let task = tokio::spawn(async move {
        let a = writer.write(&[split("web")]).await;
        // Same status, another reason: patched, with the transition time kept.
        let mut other = split("web");
        other.conditions[0].reason = "StillValid".into();
        let b = writer.write(&[other]).await;
        (a, b)
    });
    let path = "/apis/split.smi-spec.io/v1alpha4/namespaces/shop/trafficsplits/web/status";
    let mut same = condition("Accepted", "True", "Valid");
    same.last_transition_time = Some("2026-01-01T00:00:00Z".into());
    server.expect(Method::GET, path).await.ok(current(
        "split.smi-spec.io/v1alpha4",
        "TrafficSplit",
        "web",
        json!({"conditions": [same]}),
    ));
    let body = read_then_apply(&mut server, path, json!({"conditions": [same]}), 200).await;
    assert_eq!(
        body["status"]["conditions"][0]["lastTransitionTime"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(body["status"]["conditions"][0]["reason"], "StillValid");
    let (a, b) = task.await.unwrap();
    assert!(a.is_empty() && b.is_empty());
}

#[tokio::test]
async fn a_conflict_or_server_error_is_reported_and_the_others_still_written() {
    let (client, mut server) = mock_api::client();
    let mut writer = StatusWriter::new(client, None, StatusMetrics::default());
    let task =
        tokio::spawn(async move { writer.write(&[split("a"), split("b"), split("c")]).await });
    let base = "/apis/split.smi-spec.io/v1alpha4/namespaces/shop/trafficsplits";
    read_then_apply(&mut server, &format!("{base}/a/status"), json!({}), 409).await;
    // A failing read.
    server
        .expect(Method::GET, &format!("{base}/b/status"))
        .await
        .fail(500, "InternalError");
    read_then_apply(&mut server, &format!("{base}/c/status"), json!({}), 200).await;
    let errors = task.await.unwrap();
    let failed: Vec<&str> = errors.iter().map(|(o, _)| o.name.as_str()).collect();
    assert_eq!(failed, ["a", "b"]);
}

#[tokio::test]
async fn a_kind_weft_does_not_read_is_refused_without_a_request() {
    let (client, mut server) = mock_api::client();
    let mut writer = StatusWriter::new(client, None, StatusMetrics::default());
    let odd = status_of(
        "split.smi-spec.io/v1alpha4",
        "TrafficSplitz",
        "web",
        vec![condition("Accepted", "True", "Valid")],
    );
    let errors = writer.write(&[odd]).await;
    assert_eq!(errors.len(), 1);
    assert!(!server.has_pending());
}

#[tokio::test(start_paused = true)]
async fn the_writer_loop_retries_a_failed_write_and_publishes_an_event_for_a_problem() {
    let (client, mut server) = mock_api::client();
    let writer = StatusWriter::new(client, Some("op-0".into()), StatusMetrics::default());
    let problem = status_of(
        "split.smi-spec.io/v1alpha4",
        "TrafficSplit",
        "web",
        vec![condition("Accepted", "False", "BackendNotFound")],
    );
    let (_statuses_tx, statuses_rx) = watch::channel(Arc::new(vec![problem]));
    let (_leading_tx, leading_rx) = watch::channel(true);
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(weft_operator::status::writer::run(
        writer,
        statuses_rx,
        leading_rx,
        shutdown,
    ));
    let path = "/apis/split.smi-spec.io/v1alpha4/namespaces/shop/trafficsplits/web/status";
    // First pass: the patch fails with 500; the problem still becomes one core/v1 Event about
    // the object as read (its uid: `kubectl describe` selects Events by uid).
    read_then_apply(&mut server, path, json!({}), 500).await;
    let event = server
        .expect(Method::POST, "/api/v1/namespaces/shop/events")
        .await;
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "BackendNotFound");
    assert_eq!(event.body["involvedObject"]["kind"], "TrafficSplit");
    assert_eq!(event.body["involvedObject"]["name"], "web");
    assert_eq!(event.body["involvedObject"]["uid"], "uid-of-web");
    assert_eq!(event.body["involvedObject"]["resourceVersion"], "5");
    assert_eq!(event.body["reportingComponent"], "weft-operator");
    assert_eq!(event.body["reportingInstance"], "op-0");
    assert_eq!(event.body["count"], 1);
    let name = event.body["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("web."), "{name}");
    let echo = event.body.clone();
    event.json(StatusCode::CREATED, echo);
    // The retry (after a backoff, on the paused clock): written this time, no second Event.
    let body = read_then_apply(&mut server, path, json!({}), 200).await;
    assert_eq!(body["status"]["conditions"][0]["status"], "False");
    assert_eq!(body["status"]["conditions"][0]["observedGeneration"], 3);
    trigger.trigger();
    task.await.unwrap();
    assert!(!server.has_pending());
}

/// The same problem published by a new process (an operator restart, another leader) finds its
/// Event by name: AlreadyExists, then its count is raised; no second Event. Without `get` on
/// Events (the RBAC grants create and patch), `lastTimestamp` alone is refreshed.
#[tokio::test]
async fn a_restarted_writer_counts_the_existing_event_instead_of_adding_one() {
    let problem = status_of(
        "split.smi-spec.io/v1alpha4",
        "TrafficSplit",
        "web",
        vec![condition("ResolvedRefs", "False", "BackendNotFound")],
    );
    let path = "/apis/split.smi-spec.io/v1alpha4/namespaces/shop/trafficsplits/web/status";
    let mut names = Vec::new();
    for can_read_events in [true, false] {
        // A fresh writer: nothing remembered, as after a restart.
        let (client, mut server) = mock_api::client();
        let mut writer = StatusWriter::new(client, None, StatusMetrics::default());
        let statuses = vec![problem.clone()];
        let task = tokio::spawn(async move { writer.write(&statuses).await });
        read_then_apply(&mut server, path, json!({}), 200).await;
        let create = server
            .expect(Method::POST, "/api/v1/namespaces/shop/events")
            .await;
        let name = create.body["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        create.fail(409, "AlreadyExists");
        let event_path = format!("/api/v1/namespaces/shop/events/{name}");
        let get = server.expect(Method::GET, &event_path).await;
        if can_read_events {
            get.ok(json!({"apiVersion": "v1", "kind": "Event",
                          "metadata": {"name": name, "namespace": "shop"},
                          "involvedObject": {"name": "web"}, "count": 4}));
        } else {
            get.fail(403, "Forbidden");
        }
        let patch = server.expect(Method::PATCH, &event_path).await;
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert!(patch.body["lastTimestamp"].is_string(), "{}", patch.body);
        assert_eq!(patch.body["involvedObject"]["uid"], "uid-of-web");
        if can_read_events {
            assert_eq!(patch.body["count"], 5, "{}", patch.body);
        } else {
            assert!(patch.body.get("count").is_none(), "{}", patch.body);
        }
        let mut echo = patch.body.clone();
        echo["metadata"] = json!({"name": name, "namespace": "shop"});
        patch.ok(echo);
        let errors = task.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!server.has_pending(), "no second Event");
        names.push(name);
    }
    assert_eq!(
        names[0], names[1],
        "the same problem has the same Event name"
    );
}
