//! The example manifest directories compile to what docs/compile.md says, and manifest
//! loading tolerates bad files.

use std::path::PathBuf;

use weft_operator::compile::{compile_dir, CompileOptions, DefaultPolicy};
use weft_operator::model::manifests::load_dir;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

#[test]
fn canary_example_splits_90_10_with_per_backend_target_ports() {
    let r = compile_dir(&example("canary"), &CompileOptions::default()).expect("compiles");
    assert!(r.load_errors.is_empty(), "{:?}", r.load_errors);
    assert!(r.events.is_empty(), "{:?}", r.events);
    let p = &r.proxies["shop/frontend-0"];
    let web = &p.outbound["outbound:web.shop"];
    assert_eq!(web.policy.request_timeout_ms, 2000);
    assert_eq!(web.policy.max_retries, 2);
    let routes = &web.ports[0].routes;
    assert_eq!(routes[0].name, "split:shop/web-canary");
    let w: Vec<(&str, u64)> = routes[0]
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    assert_eq!(w, vec![("web-v1", 90), ("web-v2", 10)]);
    let v2 = &p.endpoints["endpoints:web-v2.shop:80"].endpoints;
    assert_eq!(v2.len(), 1);
    assert_eq!(v2[0].port, 8081);
    assert_eq!(v2[0].identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(r.proxies.len(), 3);
    let split = r
        .objects
        .iter()
        .find(|o| o.name == "web-canary")
        .expect("status");
    assert!(split
        .conditions
        .iter()
        .all(|c| c.type_ == "Conflicted" || c.status == "True"));
}

#[test]
fn ab_header_example_splits_only_matching_requests() {
    let r = compile_dir(&example("ab-header"), &CompileOptions::default()).expect("compiles");
    assert!(r.load_errors.is_empty());
    let routes = &r.proxies["store/gateway-0"].outbound["outbound:checkout.store"].ports[0].routes;
    assert_eq!(routes.len(), 2);
    let names: Vec<&str> = routes[0].matches.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["firefox", "beta-header"]);
    assert_eq!(routes[0].backends[0].service, "checkout-b");
    assert!(routes[1].matches.is_empty());
    assert_eq!(routes[1].backends[0].service, "checkout");
}

#[test]
fn authz_example_restricts_the_api_only() {
    let r = compile_dir(&example("authz"), &CompileOptions::default()).expect("compiles");
    assert!(r.load_errors.is_empty());
    let api = &r.proxies["bank/api-0"].inbound;
    assert_eq!(api.default_policy, DefaultPolicy::Deny);
    let http = api.ports.iter().find(|p| p.port == 8080).expect("8080");
    assert_eq!(http.authorizations.len(), 1);
    assert_eq!(http.authorizations[0].name, "bank/frontend-to-api");
    assert_eq!(http.authorizations[0].http_routes.len(), 2);
    // The HTTP grant has no destination port, so it holds on 9090 too; the TCPRoute grant
    // opens 9090 to `metrics` only.
    let admin = api.ports.iter().find(|p| p.port == 9090).expect("9090");
    let scrape = admin
        .authorizations
        .iter()
        .find(|a| a.name == "bank/metrics-scrape")
        .expect("scrape grant");
    assert!(scrape.all_traffic);
    assert_eq!(
        scrape.clients.legacy_sources(),
        vec!["spiffe://cluster.local/ns/bank/sa/metrics".to_string()]
    );
    assert!(!http.authorizations.iter().any(|a| a.all_traffic));
    assert_eq!(
        r.proxies["bank/frontend-0"].inbound.default_policy,
        DefaultPolicy::Mesh
    );
    assert!(r.events.is_empty(), "{:?}", r.events);
}

#[test]
fn a_malformed_file_does_not_stop_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(dir.path().join("bad.yaml"), "kind: Pod\n  : [unclosed\n").expect("write");
    std::fs::write(
        sub.join("list.yaml"),
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: b}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("ns.json"),
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"c"}}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").expect("write");
    let loaded = load_dir(dir.path()).expect("dir readable");
    assert_eq!(loaded.errors.len(), 1);
    assert!(loaded.errors[0].path.ends_with("bad.yaml"));
    let m = loaded.to_model();
    let names: Vec<&str> = m.namespaces.keys().map(String::as_str).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert_eq!(
        loaded.files.iter().map(|f| f.ignored.len()).sum::<usize>(),
        1
    );
}
