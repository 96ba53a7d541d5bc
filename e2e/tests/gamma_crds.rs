//! The vendored Gateway API CRDs (crds/gateway-api/) and the chart's copies are the same files,
//! and they are the CRDs of the kinds weft reads: HTTPRoute and GRPCRoute
//! `gateway.networking.k8s.io/v1`, served and stored, from the standard channel at the version
//! the `gateway-api` crate is generated from.

use weft_e2e::cluster::repo_root;

/// (file, kind, plural) of every vendored Gateway API CRD.
const CRDS: &[(&str, &str, &str)] = &[
    (
        "gateway.networking.k8s.io_httproutes.yaml",
        "HTTPRoute",
        "httproutes",
    ),
    (
        "gateway.networking.k8s.io_grpcroutes.yaml",
        "GRPCRoute",
        "grpcroutes",
    ),
];

#[test]
fn chart_gateway_api_crds_match_the_vendored_crds() {
    let root = repo_root();
    for (file, _, _) in CRDS {
        let vendored = std::fs::read_to_string(root.join("crds/gateway-api").join(file)).unwrap();
        let in_chart =
            std::fs::read_to_string(root.join("charts/weft/files/gateway-api").join(file)).unwrap();
        assert!(
            vendored == in_chart,
            "charts/weft/files/gateway-api/{file} differs from crds/gateway-api/{file}: copy it"
        );
    }
    // Nothing else in either folder: the chart installs every file of its folder.
    for dir in ["crds/gateway-api", "charts/weft/files/gateway-api"] {
        let mut yaml: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        yaml.sort();
        let mut want: Vec<String> = CRDS.iter().map(|(f, _, _)| f.to_string()).collect();
        want.sort();
        assert_eq!(yaml, want, "{dir}");
    }
}

#[test]
fn vendored_crds_serve_and_store_v1_from_the_standard_channel() {
    for (file, kind, plural) in CRDS {
        let text =
            std::fs::read_to_string(repo_root().join("crds/gateway-api").join(file)).unwrap();
        let crd: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            crd["spec"]["group"].as_str(),
            Some("gateway.networking.k8s.io"),
            "{file}"
        );
        assert_eq!(crd["spec"]["names"]["kind"].as_str(), Some(*kind), "{file}");
        assert_eq!(
            crd["spec"]["names"]["plural"].as_str(),
            Some(*plural),
            "{file}"
        );
        assert_eq!(
            crd["metadata"]["name"].as_str().map(str::to_string),
            Some(format!("{plural}.gateway.networking.k8s.io")),
            "{file}"
        );
        let ann = &crd["metadata"]["annotations"];
        assert_eq!(
            ann["gateway.networking.k8s.io/channel"].as_str(),
            Some("standard"),
            "{file}"
        );
        assert_eq!(
            ann["gateway.networking.k8s.io/bundle-version"].as_str(),
            Some("v1.5.1"),
            "{file}"
        );
        let versions = crd["spec"]["versions"].as_sequence().unwrap();
        let v1 = versions
            .iter()
            .find(|v| v["name"].as_str() == Some("v1"))
            .expect("v1");
        assert_eq!(v1["served"].as_bool(), Some(true), "{file}");
        assert_eq!(v1["storage"].as_bool(), Some(true), "{file}");
        assert!(
            v1["subresources"]["status"].is_mapping(),
            "{file}: status subresource (weft writes status.parents)"
        );
    }
}

/// The operator's ClusterRole lets it read both kinds and write their status.
#[test]
fn chart_rbac_covers_both_route_kinds() {
    let text =
        std::fs::read_to_string(repo_root().join("charts/weft/rendered/install.yaml")).unwrap();
    let role = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| {
            d["kind"].as_str() == Some("ClusterRole")
                && d["metadata"]["name"].as_str() == Some("weft-operator")
        })
        .expect("ClusterRole weft-operator");
    let allows = |resource: &str, verb: &str| {
        role["rules"].as_sequence().unwrap().iter().any(|r| {
            let has = |field: &str, v: &str| {
                r[field]
                    .as_sequence()
                    .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(v)))
            };
            has("apiGroups", "gateway.networking.k8s.io")
                && has("resources", resource)
                && has("verbs", verb)
        })
    };
    for (_, _, plural) in CRDS {
        for verb in ["get", "list", "watch"] {
            assert!(allows(plural, verb), "{verb} {plural}");
        }
        for verb in ["get", "patch", "update"] {
            assert!(
                allows(&format!("{plural}/status"), verb),
                "{verb} {plural}/status"
            );
        }
    }
}
