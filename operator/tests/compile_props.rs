//! Property tests of the compiler: split weights, authorization semantics, determinism and
//! incremental = full recompilation.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use weft_operator::compile::{
    compile, ChangedKeys, CompileOptions, Compiled, Compiler, DefaultPolicy, HttpMatch,
    InboundPolicy, ResourceKind,
};
use weft_operator::model::{
    ClusterObject, ContainerPort, Kind, L4Protocol, Model, Namespace, ObjectKey, ObjectRef, Pod,
    Service, ServicePort, TargetPort,
};
use weft_smi::hub;

fn meta(name: &str) -> hub::Meta {
    hub::Meta {
        namespace: "demo".into(),
        name: name.into(),
        generation: Some(1),
        creation_timestamp: Some("2024-01-01T00:00:00Z".into()),
        uid: None,
        api_version: String::new(),
    }
}

fn service(name: &str) -> ClusterObject {
    ClusterObject::Service(Service {
        namespace: "demo".into(),
        name: name.into(),
        cluster_ips: vec![],
        ports: vec![ServicePort {
            name: None,
            port: 80,
            protocol: L4Protocol::Tcp,
            app_protocol: None,
            target_port: TargetPort::Number(8080),
        }],
        selector: Some(BTreeMap::from([("app".into(), name.into())])),
        annotations: BTreeMap::new(),
    })
}

fn pod(name: &str, app: &str, sa: &str, ip: u8, meshed: bool) -> ClusterObject {
    ClusterObject::Pod(Pod {
        namespace: "demo".into(),
        name: name.into(),
        ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip))),
        labels: BTreeMap::from([("app".into(), app.into())]),
        annotations: BTreeMap::new(),
        service_account: sa.into(),
        ready: true,
        meshed,
        container_ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: L4Protocol::Tcp,
        }],
        http_probes: Vec::new(),
        workload: None,
    })
}

fn split(name: &str, weights: &[u64]) -> ClusterObject {
    ClusterObject::Smi(hub::SmiObject::TrafficSplit(hub::TrafficSplit {
        meta: meta(name),
        service: "web".into(),
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, w)| hub::Backend {
                service: format!("b{i}"),
                weight_milli: *w * 1000,
            })
            .collect(),
        matches: vec![],
    }))
}

fn groups() -> Vec<ClusterObject> {
    let m = |name: &str, path: &str, methods: &[&str]| hub::HttpMatch {
        name: name.into(),
        path_regex: Some(path.into()),
        methods: methods.iter().map(|s| s.to_string()).collect(),
        headers: BTreeMap::new(),
    };
    vec![
        ClusterObject::Smi(hub::SmiObject::HTTPRouteGroup(hub::HttpRouteGroup {
            meta: meta("g0"),
            matches: vec![m("read", "/api", &["GET"]), m("write", "/api", &["POST"])],
        })),
        ClusterObject::Smi(hub::SmiObject::HTTPRouteGroup(hub::HttpRouteGroup {
            meta: meta("g1"),
            matches: vec![m("any", "/", &["*"])],
        })),
    ]
}

const SOURCES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
struct Tt {
    sources: Vec<usize>,
    /// (group index, match names; empty = all)
    rules: Vec<(usize, Vec<&'static str>)>,
}

fn tt_strategy() -> impl Strategy<Value = Tt> {
    let rule = (0usize..3).prop_flat_map(|g| {
        let names: Vec<&'static str> = match g {
            0 => vec!["read", "write"],
            1 => vec!["any"],
            _ => vec!["read"], // group g2 does not exist
        };
        (
            Just(g),
            proptest::sample::subsequence(names.clone(), 0..=names.len()),
        )
    });
    (
        proptest::collection::vec(0usize..3, 0..3),
        proptest::collection::vec(rule, 0..3),
    )
        .prop_map(|(sources, rules)| Tt { sources, rules })
}

fn tt_object(i: usize, t: &Tt) -> ClusterObject {
    ClusterObject::Smi(hub::SmiObject::TrafficTarget(hub::TrafficTarget {
        meta: meta(&format!("t{i}")),
        destination: hub::IdentityRef {
            kind: "ServiceAccount".into(),
            name: "web".into(),
            namespace: "demo".into(),
            port: None,
        },
        sources: t
            .sources
            .iter()
            .map(|s| hub::IdentityRef {
                kind: "ServiceAccount".into(),
                name: SOURCES[*s].into(),
                namespace: "demo".into(),
                port: None,
            })
            .collect(),
        rules: t
            .rules
            .iter()
            .map(|(g, m)| hub::TrafficTargetRule {
                kind: hub::RouteKind::HTTPRouteGroup,
                name: format!("g{g}"),
                matches: m.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    }))
}

/// The spec's answer: allowed iff some TrafficTarget allows it, or none names the destination
/// and the default does.
fn oracle(tts: &[Tt], default: DefaultPolicy, src: usize, method: &str, path: &str) -> bool {
    if tts.is_empty() {
        return default != DefaultPolicy::Deny; // every source here is meshed
    }
    let matches = |g: usize, name: &str| -> bool {
        match (g, name) {
            (0, "read") => method == "GET" && path.starts_with("/api"),
            (0, "write") => method == "POST" && path.starts_with("/api"),
            (1, "any") => path.starts_with('/'),
            _ => false,
        }
    };
    tts.iter().any(|t| {
        t.sources.contains(&src)
            && t.rules.iter().any(|(g, names)| {
                let all: &[&str] = match g {
                    0 => &["read", "write"],
                    1 => &["any"],
                    _ => &[],
                };
                let names: &[&str] = if names.is_empty() { all } else { names };
                names.iter().any(|n| all.contains(n) && matches(*g, n))
            })
    })
}

fn http_match(m: &HttpMatch, method: &str, path: &str) -> bool {
    let path_ok = m.path_regex.is_empty()
        || regex::Regex::new(&format!("^(?:{})", m.path_regex))
            .map(|r| r.is_match(path))
            .unwrap_or(false);
    let method_ok =
        m.methods.is_empty() || m.methods.iter().any(|x| x == "*" || x.as_str() == method);
    path_ok && method_ok && m.headers.is_empty()
}

/// What a proxy enforcing the compiled policy decides (see docs/compile.md).
fn evaluate(policy: &InboundPolicy, port: u16, src: &str, method: &str, path: &str) -> bool {
    let identity = format!("spiffe://cluster.local/ns/demo/sa/{src}");
    match policy.ports.iter().find(|p| p.port == port) {
        Some(p) if p.restricted => p.authorizations.iter().any(|a| {
            a.clients.legacy_sources().contains(&identity)
                && (a.all_traffic || a.http_routes.iter().any(|m| http_match(m, method, path)))
        }),
        _ => policy.default_policy != DefaultPolicy::Deny,
    }
}

fn inbound_of(c: &Compiled, pod: &str) -> InboundPolicy {
    match &c
        .proxy(&ObjectRef::new("demo", pod))
        .expect("proxy")
        .inbound
        .resource
    {
        ResourceKind::Inbound(i) => i.clone(),
        _ => unreachable!(),
    }
}

fn fingerprint(c: &Compiled) -> Vec<(String, String, BTreeMap<String, String>)> {
    c.proxies()
        .iter()
        .map(|(k, p)| (k.to_string(), p.version.clone(), p.versions()))
        .collect()
}

fn base_objects() -> Vec<ClusterObject> {
    let mut v = vec![ClusterObject::Namespace(Namespace {
        name: "demo".into(),
        annotations: BTreeMap::new(),
    })];
    v.push(service("web"));
    for i in 0..4 {
        v.push(service(&format!("b{i}")));
        v.push(pod(
            &format!("b{i}-0"),
            &format!("b{i}"),
            "b",
            10 + i,
            i % 2 == 0,
        ));
    }
    v.push(pod("web-0", "web", "web", 2, true));
    v.push(pod("client-0", "client", "a", 3, true));
    v.extend(groups());
    v
}

fn build(objects: Vec<ClusterObject>) -> Model {
    let mut m = Model::from_objects(objects);
    m.derive_endpoints_from_pods = true;
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn split_weights_are_proportional_to_spec(weights in proptest::collection::vec(0u64..10_000, 1..5)) {
        prop_assume!(weights.iter().any(|w| *w > 0));
        let mut objs = base_objects();
        objs.push(split("s", &weights));
        let c = compile(&build(objs), &CompileOptions::default());
        let cfg = c.proxy(&ObjectRef::new("demo", "client-0")).expect("proxy");
        let ResourceKind::Outbound(o) = &cfg.get("outbound:web.demo").expect("outbound").resource else {
            panic!("not outbound")
        };
        let route = &o.ports[0].routes[0];
        prop_assert_eq!(route.name.as_str(), "split:demo/s");
        let got: Vec<u64> = route.backends.iter().map(|b| b.weight).collect();
        prop_assert_eq!(got.len(), weights.len());
        let (sum_spec, sum_got): (u64, u64) = (weights.iter().sum(), got.iter().sum());
        for (w, g) in weights.iter().zip(&got) {
            // Same share of the total: g / sum_got == w / sum_spec.
            prop_assert_eq!(u128::from(*g) * u128::from(sum_spec), u128::from(*w) * u128::from(sum_got));
        }
    }

    #[test]
    fn allowed_iff_some_target_or_the_default_allows(
        tts in proptest::collection::vec(tt_strategy(), 0..4),
        default in prop_oneof![Just(DefaultPolicy::Allow), Just(DefaultPolicy::Mesh), Just(DefaultPolicy::Deny)],
    ) {
        let mut objs = base_objects();
        for (i, t) in tts.iter().enumerate() {
            objs.push(tt_object(i, t));
        }
        let opts = CompileOptions { default_inbound_policy: default, ..CompileOptions::default() };
        let c = compile(&build(objs), &opts);
        let policy = inbound_of(&c, "web-0");
        for (si, src) in SOURCES.iter().enumerate() {
            for method in ["GET", "POST"] {
                for path in ["/api/users", "/other"] {
                    prop_assert_eq!(
                        evaluate(&policy, 8080, src, method, path),
                        oracle(&tts, default, si, method, path),
                        "{} {} {}", src, method, path
                    );
                }
            }
        }
    }

    #[test]
    fn output_is_deterministic_in_any_insertion_order(seed in any::<u64>(), weights in proptest::collection::vec(1u64..100, 2..4)) {
        let mut objs = base_objects();
        objs.push(split("s", &weights));
        objs.push(tt_object(0, &Tt { sources: vec![0], rules: vec![(0, vec![])] }));
        let a = compile(&build(objs.clone()), &CompileOptions::default());
        // A seeded shuffle.
        let mut state = seed | 1;
        let mut shuffled = objs;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let b = compile(&build(shuffled), &CompileOptions::default());
        prop_assert_eq!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn incremental_updates_equal_a_full_compile(steps in proptest::collection::vec(0usize..8, 1..12)) {
        let mut model = build(base_objects());
        let mut compiler = Compiler::new(CompileOptions::default());
        compiler.full(&model);
        for (n, step) in steps.iter().enumerate() {
            let mut changed = ChangedKeys::default();
            match step {
                0 => changed.insert(model.upsert(split("s", &[n as u64 + 1, 1]))),
                1 => {
                    let k = ObjectKey::new(Kind::TrafficSplit, "demo", "s");
                    model.remove(&k);
                    changed.insert(k);
                }
                2 => changed.insert(model.upsert(tt_object(0, &Tt { sources: vec![n % 3], rules: vec![(n % 2, vec![])] }))),
                3 => {
                    let k = ObjectKey::new(Kind::TrafficTarget, "demo", "t0");
                    model.remove(&k);
                    changed.insert(k);
                }
                4 => changed.insert(model.upsert(pod("b1-0", "b1", "b", 11, n % 2 == 0))),
                5 => changed.insert(model.upsert(pod("b1-0", if n % 2 == 0 { "b1" } else { "b2" }, "b", 11 + (n % 3) as u8, true))),
                6 => {
                    let k = ObjectKey::new(Kind::Pod, "demo", "b2-0");
                    model.remove(&k);
                    changed.insert(k);
                }
                _ => {
                    let k = ObjectKey::new(Kind::Service, "demo", "b0");
                    if model.remove(&k) { changed.insert(k) } else { changed.insert(model.upsert(service("b0"))) }
                }
            }
            let inc = compiler.update(&model, &changed);
            let full = compile(&model, &CompileOptions::default());
            prop_assert_eq!(fingerprint(&inc), fingerprint(&full), "after step {} ({})", n, step);
            prop_assert_eq!(inc.statuses(), full.statuses());
        }
    }
}
