//! The conversion webhook against a real kube-apiserver (1.20) and kubectl 1.20: GitOps
//! re-applies are no-ops at every served version (what the user wrote comes back exactly,
//! `metadata.generation` and `resourceVersion` do not move), server-side apply of partial
//! objects at old versions and the operator's status writes succeed, and every object reads at
//! every version of its kind.
//!
//! Needs `cargo build -p weft-operator --bins` first, and kubectl 1.20 (`$WEFT_KUBECTL`,
//! else `kubectl` in the kube cache folder next to kube-apiserver; [`weft_e2e::cluster::kubectl_120`]).
//! Run with the machine-wide lock:
//! `flock /tmp/weft-kube-e2e.lock cargo test -p weft-e2e --test kube_conversion`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{json, Value};
use weft_e2e::cluster::{kubectl_120, skip, Cluster};
use weft_e2e::operator::{wait_for, OperatorOptions, OperatorProcess, WebhookPlane};

const NS: &str = "conv";
const LIMIT: Duration = Duration::from_secs(60);

fn lock() -> Arc<tokio::sync::Mutex<()>> {
    static LOCK: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    LOCK.get_or_init(|| Arc::new(tokio::sync::Mutex::new(())))
        .clone()
}

struct Env {
    client: kube::Client,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
    op: OperatorProcess,
    // Dropped after the operator, before the lock.
    cluster: Cluster,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Env {
    /// On failure, print the operator's log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== operator log:\n{}\n", self.op.log_tail(80));
        }
    }
}

/// A control plane with the SMI CRDs converting through the operator's webhook, the
/// validating webhook, namespace `conv` with Services `web`, `web-v1`, `web-v2`, and one
/// operator (webhooks and status writer) ready. `None` after a loud skip.
async fn env(test: &str) -> Option<Env> {
    let guard = lock().lock_owned().await;
    let kubectl = match kubectl_120() {
        Ok(k) => k,
        Err(e) => {
            skip(test, &e);
            return None;
        }
    };
    let WebhookPlane {
        cluster,
        client,
        dir,
        bin,
        certs,
        webhook_port,
        ..
    } = WebhookPlane::start(test, "weft-conv-", true, true).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [NS, "weft-system"] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    for name in ["web", "web-v1", "web-v2"] {
        let svc = json!({
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]}
        });
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(svc).unwrap(),
            )
            .await
            .unwrap();
    }
    let options = OperatorOptions {
        webhook: Some((certs, webhook_port)),
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
    op.wait_ready(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("operator: {e}"));
    Some(Env {
        client,
        dir,
        kubectl,
        op,
        cluster,
        _guard: guard,
    })
}

fn plural(kind: &str) -> String {
    format!("{}s", kind.to_lowercase())
}

fn api(client: &kube::Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural(kind));
    Api::namespaced_with(client.clone(), NS, &ar)
}

/// Every served version of a kind, oldest first.
fn versions(kind: &str) -> Vec<String> {
    let (group, names): (&str, &[&str]) = match kind {
        "TrafficSplit" => (
            "split.smi-spec.io",
            &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
        ),
        "TrafficTarget" => ("access.smi-spec.io", &["v1alpha1", "v1alpha2", "v1alpha3"]),
        _ => (
            "specs.smi-spec.io",
            &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
        ),
    };
    names.iter().map(|v| format!("{group}/{v}")).collect()
}

impl Env {
    /// Runs kubectl with the test cluster's kubeconfig in namespace `conv`.
    async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new(&self.kubectl);
        cmd.arg(format!(
            "--kubeconfig={}",
            self.cluster.kubeconfig.display()
        ))
        .arg(format!("--namespace={NS}"))
        .args(args)
        .kill_on_drop(true);
        let out = tokio::time::timeout(LIMIT, cmd.output())
            .await
            .map_err(|_| format!("kubectl {args:?} timed out"))?
            .map_err(|e| format!("kubectl {args:?}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "kubectl {args:?}: {}\n{stdout}{stderr}",
                out.status
            ))
        }
    }

    /// Writes `objects` as one file of JSON documents one after the other (JSON, so that
    /// kubectl's YAML 1.1 cannot read `yes` as a boolean) and returns its path.
    fn manifest(&self, name: &str, objects: &[Value]) -> PathBuf {
        let docs: Vec<String> = objects
            .iter()
            .map(|o| serde_json::to_string_pretty(o).unwrap() + "\n")
            .collect();
        let path = self.dir.path().join(name);
        std::fs::write(&path, docs.concat()).unwrap();
        path
    }

    /// `kubectl get -o json` of `obj`'s kind and name at `api_version`.
    async fn kubectl_get(&self, api_version: &str, kind: &str, name: &str) -> Value {
        let (group, version) = api_version.split_once('/').unwrap();
        let resource = format!("{}.{version}.{group}", plural(kind));
        let out = self
            .kubectl(&["get", &resource, name, "-o", "json"])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&out).unwrap()
    }

    async fn get(&self, api_version: &str, kind: &str, name: &str) -> Result<Value, String> {
        let o = api(&self.client, api_version, kind)
            .get(name)
            .await
            .map_err(|e| format!("reading {kind} {name} as {api_version}: {e}"))?;
        Ok(serde_json::to_value(o).unwrap())
    }

    /// Waits until `obj`'s status has conditions that all observe its current generation;
    /// returns the object (at its own version).
    async fn wait_status(&self, obj: &Value) -> Value {
        let (api_version, kind, name) = ids(obj);
        wait_for(&format!("status of {kind} {name}"), LIMIT, || async move {
            let o = self.get(api_version, kind, name).await?;
            let generation = &o["metadata"]["generation"];
            let observed = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| c["type"] == "Accepted")
                        && cs.iter().all(|c| &c["observedGeneration"] == generation)
                });
            Ok(observed.then_some(o))
        })
        .await
        .unwrap()
    }

    /// `(generation, resourceVersion)` of every object, once two reads in a row (200 ms apart)
    /// agree: the operator has finished writing status.
    async fn settled_versions(&self, objects: &[Value]) -> BTreeMap<String, (Value, Value)> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        let mut last = BTreeMap::new();
        loop {
            let mut now = BTreeMap::new();
            for o in objects {
                let (api_version, kind, name) = ids(o);
                let live = self
                    .get(api_version, kind, name)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                now.insert(
                    format!("{kind}/{name}"),
                    (
                        live["metadata"]["generation"].clone(),
                        live["metadata"]["resourceVersion"].clone(),
                    ),
                );
            }
            if now == last {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status writes did not settle: {now:?}"
            );
            last = now;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn ids(obj: &Value) -> (&str, &str, &str) {
    (
        obj["apiVersion"].as_str().unwrap(),
        obj["kind"].as_str().unwrap(),
        obj["metadata"]["name"].as_str().unwrap(),
    )
}

/// What the user wrote besides `apiVersion`, `kind`, `metadata` and `status`.
fn body(obj: &Value) -> Value {
    let mut o = obj.clone();
    let m = o.as_object_mut().unwrap();
    for k in ["apiVersion", "kind", "metadata", "status"] {
        m.remove(k);
    }
    o
}

/// weft's annotations on `obj`.
fn weft_annotations(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| a.keys().filter(|k| k.contains("weft")).cloned().collect())
        .unwrap_or_default()
}

fn object(api_version: &str, kind: &str, name: &str, fields: Value) -> Value {
    let mut o = json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": NS}
    });
    for (k, v) in fields.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

/// One object per kind and served version, in the forms users write (v1alpha1 integer and
/// quantity weights, list- and map-form headers, number ports at v1alpha1).
fn user_objects() -> Vec<Value> {
    let split = |v: &str, name: &str, weights: Value, matches: bool| {
        let w = weights.as_array().unwrap();
        let mut spec = json!({"service": "web", "backends": [
            {"service": "web-v1", "weight": w[0]}, {"service": "web-v2", "weight": w[1]}]});
        if matches {
            spec["matches"] = json!([{"kind": "HTTPRouteGroup", "name": "hrg-v1alpha4"}]);
        }
        object(
            &format!("split.smi-spec.io/{v}"),
            "TrafficSplit",
            name,
            json!({ "spec": spec }),
        )
    };
    let target_spec = json!({
        "destination": {"kind": "ServiceAccount", "name": "web", "namespace": NS, "port": 8080},
        "sources": [{"kind": "ServiceAccount", "name": "client"}],
        "rules": [{"kind": "HTTPRouteGroup", "name": "hrg-v1alpha4", "matches": ["canary"]}]
    });
    let list_headers = json!([{"x-canary": "yes"}, {"user-agent": ".*Firefox.*"}]);
    let mut out = vec![
        split("v1alpha1", "ts-v1alpha1", json!([1, 3]), false),
        split(
            "v1alpha1",
            "ts-v1alpha1-quantity",
            json!(["500m", "1"]),
            false,
        ),
        split("v1alpha2", "ts-v1alpha2", json!([90, 10]), false),
        split("v1alpha3", "ts-v1alpha3", json!([1, 0]), true),
        split("v1alpha4", "ts-v1alpha4", json!([50, 50]), true),
        object(
            "access.smi-spec.io/v1alpha1",
            "TrafficTarget",
            "tt-v1alpha1",
            json!({
                "destination": {"kind": "ServiceAccount", "name": "web", "namespace": NS, "port": 8080},
                "sources": [{"kind": "ServiceAccount", "name": "client", "port": "9090"}],
                "specs": [{"kind": "HTTPRouteGroup", "name": "hrg-v1alpha4", "matches": ["canary"]}]
            }),
        ),
        object(
            "specs.smi-spec.io/v1alpha1",
            "HTTPRouteGroup",
            "hrg-v1alpha1",
            json!({"matches": [{"name": "api", "methods": ["GET"], "pathRegex": "/api"}]}),
        ),
        object(
            "specs.smi-spec.io/v1alpha2",
            "HTTPRouteGroup",
            "hrg-v1alpha2",
            json!({"matches": [{"name": "canary", "headers": list_headers}]}),
        ),
        object(
            "specs.smi-spec.io/v1alpha3",
            "HTTPRouteGroup",
            "hrg-v1alpha3",
            json!({"spec": {"matches": [{"name": "canary", "headers": list_headers}]}}),
        ),
        object(
            "specs.smi-spec.io/v1alpha4",
            "HTTPRouteGroup",
            "hrg-v1alpha4",
            json!({"spec": {"matches": [
                {"name": "canary", "headers": {"x-canary": "yes"}, "methods": ["GET", "POST"]}]}}),
        ),
    ];
    for v in ["v1alpha2", "v1alpha3"] {
        out.push(object(
            &format!("access.smi-spec.io/{v}"),
            "TrafficTarget",
            &format!("tt-{v}"),
            json!({ "spec": target_spec }),
        ));
    }
    for kind in ["TCPRoute", "UDPRoute"] {
        let short = if kind == "TCPRoute" { "tcp" } else { "udp" };
        for v in ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"] {
            let fields = match v {
                "v1alpha1" | "v1alpha2" => json!({}),
                "v1alpha3" => json!({"spec": {}}),
                _ => json!({"spec": {"matches": {"name": "db", "ports": [5432, 5433]}}}),
            };
            out.push(object(
                &format!("specs.smi-spec.io/{v}"),
                kind,
                &format!("{short}-{v}"),
                fields,
            ));
        }
    }
    out
}

fn resource_line(obj: &Value) -> String {
    let (api_version, kind, name) = ids(obj);
    let group = api_version.split_once('/').unwrap().0;
    format!("{}.{group}/{name}", kind.to_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_conversion_kubectl_apply_twice_is_a_no_op_at_every_version() {
    let Some(env) = env("kube_conversion_apply_twice").await else {
        return;
    };
    let objects = user_objects();
    let file = env.manifest("objects.yaml", &objects);
    let file = file.to_str().unwrap();
    let out = env
        .kubectl(&["apply", "-f", file])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for o in &objects {
        assert!(
            out.contains(&format!("{} created", resource_line(o))),
            "{out}"
        );
    }
    // The operator's status lands on objects written at every version (its server-side
    // apply goes through conversions of objects whose other managers are at that version).
    for o in &objects {
        env.wait_status(o).await;
    }
    let before = env.settled_versions(&objects).await;

    // The second apply of the same file changes nothing.
    let out = env
        .kubectl(&["apply", "-f", file])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for o in &objects {
        assert!(
            out.contains(&format!("{} unchanged", resource_line(o))),
            "{out}"
        );
    }
    let after = env.settled_versions(&objects).await;
    assert_eq!(
        after, before,
        "generation and resourceVersion after the second apply"
    );

    // At the user's version, exactly what they wrote, and nothing of weft's.
    for o in &objects {
        let (api_version, kind, name) = ids(o);
        let live = env.kubectl_get(api_version, kind, name).await;
        assert_eq!(live["apiVersion"], api_version);
        assert_eq!(
            body(&live),
            body(o),
            "{kind} {name} at {api_version}: {live:#}"
        );
        assert!(
            weft_annotations(&live).is_empty(),
            "{kind} {name} shows {:?} at its own version",
            weft_annotations(&live)
        );
    }

    // The read matrix: every object at every version of its kind.
    let mut reads = 0;
    for o in &objects {
        let (written_at, kind, name) = ids(o);
        for v in versions(kind) {
            let read = env
                .get(&v, kind, name)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(read["apiVersion"], v.as_str());
            assert_eq!(read["metadata"]["name"], name);
            assert!(
                read.pointer("/status/conditions").is_some(),
                "{kind} {name} written at {written_at}, read at {v}: {read:#}"
            );
            reads += 1;
        }
    }
    let expected: usize = objects
        .iter()
        .map(|o| versions(o["kind"].as_str().unwrap()).len())
        .sum();
    assert_eq!(reads, expected);

    // What the versions mean, spot-checked at the storage versions.
    let ts = env
        .get("split.smi-spec.io/v1alpha4", "TrafficSplit", "ts-v1alpha1")
        .await
        .unwrap();
    assert_eq!(
        ts["spec"]["backends"],
        json!([{"service": "web-v1", "weight": 1}, {"service": "web-v2", "weight": 3}])
    );
    let tt = env
        .get(
            "access.smi-spec.io/v1alpha3",
            "TrafficTarget",
            "tt-v1alpha1",
        )
        .await
        .unwrap();
    assert_eq!(tt["spec"]["sources"][0]["port"], 9090, "{tt:#}");
    let hrg = env
        .get(
            "specs.smi-spec.io/v1alpha4",
            "HTTPRouteGroup",
            "hrg-v1alpha2",
        )
        .await
        .unwrap();
    assert_eq!(
        hrg["spec"]["matches"][0]["headers"],
        json!([{"x-canary": "yes"}, {"user-agent": ".*Firefox.*"}])
    );

    // A write at a version that cannot express a field keeps it: the v1alpha4 split's
    // `matches` survive an update made at v1alpha2 (the view carries them in an annotation).
    let split_v2 = api(&env.client, "split.smi-spec.io/v1alpha2", "TrafficSplit");
    let mut at_v2 = split_v2.get("ts-v1alpha4").await.unwrap();
    assert!(
        weft_annotations(&serde_json::to_value(&at_v2).unwrap())
            .contains(&"weft.io/conversion-v1alpha4".to_string()),
        "{at_v2:?}"
    );
    at_v2
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("edited-at".into(), "v1alpha2".into());
    split_v2
        .replace("ts-v1alpha4", &PostParams::default(), &at_v2)
        .await
        .unwrap();
    let ts4 = env
        .get("split.smi-spec.io/v1alpha4", "TrafficSplit", "ts-v1alpha4")
        .await
        .unwrap();
    assert_eq!(ts4["metadata"]["labels"]["edited-at"], "v1alpha2");
    assert_eq!(body(&ts4), body(&objects[4]), "{ts4:#}");
    assert!(weft_annotations(&ts4).is_empty(), "{ts4:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_conversion_server_side_apply_at_old_versions() {
    let Some(env) = env("kube_conversion_ssa").await else {
        return;
    };
    let ts = object(
        "split.smi-spec.io/v1alpha1",
        "TrafficSplit",
        "ssa-split",
        json!({"spec": {"service": "web", "backends": [
            {"service": "web-v1", "weight": 1}, {"service": "web-v2", "weight": "500m"}]}}),
    );
    let hrg = object(
        "specs.smi-spec.io/v1alpha2",
        "HTTPRouteGroup",
        "ssa-routes",
        json!({"matches": [{"name": "canary", "headers": [{"x-canary": "yes"}]}]}),
    );
    let tt = object(
        "access.smi-spec.io/v1alpha1",
        "TrafficTarget",
        "ssa-target",
        json!({
            "destination": {"kind": "ServiceAccount", "name": "web", "namespace": NS},
            "sources": [{"kind": "ServiceAccount", "name": "client", "port": 9090}],
            "specs": [{"kind": "HTTPRouteGroup", "name": "ssa-routes", "matches": ["canary"]}]
        }),
    );
    let tcp = object(
        "specs.smi-spec.io/v1alpha2",
        "TCPRoute",
        "ssa-tcp",
        json!({}),
    );
    let objects = vec![ts.clone(), hrg.clone(), tt.clone(), tcp.clone()];
    let file = env.manifest("ssa.yaml", &objects);
    let file = file.to_str().unwrap();
    env.kubectl(&["apply", "--server-side", "-f", file])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The operator's status write (server-side apply on the status subresource, manager
    // `weft`) lands on objects whose spec manager is at v1alpha1/v1alpha2.
    for o in &objects {
        let live = env.wait_status(o).await;
        let managers: Vec<&str> = live["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert!(managers.contains(&"weft"), "{managers:?}");
    }

    // A partial object at an old version, from another field manager: only labels, and for
    // the split one field it shares with the first manager.
    let partials = vec![
        json!({"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
               "metadata": {"name": "ssa-split", "namespace": NS, "labels": {"team": "a"}},
               "spec": {"service": "web"}}),
        json!({"apiVersion": "specs.smi-spec.io/v1alpha2", "kind": "HTTPRouteGroup",
               "metadata": {"name": "ssa-routes", "namespace": NS, "labels": {"team": "a"}}}),
        json!({"apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",
               "metadata": {"name": "ssa-target", "namespace": NS, "labels": {"team": "a"}}}),
        json!({"apiVersion": "specs.smi-spec.io/v1alpha2", "kind": "TCPRoute",
               "metadata": {"name": "ssa-tcp", "namespace": NS, "labels": {"team": "a"}}}),
    ];
    let partial_file = env.manifest("partial.yaml", &partials);
    // (kubectl's client-side schema check wants whole objects; the API server checks the
    // merged result.)
    env.kubectl(&[
        "apply",
        "--server-side",
        "--validate=false",
        "--field-manager=labeler",
        "-f",
        partial_file.to_str().unwrap(),
    ])
    .await
    .unwrap_or_else(|e| panic!("partial server-side apply: {e}"));
    for o in &objects {
        let (api_version, kind, name) = ids(o);
        let live = env.kubectl_get(api_version, kind, name).await;
        assert_eq!(live["metadata"]["labels"]["team"], "a", "{live:#}");
        assert_eq!(body(&live), body(o), "{kind} {name}: {live:#}");
        assert!(weft_annotations(&live).is_empty(), "{live:#}");
    }
    for o in &objects {
        env.wait_status(o).await;
    }

    // Server-side apply of the same file again: nothing moves.
    let before = env.settled_versions(&objects).await;
    env.kubectl(&["apply", "--server-side", "-f", file])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = env.settled_versions(&objects).await;
    let generations = |m: &BTreeMap<String, (Value, Value)>| -> Vec<Value> {
        m.values().map(|(g, _)| g.clone()).collect()
    };
    assert_eq!(generations(&after), generations(&before));
    assert_eq!(after, before, "resourceVersion after the second apply");

    // The labeler gives up its fields (an empty apply): its labels go, the spec stays.
    let empty: Vec<Value> = partials
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p["metadata"].as_object_mut().unwrap().remove("labels");
            if let Some(m) = p.as_object_mut() {
                m.remove("spec");
            }
            p
        })
        .collect();
    let empty_file = env.manifest("empty.yaml", &empty);
    env.kubectl(&[
        "apply",
        "--server-side",
        "--validate=false",
        "--field-manager=labeler",
        "-f",
        empty_file.to_str().unwrap(),
    ])
    .await
    .unwrap_or_else(|e| panic!("pruning server-side apply: {e}"));
    for o in &objects {
        let (api_version, kind, name) = ids(o);
        let live = env.kubectl_get(api_version, kind, name).await;
        assert!(live["metadata"]["labels"].get("team").is_none(), "{live:#}");
        assert_eq!(body(&live), body(o), "{kind} {name}: {live:#}");
    }
    // The status writer still succeeds, and nothing the webhook answered failed.
    for o in &objects {
        env.wait_status(o).await;
    }
    let log = env.op.log_text();
    assert!(
        !log.contains("conversion failed"),
        "{}",
        env.op.log_tail(40)
    );
}
