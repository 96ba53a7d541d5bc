//! A kubelet stand-in for a machine with no container runtime.
//!
//! It watches Pods, and for each one (with no `nodeName`, or this node's): creates a network
//! namespace with a veth pair to the bridge `weftbr0` (198.18.0.1/16) and an address from
//! 198.18.0.0/16, runs the init containers to completion and then the containers, each from its
//! image (built by `scripts/build-images.sh`, see [`crate::images`]): the image's entrypoint and
//! cmd overridden by the container's `command`/`args` as Kubernetes does, chrooted into an
//! overlay of the image's unpacked root filesystem, in the pod's network namespace and a private
//! mount namespace, as the image's `User` unless `runAsUser`/`runAsGroup` say otherwise. Projected
//! ServiceAccount tokens and Secrets are written to files and bind-mounted at their `mountPath`s,
//! `/etc/hosts` and `/etc/resolv.conf` come from the pod's netns files, and every container gets
//! a kubeconfig for its ServiceAccount at [`KUBECONFIG_PATH`] (in place of in-cluster config). A
//! container that cannot start (its command or a shared library missing from the image: exit
//! 126/127, or the mounts failing: 125) fails its pod. Readiness is probed and the Pod status
//! patched (`podIP`, `phase: Running`, `Ready`).
//!
//! Service names resolve through `/etc/netns/<ns>/hosts` to ClusterIPs, and a small kube-proxy
//! (host iptables, chains `WEFT_E2E_SVC`/`WEFT_E2E_MASQ`) DNATs ClusterIPs to ready endpoints.
//! Only 198.18.0.0/15 and loopback addresses are used; every packet stays in the machine.
//! [`Kubelet::shutdown`] (or drop) kills the processes and removes namespaces, bridge and rules.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Endpoints, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};

use crate::images::{Image, ImageStore};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// The bridge pods attach to.
pub const BRIDGE: &str = "weftbr0";
/// The host's address on the bridge (pods' default gateway; the API server listens here too).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SVC_CHAIN: &str = "WEFT_E2E_SVC";
const MASQ_CHAIN: &str = "WEFT_E2E_MASQ";

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("`{cmd}` failed: {msg}")]
    Command { cmd: String, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("pod {pod}: {msg}")]
    Pod { pod: String, msg: String },
}

/// Runs a command to completion; errors carry its stderr.
pub async fn run(cmd: &str, args: &[&str]) -> Result<String, KubeletError> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(cmd).args(args).output(),
    )
    .await
    .map_err(|_| KubeletError::Command {
        cmd: format!("{cmd} {}", args.join(" ")),
        msg: "timed out".into(),
    })??;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(KubeletError::Command {
            cmd: format!("{cmd} {}", args.join(" ")),
            msg: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn run_sync(cmd: &str, args: &[&str]) {
    let _ = std::process::Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Creates the bridge (idempotent). Needs root.
pub async fn ensure_bridge() -> Result<(), KubeletError> {
    if run("ip", &["link", "show", BRIDGE]).await.is_err() {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"]).await?;
    }
    let addrs = run("ip", &["-4", "addr", "show", "dev", BRIDGE]).await?;
    if !addrs.contains(&format!("{GATEWAY}/")) {
        run(
            "ip",
            &["addr", "add", &format!("{GATEWAY}/16"), "dev", BRIDGE],
        )
        .await?;
    }
    run("ip", &["link", "set", BRIDGE, "up"]).await?;
    Ok(())
}

/// Where a container finds the kubeconfig the kubelet writes for its ServiceAccount
/// (`KUBECONFIG` points there).
pub const KUBECONFIG_PATH: &str = "/var/run/weft-e2e/kubeconfig";

/// The images pods run from (see [`crate::images`] for which image an `image:` maps to).
#[derive(Clone, Debug)]
pub struct Images {
    pub store: Arc<ImageStore>,
}

impl Images {
    /// The image a container runs from and its argv, by Kubernetes' rules: `command` replaces
    /// the image's `Entrypoint` (and drops its `Cmd`), `args` replaces `Cmd`.
    pub fn resolve(&self, c: &Container) -> Result<(&Image, Vec<String>), String> {
        let image_ref = c.image.clone().unwrap_or_default();
        let image = self
            .store
            .for_image(&image_ref)
            .ok_or_else(|| format!("no image for {image_ref:?}"))?;
        let command = c.command.clone().filter(|v| !v.is_empty());
        let args = c.args.clone().filter(|v| !v.is_empty());
        let argv: Vec<String> = match (command, args) {
            (Some(cmd), args) => cmd.into_iter().chain(args.unwrap_or_default()).collect(),
            (None, Some(args)) => image
                .config
                .entrypoint
                .iter()
                .cloned()
                .chain(args)
                .collect(),
            (None, None) => image
                .config
                .entrypoint
                .iter()
                .chain(&image.config.cmd)
                .cloned()
                .collect(),
        };
        if argv.is_empty() {
            return Err(format!(
                "container {}: no command (image {} has no entrypoint or cmd)",
                c.name, image.reference
            ));
        }
        Ok((image, argv))
    }
}

/// Settings of the kubelet.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub node_name: String,
    pub images: Images,
    /// `https://198.18.0.1:<port>`: the API server as pods see it.
    pub api_server: String,
    pub api_ca_pem: String,
    /// Folder for logs, tokens and kubeconfigs (`<state>/<ns>_<pod>/…`).
    pub state_dir: PathBuf,
}

/// A bind mount into a container's root: host path, path inside the container, read-only.
#[derive(Clone, Debug)]
struct BindMount {
    host: PathBuf,
    path: String,
    read_only: bool,
}

struct RunningContainer {
    name: String,
    child: Option<Child>,
    /// The pod's `image:` and the built image's digest (for the status).
    image: String,
    image_id: String,
    /// The image's unpacked layers (the overlay's lower folder).
    rootfs: PathBuf,
    /// Per-container folder: overlay `upper`, `work` and the mounted `root`.
    dir: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    uid: u32,
    gid: u32,
    working_dir: String,
    mounts: Vec<BindMount>,
    read_only_root: bool,
    restarts: i32,
    probe: Option<(String, u16)>,
    ready: bool,
    log: PathBuf,
}

struct RunningPod {
    ns: String,
    name: String,
    netns: String,
    ip: Ipv4Addr,
    containers: Vec<RunningContainer>,
    last_status: Value,
    failed: Option<String>,
}

/// The kubelet. Call [`Kubelet::run`] in a task; [`Kubelet::shutdown`] cleans up.
pub struct Kubelet {
    client: kube::Client,
    config: KubeletConfig,
    pods: HashMap<String, RunningPod>,
    next_ip: u32,
    last_rules: Vec<String>,
    last_hosts: String,
}

/// A handle that stops a running kubelet and cleans up.
pub struct KubeletHandle {
    stop: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl KubeletHandle {
    /// Stops the kubelet: kills every pod process, removes namespaces, bridge and rules.
    pub async fn shutdown(mut self) {
        self.stop.notify_one();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        cleanup_host();
    }
}

impl Drop for KubeletHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            cleanup_host();
        }
    }
}

/// Removes everything the kubelet may have created on the host (synchronous, best effort).
pub fn cleanup_host() {
    if let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line
                .split_whitespace()
                .next()
                .filter(|n| n.starts_with("weft-p"))
            {
                let pids = std::process::Command::new("ip")
                    .args(["netns", "pids", name])
                    .output();
                if let Ok(p) = pids {
                    for pid in String::from_utf8_lossy(&p.stdout).split_whitespace() {
                        run_sync("kill", &["-9", pid]);
                    }
                }
                run_sync("ip", &["netns", "del", name]);
                let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
            }
        }
    }
    for (chain, parent) in [
        (SVC_CHAIN, "PREROUTING"),
        (SVC_CHAIN, "OUTPUT"),
        (MASQ_CHAIN, "POSTROUTING"),
    ] {
        run_sync("iptables", &["-t", "nat", "-D", parent, "-j", chain]);
    }
    for chain in [SVC_CHAIN, MASQ_CHAIN] {
        run_sync("iptables", &["-t", "nat", "-F", chain]);
        run_sync("iptables", &["-t", "nat", "-X", chain]);
    }
    // Host ends of veth pairs whose pod setup was interrupted.
    if let Ok(out) = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
            let name = name.split('@').next().unwrap_or("");
            if (name.starts_with("wv") || name.starts_with("wp"))
                && name[2..].chars().all(|c| c.is_ascii_digit())
            {
                run_sync("ip", &["link", "del", name]);
            }
        }
    }
    run_sync("ip", &["link", "del", BRIDGE]);
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

/// Replaces `$(VAR)` with values of earlier variables, as Kubernetes does.
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in vars.iter().rev() {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

impl Kubelet {
    /// Starts a kubelet in a background task.
    pub async fn start(
        client: kube::Client,
        config: KubeletConfig,
    ) -> Result<KubeletHandle, KubeletError> {
        cleanup_host();
        ensure_bridge().await?;
        run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]).await?;
        // Bridged traffic that is DNATed must come back through the host.
        let _ = run("sysctl", &["-qw", "net.ipv4.conf.all.route_localnet=0"]).await;
        std::fs::create_dir_all(&config.state_dir)?;
        set_mode(&config.state_dir, 0o755)?;
        let stop = Arc::new(Notify::new());
        let kubelet = Kubelet {
            client,
            config,
            pods: HashMap::new(),
            next_ip: 10,
            last_rules: Vec::new(),
            last_hosts: String::new(),
        };
        let task = tokio::spawn(kubelet.run(stop.clone()));
        Ok(KubeletHandle {
            stop,
            task: Some(task),
        })
    }

    async fn run(mut self, stop: Arc<Notify>) {
        let changed = Arc::new(Notify::new());
        let (pods, pw) = reflector::store::<Pod>();
        let (svcs, sw) = reflector::store::<Service>();
        let (eps, ew) = reflector::store::<Endpoints>();
        let c = self.client.clone();
        let mut tasks = Vec::new();
        {
            let n = changed.clone();
            let s = reflector::reflector(
                pw,
                watcher(Api::<Pod>::all(c.clone()), watcher::Config::default()),
            );
            tasks.push(tokio::spawn(s.default_backoff().for_each(move |ev| {
                if let Err(e) = &ev {
                    tracing::warn!(error = %e, "kubelet watch");
                }
                n.notify_one();
                futures::future::ready(())
            })));
        }
        {
            let n = changed.clone();
            let s = reflector::reflector(
                sw,
                watcher(Api::<Service>::all(c.clone()), watcher::Config::default()),
            );
            tasks.push(tokio::spawn(s.default_backoff().for_each(move |ev| {
                if let Err(e) = &ev {
                    tracing::warn!(error = %e, "kubelet watch");
                }
                n.notify_one();
                futures::future::ready(())
            })));
        }
        {
            let n = changed.clone();
            let s = reflector::reflector(
                ew,
                watcher(Api::<Endpoints>::all(c.clone()), watcher::Config::default()),
            );
            tasks.push(tokio::spawn(s.default_backoff().for_each(move |ev| {
                if let Err(e) = &ev {
                    tracing::warn!(error = %e, "kubelet watch");
                }
                n.notify_one();
                futures::future::ready(())
            })));
        }
        loop {
            tokio::select! {
                _ = stop.notified() => break,
                _ = changed.notified() => {},
                _ = tokio::time::sleep(Duration::from_millis(300)) => {},
            }
            let pods_now: Vec<Arc<Pod>> = pods.state();
            let svcs_now = svcs.state();
            let eps_now = eps.state();
            self.sync_services(&svcs_now, &eps_now).await;
            if let Err(e) = self.sync_pods(&pods_now).await {
                tracing::warn!(error = %e, "kubelet sync");
            }
        }
        for t in tasks {
            t.abort();
        }
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for k in keys {
            if let Some(p) = self.pods.remove(&k) {
                stop_pod(p).await;
            }
        }
    }

    async fn sync_services(&mut self, svcs: &[Arc<Service>], eps: &[Arc<Endpoints>]) {
        // Hosts file: <svc>.<ns>.svc.cluster.local and <svc>.<ns> → ClusterIP.
        let mut hosts = String::from("127.0.0.1 localhost\n");
        let mut rules = Vec::new();
        let ep_by_key: HashMap<String, &Endpoints> = eps
            .iter()
            .map(|e| {
                (
                    format!(
                        "{}/{}",
                        e.metadata.namespace.as_deref().unwrap_or(""),
                        e.metadata.name.as_deref().unwrap_or("")
                    ),
                    e.as_ref(),
                )
            })
            .collect();
        let mut sorted: Vec<&Arc<Service>> = svcs.iter().collect();
        sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
        for s in sorted {
            let (Some(ns), Some(name)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
            else {
                continue;
            };
            let Some(ip) = s
                .spec
                .as_ref()
                .and_then(|sp| sp.cluster_ip.clone())
                .filter(|ip| ip.contains('.'))
            else {
                continue;
            };
            hosts.push_str(&format!(
                "{ip} {name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}\n"
            ));
            let Some(ep) = ep_by_key.get(&format!("{ns}/{name}")) else {
                tracing::debug!(service = %format!("{ns}/{name}"), "no endpoints yet");
                continue;
            };
            for port in s
                .spec
                .as_ref()
                .and_then(|sp| sp.ports.clone())
                .unwrap_or_default()
            {
                if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                    continue;
                }
                let mut targets = Vec::new();
                for subset in ep.subsets.clone().unwrap_or_default() {
                    let Some(p) = subset
                        .ports
                        .unwrap_or_default()
                        .into_iter()
                        .find(|p| p.name == port.name || subset_single(&port.name))
                    else {
                        continue;
                    };
                    for a in subset.addresses.unwrap_or_default() {
                        targets.push(format!("{}:{}", a.ip, p.port));
                    }
                }
                let n = targets.len();
                for (i, t) in targets.iter().enumerate() {
                    let prob = if i + 1 == n {
                        String::new()
                    } else {
                        format!(
                            "-m statistic --mode random --probability {:.5} ",
                            1.0 / (n - i) as f64
                        )
                    };
                    rules.push(format!(
                        "-t nat -A {SVC_CHAIN} -d {ip}/32 -p tcp --dport {} {prob}-j DNAT --to-destination {t}",
                        port.port
                    ));
                }
            }
        }
        if hosts != self.last_hosts {
            for p in self.pods.values() {
                let _ = write_in_place(
                    &Path::new("/etc/netns").join(&p.netns).join("hosts"),
                    &hosts,
                );
            }
            self.last_hosts = hosts;
        }
        if rules != self.last_rules {
            tracing::info!(
                services = svcs.len(),
                endpoints = eps.len(),
                ?rules,
                "service rules"
            );
            if let Err(e) = apply_service_rules(&rules).await {
                tracing::warn!(error = %e, "service rules");
            } else {
                self.last_rules = rules;
            }
        }
    }

    async fn sync_pods(&mut self, pods: &[Arc<Pod>]) -> Result<(), KubeletError> {
        let mine: HashMap<String, &Arc<Pod>> = pods
            .iter()
            .filter(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
                node.is_none() || node == Some(self.config.node_name.as_str())
            })
            .filter(|p| {
                !p.spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false)
            })
            .map(|p| (pod_key(p), p))
            .collect();
        // Stop pods that are gone or being deleted.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|k| {
                mine.get(*k)
                    .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            })
            .cloned()
            .collect();
        for k in gone {
            if let Some(rp) = self.pods.remove(&k) {
                let (ns, name) = (rp.ns.clone(), rp.name.clone());
                stop_pod(rp).await;
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let _ = api
                    .delete(
                        &name,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
            }
        }
        for (k, p) in &mine {
            if p.metadata.deletion_timestamp.is_some() {
                if !self.pods.contains_key(k) {
                    let api: Api<Pod> = Api::namespaced(
                        self.client.clone(),
                        p.metadata.namespace.as_deref().unwrap_or("default"),
                    );
                    let _ = api
                        .delete(
                            p.metadata.name.as_deref().unwrap_or(""),
                            &DeleteParams {
                                grace_period_seconds: Some(0),
                                ..Default::default()
                            },
                        )
                        .await;
                }
                continue;
            }
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if !self.pods.contains_key(k) && !matches!(phase, Some("Succeeded") | Some("Failed")) {
                let ip = Ipv4Addr::from(u32::from(GATEWAY) - 1 + self.next_ip);
                self.next_ip += 1;
                let rp = self.start_pod(p, ip).await;
                self.pods.insert(k.clone(), rp);
            }
        }
        // Restart exited containers, probe, report.
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for k in keys {
            let Some(rp) = self.pods.get_mut(&k) else {
                continue;
            };
            if rp.failed.is_none() {
                for c in &mut rp.containers {
                    let exit = match c.child.as_mut() {
                        Some(ch) => ch.try_wait().ok().flatten(),
                        None => None,
                    };
                    // Exit codes of a container that could not start (its command or a shared
                    // library is missing, not executable, or its mounts failed): the pod fails
                    // instead of restarting forever.
                    let code = exit.and_then(|st| st.code());
                    if let Some(code @ (EXIT_SETUP_FAILED | 126 | 127)) = code {
                        let log = std::fs::read_to_string(&c.log).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(5).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        rp.failed = Some(format!(
                            "container {} cannot start (exit {code}): {}",
                            c.name,
                            tail.join("\n")
                        ));
                        tracing::warn!(pod = %k, reason = ?rp.failed, "container cannot start");
                        break;
                    }
                    let exited = c.child.is_none() || exit.is_some();
                    if exited {
                        c.ready = false;
                        c.restarts += 1;
                        if c.restarts > 1 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        c.child = spawn_container(&rp.netns, c).ok();
                    } else if let Some((path, port)) = &c.probe {
                        c.ready = probe(rp.ip, *port, path).await;
                    } else {
                        c.ready = true;
                    }
                }
            }
            let status = pod_status(rp);
            if status != rp.last_status {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &rp.ns);
                match api
                    .patch_status(
                        &rp.name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": status.clone()})),
                    )
                    .await
                {
                    Ok(_) => rp.last_status = status,
                    Err(e) => tracing::debug!(pod = %k, error = %e, "status patch"),
                }
            }
        }
        Ok(())
    }

    async fn start_pod(&mut self, pod: &Pod, ip: Ipv4Addr) -> RunningPod {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Play the scheduler too: bind unscheduled pods to this node (the endpoints controller
        // ignores pods without a node).
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none()
        {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
            });
            if let Err(e) = api
                .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
                .await
            {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "binding");
            }
        }
        let idx = self.next_ip;
        let netns = format!("weft-p{idx}");
        let mut rp = RunningPod {
            ns: ns.clone(),
            name: name.clone(),
            netns: netns.clone(),
            ip,
            containers: Vec::new(),
            last_status: Value::Null,
            failed: None,
        };
        if let Err(e) = self.setup_pod(pod, &mut rp, idx).await {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "pod failed to start");
            rp.failed = Some(e.to_string());
        }
        rp
    }

    async fn setup_pod(
        &mut self,
        pod: &Pod,
        rp: &mut RunningPod,
        idx: u32,
    ) -> Result<(), KubeletError> {
        let netns = rp.netns.clone();
        let host_if = format!("wv{idx}");
        let peer = format!("wp{idx}");
        run("ip", &["netns", "add", &netns]).await?;
        // Leftovers of an interrupted setup with the same index.
        let _ = run("ip", &["link", "del", &host_if]).await;
        let _ = run("ip", &["link", "del", &peer]).await;
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
            ],
        )
        .await?;
        run("ip", &["link", "set", &peer, "netns", &netns]).await?;
        run("ip", &["-n", &netns, "link", "set", &peer, "name", "eth0"]).await?;
        run(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{}/16", rp.ip),
                "dev",
                "eth0",
            ],
        )
        .await?;
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"]).await?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]).await?;
        run("ip", &["link", "set", &host_if, "master", BRIDGE, "up"]).await?;
        run(
            "ip",
            &[
                "-n",
                &netns,
                "route",
                "add",
                "default",
                "via",
                &GATEWAY.to_string(),
            ],
        )
        .await?;
        let etc = Path::new("/etc/netns").join(&netns);
        std::fs::create_dir_all(&etc)?;
        write_in_place(&etc.join("hosts"), &self.last_hosts)?;
        write_in_place(
            &etc.join("resolv.conf"),
            "nameserver 127.0.0.53\noptions ndots:1\n",
        )?;

        let pod_dir = pod_dir(&self.config.state_dir, &rp.ns, &rp.name);
        std::fs::create_dir_all(&pod_dir)?;
        set_mode(&pod_dir, 0o755)?;
        write_file(&pod_dir.join("netns"), &netns)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        // Volumes: projected SA tokens and Secrets become folders of files.
        let mut mounts: HashMap<String, PathBuf> = HashMap::new();
        for v in spec.volumes.clone().unwrap_or_default() {
            let dir = pod_dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&dir)?;
            set_mode(&dir, 0o755)?;
            if let Some(proj) = &v.projected {
                for src in proj.sources.clone().unwrap_or_default() {
                    if let Some(t) = src.service_account_token {
                        let token = self
                            .token(
                                &rp.ns,
                                &sa,
                                pod,
                                t.audience.as_deref(),
                                t.expiration_seconds,
                            )
                            .await?;
                        write_file(&dir.join(&t.path), &token)?;
                    }
                }
            }
            if let Some(sec) = &v.secret {
                let sname = sec.secret_name.clone().unwrap_or_default();
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &rp.ns);
                let s = wait_secret(&api, &sname).await?;
                for (k, val) in s.data.unwrap_or_default() {
                    std::fs::write(dir.join(&k), &val.0)?;
                    set_mode(&dir.join(&k), 0o644)?;
                }
            }
            mounts.insert(v.name.clone(), dir);
        }
        // Every container can reach the API as its ServiceAccount (in place of in-cluster config).
        let sa_token = self.token(&rp.ns, &sa, pod, None, Some(3600)).await?;
        let kubeconfig = pod_dir.join("kubeconfig");
        write_file(
            &kubeconfig,
            &crate::cluster::kubeconfig_yaml(
                &self.config.api_server,
                &self.config.api_ca_pem,
                &sa_token,
            ),
        )?;
        let pod_ip = rp.ip.to_string();
        let build = |c: &Container, images: &Images| -> Result<RunningContainer, KubeletError> {
            let fail = |msg: String| KubeletError::Pod {
                pod: rp.name.clone(),
                msg,
            };
            let (image, argv) = images.resolve(c).map_err(fail)?;
            let mut bind_mounts = vec![BindMount {
                host: kubeconfig.clone(),
                path: KUBECONFIG_PATH.into(),
                read_only: true,
            }];
            for m in c.volume_mounts.clone().unwrap_or_default() {
                let Some(dir) = mounts.get(&m.name) else {
                    return Err(fail(format!(
                        "container {}: volume {} is not supported by the kubelet stand-in",
                        c.name, m.name
                    )));
                };
                let host = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
                    Some(sub) if !sub.split('/').any(|p| p == "..") => dir.join(sub),
                    Some(sub) => return Err(fail(format!("bad subPath {sub:?}"))),
                    None => dir.clone(),
                };
                bind_mounts.push(BindMount {
                    host,
                    path: m.mount_path.clone(),
                    read_only: m.read_only.unwrap_or(false),
                });
            }
            // The image's environment, then the kubelet's, then the container's (a later entry
            // replaces an earlier one of the same name).
            let mut env: Vec<(String, String)> = image.config.env.clone();
            let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
                env.retain(|(n, _)| *n != k);
                env.push((k, v));
            };
            set(&mut env, "HOSTNAME".into(), rp.name.clone());
            set(&mut env, "KUBECONFIG".into(), KUBECONFIG_PATH.into());
            for e in c.env.clone().unwrap_or_default() {
                let value = if let Some(v) = e.value {
                    expand(&v, &env)
                } else if let Some(fr) = e.value_from.and_then(|f| f.field_ref) {
                    match fr.field_path.as_str() {
                        "metadata.name" => rp.name.clone(),
                        "metadata.namespace" => rp.ns.clone(),
                        "spec.serviceAccountName" => sa.clone(),
                        "status.podIP" => pod_ip.clone(),
                        "spec.nodeName" => self.config.node_name.clone(),
                        "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                        _ => String::new(),
                    }
                } else {
                    String::new()
                };
                set(&mut env, e.name, value);
            }
            let argv = argv.into_iter().map(|a| expand(&a, &env)).collect();
            let probe = c
                .readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| {
                    let port = match &h.port {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => {
                            u16::try_from(*p).ok()
                        }
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n) => c
                            .ports
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .find(|p| p.name.as_deref() == Some(n))
                            .and_then(|p| u16::try_from(p.container_port).ok()),
                    }?;
                    Some((h.path.clone().unwrap_or_else(|| "/".into()), port))
                });
            // The image's user, unless the container's or the pod's securityContext says.
            let csc = c.security_context.as_ref();
            let psc = spec.security_context.as_ref();
            let run_as_user = csc
                .and_then(|s| s.run_as_user)
                .or_else(|| psc.and_then(|s| s.run_as_user));
            let run_as_group = csc
                .and_then(|s| s.run_as_group)
                .or_else(|| psc.and_then(|s| s.run_as_group));
            let (image_uid, image_gid) = image.user_ids().map_err(fail)?;
            let id = |v: i64| u32::try_from(v).map_err(|_| fail(format!("bad uid/gid {v}")));
            let uid = match run_as_user {
                Some(u) => id(u)?,
                None => image_uid,
            };
            let gid = match run_as_group {
                Some(g) => id(g)?,
                None if run_as_user.is_some() && uid != image_uid => image.primary_gid(uid),
                None => image_gid,
            };
            let working_dir = match image.config.working_dir.as_str() {
                "" => "/".to_string(),
                w => w.to_string(),
            };
            let working_dir = c.working_dir.clone().unwrap_or(working_dir);
            Ok(RunningContainer {
                name: c.name.clone(),
                child: None,
                image: c.image.clone().unwrap_or_default(),
                image_id: format!("docker.io/{}@{}", image.repository, image.digest),
                rootfs: image.rootfs.clone(),
                dir: pod_dir.join("containers").join(&c.name),
                argv,
                env,
                uid,
                gid,
                working_dir,
                mounts: bind_mounts,
                read_only_root: csc.and_then(|s| s.read_only_root_filesystem) == Some(true),
                restarts: -1,
                probe,
                ready: false,
                log: pod_dir.join(format!("{}.log", c.name)),
            })
        };
        for ic in spec.init_containers.clone().unwrap_or_default() {
            let mut c = build(&ic, &self.config.images)?;
            let mut child = spawn_container(&netns, &c)?;
            let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
                .await
                .map_err(|_| KubeletError::Pod {
                    pod: rp.name.clone(),
                    msg: format!("init container {} timed out", ic.name),
                })??;
            if !status.success() {
                let log = std::fs::read_to_string(&c.log).unwrap_or_default();
                return Err(KubeletError::Pod {
                    pod: rp.name.clone(),
                    msg: format!(
                        "init container {} failed ({status}): {}",
                        ic.name,
                        log.trim()
                    ),
                });
            }
            c.restarts = 0;
        }
        for cont in &spec.containers {
            rp.containers.push(build(cont, &self.config.images)?);
        }
        Ok(())
    }

    async fn token(
        &self,
        ns: &str,
        sa: &str,
        pod: &Pod,
        audience: Option<&str>,
        expiration: Option<i64>,
    ) -> Result<String, KubeletError> {
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), ns);
        let mut spec = json!({
            "expirationSeconds": expiration.unwrap_or(3600).max(600),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                "name": pod.metadata.name, "uid": pod.metadata.uid},
        });
        if let Some(a) = audience {
            spec["audiences"] = json!([a]);
        }
        let body =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let mut last = None;
        for _ in 0..50 {
            match api
                .create_subresource::<_, Value>("token", sa, &PostParams::default(), &body)
                .await
            {
                Ok(v) => {
                    if let Some(t) = v.pointer("/status/token").and_then(Value::as_str) {
                        return Ok(t.to_string());
                    }
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(KubeletError::Pod {
            pod: pod_key(pod),
            msg: format!("token request for {ns}/{sa} failed: {last:?}"),
        })
    }
}

/// The kubelet's folder for a pod (logs `<container>.log`, `netns`, `kubeconfig`, `volumes/`).
pub fn pod_dir(state_dir: &Path, ns: &str, name: &str) -> PathBuf {
    state_dir.join(format!("{ns}_{name}"))
}

/// The network namespace a pod runs in (for `ip netns exec`).
pub fn netns_of(state_dir: &Path, ns: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(pod_dir(state_dir, ns, name).join("netns")).ok()
}

fn subset_single(name: &Option<String>) -> bool {
    name.as_deref().is_none_or(str::is_empty)
}

async fn wait_secret(api: &Api<Secret>, name: &str) -> Result<Secret, KubeletError> {
    for _ in 0..100 {
        if let Some(s) = api.get_opt(name).await? {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(KubeletError::Pod {
        pod: String::new(),
        msg: format!("secret {name} not found"),
    })
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

fn write_file(p: &Path, content: &str) -> std::io::Result<()> {
    std::fs::write(p, content)?;
    set_mode(p, 0o644)
}

/// Rewrites a file keeping its inode (bind mounts of it by `ip netns exec` see the change).
fn write_in_place(p: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(p)?;
    f.write_all(content.as_bytes())?;
    set_mode(p, 0o644)
}

/// Single-quotes a string for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Exit code of a container whose setup (mounts) failed before its command ran.
const EXIT_SETUP_FAILED: i32 = 125;

/// The `sh` script that prepares a container's root filesystem in the (private) mount namespace
/// it runs in, then enters it: an overlay of the image's layers with a fresh upper folder, `/proc`,
/// a small `/dev`, the pod's `/etc/hosts` and `/etc/resolv.conf`, the volumes and the kubeconfig
/// at their paths, the root read-only if the container asks, then `unshare --root --wd --setgid
/// --setuid` execs the container's argv (`"$@"`) with exactly the container's environment.
fn container_script(netns: &str, c: &RunningContainer) -> String {
    let q = |p: &Path| sh_quote(&p.display().to_string());
    let mut s = String::new();
    s.push_str("fail() { echo \"weft-e2e kubelet: container setup failed: $*\" >&2; exit 125; }\n");
    s.push_str(&format!(
        "D={}\nL={}\nR=\"$D/root\"\n",
        q(&c.dir),
        q(&c.rootfs)
    ));
    let step = |s: &mut String, cmd: &str| {
        s.push_str(&format!("{cmd} || fail {}\n", sh_quote(cmd)));
    };
    step(&mut s, "rm -rf \"$D/upper\" \"$D/work\"");
    step(&mut s, "mkdir -p \"$D/upper\" \"$D/work\" \"$R\"");
    step(
        &mut s,
        "mount -t overlay overlay -o \"lowerdir=$L,upperdir=$D/upper,workdir=$D/work\" \"$R\"",
    );
    step(&mut s, "mkdir -p \"$R/proc\" \"$R/dev\" \"$R/etc\"");
    step(&mut s, "mount -t proc proc \"$R/proc\"");
    step(
        &mut s,
        "mount -t tmpfs -o mode=755,nosuid,size=1m tmpfs \"$R/dev\"",
    );
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        step(&mut s, &format!("touch \"$R/dev/{dev}\""));
        step(&mut s, &format!("mount --bind /dev/{dev} \"$R/dev/{dev}\""));
    }
    step(&mut s, "ln -s /proc/self/fd \"$R/dev/fd\"");
    step(&mut s, "mkdir \"$R/dev/shm\"");
    step(
        &mut s,
        "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs \"$R/dev/shm\"",
    );
    let etc = Path::new("/etc/netns").join(netns);
    let mut binds: Vec<BindMount> = ["hosts", "resolv.conf"]
        .iter()
        .map(|f| BindMount {
            host: etc.join(f),
            path: format!("/etc/{f}"),
            read_only: false,
        })
        .collect();
    binds.extend(c.mounts.iter().cloned());
    for m in &binds {
        let target = format!("\"$R\"{}", sh_quote(&m.path));
        if m.host.is_dir() {
            step(&mut s, &format!("mkdir -p {target}"));
        } else {
            step(&mut s, &format!("mkdir -p \"$(dirname {target})\""));
            step(&mut s, &format!("touch {target}"));
        }
        step(&mut s, &format!("mount --bind {} {target}", q(&m.host)));
        if m.read_only {
            step(&mut s, &format!("mount -o remount,bind,ro {target}"));
        }
    }
    step(
        &mut s,
        &format!("mkdir -p \"$R\"{}", sh_quote(&c.working_dir)),
    );
    if c.read_only_root {
        step(&mut s, "mount -o remount,bind,ro \"$R\"");
    }
    s.push_str("exec /usr/bin/env -i");
    for (k, v) in &c.env {
        s.push(' ');
        s.push_str(&sh_quote(&format!("{k}={v}")));
    }
    s.push_str(&format!(
        " /usr/bin/unshare --root=\"$R\" --wd={} --setgid {} --setuid {} -- \"$@\"\n",
        sh_quote(&c.working_dir),
        c.gid,
        c.uid
    ));
    s
}

fn spawn_container(netns: &str, c: &RunningContainer) -> Result<Child, KubeletError> {
    std::fs::create_dir_all(&c.dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.log)?;
    let err = log.try_clone()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .args(["unshare", "--mount", "--propagation", "private"])
        .args(["/bin/sh", "-c", &container_script(netns, c), "sh"])
        .args(&c.argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    Ok(cmd.spawn()?)
}

async fn probe(ip: Ipv4Addr, port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        Some(head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn pod_status(rp: &RunningPod) -> Value {
    let now = "1970-01-01T00:00:00Z";
    if let Some(msg) = &rp.failed {
        return json!({
            "phase": "Failed", "reason": "WeftE2eKubelet", "message": msg,
            "conditions": [{"type": "Ready", "status": "False", "reason": "StartFailed", "message": msg}],
        });
    }
    let all_ready = !rp.containers.is_empty() && rp.containers.iter().all(|c| c.ready);
    let ready = if all_ready { "True" } else { "False" };
    let statuses: Vec<Value> = rp
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "ready": c.ready, "started": c.child.is_some(),
                "restartCount": c.restarts.max(0), "image": c.image,
                "imageID": c.image_id, "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    json!({
        "phase": "Running",
        "hostIP": GATEWAY.to_string(),
        "podIP": rp.ip.to_string(),
        "podIPs": [{"ip": rp.ip.to_string()}],
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "PodScheduled", "status": "True"},
            {"type": "ContainersReady", "status": ready},
            {"type": "Ready", "status": ready},
        ],
        "containerStatuses": statuses,
    })
}

async fn stop_pod(mut rp: RunningPod) {
    for c in &mut rp.containers {
        if let Some(ch) = c.child.as_mut() {
            if let Some(pid) = ch.id() {
                let _ = run("kill", &["-TERM", &pid.to_string()]).await;
                if tokio::time::timeout(Duration::from_secs(5), ch.wait())
                    .await
                    .is_err()
                {
                    let _ = ch.start_kill();
                }
            }
        }
    }
    if let Ok(pids) = run("ip", &["netns", "pids", &rp.netns]).await {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid]).await;
        }
    }
    let _ = run("ip", &["netns", "del", &rp.netns]).await;
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&rp.netns));
}

async fn apply_service_rules(rules: &[String]) -> Result<(), KubeletError> {
    for chain in [SVC_CHAIN, MASQ_CHAIN] {
        if run("iptables", &["-t", "nat", "-n", "-L", chain])
            .await
            .is_err()
        {
            run("iptables", &["-t", "nat", "-N", chain]).await?;
        }
        run("iptables", &["-t", "nat", "-F", chain]).await?;
    }
    for (parent, chain) in [
        ("PREROUTING", SVC_CHAIN),
        ("OUTPUT", SVC_CHAIN),
        ("POSTROUTING", MASQ_CHAIN),
    ] {
        if run("iptables", &["-t", "nat", "-C", parent, "-j", chain])
            .await
            .is_err()
        {
            run("iptables", &["-t", "nat", "-A", parent, "-j", chain]).await?;
        }
    }
    // Pod → ClusterIP → pod on the same bridge: replies must come back through the host.
    run(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            MASQ_CHAIN,
            "-s",
            "198.18.0.0/16",
            "-d",
            "198.18.0.0/16",
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-j",
            "MASQUERADE",
        ],
    )
    .await?;
    for r in rules {
        let args: Vec<&str> = r.split_whitespace().collect();
        run("iptables", &args).await?;
    }
    Ok(())
}

/// Environment in which the kubelet can run: root, `ip`, `iptables`, `setpriv`, `unshare`
/// (util-linux 2.36+ for `--root`/`--wd`/`--setuid`), `mount`, `tar`, overlayfs.
pub fn missing_requirements() -> Option<String> {
    if !crate::cluster::is_root() {
        return Some("not root (network namespaces and iptables need root)".into());
    }
    for tool in [
        "ip", "iptables", "setpriv", "sysctl", "unshare", "mount", "tar", "env",
    ] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        // Loaded on first use on most kernels.
        let _ = std::process::Command::new("modprobe")
            .arg("overlay")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    None
}

/// Labels → selector string helper for tests.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
