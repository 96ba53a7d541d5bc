//! Which ports a pod's inbound policy lists. The proxy forwards inbound traffic only to listed
//! ports, so a port a Service sends traffic to must be listed even when the container does not
//! declare it, and nothing else may be.

use weft_operator::compile::{compile, CompileOptions, InboundPolicy, Protocol, ResourceKind};
use weft_operator::model::manifests::parse_manifests;
use weft_operator::model::{Model, ObjectRef};

const PODS: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Pod
metadata:
  name: api-0
  namespace: demo
  labels:
    app: api
    weft.io/proxy-version: "0.1.0"
spec:
  serviceAccountName: api
  containers:
  - name: app
    image: app
    ports:
    - name: http
      containerPort: 8080
status:
  podIP: 10.0.0.2
  conditions:
  - type: Ready
    status: "True"
---
apiVersion: v1
kind: Pod
metadata:
  name: other-0
  namespace: demo
  labels:
    app: other
    weft.io/proxy-version: "0.1.0"
spec:
  serviceAccountName: other
  containers:
  - name: app
    image: app
status:
  podIP: 10.0.0.3
  conditions:
  - type: Ready
    status: "True"
---
"#;

const SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: demo
spec:
  clusterIP: 10.96.0.2
  selector:
    app: api
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: grpc
    port: 9000
    targetPort: 9001
  - name: metrics
    port: 9100
    targetPort: 9100
    appProtocol: tcp
  - name: dns
    port: 53
    targetPort: 5353
    protocol: UDP
  - name: named-undeclared
    port: 7000
    targetPort: missing
---
"#;

fn inbound(yaml: &str, pod: &str) -> InboundPolicy {
    let (objects, ignored) = parse_manifests(yaml, false).expect("test manifests parse");
    assert!(ignored.is_empty(), "ignored: {ignored:?}");
    let mut model = Model::from_objects(objects);
    model.derive_endpoints_from_pods = true;
    let compiled = compile(&model, &CompileOptions::default());
    let proxy = compiled
        .proxy(&ObjectRef::new("demo", pod))
        .unwrap_or_else(|| panic!("no proxy for {pod}"));
    match &proxy.inbound.resource {
        ResourceKind::Inbound(i) => i.clone(),
        _ => unreachable!(),
    }
}

fn ports(i: &InboundPolicy) -> Vec<(u16, Protocol)> {
    i.ports.iter().map(|p| (p.port, p.protocol)).collect()
}

#[test]
fn numeric_service_target_ports_are_listed_even_when_undeclared() {
    let i = inbound(&format!("{PODS}{SERVICES}"), "api-0");
    assert_eq!(
        ports(&i),
        vec![
            // Declared, named by the Service.
            (8080, Protocol::Http1),
            // Targeted by number, not declared: listed, with the Service port's protocol.
            (9001, Protocol::Grpc),
            (9100, Protocol::Opaque),
        ],
        "UDP target ports and unresolved names are not listed"
    );
    // A pod the Service does not select gains nothing from it.
    let other = inbound(&format!("{PODS}{SERVICES}"), "other-0");
    assert_eq!(ports(&other), vec![]);
}

#[test]
fn without_services_only_declared_ports_are_listed() {
    let i = inbound(PODS, "api-0");
    assert_eq!(ports(&i), vec![(8080, Protocol::Http1)]);
}
