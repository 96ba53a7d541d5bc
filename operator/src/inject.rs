//! The proxy injector's webhook handler. The injection itself is pure and lives in
//! [`weft_core::inject`] (re-exported here); this adds the Namespace lookup.

use std::collections::BTreeMap;

use serde_json::Value;
pub use weft_core::inject::*;

/// The `/inject` handler: reads the namespace's annotations (and its `weft.io/inject` label)
/// through `client` (when given) and answers the AdmissionReview. A namespace that cannot be
/// read counts as not annotated.
pub async fn handle_admission(
    review: Value,
    settings: &InjectSettings,
    client: Option<&kube::Client>,
) -> Value {
    let mut ns_annotations = BTreeMap::new();
    let namespace = review
        .pointer("/request/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let (Some(client), Some(ns)) = (client, namespace) {
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        match tokio::time::timeout(std::time::Duration::from_secs(5), api.get(&ns)).await {
            Ok(Ok(n)) => {
                ns_annotations = n.metadata.annotations.unwrap_or_default();
                // The label `weft.io/inject` (what the chart's webhook selects namespaces by)
                // counts as the annotation when the namespace has no annotation of its own.
                if let Some(v) = n
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .remove(INJECT_ANNOTATION)
                {
                    ns_annotations
                        .entry(INJECT_ANNOTATION.to_string())
                        .or_insert(v);
                }
            }
            Ok(Err(e)) => tracing::warn!(namespace = %ns, error = %e, "cannot read namespace"),
            Err(_) => tracing::warn!(namespace = %ns, "timed out reading namespace"),
        }
    }
    let response = review_response(&review, settings, &ns_annotations);
    if let Some(w) = response.pointer("/response/warnings") {
        tracing::warn!(warnings = %w, "not injecting pod");
    }
    response
}
