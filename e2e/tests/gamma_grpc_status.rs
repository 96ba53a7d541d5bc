//! GRPCRoute status against a real kube-apiserver (1.20, from `e2e/scripts/kube-build.sh`): the
//! vendored v1.5.1 GRPCRoute CRD is installed, the operator watches GRPCRoutes, and writes
//! `status.parents[]` (Accepted, ResolvedRefs, observedGeneration, controllerName) by
//! server-side apply with field manager `weft`; a GRPCRoute on an HTTP/1 port is refused.
//!
//! The e2e API server (1.20) refuses two things of the upstream CRD: `x-kubernetes-validations`
//! (CEL, Kubernetes 1.25+) and `default: ""` (it reads the empty string as `null`, "must be of
//! type string"), so the CRD is applied with those keys removed ([`for_old_apiserver`]; the
//! three empty defaults are backendRef `group`s, where absent means the same). Nothing else of
//! it changes. For the same reason the routes say `group: core` (which weft reads as the core
//! group, like `""`) rather than upstream's `group: ""`, which that server refuses in objects too
//! (by POST and by server-side apply alike). Needs `cargo build -p weft-operator --bins` first. Run it under
//! `flock /tmp/weft-kube-e2e.lock`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{json, Value};
use weft_e2e::cluster::repo_root;
use weft_e2e::operator::{wait_for, OperatorOptions, OperatorProcess, WebhookPlane, MANAGER};

const NS: &str = "e2e";
const LIMIT: Duration = Duration::from_secs(30);
const CONTROLLER: &str = "weft.io/mesh-controller";

/// Removes every `x-kubernetes-validations` key (CEL rules) and every `default: ""` from a CRD,
/// recursively.
fn for_old_apiserver(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            if map.get("default") == Some(&json!("")) {
                map.remove("default");
            }
            for x in map.values_mut() {
                for_old_apiserver(x);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(for_old_apiserver),
        _ => {}
    }
}

/// Applies the vendored GRPCRoute CRD (CEL removed) and waits until it is Established.
async fn install_grpcroute_crd(client: &kube::Client) {
    let text = std::fs::read_to_string(
        repo_root().join("crds/gateway-api/gateway.networking.k8s.io_grpcroutes.yaml"),
    )
    .unwrap();
    let mut crd: Value = serde_yaml::from_str(&text).unwrap();
    for_old_apiserver(&mut crd);
    assert!(!crd.to_string().contains("x-kubernetes-validations"));
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "grpcroutes.gateway.networking.k8s.io";
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    wait_for(&format!("CRD {name} Established"), LIMIT, || {
        let api = api.clone();
        async move {
            let crd = api.get(name).await.map_err(|e| e.to_string())?;
            let ok = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(ok.then_some(()))
        }
    })
    .await
    .unwrap();
}

fn grpc_routes(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GRPCRoute");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "grpcroutes");
    Api::namespaced_with(client.clone(), NS, &ar)
}

fn grpc_route(name: &str, parent: &str, port: u16, backend_weight: i32) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            // `core`, not `""`: the 1.20 API server reads an empty string in this schema as
            // null and refuses it (weft reads both as the core group).
            "parentRefs": [{"group": "core", "kind": "Service", "name": parent, "port": port}],
            "rules": [{
                "matches": [{"method": {"service": "grpc.testing.TestService", "method": "UnaryCall"}}],
                "backendRefs": [
                    {"name": "echo-v1", "port": port, "weight": backend_weight},
                    {"name": "echo-v2", "port": port, "weight": 100 - backend_weight}
                ]
            }]
        }
    })
}

/// weft's `status.parents[]` entry's condition `type_`, if any.
fn parent_condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/parents")?
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER)?["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Waits until the route's weft entry satisfies `done` at the route's current generation.
async fn wait_parents(client: &kube::Client, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let api = grpc_routes(client);
    let done = &done;
    wait_for(
        &format!("status.parents of GRPCRoute {name}"),
        LIMIT,
        || {
            let api = api.clone();
            async move {
                let obj = serde_json::to_value(api.get(name).await.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                let generation = &obj["metadata"]["generation"];
                let current = ["Accepted", "ResolvedRefs"].iter().all(|t| {
                    parent_condition(&obj, t)
                        .is_some_and(|c| &c["observedGeneration"] == generation)
                });
                if current && done(&obj) {
                    Ok(Some(obj))
                } else {
                    Err(format!("status: {}", obj["status"]))
                }
            }
        },
    )
    .await
    .unwrap()
}

fn is(obj: &Value, type_: &str, status: &str, reason: &str) -> bool {
    parent_condition(obj, type_).is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gamma_grpc_route_status_by_server_side_apply() {
    let Some(plane) = WebhookPlane::start("gamma_grpc_status", "weft-grpc-", false, false).await
    else {
        return;
    };
    let client = plane.client.clone();
    install_grpcroute_crd(&client).await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    for (name, port_name) in [
        ("echo", "grpc"),
        ("echo-v1", "grpc"),
        ("echo-v2", "grpc"),
        ("web", "http"),
    ] {
        let svc = json!({
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [{"name": port_name, "port": 7070}]}
        });
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(svc).unwrap(),
            )
            .await
            .unwrap();
    }

    // The CRD is served before the operator starts: it watches GRPCRoutes.
    let mut op = OperatorProcess::start(
        &plane.bin,
        &plane.cluster.kubeconfig,
        plane.dir.path(),
        "weft-operator",
        &OperatorOptions::default(),
    )
    .unwrap();
    op.wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("operator: {e}"));

    let api = grpc_routes(&client);
    let object = |v: Value| serde_json::from_value::<DynamicObject>(v).unwrap();
    api.create(
        &PostParams::default(),
        &object(grpc_route("echo", "echo", 7070, 90)),
    )
    .await
    .unwrap();
    let obj = wait_parents(&client, "echo", |o| {
        is(o, "Accepted", "True", "Accepted") && is(o, "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await;
    let parents = obj["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_eq!(parents[0]["parentRef"]["name"], "echo");
    assert_eq!(parents[0]["parentRef"]["kind"], "Service");
    assert_eq!(parents[0]["parentRef"]["port"], 7070);
    // weft owns status.parents (server-side apply, field manager `weft`), nothing in spec.
    let ours: Vec<&Value> = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["manager"] == "weft")
        .collect();
    assert_eq!(ours.len(), 1, "{}", obj["metadata"]["managedFields"]);
    assert_eq!(ours[0]["operation"], "Apply");
    assert!(
        ours[0]["fieldsV1"]["f:status"]["f:parents"].is_object(),
        "{}",
        ours[0]
    );
    assert!(ours[0]["fieldsV1"].get("f:spec").is_none(), "{}", ours[0]);

    // A new generation (a weight edit) is observed; a missing backend is reported.
    let mut edited = grpc_route("echo", "echo", 7070, 50);
    edited["spec"]["rules"][0]["backendRefs"][1]["name"] = json!("echo-v3");
    api.patch(
        "echo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": edited["spec"]})),
    )
    .await
    .unwrap();
    let obj = wait_parents(&client, "echo", |o| {
        o["metadata"]["generation"] == 2
            && is(o, "Accepted", "True", "Accepted")
            && is(o, "ResolvedRefs", "False", "BackendNotFound")
    })
    .await;
    assert!(
        parent_condition(&obj, "ResolvedRefs").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("echo-v3"),
        "{}",
        obj["status"]
    );

    // A Service whose only port is HTTP/1 cannot carry gRPC.
    api.create(
        &PostParams::default(),
        &object(grpc_route("web", "web", 7070, 50)),
    )
    .await
    .unwrap();
    wait_parents(&client, "web", |o| {
        is(o, "Accepted", "False", "NoMatchingParent")
    })
    .await;
    drop(op);
}
