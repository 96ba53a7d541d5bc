//! Generates the seed corpus (`weft-fuzz seed`): from `examples/`, from hub objects rendered
//! in every served SMI version, and hand-made cases (the issue's failure modes among them).
//! The output is committed under `fuzz/corpus/<target>/`.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use weft_operator::compile::{compile, CompileOptions, ToProto};
use weft_operator::model::manifests::load_dir;
use weft_proxy_api::v1;
use weft_smi::hub::*;
use weft_smi::{served_versions, to_value};

use crate::mutate::parse_docs;

fn meta(name: &str) -> Meta {
    Meta {
        namespace: "shop".into(),
        name: name.into(),
        generation: Some(2),
        creation_timestamp: Some("2024-05-01T10:00:00Z".into()),
        uid: Some("u-1".into()),
        api_version: String::new(),
    }
}

/// Hub objects of every kind, with the values that need annotations in older versions.
fn hub_objects() -> Vec<SmiObject> {
    vec![
        SmiObject::TrafficSplit(TrafficSplit {
            meta: meta("web-canary"),
            service: "web".into(),
            backends: vec![
                Backend {
                    service: "web-v1".into(),
                    weight_milli: 900_000,
                },
                Backend {
                    service: "web-v2".into(),
                    weight_milli: 500,
                },
            ],
            matches: vec![TypedRef {
                kind: "HTTPRouteGroup".into(),
                name: "beta".into(),
                api_group: Some("specs.smi-spec.io".into()),
            }],
        }),
        SmiObject::TrafficTarget(TrafficTarget {
            meta: meta("frontend-to-web"),
            destination: IdentityRef {
                kind: "ServiceAccount".into(),
                name: "web".into(),
                namespace: "shop".into(),
                port: Some(8080),
            },
            sources: vec![IdentityRef {
                kind: "ServiceAccount".into(),
                name: "frontend".into(),
                namespace: "other".into(),
                port: None,
            }],
            rules: vec![
                TrafficTargetRule {
                    kind: RouteKind::HTTPRouteGroup,
                    name: "beta".into(),
                    matches: vec!["firefox".into()],
                },
                TrafficTargetRule {
                    kind: RouteKind::TCPRoute,
                    name: "admin".into(),
                    matches: vec![],
                },
            ],
        }),
        SmiObject::HTTPRouteGroup(HttpRouteGroup {
            meta: meta("beta"),
            matches: vec![
                HttpMatch {
                    name: "firefox".into(),
                    path_regex: Some("/api/.*".into()),
                    methods: vec!["GET".into(), "*".into()],
                    headers: BTreeMap::from([("user-agent".into(), ".*Firefox.*".into())]),
                },
                HttpMatch {
                    name: "any".into(),
                    path_regex: None,
                    methods: vec![],
                    headers: BTreeMap::new(),
                },
            ],
        }),
        SmiObject::PortRoute(PortRoute {
            meta: meta("admin"),
            kind: RouteKind::TCPRoute,
            matches: Some(PortMatch {
                name: Some("admin".into()),
                ports: vec![9090, 9091],
            }),
        }),
        SmiObject::PortRoute(PortRoute {
            meta: meta("dns"),
            kind: RouteKind::UDPRoute,
            matches: None,
        }),
    ]
}

/// Hand-made SMI documents: tolerant shapes and edge values.
const SMI_HAND: &[(&str, &str)] = &[
    (
        "headers-list.yaml",
        "apiVersion: specs.smi-spec.io/v1alpha3\nkind: HTTPRouteGroup\nmetadata: {name: g}\nspec:\n  matches:\n  - name: m\n    headers:\n    - X-User: admin\n    - x-user: admin\n",
    ),
    (
        "top-level-fields.yaml",
        "apiVersion: access.smi-spec.io/v1alpha2\nkind: TrafficTarget\nmetadata: {name: t, namespace: a}\ndestination: {kind: ServiceAccount, name: api}\nsources: [{kind: ServiceAccount, name: fe, namespace: b}]\nspecs: [{kind: httproutegroup, name: r}]\n",
    ),
    (
        "v1-quantities.yaml",
        "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: s}\nspec:\n  service: web\n  backends:\n  - {service: a, weight: 500m}\n  - {service: b, weight: \"0.5\"}\n  - {service: c, weight: 1}\n  matches: [{kind: HTTPRouteGroup, name: g}]\n",
    ),
    (
        "v1-target-string-port.yaml",
        "apiVersion: access.smi-spec.io/v1alpha1\nkind: TrafficTarget\nmetadata: {name: t}\ndestination: {kind: ServiceAccount, name: api, port: \"8080\"}\nsources: [{kind: ServiceAccount, name: fe}]\nspecs: [{kind: TCPRoute, name: r}]\n",
    ),
    (
        "stale-annotation.json",
        r#"{"apiVersion":"split.smi-spec.io/v1alpha2","kind":"TrafficSplit","metadata":{"name":"s","annotations":{"split.smi-spec.io/weft-original-weights":"[1,2]"}},"spec":{"service":"web","backends":[{"service":"a","weight":5},{"service":"b","weight":0}]}}"#,
    ),
    (
        "route-ports-old-version.yaml",
        "apiVersion: specs.smi-spec.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: r}\nmatches: {name: db, ports: [5432, 0]}\n",
    ),
];

/// Hand-made manifest files for the compiler: the issue's failure modes and rule corners.
const COMPILE_HAND: &[(&str, &str)] = &[
    (
        "ab-some-invalid-regex.yaml",
        r#"apiVersion: v1
kind: Service
metadata: {name: checkout, namespace: store}
spec: {clusterIP: 10.96.0.10, selector: {app: checkout}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: checkout-b, namespace: store}
spec: {clusterIP: 10.96.0.11, selector: {app: checkout, v: b}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c-0, namespace: store, labels: {app: checkout, v: b, weft.io/proxy-version: "0.1.0"}}
spec: {serviceAccountName: checkout, containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: beta, namespace: store}
spec: {matches: [{name: on, headers: {x-beta: "(on"}}, {name: big, pathRegex: "a{1000}{1000}"}, {name: ok, headers: {x-beta: "yes"}}]}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab, namespace: store}
spec: {service: checkout, matches: [{kind: HTTPRouteGroup, name: beta}], backends: [{service: checkout-b, weight: 100}]}
"#,
    ),
    (
        "split-typo-zero-weights.yaml",
        r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.1.1, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 10.96.1.2, selector: {app: web, v: "2"}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: typo, namespace: shop}
spec: {service: web, backends: [{service: web-vl, weight: 90}, {service: web-v2, weight: 10}]}
---
apiVersion: split.smi-spec.io/v1alpha3
kind: TrafficSplit
metadata: {name: zero, namespace: shop}
spec: {service: web, backends: [{service: web, weight: 0}, {service: web-v2, weight: 0}]}
---
apiVersion: split.smi-spec.io/v1alpha3
kind: TrafficSplit
metadata: {name: no-root, namespace: shop}
spec: {service: nothing, backends: [{service: web-v2, weight: 1}]}
"#,
    ),
    (
        "authz-ports-probes.yaml",
        r#"apiVersion: v1
kind: Namespace
metadata: {name: bank, annotations: {weft.io/default-inbound-policy: mesh}}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: bank, labels: {app: api, weft.io/proxy-version: "0.1.0"}, annotations: {weft.io/default-inbound-policy: allow}}
spec:
  serviceAccountName: api
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9090}]
    readinessProbe: {httpGet: {path: /ready?x=1, port: http}}
    livenessProbe: {httpGet: {path: /live, port: 9090, scheme: HTTPS}}
status: {podIP: 10.0.0.9, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: specs.smi-spec.io/v1alpha1
kind: HTTPRouteGroup
metadata: {name: routes, namespace: bank}
matches: [{name: read, pathRegex: /public, methods: [get]}]
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: {name: port-only, namespace: bank}
spec:
  destination: {kind: ServiceAccount, name: api, port: 9090}
  sources: [{kind: ServiceAccount, name: ops}, {kind: Group, name: everyone}]
  rules: [{kind: HTTPRouteGroup, name: routes, matches: [read, missing]}]
---
apiVersion: access.smi-spec.io/v1alpha1
kind: TrafficTarget
metadata: {name: all-ports, namespace: bank}
destination: {kind: ServiceAccount, name: api, namespace: bank}
sources: [{kind: ServiceAccount, name: frontend, namespace: web}]
specs: [{kind: TCPRoute, name: missing-route}]
"#,
    ),
    (
        "endpoints-and-list.yaml",
        r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: data}
  spec: {clusterIPs: [10.96.2.1, "fd00::1"], ports: [{name: pg, port: 5432, targetPort: pg, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: db-abc, namespace: data, labels: {kubernetes.io/service-name: db}}
  addressType: IPv4
  ports: [{name: pg, port: 5432, protocol: TCP}]
  endpoints:
  - addresses: [10.0.1.1]
    conditions: {ready: true}
    targetRef: {kind: Pod, name: db-0, namespace: data}
  - addresses: [10.0.1.2]
    conditions: {ready: false}
- apiVersion: v1
  kind: Endpoints
  metadata: {name: db, namespace: data}
  subsets: [{addresses: [{ip: 10.0.1.3}], ports: [{name: pg, port: 5432}]}]
- apiVersion: v1
  kind: Pod
  metadata: {name: db-0, namespace: data, labels: {weft.io/proxy-version: "1"}}
  spec: {serviceAccountName: db, containers: [{name: pg, ports: [{name: pg, containerPort: 5432}]}]}
  status: {podIP: 10.0.1.1, conditions: [{type: Ready, status: "True"}]}
"#,
    ),
];

fn write(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), data)
}

fn short_version(api_version: &str) -> String {
    api_version.replace(".smi-spec.io/", "-")
}

/// Writes the seed corpus of every target under `fuzz_dir/corpus/`, reading `repo/examples`.
pub fn write_corpus(fuzz_dir: &Path, repo: &Path) -> std::io::Result<usize> {
    let corpus = fuzz_dir.join("corpus");
    let mut n = 0;

    // smi: every hub object in every served version, example documents, hand-made cases.
    let smi = corpus.join("smi");
    for o in hub_objects() {
        for (v, k) in served_versions() {
            if *k != o.kind() {
                continue;
            }
            if let Ok(val) = to_value(&o, v) {
                let y = serde_yaml::to_string(&val).unwrap_or_default();
                write(
                    &smi,
                    &format!("{k}-{}.yaml", short_version(v)),
                    y.as_bytes(),
                )?;
                n += 1;
            }
        }
    }
    let mut examples: Vec<_> = std::fs::read_dir(repo.join("examples"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    examples.sort();
    for ex in &examples {
        let name = ex.file_name().and_then(|n| n.to_str()).unwrap_or("x");
        let mut files: Vec<_> = std::fs::read_dir(ex)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut all = String::new();
        for f in &files {
            let text = std::fs::read_to_string(f)?;
            for (i, doc) in parse_docs(&text).unwrap_or_default().iter().enumerate() {
                let is_smi = doc
                    .get("apiVersion")
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| v.contains("smi-spec.io"));
                if is_smi {
                    let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("f");
                    let y = serde_yaml::to_string(doc).unwrap_or_default();
                    write(
                        &smi,
                        &format!("example-{name}-{stem}-{i}.yaml"),
                        y.as_bytes(),
                    )?;
                    n += 1;
                }
            }
            if !all.is_empty() {
                all.push_str("---\n");
            }
            all.push_str(&text);
        }
        // compile: each example folder as one file.
        write(
            &corpus.join("compile"),
            &format!("example-{name}.yaml"),
            all.as_bytes(),
        )?;
        n += 1;

        // proxy_config: every proxy's full state, as the operator sends it.
        if let Ok(loaded) = load_dir(ex) {
            let compiled = compile(&loaded.to_model(), &CompileOptions::default());
            for (key, cfg) in compiled.proxies().iter() {
                let resp = v1::DiscoveryResponse {
                    nonce: "1".into(),
                    version: cfg.version.clone(),
                    full_state: true,
                    resources: cfg.resources().map(|r| r.to_proto()).collect(),
                    removed: vec![],
                    unchanged: vec![],
                    ..Default::default()
                };
                write(
                    &corpus.join("proxy_config"),
                    &format!("example-{name}-{}.bin", key.name),
                    &resp.encode_to_vec(),
                )?;
                n += 1;
            }
        }
    }
    for (name, text) in SMI_HAND {
        write(&smi, &format!("hand-{name}"), text.as_bytes())?;
        n += 1;
    }
    for (name, text) in COMPILE_HAND {
        write(
            &corpus.join("compile"),
            &format!("hand-{name}"),
            text.as_bytes(),
        )?;
        n += 1;
    }

    // proxy_config: an incremental response, and one with invalid values.
    let incremental = v1::DiscoveryResponse {
        nonce: "2".into(),
        version: "v2".into(),
        full_state: false,
        resources: vec![v1::Resource {
            name: "endpoints:web.shop:80".into(),
            version: String::new(),
            kind: Some(v1::resource::Kind::Endpoints(v1::EndpointSet {
                endpoints: vec![v1::Endpoint {
                    ip: vec![0; 16],
                    port: 8080,
                    identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
                    inbound_port: 4143,
                    pod: "shop/web-0".into(),
                    workload: "statefulset/web".into(),
                }],
            })),
        }],
        removed: vec!["outbound:old.shop".into()],
        unchanged: vec![],
        ..Default::default()
    };
    write(
        &corpus.join("proxy_config"),
        "hand-incremental.bin",
        &incremental.encode_to_vec(),
    )?;
    n += 1;

    // transport_header / detect: control byte, then the stream.
    let headers: &[(&str, &[u8])] = &[
        ("valid-opaque", b"\x00WEFT\x01\x1f\x90\x00rest"),
        (
            "valid-detect-chunked",
            b"\x07WEFT\x01\x00\x50\x01GET / HTTP/1.1\r\n\r\n",
        ),
        ("valid-http2", b"\x01WEFT\x01\x10\x2c\x03"),
        ("bad-version", b"\x00WEFT\x02\x00\x50\x00"),
        ("port-zero", b"\x00WEFT\x01\x00\x00\x02"),
        ("short", b"\x81WEF"),
    ];
    for (name, data) in headers {
        write(&corpus.join("transport_header"), name, data)?;
        n += 1;
    }
    let detect: &[(&str, &[u8])] = &[
        ("http1", b"\x00GET /x HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("http1-drip", b"\x00POST / HTTP/1.1\r\n"),
        ("http1-lower", b"\x03get / HTTP/1.1\r\n"),
        (
            "h2-preface",
            b"\x05PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00",
        ),
        ("h2-partial", b"\x02PRI * HTTP/2.0\r\n"),
        ("tls", b"\x01\x16\x03\x01\x02\x00\x01\x00"),
        ("long-token", b"\x0fABCDEFGHIJKLMNOPQRSTUVWXYZ "),
        ("reset", b"\x80GE"),
    ];
    for (name, data) in detect {
        write(&corpus.join("detect"), name, data)?;
        n += 1;
    }
    Ok(n)
}
