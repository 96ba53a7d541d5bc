//! The proxy injector's webhook handler. The injection itself is pure and lives in
//! [`weft_core::inject`] (re-exported here); this adds the Namespace lookup.

use std::collections::BTreeMap;

use serde_json::Value;
pub use weft_core::inject::*;

/// The `/inject` handler: reads the namespace's annotations (and its `weft.io/inject` label)
/// through `client` (when given) and answers the AdmissionReview.
///
/// A namespace that cannot be read is an error, not "not annotated": the caller answers it as a
/// webhook failure, so the webhook's `failurePolicy` decides — `Fail` for namespaces labelled
/// `weft.io/inject=enabled` (the pod is refused and its ReplicaSet retries, never created without
/// its proxy), `Ignore` for the annotation opt-in elsewhere.
pub async fn handle_admission(
    review: Value,
    settings: &InjectSettings,
    client: Option<&kube::Client>,
) -> Result<Value, String> {
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
            Ok(Err(e)) => {
                tracing::warn!(namespace = %ns, error = %e, "cannot read namespace");
                return Err(format!(
                    "weft injector: cannot read namespace {ns} to decide injection: {e}"
                ));
            }
            Err(_) => {
                tracing::warn!(namespace = %ns, "timed out reading namespace");
                return Err(format!(
                    "weft injector: timed out reading namespace {ns} to decide injection"
                ));
            }
        }
    }
    let response = review_response(&review, settings, &ns_annotations);
    if let Some(w) = response.pointer("/response/warnings") {
        if response.pointer("/response/patch").is_some() {
            // Injected; an annotation was partly ignored (e.g. `weft.io/outbound-services`).
            tracing::warn!(warnings = %w, "injected pod with warnings");
        } else {
            tracing::warn!(warnings = %w, "not injecting pod");
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review() -> Value {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1", "namespace": "shop", "operation": "CREATE",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "web", "namespace": "shop"},
                           "spec": {"containers": [{"name": "app", "image": "app"}]}}
            }
        })
    }

    /// An API server that cannot be reached (nothing listens on the port): the injector cannot
    /// tell whether the namespace is meshed, so it answers an error — the webhook's failurePolicy
    /// decides — instead of "not meshed", which would create the pod without its proxy.
    #[tokio::test]
    async fn an_unreadable_namespace_is_an_error_not_a_silent_skip() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let err = handle_admission(review(), &InjectSettings::default(), Some(&client))
            .await
            .expect_err("an unreadable namespace must not be answered as not meshed");
        assert!(err.contains("namespace shop"), "{err}");
        // Without a client (no API to ask), the pod's own annotations decide, as before.
        let answer = handle_admission(review(), &InjectSettings::default(), None)
            .await
            .unwrap();
        assert_eq!(answer["response"]["uid"], "u1");
    }
}
