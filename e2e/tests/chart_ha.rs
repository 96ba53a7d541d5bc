//! The chart's high-availability defaults, rendered with the Helm SDK (e2e/scripts/helm.py):
//! two operator replicas with leader election and preferred anti-affinity, a
//! PodDisruptionBudget at the API the target server serves (policy/v1beta1 on 1.20, policy/v1
//! later), readiness on every replica, and injector webhooks that never see the system
//! namespaces or the release namespace, with short timeouts and deliberate failure policies.
//! Skips loudly when the Helm SDK cannot be set up.

use serde_json::Value;
use weft_e2e::cluster::{repo_root, skip};

const TEST: &str = "chart_ha";

/// `helm.py template ARGS`, parsed into documents; `None` (after a loud skip) without the SDK.
fn template(args: &[&str]) -> Option<Vec<Value>> {
    let setup = std::process::Command::new("python3")
        .arg(repo_root().join("e2e/scripts/helm.py"))
        .arg("setup")
        .output();
    match setup {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            skip(
                TEST,
                &format!(
                    "helm-python-sdk could not be installed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
            );
            return None;
        }
        Err(e) => {
            skip(TEST, &format!("cannot run python3: {e}"));
            return None;
        }
    }
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("e2e/scripts/helm.py"))
        .arg("template")
        .args(args)
        .output()
        .expect("running helm.py template");
    assert!(
        out.status.success(),
        "helm.py template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| {
                use serde::Deserialize;
                Value::deserialize(d).ok()
            })
            .filter(|v| !v.is_null())
            .collect(),
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The `values` of the namespaceSelector expression on `key` with `operator`.
fn selector_values(hook: &Value, key: &str, operator: &str) -> Vec<String> {
    hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .and_then(|exprs| {
            exprs
                .iter()
                .find(|e| e["key"] == key && e["operator"] == operator)
        })
        .map(|e| strings(&e["values"]))
        .unwrap_or_else(|| panic!("no {key} {operator} in {}", hook["namespaceSelector"]))
}

#[test]
fn defaults_run_two_replicas_with_leader_election_anti_affinity_and_readiness() {
    let Some(docs) = template(&["--namespace", "mesh"]) else {
        return;
    };
    let deploy = find(&docs, "Deployment", "weft-operator");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    let args = strings(&pod["containers"][0]["args"]);
    for want in [
        "--leader-elect",
        "--leader-lease-duration=15s",
        "--leader-renew-deadline=10s",
        "--leader-retry-period=2s",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
    }
    let preferred =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    let term = &preferred[0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname", "{preferred}");
    // The anti-affinity selects exactly the Deployment's own pods.
    assert_eq!(
        term["labelSelector"]["matchLabels"], deploy["spec"]["selector"]["matchLabels"],
        "{term}"
    );
    assert!(
        pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_null(),
        "required anti-affinity would leave a replica Pending on a one-node cluster"
    );
    let probe = &pod["containers"][0]["readinessProbe"];
    assert_eq!(probe["httpGet"]["path"], "/ready", "{probe}");
    // Rolling updates never take the last ready replica away.
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );

    // One replica without election: no --leader-elect. Two replicas with election turned
    // off: on anyway (two writers of status would fight).
    let Some(one) = template(&[
        "--set",
        "operator.replicas=1",
        "--set",
        "operator.leaderElection=false",
    ]) else {
        return;
    };
    let args = strings(
        &find(&one, "Deployment", "weft-operator")["spec"]["template"]["spec"]["containers"][0]
            ["args"],
    );
    assert!(!args.iter().any(|a| a == "--leader-elect"), "{args:?}");
    let Some(two) = template(&["--set", "operator.leaderElection=false"]) else {
        return;
    };
    let args = strings(
        &find(&two, "Deployment", "weft-operator")["spec"]["template"]["spec"]["containers"][0]
            ["args"],
    );
    assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");

    // A user's own affinity replaces the default.
    let Some(custom) = template(&[
        "--set",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "--set",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    ]) else {
        return;
    };
    let affinity =
        &find(&custom, "Deployment", "weft-operator")["spec"]["template"]["spec"]["affinity"];
    assert!(affinity["podAntiAffinity"].is_null(), "{affinity}");
    assert!(!affinity["nodeAffinity"].is_null(), "{affinity}");
}

#[test]
fn the_disruption_budget_uses_the_api_the_server_serves() {
    for (args, want) in [
        (vec!["--kube-version", "v1.20.2"], "policy/v1beta1"),
        (vec!["--kube-version", "v1.29.0"], "policy/v1"),
        // What Helm sees installing into a 1.20 API server: only v1beta1 served.
        (
            vec![
                "--kube-version",
                "v1.20.2",
                "--api-versions",
                "policy/v1beta1/PodDisruptionBudget",
            ],
            "policy/v1beta1",
        ),
        (
            vec![
                "--kube-version",
                "v1.23.0",
                "--api-versions",
                "policy/v1/PodDisruptionBudget",
            ],
            "policy/v1",
        ),
    ] {
        let Some(docs) = template(&args) else {
            return;
        };
        let pdb = find(&docs, "PodDisruptionBudget", "weft-operator");
        assert_eq!(pdb["apiVersion"], want, "{args:?}");
        // Two replicas: one may be evicted at a time, never both.
        assert_eq!(pdb["spec"]["minAvailable"], 1, "{args:?}: {pdb}");
        let deploy = find(&docs, "Deployment", "weft-operator");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], deploy["spec"]["selector"]["matchLabels"],
            "the budget covers the operator's pods"
        );
    }
    // One replica: a budget of minAvailable 1 would block every node drain.
    let Some(docs) = template(&["--set", "operator.replicas=1"]) else {
        return;
    };
    let pdb = find(&docs, "PodDisruptionBudget", "weft-operator");
    assert!(pdb["spec"]["minAvailable"].is_null(), "{pdb}");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
}

#[test]
fn webhooks_skip_system_and_release_namespaces_with_short_timeouts_and_chosen_policies() {
    let Some(docs) = template(&["--namespace", "mesh-system"]) else {
        return;
    };
    let injector = find(&docs, "MutatingWebhookConfiguration", "weft-proxy-injector");
    let hooks = injector["webhooks"].as_array().expect("webhooks");
    let names: Vec<&str> = hooks.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names, ["inject.weft.io", "inject-annotated.weft.io"]);
    for hook in hooks {
        let excluded = selector_values(hook, "kubernetes.io/metadata.name", "NotIn");
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "mesh-system",
        ] {
            assert!(
                excluded.iter().any(|e| e == ns),
                "{}: {ns} not excluded: {excluded:?}",
                hook["name"]
            );
        }
        assert_eq!(hook["timeoutSeconds"], 5, "{}", hook["name"]);
        assert_eq!(
            hook["objectSelector"]["matchExpressions"][0]["key"], "weft.io/control-plane",
            "the operator's own pods are never sent to it"
        );
        assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
    }
    // Meshed namespaces (opt-in label): Fail, a pod never runs without its proxy.
    let meshed = &hooks[0];
    assert_eq!(
        selector_values(meshed, "weft.io/inject", "In"),
        ["enabled"],
        "works on 1.20: selects by a label users set"
    );
    assert_eq!(meshed["failurePolicy"], "Fail");
    // Annotation opt-in elsewhere: best effort, never for namespaces labelled either way.
    let annotated = &hooks[1];
    assert_eq!(
        selector_values(annotated, "weft.io/inject", "NotIn"),
        ["enabled", "disabled"]
    );
    assert_eq!(annotated["failurePolicy"], "Ignore");

    let validation = find(
        &docs,
        "ValidatingWebhookConfiguration",
        "weft-smi-validation",
    );
    assert_eq!(validation["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(validation["webhooks"][0]["timeoutSeconds"], 5);

    // Opt-in only (no annotation webhook): one webhook, no call for unlabelled namespaces.
    let Some(strict) = template(&["--set", "injector.annotationOptIn.enabled=false"]) else {
        return;
    };
    let injector = find(
        &strict,
        "MutatingWebhookConfiguration",
        "weft-proxy-injector",
    );
    assert_eq!(injector["webhooks"].as_array().map(Vec::len), Some(1));
}
