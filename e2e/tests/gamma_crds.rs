//! The vendored Gateway API CRD (crds/gateway-api/) and the chart's copy are the same file, and
//! it is the CRD of the kinds weft reads: HTTPRoute `gateway.networking.k8s.io/v1`, served and
//! stored, from the standard channel at the version the `gateway-api` crate is generated from.

use weft_e2e::cluster::repo_root;

const FILE: &str = "gateway.networking.k8s.io_httproutes.yaml";

#[test]
fn chart_gateway_api_crds_match_the_vendored_crds() {
    let root = repo_root();
    let vendored = std::fs::read_to_string(root.join("crds/gateway-api").join(FILE)).unwrap();
    let in_chart =
        std::fs::read_to_string(root.join("charts/weft/files/gateway-api").join(FILE)).unwrap();
    assert!(
        vendored == in_chart,
        "charts/weft/files/gateway-api/{FILE} differs from crds/gateway-api/{FILE}: copy it"
    );
}

#[test]
fn vendored_crd_serves_and_stores_http_route_v1_from_the_standard_channel() {
    let text = std::fs::read_to_string(repo_root().join("crds/gateway-api").join(FILE)).unwrap();
    let crd: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        crd["spec"]["group"].as_str(),
        Some("gateway.networking.k8s.io")
    );
    assert_eq!(crd["spec"]["names"]["kind"].as_str(), Some("HTTPRoute"));
    let ann = &crd["metadata"]["annotations"];
    assert_eq!(
        ann["gateway.networking.k8s.io/channel"].as_str(),
        Some("standard")
    );
    assert_eq!(
        ann["gateway.networking.k8s.io/bundle-version"].as_str(),
        Some("v1.5.1")
    );
    let versions = crd["spec"]["versions"].as_sequence().unwrap();
    let v1 = versions
        .iter()
        .find(|v| v["name"].as_str() == Some("v1"))
        .expect("v1");
    assert_eq!(v1["served"].as_bool(), Some(true));
    assert_eq!(v1["storage"].as_bool(), Some(true));
    assert!(
        v1["subresources"]["status"].is_mapping(),
        "status subresource (weft writes status.parents)"
    );
}
