//! One call for Kubernetes end-to-end tests: a control plane, the kubelet stand-in running pods
//! from the images `scripts/build-images.sh` builds, or a loud skip saying what is missing (a
//! failure in CI).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::Value;

use crate::cluster::{skip, Binaries, Cluster, ClusterOptions};
use crate::images::ImageStore;
use crate::kubelet::{self, Images, Kubelet, KubeletConfig, KubeletHandle};

/// The chart value every test install passes: the e2e API server (Kubernetes 1.20) fails the Helm
/// SDK's server-side apply of an APIService, so the chart's APIServices are not registered; a test
/// that needs them (`kube_traffic_metrics`) creates them with a plain create.
pub const NO_API_SERVICES: &str = "metricsApi.registerAPIService=false";

/// The workspace binaries a mesh test runs outside pods (next to the images pods run from).
pub const MESH_BINS: &[&str] = &["weft-proxy", "weft-proxy-init", "weft-operator"];

/// How every test that installs the chart starts: [`kube_env`] with [`MESH_BINS`] and the Helm
/// SDK ready. `None` (after a loud skip; a panic in CI) when either is unavailable.
pub async fn mesh_env(test: &str, test_app: &std::path::Path) -> Option<KubeEnv> {
    let env = kube_env(test, MESH_BINS, test_app).await?;
    env.helm_ready(test).then_some(env)
}

/// A Service `ns/name` selecting `selector`, port 80 (`http`) to the test app's 8080: the
/// shape every mesh test's Services have.
pub fn http_service(ns: &str, name: &str, selector: Value) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// An SMI `split.smi-spec.io/v1alpha4` TrafficSplit `ns/name` of `service` over `backends`
/// (`(service, weight)`).
pub fn traffic_split(ns: &str, name: &str, service: &str, backends: &[(&str, u32)]) -> Value {
    let backends: Vec<Value> = backends
        .iter()
        .map(|(service, weight)| serde_json::json!({"service": service, "weight": weight}))
        .collect();
    serde_json::json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"service": service, "backends": backends}})
}

/// Everything a test needs. Dropping it stops the kubelet (cleaning namespaces, bridge and
/// rules) and then the control plane.
pub struct KubeEnv {
    pub kubelet: Option<KubeletHandle>,
    pub cluster: Cluster,
    pub client: kube::Client,
    /// The kubelet's folder (see [`kubelet::pod_dir`]).
    pub state_dir: PathBuf,
    /// The workspace's debug binaries named in `kube_env`'s `bins` (symlinks), for tests that
    /// run them outside pods. Pods run from [`KubeEnv::images`].
    pub bin_dir: PathBuf,
    /// The images pods run from.
    pub images: Arc<ImageStore>,
    _bins: tempfile::TempDir,
    _state: tempfile::TempDir,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

fn lock() -> Arc<tokio::sync::Mutex<()>> {
    static LOCK: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    LOCK.get_or_init(|| Arc::new(tokio::sync::Mutex::new(())))
        .clone()
}

/// Starts a control plane and the kubelet, whose pods run from the built images (built by
/// `scripts/build-images.sh` here when its cache does not match the sources; a failure to build
/// them skips the test, and fails it in CI). `bins`: workspace debug binaries the test runs
/// outside pods (see [`KubeEnv::bin_dir`]); `test_app`: `env!("CARGO_BIN_EXE_weft-test-app")`
/// (exposed in `bin_dir` too). `None` (after a loud skip message; a panic in CI) when the
/// environment cannot run the test.
pub async fn kube_env(test: &str, bins: &[&str], test_app: &std::path::Path) -> Option<KubeEnv> {
    let guard = lock().lock_owned().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("WEFT_E2E_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    if let Some(why) = kubelet::missing_requirements() {
        skip(test, &why);
        return None;
    }
    let kube_bins = match tokio::task::spawn_blocking(Binaries::locate_or_build).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            skip(test, &e.to_string());
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let built = crate::workspace::bin_dir(bins, &[("weft-test-app", test_app)]);
    let (bins_dir, bin_dir) = match built {
        Ok(x) => x,
        Err(e) => {
            skip(test, &format!("workspace binaries unavailable: {e}"));
            return None;
        }
    };
    let images = match tokio::task::spawn_blocking(ImageStore::ensure).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            skip(test, &format!("images: {e}"));
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    kubelet::cleanup_host();
    if let Err(e) = kubelet::ensure_bridge().await {
        panic!("{test}: creating the bridge: {e}");
    }
    let opts = ClusterOptions {
        extra_ips: vec![],
        bind_address: kubelet::GATEWAY.to_string(),
    };
    let cluster = match Cluster::start(&kube_bins, opts).await {
        Ok(c) => c,
        Err(e) => panic!("{test}: control plane: {e}"),
    };
    let client = cluster
        .client()
        .await
        .unwrap_or_else(|e| panic!("{test}: client: {e}"));
    let state = tempfile::Builder::new()
        .prefix("weft-kubelet-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_path_buf();
    let handle = Kubelet::start(
        client.clone(),
        KubeletConfig {
            node_name: "weft-e2e".into(),
            images: Images {
                store: images.clone(),
            },
            api_server: cluster.server.clone(),
            api_ca_pem: cluster.ca_pem.clone(),
            state_dir: state_dir.clone(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{test}: kubelet: {e}"));
    Some(KubeEnv {
        kubelet: Some(handle),
        cluster,
        client,
        state_dir,
        bin_dir,
        images,
        _bins: bins_dir,
        _state: state,
        _guard: guard,
    })
}

impl KubeEnv {
    /// Stops the kubelet cleanly (then drop the rest).
    pub async fn shutdown(mut self) {
        if let Some(k) = self.kubelet.take() {
            k.shutdown().await;
        }
    }

    /// Creates a namespace with annotations.
    pub async fn namespace(&self, name: &str, annotations: Value) {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": annotations}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    }

    /// Creates any namespaced object from JSON (`apiVersion`, `kind`, `metadata.namespace`),
    /// retrying while the namespace's ServiceAccount is not ready yet.
    pub async fn create(&self, obj: Value) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match crate::apply::create(&self.client, &obj).await {
                Ok(v) => return v,
                Err(e)
                    if tokio::time::Instant::now() < deadline && e.contains("serviceaccount") =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("creating {}: {e}", obj["metadata"]["name"]),
            }
        }
    }

    /// Installs weft with the chart exactly as docs/install.md says (`helm install --namespace
    /// weft-system --name weft`, plus the test cluster's kubeconfig) and waits until the
    /// operator's pod (run by the kubelet stand-in) is Ready; returns its name.
    ///
    /// The chart's APIServices are not registered ([`NO_API_SERVICES`]).
    pub async fn install_weft(&self) -> String {
        self.install_weft_with(&[]).await
    }

    /// As [`KubeEnv::install_weft`], with chart values (`key=value`, each passed as `--set`).
    pub async fn install_weft_with(&self, values: &[&str]) -> String {
        let mut args = vec!["install", "--namespace", "weft-system", "--name", "weft"];
        for v in std::iter::once(&NO_API_SERVICES).chain(values) {
            args.extend(["--set", v]);
        }
        let out = self.helm(&args);
        assert!(
            out.status.success(),
            "helm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let operator_pod = loop {
            let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), "weft-system");
            let list = pods.list(&Default::default()).await.expect("list pods");
            if let Some(p) = list.items.first().and_then(|p| p.metadata.name.clone()) {
                break p;
            }
            assert!(tokio::time::Instant::now() < deadline, "no operator pod");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        self.wait_ready("weft-system", &operator_pod, Duration::from_secs(90))
            .await;
        operator_pod
    }

    /// Crashes pod `ns/name`: SIGKILLs every process in its network namespace (no chance to
    /// shut down, e.g. to release a Lease or close streams) and deletes the pod at once (so it
    /// does not come back under the same name).
    pub async fn crash_pod(&self, ns: &str, name: &str) {
        let netns = kubelet::netns_of(&self.state_dir, ns, name)
            .unwrap_or_else(|| panic!("no netns for {ns}/{name}"));
        let pids = kubelet::run("ip", &["netns", "pids", &netns])
            .await
            .unwrap_or_else(|e| panic!("listing the processes of {ns}/{name}: {e}"));
        let pids: Vec<&str> = pids.split_whitespace().collect();
        assert!(!pids.is_empty(), "{ns}/{name} runs no process");
        let mut args = vec!["-KILL"];
        args.extend(pids.iter().copied());
        kubelet::run("kill", &args)
            .await
            .unwrap_or_else(|e| panic!("killing {ns}/{name}: {e}"));
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.delete(
            name,
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("deleting {ns}/{name}: {e}"));
    }

    /// Waits for a pod to be Ready and returns it.
    pub async fn wait_ready(&self, ns: &str, name: &str, limit: Duration) -> Pod {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pod = api.get_opt(name).await.ok().flatten();
            if let Some(p) = &pod {
                let st = p.status.clone().unwrap_or_default();
                let ready = st
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if ready {
                    return p.clone();
                }
                if st.phase.as_deref() == Some("Failed") {
                    panic!("pod {ns}/{name} failed: {:?}", st.message);
                }
            }
            if tokio::time::Instant::now() > deadline {
                let logs = self.logs(ns, name);
                panic!("pod {ns}/{name} not ready within {limit:?}: {pod:?}\nlogs:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// All container logs of a pod (for failure messages).
    pub fn logs(&self, ns: &str, name: &str) -> String {
        let dir = kubelet::pod_dir(&self.state_dir, ns, name);
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let s = std::fs::read_to_string(e.path()).unwrap_or_default();
                    out.push_str(&format!("== {}\n{}\n", e.path().display(), s));
                }
            }
        }
        out
    }

    /// Runs a command inside a pod's network namespace, optionally as `uid`.
    pub async fn exec(
        &self,
        ns: &str,
        pod: &str,
        uid: Option<u32>,
        argv: &[&str],
    ) -> std::process::Output {
        let netns = kubelet::netns_of(&self.state_dir, ns, pod)
            .unwrap_or_else(|| panic!("no netns for {ns}/{pod}"));
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &netns]);
        if let Some(uid) = uid {
            cmd.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
            ]);
        }
        cmd.args(argv);
        tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("exec {argv:?} timed out"))
            .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"))
    }
}

/// Polls `probe` (every 300 ms) until `check` holds for what it returns; panics after `limit`
/// with `what` and the last value.
pub async fn eventually<T, F, Fut>(
    what: &str,
    limit: Duration,
    mut probe: F,
    check: impl Fn(&T) -> bool,
) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got = probe().await;
        if check(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not so after {limit:?}; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl KubeEnv {
    /// Runs `e2e/scripts/helm.py ARGS --kubeconfig <this cluster>` (the Helm v4 SDK).
    pub fn helm(&self, args: &[&str]) -> std::process::Output {
        let kubeconfig = self.cluster.kubeconfig.display().to_string();
        std::process::Command::new("python3")
            .arg(crate::cluster::repo_root().join("e2e/scripts/helm.py"))
            .args(args)
            .args(["--kubeconfig", &kubeconfig])
            .output()
            .unwrap_or_else(|e| panic!("helm.py: {e}"))
    }

    /// Prepares the Helm SDK (`helm.py setup`); `false` after a loud skip when it cannot be
    /// installed (a panic in CI, see [`crate::cluster::skip`]).
    pub fn helm_ready(&self, test: &str) -> bool {
        let setup = self.helm(&["setup"]);
        if !setup.status.success() {
            crate::cluster::skip(
                test,
                &format!(
                    "helm-python-sdk unavailable: {}",
                    String::from_utf8_lossy(&setup.stderr)
                ),
            );
        }
        setup.status.success()
    }
}
