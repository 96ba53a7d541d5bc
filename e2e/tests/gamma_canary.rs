//! Canary tools driving weft through Gateway API HTTPRoutes (GAMMA) on the real API server, with
//! the operator installed by the Helm chart, pods injected by the webhook, and the traffic sent
//! by a meshed client pod (through its proxy, iptables-redirected):
//!
//! * **Flagger-style** (`gatewayapi:v1` provider, fluxcd/flagger `pkg/router/gateway_api.go`):
//!   the provider *creates* the HTTPRoute named after the apex Service (`Get`, NotFound →
//!   `Create`) with one rule matching `PathPrefix /` and two backendRefs, primary 100 and canary
//!   0; before each step it reads the route back and refuses to go on until, for each parentRef,
//!   the `status.parents[]` entry with that parentRef has `Accepted=True` with
//!   `observedGeneration` equal to the route's `metadata.generation` (its `GetRoutes`); each step
//!   replaces the rule with the new weights by `Update` (its `SetRoutes`). Canary weight 0 → 10 →
//!   50 → 100, then promotion (primary 100, canary 0); at each step a meshed client's 1000
//!   requests must show the canary's share within ±5 points of its weight.
//! * **Argo-Rollouts-plugin-style** (argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi,
//!   `pkg/plugin/httproute.go`): the *user* creates the route (server-side apply, as `kubectl
//!   apply --server-side` does); the plugin edits `backendRefs[].weight` of the stable and canary
//!   refs in place (`Get` → edit → `Update`, retried on conflict, adding or removing its
//!   `rollouts.argoproj.io/gatewayapi-canary: in-progress` label); a `setHeaderRoute` step appends
//!   a **named** rule (`rules[].name`) whose matches are the source rule's (as the API server
//!   defaulted them) plus the header match, sending to the canary only; removing it filters that
//!   rule out by name. Asserted: header traffic all to the canary while the rule exists, other
//!   traffic by weight; once removed, header traffic by weight too.
//!
//! Both run on one cluster (setting one up costs more than both flows). Before each measurement
//! the client's proxy must hold exactly the route's new weights (its `/config`), so a share is
//! never measured across a config change.
//!
//! The e2e kube-apiserver is 1.20, which refuses the upstream CRD's `x-kubernetes-validations`
//! (CEL, Kubernetes ≥ 1.25); the test installs the vendored v1.5.1 HTTPRoute CRD without those
//! rules (schema, defaults and the rest unchanged). Needs what `kube_mesh` needs; skips loudly
//! otherwise (fails in CI). Run under `flock /tmp/weft-kube-e2e.lock`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_e2e::apply;
use weft_e2e::gateway_crds;
use weft_e2e::harness::{eventually, http_service, mesh_env, KubeEnv};

const TEST: &str = "gamma_canary";
const NS: &str = "test";
const GROUP_VERSION: &str = "gateway.networking.k8s.io/v1";
/// Requests per measured step, and how far the canary's share may be from its weight (upstream
/// conformance's ±5 points; at 1000 requests that is ≥ 3.1 standard errors at 50 %).
const REQUESTS: u32 = 1000;
const TOLERANCE: f64 = 0.05;

fn httproutes(env: &KubeEnv) -> kube::Api<kube::api::DynamicObject> {
    kube::Api::namespaced_with(
        env.client.clone(),
        NS,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
        ),
    )
}

/// The server's minor version, read when the CRDs are installed: routes are adapted to it.
static SERVER_MINOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The vendored Gateway API CRDs, adapted to the API server (`weft_e2e::gateway_crds`: the 1.20
/// server refuses upstream's CEL rules and empty-string defaults), Established.
async fn install_crd(env: &KubeEnv) {
    let installed = gateway_crds::install(&env.client)
        .await
        .unwrap_or_else(|e| panic!("installing the Gateway API CRDs: {e}"));
    let _ = SERVER_MINOR.set(installed.server_minor);
}

/// A route as this API server accepts it: before 1.25 `group: ""` is written `group: core`
/// (the same core group to weft; `gateway_crds::route_for_server` says why).
fn for_server(route: Value) -> Value {
    let minor = SERVER_MINOR
        .get()
        .copied()
        .unwrap_or(gateway_crds::CEL_MIN_MINOR);
    gateway_crds::route_for_server(route, minor).0
}

fn service(name: &str, selector: Value) -> Value {
    http_service(NS, name, selector)
}

/// A pod of weft's test app answering `<app> <version>`.
async fn app_pod(env: &KubeEnv, name: &str, labels: Value, app: &str, version: &str) {
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{
            "name": "app", "image": "weft-test-app",
            "env": [{"name": "APP_NAME", "value": app}, {"name": "APP_VERSION", "value": version}],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}
    }))
    .await;
}

/// `n` requests from the meshed `loadtester` pod to `http://<svc>.test.svc.cluster.local/`
/// (one curl, keep-alive: the proxy picks a backend per request), with extra curl arguments.
/// Returns (answers by body, non-200 answers).
async fn measure(env: &KubeEnv, svc: &str, n: u32, curl_args: &str) -> Measured {
    let script = format!(
        "curl -s --max-time 25 {curl_args} -w '%{{http_code}}\\n' 'http://{svc}.{NS}.svc.cluster.local/?[1-{n}]'"
    );
    let out = env
        .exec(NS, "loadtester", None, &["sh", "-c", &script])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = Measured::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.len() == 3 && line.chars().all(|c| c.is_ascii_digit()) {
            m.statuses.push(line.to_string());
        } else {
            m.bodies.push(line.to_string());
        }
    }
    m
}

#[derive(Debug, Default)]
struct Measured {
    bodies: Vec<String>,
    statuses: Vec<String>,
}

impl Measured {
    fn share(&self, body: &str) -> f64 {
        let hits = self.bodies.iter().filter(|b| b.as_str() == body).count();
        hits as f64 / self.bodies.len().max(1) as f64
    }
    /// Every request answered 200 by one of the two versions.
    fn assert_complete(&self, n: u32, what: &str) {
        assert_eq!(
            self.statuses.len(),
            n as usize,
            "{what}: {n} answers expected: {:?}",
            self.summary()
        );
        assert!(
            self.statuses.iter().all(|s| s == "200"),
            "{what}: non-200 answers: {:?}",
            self.summary()
        );
        assert_eq!(
            self.bodies.len(),
            n as usize,
            "{what}: {:?}",
            self.summary()
        );
    }
    fn summary(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for x in self.bodies.iter().chain(&self.statuses) {
            *m.entry(x.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// The proxy routes of `route` (by name prefix `httproute:test/<route>/`) in the loadtester's
/// proxy config, as `(route name, [(service, weight)])`, sorted.
async fn proxy_routes(env: &KubeEnv, route: &str) -> Vec<(String, Vec<(String, u64)>)> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<(String, Vec<(String, u64)>)>) {
        match v {
            Value::Object(m) => {
                if let (Some(name), Some(backends)) = (
                    m.get("name").and_then(Value::as_str),
                    m.get("backends").and_then(Value::as_array),
                ) {
                    if name.starts_with(prefix) {
                        let b = backends
                            .iter()
                            .map(|b| {
                                (
                                    b["service"].as_str().unwrap_or_default().to_string(),
                                    b["weight"].as_u64().unwrap_or(u64::MAX),
                                )
                            })
                            .collect();
                        out.push((name.to_string(), b));
                    }
                }
                m.values().for_each(|x| walk(x, prefix, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, prefix, out)),
            _ => {}
        }
    }
    let out = env
        .exec(
            NS,
            "loadtester",
            None,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "http://127.0.0.1:4191/config",
            ],
        )
        .await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut found = Vec::new();
    walk(&v, &format!("httproute:{NS}/{route}/"), &mut found);
    found.sort();
    found.dedup();
    found
}

/// Waits until the loadtester's proxy holds exactly `want` for `route`.
async fn wait_proxy(env: &KubeEnv, route: &str, want: &[(&str, &[(&str, u64)])]) {
    let mut want: Vec<(String, Vec<(String, u64)>)> = want
        .iter()
        .map(|(n, b)| {
            (
                format!("httproute:{NS}/{route}/{n}"),
                b.iter().map(|(s, w)| (s.to_string(), *w)).collect(),
            )
        })
        .collect();
    want.sort();
    eventually(
        &format!("the client's proxy holds route {route} = {want:?}"),
        Duration::from_secs(60),
        || proxy_routes(env, route),
        |got: &Vec<(String, Vec<(String, u64)>)>| *got == want,
    )
    .await;
}

/// Flagger's `GetRoutes` readiness rule: for every spec parentRef, the status entry with the
/// same parentRef has `Accepted=True` at the route's generation (weft's controller name too).
/// Returns the generation it holds for.
async fn flagger_wait_accepted(env: &KubeEnv, name: &str) -> i64 {
    let api = httproutes(env);
    let got = eventually(
        &format!("HTTPRoute {name}: Accepted=True for its generation on every parentRef"),
        Duration::from_secs(60),
        || async {
            api.get(name)
                .await
                .ok()
                .map(|o| serde_json::to_value(o).unwrap_or_default())
        },
        |o: &Option<Value>| o.as_ref().is_some_and(flagger_ready),
    )
    .await;
    got.and_then(|o| o["metadata"]["generation"].as_i64())
        .unwrap_or_default()
}

/// A parentRef without its unset (null) fields: Flagger compares typed structs
/// (`reflect.DeepEqual`), where an absent and a null optional field are the same.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), without_nulls(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn flagger_ready(route: &Value) -> bool {
    let Some(generation) = route["metadata"]["generation"].as_i64() else {
        return false;
    };
    let parents = route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let refs = route["spec"]["parentRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    !refs.is_empty()
        && refs.iter().all(|r| {
            parents.iter().any(|p| {
                without_nulls(&p["parentRef"]) == without_nulls(r)
                    && p["controllerName"] == "weft.io/mesh-controller"
                    && p["conditions"].as_array().into_iter().flatten().any(|c| {
                        c["type"] == "Accepted"
                            && c["status"] == "True"
                            && c["observedGeneration"].as_i64() == Some(generation)
                    })
            })
        })
}

/// Flagger's rule: PathPrefix `/`, primary and canary backendRefs (group "", kind Service, port).
fn flagger_spec(primary: i64, canary: i64) -> Value {
    let backend = |name: &str, weight: i64| json!({"group": "", "kind": "Service", "name": name, "port": 80, "weight": weight});
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "podinfo", "port": 80}],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [backend("podinfo-primary", primary), backend("podinfo-canary", canary)]
        }]
    })
}

/// `Get` → edit → `Update` (a PUT with the resourceVersion read), retried on 409 Conflict as
/// Argo's `retry.RetryOnConflict` does (and as Flagger's next reconcile would): weft's status
/// writes change the resourceVersion between a tool's read and its write.
async fn get_edit_update(env: &KubeEnv, name: &str, edit: impl Fn(&mut Value)) -> Value {
    let api = httproutes(env);
    for _ in 0..10 {
        let current = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"));
        let mut v = serde_json::to_value(&current).expect("route json");
        edit(&mut v);
        let obj: kube::api::DynamicObject = serde_json::from_value(for_server(v)).expect("route");
        match api.replace(name, &Default::default(), &obj).await {
            Ok(o) => return serde_json::to_value(o).expect("json"),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => panic!("update {name}: {e}"),
        }
    }
    panic!("update {name}: conflicts 10 times in a row")
}

fn assert_share(m: &Measured, body: &str, want: f64, what: &str) {
    let got = m.share(body);
    eprintln!(
        "{what}: {body} share {got:.3} (weight {want:.2}) over {} requests",
        m.bodies.len()
    );
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{what}: {body} share {got:.3}, weight {want:.2} (±{TOLERANCE}): {:?}",
        m.summary()
    );
}

async fn flagger_flow(env: &KubeEnv) {
    let api = httproutes(env);
    // Reconcile: Get → NotFound → Create, primary 100 / canary 0.
    match api.get_opt("podinfo").await {
        Ok(None) => {}
        other => panic!("Flagger creates the route only when absent: {other:?}"),
    }
    apply::create(
        &env.client,
        &for_server(json!({"apiVersion": GROUP_VERSION, "kind": "HTTPRoute",
            "metadata": {"name": "podinfo", "namespace": NS},
            "spec": flagger_spec(100, 0)})),
    )
    .await
    .unwrap_or_else(|e| panic!("Flagger's create: {e}"));

    let steps: [i64; 4] = [0, 10, 50, 100];
    for (i, canary) in steps.iter().copied().enumerate() {
        if i > 0 {
            // SetRoutes: the whole rule replaced with the new weights.
            let updated = get_edit_update(env, "podinfo", |v| {
                v["spec"] = flagger_spec(100 - canary, canary);
            })
            .await;
            assert!(
                !flagger_ready(&updated),
                "right after an update the status is for the previous generation: Flagger waits"
            );
        }
        // GetRoutes: not ready until Accepted=True for this generation.
        let generation = flagger_wait_accepted(env, "podinfo").await;
        eprintln!("Flagger step {canary}%: route Accepted at generation {generation}");
        wait_proxy(
            env,
            "podinfo",
            &[(
                "rule-0",
                &[
                    ("podinfo-primary", (100 - canary) as u64),
                    ("podinfo-canary", canary as u64),
                ],
            )],
        )
        .await;
        let m = measure(env, "podinfo", REQUESTS, "").await;
        m.assert_complete(REQUESTS, "Flagger step");
        assert_share(
            &m,
            "podinfo canary",
            canary as f64 / 100.0,
            &format!("Flagger canary {canary}%"),
        );
    }

    // Promotion: primary 100, canary 0 (Flagger then scales the canary down).
    get_edit_update(env, "podinfo", |v| v["spec"] = flagger_spec(100, 0)).await;
    flagger_wait_accepted(env, "podinfo").await;
    wait_proxy(
        env,
        "podinfo",
        &[("rule-0", &[("podinfo-primary", 100), ("podinfo-canary", 0)])],
    )
    .await;
    let m = measure(env, "podinfo", REQUESTS, "").await;
    m.assert_complete(REQUESTS, "Flagger promoted");
    assert_eq!(m.share("podinfo primary"), 1.0, "{:?}", m.summary());
}

const ARGO_LABEL: &str = "rollouts.argoproj.io/gatewayapi-canary";
const HEADER_RULE: &str = "canary-header";

/// Argo's `setHTTPRouteWeight`: canary = `w`, stable = 100 - `w` on every backendRef of every
/// rule it does not manage; the in-progress label while `w` != 0.
async fn argo_set_weight(env: &KubeEnv, w: i64) {
    get_edit_update(env, "rollouts-demo", |v| {
        let mut canary_found = false;
        let mut stable_found = false;
        for rule in v["spec"]["rules"].as_array_mut().into_iter().flatten() {
            if rule["name"] == HEADER_RULE {
                continue;
            }
            for b in rule["backendRefs"].as_array_mut().into_iter().flatten() {
                if b["name"] == "rollouts-demo-canary" {
                    b["weight"] = json!(w);
                    canary_found = true;
                } else if b["name"] == "rollouts-demo-stable" {
                    b["weight"] = json!(100 - w);
                    stable_found = true;
                }
            }
        }
        assert!(
            canary_found && stable_found,
            "backendRef was not found in httpRoute"
        );
        let labels = &mut v["metadata"]["labels"];
        if labels.is_null() {
            *labels = json!({});
        }
        if let Some(l) = labels.as_object_mut() {
            if w == 0 {
                l.remove(ARGO_LABEL);
            } else {
                l.insert(ARGO_LABEL.into(), json!("in-progress"));
            }
        }
    })
    .await;
}

async fn argo_flow(env: &KubeEnv) {
    // The user's route, applied server-side (`kubectl apply --server-side`).
    let user_route = json!({"apiVersion": GROUP_VERSION, "kind": "HTTPRoute",
        "metadata": {"name": "rollouts-demo", "namespace": NS},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "rollouts-demo", "port": 80}],
            "rules": [{"backendRefs": [
                {"name": "rollouts-demo-stable", "port": 80, "weight": 100},
                {"name": "rollouts-demo-canary", "port": 80, "weight": 0}]}]}});
    apply::apply(&env.client, &for_server(user_route))
        .await
        .unwrap_or_else(|e| panic!("the user's route: {e}"));
    let stable_only: &[(&str, u64)] = &[("rollouts-demo-stable", 100), ("rollouts-demo-canary", 0)];
    wait_proxy(env, "rollouts-demo", &[("rule-0", stable_only)]).await;

    // setWeight 10.
    argo_set_weight(env, 10).await;
    let at_10: &[(&str, u64)] = &[("rollouts-demo-stable", 90), ("rollouts-demo-canary", 10)];
    wait_proxy(env, "rollouts-demo", &[("rule-0", at_10)]).await;
    let m = measure(env, "rollouts-demo", REQUESTS, "").await;
    m.assert_complete(REQUESTS, "Argo setWeight 10");
    assert_share(&m, "rollouts canary", 0.10, "Argo setWeight 10");
    let route = httproutes(env).get("rollouts-demo").await.expect("route");
    assert_eq!(
        route
            .metadata
            .labels
            .unwrap_or_default()
            .get(ARGO_LABEL)
            .map(String::as_str),
        Some("in-progress")
    );

    // setHeaderRoute: a named rule, the source rule's (defaulted) matches plus the header,
    // to the canary only (no weight: the default 1).
    get_edit_update(env, "rollouts-demo", |v| {
        let rules = v["spec"]["rules"].as_array().cloned().unwrap_or_default();
        let source = rules
            .iter()
            .find(|r| r["name"] != HEADER_RULE)
            .cloned()
            .unwrap_or_default();
        let header = json!({"name": "X-Canary", "type": "Exact", "value": "true"});
        let mut matches: Vec<Value> = source["matches"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut m| {
                let mut headers = m["headers"].as_array().cloned().unwrap_or_default();
                headers.push(header.clone());
                m["headers"] = Value::Array(headers);
                m
            })
            .collect();
        if matches.is_empty() {
            matches.push(json!({"headers": [header]}));
        }
        let mut kept: Vec<Value> = rules.into_iter().filter(|r| r["name"] != HEADER_RULE).collect();
        kept.push(json!({
            "name": HEADER_RULE,
            "matches": matches,
            "backendRefs": [{"group": "", "kind": "Service", "name": "rollouts-demo-canary", "port": 80}]
        }));
        v["spec"]["rules"] = Value::Array(kept);
    })
    .await;
    wait_proxy(
        env,
        "rollouts-demo",
        &[
            ("rule-0", at_10),
            (HEADER_RULE, &[("rollouts-demo-canary", 1)]),
        ],
    )
    .await;
    let with_header = measure(env, "rollouts-demo", REQUESTS / 2, "-H 'X-Canary: true'").await;
    with_header.assert_complete(REQUESTS / 2, "Argo header route, with the header");
    assert_eq!(
        with_header.share("rollouts canary"),
        1.0,
        "every request with X-Canary: true reaches the canary: {:?}",
        with_header.summary()
    );
    let without = measure(env, "rollouts-demo", REQUESTS, "").await;
    without.assert_complete(REQUESTS, "Argo header route, without the header");
    assert_share(
        &without,
        "rollouts canary",
        0.10,
        "Argo header route, other traffic",
    );

    // removeManagedRoutes: the named rule filtered out.
    get_edit_update(env, "rollouts-demo", |v| {
        let kept: Vec<Value> = v["spec"]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["name"] != HEADER_RULE)
            .collect();
        v["spec"]["rules"] = Value::Array(kept);
    })
    .await;
    wait_proxy(env, "rollouts-demo", &[("rule-0", at_10)]).await;
    let m = measure(env, "rollouts-demo", REQUESTS, "-H 'X-Canary: true'").await;
    m.assert_complete(REQUESTS, "Argo header route removed");
    assert_share(
        &m,
        "rollouts canary",
        0.10,
        "Argo header route removed, header traffic by weight",
    );

    // setWeight 50, 100, then 0 once the rollout is promoted (stable is the new version).
    for w in [50i64, 100] {
        argo_set_weight(env, w).await;
        let b: &[(&str, u64)] = &[
            ("rollouts-demo-stable", (100 - w) as u64),
            ("rollouts-demo-canary", w as u64),
        ];
        wait_proxy(env, "rollouts-demo", &[("rule-0", b)]).await;
        let m = measure(env, "rollouts-demo", REQUESTS, "").await;
        m.assert_complete(REQUESTS, "Argo setWeight");
        assert_share(
            &m,
            "rollouts canary",
            w as f64 / 100.0,
            &format!("Argo setWeight {w}"),
        );
    }
    argo_set_weight(env, 0).await;
    wait_proxy(env, "rollouts-demo", &[("rule-0", stable_only)]).await;
    let route = httproutes(env).get("rollouts-demo").await.expect("route");
    assert!(
        !route
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(ARGO_LABEL),
        "the in-progress label is removed at weight 0"
    );
    let m = measure(env, "rollouts-demo", REQUESTS, "").await;
    m.assert_complete(REQUESTS, "Argo done");
    assert_eq!(m.share("rollouts stable"), 1.0, "{:?}", m.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gamma_canary_flagger_and_argo_clients() {
    let Some(env) = mesh_env(TEST, Path::new(env!("CARGO_BIN_EXE_weft-test-app"))).await else {
        return;
    };
    // The CRD first: the operator watches HTTPRoutes when they are served at its start.
    install_crd(&env).await;
    env.install_weft().await;

    env.namespace(NS, json!({"weft.io/inject": "enabled"}))
        .await;
    // Flagger's Services: the apex selects the primary pods; primary and canary their own.
    // Argo's: an apex the route attaches to, stable and canary.
    for s in [
        service("podinfo", json!({"app": "podinfo-primary"})),
        service("podinfo-primary", json!({"app": "podinfo-primary"})),
        service("podinfo-canary", json!({"app": "podinfo"})),
        service("rollouts-demo", json!({"app": "rollouts"})),
        service(
            "rollouts-demo-stable",
            json!({"app": "rollouts", "track": "stable"}),
        ),
        service(
            "rollouts-demo-canary",
            json!({"app": "rollouts", "track": "canary"}),
        ),
    ] {
        env.create(s).await;
    }
    app_pod(
        &env,
        "podinfo-primary",
        json!({"app": "podinfo-primary"}),
        "podinfo",
        "primary",
    )
    .await;
    app_pod(
        &env,
        "podinfo-canary",
        json!({"app": "podinfo"}),
        "podinfo",
        "canary",
    )
    .await;
    app_pod(
        &env,
        "rollouts-stable",
        json!({"app": "rollouts", "track": "stable"}),
        "rollouts",
        "stable",
    )
    .await;
    app_pod(
        &env,
        "rollouts-canary",
        json!({"app": "rollouts", "track": "canary"}),
        "rollouts",
        "canary",
    )
    .await;
    app_pod(
        &env,
        "loadtester",
        json!({"app": "loadtester"}),
        "loadtester",
        "v1",
    )
    .await;
    for p in [
        "podinfo-primary",
        "podinfo-canary",
        "rollouts-stable",
        "rollouts-canary",
        "loadtester",
    ] {
        let pod = env.wait_ready(NS, p, Duration::from_secs(90)).await;
        assert!(
            pod.spec
                .unwrap_or_default()
                .containers
                .iter()
                .any(|c| c.name == "weft-proxy"),
            "{p} not injected"
        );
    }

    flagger_flow(&env).await;
    eprintln!("Flagger-style canary: done");
    argo_flow(&env).await;
    eprintln!("Argo-Rollouts-style canary: done");
    env.shutdown().await;
}

/// Flagger's readiness rule on its own (no cluster): the parentRef must match, Accepted must be
/// True, and for the route's current generation.
#[test]
fn flagger_readiness_needs_accepted_for_the_current_generation() {
    let route = |status: &str, observed: i64, generation: i64, parent_name: &str| {
        json!({
            "metadata": {"generation": generation},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "podinfo", "port": 80}]},
            "status": {"parents": [{
                "parentRef": {"group": "", "kind": "Service", "name": parent_name, "port": 80, "sectionName": null},
                "controllerName": "weft.io/mesh-controller",
                "conditions": [{"type": "Accepted", "status": status, "observedGeneration": observed}]}]}
        })
    };
    assert!(flagger_ready(&route("True", 2, 2, "podinfo")));
    assert!(!flagger_ready(&route("True", 1, 2, "podinfo")), "stale");
    assert!(!flagger_ready(&route("False", 2, 2, "podinfo")), "refused");
    assert!(
        !flagger_ready(&route("True", 2, 2, "other")),
        "another parent"
    );
    assert!(!flagger_ready(
        &json!({"metadata": {"generation": 1}, "spec": {}})
    ));
}
