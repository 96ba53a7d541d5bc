//! The reliability annotations (#16, docs/reliability.md "Configuration"): every annotation
//! compiled into the typed policy and the proto a proxy receives, invalid values reported on
//! the annotated object and ignored, Namespace defaults with Service overrides, and the
//! strictest inbound limits where several Services target one pod port.

use weft_operator::compile::reliability::ANNOTATIONS;
use weft_operator::compile::{
    compile, ChangedKeys, CompileOptions, Compiled, Compiler, Event, FailureAccrual, InboundLimits,
    InboundPort, OutboundService, RateLimit, ResourceKind, StatusRange, ToProto, TrafficPolicy,
};
use weft_operator::model::manifests::parse_manifests;
use weft_operator::model::{Kind, Model, ObjectKey, ObjectRef};

fn annotations(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let items: String = pairs
        .iter()
        .map(|(k, v)| format!("    {k}: {v:?}\n"))
        .collect();
    format!("  annotations:\n{items}")
}

fn ns(pairs: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n{}---\n",
        annotations(pairs)
    )
}

/// A ready meshed pod `app: <app>` with container ports `http` 8080 and `admin` 9090.
fn pod(name: &str, app: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels:
    app: {app}
    weft.io/proxy-version: "0.1.0"
spec:
  serviceAccountName: {app}
  containers:
  - name: app
    image: app
    ports:
    - name: http
      containerPort: 8080
    - name: admin
      containerPort: 9090
status:
  podIP: {ip}
  conditions:
  - type: Ready
    status: "True"
---
"#
    )
}

/// A Service selecting `app: <app>`, port 80 to `target`.
fn svc(name: &str, app: &str, target: &str, pairs: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\n{}spec:\n  selector:\n    app: {app}\n  ports:\n  - name: http\n    port: 80\n    targetPort: {target}\n---\n",
        annotations(pairs)
    )
}

fn model(yaml: &str) -> Model {
    let (objects, ignored) = parse_manifests(yaml, false).expect("test manifests parse");
    assert!(ignored.is_empty(), "ignored: {ignored:?}");
    let mut m = Model::from_objects(objects);
    m.derive_endpoints_from_pods = true;
    m
}

fn build(yaml: &str) -> Compiled {
    compile(&model(yaml), &CompileOptions::default())
}

/// Namespace `demo` with `ns_ann`, a client pod, a server pod, Service `api` with `svc_ann`.
fn mesh(ns_ann: &[(&str, &str)], svc_ann: &[(&str, &str)]) -> String {
    ns(ns_ann)
        + &pod("client-0", "client", "10.0.0.1")
        + &pod("api-0", "api", "10.0.1.1")
        + &svc("api", "api", "http", svc_ann)
}

fn outbound(c: &Compiled, svc: &str) -> OutboundService {
    let cfg = c
        .proxy(&ObjectRef::new("demo", "client-0"))
        .expect("client proxy");
    match &cfg
        .get(&format!("outbound:{svc}.demo"))
        .expect("outbound")
        .resource
    {
        ResourceKind::Outbound(o) => o.clone(),
        _ => unreachable!(),
    }
}

fn policy(c: &Compiled) -> TrafficPolicy {
    outbound(c, "api").policy
}

fn inbound_port(c: &Compiled, pod: &str, port: u16) -> InboundPort {
    let cfg = c.proxy(&ObjectRef::new("demo", pod)).expect("proxy");
    match &cfg.inbound.resource {
        ResourceKind::Inbound(i) => i
            .ports
            .iter()
            .find(|p| p.port == port)
            .cloned()
            .unwrap_or_else(|| panic!("no inbound port {port}: {i:?}")),
        _ => unreachable!(),
    }
}

fn events_on(c: &Compiled, kind: Kind, namespace: &str, name: &str) -> Vec<Event> {
    let key = ObjectKey::new(kind, namespace, name);
    c.events()
        .into_iter()
        .filter(|e| e.object == key)
        .cloned()
        .collect()
}

fn sr(min: u16, max: u16) -> StatusRange {
    StatusRange { min, max }
}

/// Every outbound annotation with a valid, non-default value.
const OUTBOUND_VALID: &[(&str, &str)] = &[
    ("weft.io/timeout", "3s"),
    ("weft.io/retries", "2"),
    ("weft.io/retry-budget", "0.5"),
    ("weft.io/retry-non-idempotent", "true"),
    ("weft.io/retry-budget-min-per-second", "3"),
    ("weft.io/per-try-timeout", "750ms"),
    ("weft.io/retry-statuses", "503,502,429"),
    ("weft.io/retry-grpc-codes", "unavailable,RESOURCE_EXHAUSTED"),
    ("weft.io/failure-accrual-consecutive", "7"),
    ("weft.io/failure-accrual-success-rate", "0.9"),
    ("weft.io/failure-accrual-window", "30s"),
    ("weft.io/failure-accrual-min-requests", "50"),
    ("weft.io/failure-accrual-backoff", "2s-2m"),
    ("weft.io/failure-statuses", "5xx,429"),
    ("weft.io/failure-grpc-codes", "14, 4"),
    ("weft.io/max-concurrent-requests", "100"),
    ("weft.io/max-pending-requests", "10"),
    ("weft.io/max-requests-per-endpoint", "20"),
    ("weft.io/queue-timeout", "250ms"),
];

fn expected_valid_policy() -> TrafficPolicy {
    TrafficPolicy {
        request_timeout_ms: 3000,
        max_retries: 2,
        retry_budget_ratio: 0.5,
        retry_non_idempotent: true,
        retry_budget_min_per_second: 3,
        per_try_timeout_ms: 750,
        retry_statuses: vec![sr(429, 429), sr(502, 503)],
        retry_grpc_codes: vec![8, 14],
        failure_accrual: FailureAccrual {
            consecutive_failures: 7,
            min_success_rate: 0.9,
            window_ms: 30_000,
            min_requests: 50,
            min_backoff_ms: 2000,
            max_backoff_ms: 120_000,
            failure_statuses: vec![sr(429, 429), sr(500, 599)],
            failure_grpc_codes: vec![4, 14],
        },
        max_concurrent_requests: 100,
        max_pending_requests: 10,
        max_requests_per_endpoint: 20,
        queue_timeout_ms: 250,
    }
}

#[test]
fn unannotated_service_gets_the_defaults() {
    let c = build(&mesh(&[], &[]));
    assert_eq!(policy(&c), TrafficPolicy::default());
    assert!(inbound_port(&c, "api-0", 8080).limits.is_unlimited());
    assert!(c.events().is_empty(), "{:?}", c.events());
}

#[test]
fn every_outbound_annotation_reaches_the_policy_and_the_proto() {
    let c = build(&mesh(&[], OUTBOUND_VALID));
    let want = expected_valid_policy();
    assert_eq!(policy(&c), want);
    assert!(c.events().is_empty(), "{:?}", c.events());
    // What the proxy receives.
    let pb = outbound(&c, "api").to_proto();
    let p = pb.policy.expect("policy on the wire");
    assert_eq!(p.request_timeout_ms, 3000);
    assert_eq!(p.max_retries, 2);
    assert_eq!(p.retry_budget_ratio, 0.5);
    assert!(p.retry_non_idempotent);
    assert_eq!(p.retry_budget_min_per_second, 3);
    assert_eq!(p.per_try_timeout_ms, 750);
    let ranges = |r: &[weft_proxy_api::v1::StatusRange]| -> Vec<(u32, u32)> {
        r.iter().map(|r| (r.min, r.max)).collect()
    };
    assert_eq!(ranges(&p.retry_statuses), vec![(429, 429), (502, 503)]);
    assert_eq!(p.retry_grpc_codes, vec![8, 14]);
    let fa = p.failure_accrual.expect("failure accrual on the wire");
    assert_eq!(fa.consecutive_failures, 7);
    assert_eq!(fa.min_success_rate, 0.9);
    assert_eq!(fa.window_ms, 30_000);
    assert_eq!(fa.min_requests, 50);
    assert_eq!((fa.min_backoff_ms, fa.max_backoff_ms), (2000, 120_000));
    assert_eq!(ranges(&fa.failure_statuses), vec![(429, 429), (500, 599)]);
    assert_eq!(fa.failure_grpc_codes, vec![4, 14]);
    assert_eq!(p.max_concurrent_requests, 100);
    assert_eq!(p.max_pending_requests, 10);
    assert_eq!(p.max_requests_per_endpoint, 20);
    assert_eq!(p.queue_timeout_ms, 250);
}

/// Invalid values of every annotation, each with the fragment its message must carry.
const INVALID: &[(&str, &str)] = &[
    ("weft.io/timeout", "soon"),
    ("weft.io/retries", "-1"),
    ("weft.io/retry-budget", "1.5"),
    ("weft.io/retry-non-idempotent", "yes"),
    ("weft.io/retry-budget-min-per-second", "lots"),
    ("weft.io/per-try-timeout", "5"),
    ("weft.io/retry-statuses", "503,600"),
    ("weft.io/retry-grpc-codes", "UNAVAILABLE,SLOW"),
    ("weft.io/failure-accrual-consecutive", "2.5"),
    ("weft.io/failure-accrual-success-rate", "-0.1"),
    ("weft.io/failure-accrual-window", "0s"),
    ("weft.io/failure-accrual-min-requests", "many"),
    ("weft.io/failure-accrual-backoff", "60s-1s"),
    ("weft.io/failure-statuses", "99"),
    ("weft.io/failure-grpc-codes", "OK"),
    ("weft.io/max-concurrent-requests", "1e3"),
    ("weft.io/max-pending-requests", "-5"),
    ("weft.io/max-requests-per-endpoint", "x"),
    ("weft.io/queue-timeout", "0ms"),
    ("weft.io/inbound-max-concurrent-requests", "ten"),
    ("weft.io/inbound-max-pending-requests", "4294967296"),
    ("weft.io/inbound-queue-timeout", "1"),
    ("weft.io/rate-limit", "0/s"),
    ("weft.io/rate-limit-burst", "-1"),
    ("weft.io/rate-limit-per-identity", "10/day"),
    ("weft.io/rate-limit-per-identity-burst", "big"),
];

#[test]
fn every_invalid_value_is_reported_on_the_service_and_ignored() {
    // The table covers every annotation.
    let mut named: Vec<&str> = INVALID.iter().map(|(a, _)| *a).collect();
    named.sort_unstable();
    let mut all = ANNOTATIONS.to_vec();
    all.sort_unstable();
    assert_eq!(named, all);

    let c = build(&mesh(&[], INVALID));
    assert_eq!(policy(&c), TrafficPolicy::default());
    assert!(inbound_port(&c, "api-0", 8080).limits.is_unlimited());
    let events = events_on(&c, Kind::Service, "demo", "api");
    for (ann, value) in INVALID {
        let e = events
            .iter()
            .find(|e| e.message.starts_with(&format!("{ann}: ")))
            .unwrap_or_else(|| panic!("no event for {ann}: {events:#?}"));
        assert_eq!(e.reason, "InvalidAnnotation");
        assert!(
            e.message.contains(&format!("{value:?}")),
            "the value: {}",
            e.message
        );
        assert!(
            e.message.contains(" is not "),
            "what is expected: {}",
            e.message
        );
        assert!(e.message.contains("ignored"), "{}", e.message);
    }
    assert_eq!(events.len(), INVALID.len(), "{events:#?}");
}

#[test]
fn messages_say_what_is_expected() {
    let c = build(&mesh(
        &[],
        &[
            ("weft.io/failure-accrual-backoff", "60s-1s"),
            ("weft.io/retry-grpc-codes", "SLOW"),
            ("weft.io/retry-statuses", "600"),
            ("weft.io/rate-limit", "0/s"),
        ],
    ));
    let events = events_on(&c, Kind::Service, "demo", "api");
    let msg = |ann: &str| {
        events
            .iter()
            .find(|e| e.message.starts_with(ann))
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert!(msg("weft.io/failure-accrual-backoff").contains("min <= max"));
    assert!(msg("weft.io/retry-grpc-codes").contains("UNAVAILABLE"));
    assert!(msg("weft.io/retry-statuses").contains("100-599"));
    assert!(msg("weft.io/rate-limit").contains("greater than 0"));
}

#[test]
fn namespace_annotations_are_defaults_and_the_service_wins() {
    let ns_ann = [
        ("weft.io/timeout", "10s"),
        ("weft.io/retries", "3"),
        ("weft.io/failure-accrual-consecutive", "9"),
        ("weft.io/retry-statuses", "5xx"),
        ("weft.io/inbound-max-concurrent-requests", "50"),
        ("weft.io/rate-limit", "6000/m"),
    ];
    let svc_ann = [
        ("weft.io/timeout", "1s"),
        ("weft.io/failure-accrual-consecutive", "0"),
        ("weft.io/rate-limit-burst", "20"),
    ];
    let c = build(&mesh(&ns_ann, &svc_ann));
    let p = policy(&c);
    assert_eq!(p.request_timeout_ms, 1000, "the Service wins");
    assert_eq!(p.max_retries, 3, "the Namespace's default");
    assert_eq!(
        p.failure_accrual.consecutive_failures, 0,
        "the Service wins"
    );
    assert_eq!(p.retry_statuses, vec![sr(500, 599)]);
    assert_eq!(
        p.failure_accrual.window_ms,
        FailureAccrual::default().window_ms
    );
    let limits = inbound_port(&c, "api-0", 8080).limits;
    assert_eq!(
        limits,
        InboundLimits {
            max_concurrent_requests: 50,
            rate_limit: Some(RateLimit {
                requests_per_second: 100.0,
                burst: 20
            }),
            ..InboundLimits::default()
        }
    );
    // Other Services of the Namespace get its defaults too.
    let y = mesh(&ns_ann, &svc_ann) + &svc("other", "client", "8080", &[]);
    let c = build(&y);
    let o = outbound(&c, "other").policy;
    assert_eq!((o.request_timeout_ms, o.max_retries), (10_000, 3));
    assert_eq!(
        inbound_port(&c, "client-0", 8080)
            .limits
            .max_concurrent_requests,
        50
    );
    assert!(c.events().is_empty(), "{:?}", c.events());
}

#[test]
fn invalid_namespace_value_is_reported_on_the_namespace_and_the_default_applies() {
    let c = build(&mesh(
        &[("weft.io/retries", "many"), ("weft.io/rate-limit", "fast")],
        &[],
    ));
    assert_eq!(policy(&c).max_retries, TrafficPolicy::default().max_retries);
    assert!(inbound_port(&c, "api-0", 8080).limits.is_unlimited());
    let on_ns = events_on(&c, Kind::Namespace, "", "demo");
    assert_eq!(on_ns.len(), 2, "{on_ns:#?}");
    assert!(on_ns
        .iter()
        .all(|e| e.reason == "InvalidAnnotation" && e.message.contains("the default applies")));
    assert!(events_on(&c, Kind::Service, "demo", "api").is_empty());

    // An invalid Service value falls back to the Namespace's.
    let c = build(&mesh(
        &[("weft.io/retries", "4")],
        &[("weft.io/retries", "many")],
    ));
    assert_eq!(policy(&c).max_retries, 4);
    let on_svc = events_on(&c, Kind::Service, "demo", "api");
    assert_eq!(on_svc.len(), 1);
    assert!(on_svc[0]
        .message
        .contains("the Namespace's value or the default"));
}

#[test]
fn inbound_annotations_reach_the_targeted_port_and_the_proto() {
    let ann = [
        ("weft.io/inbound-max-concurrent-requests", "8"),
        ("weft.io/inbound-max-pending-requests", "4"),
        ("weft.io/inbound-queue-timeout", "300ms"),
        ("weft.io/rate-limit", "100/s"),
        ("weft.io/rate-limit-burst", "50"),
        ("weft.io/rate-limit-per-identity", "600/m"),
        ("weft.io/rate-limit-per-identity-burst", "5"),
    ];
    let c = build(&mesh(&[], &ann));
    let port = inbound_port(&c, "api-0", 8080);
    assert_eq!(
        port.limits,
        InboundLimits {
            max_concurrent_requests: 8,
            max_pending_requests: 4,
            queue_timeout_ms: 300,
            rate_limit: Some(RateLimit {
                requests_per_second: 100.0,
                burst: 50
            }),
            rate_limit_per_identity: Some(RateLimit {
                requests_per_second: 10.0,
                burst: 5
            }),
        }
    );
    // Only the port the Service targets.
    assert!(inbound_port(&c, "api-0", 9090).limits.is_unlimited());
    // The caller's proxy is not limited.
    assert!(inbound_port(&c, "client-0", 8080).limits.is_unlimited());
    // Outbound is unaffected.
    assert_eq!(policy(&c), TrafficPolicy::default());

    let cfg = c.proxy(&ObjectRef::new("demo", "api-0")).expect("proxy");
    let ResourceKind::Inbound(i) = &cfg.inbound.resource else {
        unreachable!()
    };
    let pb = i.to_proto();
    let p = pb.ports.iter().find(|p| p.port == 8080).expect("port");
    let l = p.limits.as_ref().expect("limits on the wire");
    assert_eq!((l.max_concurrent_requests, l.max_pending_requests), (8, 4));
    assert_eq!(l.queue_timeout_ms, 300);
    let r = l.rate_limit.as_ref().expect("rate limit");
    assert_eq!((r.requests_per_second, r.burst), (100.0, 50));
    let r = l.rate_limit_per_identity.as_ref().expect("per identity");
    assert_eq!((r.requests_per_second, r.burst), (10.0, 5));
    let other = pb.ports.iter().find(|p| p.port == 9090).expect("9090");
    assert!(other.limits.is_none());
}

#[test]
fn strictest_inbound_limit_wins_with_a_warning_on_both_services() {
    let y = mesh(
        &[],
        &[
            ("weft.io/inbound-max-concurrent-requests", "100"),
            ("weft.io/rate-limit", "50/s"),
        ],
    ) + &svc(
        "api-internal",
        "api",
        "8080",
        &[
            ("weft.io/inbound-max-concurrent-requests", "20"),
            ("weft.io/rate-limit", "6000/m"),
            ("weft.io/rate-limit-per-identity", "5/s"),
        ],
    );
    let c = build(&y);
    let l = inbound_port(&c, "api-0", 8080).limits;
    assert_eq!(l.max_concurrent_requests, 20);
    assert_eq!(
        l.rate_limit.map(|r| r.requests_per_second),
        Some(50.0),
        "50/s is stricter than 6000/m"
    );
    assert_eq!(
        l.rate_limit_per_identity.map(|r| r.requests_per_second),
        Some(5.0),
        "set on one Service only: it applies"
    );
    for name in ["api", "api-internal"] {
        let evs = events_on(&c, Kind::Service, "demo", name);
        let conflicts: Vec<&Event> = evs
            .iter()
            .filter(|e| e.reason == "InboundLimitConflict")
            .collect();
        assert_eq!(conflicts.len(), 2, "{name}: {evs:#?}");
        for ann in [
            "weft.io/inbound-max-concurrent-requests",
            "weft.io/rate-limit",
        ] {
            assert!(
                conflicts
                    .iter()
                    .any(|e| e.message.starts_with(ann) && e.message.contains("strictest")),
                "{name} {ann}: {conflicts:#?}"
            );
        }
    }
    // "0" (unlimited) is the loosest: a limit on the other Service applies, and equal values
    // are no conflict.
    let y = mesh(&[], &[("weft.io/inbound-max-concurrent-requests", "0")])
        + &svc(
            "api-internal",
            "api",
            "8080",
            &[("weft.io/inbound-max-concurrent-requests", "30")],
        );
    let c = build(&y);
    assert_eq!(
        inbound_port(&c, "api-0", 8080)
            .limits
            .max_concurrent_requests,
        30
    );
    let y = mesh(&[], &[("weft.io/rate-limit", "5/s")])
        + &svc(
            "api-internal",
            "api",
            "8080",
            &[("weft.io/rate-limit", "300/m")],
        );
    assert!(build(&y).events().is_empty());
}

#[test]
fn namespace_change_recompiles_its_services_incrementally() {
    let mut m = model(&mesh(&[], &[]));
    let mut compiler = Compiler::new(CompileOptions::default());
    let before = compiler.full(&m);
    assert_eq!(policy(&before).max_retries, 0);
    let (objs, _) = parse_manifests(
        &ns(&[
            ("weft.io/retries", "2"),
            ("weft.io/inbound-max-concurrent-requests", "7"),
            ("weft.io/timeout", "never"),
        ]),
        false,
    )
    .expect("parse");
    let mut changed = ChangedKeys::default();
    for o in objs {
        changed.insert(m.upsert(o));
    }
    let after = compiler.update(&m, &changed);
    assert_eq!(policy(&after).max_retries, 2);
    assert_eq!(
        inbound_port(&after, "api-0", 8080)
            .limits
            .max_concurrent_requests,
        7
    );
    assert_eq!(events_on(&after, Kind::Namespace, "", "demo").len(), 1);
    // The same as a full compile.
    let full = compile(&m, &CompileOptions::default());
    assert_eq!(after.shared().digest(), full.shared().digest());
    assert_eq!(after.events(), full.events());
}

#[test]
fn namespace_problems_are_reported_once_with_or_without_services() {
    let bad = [("weft.io/queue-timeout", "0s")];
    // No Service in the Namespace: still reported.
    let c = build(&(ns(&bad) + &pod("client-0", "client", "10.0.0.1")));
    let on_ns = events_on(&c, Kind::Namespace, "", "demo");
    assert_eq!(on_ns.len(), 1, "{on_ns:#?}");
    assert!(on_ns[0]
        .message
        .starts_with("weft.io/queue-timeout: \"0s\" is not"));
    // Several Services: one Event, on the Namespace, none on the Services.
    let y = mesh(&bad, &[]) + &svc("other", "client", "8080", &[]);
    let c = build(&y);
    assert_eq!(c.events().len(), 1, "{:?}", c.events());
    assert_eq!(events_on(&c, Kind::Namespace, "", "demo").len(), 1);

    // Fixed, then the Namespace deleted, incrementally: the problem goes away.
    let mut m = model(&y);
    let mut compiler = Compiler::new(CompileOptions::default());
    assert_eq!(compiler.full(&m).events().len(), 1);
    let (objs, _) = parse_manifests(&ns(&[("weft.io/queue-timeout", "2s")]), false).expect("parse");
    let mut changed = ChangedKeys::default();
    for o in objs {
        changed.insert(m.upsert(o));
    }
    let fixed = compiler.update(&m, &changed);
    assert!(fixed.events().is_empty(), "{:?}", fixed.events());
    assert_eq!(policy(&fixed).queue_timeout_ms, 2000);
    let key = ObjectKey::new(Kind::Namespace, "", "demo");
    let (objs, _) = parse_manifests(&ns(&bad), false).expect("parse");
    for o in objs {
        m.upsert(o);
    }
    let mut changed = ChangedKeys::default();
    changed.insert(key.clone());
    assert_eq!(compiler.update(&m, &changed).events().len(), 1);
    m.remove(&key);
    let gone = compiler.update(&m, &changed);
    assert!(gone.events().is_empty(), "{:?}", gone.events());
    assert_eq!(policy(&gone), TrafficPolicy::default());
}
