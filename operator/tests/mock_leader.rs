//! Leader election against a mocked API server: each Lease request is checked (holder,
//! resourceVersion, transitions) and answered; time is the runtime's paused clock.

mod mock_api;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use weft_operator::leader::LeaderOptions;
use weft_operator::shutdown::Shutdown;
use weft_operator::status::writer::{StatusMetrics, StatusWriter};
use weft_operator::status::{ObjectRef, ObjectStatus};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/weft-system/leases/weft-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/weft-system/leases";

fn options() -> LeaderOptions {
    LeaderOptions::new("weft-system", "op-a")
}

fn lease(holder: Option<&str>, rv: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "weft-operator", "namespace": "weft-system", "resourceVersion": rv},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
            "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z",
        },
    })
}

/// The written lease echoed back with a new resourceVersion.
fn stored(mut body: Value, rv: &str) -> Value {
    body["metadata"]["resourceVersion"] = json!(rv);
    body
}

fn start(
    client: kube::Client,
) -> (
    watch::Receiver<bool>,
    weft_operator::shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<()>,
) {
    let (leading_tx, leading_rx) = watch::channel(false);
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(weft_operator::leader::run(
        client,
        options(),
        leading_tx,
        shutdown,
    ));
    (leading_rx, trigger, task)
}

#[tokio::test(start_paused = true)]
async fn an_absent_lease_is_created_renewed_and_released_on_shutdown() {
    let (client, mut server) = mock_api::client();
    let (mut leading, trigger, task) = start(client);

    server
        .expect(Method::GET, LEASE)
        .await
        .fail(404, "NotFound");
    let create = server.expect(Method::POST, LEASES).await;
    assert_eq!(create.body["metadata"]["name"], "weft-operator");
    assert_eq!(create.body["spec"]["holderIdentity"], "op-a");
    assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(create.body["spec"]["leaseTransitions"], 0);
    let body = stored(create.body.clone(), "1");
    create.json(StatusCode::CREATED, body);
    leading.wait_for(|l| *l).await.unwrap();

    // Renewal: a replace guarded by the resourceVersion read, same holder and transitions.
    server
        .expect(Method::GET, LEASE)
        .await
        .ok(lease(Some("op-a"), "1", 0));
    let renew = server.expect(Method::PUT, LEASE).await;
    assert_eq!(renew.body["metadata"]["resourceVersion"], "1");
    assert_eq!(renew.body["spec"]["holderIdentity"], "op-a");
    assert_eq!(renew.body["spec"]["leaseTransitions"], 0);
    assert_ne!(
        renew.body["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z",
        "renewing moves renewTime"
    );
    let body = stored(renew.body.clone(), "2");
    renew.ok(body);
    assert!(*leading.borrow());

    // Shutdown releases the lease so another replica takes over at once.
    trigger.trigger();
    server
        .expect(Method::GET, LEASE)
        .await
        .ok(lease(Some("op-a"), "2", 0));
    let release = server.expect(Method::PUT, LEASE).await;
    assert_eq!(release.body["metadata"]["resourceVersion"], "2");
    assert!(release.body["spec"]
        .get("holderIdentity")
        .is_none_or(Value::is_null));
    assert_eq!(release.body["spec"]["leaseDurationSeconds"], 1);
    let body = stored(release.body.clone(), "3");
    release.ok(body);
    task.await.unwrap();
    assert!(!*leading.borrow());
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_is_taken_over_only_once_it_stayed_unchanged_for_its_duration() {
    let (client, mut server) = mock_api::client();
    let (leading, trigger, task) = start(client);
    let started = tokio::time::Instant::now();
    // op-b holds it and does not renew: op-a reads the same resourceVersion round after round.
    let takeover = loop {
        let call = server.next().await;
        match call.method {
            Method::GET => {
                assert_eq!(call.path, LEASE);
                assert!(
                    !*leading.borrow(),
                    "not leading while op-b's lease is valid"
                );
                call.ok(lease(Some("op-b"), "7", 4));
            }
            Method::PUT => break call,
            other => panic!("unexpected {other} {}", call.path),
        }
    };
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "taken over before the lease expired"
    );
    assert_eq!(takeover.path, LEASE);
    assert_eq!(takeover.body["metadata"]["resourceVersion"], "7");
    assert_eq!(takeover.body["spec"]["holderIdentity"], "op-a");
    assert_eq!(takeover.body["spec"]["leaseTransitions"], 5);
    let body = stored(takeover.body.clone(), "8");
    takeover.ok(body);
    let mut leading = leading;
    leading.wait_for(|l| *l).await.unwrap();
    trigger.trigger();
    drop(server);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lost_race_for_the_lease_is_not_leadership() {
    let (client, mut server) = mock_api::client();
    let (leading, trigger, task) = start(client);
    // Unheld: op-a tries to take it, and another replica wrote first (409).
    server
        .expect(Method::GET, LEASE)
        .await
        .ok(lease(None, "9", 2));
    let put = server.expect(Method::PUT, LEASE).await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "9");
    put.fail(409, "Conflict");
    // The next round sees the winner's fresh lease and stays a follower.
    server
        .expect(Method::GET, LEASE)
        .await
        .ok(lease(Some("op-b"), "10", 3));
    server
        .expect(Method::GET, LEASE)
        .await
        .ok(lease(Some("op-b"), "11", 3));
    assert!(!*leading.borrow());
    trigger.trigger();
    drop(server);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_stops_status_writing() {
    let (leader_client, mut leases) = mock_api::client();
    let (writer_client, mut api) = mock_api::client();
    let (leading_tx, leading_rx) = watch::channel(false);
    let (trigger, shutdown) = Shutdown::new();
    let mut leading = leading_rx.clone();
    let elector = tokio::spawn(weft_operator::leader::run(
        leader_client,
        options(),
        leading_tx,
        shutdown.clone(),
    ));
    let status = |reason: &str| ObjectStatus {
        object: ObjectRef {
            group: "split.smi-spec.io".into(),
            kind: "TrafficSplit".into(),
            namespace: "shop".into(),
            name: "web".into(),
        },
        api_version: "split.smi-spec.io/v1alpha4".into(),
        conditions: vec![weft_smi::hub::Condition {
            type_: "Accepted".into(),
            status: "True".into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: None,
        }],
        parents: Vec::new(),
    };
    let (statuses_tx, statuses_rx) = watch::channel(Arc::new(vec![status("Valid")]));
    let writer = StatusWriter::new(writer_client, None, StatusMetrics::default());
    let writing = tokio::spawn(weft_operator::status::writer::run(
        writer,
        statuses_rx,
        leading_rx,
        shutdown,
    ));
    let path = "/apis/split.smi-spec.io/v1alpha4/namespaces/shop/trafficsplits/web/status";

    // Not leading yet: nothing is written.
    assert!(!api.has_pending());
    leases
        .expect(Method::GET, LEASE)
        .await
        .fail(404, "NotFound");
    let create = leases.expect(Method::POST, LEASES).await;
    let body = stored(create.body.clone(), "1");
    create.json(StatusCode::CREATED, body);
    leading.wait_for(|l| *l).await.unwrap();

    // Leading: the writer writes.
    api.expect(Method::GET, path).await.ok(json!({
        "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "web", "namespace": "shop"}, "status": {},
    }));
    let patch = api.expect(Method::PATCH, path).await;
    assert_eq!(patch.param("fieldManager"), Some("weft"));
    let body = patch.body.clone();
    patch.ok(body);

    // op-b took the lease meanwhile (a new resourceVersion, another holder): leadership lost.
    leases
        .expect(Method::GET, LEASE)
        .await
        .ok(lease(Some("op-b"), "5", 1));
    leading.wait_for(|l| !*l).await.unwrap();

    // A new desired status while not leading: not written. Two more election rounds pass on
    // the paused clock (each waits its retry period, so the writer has long run out of work).
    statuses_tx.send_replace(Arc::new(vec![status("StillValid")]));
    for rv in ["6", "7"] {
        leases
            .expect(Method::GET, LEASE)
            .await
            .ok(lease(Some("op-b"), rv, 1));
    }
    assert!(!api.has_pending(), "a follower wrote status");

    trigger.trigger();
    drop(leases);
    elector.await.unwrap();
    writing.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_steps_down_before_anyone_may_take_over() {
    let (client, mut server) = mock_api::client();
    let (mut leading, trigger, task) = start(client);
    server
        .expect(Method::GET, LEASE)
        .await
        .fail(404, "NotFound");
    let create = server.expect(Method::POST, LEASES).await;
    let body = stored(create.body.clone(), "1");
    create.json(StatusCode::CREATED, body);
    leading.wait_for(|l| *l).await.unwrap();
    let acquired = tokio::time::Instant::now();

    // From now on the API server never answers (a partition, a hung apiserver): every round
    // times out. The calls are held unanswered.
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let call = server.next().await;
            assert_eq!(call.path, LEASE);
            held.push(call);
        }
    });
    tokio::time::timeout(Duration::from_secs(60), leading.wait_for(|l| !*l))
        .await
        .expect("still leading a minute after its last renewal")
        .unwrap();
    let led_for = acquired.elapsed();
    let options = options();
    assert!(
        led_for >= options.renew_deadline,
        "stepped down after {led_for:?}, before its renew deadline"
    );
    assert!(
        led_for < options.lease_duration,
        "still leading after {led_for:?}: another replica may already have taken the lease"
    );
    trigger.trigger();
    task.await.unwrap();
    hung.abort();
}

#[test]
fn timings_are_made_consistent() {
    let o = options().with_timings(
        Duration::from_secs(4),
        Duration::from_secs(10),
        Duration::from_secs(3),
    );
    assert_eq!(o.lease_duration, Duration::from_secs(4));
    assert_eq!(o.retry_period, Duration::from_secs(1));
    assert!(o.renew_deadline + o.retry_period * 2 <= o.lease_duration);
    let d = options();
    assert!(d.renew_deadline + d.retry_period * 2 < d.lease_duration);
}
