//! The Helm chart: lints clean (strict) with the Helm SDK, carries the CRDs of `crds/` verbatim,
//! and renders the objects an install needs. Skips loudly when the Helm SDK cannot be set up.

use std::process::Command;

use weft_e2e::cluster::{repo_root, skip};

fn helm(args: &[&str]) -> Option<std::process::Output> {
    let out = Command::new("python3")
        .arg(repo_root().join("e2e/scripts/helm.py"))
        .args(args)
        .output();
    match out {
        Ok(o) => Some(o),
        Err(e) => {
            skip("chart", &format!("cannot run python3: {e}"));
            None
        }
    }
}

fn sdk_available() -> bool {
    let Some(o) = helm(&["setup"]) else {
        return false;
    };
    if !o.status.success() {
        skip(
            "chart",
            &format!(
                "helm-python-sdk could not be installed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        );
        return false;
    }
    true
}

#[test]
fn chart_crds_match_the_generated_crds() {
    let root = repo_root();
    let generated = std::fs::read_to_string(root.join("crds/smi.yaml")).unwrap();
    let in_chart = std::fs::read_to_string(root.join("charts/weft/files/crds/smi.yaml")).unwrap();
    assert!(
        generated == in_chart,
        "charts/weft/files/crds/smi.yaml differs from crds/smi.yaml: run `cp crds/smi.yaml charts/weft/files/crds/`"
    );
}

#[test]
fn chart_lints_clean_and_rejects_bad_values() {
    if !sdk_available() {
        return;
    }
    let Some(o) = helm(&["lint"]) else { return };
    assert!(
        o.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let Some(o) = helm(&["lint", "--kube-version", "v1.20.2"]) else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let Some(o) = helm(&["lint", "--set", "defaultInboundPolicy=sometimes"]) else {
        return;
    };
    assert!(!o.status.success(), "schema must refuse a bad policy");
    assert!(String::from_utf8_lossy(&o.stderr).contains("defaultInboundPolicy"));
    // #19: discovery.mode is push-all or on-demand, nothing else.
    let Some(o) = helm(&["lint", "--set", "discovery.mode=on-demand"]) else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let Some(o) = helm(&["lint", "--set", "discovery.mode=lazy"]) else {
        return;
    };
    assert!(
        !o.status.success(),
        "schema must refuse a bad discovery mode"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("discovery"));
}

#[test]
fn chart_renders_operator_webhooks_and_converting_crds() {
    if !sdk_available() {
        return;
    }
    let Some(o) = helm(&[
        "template",
        "--namespace",
        "mesh",
        "--set",
        "defaultInboundPolicy=deny",
    ]) else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| {
            use serde::Deserialize;
            serde_json::Value::deserialize(d).ok()
        })
        .filter(|v| !v.is_null())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
            .clone()
    };
    let deploy = find("Deployment", "weft-operator");
    assert_eq!(deploy["metadata"]["namespace"], "mesh");
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--default-inbound-policy=deny"), "{args}");
    assert!(args.contains("--inject"), "{args}");
    let injector = find("MutatingWebhookConfiguration", "weft-proxy-injector");
    let hook = &injector["webhooks"][0];
    assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
    assert_eq!(hook["clientConfig"]["service"]["namespace"], "mesh");
    let ca = hook["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!ca.is_empty());
    // Every CRD converts through the operator with the same CA bundle.
    let crds: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), 5);
    for crd in crds {
        let conv = &crd["spec"]["conversion"]["webhook"]["clientConfig"];
        assert_eq!(conv["caBundle"], ca.as_str(), "{}", crd["metadata"]["name"]);
        assert_eq!(conv["service"]["namespace"], "mesh");
        assert_eq!(conv["service"]["path"], "/convert");
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
    for (kind, name) in [
        ("Service", "weft-discovery"),
        ("Service", "weft-operator"),
        ("Secret", "weft-identity"),
        ("Secret", "weft-webhook-tls"),
        ("ClusterRole", "weft-operator"),
        ("PodDisruptionBudget", "weft-operator"),
        ("ValidatingWebhookConfiguration", "weft-smi-validation"),
    ] {
        find(kind, name);
    }
    let role = find("ClusterRole", "weft-operator").to_string();
    assert!(
        role.contains("tokenreviews") && role.contains("endpointslices"),
        "{role}"
    );
}
