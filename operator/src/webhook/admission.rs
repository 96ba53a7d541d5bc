//! `POST /validate`: validating admission for SMI objects (admission.k8s.io/v1 AdmissionReview).

use std::sync::Arc;

use serde_json::{json, Value};
use weft_smi::hub::SmiObject;

use crate::validate::{problem_from_error, Problem, Reason, Severity};

/// What a validator says about one object: the problems of the one validator
/// ([`crate::validate::validate_object`]), each with its typed reason and field path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Reasons to reject the object (one `details.causes` entry each).
    pub errors: Vec<Problem>,
    /// Admitted, but reported to the user (admission `warnings`, which `kubectl` prints).
    pub warnings: Vec<Problem>,
}

/// Semantic validation of one SMI object (the runtime plugs in `crate::validate`).
pub type Validator = Arc<dyn Fn(&SmiObject) -> Verdict + Send + Sync>;

/// A validator that only checks that the object parses (the parse itself is done by [`review`]).
pub fn parse_only() -> Validator {
    Arc::new(|_| Verdict::default())
}

/// The semantic validator (`crate::validate`), judging each object on its own
/// ([`crate::validate::validate_object`]): the webhook sees one object and none of the others,
/// so references to and conflicts with other objects are not judged here (a TrafficTarget would
/// otherwise be rejected for every route it names, and apply order would matter); status
/// conditions report them (`ResolvedRefs=False`, `Conflicted`).
pub fn semantic() -> Validator {
    Arc::new(|obj: &SmiObject| {
        let mut verdict = Verdict::default();
        for p in crate::validate::validate_object(obj) {
            match p.severity {
                Severity::Error => verdict.errors.push(p),
                Severity::Warning => verdict.warnings.push(p),
            }
        }
        verdict
    })
}

/// The `reason` of a `metav1.StatusCause` for a problem: the Kubernetes field-error type
/// (`k8s.io/apimachinery/pkg/util/validation/field`) that says the same thing. Exhaustive, so a
/// new [`Reason`] has to be classified here.
pub fn cause_type(reason: Reason) -> &'static str {
    use Reason::*;
    match reason {
        MissingService | NoBackends | MissingName | MissingField => "FieldValueRequired",
        DuplicateBackend | DuplicateSource | DuplicateMatch | DuplicatePort => {
            "FieldValueDuplicate"
        }
        UnsupportedMatchKind
        | UnsupportedIdentityKind
        | UnknownMethod
        | InvalidKind
        | NotSmi
        | UnsupportedValue => "FieldValueNotSupported",
        CrossNamespaceReference | RefNotPermitted => "FieldValueForbidden",
        BackendNotFound | ServiceNotFound | RouteGroupNotFound | RouteNotFound | MatchNotFound
        | NoMatchingParent => "FieldValueNotFound",
        ZeroWeights
        | RootOnlyBackend
        | Conflicted
        | NoSources
        | NoRules
        | NoMatches
        | InvalidRegex
        | InvalidHeaderName
        | InvalidPort
        | NoWeight
        | BackendPortMismatch
        | InvalidMatch
        | Accepted
        | ResolvedRefs
        | NoConflict
        | ApexConflict
        | AllowsNothing
        | Invalid
        | InvalidAnnotation
        | InboundLimitConflict
        | HttpsProbeNotAuthorized
        | UDPNotProxied
        | InvalidField
        | Malformed
        | KindMismatch
        | HTTPRouteInForce
        | IncompatibleFilters => "FieldValueInvalid",
    }
}

/// One `metav1.StatusCause`: kubectl prints each as `<field>: <message>`, so the message
/// starts with weft's typed reason. A problem about the whole object has no field.
pub fn cause(p: &Problem) -> Value {
    let mut c = json!({
        "reason": cause_type(p.reason),
        "message": format!("{}: {}", p.reason, p.message),
    });
    if !p.path.is_empty() {
        c["field"] = json!(p.path);
    }
    c
}

/// One line for humans: `<field>: <Reason>: <message>` (admission warnings, the status message).
fn line(p: &Problem) -> String {
    if p.path.is_empty() {
        format!("{}: {}", p.reason, p.message)
    } else {
        format!("{}: {}: {}", p.path, p.reason, p.message)
    }
}

/// The `metav1.Status` of a denial: `422 Invalid`, a one-line `message` naming every problem,
/// and `details` (`group`, `kind`, `name`, one cause per problem with its field path), which
/// is what kubectl prints (`The TrafficSplit "x" is invalid: * spec...: ...`).
pub fn denial_status(group: &str, kind: &str, name: &str, errors: &[Problem]) -> Value {
    let lines: Vec<String> = errors.iter().map(line).collect();
    let what = if name.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} {name:?}")
    };
    json!({
        "status": "Failure",
        "code": 422,
        "reason": "Invalid",
        "message": format!("{what} is invalid: {}", lines.join("; ")),
        "details": {
            "group": group,
            "kind": kind,
            "name": name,
            "causes": errors.iter().map(cause).collect::<Vec<_>>(),
        },
    })
}

/// Answers an AdmissionReview: objects that do not parse as SMI, or that the validator finds
/// errors in, are denied with a `metav1.Status` carrying one cause per problem
/// ([`denial_status`]); warnings become admission warnings. DELETE (no object) is always
/// allowed.
pub fn review(review: &Value, validator: &Validator) -> Value {
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
    let uid = review
        .pointer("/request/uid")
        .cloned()
        .unwrap_or_else(|| json!(""));
    let object = review.pointer("/request/object").filter(|o| !o.is_null());
    let verdict = match object {
        None => Verdict::default(),
        Some(obj) => {
            let namespace = review
                .pointer("/request/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            match weft_smi::from_value_in(obj, namespace) {
                Ok(parsed) => validator(&parsed),
                Err(e) => Verdict {
                    errors: vec![problem_from_error(&e)],
                    warnings: Vec::new(),
                },
            }
        }
    };
    let mut response = json!({ "uid": uid, "allowed": verdict.errors.is_empty() });
    if !verdict.errors.is_empty() {
        let str_at = |v: Option<&Value>, p: &str| {
            v.and_then(|v| v.pointer(p))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let group = str_at(Some(review), "/request/kind/group");
        let mut kind = str_at(Some(review), "/request/kind/kind");
        if kind.is_empty() {
            kind = "object".to_string();
        }
        // `request.name` is empty on CREATE with `generateName`.
        let name = [
            str_at(Some(review), "/request/name"),
            str_at(object, "/metadata/name"),
            str_at(object, "/metadata/generateName"),
        ]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_default();
        response["status"] = denial_status(&group, &kind, &name, &verdict.errors);
    }
    if !verdict.warnings.is_empty() {
        response["warnings"] = json!(verdict.warnings.iter().map(line).collect::<Vec<_>>());
    }
    json!({ "apiVersion": api_version, "kind": "AdmissionReview", "response": response })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(object: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "b1a2c3d4-0000-4000-8000-00000000abcd",
                "kind": {"group": "split.smi-spec.io", "version": "v1alpha4", "kind": "TrafficSplit"},
                "resource": {"group": "split.smi-spec.io", "version": "v1alpha4", "resource": "trafficsplits"},
                "name": "canary",
                "namespace": "demo",
                "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": null,
                "dryRun": false
            }
        })
    }

    fn split(weight: Value) -> Value {
        json!({
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": "canary", "namespace": "demo"},
            "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": weight}]}
        })
    }

    fn problem(severity: Severity, path: &str, reason: Reason, message: &str) -> Problem {
        Problem {
            severity,
            path: path.into(),
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn valid_object_is_allowed_with_warnings() {
        let validator: Validator = Arc::new(|o: &SmiObject| Verdict {
            errors: vec![],
            warnings: vec![problem(
                Severity::Warning,
                "spec.backends",
                Reason::RootOnlyBackend,
                &format!("{} looks odd", o.meta().name),
            )],
        });
        let out = review(&recorded(split(json!(100))), &validator);
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(
            out["response"]["uid"],
            "b1a2c3d4-0000-4000-8000-00000000abcd"
        );
        assert_eq!(out["response"]["allowed"], true, "{out}");
        assert_eq!(
            out["response"]["warnings"][0],
            "spec.backends: RootOnlyBackend: canary looks odd"
        );
        assert!(out["response"].get("status").is_none(), "{out}");
    }

    #[test]
    fn validator_errors_deny_with_one_cause_per_problem() {
        let validator: Validator = Arc::new(|_| Verdict {
            errors: vec![
                problem(
                    Severity::Error,
                    "spec.backends",
                    Reason::ZeroWeights,
                    "first problem",
                ),
                problem(
                    Severity::Error,
                    "spec.backends[1].service",
                    Reason::MissingService,
                    "second problem",
                ),
            ],
            warnings: vec![],
        });
        let out = review(&recorded(split(json!(100))), &validator);
        assert_eq!(out["response"]["allowed"], false);
        let status = &out["response"]["status"];
        assert_eq!(status["code"], 422);
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["status"], "Failure");
        let msg = status["message"].as_str().unwrap();
        assert_eq!(
            msg,
            "TrafficSplit \"canary\" is invalid: spec.backends: ZeroWeights: first problem; \
             spec.backends[1].service: MissingService: second problem"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert_eq!(
            status["details"],
            json!({
                "group": "split.smi-spec.io",
                "kind": "TrafficSplit",
                "name": "canary",
                "causes": [
                    {"reason": "FieldValueInvalid", "field": "spec.backends",
                     "message": "ZeroWeights: first problem"},
                    {"reason": "FieldValueRequired", "field": "spec.backends[1].service",
                     "message": "MissingService: second problem"},
                ]
            })
        );
    }

    #[test]
    fn cause_types_follow_the_reason() {
        assert_eq!(cause_type(Reason::MissingName), "FieldValueRequired");
        assert_eq!(cause_type(Reason::DuplicateBackend), "FieldValueDuplicate");
        assert_eq!(cause_type(Reason::UnknownMethod), "FieldValueNotSupported");
        assert_eq!(
            cause_type(Reason::CrossNamespaceReference),
            "FieldValueForbidden"
        );
        assert_eq!(cause_type(Reason::InvalidRegex), "FieldValueInvalid");
        // A problem about the whole object has no field (kubectl prints no path).
        let c = cause(&problem(Severity::Error, "", Reason::Malformed, "bad"));
        assert!(c.get("field").is_none(), "{c}");
        assert_eq!(c["message"], "Malformed: bad");
    }

    #[test]
    fn the_real_validator_gives_each_problem_its_field() {
        // Two problems of the one validator: an empty backend name and weights summing to 0.
        let bad = json!({
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"generateName": "canary-", "namespace": "demo"},
            "spec": {"service": "web", "backends": [
                {"service": "web-v1", "weight": 0}, {"service": "", "weight": 0}]}
        });
        let mut req = recorded(bad);
        req["request"]["name"] = json!("");
        let out = review(&req, &semantic());
        assert_eq!(out["response"]["allowed"], false, "{out}");
        let details = &out["response"]["status"]["details"];
        assert_eq!(details["name"], "canary-", "{details}");
        let fields: Vec<(&str, &str)> = details["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["field"].as_str().unwrap(), c["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("spec.backends", "FieldValueInvalid"),
                ("spec.backends[1].service", "FieldValueRequired"),
            ]
        );
    }

    #[test]
    fn a_parse_error_is_a_cause_with_its_field() {
        let bad = json!({
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": "t", "namespace": "demo"},
            "spec": {"destination": {"kind": "ServiceAccount", "name": "web"},
                     "rules": [{"kind": "GRPCRoute", "name": "x"}]}
        });
        let out = review(&recorded(bad), &parse_only());
        let causes = &out["response"]["status"]["details"]["causes"];
        assert_eq!(causes[0]["field"], "spec.rules[0].kind", "{out}");
        assert_eq!(causes[0]["reason"], "FieldValueInvalid", "{out}");
        assert!(
            causes[0]["message"]
                .as_str()
                .unwrap()
                .starts_with("InvalidField: "),
            "{out}"
        );
    }

    #[test]
    fn unparseable_object_is_denied() {
        let bad = json!({
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": "canary", "namespace": "demo"},
            "spec": {"backends": "not a list"}
        });
        let out = review(&recorded(bad), &parse_only());
        assert_eq!(out["response"]["allowed"], false, "{out}");
    }

    #[test]
    fn semantic_validator_admits_a_plain_split() {
        let out = review(&recorded(split(json!(100))), &semantic());
        assert_eq!(out["response"]["allowed"], true, "{out}");
    }

    #[test]
    fn semantic_validator_admits_references_it_cannot_see_but_rejects_zero_weights() {
        // The routes a target names are other objects: status reports them, not admission.
        let target = json!({
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": "allow", "namespace": "demo"},
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": "web", "namespace": "demo"},
                "sources": [{"kind": "ServiceAccount", "name": "client", "namespace": "demo"}],
                "rules": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["get"]}]
            }
        });
        let out = review(&recorded(target), &semantic());
        assert_eq!(out["response"]["allowed"], true, "{out}");
        let out = review(&recorded(split(json!(0))), &semantic());
        assert_eq!(out["response"]["allowed"], false, "{out}");
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("weights sum to 0"), "{msg}");
    }

    #[test]
    fn delete_is_allowed() {
        let out = review(&recorded(Value::Null), &parse_only());
        assert_eq!(out["response"]["allowed"], true);
    }
}
