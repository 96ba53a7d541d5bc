//! The validator: the problems of one SMI object, as admission reports them.
//!
//! [`validate_object`] (what admission calls) is each kind's analysis in [`crate::analysis`]
//! and nothing else: [`crate::analysis::traffic_split`], [`crate::analysis::traffic_target`],
//! [`crate::analysis::http_route_group`] (`issues`) and [`crate::analysis::port_route`] hold
//! the rules, and the compiler reads the same results for its decisions and status.
//! [`validate`] adds the checks against the other objects of a namespace
//! ([`ValidationContext`]); no production path calls it (the compiler's status judges
//! references with [`crate::analysis::split_plan`] and [`crate::analysis::target_rules`], the
//! latter shared with [`validate`]).
//!
//! [`Severity::Error`] means reject (the object is not applied and its `Accepted` condition is
//! `False`); [`Severity::Warning`] means apply but tell the user. Rules and decisions:
//!
//! | kind | check | severity |
//! |---|---|---|
//! | TrafficSplit | empty `service`, no backends, empty backend name | Error |
//! | TrafficSplit | weights sum to 0 | Error |
//! | TrafficSplit | the same backend service twice | Error (which weight applies would be a guess) |
//! | TrafficSplit | the root is a backend: fine with another weighted backend (the canary pattern); Warning when the root is the only backend with weight > 0 (the split changes nothing) | Warning |
//! | TrafficSplit | `matches` kind other than HTTPRouteGroup, apiGroup other than `specs.smi-spec.io`, a namespaced name | Error |
//! | TrafficSplit | `matches` names a missing HTTPRouteGroup | Error |
//! | TrafficSplit | root or backend Service missing (only when Services are known) | Warning |
//! | TrafficSplit | another split on the same root: the oldest (creationTimestamp, then name; `compile::rules::split_order`) wins, the others get a message naming the deciding reason | Warning |
//! | TrafficTarget | destination/source kind not ServiceAccount, empty names | Error |
//! | TrafficTarget | destination namespace differs from the object's namespace | Error |
//! | TrafficTarget | rule names a missing route object, or a match name the route object lacks | Error |
//! | TrafficTarget | no sources or no rules (allows nothing) | Warning |
//! | HTTPRouteGroup | invalid path or header regex, unknown method, invalid header name (the compiler's own check, `compile::rules::match_problems`), duplicate match names | Error |
//! | HTTPRouteGroup | no matches | Warning |
//! | TCPRoute/UDPRoute | port 0 | Error; duplicate ports: Warning |
//!
//! Objects that do not even parse (an unknown rule kind, a negative weight) never reach the
//! hub: [`problem_from_error`] turns the typed parse error into an Error problem.

use std::collections::BTreeSet;

use weft_smi::hub::{HttpRouteGroup, RouteKind, SmiObject, TrafficSplit, TrafficTarget};
use weft_smi::SmiError;

pub use crate::reason::Reason;

/// The one problem type of every analysis ([`crate::analysis`]).
pub use crate::analysis::{Problem, Severity};

/// What the validator may look at besides the object itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidationContext<'a> {
    /// The SMI objects of the object's namespace (may include the object itself).
    pub objects: &'a [SmiObject],
    /// Names of the Services in the namespace, if known; `None` skips the Service checks.
    pub services: Option<&'a BTreeSet<String>>,
}

/// Whether any problem rejects the object.
pub fn has_errors(problems: &[Problem]) -> bool {
    problems.iter().any(|p| p.severity == Severity::Error)
}

/// Turns a parse/convert error from `weft_smi::from_value` into a rejecting problem.
pub fn problem_from_error(e: &SmiError) -> Problem {
    let (path, reason) = match e {
        SmiError::Invalid { path, .. } => (path.clone(), Reason::InvalidField),
        SmiError::MissingField(f) => ((*f).to_string(), Reason::MissingField),
        SmiError::NotSmi { .. } => (String::new(), Reason::NotSmi),
        SmiError::Malformed { .. } => (String::new(), Reason::Malformed),
        SmiError::KindMismatch { .. } => (String::new(), Reason::KindMismatch),
    };
    Problem {
        severity: Severity::Error,
        path,
        reason,
        message: e.to_string(),
    }
}

/// Validates one object on its own: every check that needs no other object (what admission
/// can judge). References to other objects and conflicts with them are not judged (see
/// [`Reason::needs_other_objects`]); they are reported in status by the compiler. Problems are
/// sorted: errors first, then by path.
pub fn validate_object(obj: &SmiObject) -> Vec<Problem> {
    run(obj, None)
}

/// Validates one object against the other SMI objects of its namespace (and its Services when
/// known): [`validate_object`]'s checks plus the cross-object ones. Problems are sorted: errors
/// first, then by path.
pub fn validate(obj: &SmiObject, ctx: &ValidationContext<'_>) -> Vec<Problem> {
    run(obj, Some(ctx))
}

fn run(obj: &SmiObject, ctx: Option<&ValidationContext<'_>>) -> Vec<Problem> {
    let mut out = match obj {
        SmiObject::TrafficSplit(s) => crate::analysis::traffic_split(s).problems,
        SmiObject::TrafficTarget(t) => crate::analysis::traffic_target(t).problems,
        SmiObject::HTTPRouteGroup(g) => crate::analysis::http_route_group(g).issues(),
        SmiObject::PortRoute(r) => crate::analysis::port_route(r).problems,
    };
    if let Some(ctx) = ctx {
        match obj {
            SmiObject::TrafficSplit(s) => split_refs(s, ctx, &mut out),
            SmiObject::TrafficTarget(t) => target_refs(t, ctx, &mut out),
            SmiObject::HTTPRouteGroup(_) | SmiObject::PortRoute(_) => {}
        }
    }
    debug_assert!(ctx.is_some() || out.iter().all(|p| !p.reason.needs_other_objects()));
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.path.cmp(&b.path))
    });
    out
}

fn push(
    out: &mut Vec<Problem>,
    severity: Severity,
    path: impl Into<String>,
    reason: Reason,
    message: impl Into<String>,
) {
    out.push(Problem {
        severity,
        path: path.into(),
        reason,
        message: message.into(),
    });
}

/// Orders objects for "oldest wins" ([`crate::compile::rules::split_order`], the one rule:
/// parsed creationTimestamp, missing or unparsable counts as newest, a tie broken by name).
pub use crate::compile::rules::split_order as age_order;

/// Among the TrafficSplits of `objects` in `namespace` whose root is `service`, the one that
/// takes effect (the oldest). The compiler and the validator use the same rule.
pub fn apex_owner<'a>(
    objects: &'a [SmiObject],
    namespace: &str,
    service: &str,
) -> Option<&'a TrafficSplit> {
    objects
        .iter()
        .filter_map(|o| match o {
            SmiObject::TrafficSplit(s) if s.meta.namespace == namespace && s.service == service => {
                Some(s)
            }
            _ => None,
        })
        .min_by(|a, b| age_order(&a.meta, &b.meta))
}

fn find_http_group<'a>(
    ctx: &ValidationContext<'a>,
    ns: &str,
    name: &str,
) -> Option<&'a HttpRouteGroup> {
    ctx.objects.iter().find_map(|o| match o {
        SmiObject::HTTPRouteGroup(g) if g.meta.namespace == ns && g.meta.name == name => Some(g),
        _ => None,
    })
}

/// The split's references against `ctx` (not used by admission, which sees one object; the
/// compiler's status judges them with [`crate::analysis::split_plan`]): missing Services (when
/// known), missing HTTPRouteGroups (only the entries [`crate::analysis::traffic_split`] found to
/// name one), and an older split on the same root.
fn split_refs(s: &TrafficSplit, ctx: &ValidationContext<'_>, out: &mut Vec<Problem>) {
    use Severity::*;
    let ns = &s.meta.namespace;
    if let Some(services) = ctx.services {
        for (i, b) in s.backends.iter().enumerate() {
            if !b.service.is_empty() && !services.contains(&b.service) {
                push(
                    out,
                    Warning,
                    format!("spec.backends[{i}].service"),
                    Reason::BackendNotFound,
                    format!(
                        "Service {ns}/{} does not exist; it gets no traffic until it does",
                        b.service
                    ),
                );
            }
        }
        if !s.service.is_empty() && !services.contains(&s.service) {
            push(
                out,
                Warning,
                "spec.service",
                Reason::ServiceNotFound,
                format!("the root Service {ns}/{} does not exist", s.service),
            );
        }
    }
    let own = crate::analysis::traffic_split(s);
    for (i, r) in own.matches.iter().enumerate() {
        if let crate::analysis::SplitMatchRef::Group(name) = r {
            if find_http_group(ctx, ns, name).is_none() {
                push(
                    out,
                    Error,
                    format!("spec.matches[{i}].name"),
                    Reason::RouteGroupNotFound,
                    format!("HTTPRouteGroup {ns}/{name} does not exist"),
                );
            }
        }
    }
    if !s.service.is_empty() {
        if let Some(owner) = apex_owner(ctx.objects, ns, &s.service) {
            if owner.meta.name != s.meta.name && age_order(&owner.meta, &s.meta).is_lt() {
                let why = crate::compile::rules::precedence(&owner.meta, &s.meta);
                push(
                    out,
                    Warning,
                    "spec.service",
                    Reason::Conflicted,
                    format!(
                        "TrafficSplit {ns}/{} also splits {:?} and takes precedence because \
                         {why}; this split is ignored while it exists",
                        owner.meta.name, s.service
                    ),
                );
            }
        }
    }
}

/// The TrafficTarget's rules against `ctx`: [`crate::analysis::target_rules`], the one
/// resolution the compiler's status reads too.
fn target_refs(t: &TrafficTarget, ctx: &ValidationContext<'_>, out: &mut Vec<Problem>) {
    let ns = &t.meta.namespace;
    let names = |kind: RouteKind, name: &str| -> Option<Vec<String>> {
        let found = ctx.objects.iter().find(|o| {
            o.meta().namespace == *ns && o.meta().name == name && o.kind() == kind.as_str()
        })?;
        Some(match found {
            SmiObject::HTTPRouteGroup(g) => g.matches.iter().map(|m| m.name.clone()).collect(),
            SmiObject::PortRoute(p) => p.matches.iter().filter_map(|m| m.name.clone()).collect(),
            _ => Vec::new(),
        })
    };
    let resolutions = crate::analysis::target_rules(t, names);
    for (i, (r, res)) in t.rules.iter().zip(resolutions).enumerate() {
        let path = format!("spec.rules[{i}]");
        match res {
            crate::analysis::RuleResolution::Resolved => {}
            crate::analysis::RuleResolution::RouteNotFound => push(
                out,
                Severity::Error,
                format!("{path}.name"),
                Reason::RouteNotFound,
                format!("{} {ns}/{} does not exist", r.kind.as_str(), r.name),
            ),
            crate::analysis::RuleResolution::MatchesNotFound(missing) => {
                for (j, m) in missing {
                    push(
                        out,
                        Severity::Error,
                        format!("{path}.matches[{j}]"),
                        Reason::MatchNotFound,
                        format!(
                            "{} {ns}/{} has no match named {m:?}",
                            r.kind.as_str(),
                            r.name
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses manifests (any served version) into the hub.
    fn objs(vs: &[serde_json::Value]) -> Vec<SmiObject> {
        vs.iter()
            .map(|v| weft_smi::from_value(v).expect("test manifest parses"))
            .collect()
    }

    fn ts(name: &str, created: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
               "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
               "spec": spec})
    }

    fn htr(name: &str, matches: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
               "metadata": {"name": name, "namespace": "shop"}, "spec": {"matches": matches}})
    }

    fn tt(spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
               "metadata": {"name": "t", "namespace": "shop"}, "spec": spec})
    }

    fn tcp(name: &str, matches: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute",
               "metadata": {"name": name, "namespace": "shop"}, "spec": {"matches": matches}})
    }

    fn sa(name: &str) -> serde_json::Value {
        json!({"kind": "ServiceAccount", "name": name})
    }

    struct Case {
        name: &'static str,
        /// The object under test (first) and its namespace neighbours.
        objects: Vec<serde_json::Value>,
        services: Option<&'static [&'static str]>,
        /// Expected (severity, reason, path) triples, in the validator's order.
        want: Vec<(Severity, &'static str, &'static str)>,
    }

    fn run(cases: Vec<Case>) {
        for c in cases {
            let objects = objs(&c.objects);
            let services: Option<BTreeSet<String>> = c
                .services
                .map(|s| s.iter().map(|x| x.to_string()).collect());
            let ctx = ValidationContext {
                objects: &objects,
                services: services.as_ref(),
            };
            let got: Vec<(Severity, &str, String)> = validate(&objects[0], &ctx)
                .into_iter()
                .map(|p| (p.severity, p.reason.as_str(), p.path))
                .collect();
            let want: Vec<(Severity, &str, String)> = c
                .want
                .iter()
                .map(|(s, r, p)| (*s, *r, p.to_string()))
                .collect();
            assert_eq!(got, want, "case {:?}", c.name);
        }
    }

    use Severity::{Error as E, Warning as W};

    #[test]
    fn validate_traffic_split_rules() {
        let two = json!({"service": "web", "backends": [{"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}]});
        run(vec![
            Case {
                name: "valid",
                objects: vec![ts("s", "2024-01-01T00:00:00Z", two.clone())],
                services: None,
                want: vec![],
            },
            Case {
                name: "weights sum to zero",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "a", "weight": 0}, {"service": "b", "weight": 0}]}),
                )],
                services: None,
                want: vec![(E, "ZeroWeights", "spec.backends")],
            },
            Case {
                name: "no backends",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": []}),
                )],
                services: None,
                want: vec![(E, "NoBackends", "spec.backends")],
            },
            Case {
                name: "duplicate backend",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "a", "weight": 1}, {"service": "a", "weight": 2}]}),
                )],
                services: None,
                want: vec![(E, "DuplicateBackend", "spec.backends[1].service")],
            },
            Case {
                name: "root as one of several backends is fine",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "web", "weight": 90}, {"service": "web-canary", "weight": 10}]}),
                )],
                services: None,
                want: vec![],
            },
            Case {
                name: "root as the only weighted backend",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "web", "weight": 100}, {"service": "web-canary", "weight": 0}]}),
                )],
                services: None,
                want: vec![(W, "RootOnlyBackend", "spec.backends")],
            },
            Case {
                name: "missing services, when known",
                objects: vec![ts("s", "2024-01-01T00:00:00Z", two.clone())],
                services: Some(&["web", "web-v1"]),
                want: vec![(W, "BackendNotFound", "spec.backends[1].service")],
            },
            Case {
                name: "matches: missing group, wrong kind, other namespace",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "a", "weight": 1}],
                    "matches": [{"kind": "HTTPRouteGroup", "name": "nope"}, {"kind": "TCPRoute", "name": "db"}, {"kind": "HTTPRouteGroup", "name": "other/g"}]}),
                )],
                services: None,
                want: vec![
                    (E, "RouteGroupNotFound", "spec.matches[0].name"),
                    (E, "UnsupportedMatchKind", "spec.matches[1].kind"),
                    (E, "CrossNamespaceReference", "spec.matches[2].name"),
                ],
            },
            Case {
                name: "matches: existing group",
                objects: vec![
                    ts(
                        "s",
                        "2024-01-01T00:00:00Z",
                        json!({"service": "web", "backends": [{"service": "a", "weight": 1}], "matches": [{"kind": "HTTPRouteGroup", "name": "g"}]}),
                    ),
                    htr("g", json!([{"name": "m", "headers": {"x-canary": "1"}}])),
                ],
                services: None,
                want: vec![],
            },
            Case {
                name: "conflicting split, newer loses",
                objects: vec![
                    ts("newer", "2024-02-01T00:00:00Z", two.clone()),
                    ts("older", "2024-01-01T00:00:00Z", two.clone()),
                ],
                services: None,
                want: vec![(W, "Conflicted", "spec.service")],
            },
            Case {
                name: "conflicting split, older wins",
                objects: vec![
                    ts("older", "2024-01-01T00:00:00Z", two.clone()),
                    ts("newer", "2024-02-01T00:00:00Z", two.clone()),
                ],
                services: None,
                want: vec![],
            },
            Case {
                name: "conflict tie broken by name",
                objects: vec![
                    ts("b", "2024-01-01T00:00:00Z", two.clone()),
                    ts("a", "2024-01-01T00:00:00Z", two),
                ],
                services: None,
                want: vec![(W, "Conflicted", "spec.service")],
            },
        ]);
    }

    #[test]
    fn validate_traffic_target_rules() {
        let routes = htr(
            "api",
            json!([{"name": "metrics", "pathRegex": "/metrics", "methods": ["GET"]}]),
        );
        run(vec![
            Case {
                name: "valid",
                objects: vec![
                    tt(
                        json!({"destination": sa("api"), "sources": [sa("web")], "rules": [{"kind": "HTTPRouteGroup", "name": "api", "matches": ["metrics"]}]}),
                    ),
                    routes.clone(),
                ],
                services: None,
                want: vec![],
            },
            Case {
                name: "destination in another namespace",
                objects: vec![
                    tt(
                        json!({"destination": {"kind": "ServiceAccount", "name": "api", "namespace": "other"}, "sources": [sa("web")], "rules": [{"kind": "HTTPRouteGroup", "name": "api"}]}),
                    ),
                    routes.clone(),
                ],
                services: None,
                want: vec![(E, "CrossNamespaceReference", "spec.destination.namespace")],
            },
            Case {
                name: "missing route and missing match",
                objects: vec![
                    tt(
                        json!({"destination": sa("api"), "sources": [sa("web")], "rules": [
                    {"kind": "TCPRoute", "name": "db"}, {"kind": "HTTPRouteGroup", "name": "api", "matches": ["nope"]}]}),
                    ),
                    routes.clone(),
                ],
                services: None,
                want: vec![
                    (E, "RouteNotFound", "spec.rules[0].name"),
                    (E, "MatchNotFound", "spec.rules[1].matches[0]"),
                ],
            },
            Case {
                name: "same name, other kind does not count",
                objects: vec![
                    tt(
                        json!({"destination": sa("api"), "sources": [sa("web")], "rules": [{"kind": "TCPRoute", "name": "api"}]}),
                    ),
                    routes.clone(),
                ],
                services: None,
                want: vec![(E, "RouteNotFound", "spec.rules[0].name")],
            },
            Case {
                name: "tcp route match names",
                objects: vec![
                    tt(
                        json!({"destination": sa("api"), "sources": [sa("web")], "rules": [{"kind": "TCPRoute", "name": "db", "matches": ["pg", "x"]}]}),
                    ),
                    tcp("db", json!({"name": "pg", "ports": [5432]})),
                ],
                services: None,
                want: vec![(E, "MatchNotFound", "spec.rules[0].matches[1]")],
            },
            Case {
                name: "non-ServiceAccount identities, duplicate source",
                objects: vec![
                    tt(
                        json!({"destination": {"kind": "Group", "name": "api"}, "sources": [sa("web"), sa("web"), {"kind": "User", "name": ""}], "rules": [{"kind": "HTTPRouteGroup", "name": "api"}]}),
                    ),
                    routes.clone(),
                ],
                services: None,
                want: vec![
                    (E, "UnsupportedIdentityKind", "spec.destination.kind"),
                    (E, "UnsupportedIdentityKind", "spec.sources[2].kind"),
                    (E, "MissingName", "spec.sources[2].name"),
                    (W, "DuplicateSource", "spec.sources[1]"),
                ],
            },
            Case {
                name: "allows nothing",
                objects: vec![tt(json!({"destination": sa("api")}))],
                services: None,
                want: vec![
                    (W, "NoRules", "spec.rules"),
                    (W, "NoSources", "spec.sources"),
                ],
            },
        ]);
    }

    #[test]
    fn validate_route_rules() {
        run(vec![
            Case {
                name: "bad regexes, header name, duplicate match",
                objects: vec![htr(
                    "g",
                    json!([
                        {"name": "a", "pathRegex": "/(unclosed", "headers": {"bad name": "x", "x-ok": "[z-a]"}},
                        {"name": "a"}
                    ]),
                )],
                services: None,
                want: vec![
                    (E, "InvalidHeaderName", "spec.matches[0].headers.bad name"),
                    (E, "InvalidRegex", "spec.matches[0].headers.x-ok"),
                    (E, "InvalidRegex", "spec.matches[0].pathRegex"),
                    (E, "DuplicateMatch", "spec.matches[1].name"),
                ],
            },
            Case {
                name: "unknown method (lower-case is normalised, not unknown)",
                objects: vec![htr(
                    "g",
                    json!([{"name": "a", "methods": ["get", "FETCH", "*"]}]),
                )],
                services: None,
                want: vec![(E, "UnknownMethod", "spec.matches[0].methods[1]")],
            },
            Case {
                name: "empty group",
                objects: vec![htr("g", json!([]))],
                services: None,
                want: vec![(W, "NoMatches", "spec.matches")],
            },
            Case {
                name: "ports",
                objects: vec![tcp("db", json!({"ports": [5432, 0, 5432]}))],
                services: None,
                want: vec![
                    (E, "InvalidPort", "spec.matches.ports[1]"),
                    (W, "DuplicatePort", "spec.matches.ports[2]"),
                ],
            },
            Case {
                name: "tcp route without matches",
                objects: vec![tcp("db", serde_json::Value::Null)],
                services: None,
                want: vec![],
            },
        ]);
    }

    #[test]
    fn validate_parse_errors_become_problems() {
        let v =
            tt(json!({"destination": sa("api"), "rules": [{"kind": "GRPCRoute", "name": "x"}]}));
        let e = weft_smi::from_value(&v).expect_err("unknown rule kind");
        let p = problem_from_error(&e);
        assert_eq!(
            (p.severity, p.reason.as_str(), p.path.as_str()),
            (Severity::Error, "InvalidField", "spec.rules[0].kind")
        );
        assert!(p.message.contains("GRPCRoute"), "{}", p.message);
        assert!(has_errors(&[p]));
    }

    /// The admission warning names the reason that decided, as the compiler's status does;
    /// without timestamps it never calls the winner "older".
    #[test]
    fn validate_conflict_names_the_deciding_reason() {
        let two = json!({"service": "web", "backends": [{"service": "a", "weight": 1}]});
        let no_ts = |name: &str| {
            json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
                   "metadata": {"name": name, "namespace": "shop"}, "spec": two.clone()})
        };
        let objects = objs(&[no_ts("b"), no_ts("a")]);
        let ctx = ValidationContext {
            objects: &objects,
            services: None,
        };
        let p = validate(&objects[0], &ctx);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("shop/a")
                && p[0].message.contains("neither has a creationTimestamp")
                && !p[0].message.contains("older"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn validate_apex_owner_is_oldest() {
        let two = json!({"service": "web", "backends": [{"service": "a", "weight": 1}]});
        let objects = objs(&[
            ts("new", "2024-03-01T00:00:00Z", two.clone()),
            ts("old", "2024-01-01T00:00:00Z", two),
        ]);
        assert_eq!(
            apex_owner(&objects, "shop", "web").map(|s| s.meta.name.as_str()),
            Some("old")
        );
        assert!(apex_owner(&objects, "shop", "other").is_none());
    }
}

#[cfg(test)]
mod single_object_tests {
    use super::*;
    use serde_json::json;

    /// What admission judges is the single-object check: references to objects it cannot see
    /// are not reported (no empty context, no filtering by reason string), the object's own
    /// problems are.
    #[test]
    fn single_object_validation_skips_references_and_keeps_own_problems() {
        let t = weft_smi::from_value(&json!({
            "apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
            "metadata": {"name": "t", "namespace": "shop"},
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": "api", "namespace": "shop"},
                "sources": [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}],
                "rules": [{"kind": "HTTPRouteGroup", "name": "missing", "matches": ["nope"]}]
            }
        }))
        .unwrap();
        assert!(validate_object(&t).is_empty(), "{:?}", validate_object(&t));
        let with_ctx = validate(&t, &ValidationContext::default());
        assert_eq!(with_ctx.len(), 1);
        assert_eq!(with_ctx[0].reason, Reason::RouteNotFound);
        assert!(with_ctx[0].reason.needs_other_objects());

        let g = weft_smi::from_value(&json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
            "metadata": {"name": "g", "namespace": "shop"},
            "spec": {"matches": [{"name": "a", "methods": ["FETCH"]}]}
        }))
        .unwrap();
        let own = validate_object(&g);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].reason, Reason::UnknownMethod);
        assert_eq!(own[0].reason.as_str(), "UnknownMethod");
        assert!(!own[0].reason.needs_other_objects());
    }
}
