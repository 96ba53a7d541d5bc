//! The reliability annotations (#16) on a real kube-apiserver (1.20, from
//! `e2e/scripts/kube-build.sh`) with the real `weft-operator`:
//!
//! - an invalid annotation on a Service becomes a Warning Event on that Service (by its uid,
//!   so `kubectl describe` lists it) naming the annotation and the value; one on a Namespace
//!   becomes a Warning Event about the Namespace;
//! - valid annotations reach a proxy's config over the Discovery API: the Namespace's as
//!   defaults, the Service's winning, inbound limits on the targeted pod port; an edit of the
//!   annotation is pushed.
//!
//! Needs `cargo build -p weft-operator --bins` first. Run under the shared kube lock:
//! `flock /tmp/weft-kube-e2e.lock cargo test -p weft-e2e --test kube_reliability`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use weft_e2e::operator::{wait_for, OperatorOptions, OperatorProcess, SimProxy, WebhookPlane};
use weft_proxy_api::v1;
use weft_proxy_api::ClientState;

const NS: &str = "e2e";
const LIMIT: Duration = Duration::from_secs(30);

/// The Warning Events of `namespace` about the object `kind`/`name`.
async fn events_about(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Vec<Event>, String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list.items)
}

fn summary(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {:?}",
                e.type_.as_deref().unwrap_or(""),
                e.reason.as_deref().unwrap_or(""),
                e.message.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until an Event of `namespace` about `kind`/`name` has reason `InvalidAnnotation` and a
/// message with every fragment of `wants`; returns it.
async fn wait_invalid_annotation(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    wants: &[&str],
) -> Event {
    wait_for(
        &format!("an InvalidAnnotation Event on {kind} {name} with {wants:?}"),
        LIMIT,
        || async move {
            let events = events_about(client, namespace, kind, name).await?;
            let found = events.iter().find(|e| {
                e.reason.as_deref() == Some("InvalidAnnotation")
                    && wants
                        .iter()
                        .all(|w| e.message.as_deref().unwrap_or("").contains(w))
            });
            match found {
                Some(e) => Ok(Some(e.clone())),
                None => Err(format!("events: {}", summary(&events))),
            }
        },
    )
    .await
    .unwrap()
}

fn outbound<'a>(state: &'a ClientState, service: &str) -> Option<&'a v1::OutboundService> {
    let name = weft_proxy_api::names::outbound_name(service, NS);
    match state.resources().get(&name)?.kind.as_ref()? {
        v1::resource::Kind::Outbound(o) => Some(o),
        _ => None,
    }
}

fn inbound_limits(state: &ClientState, port: u32) -> Option<v1::InboundLimits> {
    match state.resources().get("inbound")?.kind.as_ref()? {
        v1::resource::Kind::Inbound(i) => i
            .ports
            .iter()
            .find(|p| p.port == port)
            .and_then(|p| p.limits),
        _ => None,
    }
}

fn ranges(r: &[v1::StatusRange]) -> Vec<(u32, u32)> {
    r.iter().map(|r| (r.min, r.max)).collect()
}

#[tokio::test]
async fn kube_reliability_annotations_reach_proxies_and_errors_become_events() {
    let test = "kube_reliability_annotations_reach_proxies_and_errors_become_events";
    let Some(WebhookPlane {
        cluster,
        client,
        dir,
        bin,
        certs,
        webhook_port,
        ..
    }) = WebhookPlane::start(test, "weft-reliability-", true, false).await
    else {
        return;
    };

    // Namespace `e2e`: a valid default (3 retries) and an invalid one (rate-limit).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (name, annotations) in [
        (
            NS,
            json!({"weft.io/retries": "3", "weft.io/rate-limit": "fast"}),
        ),
        ("weft-system", json!({})),
    ] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": name, "annotations": annotations}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    // Service `api`: valid outbound and inbound annotations, and an invalid backoff.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc = json!({
        "metadata": {"name": "api", "namespace": NS, "annotations": {
            "weft.io/retry-statuses": "5xx",
            "weft.io/failure-accrual-consecutive": "3",
            "weft.io/failure-accrual-backoff": "60s-1s",
            "weft.io/inbound-max-concurrent-requests": "8",
        }},
        "spec": {"selector": {"app": "api"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]}
    });
    let created = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap();
    let svc_uid = created.metadata.uid.clone().expect("a uid");
    // A meshed pod it selects.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "api-0", "namespace": NS,
                     "labels": {"app": "api", "weft.io/proxy-version": "0.1.0"}},
        "spec": {"containers": [{"name": "app", "image": "weft-test-app",
                                 "ports": [{"name": "http", "containerPort": 8080}]}],
                 "nodeName": "e2e"}
    }))
    .unwrap();
    // The ServiceAccount admission plugin refuses pods until the default SA has a token.
    wait_for("creating pod api-0", LIMIT, || {
        let pods = pods.clone();
        let pod = pod.clone();
        async move {
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => Ok(Some(())),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some(())),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap();
    let status = json!({"status": {
        "phase": "Running", "podIP": "198.18.0.30", "podIPs": [{"ip": "198.18.0.30"}],
        "conditions": [{"type": "Ready", "status": "True"}]
    }});
    pods.patch_status("api-0", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    let options = OperatorOptions {
        webhook: Some((certs.clone(), webhook_port)),
        leader: None,
        args: vec![],
    };
    let mut op = OperatorProcess::start(
        &bin,
        &cluster.kubeconfig,
        dir.path(),
        "weft-operator",
        &options,
    )
    .unwrap();
    op.wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("operator: {e}\n{}", op.log_tail(40)));

    // The invalid Service annotation: a Warning Event on the Service, by its uid.
    let ev = wait_invalid_annotation(
        &client,
        NS,
        "Service",
        "api",
        &[
            "weft.io/failure-accrual-backoff",
            "\"60s-1s\"",
            "min <= max",
        ],
    )
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.involved_object.uid.as_deref(), Some(svc_uid.as_str()));
    // The invalid Namespace annotation: a Warning Event about the Namespace (cluster-scoped:
    // its Events live in `default`).
    let ev = wait_invalid_annotation(
        &client,
        "default",
        "Namespace",
        NS,
        &["weft.io/rate-limit", "\"fast\"", "100/s"],
    )
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.involved_object.uid.is_some());

    // The valid values reach the pod's proxy: the Namespace's retries, the Service's statuses
    // and accrual, the default backoff (the invalid value is ignored), the inbound limit.
    let mut proxy = SimProxy::connect(op.discovery_addr, NS, "api-0", "default")
        .await
        .unwrap();
    let default_backoff = (1000u64, 60_000u64);
    proxy
        .wait_until("the api policy and inbound limits", LIMIT, |s| {
            let Some(p) = outbound(s, "api").and_then(|o| o.policy.clone()) else {
                return false;
            };
            let fa = p.failure_accrual.clone().unwrap_or_default();
            p.max_retries == 3
                && ranges(&p.retry_statuses) == vec![(500, 599)]
                && fa.consecutive_failures == 3
                && (fa.min_backoff_ms, fa.max_backoff_ms) == default_backoff
                && inbound_limits(s, 8080).is_some_and(|l| l.max_concurrent_requests == 8)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\npolicy: {:?}\ninbound limits: {:?}",
                outbound(&proxy.state, "api").map(|o| &o.policy),
                inbound_limits(&proxy.state, 8080)
            )
        });
    // The Namespace's invalid rate limit is not applied.
    assert!(inbound_limits(&proxy.state, 8080).is_some_and(|l| l.rate_limit.is_none()));

    // Fixing the annotation is pushed.
    let patch = json!({"metadata": {"annotations": {"weft.io/failure-accrual-backoff": "2s-30s"}}});
    services
        .patch("api", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    proxy
        .wait_until("the fixed backoff", LIMIT, |s| {
            outbound(s, "api")
                .and_then(|o| o.policy.clone())
                .and_then(|p| p.failure_accrual)
                .is_some_and(|fa| (fa.min_backoff_ms, fa.max_backoff_ms) == (2000, 30_000))
        })
        .await
        .unwrap();
    op.kill().await;
}
