//! Regression for #14's unknown-method bug: the status said a match with a method SMI does
//! not define was left out, while the compiler kept it (and the proxy accepted it). Compiled
//! from a manifests directory as `weft compile -f` and the manifests source do.

use weft_operator::compile::{compile_dir, CompileOptions, CompileReport};

const MESH: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata:
  name: client-0
  namespace: demo
  labels: {app: client, weft.io/proxy-version: "0.1.0"}
spec:
  serviceAccountName: client
  containers: [{name: app, image: app, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-v1-0
  namespace: demo
  labels: {app: web-v1, weft.io/proxy-version: "0.1.0"}
spec:
  serviceAccountName: web
  containers: [{name: app, image: app, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.1.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-v2-0
  namespace: demo
  labels: {app: web-v2, weft.io/proxy-version: "0.1.0"}
spec:
  serviceAccountName: web
  containers: [{name: app, image: app, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.2.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.1, selector: {app: web-v1}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec: {clusterIP: 10.96.0.3, selector: {app: web-v2}, ports: [{name: http, port: 80, targetPort: http}]}
"#;

const SMI: &str = r#"apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: api, namespace: demo}
spec:
  matches:
  - name: odd
    pathRegex: /odd
    methods: ["FETCH"]
  - name: good
    pathRegex: /ok
    methods: ["GET"]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t, namespace: demo}
spec:
  destination: {kind: ServiceAccount, name: web, namespace: demo}
  sources: [{kind: ServiceAccount, name: client, namespace: demo}]
  rules: [{kind: HTTPRouteGroup, name: api}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab, namespace: demo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  service: web
  backends: [{service: web-v2, weight: 1}]
  matches: [{kind: HTTPRouteGroup, name: api}]
"#;

fn report() -> CompileReport {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("smi.yaml"), SMI).unwrap();
    compile_dir(dir.path(), &CompileOptions::default()).unwrap()
}

#[test]
fn unknown_method_match_is_not_compiled_and_status_says_so() {
    let r = report();
    assert!(r.load_errors.is_empty(), "{:?}", r.load_errors);

    // Inbound: the destination's authorization keeps only the valid match.
    let web = &r.proxies["demo/web-v1-0"];
    let port = web
        .inbound
        .ports
        .iter()
        .find(|p| p.port == 8080)
        .expect("port 8080");
    let matches: Vec<_> = port
        .authorizations
        .iter()
        .flat_map(|a| a.http_routes.iter())
        .collect();
    assert!(!matches.is_empty(), "the valid match stays in force");
    for m in &matches {
        assert_ne!(m.name, "odd", "{m:?}");
        assert!(!m.methods.iter().any(|x| x == "FETCH"), "{m:?}");
        assert!(!m.methods.is_empty(), "never widened to any method: {m:?}");
    }

    // Outbound: the split's routes carry no match with the unknown method either.
    let client = &r.proxies["demo/client-0"];
    let web_out = &client.outbound["outbound:web.demo"];
    for route in web_out.ports.iter().flat_map(|p| p.routes.iter()) {
        for m in &route.matches {
            assert_ne!(m.name, "odd", "{route:?}");
            assert!(!m.methods.iter().any(|x| x == "FETCH"), "{route:?}");
        }
    }

    // Status: the HTTPRouteGroup is not accepted, naming the method.
    let group = r
        .objects
        .iter()
        .find(|o| o.kind == "HTTPRouteGroup" && o.name == "api")
        .expect("HTTPRouteGroup status");
    let accepted = group
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .expect("Accepted");
    assert_eq!(accepted.status, "False");
    assert_eq!(accepted.reason, "InvalidMatch");
    assert!(accepted.message.contains("FETCH"), "{}", accepted.message);
}
