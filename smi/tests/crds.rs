//! `crds/smi.yaml` is generated from the Rust types and must not drift.
//! Regenerate with `WEFT_UPDATE_CRDS=1 cargo test -p weft-smi --test crds`.

use std::path::PathBuf;

use serde_json::Value;
use weft_smi::crd::{all_crds, render_yaml};

fn crds_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/smi.yaml")
}

#[test]
fn committed_crds_match_the_types() {
    let want = render_yaml();
    assert_eq!(want, render_yaml(), "rendering is not deterministic");
    let path = crds_file();
    if std::env::var_os("WEFT_UPDATE_CRDS").is_some() {
        std::fs::write(&path, &want).expect("write crds/smi.yaml");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "crds/smi.yaml is out of date with the Rust types in weft-smi.\n\
         Regenerate it with: WEFT_UPDATE_CRDS=1 cargo test -p weft-smi --test crds"
    );
}

/// Walks a schema and returns the paths of nodes that break Kubernetes' structural rules
/// weft can check offline: every node has a `type` unless it preserves unknown fields or is
/// int-or-string; no `$ref`, no `anyOf`/`oneOf` outside int-or-string.
fn non_structural(v: &Value, path: &str, out: &mut Vec<String>) {
    let Some(m) = v.as_object() else { return };
    let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !m.contains_key("type") && !preserve && !int_or_string {
        out.push(format!("{path}: no type"));
    }
    if m.contains_key("$ref") {
        out.push(format!("{path}: $ref"));
    }
    if (m.contains_key("anyOf") || m.contains_key("oneOf")) && !int_or_string {
        out.push(format!("{path}: anyOf/oneOf"));
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        for (k, p) in props {
            non_structural(p, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = m.get("items") {
        non_structural(items, &format!("{path}[]"), out);
    }
    if let Some(ap @ Value::Object(_)) = m.get("additionalProperties") {
        non_structural(ap, &format!("{path}{{}}"), out);
    }
}

#[test]
fn crds_are_structural_and_complete() {
    let crds = all_crds();
    let names: Vec<_> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        names,
        [
            "TrafficSplit",
            "TrafficTarget",
            "HTTPRouteGroup",
            "TCPRoute",
            "UDPRoute"
        ]
    );
    for c in &crds {
        let kind = &c.spec.names.kind;
        let storage: Vec<_> = c
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        let newest = c
            .spec
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .max()
            .unwrap_or_default();
        assert_eq!(
            storage,
            [newest],
            "{kind}: exactly the newest version is stored"
        );
        assert!(
            c.spec.versions.iter().all(|v| v.served),
            "{kind}: all versions served"
        );
        let conv = c.spec.conversion.as_ref().expect("conversion");
        assert_eq!(conv.strategy, "Webhook");
        for v in &c.spec.versions {
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{kind} {}: status subresource",
                v.name
            );
            let schema =
                serde_json::to_value(&v.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
            let mut problems = vec![];
            non_structural(&schema, &format!("{kind}/{}", v.name), &mut problems);
            assert!(problems.is_empty(), "not structural: {problems:#?}");
        }
    }
    let short: Vec<_> = crds
        .iter()
        .flat_map(|c| c.spec.names.short_names.clone().unwrap_or_default())
        .collect();
    assert_eq!(short, ["ts", "tt", "htr", "tr", "ur"]);
}

#[test]
fn schemas_validate_what_is_structural() {
    let crds = all_crds();
    let ts = serde_json::to_value(&crds[0].spec.versions[3].schema).unwrap();
    let backend = &ts["openAPIV3Schema"]["properties"]["spec"]["properties"]["backends"]["items"];
    assert_eq!(backend["properties"]["weight"]["minimum"], 0.0);
    let req: Vec<_> = backend["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(req.contains(&"weight") && req.contains(&"service"));
    let v1 = serde_json::to_value(&crds[0].spec.versions[0].schema).unwrap();
    let w = &v1["openAPIV3Schema"]["properties"]["spec"]["properties"]["backends"]["items"]
        ["properties"]["weight"];
    assert_eq!(w["x-kubernetes-int-or-string"], true);

    let htr = serde_json::to_value(&crds[2].spec.versions[3].schema).unwrap();
    let m = &htr["openAPIV3Schema"]["properties"]["spec"]["properties"]["matches"]["items"]
        ["properties"];
    let methods: Vec<_> = m["methods"]["items"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(methods.contains(&"*") && methods.contains(&"GET"));
    assert_eq!(m["headers"]["x-kubernetes-preserve-unknown-fields"], true);
}
