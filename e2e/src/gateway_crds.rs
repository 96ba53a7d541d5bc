//! The vendored Gateway API CRDs (`crds/gateway-api/*.yaml`: upstream v1.5.1, standard channel)
//! installed into a test API server of any age.
//!
//! Upstream's CRDs carry `x-kubernetes-validations` (CEL rules), a schema field Kubernetes
//! serves from 1.25 on. Older API servers refuse the whole CRD ("field not declared in
//! schema"); the e2e kube-apiserver is 1.20. So on a server older than 1.25 every
//! `x-kubernetes-validations` key is removed first ([`for_server`]), and the CRD installs with
//! the rest of its schema (types, enums, patterns, lengths, defaults) intact. What the CEL
//! rules would have refused is then weft's compiler's job (docs/gateway-api.md lists them).
//!
//! Found by trying on 1.20, which also refuses a `default: ""` (it reads the empty string as
//! null: "in body must be of type string: \"null\""): on old servers those defaults (the
//! `group` of backendRefs and mirror backendRefs) are removed too; an absent backendRef group
//! means the core group to weft, as `""` does.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::repo_root;

/// The first Kubernetes minor version whose API server accepts `x-kubernetes-validations`.
pub const CEL_MIN_MINOR: u32 = 25;

/// The schema keys removed for servers older than [`CEL_MIN_MINOR`].
pub const KEYS_REFUSED_BEFORE_CEL: &[&str] = &["x-kubernetes-validations"];

/// The vendored CRD files, sorted by name.
pub fn crd_files() -> Vec<PathBuf> {
    let dir = repo_root().join("crds/gateway-api");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Removes every key in `keys` at any depth of `v`; returns how many were removed.
pub fn strip_keys(v: &mut Value, keys: &[&str]) -> usize {
    match v {
        Value::Object(map) => {
            let mut n = 0;
            for k in keys {
                if map.remove(*k).is_some() {
                    n += 1;
                }
            }
            n + map.values_mut().map(|x| strip_keys(x, keys)).sum::<usize>()
        }
        Value::Array(items) => items.iter_mut().map(|x| strip_keys(x, keys)).sum(),
        _ => 0,
    }
}

/// Removes every `default: ""` at any depth of `v`; returns how many were removed.
pub fn strip_empty_string_defaults(v: &mut Value) -> usize {
    match v {
        Value::Object(map) => {
            let mut n = 0;
            if map.get("default").is_some_and(|d| d.as_str() == Some("")) {
                map.remove("default");
                n += 1;
            }
            n + map
                .values_mut()
                .map(strip_empty_string_defaults)
                .sum::<usize>()
        }
        Value::Array(items) => items.iter_mut().map(strip_empty_string_defaults).sum(),
        _ => 0,
    }
}

/// `crd` as an API server of minor version `minor` (1.`minor`) accepts it, and how many keys
/// were removed for it: before 1.25 every [`KEYS_REFUSED_BEFORE_CEL`] and every empty-string
/// `default`.
pub fn for_server(mut crd: Value, minor: u32) -> (Value, usize) {
    if minor >= CEL_MIN_MINOR {
        return (crd, 0);
    }
    let n = strip_keys(&mut crd, KEYS_REFUSED_BEFORE_CEL) + strip_empty_string_defaults(&mut crd);
    (crd, n)
}

/// A Gateway API object (a route) as an API server of minor version `minor` accepts it, and how
/// many values were changed. The e2e 1.20 API server reads an empty string in a custom
/// resource as null and refuses it ("must be of type string: \"null\""), so before 1.25 every
/// `group: ""` of `parentRefs[]` and `backendRefs[]` becomes `group: core`, which weft reads as
/// the core group too (`weft_core::model::gateway::is_core_group`); the route means the same.
pub fn route_for_server(mut route: Value, minor: u32) -> (Value, usize) {
    if minor >= CEL_MIN_MINOR {
        return (route, 0);
    }
    let n = core_groups(&mut route);
    (route, n)
}

fn core_groups(v: &mut Value) -> usize {
    match v {
        Value::Object(map) => {
            let mut n = 0;
            for (k, x) in map.iter_mut() {
                if matches!(k.as_str(), "parentRefs" | "backendRefs") {
                    for r in x.as_array_mut().into_iter().flatten() {
                        if r.get("group").and_then(Value::as_str) == Some("") {
                            r["group"] = Value::String("core".into());
                            n += 1;
                        }
                    }
                }
                n += core_groups(x);
            }
            n
        }
        Value::Array(items) => items.iter_mut().map(core_groups).sum(),
        _ => 0,
    }
}

/// The server's minor version (`1.20` → 20; a `20+` suffix is ignored).
pub async fn server_minor(client: &kube::Client) -> Result<u32, String> {
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| format!("server version: {e}"))?;
    let digits: String = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .map_err(|_| format!("server minor version {:?}", info.minor))
}

/// What [`install`] did.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The CRDs' names (`httproutes.gateway.networking.k8s.io`).
    pub names: Vec<String>,
    /// The server's minor version.
    pub server_minor: u32,
    /// How many `x-kubernetes-validations` and empty-string defaults were removed (0 on 1.25
    /// and later).
    pub stripped: usize,
}

/// Applies every vendored Gateway API CRD (adapted with [`for_server`]) and waits until each is
/// `Established`.
pub async fn install(client: &kube::Client) -> Result<Installed, String> {
    let minor = server_minor(client).await?;
    let mut names = Vec::new();
    let mut stripped = 0;
    for file in crd_files() {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let crd: Value =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let (crd, n) = for_server(crd, minor);
        stripped += n;
        let name = crd["metadata"]["name"]
            .as_str()
            .ok_or_else(|| format!("{}: no metadata.name", file.display()))?
            .to_string();
        crate::apply::apply(client, &crd)
            .await
            .map_err(|e| format!("installing {name} (from {}): {e}", file.display()))?;
        names.push(name);
    }
    if names.is_empty() {
        return Err("no CRDs in crds/gateway-api".into());
    }
    let api: kube::Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = kube::Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for name in &names {
        loop {
            let established = api
                .get(name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("CRD {name} not Established within 30s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(Installed {
        names,
        server_minor: minor,
        stripped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendored() -> Vec<Value> {
        crd_files()
            .iter()
            .map(|f| serde_yaml::from_str(&std::fs::read_to_string(f).unwrap()).unwrap())
            .collect()
    }

    fn count(v: &Value, key: &str) -> usize {
        match v {
            Value::Object(m) => {
                usize::from(m.contains_key(key)) + m.values().map(|x| count(x, key)).sum::<usize>()
            }
            Value::Array(a) => a.iter().map(|x| count(x, key)).sum(),
            _ => 0,
        }
    }

    #[test]
    fn old_servers_get_core_for_empty_groups_of_routes() {
        let route = serde_json::json!({"spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "rules": [{"backendRefs": [{"group": "", "name": "a"}, {"name": "b"}]}]}});
        let (old, n) = route_for_server(route.clone(), 20);
        assert_eq!(n, 2);
        assert_eq!(old["spec"]["parentRefs"][0]["group"], "core");
        assert_eq!(old["spec"]["rules"][0]["backendRefs"][0]["group"], "core");
        assert!(old["spec"]["rules"][0]["backendRefs"][1]
            .get("group")
            .is_none());
        assert_eq!(route_for_server(route.clone(), 25), (route, 0));
    }

    #[test]
    fn old_servers_get_no_cel_rules_and_keep_the_rest_of_the_schema() {
        let crds = vendored();
        assert!(!crds.is_empty());
        for crd in crds {
            let before = count(&crd, "x-kubernetes-validations");
            assert!(before > 0, "the vendored CRD has CEL rules");
            let patterns = count(&crd, "pattern");
            let defaults = count(&crd, "default");
            let (old, n) = for_server(crd.clone(), 20);
            assert_eq!(count(&old, "x-kubernetes-validations"), 0);
            assert_eq!(count(&old, "pattern"), patterns, "other validation kept");
            let empty_defaults = defaults - count(&old, "default");
            assert_eq!(n, before + empty_defaults);
            assert!(count(&old, "default") > 0, "non-empty defaults kept");
            assert!(!serde_json::to_string(&old)
                .unwrap()
                .contains(r#""default":"""#));
            let (new, n) = for_server(crd.clone(), 25);
            assert_eq!((n, &new), (0, &crd), "1.25 and later get the CRD verbatim");
        }
    }
}
