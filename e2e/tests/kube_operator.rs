//! `weft-operator` against a real kube-apiserver (1.20, from `e2e/scripts/kube-build.sh`):
//! watch-driven pushes to a simulated proxy, status by server-side apply with Events, the CRD
//! conversion webhook, the validating webhook and the schema, leader election, and an API
//! server restart.
//!
//! Needs `cargo build -p weft-operator --bins` first (tests cannot run cargo themselves).
//! Each test starts its own control plane; the tests of this file run one at a time.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch};
use kube::api::{ListParams, PatchParams, PostParams};
use serde_json::{json, Value};
use weft_e2e::cluster::Cluster;
use weft_e2e::operator::{
    install_crds, outbound_routes, wait_for, OperatorOptions, OperatorProcess, RouteSummary,
    SimProxy, WebhookPlane, MANAGER,
};

const NS: &str = "e2e";
const LIMIT: Duration = Duration::from_secs(30);

fn lock() -> Arc<tokio::sync::Mutex<()>> {
    static LOCK: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    LOCK.get_or_init(|| Arc::new(tokio::sync::Mutex::new(())))
        .clone()
}

struct Env {
    client: kube::Client,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Webhook certificates folder, port, and the CA (the `caBundle`).
    certs: PathBuf,
    webhook_port: u16,
    webhook_ca: String,
    // Dropped after the operators (declared last in tests), before the lock.
    cluster: Cluster,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

/// A control plane with the SMI CRDs (conversion pointed at the webhook port the first operator
/// will serve), or `None` after a loud skip.
async fn env(test: &str, validating_webhook: bool) -> Option<Env> {
    env_with(test, true, validating_webhook).await
}

/// [`env`], with or without the SMI CRDs installed.
async fn env_with(test: &str, crds: bool, validating_webhook: bool) -> Option<Env> {
    let guard = lock().lock_owned().await;
    let WebhookPlane {
        cluster,
        client,
        dir,
        bin,
        certs,
        webhook_port,
        webhook_ca: ca,
    } = WebhookPlane::start(test, "weft-op-", crds, validating_webhook).await?;
    Some(Env {
        client,
        dir,
        bin,
        certs,
        webhook_port,
        webhook_ca: ca,
        cluster,
        _guard: guard,
    })
}

impl Drop for Env {
    /// On failure, print the operators' logs (their folder is removed with the Env).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                eprintln!("==== {}:\n{tail}\n", e.path().display());
            }
        }
    }
}

impl Env {
    /// Starts an operator (the webhook server too when `webhooks`) and waits until it is ready.
    async fn operator(&self, name: &str, webhooks: bool, leader: bool) -> OperatorProcess {
        let options = OperatorOptions {
            webhook: webhooks.then(|| (self.certs.clone(), self.webhook_port)),
            leader: leader.then(|| ("weft-system".to_string(), name.to_string())),
            args: vec![],
        };
        let mut op = OperatorProcess::start(
            &self.bin,
            &self.cluster.kubeconfig,
            self.dir.path(),
            name,
            &options,
        )
        .unwrap();
        op.wait_ready(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        op
    }

    /// Namespace `e2e`; Services `web` (the apex), `web-v1`, `web-v2`; a meshed pod `client-0`
    /// with its IP and Ready condition.
    async fn base_objects(&self) {
        let c = &self.client;
        let ns: Api<Namespace> = Api::all(c.clone());
        for name in [NS, "weft-system"] {
            ns.create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
        }
        let svcs: Api<Service> = Api::namespaced(c.clone(), NS);
        for (name, version) in [
            ("web", None),
            ("web-v1", Some("v1")),
            ("web-v2", Some("v2")),
        ] {
            let mut selector = json!({"app": "web"});
            if let Some(v) = version {
                selector["version"] = json!(v);
            }
            let svc = json!({
                "metadata": {"name": name, "namespace": NS},
                "spec": {"selector": selector, "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]}
            });
            svcs.create(
                &PostParams::default(),
                &serde_json::from_value(svc).unwrap(),
            )
            .await
            .unwrap();
        }
        let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "client-0", "namespace": NS,
                         "labels": {"app": "client", "weft.io/proxy-version": "0.1.0"}},
            "spec": {"containers": [{"name": "app", "image": "weft-test-app"}], "nodeName": "e2e"}
        }))
        .unwrap();
        // The ServiceAccount admission plugin refuses pods until the default SA has a token.
        wait_for("creating pod client-0", LIMIT, || {
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
            "phase": "Running", "podIP": "198.18.0.20", "podIPs": [{"ip": "198.18.0.20"}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }});
        pods.patch_status("client-0", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    async fn apply(&self, obj: Value) -> Result<Value, kube::Error> {
        let api = smi_api(
            &self.client,
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let out = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await?;
        Ok(serde_json::to_value(out).unwrap())
    }

    async fn get(&self, api_version: &str, kind: &str, name: &str) -> Value {
        let got = smi_api(&self.client, api_version, kind)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading {kind} {name} as {api_version}: {e}"));
        serde_json::to_value(got).unwrap()
    }

    async fn delete(&self, api_version: &str, kind: &str, name: &str) {
        smi_api(&self.client, api_version, kind)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Waits until the split's conditions satisfy `done` (read as v1alpha4).
    async fn wait_split_status(&self, name: &str, done: impl Fn(&Value) -> bool) -> Value {
        let api = smi_api(&self.client, "split.smi-spec.io/v1alpha4", "TrafficSplit");
        let done = &done;
        wait_for(&format!("status of TrafficSplit {name}"), LIMIT, || {
            let api = api.clone();
            async move {
                let obj = serde_json::to_value(api.get(name).await.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                if done(&obj) {
                    Ok(Some(obj))
                } else {
                    Err(format!("status: {}", obj["status"]))
                }
            }
        })
        .await
        .unwrap()
    }
}

fn smi_api(client: &kube::Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_lowercase()));
    Api::namespaced_with(client.clone(), NS, &ar)
}

fn split(name: &str, backends: Value) -> Value {
    json!({
        "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"service": "web", "backends": backends}
    })
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn cond_is(obj: &Value, type_: &str, status: &str) -> bool {
    condition(obj, type_).is_some_and(|c| c["status"] == status)
}

/// Every condition carries the object's current generation.
fn observed_current(obj: &Value) -> bool {
    let generation = &obj["metadata"]["generation"];
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            !cs.is_empty() && cs.iter().all(|c| &c["observedGeneration"] == generation)
        })
}

fn split_route(name: &str) -> String {
    format!("split:{NS}/{name}")
}

fn weights(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(s, w)| (s.to_string(), *w)).collect()
}

/// The routes of `outbound:web.e2e` the proxy holds (empty when it holds none).
fn web_routes(state: &weft_proxy_api::ClientState) -> Vec<RouteSummary> {
    outbound_routes(state, "web", NS).unwrap_or_default()
}

fn has_split(state: &weft_proxy_api::ClientState, name: &str, want: &[(String, u64)]) -> bool {
    web_routes(state)
        .iter()
        .any(|(r, b)| r == &split_route(name) && b == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_operator_pushes_watched_changes_to_proxies() {
    let Some(env) = env("kube_operator_pushes", true).await else {
        return;
    };
    env.base_objects().await;
    let op = env.operator("weft-operator", true, false).await;

    let mut proxy = SimProxy::connect(op.discovery_addr, NS, "client-0", "default")
        .await
        .unwrap();
    let first = proxy.next(LIMIT).await.unwrap();
    assert!(first.full_state, "the first response is full state");
    assert!(
        proxy.state.resources().contains_key("inbound"),
        "the meshed pod gets its inbound policy: {:?}",
        proxy.state.resources().keys().collect::<Vec<_>>()
    );
    let routes = web_routes(&proxy.state);
    assert_eq!(
        routes.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["default"],
        "before any split, web has only its default route"
    );

    // Creating a split pushes its weights.
    env.apply(split(
        "web-split",
        json!([{"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}]),
    ))
    .await
    .unwrap();
    let w1 = weights(&[("web-v1", 90), ("web-v2", 10)]);
    proxy
        .wait_until("the split's weights", LIMIT, |s| {
            has_split(s, "web-split", &w1)
        })
        .await
        .unwrap();
    let v1 = proxy.state.version().to_string();

    // Editing it pushes the new weights.
    env.apply(split(
        "web-split",
        json!([{"service": "web-v1", "weight": 20}, {"service": "web-v2", "weight": 80}]),
    ))
    .await
    .unwrap();
    let w2 = weights(&[("web-v1", 20), ("web-v2", 80)]);
    proxy
        .wait_until("the edited weights", LIMIT, |s| {
            has_split(s, "web-split", &w2)
        })
        .await
        .unwrap();
    assert_ne!(proxy.state.version(), v1, "a new config version");

    // Deleting it restores the default route alone.
    env.delete("split.smi-spec.io/v1alpha4", "TrafficSplit", "web-split")
        .await;
    proxy
        .wait_until("the default route alone", LIMIT, |s| {
            let r = web_routes(s);
            r.len() == 1 && r[0].0 == "default"
        })
        .await
        .unwrap();

    // The operator reports the proxy and its ACKed version.
    let (code, body) = op.admin_get("/proxies").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("e2e/client-0"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_operator_writes_status_by_server_side_apply() {
    let Some(env) = env("kube_operator_status", true).await else {
        return;
    };
    env.base_objects().await;
    let _op = env.operator("weft-operator", true, false).await;

    env.apply(split(
        "canary",
        json!([{"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}]),
    ))
    .await
    .unwrap();
    let obj = env
        .wait_split_status("canary", |o| {
            cond_is(o, "Accepted", "True")
                && cond_is(o, "ResolvedRefs", "True")
                && observed_current(o)
        })
        .await;
    assert!(cond_is(&obj, "Conflicted", "False"), "{}", obj["status"]);
    let managers: Vec<&Value> = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["manager"] == "weft")
        .collect();
    assert_eq!(managers.len(), 1, "{}", obj["metadata"]["managedFields"]);
    assert_eq!(managers[0]["operation"], "Apply");
    assert!(
        managers[0]["fieldsV1"]["f:status"]["f:conditions"].is_object(),
        "weft owns status.conditions: {}",
        managers[0]
    );
    assert!(
        managers[0]["fieldsV1"].get("f:spec").is_none(),
        "weft owns nothing in spec"
    );

    // A new generation is observed.
    env.apply(split(
        "canary",
        json!([{"service": "web-v1", "weight": 50}, {"service": "web-v2", "weight": 50}]),
    ))
    .await
    .unwrap();
    let obj = env
        .wait_split_status("canary", |o| {
            o["metadata"]["generation"] == 2 && observed_current(o)
        })
        .await;
    assert!(cond_is(&obj, "Accepted", "True"), "{}", obj["status"]);

    // A missing backend: ResolvedRefs=False with a reason, and a Warning Event.
    let broken = split(
        "broken",
        json!([{"service": "web-v1", "weight": 1}, {"service": "web-missing", "weight": 1}]),
    );
    let mut broken = broken;
    broken["spec"]["service"] = json!("web-v2");
    env.apply(broken).await.unwrap();
    let obj = env
        .wait_split_status("broken", |o| cond_is(o, "ResolvedRefs", "False"))
        .await;
    let rr = condition(&obj, "ResolvedRefs").unwrap();
    assert_eq!(rr["reason"], "BackendNotFound", "{rr}");
    assert!(
        rr["message"].as_str().unwrap().contains("web-missing"),
        "{rr}"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), NS);
    let ev = wait_for("a Warning Event for the broken split", LIMIT, || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(list.items.into_iter().find(|e| {
                e.involved_object.name.as_deref() == Some("broken")
                    && e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("BackendNotFound")
            }))
        }
    })
    .await
    .unwrap();
    assert_eq!(ev.involved_object.kind.as_deref(), Some("TrafficSplit"));
    assert!(
        ev.message.as_deref().unwrap_or("").contains("web-missing"),
        "{ev:?}"
    );

    // Two splits on one apex: the younger one is Conflicted.
    env.apply(split(
        "canary-younger",
        json!([{"service": "web-v1", "weight": 1}]),
    ))
    .await
    .unwrap();
    let obj = env
        .wait_split_status("canary-younger", |o| cond_is(o, "Conflicted", "True"))
        .await;
    assert!(cond_is(&obj, "Accepted", "False"), "{}", obj["status"]);
    let msg = condition(&obj, "Conflicted").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("e2e/canary"), "{msg}");
    let older = env
        .get("split.smi-spec.io/v1alpha4", "TrafficSplit", "canary")
        .await;
    assert!(
        cond_is(&older, "Conflicted", "False"),
        "{}",
        older["status"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_operator_converts_between_served_versions() {
    let Some(env) = env("kube_operator_conversion", true).await else {
        return;
    };
    env.base_objects().await;
    let _op = env.operator("weft-operator", true, false).await;

    env.apply(json!({
        "apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": "old", "namespace": NS},
        "spec": {"service": "web", "backends": [
            {"service": "web-v1", "weight": "500m"}, {"service": "web-v2", "weight": 1}]}
    }))
    .await
    .unwrap();
    for version in ["v1alpha4", "v1alpha2"] {
        let obj = env
            .get(
                &format!("split.smi-spec.io/{version}"),
                "TrafficSplit",
                "old",
            )
            .await;
        assert_eq!(obj["apiVersion"], format!("split.smi-spec.io/{version}"));
        assert_eq!(
            obj["spec"]["backends"],
            json!([{"service": "web-v1", "weight": 500}, {"service": "web-v2", "weight": 1000}]),
            "{version}: {obj}"
        );
        assert_eq!(
            obj["metadata"]["annotations"]["split.smi-spec.io/weft-original-weights"], "[500,1000]",
            "{version}: {}",
            obj["metadata"]
        );
    }
    // And back: the original quantities.
    let obj = env
        .get("split.smi-spec.io/v1alpha1", "TrafficSplit", "old")
        .await;
    assert_eq!(obj["spec"]["backends"][0]["weight"], "500m", "{obj}");

    env.apply(json!({
        "apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",
        "metadata": {"name": "allow-client", "namespace": NS},
        "destination": {"kind": "ServiceAccount", "name": "web", "namespace": NS, "port": "8080"},
        "sources": [{"kind": "ServiceAccount", "name": "client", "namespace": NS}],
        "specs": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["get"]}]
    }))
    .await
    .unwrap();
    let obj = env
        .get(
            "access.smi-spec.io/v1alpha3",
            "TrafficTarget",
            "allow-client",
        )
        .await;
    assert_eq!(
        obj["spec"]["destination"],
        json!({"kind": "ServiceAccount", "name": "web", "namespace": NS, "port": 8080}),
        "{obj}"
    );
    assert_eq!(
        obj["spec"]["rules"],
        json!([{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["get"]}]),
        "{obj}"
    );
    assert_eq!(obj["spec"]["sources"][0]["name"], "client", "{obj}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_operator_validating_webhook_and_schema_reject_bad_splits() {
    let Some(env) = env("kube_operator_validation", true).await else {
        return;
    };
    env.base_objects().await;
    let _op = env.operator("weft-operator", true, false).await;

    let err = env
        .apply(split(
            "zero",
            json!([{"service": "web-v1", "weight": 0}, {"service": "web-v2", "weight": 0}]),
        ))
        .await
        .expect_err("weights summing to 0 are rejected");
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert!(
        status
            .message
            .contains("admission webhook \"smi.validate.weft.io\" denied")
            && status.message.contains("weights sum to 0"),
        "{status:?}"
    );

    let err = env
        .apply(split(
            "negative",
            json!([{"service": "web-v1", "weight": -1}]),
        ))
        .await
        .expect_err("a negative weight breaks the schema");
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(status.message.contains("spec.backends"), "{status:?}");

    // A valid split still passes both.
    env.apply(split("fine", json!([{"service": "web-v1", "weight": 1}])))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_operator_leader_election_fails_over() {
    let Some(env) = env("kube_operator_leader", false).await else {
        return;
    };
    env.base_objects().await;
    let mut a = env.operator("weft-operator-a", true, true).await;
    let mut b = env.operator("weft-operator-b", false, true).await;

    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "weft-system");
    let holder = || {
        let leases = leases.clone();
        async move {
            let lease = leases
                .get_opt("weft-operator")
                .await
                .map_err(|e| e.to_string())?;
            Ok(lease
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty()))
        }
    };
    let first = wait_for("a lease holder", LIMIT, holder).await.unwrap();
    assert!(
        first == "weft-operator-a" || first == "weft-operator-b",
        "{first}"
    );

    // The leader writes status.
    env.apply(split("one", json!([{"service": "web-v1", "weight": 1}])))
        .await
        .unwrap();
    env.wait_split_status("one", |o| cond_is(o, "Accepted", "True"))
        .await;

    // Kill the leader: the other takes the lease over and writes status for a new object.
    let (leader, follower, follower_name) = if first == "weft-operator-a" {
        (&mut a, &mut b, "weft-operator-b")
    } else {
        (&mut b, &mut a, "weft-operator-a")
    };
    leader.kill().await;
    let next = wait_for("the lease taken over", Duration::from_secs(60), || async {
        match holder().await? {
            Some(h) if h == follower_name => Ok(Some(h)),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(next, follower_name);
    // (On another root service: a second split on `web` would be Conflicted.)
    let mut two = split("two", json!([{"service": "web-v1", "weight": 1}]));
    two["spec"]["service"] = json!("web-v2");
    env.apply(two).await.unwrap();
    env.wait_split_status("two", |o| {
        cond_is(o, "Accepted", "True") && observed_current(o)
    })
    .await;
    assert!(follower.is_running());
    assert!(
        follower.log_text().contains("acquired the lease"),
        "{}",
        follower.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_operator_resumes_watches_after_api_server_restart() {
    let Some(mut env) = env("kube_operator_apiserver_restart", true).await else {
        return;
    };
    env.base_objects().await;
    let mut op = env.operator("weft-operator", true, false).await;
    let mut proxy = SimProxy::connect(op.discovery_addr, NS, "client-0", "default")
        .await
        .unwrap();
    env.apply(split(
        "web-split",
        json!([{"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}]),
    ))
    .await
    .unwrap();
    let w1 = weights(&[("web-v1", 90), ("web-v2", 10)]);
    proxy
        .wait_until("the split's weights", LIMIT, |s| {
            has_split(s, "web-split", &w1)
        })
        .await
        .unwrap();

    // The API server goes away and comes back (etcd keeps the data).
    env.cluster.restart("kube-apiserver").await.unwrap();
    assert!(op.is_running(), "{}", op.log_tail(30));

    // A later change still reaches the proxy (whose stream never broke), and status is written.
    env.apply(split(
        "web-split",
        json!([{"service": "web-v1", "weight": 30}, {"service": "web-v2", "weight": 70}]),
    ))
    .await
    .unwrap();
    let w2 = weights(&[("web-v1", 30), ("web-v2", 70)]);
    proxy
        .wait_until("the weights changed after the restart", LIMIT, |s| {
            has_split(s, "web-split", &w2)
        })
        .await
        .unwrap();
    env.wait_split_status("web-split", |o| {
        o["metadata"]["generation"] == 2 && observed_current(o)
    })
    .await;
    op.wait_ready(LIMIT).await.unwrap();

    // An operator that starts while the API server is down watches everything once it is back.
    drop(proxy);
    op.kill().await;
    env.cluster.stop("kube-apiserver").await.unwrap();
    let options = OperatorOptions {
        webhook: Some((env.certs.clone(), env.webhook_port)),
        ..OperatorOptions::default()
    };
    let mut late = OperatorProcess::start(
        &env.bin,
        &env.cluster.kubeconfig,
        env.dir.path(),
        "weft-operator-late",
        &options,
    )
    .unwrap();
    // It has tried (and failed) to reach the API server before the server comes back.
    wait_for("the late operator to try the API server", LIMIT, || {
        let log = late.log_text();
        async move { Ok((log.contains("unreachable") || log.contains("not served")).then_some(())) }
    })
    .await
    .unwrap();
    env.cluster.start_again("kube-apiserver").await.unwrap();
    late.wait_ready(Duration::from_secs(60)).await.unwrap();
    let mut proxy = SimProxy::connect(late.discovery_addr, NS, "client-0", "default")
        .await
        .unwrap();
    proxy
        .wait_until("the split as it is after the restart", LIMIT, |s| {
            has_split(s, "web-split", &w2)
        })
        .await
        .unwrap();
    env.apply(split(
        "web-split",
        json!([{"service": "web-v1", "weight": 60}, {"service": "web-v2", "weight": 40}]),
    ))
    .await
    .unwrap();
    let w3 = weights(&[("web-v1", 60), ("web-v2", 40)]);
    proxy
        .wait_until("a change seen by the late operator", LIMIT, |s| {
            has_split(s, "web-split", &w3)
        })
        .await
        .unwrap();
    env.wait_split_status("web-split", |o| {
        o["metadata"]["generation"] == 3 && observed_current(o)
    })
    .await;
}

/// The CRD names of the SMI kinds weft watches.
const SMI_CRDS: [&str; 5] = [
    "trafficsplits.split.smi-spec.io",
    "traffictargets.access.smi-spec.io",
    "httproutegroups.specs.smi-spec.io",
    "tcproutes.specs.smi-spec.io",
    "udproutes.specs.smi-spec.io",
];

/// `GET /status` as JSON: its `unwatchedKinds` keys.
async fn unwatched_kinds(op: &OperatorProcess) -> Result<Vec<String>, String> {
    let (code, body) = op.admin_get("/status").await?;
    if code != 200 {
        return Err(format!("/status: {code} {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let kinds = v
        .get("unwatchedKinds")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no unwatchedKinds in /status: {body}"))?;
    Ok(kinds.keys().cloned().collect())
}

/// `weft_operator_watch_errors_total` of one resource (0 when the series does not exist yet).
async fn watch_errors(op: &OperatorProcess, resource: &str) -> f64 {
    let (code, body) = op.admin_get("/metrics").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let prefix = format!("weft_operator_watch_errors_total{{resource=\"{resource}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_operator_watches_smi_crds_installed_after_it_started() {
    let Some(env) = env_with("kube_operator_crds_later", false, false).await else {
        return;
    };
    env.base_objects().await;

    // No SMI CRDs: the operator still becomes ready, says which kinds it does not watch, and
    // serves config.
    let op = env.operator("weft-operator", true, false).await;
    let (code, body) = op.admin_get("/ready").await.unwrap();
    assert_eq!(code, 200, "{body}");
    for crd in SMI_CRDS {
        assert!(
            body.contains(&format!("SMI kind {crd} not watched")),
            "{body}"
        );
    }
    let mut unwatched = unwatched_kinds(&op).await.unwrap();
    unwatched.sort();
    let mut want: Vec<String> = SMI_CRDS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(unwatched, want);
    let mut proxy = SimProxy::connect(op.discovery_addr, NS, "client-0", "default")
        .await
        .unwrap();
    let first = proxy.next(LIMIT).await.unwrap();
    assert!(first.full_state, "the first response is full state");
    let routes = web_routes(&proxy.state);
    assert_eq!(
        routes.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["default"],
        "without SMI, web has its default route"
    );

    // The CRDs are installed (as a GitOps tool would, after the operator): a split applied
    // now reaches the proxy and gets its status, without restarting the operator.
    let base = format!("https://127.0.0.1:{}", env.webhook_port);
    install_crds(&env.client, Some((&base, &env.webhook_ca)))
        .await
        .unwrap();
    env.apply(split(
        "web-split",
        json!([{"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}]),
    ))
    .await
    .unwrap();
    let w1 = weights(&[("web-v1", 90), ("web-v2", 10)]);
    proxy
        .wait_until("the split's weights after the CRDs appeared", LIMIT, |s| {
            has_split(s, "web-split", &w1)
        })
        .await
        .unwrap();
    env.wait_split_status("web-split", |o| {
        cond_is(o, "Accepted", "True") && observed_current(o)
    })
    .await;
    wait_for("every SMI kind watched", LIMIT, || async {
        let unwatched = unwatched_kinds(&op).await?;
        let (code, body) = op.admin_get("/ready").await?;
        Ok((unwatched.is_empty() && code == 200 && body == "ready\n").then_some(()))
    })
    .await
    .unwrap();

    // The TrafficSplit CRD is deleted while the operator runs: its splits leave the proxy's
    // config, the kind is reported unwatched, and its watcher stops (no more watch errors).
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.delete(SMI_CRDS[0], &DeleteParams::default())
        .await
        .unwrap();
    proxy
        .wait_until("the default route alone after the CRD went", LIMIT, |s| {
            let r = web_routes(s);
            r.len() == 1 && r[0].0 == "default"
        })
        .await
        .unwrap();
    wait_for("TrafficSplit reported unwatched", LIMIT, || async {
        let unwatched = unwatched_kinds(&op).await?;
        let (_, body) = op.admin_get("/ready").await?;
        Ok((unwatched == [SMI_CRDS[0]]
            && body.contains(&format!("SMI kind {} not watched", SMI_CRDS[0])))
        .then_some(()))
    })
    .await
    .unwrap();
    let errors = watch_errors(&op, SMI_CRDS[0]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        watch_errors(&op, SMI_CRDS[0]).await,
        errors,
        "the watcher of a kind that is not served anymore is stopped"
    );
    let (code, _) = op.admin_get("/ready").await.unwrap();
    assert_eq!(code, 200, "the rest is still served");

    // Installed again: watched again.
    wait_for("the CRD gone", LIMIT, || {
        let crds = crds.clone();
        async move {
            let got = crds.get_opt(SMI_CRDS[0]).await.map_err(|e| e.to_string())?;
            Ok(got.is_none().then_some(()))
        }
    })
    .await
    .unwrap();
    install_crds(&env.client, Some((&base, &env.webhook_ca)))
        .await
        .unwrap();
    env.apply(split(
        "web-split",
        json!([{"service": "web-v1", "weight": 30}, {"service": "web-v2", "weight": 70}]),
    ))
    .await
    .unwrap();
    let w2 = weights(&[("web-v1", 30), ("web-v2", 70)]);
    proxy
        .wait_until("the split after the CRD came back", LIMIT, |s| {
            has_split(s, "web-split", &w2)
        })
        .await
        .unwrap();
    env.wait_split_status("web-split", |o| {
        cond_is(o, "Accepted", "True") && observed_current(o)
    })
    .await;
    assert!(unwatched_kinds(&op).await.unwrap().is_empty());
}
