//! Benchmarks of the control plane.
//!
//! `cargo run --release -p weft-operator --bin weft-bench -- compile`: compiles a synthetic mesh
//! (10,000 services, 100,000 endpoints, 2,000 meshed pods, 1,000 SMI objects) and reports the
//! full compile time, peak RSS, and the time and proxies touched by a one-endpoint change and
//! a one-weight change.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use weft_operator::compile::{ChangedKeys, CompileOptions, Compiler};
use weft_operator::model::{
    ClusterObject, ContainerPort, EndpointAddress, EndpointGroup, EndpointPort, EndpointSource,
    EndpointSubset, L4Protocol, Model, Namespace, ObjectRef, Pod, Service, ServicePort, TargetPort,
};
use weft_smi::hub;

const NAMESPACES: usize = 100;
const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 10;
const MESHED_PODS: usize = 2_000;
const SPLITS: usize = 400;
const ROUTE_GROUPS: usize = 200;
const TARGETS: usize = 400;

fn ip(n: usize) -> IpAddr {
    let n = n as u32;
    IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

fn meta(ns: &str, name: &str) -> hub::Meta {
    hub::Meta {
        namespace: ns.into(),
        name: name.into(),
        generation: Some(1),
        creation_timestamp: Some("2024-01-01T00:00:00Z".into()),
        uid: None,
        api_version: String::new(),
    }
}

fn slice(ns: &str, svc: usize, first_ip: usize) -> EndpointGroup {
    EndpointGroup {
        source: EndpointSource::EndpointSlice,
        namespace: ns.into(),
        name: format!("svc-{svc}-abcde"),
        service: Some(format!("svc-{svc}")),
        subsets: vec![EndpointSubset {
            ports: vec![EndpointPort {
                name: Some("http".into()),
                port: 8080,
                protocol: L4Protocol::Tcp,
            }],
            addresses: (0..ENDPOINTS_PER_SERVICE)
                .map(|i| {
                    let n = first_ip + i;
                    EndpointAddress {
                        ip: ip(n),
                        ready: true,
                        pod: (n < MESHED_PODS * 50 && n.is_multiple_of(50))
                            .then(|| ObjectRef::new(ns, format!("pod-{}", n / 50))),
                    }
                })
                .collect(),
        }],
    }
}

fn synthetic() -> Model {
    let mut m = Model::new();
    let per_ns = SERVICES / NAMESPACES;
    for n in 0..NAMESPACES {
        m.upsert(ClusterObject::Namespace(Namespace {
            name: format!("ns-{n}"),
            annotations: BTreeMap::new(),
        }));
    }
    for s in 0..SERVICES {
        let ns = format!("ns-{}", s / per_ns);
        m.upsert(ClusterObject::Service(Service {
            namespace: ns.clone(),
            name: format!("svc-{s}"),
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(172, 20, (s >> 8) as u8, s as u8))],
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: L4Protocol::Tcp,
                app_protocol: Some("http".into()),
                target_port: TargetPort::Name("http".into()),
            }],
            selector: Some(BTreeMap::from([("app".into(), format!("svc-{s}"))])),
            annotations: BTreeMap::new(),
        }));
        m.upsert(ClusterObject::Endpoints(slice(
            &ns,
            s,
            s * ENDPOINTS_PER_SERVICE,
        )));
    }
    // Meshed pods: pod-k has the IP of endpoint k*50 (the first endpoint of every 5th service).
    for k in 0..MESHED_PODS {
        let n = k * 50;
        let s = n / ENDPOINTS_PER_SERVICE;
        let ns = format!("ns-{}", s / per_ns);
        m.upsert(ClusterObject::Pod(Pod {
            namespace: ns,
            name: format!("pod-{k}"),
            ip: Some(ip(n)),
            labels: BTreeMap::from([
                ("app".into(), format!("svc-{s}")),
                ("weft.io/proxy-version".into(), "0.1.0".into()),
            ]),
            annotations: BTreeMap::new(),
            service_account: format!("sa-{}", k % 10),
            ready: true,
            meshed: true,
            container_ports: vec![ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: L4Protocol::Tcp,
            }],
            http_probes: Vec::new(),
            workload: None,
        }));
    }
    for g in 0..ROUTE_GROUPS {
        let ns = format!("ns-{}", g % NAMESPACES);
        m.upsert(ClusterObject::Smi(hub::SmiObject::HTTPRouteGroup(
            hub::HttpRouteGroup {
                meta: meta(&ns, &format!("routes-{g}")),
                matches: vec![
                    hub::HttpMatch {
                        name: "read".into(),
                        path_regex: Some("/api/.*".into()),
                        methods: vec!["GET".into()],
                        headers: BTreeMap::new(),
                    },
                    hub::HttpMatch {
                        name: "canary-users".into(),
                        path_regex: None,
                        methods: vec![],
                        headers: BTreeMap::from([("x-canary".into(), "yes".into())]),
                    },
                ],
            },
        )));
    }
    for i in 0..SPLITS {
        let apex = i * (SERVICES / SPLITS);
        let ns = format!("ns-{}", apex / per_ns);
        let group = format!("routes-{}", apex / per_ns + NAMESPACES * (i % 2));
        m.upsert(ClusterObject::Smi(hub::SmiObject::TrafficSplit(
            hub::TrafficSplit {
                meta: meta(&ns, &format!("split-{i}")),
                service: format!("svc-{apex}"),
                backends: vec![
                    hub::Backend {
                        service: format!("svc-{}", apex + 1),
                        weight_milli: 900_000,
                    },
                    hub::Backend {
                        service: format!("svc-{}", apex + 2),
                        weight_milli: 100_000,
                    },
                ],
                matches: if i % 4 == 0 && apex / per_ns + NAMESPACES * (i % 2) < ROUTE_GROUPS {
                    vec![hub::TypedRef {
                        kind: "HTTPRouteGroup".into(),
                        name: group,
                        api_group: None,
                    }]
                } else {
                    vec![]
                },
            },
        )));
    }
    for t in 0..TARGETS {
        let ns = format!("ns-{}", t % NAMESPACES);
        m.upsert(ClusterObject::Smi(hub::SmiObject::TrafficTarget(
            hub::TrafficTarget {
                meta: meta(&ns, &format!("target-{t}")),
                destination: hub::IdentityRef {
                    kind: "ServiceAccount".into(),
                    name: format!("sa-{}", t % 10),
                    namespace: ns.clone(),
                    port: None,
                },
                sources: vec![hub::IdentityRef {
                    kind: "ServiceAccount".into(),
                    name: format!("sa-{}", (t + 1) % 10),
                    namespace: ns.clone(),
                    port: None,
                }],
                rules: vec![hub::TrafficTargetRule {
                    kind: hub::RouteKind::HTTPRouteGroup,
                    name: format!("routes-{}", t % NAMESPACES),
                    matches: vec!["read".into()],
                }],
            },
        )));
    }
    m
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

const REPEAT: usize = 9;

fn report(
    what: &str,
    times: &mut [std::time::Duration],
    stats: Option<weft_operator::compile::UpdateStats>,
    proxies: usize,
) {
    times.sort();
    let s = stats.unwrap_or_default();
    println!(
        "{what}: median {} (min {}, max {}, {} runs; {} resource changed, {} proxies touched of {proxies})",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
        times.len(),
        s.resources_changed,
        s.proxies_changed,
    );
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn bench_compile() {
    let t = Instant::now();
    let mut model = synthetic();
    let build = t.elapsed();
    let smi = model.splits.len() + model.targets.len() + model.http_routes.len();
    let endpoints: usize = model
        .endpoint_groups
        .values()
        .map(|g| g.subsets.iter().map(|s| s.addresses.len()).sum::<usize>())
        .sum();
    println!(
        "mesh: {} services, {} endpoints, {} meshed pods, {} SMI objects (built in {})",
        model.services.len(),
        endpoints,
        model.pods.len(),
        smi,
        ms(build)
    );

    let mut compiler = Compiler::new(CompileOptions::default());
    let t = Instant::now();
    let full = compiler.full(&model);
    let full_time = t.elapsed();
    println!(
        "full compile: {} ({} proxies, {} shared resources, {} statuses)",
        ms(full_time),
        full.proxies().len(),
        full.shared().len(),
        full.statuses().len()
    );

    // One endpoint changes IP (repeated; the median is reported).
    let mut times = Vec::new();
    let mut stats = None;
    for rep in 0..REPEAT {
        let mut g = slice("ns-50", 5003, 5003 * ENDPOINTS_PER_SERVICE);
        g.subsets[0].addresses[3].ip = IpAddr::V4(Ipv4Addr::new(10, 250, 0, rep as u8 + 1));
        let key = model.upsert(ClusterObject::Endpoints(g));
        let t = Instant::now();
        compiler.update(&model, &ChangedKeys::from_iter([key]));
        times.push(t.elapsed());
        stats = Some(compiler.last_stats().clone());
    }
    report(
        "one-endpoint change",
        &mut times,
        stats,
        full.proxies().len(),
    );

    // One split weight changes.
    let mut times = Vec::new();
    let mut stats = None;
    for rep in 0..REPEAT {
        let r = ObjectRef::new("ns-0", "split-1");
        let mut split = model.splits[&r].clone();
        split.backends[0].weight_milli = 500_000 + 1000 * rep as u64;
        let key = model.upsert(ClusterObject::Smi(hub::SmiObject::TrafficSplit(split)));
        let t = Instant::now();
        compiler.update(&model, &ChangedKeys::from_iter([key]));
        times.push(t.elapsed());
        stats = Some(compiler.last_stats().clone());
    }
    report("one-weight change", &mut times, stats, full.proxies().len());

    // A TrafficTarget change touches only its destination's proxies.
    let key = {
        let r = ObjectRef::new("ns-3", "target-3");
        let mut tt = model.targets[&r].clone();
        tt.rules[0].matches.clear();
        model.upsert(ClusterObject::Smi(hub::SmiObject::TrafficTarget(tt)))
    };
    let t = Instant::now();
    compiler.update(&model, &ChangedKeys::from_iter([key]));
    let s = compiler.last_stats().clone();
    println!(
        "one-TrafficTarget change: {} ({} proxies touched)",
        ms(t.elapsed()),
        s.proxies_changed
    );
    match peak_rss_mb() {
        Some(mb) => println!("peak RSS (VmHWM): {mb:.0} MB"),
        None => println!("peak RSS: unavailable"),
    }
    drop(full);
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("compile") | None => bench_compile(),
        Some(other) => {
            eprintln!("unknown benchmark {other:?}; available: compile");
            std::process::exit(2);
        }
    }
}
