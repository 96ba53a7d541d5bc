//! `POST /convert`: the CRD conversion webhook (apiextensions.k8s.io/v1 ConversionReview).

use serde_json::{json, Value};

/// Answers a ConversionReview: every object is converted to `desiredAPIVersion` by
/// `weft_smi::convert::convert_object`, which is total (it never validates; partial objects
/// and nulls convert) and faithful (round trips return what the user wrote). Only an item that
/// is not a JSON object, or a version the CRD does not serve, fails the review, with a
/// `Failed` result naming the object, never a panic. The response echoes the request's `uid`
/// and `apiVersion`. A body that is not a ConversionReview gets a `Failed` result as well.
pub fn review(review: &Value) -> Value {
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("apiextensions.k8s.io/v1");
    let uid = review
        .pointer("/request/uid")
        .cloned()
        .unwrap_or_else(|| json!(""));
    let response = match convert_all(review) {
        Ok(objects) => json!({
            "uid": uid,
            "convertedObjects": objects,
            "result": { "status": "Success" },
        }),
        Err(message) => {
            tracing::warn!(%message, "conversion failed");
            json!({
                "uid": uid,
                "convertedObjects": [],
                "result": { "status": "Failed", "message": message },
            })
        }
    };
    json!({ "apiVersion": api_version, "kind": "ConversionReview", "response": response })
}

fn convert_all(review: &Value) -> Result<Vec<Value>, String> {
    let request = review
        .get("request")
        .ok_or("ConversionReview has no request")?;
    let desired = request
        .get("desiredAPIVersion")
        .and_then(Value::as_str)
        .ok_or("ConversionReview request has no desiredAPIVersion")?;
    let objects = request
        .get("objects")
        .and_then(Value::as_array)
        .ok_or("ConversionReview request has no objects")?;
    objects
        .iter()
        .enumerate()
        .map(|(i, obj)| {
            if !obj.is_object() {
                return Err(format!("objects[{i}] is not a JSON object"));
            }
            // Conversion never validates (admission does): every object, partial ones from
            // server-side apply and ones with nulls included, is converted as it is.
            weft_smi::convert::convert_object(obj, desired).map_err(|e| {
                let from = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("?");
                let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("?");
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                let namespace = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!("converting {kind} {namespace}/{name} from {from} to {desired}: {e}")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A review as kube-apiserver sends it (recorded shape).
    fn recorded(desired: &str) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "desiredAPIVersion": desired,
                "objects": [{
                    "apiVersion": "split.smi-spec.io/v1alpha1",
                    "kind": "TrafficSplit",
                    "metadata": {
                        "name": "canary", "namespace": "demo", "generation": 3,
                        "uid": "0e8f6d57-0000-4000-8000-000000000001",
                        "creationTimestamp": "2024-01-01T00:00:00Z"
                    },
                    "spec": {
                        "service": "web",
                        "backends": [
                            {"service": "web-v1", "weight": "500m"},
                            {"service": "web-v2", "weight": "1"}
                        ]
                    },
                    "status": {"conditions": []}
                }]
            }
        })
    }

    #[test]
    fn converts_v1alpha1_split_to_v1alpha4() {
        let out = review(&recorded("split.smi-spec.io/v1alpha4"));
        assert_eq!(out["kind"], "ConversionReview");
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(out["response"]["result"]["status"], "Success", "{out}");
        let obj = &out["response"]["convertedObjects"][0];
        assert_eq!(obj["apiVersion"], "split.smi-spec.io/v1alpha4");
        assert_eq!(
            obj["metadata"]["uid"],
            "0e8f6d57-0000-4000-8000-000000000001"
        );
        assert_eq!(obj["spec"]["service"], "web");
        let weights: Vec<i64> = obj["spec"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["weight"].as_i64().unwrap())
            .collect();
        // 500m : 1 keeps its ratio 1 : 2.
        assert_eq!(weights[1], weights[0] * 2, "{obj}");
    }

    #[test]
    fn unknown_version_is_a_failed_result() {
        let out = review(&recorded("split.smi-spec.io/v9"));
        assert_eq!(out["response"]["result"]["status"], "Failed");
        let msg = out["response"]["result"]["message"].as_str().unwrap();
        assert!(msg.contains("demo/canary") && msg.contains("v9"), "{msg}");
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
    }

    /// What the API server sends while server-side applying status: partial objects built from
    /// managed fields, without spec or with nulls.
    #[test]
    fn partial_objects_from_server_side_apply_convert() {
        let review_of = |objects: Value, desired: &str| {
            json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                "request": {"uid": "u-2", "desiredAPIVersion": desired, "objects": objects}
            })
        };
        let objects = json!([
            {"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
             "status": {"conditions": [{"type": "Accepted", "status": "True"}]}},
            {"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
             "metadata": {"name": "a"}, "spec": {"backends": null, "matches": null}},
        ]);
        let out = review(&review_of(objects, "split.smi-spec.io/v1alpha1"));
        assert_eq!(out["response"]["result"]["status"], "Success", "{out}");
        assert_eq!(out["response"]["uid"], "u-2");
        let converted = out["response"]["convertedObjects"].as_array().unwrap();
        assert_eq!(converted.len(), 2);
        assert_eq!(converted[0]["apiVersion"], "split.smi-spec.io/v1alpha1");
        assert!(converted[0]["metadata"].is_object(), "{out}");
        assert!(converted[0].get("spec").is_none(), "{out}");
        assert_eq!(converted[0]["status"]["conditions"][0]["type"], "Accepted");
        assert_eq!(converted[1]["spec"]["backends"], Value::Null, "{out}");

        let objects = json!([
            {"apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",
             "metadata": {"name": "t"}, "destination": null},
            {"apiVersion": "specs.smi-spec.io/v1alpha2", "kind": "HTTPRouteGroup",
             "metadata": {"name": "h"}, "matches": [{"name": "m", "headers": null}]},
        ]);
        for (i, desired) in ["access.smi-spec.io/v1alpha3", "specs.smi-spec.io/v1alpha4"]
            .into_iter()
            .enumerate()
        {
            let one = json!([objects[i].clone()]);
            let out = review(&review_of(one, desired));
            assert_eq!(out["response"]["result"]["status"], "Success", "{out}");
            assert_eq!(
                out["response"]["convertedObjects"][0]["apiVersion"],
                desired
            );
        }
    }

    #[test]
    fn review_api_version_is_echoed() {
        let mut r = recorded("split.smi-spec.io/v1alpha2");
        r["apiVersion"] = json!("apiextensions.k8s.io/v1beta1");
        let out = review(&r);
        assert_eq!(out["apiVersion"], "apiextensions.k8s.io/v1beta1");
        assert_eq!(out["response"]["result"]["status"], "Success", "{out}");
    }

    #[test]
    fn garbage_is_a_failed_result() {
        let out = review(&json!({"hello": "world"}));
        assert_eq!(out["response"]["result"]["status"], "Failed");
        let out = review(&json!({"request": {"desiredAPIVersion": "x", "objects": [42]}}));
        assert_eq!(out["response"]["result"]["status"], "Failed");
        let msg = out["response"]["result"]["message"].as_str().unwrap();
        assert!(msg.contains("objects[0]"), "{msg}");
    }
}
