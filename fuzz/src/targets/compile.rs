//! The compiler: a manifest file (several YAML documents, any kinds) is loaded into the model
//! as `weft compile` and `--manifests` load it, and every proxy's config is compiled.
//!
//! Invariants:
//! - nothing panics;
//! - every proxy accepts the config compiled for it (`weft_proxy::config::Config::from_resources`
//!   is `Ok`): the operator never sends what a proxy must NACK;
//! - an authorization only ever admits the service accounts its TrafficTarget lists as
//!   sources (or, for the `probe` authorization, `*` on GET/HEAD of probe paths): a source
//!   that no TrafficTarget grants never appears;
//! - a pod whose service account is the destination of a TrafficTarget without a port is
//!   default-deny (docs/compile.md, inbound rule 2);
//! - a split route restricted by `matches` never becomes a route for every request
//!   (`matches: []`) because its matches could not be compiled (fail closed);
//! - same objects in another order, and incremental recompilation, give the same versions.

use std::collections::{BTreeMap, BTreeSet};

use weft_operator::compile::{
    compile, ChangedKeys, CompileOptions, Compiled, Compiler, DefaultPolicy, ResourceKind, ToProto,
    ANY_CLIENT, INBOUND_NAME, PROBE_AUTHORIZATION,
};
use weft_operator::model::manifests::parse_manifests;
use weft_operator::model::parse::ParseError;
use weft_operator::model::{ClusterObject, Model, ModelError, ObjectKey, ObjectRef};
use weft_proxy_api::v1;

use crate::Features;

fn load_error_kind(e: &ParseError) -> &'static str {
    match e {
        ParseError::Yaml { .. } => "yaml",
        ParseError::Json(_) => "json",
        ParseError::Object { source, .. } => match source {
            ModelError::MissingKind => "missing-kind",
            ModelError::MissingApiVersion => "missing-api-version",
            ModelError::UnsupportedKind { .. } => "unsupported",
            ModelError::Invalid { .. } => "invalid",
            ModelError::MissingName { .. } => "missing-name",
            ModelError::Smi(_) => "smi",
            ModelError::Field { .. } => "field",
        },
        ParseError::Limit(_) => "limit",
        ParseError::TooDeep { .. } => "too-deep",
        ParseError::NotUtf8 => "not-utf8",
    }
}

fn model_of(objects: impl IntoIterator<Item = ClusterObject>) -> Model {
    let mut m = Model::from_objects(objects);
    m.derive_endpoints_from_pods = true;
    m
}

fn versions(c: &Compiled) -> BTreeMap<ObjectRef, String> {
    c.proxies()
        .iter()
        .map(|(k, p)| (k.clone(), p.version.clone()))
        .collect()
}

/// The target.
pub fn run(data: &[u8], f: &mut Features) {
    let Ok(text) = std::str::from_utf8(data) else {
        f.hit("not-utf8");
        return;
    };
    let (objects, ignored) = match parse_manifests(text, false) {
        Ok(x) => x,
        Err(e) => {
            f.hit(("load-error", load_error_kind(&e)));
            return;
        }
    };
    f.hit_n("objects", objects.len());
    f.hit_n("ignored", ignored.len());
    for o in &objects {
        f.hit(("kind", o.key().kind.as_str()));
    }
    // Later objects replace earlier ones with the same key: keep the survivors, in order.
    let mut by_key: BTreeMap<ObjectKey, ClusterObject> = BTreeMap::new();
    for o in &objects {
        by_key.insert(o.key(), o.clone());
    }
    let model = model_of(objects.iter().cloned());
    let opts = CompileOptions::default();
    let compiled = compile(&model, &opts);

    for (key, conds) in compiled.statuses() {
        for c in conds {
            f.hit((
                "condition",
                key.kind.as_str(),
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_str(),
            ));
        }
    }
    for e in compiled.events() {
        f.hit(("event", e.object.kind.as_str(), e.reason.as_str()));
    }
    f.hit_n("proxies", compiled.proxies().len());

    for (key, cfg) in compiled.proxies().iter() {
        // The proxy accepts what the operator compiled for it.
        let resources: BTreeMap<String, v1::Resource> = cfg
            .resources()
            .map(|r| (r.name.clone(), r.to_proto()))
            .collect();
        if let Err(e) = weft_proxy::config::Config::from_resources(&cfg.version, &resources) {
            panic!("proxy {key} rejects the config compiled for it: {e}");
        }
        check_inbound(
            &model,
            &opts,
            key,
            cfg.get(INBOUND_NAME).map(|r| &r.resource),
            f,
        );
    }
    check_outbound(&model, &compiled, f);

    // Order independence.
    let reversed = compile(&model_of(by_key.values().rev().cloned()), &opts);
    assert_eq!(
        versions(&compiled),
        versions(&reversed),
        "config versions depend on the order of objects"
    );
    assert_eq!(
        compiled.statuses(),
        reversed.statuses(),
        "statuses depend on the order of objects"
    );

    // Incremental recompilation (the runtime's path) equals a full compile: two batches.
    let mut compiler = Compiler::new(opts.clone());
    let mut m = model_of(std::iter::empty());
    compiler.full(&m);
    let all: Vec<ClusterObject> = objects.clone();
    let (first, second) = all.split_at(all.len() / 2);
    for batch in [first, second] {
        let changed: ChangedKeys = batch.iter().map(|o| m.upsert(o.clone())).collect();
        compiler.update(&m, &changed);
    }
    let incremental = compiler.current();
    assert_eq!(
        versions(&compiled),
        versions(&incremental),
        "incremental recompilation differs from a full compile"
    );
}

fn spiffe(opts: &CompileOptions, ns: &str, sa: &str) -> String {
    weft_operator::compile::spiffe_id(&opts.trust_domain, ns, sa)
}

fn check_inbound(
    model: &Model,
    opts: &CompileOptions,
    key: &ObjectRef,
    inbound: Option<&ResourceKind>,
    f: &mut Features,
) {
    let Some(ResourceKind::Inbound(policy)) = inbound else {
        panic!("proxy {key} has no inbound policy");
    };
    let Some(pod) = model.pods.get(key) else {
        panic!("a config for {key}, which is not a pod of the model");
    };
    let sa = &pod.service_account;
    // Every TrafficTarget that names this pod's service account as its destination.
    let targets: Vec<_> = model
        .targets
        .values()
        .filter(|t| {
            let dest = weft_operator::model::destination_ref(t);
            t.destination.kind == "ServiceAccount"
                && dest.name == *sa
                && dest.namespace == pod.namespace
        })
        .collect();
    if targets
        .iter()
        .any(|t| t.destination.port.is_none() && t.meta.namespace == pod.namespace)
    {
        assert_eq!(
            policy.default_policy,
            DefaultPolicy::Deny,
            "pod {key} (sa {sa}) is a TrafficTarget destination but not default-deny"
        );
    }
    f.hit(("default", format!("{:?}", policy.default_policy)));
    for port in &policy.ports {
        for a in &port.authorizations {
            if a.name == PROBE_AUTHORIZATION {
                f.hit("probe-authorization");
                assert_eq!(
                    a.clients.legacy_sources(),
                    [ANY_CLIENT],
                    "probe authorization sources"
                );
                assert!(!a.all_traffic, "probe authorization allows all traffic");
                for m in &a.http_routes {
                    assert!(
                        !m.methods.is_empty()
                            && m.methods.iter().all(|x| x == "GET" || x == "HEAD"),
                        "probe authorization allows methods {:?}",
                        m.methods
                    );
                }
                continue;
            }
            f.hit(("authorization", a.all_traffic, a.http_routes.is_empty()));
            let sources = a.clients.legacy_sources();
            // The sources every TrafficTarget with this name grants to this pod.
            let granted: BTreeSet<String> = targets
                .iter()
                .filter(|t| format!("{}/{}", t.meta.namespace, t.meta.name) == a.name)
                .flat_map(|t| t.sources.iter())
                .filter(|s| s.kind == "ServiceAccount")
                .map(|s| spiffe(opts, &s.namespace, &s.name))
                .collect();
            assert!(
                !granted.is_empty() || sources.is_empty(),
                "pod {key} port {}: authorization {:?} names no TrafficTarget for sa {sa}, yet admits {:?}",
                port.port,
                a.name,
                sources
            );
            for s in &sources {
                assert!(
                    granted.contains(s),
                    "pod {key} port {}: authorization {:?} admits {s:?}, which it does not grant (grants {granted:?})",
                    port.port,
                    a.name
                );
            }
        }
    }
}

fn check_outbound(model: &Model, compiled: &Compiled, f: &mut Features) {
    for r in compiled.shared().iter() {
        let ResourceKind::Outbound(svc) = &r.resource else {
            continue;
        };
        for port in &svc.ports {
            assert_eq!(
                port.routes.last().map(|r| r.name.as_str()),
                Some("default"),
                "{}: port {} does not end with the default route",
                r.name,
                port.port
            );
            for route in &port.routes {
                let Some(split_name) = route.name.strip_prefix("split:") else {
                    continue;
                };
                f.hit(("split-route", route.matches.is_empty()));
                let Some((ns, name)) = split_name.split_once('/') else {
                    panic!("{}: route name {:?}", r.name, route.name);
                };
                let Some(split) = model.splits.get(&ObjectRef::new(ns, name)) else {
                    panic!("{}: route for unknown split {split_name}", r.name);
                };
                // A split restricted to some requests never becomes a split of every request.
                assert!(
                    split.matches.is_empty() || !route.matches.is_empty(),
                    "{}: split {split_name} has matches {:?} but its route matches every request",
                    r.name,
                    split.matches
                );
            }
        }
    }
}
