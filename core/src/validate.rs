//! The validator: the problems of one SMI object, as admission reports them.
//!
//! [`validate_object`] (what admission calls) is each kind's analysis in [`crate::analysis`]
//! and nothing else: [`crate::analysis::traffic_split`], [`crate::analysis::traffic_target`],
//! [`crate::analysis::http_route_group`] (`issues`) and [`crate::analysis::port_route`] hold
//! the rules, and the compiler reads the same results for its decisions and status.
//! References to other objects (missing groups, routes, match names, Services, conflicting
//! splits) are judged only against the model, by [`crate::analysis::split_plan`] and
//! [`crate::analysis::target_rules`], and reported in status; admission sees one object.
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
//! | TrafficTarget | destination/source kind not ServiceAccount, empty names | Error |
//! | TrafficTarget | destination namespace differs from the object's namespace | Error |
//! | TrafficTarget | no sources or no rules (allows nothing) | Warning |
//! | HTTPRouteGroup | invalid path or header regex, unknown method, invalid header name (the compiler's own check, `compile::rules::match_problems`), duplicate match names | Error |
//! | HTTPRouteGroup | no matches | Warning |
//! | TCPRoute/UDPRoute | port 0 | Error; duplicate ports: Warning |
//!
//! Objects that do not even parse (an unknown rule kind, a negative weight) never reach the
//! hub: [`problem_from_error`] turns the typed parse error into an Error problem.

use weft_smi::hub::SmiObject;
use weft_smi::SmiError;

pub use crate::reason::Reason;

/// The one problem type of every analysis ([`crate::analysis`]).
pub use crate::analysis::{Problem, Severity};

/// Whether any problem rejects the object.
pub fn has_errors(problems: &[Problem]) -> bool {
    problems.iter().any(|p| p.severity == Severity::Error)
}

/// Turns a parse/convert error from `weft_smi::from_value` into a rejecting problem.
pub fn problem_from_error(e: &SmiError) -> Problem {
    // The message does not repeat the path: each consumer prints `path` beside it.
    let (path, reason, message) = match e {
        SmiError::Invalid { path, message } => {
            (path.clone(), Reason::InvalidField, message.clone())
        }
        SmiError::MissingField(f) => ((*f).to_string(), Reason::MissingField, e.to_string()),
        SmiError::NotSmi { .. } => ("kind".to_string(), Reason::NotSmi, e.to_string()),
        SmiError::Malformed { .. } => (String::new(), Reason::Malformed, e.to_string()),
        SmiError::KindMismatch { .. } => ("kind".to_string(), Reason::KindMismatch, e.to_string()),
    };
    Problem {
        severity: Severity::Error,
        path,
        reason,
        message,
    }
}

/// Validates one object on its own: every check that needs no other object (what admission
/// can judge). References to other objects and conflicts with them are not judged (see
/// [`Reason::needs_other_objects`]); they are reported in status by the compiler. Problems are
/// sorted: errors first, then by path.
pub fn validate_object(obj: &SmiObject) -> Vec<Problem> {
    let mut out = match obj {
        SmiObject::TrafficSplit(s) => crate::analysis::traffic_split(s).problems,
        SmiObject::TrafficTarget(t) => crate::analysis::traffic_target(t).problems,
        SmiObject::HTTPRouteGroup(g) => crate::analysis::http_route_group(g).issues(),
        SmiObject::PortRoute(r) => crate::analysis::port_route(r).problems,
    };
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.path.cmp(&b.path))
    });
    out
}

/// Orders objects for "oldest wins" ([`crate::compile::rules::split_order`], the one rule:
/// parsed creationTimestamp, missing or unparsable counts as newest, a tie broken by name).
pub use crate::compile::rules::split_order as age_order;

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
        /// Expected (severity, reason, path) triples, in the validator's order.
        want: Vec<(Severity, &'static str, &'static str)>,
    }

    fn run(cases: Vec<Case>) {
        for c in cases {
            let objects = objs(&c.objects);
            let got: Vec<(Severity, &str, String)> = validate_object(&objects[0])
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
                want: vec![],
            },
            Case {
                name: "weights sum to zero",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "a", "weight": 0}, {"service": "b", "weight": 0}]}),
                )],
                want: vec![(E, "ZeroWeights", "spec.backends")],
            },
            Case {
                name: "no backends",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": []}),
                )],
                want: vec![(E, "NoBackends", "spec.backends")],
            },
            Case {
                name: "duplicate backend",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "a", "weight": 1}, {"service": "a", "weight": 2}]}),
                )],
                want: vec![(E, "DuplicateBackend", "spec.backends[1].service")],
            },
            Case {
                name: "root as one of several backends is fine",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "web", "weight": 90}, {"service": "web-canary", "weight": 10}]}),
                )],
                want: vec![],
            },
            Case {
                name: "root as the only weighted backend",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "web", "weight": 100}, {"service": "web-canary", "weight": 0}]}),
                )],
                want: vec![(W, "RootOnlyBackend", "spec.backends")],
            },
            Case {
                name: "matches: missing group, wrong kind, other namespace",
                objects: vec![ts(
                    "s",
                    "2024-01-01T00:00:00Z",
                    json!({"service": "web", "backends": [{"service": "a", "weight": 1}],
                    "matches": [{"kind": "HTTPRouteGroup", "name": "nope"}, {"kind": "TCPRoute", "name": "db"}, {"kind": "HTTPRouteGroup", "name": "other/g"}]}),
                )],
                want: vec![
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
                want: vec![],
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
                want: vec![(E, "CrossNamespaceReference", "spec.destination.namespace")],
            },
            Case {
                name: "non-ServiceAccount identities, duplicate source",
                objects: vec![
                    tt(
                        json!({"destination": {"kind": "Group", "name": "api"}, "sources": [sa("web"), sa("web"), {"kind": "User", "name": ""}], "rules": [{"kind": "HTTPRouteGroup", "name": "api"}]}),
                    ),
                    routes.clone(),
                ],
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
                want: vec![(E, "UnknownMethod", "spec.matches[0].methods[1]")],
            },
            Case {
                name: "empty group",
                objects: vec![htr("g", json!([]))],
                want: vec![(W, "NoMatches", "spec.matches")],
            },
            Case {
                name: "ports",
                objects: vec![tcp("db", json!({"ports": [5432, 0, 5432]}))],
                want: vec![
                    (E, "InvalidPort", "spec.matches.ports[1]"),
                    (W, "DuplicatePort", "spec.matches.ports[2]"),
                ],
            },
            Case {
                name: "tcp route without matches",
                objects: vec![tcp("db", serde_json::Value::Null)],
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
        assert!(
            !p.message.contains("spec.rules[0].kind"),
            "the path is a field of its own, not repeated in the message: {}",
            p.message
        );
        assert!(has_errors(&[p]));
    }

    #[test]
    fn validate_apex_owner_is_oldest() {
        let two = json!({"service": "web", "backends": [{"service": "a", "weight": 1}]});
        let objects = objs(&[
            ts("new", "2024-03-01T00:00:00Z", two.clone()),
            ts("old", "2024-01-01T00:00:00Z", two),
        ]);
        // The split that takes effect on a root is the oldest by the one rule (`age_order` is
        // `compile::rules::split_order`); the compiler's conflict status is tested in
        // operator/tests/compile_rules.rs.
        let owner = |service: &str| {
            objects
                .iter()
                .filter_map(|o| match o {
                    SmiObject::TrafficSplit(s) if s.service == service => Some(s),
                    _ => None,
                })
                .min_by(|a, b| age_order(&a.meta, &b.meta))
                .map(|s| s.meta.name.as_str())
        };
        assert_eq!(owner("web"), Some("old"));
        assert!(owner("other").is_none());
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
        // The reference is judged against the model by the target's analysis (what status
        // reports), not by admission.
        let SmiObject::TrafficTarget(target) = &t else {
            panic!("a TrafficTarget")
        };
        assert_eq!(
            crate::analysis::target_rules(target, |_, _| None::<Vec<String>>),
            vec![crate::analysis::RuleResolution::RouteNotFound]
        );
        assert!(Reason::RouteNotFound.needs_other_objects());

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
