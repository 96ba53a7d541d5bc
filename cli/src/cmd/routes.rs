//! Gateway API routes (HTTPRoute, and every other kind the compiler gives `status.parents[]` to)
//! in the CLI: what `weft compile` shows of each route, what `weft check` judges, what
//! `weft diff` compares.
//!
//! Everything here is generic over the route kind: it reads the compiler's per-parent statuses
//! ([`Compiled::route_parents`]) and the proxy routes it produced (named
//! `<kind in lower case>:<namespace>/<route>/<rule>`), as JSON, so a new route kind in the model
//! shows up without a change here.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use weft_core::compile::{compile, CompileOptions, CompileReport, Compiled};

use super::verdict::{Check, Outcome};

/// The status reason a TrafficSplit's `Accepted=False` carries when an HTTPRoute on the same
/// Service is in force (the compiler's precedence rule; see docs/gateway-api.md).
pub const OVERRIDDEN_BY_ROUTE: &str = "HTTPRouteInForce";

/// What `weft compile` prints: the compiler's report plus one entry per Gateway API route.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub base: CompileReport,
    /// Gateway API routes: their `status.parents[]` and the proxy routes they became.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteReport>,
}

/// One Gateway API route.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `metadata.generation` (cluster mode; manifests have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// weft's `status.parents[]` entries.
    pub parents: Vec<ParentReport>,
    /// The proxy routes it compiled to (empty in cluster mode, and when it is not in force).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compiled_to: Vec<CompiledRoute>,
}

/// One `status.parents[]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ParentReport {
    /// `Service ns/name[:port|/section]`, from the parentRef as written.
    pub parent: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub controller_name: String,
    pub conditions: Vec<weft_smi::hub::Condition>,
}

/// One proxy route a Gateway API rule became, on one outbound service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CompiledRoute {
    /// `outbound:<svc>.<ns>`.
    pub resource: String,
    pub port: u64,
    /// The proxy's route name (`httproute:<ns>/<route>/<rule>`).
    pub route: String,
    /// `service=weight`, in order.
    pub backends: Vec<String>,
}

/// Loads a manifests folder and compiles it as `weft compile` and the operator do, keeping the
/// Gateway API routes' statuses.
pub fn compile_dir(dir: &Path, opts: &CompileOptions) -> anyhow::Result<Report> {
    let loaded =
        weft_manifests::load_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut r = report_of(&compile(&loaded.to_model(), opts));
    r.base.load_errors = loaded.errors.clone();
    for f in &loaded.files {
        for i in &f.ignored {
            r.base.ignored.push(format!("{}: {i}", f.path.display()));
        }
    }
    Ok(r)
}

/// The report of a compiled snapshot, routes included.
pub fn report_of(compiled: &Compiled) -> Report {
    let base = CompileReport::from_compiled(compiled);
    let mut routes = Vec::new();
    for (key, parents) in compiled.route_parents() {
        let parents = parents
            .iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .map(|v| parent_report(&v))
            .collect();
        routes.push(RouteReport {
            kind: key.kind.as_str().to_string(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            generation: None,
            parents,
            compiled_to: Vec::new(),
        });
    }
    fill_compiled_to(&mut routes, &base);
    Report { base, routes }
}

/// A `status.parents[]` entry (JSON, camelCase as the API writes it) in readable form.
pub fn parent_report(v: &Value) -> ParentReport {
    let conditions = v
        .get("conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    ParentReport {
        parent: parent_name(v.get("parentRef").unwrap_or(&Value::Null)),
        controller_name: v
            .get("controllerName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        conditions,
    }
}

/// `Service ns/name:port` (or `/section`) from a parentRef; the namespace is left out when unset.
fn parent_name(r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
    let kind = match s("kind") {
        "" => "Gateway",
        k => k,
    };
    let mut out = format!("{kind} ");
    if !s("namespace").is_empty() {
        out.push_str(s("namespace"));
        out.push('/');
    }
    out.push_str(s("name"));
    if let Some(p) = r.get("port").and_then(Value::as_u64) {
        out.push_str(&format!(":{p}"));
    }
    if !s("sectionName").is_empty() {
        out.push('/');
        out.push_str(s("sectionName"));
    }
    out
}

/// Fills each route's `compiled_to` from the proxies' outbound services: the proxy routes named
/// after it, deduplicated over proxies.
fn fill_compiled_to(routes: &mut [RouteReport], report: &CompileReport) {
    let mut found: BTreeMap<String, Vec<CompiledRoute>> = BTreeMap::new();
    for p in report.proxies.values() {
        for (resource, svc) in &p.outbound {
            let Ok(v) = serde_json::to_value(svc) else {
                continue;
            };
            for port in v
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let port_no = port.get("port").and_then(Value::as_u64).unwrap_or(0);
                for r in port
                    .get("routes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
                    let Some((kind, rest)) = name.split_once(':') else {
                        continue;
                    };
                    let Some((ns, rest)) = rest.split_once('/') else {
                        continue;
                    };
                    let route = rest.split('/').next().unwrap_or_default();
                    let backends = r
                        .get("backends")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|b| {
                            format!(
                                "{}={}",
                                b.get("service").and_then(Value::as_str).unwrap_or("?"),
                                b.get("weight").and_then(Value::as_u64).unwrap_or(0)
                            )
                        })
                        .collect();
                    found
                        .entry(format!("{kind}:{ns}/{route}"))
                        .or_default()
                        .push(CompiledRoute {
                            resource: resource.clone(),
                            port: port_no,
                            route: name.to_string(),
                            backends,
                        });
                }
            }
        }
    }
    for r in routes.iter_mut() {
        let key = format!("{}:{}/{}", r.kind.to_ascii_lowercase(), r.namespace, r.name);
        let mut v = found.remove(&key).unwrap_or_default();
        v.sort();
        v.dedup();
        r.compiled_to = v;
    }
}

/// A condition's status (`True`/`False`/`Unknown`), or `None` when absent.
fn condition<'a>(p: &'a ParentReport, type_: &str) -> Option<&'a weft_smi::hub::Condition> {
    p.conditions.iter().find(|c| c.type_ == type_)
}

/// The one verdict on a route: FAIL when a weft parent is not `Accepted=True` or not
/// `ResolvedRefs=True`, or when a route naming a Service has no weft status at all (cluster mode);
/// WARN when the status is older than the route (`observedGeneration` < `generation`: not yet
/// processed); OK otherwise, naming where it sends traffic.
pub fn judge_route(r: &RouteReport) -> Check {
    let name = format!("{}/{}/{}", r.kind.to_ascii_lowercase(), r.namespace, r.name);
    if r.parents.is_empty() {
        return Check {
            name,
            outcome: Outcome::Fail,
            detail: "no status from weft for its Service parent(s): is the operator running and does it watch this kind?".into(),
        };
    }
    let mut problems = Vec::new();
    let mut stale = Vec::new();
    for p in &r.parents {
        for t in ["Accepted", "ResolvedRefs"] {
            match condition(p, t) {
                Some(c) if c.status == "True" => {
                    if let (Some(g), Some(o)) = (r.generation, c.observed_generation) {
                        if o < g {
                            stale.push(format!(
                                "{}: {t} is for generation {o}, the route is at {g}",
                                p.parent
                            ));
                        }
                    }
                }
                Some(c) => problems.push(format!(
                    "{}: {t}={} ({}): {}",
                    p.parent, c.status, c.reason, c.message
                )),
                None => problems.push(format!("{}: no {t} condition", p.parent)),
            }
        }
    }
    if !problems.is_empty() {
        return Check {
            name,
            outcome: Outcome::Fail,
            detail: format!(
                "not in force: {}; fix the route (`weft compile -f DIR` shows the same status offline)",
                problems.join("; ")
            ),
        };
    }
    if !stale.is_empty() {
        return Check {
            name,
            outcome: Outcome::Warn,
            detail: format!(
                "status not yet updated: {} (the operator has not processed the latest change)",
                stale.join("; ")
            ),
        };
    }
    let to: Vec<String> = r
        .compiled_to
        .iter()
        .map(|c| format!("{} port {} -> {}", c.resource, c.port, c.backends.join(",")))
        .collect();
    let parents: Vec<&str> = r.parents.iter().map(|p| p.parent.as_str()).collect();
    Check {
        name,
        outcome: Outcome::Ok,
        detail: if to.is_empty() {
            format!("Accepted, ResolvedRefs for {}", parents.join(", "))
        } else {
            format!(
                "Accepted, ResolvedRefs for {}: {}",
                parents.join(", "),
                to.join("; ")
            )
        },
    }
}

/// A warning for each TrafficSplit that an HTTPRoute put out of force (its `Accepted=False` with
/// reason [`OVERRIDDEN_BY_ROUTE`]): `(namespace, name, conditions)` of each split.
pub fn overridden_splits<'a>(
    splits: impl IntoIterator<Item = (&'a str, &'a str, &'a [weft_smi::hub::Condition])>,
) -> Vec<Check> {
    splits
        .into_iter()
        .filter_map(|(ns, name, conds)| {
            conds
                .iter()
                .find(|c| {
                    c.type_ == "Accepted" && c.status == "False" && c.reason == OVERRIDDEN_BY_ROUTE
                })
                .map(|c| Check {
                    name: format!("trafficsplit/{ns}/{name}"),
                    outcome: Outcome::Warn,
                    detail: format!(
                        "out of force, an HTTPRoute overrides it: {} (delete the split or the route so that one object says where traffic goes)",
                        c.message
                    ),
                })
        })
        .collect()
}

/// The route checks of a compiled folder (`weft check -f DIR`).
pub fn checks_of(report: &Report) -> Vec<Check> {
    let mut out: Vec<Check> = report.routes.iter().map(judge_route).collect();
    out.extend(overridden_splits(
        report
            .base
            .objects
            .iter()
            .filter(|o| o.kind == "TrafficSplit")
            .map(|o| {
                (
                    o.namespace.as_str(),
                    o.name.as_str(),
                    o.conditions.as_slice(),
                )
            }),
    ));
    for e in &report.base.load_errors {
        out.push(Check {
            name: "manifests".into(),
            outcome: Outcome::Fail,
            detail: format!("{}: {}", e.path.display(), e.message),
        });
    }
    if out.is_empty() {
        out.push(Check {
            name: "routes".into(),
            outcome: Outcome::Ok,
            detail: "no Gateway API route in the folder".into(),
        });
    }
    out
}

/// `Kind ns/name parent: Type status(reason): message` for every route condition, for `weft diff`.
pub fn condition_lines(
    routes: &[RouteReport],
) -> BTreeMap<(String, String, String), BTreeMap<String, String>> {
    routes
        .iter()
        .map(|r| {
            let mut m = BTreeMap::new();
            for p in &r.parents {
                for c in &p.conditions {
                    m.insert(
                        format!("{} {}", p.parent, c.type_),
                        format!("{}({}): {}", c.status, c.reason, c.message),
                    );
                }
            }
            ((r.kind.clone(), r.namespace.clone(), r.name.clone()), m)
        })
        .collect()
}

/// The kinds of route whose `status.parents[]` weft writes, as the API serves them:
/// `(group, version, kind, plural)`. GRPCRoute is read when the cluster serves it.
pub const ROUTE_KINDS: &[(&str, &str, &str, &str)] = &[
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
];

/// A live route object (JSON) as a report: weft's `status.parents[]` entries (controller
/// [`weft_core::compile::gateway::CONTROLLER_NAME`]) for routes with a Service parent; `None`
/// for routes with no Service parent (another controller's).
pub fn live_route(kind: &str, v: &Value) -> Option<RouteReport> {
    let meta = v.get("metadata")?;
    let s = |k: &str| {
        meta.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let service_parent = v
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|p| {
            let group = p
                .get("group")
                .and_then(Value::as_str)
                .unwrap_or("gateway.networking.k8s.io");
            let k = p.get("kind").and_then(Value::as_str).unwrap_or("Gateway");
            (group.is_empty() || group == "core") && k == "Service"
        });
    if !service_parent {
        return None;
    }
    let parents = v
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| {
            p.get("controllerName").and_then(Value::as_str)
                == Some(weft_core::compile::gateway::CONTROLLER_NAME)
        })
        .map(parent_report)
        .collect();
    Some(RouteReport {
        kind: kind.to_string(),
        namespace: s("namespace"),
        name: s("name"),
        generation: meta.get("generation").and_then(Value::as_i64),
        parents,
        compiled_to: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_smi::hub::Condition;

    fn cond(t: &str, s: &str, reason: &str, g: i64) -> Condition {
        Condition {
            type_: t.into(),
            status: s.into(),
            reason: reason.into(),
            message: format!("{t} says {reason}"),
            observed_generation: Some(g),
            last_transition_time: None,
        }
    }

    fn route(conds: Vec<Condition>, generation: Option<i64>) -> RouteReport {
        RouteReport {
            kind: "HTTPRoute".into(),
            namespace: "shop".into(),
            name: "web".into(),
            generation,
            parents: vec![ParentReport {
                parent: "Service web:80".into(),
                controller_name: "weft.io/mesh-controller".into(),
                conditions: conds,
            }],
            compiled_to: Vec::new(),
        }
    }

    #[test]
    fn a_route_is_judged_on_accepted_resolved_refs_and_generation() {
        let ok = judge_route(&route(
            vec![
                cond("Accepted", "True", "Accepted", 2),
                cond("ResolvedRefs", "True", "ResolvedRefs", 2),
            ],
            Some(2),
        ));
        assert_eq!(ok.outcome, Outcome::Ok, "{ok:?}");
        let refused = judge_route(&route(
            vec![
                cond("Accepted", "False", "UnsupportedValue", 2),
                cond("ResolvedRefs", "True", "ResolvedRefs", 2),
            ],
            Some(2),
        ));
        assert_eq!(refused.outcome, Outcome::Fail);
        assert!(
            refused.detail.contains("Accepted=False (UnsupportedValue)"),
            "{refused:?}"
        );
        let unresolved = judge_route(&route(
            vec![
                cond("Accepted", "True", "Accepted", 2),
                cond("ResolvedRefs", "False", "BackendNotFound", 2),
            ],
            None,
        ));
        assert_eq!(unresolved.outcome, Outcome::Fail);
        assert!(unresolved.detail.contains("BackendNotFound"));
        let stale = judge_route(&route(
            vec![
                cond("Accepted", "True", "Accepted", 1),
                cond("ResolvedRefs", "True", "ResolvedRefs", 1),
            ],
            Some(2),
        ));
        assert_eq!(stale.outcome, Outcome::Warn, "{stale:?}");
        let missing = judge_route(&route(vec![cond("Accepted", "True", "Accepted", 1)], None));
        assert_eq!(
            missing.outcome,
            Outcome::Fail,
            "no ResolvedRefs: {missing:?}"
        );
        let mut none = route(Vec::new(), Some(1));
        none.parents.clear();
        assert_eq!(judge_route(&none).outcome, Outcome::Fail);
    }

    #[test]
    fn live_routes_keep_only_weft_parents_of_service_routes() {
        let v = serde_json::json!({
            "metadata": {"namespace": "shop", "name": "web", "generation": 3},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}]},
            "status": {"parents": [
                {"parentRef": {"group": "", "kind": "Service", "name": "web", "port": 80},
                 "controllerName": "weft.io/mesh-controller",
                 "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 3}]},
                {"parentRef": {"name": "gw"}, "controllerName": "example.com/other", "conditions": []}
            ]}
        });
        let r = live_route("HTTPRoute", &v).expect("a Service route");
        assert_eq!(r.generation, Some(3));
        assert_eq!(r.parents.len(), 1);
        assert_eq!(r.parents[0].parent, "Service web:80");
        let gw = serde_json::json!({"metadata": {"name": "x"}, "spec": {"parentRefs": [{"name": "gw"}]}});
        assert_eq!(
            live_route("HTTPRoute", &gw),
            None,
            "a Gateway's route is not weft's"
        );
    }
}
