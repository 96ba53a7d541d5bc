//! Creating and applying arbitrary objects (JSON or YAML) with kube-rs' dynamic API.

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{ApiResource, Discovery, Scope};
use serde_json::Value;

async fn resource(client: &kube::Client, obj: &Value) -> Result<(ApiResource, bool), String> {
    let api_version = obj["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = obj["kind"].as_str().ok_or("no kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let discovery = Discovery::new(client.clone())
        .filter(&[group])
        .run()
        .await
        .map_err(|e| e.to_string())?;
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = discovery
        .resolve_gvk(&gvk)
        .ok_or_else(|| format!("{api_version} {kind} is not served"))?;
    Ok((ar, caps.scope == Scope::Namespaced))
}

fn api(
    client: &kube::Client,
    ar: &ApiResource,
    namespaced: bool,
    obj: &Value,
) -> Api<DynamicObject> {
    match (namespaced, obj["metadata"]["namespace"].as_str()) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
        (true, None) => Api::default_namespaced_with(client.clone(), ar),
        (false, _) => Api::all_with(client.clone(), ar),
    }
}

/// POSTs `obj`; the error is the API's message (e.g. a 422's reason).
pub async fn create(client: &kube::Client, obj: &Value) -> Result<Value, String> {
    let (ar, ns) = resource(client, obj).await?;
    let dynobj: DynamicObject = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let created = api(client, &ar, ns, obj)
        .create(&PostParams::default(), &dynobj)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::to_value(created).map_err(|e| e.to_string())
}

/// Server-side applies `obj` (field manager `weft-e2e`, forced).
pub async fn apply(client: &kube::Client, obj: &Value) -> Result<Value, String> {
    let (ar, ns) = resource(client, obj).await?;
    let name = obj["metadata"]["name"].as_str().ok_or("no metadata.name")?;
    let applied = api(client, &ar, ns, obj)
        .patch(
            name,
            &PatchParams::apply("weft-e2e").force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|e| e.to_string())?;
    serde_json::to_value(applied).map_err(|e| e.to_string())
}

/// Reads `kind`/`name` in `api_version` (e.g. to read an object back in another served version).
pub async fn get(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, String> {
    let probe =
        serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {"namespace": ns}});
    let (ar, namespaced) = resource(client, &probe).await?;
    let got = api(client, &ar, namespaced, &probe)
        .get(name)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::to_value(got).map_err(|e| e.to_string())
}

/// Applies every document of a multi-document YAML string, in order.
pub async fn apply_yaml(client: &kube::Client, yaml: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if v.is_null() {
            continue;
        }
        out.push(apply(client, &v).await?);
    }
    Ok(out)
}

/// Deletes `kind`/`name` (served in `api_version`); deleting what is already gone is not an error.
pub async fn delete(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<(), String> {
    let probe =
        serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {"namespace": ns}});
    let (ar, namespaced) = resource(client, &probe).await?;
    match api(client, &ar, namespaced, &probe)
        .delete(name, &Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
