//! `POST /validate`: validating admission for SMI objects (admission.k8s.io/v1 AdmissionReview).

use std::sync::Arc;

use serde_json::{json, Value};
use weft_smi::hub::SmiObject;

/// What a validator says about one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Reasons to reject the object.
    pub errors: Vec<String>,
    /// Admitted, but reported to the user (`kubectl` prints them).
    pub warnings: Vec<String>,
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
                crate::validate::Severity::Error => verdict.errors.push(p.to_string()),
                crate::validate::Severity::Warning => verdict.warnings.push(p.to_string()),
            }
        }
        verdict
    })
}

/// Answers an AdmissionReview: objects that do not parse as SMI, or that the validator finds
/// errors in, are denied with a message listing every error; warnings become admission warnings.
/// DELETE (no object) is always allowed.
pub fn review(review: &Value, validator: &Validator) -> Value {
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
    let uid = review
        .pointer("/request/uid")
        .cloned()
        .unwrap_or_else(|| json!(""));
    let verdict = match review.pointer("/request/object") {
        None | Some(Value::Null) => Verdict::default(),
        Some(obj) => {
            let namespace = review
                .pointer("/request/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            match weft_smi::from_value_in(obj, namespace) {
                Ok(parsed) => validator(&parsed),
                Err(e) => Verdict {
                    errors: vec![e.to_string()],
                    warnings: Vec::new(),
                },
            }
        }
    };
    let mut response = json!({ "uid": uid, "allowed": verdict.errors.is_empty() });
    if !verdict.errors.is_empty() {
        let kind = review
            .pointer("/request/kind/kind")
            .and_then(Value::as_str)
            .unwrap_or("object");
        let name = review
            .pointer("/request/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        response["status"] = json!({
            "code": 422,
            "reason": "Invalid",
            "message": format!("weft: {kind} {name:?} is invalid: {}", verdict.errors.join("; ")),
        });
    }
    if !verdict.warnings.is_empty() {
        response["warnings"] = json!(verdict.warnings);
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

    #[test]
    fn valid_object_is_allowed_with_warnings() {
        let validator: Validator = Arc::new(|o: &SmiObject| Verdict {
            errors: vec![],
            warnings: vec![format!("{} looks odd", o.meta().name)],
        });
        let out = review(&recorded(split(json!(100))), &validator);
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(
            out["response"]["uid"],
            "b1a2c3d4-0000-4000-8000-00000000abcd"
        );
        assert_eq!(out["response"]["allowed"], true, "{out}");
        assert_eq!(out["response"]["warnings"][0], "canary looks odd");
    }

    #[test]
    fn validator_errors_deny_with_every_message() {
        let validator: Validator = Arc::new(|_| Verdict {
            errors: vec!["first problem".into(), "second problem".into()],
            warnings: vec![],
        });
        let out = review(&recorded(split(json!(100))), &validator);
        assert_eq!(out["response"]["allowed"], false);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("first problem") && msg.contains("second problem"),
            "{msg}"
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
