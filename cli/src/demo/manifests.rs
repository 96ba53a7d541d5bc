//! The demo's manifest directory: what a user would `kubectl apply`, with pod IPs filled in as a
//! kubelet would report them (each "pod" is a loopback address on this machine).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Where every demo process listens.
#[derive(Clone, Debug)]
pub struct Layout {
    /// First three octets of the loopback /24 the demo uses, e.g. `127.42.0`.
    pub prefix: [u8; 3],
}

/// A demo pod: one loopback address with an app (maybe) and a proxy.
#[derive(Clone, Debug)]
pub struct DemoPod {
    pub name: &'static str,
    pub service_account: &'static str,
    pub app: &'static str,
    pub version: Option<&'static str>,
    /// The app serves HTTP on APP_PORT (callers have no server).
    pub serves: bool,
    pub host: u8,
}

pub const NAMESPACE: &str = "demo";
/// The `pod-template-hash` of the demo's pods (each a Deployment's single pod).
pub const POD_TEMPLATE_HASH: &str = "7c9b4d5f8";
pub const APP_PORT: u16 = 8080;
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const PROXY_ADMIN_PORT: u16 = 4191;
/// The proxies' tap port (`WEFT_PROXY_TAP_ADDR`; the operator reads it for `weft tap`).
pub const PROXY_TAP_PORT: u16 = 4190;
pub const DISCOVERY_PORT: u16 = 8086;
pub const OPERATOR_ADMIN_PORT: u16 = 9990;

pub const PODS: &[DemoPod] = &[
    DemoPod {
        name: "frontend-0",
        service_account: "frontend",
        app: "frontend",
        version: None,
        serves: false,
        host: 10,
    },
    DemoPod {
        name: "batch-0",
        service_account: "batch",
        app: "batch",
        version: None,
        serves: false,
        host: 11,
    },
    DemoPod {
        name: "api-v1-0",
        service_account: "api",
        app: "api",
        version: Some("v1"),
        serves: true,
        host: 20,
    },
    DemoPod {
        name: "api-v2-0",
        service_account: "api",
        app: "api",
        version: Some("v2"),
        serves: true,
        host: 21,
    },
];

impl DemoPod {
    /// The Deployment the pod belongs to: `api-v1` for `api-v1-0`.
    pub fn deployment(&self) -> &'static str {
        self.name.strip_suffix("-0").unwrap_or(self.name)
    }
}

impl Layout {
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host)
    }
    pub fn operator_ip(&self) -> Ipv4Addr {
        self.ip(1)
    }
    /// A fake ClusterIP for service `n` (never connected to: clients use explicit mode).
    pub fn cluster_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(
            self.prefix[0],
            self.prefix[1],
            self.prefix[2].wrapping_add(1),
            n,
        )
    }
    pub fn pod(&self, name: &str) -> Option<&'static DemoPod> {
        PODS.iter().find(|p| p.name == name)
    }
}

/// `mesh.yaml`: namespace, service accounts, pods, services.
pub fn mesh_yaml(layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The demo mesh: edit, add or delete files in this folder and weft-operator picks the change up.\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  annotations:\n    \
         # Until a TrafficTarget names a destination, everything may call it.\n    \
         weft.io/default-inbound-policy: allow"
    );
    for sa in ["frontend", "batch", "api"] {
        let _ = writeln!(
            out,
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {NAMESPACE}"
        );
    }
    for pod in PODS {
        let mut labels = format!("    app: {}\n    weft.io/proxy-version: v0.1.0\n", pod.app);
        if let Some(v) = pod.version {
            let _ = writeln!(labels, "    version: {v}");
        }
        let ports = if pod.serves {
            format!("      ports:\n      - name: http\n        containerPort: {APP_PORT}\n")
        } else {
            String::new()
        };
        // #18: owned as a Deployment's pod is (via its ReplicaSet), so that the endpoint's
        // `workload` names the same Deployment as the proxy's WEFT_PROXY_WORKLOAD.
        let _ = writeln!(labels, "    pod-template-hash: {POD_TEMPLATE_HASH}");
        let owner = format!(
            "  ownerReferences:\n    - apiVersion: apps/v1\n      kind: ReplicaSet\n      name: {}-{POD_TEMPLATE_HASH}\n      uid: 00000000-0000-0000-0000-0000000000{:02x}\n      controller: true\n",
            pod.deployment(),
            pod.host
        );
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n{owner}  labels:\n{labels}\
             spec:\n  serviceAccountName: {sa}\n  containers:\n    - name: {app}\n      image: weft/demo-app\n{ports}\
             status:\n  phase: Running\n  podIP: {ip}\n  conditions:\n    - type: Ready\n      status: \"True\"\n",
            name = pod.name,
            sa = pod.service_account,
            app = pod.app,
            ip = layout.ip(pod.host),
        );
    }
    let services: [(&str, Option<&str>, u8); 3] = [
        ("api", None, 10),
        ("api-v1", Some("v1"), 11),
        ("api-v2", Some("v2"), 12),
    ];
    for (name, version, n) in services {
        let mut selector = String::from("    app: api\n");
        if let Some(v) = version {
            let _ = writeln!(selector, "    version: {v}");
        }
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
             spec:\n  clusterIP: {ip}\n  selector:\n{selector}  ports:\n    - name: http\n      port: {APP_PORT}\n      targetPort: http\n",
            ip = layout.cluster_ip(n),
        );
    }
    out
}

/// `routes.yaml`: the route groups the split and the access policy refer to.
pub fn routes_yaml() -> String {
    format!(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n  name: api-routes\n  namespace: {NAMESPACE}\n\
         spec:\n  matches:\n    - name: list-items\n      pathRegex: /items\n      methods: [GET]\n    \
         - name: health\n      pathRegex: /healthz\n      methods: [GET, HEAD]\n"
    )
}

/// `split.yaml`: the canary, with `api-v2` at `v2_weight` percent.
pub fn split_yaml(v2_weight: u32) -> String {
    let v1 = 100u32.saturating_sub(v2_weight);
    format!(
        "# The canary: clients of `api` reach api-v1 and api-v2 in proportion to these weights.\n\
         apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: api-canary\n  namespace: {NAMESPACE}\n\
         spec:\n  service: api\n  backends:\n    - service: api-v1\n      weight: {v1}\n    - service: api-v2\n      weight: {v2_weight}\n"
    )
}

/// `route.yaml` (`weft demo --gateway-api`): the same canary as a Gateway API HTTPRoute whose
/// parent is the `api` Service (GAMMA), with `api-v2` at `v2_weight` percent.
pub fn route_yaml(v2_weight: u32) -> String {
    let v1 = 100u32.saturating_sub(v2_weight);
    format!(
        "# The canary as a Gateway API HTTPRoute: its parent is the `api` Service, so callers of `api`\n\
         # reach api-v1 and api-v2 in proportion to these weights (what Flagger and Argo Rollouts write).\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: api-canary\n  namespace: {NAMESPACE}\n\
         spec:\n  parentRefs:\n    - group: \"\"\n      kind: Service\n      name: api\n      port: {APP_PORT}\n  \
         rules:\n    - backendRefs:\n        - name: api-v1\n          port: {APP_PORT}\n          weight: {v1}\n        \
         - name: api-v2\n          port: {APP_PORT}\n          weight: {v2_weight}\n"
    )
}

/// `access.yaml`: only `frontend` may call `api`, and only `GET /items` and the health check.
pub fn access_yaml() -> String {
    format!(
        "# Once a TrafficTarget names the `api` service account, only what TrafficTargets allow reaches it.\n\
         apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata:\n  name: api-access\n  namespace: {NAMESPACE}\n\
         spec:\n  destination:\n    kind: ServiceAccount\n    name: api\n    namespace: {NAMESPACE}\n  \
         rules:\n    - kind: HTTPRouteGroup\n      name: api-routes\n      matches: [list-items, health]\n  \
         sources:\n    - kind: ServiceAccount\n      name: frontend\n      namespace: {NAMESPACE}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_is_valid_yaml_with_kind() {
        let layout = Layout {
            prefix: [127, 42, 0],
        };
        let all = [
            mesh_yaml(&layout),
            routes_yaml(),
            split_yaml(10),
            route_yaml(10),
            access_yaml(),
        ]
        .join("---\n");
        let mut kinds = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&all) {
            let v = serde_yaml::Value::deserialize(doc).expect("valid yaml");
            kinds.push(v["kind"].as_str().expect("kind").to_owned());
        }
        assert_eq!(kinds.iter().filter(|k| *k == "Pod").count(), PODS.len());
        assert!(kinds.contains(&"TrafficSplit".to_owned()));
        assert!(kinds.contains(&"TrafficTarget".to_owned()));
        assert!(kinds.contains(&"HTTPRoute".to_owned()));
    }

    #[test]
    fn the_route_compiles_to_the_canary_weights_and_is_accepted() {
        let layout = Layout {
            prefix: [127, 42, 0],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(&layout)).expect("write");
        std::fs::write(dir.path().join("route.yaml"), route_yaml(10)).expect("write");
        let report = crate::cmd::routes::compile_dir(
            dir.path(),
            &weft_core::compile::CompileOptions::default(),
        )
        .expect("compiles");
        assert!(
            report.base.load_errors.is_empty(),
            "{:?}",
            report.base.load_errors
        );
        assert_eq!(report.routes.len(), 1);
        let r = &report.routes[0];
        let check = crate::cmd::routes::judge_route(r);
        assert_eq!(check.outcome, crate::cmd::check::Outcome::Ok, "{check:?}");
        assert_eq!(
            r.compiled_to.first().map(|c| c.backends.clone()),
            Some(vec!["api-v1=90".to_string(), "api-v2=10".to_string()]),
            "{r:?}"
        );
    }

    #[test]
    fn split_weights_sum_to_100() {
        let y: serde_yaml::Value = serde_yaml::from_str(&split_yaml(10)).expect("yaml");
        let b = &y["spec"]["backends"];
        assert_eq!(b[0]["weight"].as_u64(), Some(90));
        assert_eq!(b[1]["weight"].as_u64(), Some(10));
    }

    use serde::Deserialize;
}
