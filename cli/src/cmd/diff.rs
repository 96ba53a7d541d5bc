//! `weft diff -f NEW -f BASE`: which proxies' config changes, and how, if NEW replaces BASE.
//!
//! Both folders are compiled exactly as the operator would; the difference is reported per
//! resource (an inbound policy, an outbound service, an endpoint set) with the proxies it
//! reaches, as field-level changes a reviewer of a GitOps pull request can read, followed by
//! changes in the status conditions of SMI objects.
//!
//! With `--cluster`, NEW is a pull request's folder, not a whole cluster: it is laid over the live
//! objects (an object of NEW replaces the live one of the same kind, namespace and name, whatever
//! the SMI version of either; others are added), and the live objects are compared with that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use weft_core::compile::{CompileOptions, CompileReport};

use super::routes::{compile_dir, report_of, Report};

use crate::OutputFormat;

/// One changed resource.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ResourceChange {
    /// `inbound`, `outbound:<svc>.<ns>` or `endpoints:<svc>.<ns>:<port>`.
    pub resource: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// Proxies (`namespace/pod`) whose config contains the change.
    pub proxies: Vec<String>,
    /// Field-level changes, as `path: old -> new`.
    pub details: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Diff {
    pub proxies_total: usize,
    pub proxies_changed: Vec<String>,
    pub proxies_added: Vec<String>,
    pub proxies_removed: Vec<String>,
    pub resources: Vec<ResourceChange>,
    /// `Kind ns/name: Type status(reason) -> status(reason)`.
    pub conditions: Vec<String>,
}

/// What NEW is compared with.
pub enum Base<'a> {
    Folder(&'a Path),
    /// The live cluster, with NEW laid over it.
    Cluster(&'a crate::cluster::ClusterArgs),
}

pub async fn run(new: &Path, base: Base<'_>, format: OutputFormat) -> anyhow::Result<u8> {
    if !new.exists() {
        bail!("{} does not exist", new.display());
    }
    let opts = CompileOptions::default();
    let (a, b) = match base {
        Base::Folder(dir) => {
            if !dir.exists() {
                bail!("{} does not exist", dir.display());
            }
            let a =
                compile_dir(dir, &opts).with_context(|| format!("compiling {}", dir.display()))?;
            for e in &a.base.load_errors {
                eprintln!("weft diff: {}: {}", e.path.display(), e.message);
            }
            let b =
                compile_dir(new, &opts).with_context(|| format!("compiling {}", new.display()))?;
            for e in &b.base.load_errors {
                eprintln!("weft diff: {}: {}", e.path.display(), e.message);
            }
            (a, b)
        }
        Base::Cluster(args) => cluster_reports(args, new, &opts).await?,
    };
    let d = diff(&a, &b)?;
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&d)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(&d)?),
        _ => print_text(&d),
    }
    // Like `diff`: 0 nothing changes, 1 something changes.
    Ok(if d.resources.is_empty() && d.conditions.is_empty() {
        0
    } else {
        1
    })
}

/// What laying NEW over the live objects did.
#[derive(Debug, Default, PartialEq)]
pub struct OverlayCounts {
    pub replaced: usize,
    pub added: usize,
}

/// `live` with every object of `overlay` in place of the live one with the same identity (kind,
/// namespace, name: one identity per kind whatever the SMI version), or added.
pub fn overlay(
    live: Vec<weft_core::model::ClusterObject>,
    overlay: Vec<weft_core::model::ClusterObject>,
) -> (Vec<weft_core::model::ClusterObject>, OverlayCounts) {
    let mut by_key: BTreeMap<weft_core::model::ObjectKey, weft_core::model::ClusterObject> =
        live.into_iter().map(|o| (o.key(), o)).collect();
    let mut counts = OverlayCounts::default();
    for o in overlay {
        match by_key.insert(o.key(), o) {
            Some(_) => counts.replaced += 1,
            None => counts.added += 1,
        }
    }
    (by_key.into_values().collect(), counts)
}

/// Reads what the operator reads from the cluster, lays NEW over it, and compiles both the same
/// way `weft compile` does: (live, live + NEW).
async fn cluster_reports(
    args: &crate::cluster::ClusterArgs,
    new: &Path,
    opts: &CompileOptions,
) -> anyhow::Result<(Report, Report)> {
    use weft_core::model::Model;

    let loaded =
        weft_manifests::load_dir(new).with_context(|| format!("reading {}", new.display()))?;
    for e in &loaded.errors {
        eprintln!("weft diff: {}: {}", e.path.display(), e.message);
    }
    let cluster = args.connect().await.context("--cluster needs a cluster")?;
    let live = live_objects(&cluster).await?;
    let live_count = live.len();
    let (merged, counts) = overlay(live.clone(), loaded.objects().cloned().collect());
    eprintln!(
        "weft diff: {} laid over {live_count} live objects of {}: {} replaced, {} added",
        new.display(),
        cluster.server,
        counts.replaced,
        counts.added
    );
    // Live: endpoints come from the cluster's endpoints controller. NEW may add a Service the
    // cluster has no endpoints for yet: derive those from pods, as the controller will.
    let base = Model::from_objects(live);
    let mut next = Model::from_objects(merged);
    next.derive_endpoints_from_pods = true;
    let a = report_of(&weft_core::compile::compile(&base, opts));
    let mut b = report_of(&weft_core::compile::compile(&next, opts));
    b.base.load_errors = loaded.errors.clone();
    Ok((a, b))
}

/// Every object of the kinds the compiler reads, from the cluster.
async fn live_objects(
    cluster: &crate::cluster::Cluster,
) -> anyhow::Result<Vec<weft_core::model::ClusterObject>> {
    use kube::api::{Api, DynamicObject, ListParams};
    use kube::discovery::ApiResource;
    use weft_core::model::ClusterObject;

    // Core kinds, then every SMI kind at its storage version (weft_smi::kinds).
    let mut kinds: Vec<(&str, &str, &str, &str)> = vec![
        ("", "v1", "Namespace", "namespaces"),
        ("", "v1", "ServiceAccount", "serviceaccounts"),
        ("", "v1", "Pod", "pods"),
        ("", "v1", "Service", "services"),
        ("", "v1", "Endpoints", "endpoints"),
    ];
    kinds.extend(
        weft_smi::kinds::SMI_KINDS
            .iter()
            .map(|k| (k.group, k.storage().name, k.kind, k.plural)),
    );
    // Gateway API routes (GAMMA), where the cluster serves them.
    kinds.extend(super::routes::ROUTE_KINDS.iter().copied());
    let mut objects = Vec::new();
    for (group, version, kind, plural) in kinds {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let ar = ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: api_version.clone(),
            kind: kind.to_string(),
            plural: plural.to_string(),
        };
        let api: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &ar);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.code == 404 && !group.is_empty() => {
                eprintln!(
                    "weft diff: the cluster does not serve {api_version} {plural}; none read"
                );
                continue;
            }
            Err(e @ kube::Error::Api(_)) => {
                bail!(
                    "listing {plural} ({api_version}) on {}: {}",
                    cluster.server,
                    crate::cluster::kube_error(&e)
                )
            }
            Err(e) => return Err(cluster.unreachable(&e)),
        };
        for item in list.items {
            let mut v = serde_json::to_value(&item)?;
            v["apiVersion"] = Value::String(api_version.clone());
            v["kind"] = Value::String(kind.to_string());
            match ClusterObject::from_value(&v) {
                Ok(o) => objects.push(o),
                Err(e) => eprintln!(
                    "weft diff: skipping live {kind} {}/{}: {e}",
                    item.metadata.namespace.unwrap_or_default(),
                    item.metadata.name.unwrap_or_default()
                ),
            }
        }
    }
    Ok(objects)
}

/// Every resource of every proxy, as JSON, by resource name then proxy.
fn resources(r: &CompileReport) -> anyhow::Result<BTreeMap<String, BTreeMap<String, Value>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for (proxy, p) in &r.proxies {
        out.entry("inbound".into())
            .or_default()
            .insert(proxy.clone(), serde_json::to_value(&p.inbound)?);
        for (name, o) in &p.outbound {
            out.entry(name.clone())
                .or_default()
                .insert(proxy.clone(), serde_json::to_value(o)?);
        }
        for (name, e) in &p.endpoints {
            out.entry(name.clone())
                .or_default()
                .insert(proxy.clone(), serde_json::to_value(e)?);
        }
    }
    Ok(out)
}

pub fn diff(ra_report: &Report, rb_report: &Report) -> anyhow::Result<Diff> {
    let (a, b) = (&ra_report.base, &rb_report.base);
    let ra = resources(a)?;
    let rb = resources(b)?;
    let pa: BTreeSet<&String> = a.proxies.keys().collect();
    let pb: BTreeSet<&String> = b.proxies.keys().collect();
    let mut d = Diff {
        proxies_total: pb.len(),
        proxies_added: pb.difference(&pa).map(|s| s.to_string()).collect(),
        proxies_removed: pa.difference(&pb).map(|s| s.to_string()).collect(),
        ..Diff::default()
    };
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let names: BTreeSet<&String> = ra.keys().chain(rb.keys()).collect();
    let empty = BTreeMap::new();
    for name in names {
        let before = ra.get(name).unwrap_or(&empty);
        let after = rb.get(name).unwrap_or(&empty);
        // Group the proxies (present in both) by the (old, new) pair they see.
        let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for proxy in pa.intersection(&pb) {
            let old = before.get(*proxy);
            let new = after.get(*proxy);
            if old == new {
                continue;
            }
            let key = (
                old.map(Value::to_string).unwrap_or_default(),
                new.map(Value::to_string).unwrap_or_default(),
            );
            groups.entry(key).or_default().push(proxy.to_string());
        }
        for ((old, new), proxies) in groups {
            changed.extend(proxies.iter().cloned());
            let old_v: Option<Value> = serde_json::from_str(&old).ok();
            let new_v: Option<Value> = serde_json::from_str(&new).ok();
            let (change, details) = match (&old_v, &new_v) {
                (None, Some(_)) => ("added", Vec::new()),
                (Some(_), None) => ("removed", Vec::new()),
                (Some(o), Some(n)) => ("changed", leaf_changes(o, n)),
                (None, None) => continue,
            };
            d.resources.push(ResourceChange {
                resource: name.clone(),
                change: change.into(),
                proxies,
                details,
            });
        }
    }
    d.proxies_changed = changed.into_iter().collect();

    let conds =
        |r: &CompileReport| -> BTreeMap<(String, String, String), BTreeMap<String, String>> {
            r.objects
                .iter()
                .map(|o| {
                    (
                        (o.kind.clone(), o.namespace.clone(), o.name.clone()),
                        o.conditions
                            .iter()
                            .map(|c| {
                                (
                                    c.type_.clone(),
                                    format!("{}({}): {}", c.status, c.reason, c.message),
                                )
                            })
                            .collect(),
                    )
                })
                .collect()
        };
    // SMI objects' conditions, then Gateway API routes' per-parent conditions.
    let (mut ca, mut cb) = (conds(a), conds(b));
    ca.extend(super::routes::condition_lines(&ra_report.routes));
    cb.extend(super::routes::condition_lines(&rb_report.routes));
    let keys: BTreeSet<_> = ca.keys().chain(cb.keys()).collect();
    for k in keys {
        let (kind, ns, name) = k;
        match (ca.get(k), cb.get(k)) {
            (None, Some(_)) => d.conditions.push(format!("{kind} {ns}/{name}: new object")),
            (Some(_), None) => d.conditions.push(format!("{kind} {ns}/{name}: deleted")),
            (Some(x), Some(y)) => {
                let types: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for t in types {
                    let (o, n) = (x.get(t), y.get(t));
                    if o != n {
                        d.conditions.push(format!(
                            "{kind} {ns}/{name}: {t} {} -> {}",
                            o.map(String::as_str).unwrap_or("(none)"),
                            n.map(String::as_str).unwrap_or("(none)")
                        ));
                    }
                }
            }
            (None, None) => {}
        }
    }
    Ok(d)
}

/// Field-level differences, with array elements named by their `name`, `port`, `service` or `ip`.
pub fn leaf_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x != y => out.push(format!("{k}: {x} -> {y}")),
            (Some(x), None) => out.push(format!("{k}: {x} -> (removed)")),
            (None, Some(y)) => out.push(format!("{k}: (added) -> {y}")),
            _ => {}
        }
    }
    out
}

fn element_key(v: &Value, i: usize) -> String {
    for k in ["name", "port", "service", "ip", "pod"] {
        if let Some(x) = v.get(k) {
            let s = match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            return format!("[{k}={s}]");
        }
    }
    format!("[{i}]")
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            for (i, x) in items.iter().enumerate() {
                flatten(&format!("{prefix}{}", element_key(x, i)), x, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn print_text(d: &Diff) {
    if d.resources.is_empty() && d.conditions.is_empty() {
        println!("no proxy's config changes, and no status condition changes");
        return;
    }
    println!(
        "{} of {} proxies get a new config{}{}",
        d.proxies_changed.len(),
        d.proxies_total,
        if d.proxies_added.is_empty() {
            String::new()
        } else {
            format!("; new proxies: {}", d.proxies_added.join(", "))
        },
        if d.proxies_removed.is_empty() {
            String::new()
        } else {
            format!("; gone: {}", d.proxies_removed.join(", "))
        },
    );
    for r in &d.resources {
        let who = if r.proxies.len() > 4 {
            format!("{} proxies", r.proxies.len())
        } else {
            r.proxies.join(", ")
        };
        println!("\n{} {} (for {who})", r.resource, r.change);
        for line in &r.details {
            println!("  {line}");
        }
    }
    if !d.conditions.is_empty() {
        println!("\nstatus conditions:");
        for c in &d.conditions {
            println!("  {c}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(yaml: &str) -> weft_core::model::ClusterObject {
        let v: Value = serde_yaml::from_str(yaml).expect("yaml");
        weft_core::model::ClusterObject::from_value(&v).expect("object")
    }

    fn split(version: &str, name: &str, v1: u32, v2: u32) -> weft_core::model::ClusterObject {
        obj(&format!(
            "apiVersion: split.smi-spec.io/{version}\nkind: TrafficSplit\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{service: web, backends: [{{service: web-v1, weight: {v1}}}, {{service: web-v2, weight: {v2}}}]}}\n"
        ))
    }

    #[test]
    fn overlay_replaces_by_identity_across_versions_and_adds_the_rest() {
        let ns = obj("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
        let live = vec![ns, split("v1alpha4", "canary", 90, 10)];
        let pr = vec![
            split("v1alpha2", "canary", 50, 50),
            split("v1alpha4", "other", 1, 1),
        ];
        let (merged, counts) = overlay(live, pr);
        assert_eq!(
            counts,
            OverlayCounts {
                replaced: 1,
                added: 1
            }
        );
        assert_eq!(
            merged.len(),
            3,
            "the namespace stays, canary replaced, other added"
        );
        let canary = merged
            .iter()
            .filter(|o| o.key().name == "canary")
            .collect::<Vec<_>>();
        assert_eq!(canary.len(), 1, "one identity whatever the SMI version");
        let text = format!("{:?}", canary[0]);
        assert!(text.contains("50"), "the PR's weights: {text}");
    }

    #[test]
    fn leaf_changes_name_array_elements() {
        let old = serde_json::json!({"ports": [{"port": 8080, "routes": [{"name": "split:demo/a", "backends": [{"service": "v1", "weight": 90}, {"service": "v2", "weight": 10}]}]}]});
        let new = serde_json::json!({"ports": [{"port": 8080, "routes": [{"name": "split:demo/a", "backends": [{"service": "v1", "weight": 50}, {"service": "v2", "weight": 50}]}]}]});
        let c = leaf_changes(&old, &new);
        assert_eq!(
            c,
            vec![
                "ports[port=8080].routes[name=split:demo/a].backends[service=v1].weight: 90 -> 50",
                "ports[port=8080].routes[name=split:demo/a].backends[service=v2].weight: 10 -> 50",
            ]
        );
    }
}
