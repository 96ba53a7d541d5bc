//! `weft demo`: a whole mesh on this machine, no cluster and no root.
//!
//! It writes a manifest directory, runs `weft-operator --manifests` on it, starts the sample
//! workloads each with its own `weft-proxy` on its own loopback address, drives traffic through
//! the proxies, walks a canary through its weights by editing the TrafficSplit file, then applies
//! a TrafficTarget and shows the callers it turns away.

pub mod app;
pub mod manifests;
pub mod procs;
pub mod traffic;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http::Method;
use tokio::sync::watch;

use crate::admin_http;
use manifests::{DemoPod, Layout, NAMESPACE, PODS};
use procs::Supervisor;
use traffic::{Caller, Load, Tally};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Total time of the scripted walk (the canary steps and the access step).
    pub duration: Duration,
    /// Print one line per step instead of a live view.
    pub plain: bool,
    /// Leave everything running at the end, until Ctrl-C.
    pub keep: bool,
    /// Where to write the manifests and logs (default: a fresh folder under the temp dir).
    pub dir: Option<PathBuf>,
    pub layout: Layout,
    /// Requests per second from the frontend.
    pub rate: u32,
    /// Walk the canary with a Gateway API HTTPRoute (`route.yaml`) instead of an SMI
    /// TrafficSplit (`split.yaml`).
    pub gateway_api: bool,
}

/// The canary object the demo edits: its file and its YAML at a given api-v2 weight.
fn canary_file(gateway_api: bool) -> (&'static str, fn(u32) -> String) {
    if gateway_api {
        ("route.yaml", manifests::route_yaml)
    } else {
        ("split.yaml", manifests::split_yaml)
    }
}

/// Canary weights of api-v2, in percent.
const STEPS: [u32; 4] = [0, 10, 50, 100];
/// How far a measured share may be from its weight before the demo calls it a mismatch: four
/// standard errors of a share measured over `n` requests (a false alarm about once in 16,000
/// steps), and never less than 2 points (requests in flight while a proxy applies a change).
pub fn share_tolerance(weight: f64, n: u64) -> f64 {
    let n = n.max(1) as f64;
    (4.0 * (weight * (1.0 - weight) / n).sqrt()).max(0.02)
}

struct Mesh {
    sup: Supervisor,
    /// Stops the traffic when dropped or set; kept alive with `--keep`.
    traffic_stop: Option<watch::Sender<bool>>,
    dir: PathBuf,
    layout: Layout,
    gateway_api: bool,
}

/// Runs the demo; returns whether every check held (shares within tolerance, 403s seen, mTLS).
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("weft-demo-{}", std::process::id())),
    };
    let out = Output::new(opts.plain);
    let mut mesh = Mesh {
        sup: Supervisor::default(),
        traffic_stop: None,
        dir: dir.clone(),
        layout: opts.layout.clone(),
        gateway_api: opts.gateway_api,
    };
    let result = tokio::select! {
        r = scripted(&opts, &mut mesh, &out) => r,
        _ = stop_requested() => {
            out.line("interrupted: stopping every process the demo started");
            Ok(false)
        }
    };
    let result = match result {
        Ok(ok) if opts.keep => {
            keep_running(&mesh, &out).await;
            Ok(ok)
        }
        other => other,
    };
    mesh.sup.stop_all().await;
    let _ = std::fs::remove_file(admin_token_path(opts.layout.prefix));
    if result.is_err() {
        out.line(&format!("logs are in {}", dir.join("logs").display()));
    }
    result
}

async fn scripted(opts: &DemoOptions, mesh: &mut Mesh, out: &Output) -> anyhow::Result<bool> {
    let dir = mesh.dir.clone();
    let layout = mesh.layout.clone();
    std::fs::create_dir_all(dir.join("manifests")).context("creating the demo folder")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let manifests = dir.join("manifests");
    write_atomic(&manifests.join("mesh.yaml"), &manifests::mesh_yaml(&layout))?;
    write_atomic(&manifests.join("routes.yaml"), &manifests::routes_yaml())?;
    let (canary, canary_yaml) = canary_file(opts.gateway_api);
    // Only one canary object: a leftover of the other kind (a reused --dir) would be overridden
    // (an HTTPRoute wins over a TrafficSplit) or override.
    let _ = std::fs::remove_file(manifests.join(canary_file(!opts.gateway_api).0));
    write_atomic(&manifests.join(canary), &canary_yaml(0))?;
    let _ = std::fs::remove_file(manifests.join("access.yaml"));
    let token = dir.join("bootstrap-token");
    write_atomic(&token, &format!("weft-demo-{}\n", std::process::id()))?;
    // #18: the operator's admin token (`GET /tap`), kept where `weft tap --demo` finds it.
    let admin_token = dir.join("admin-token");
    let secret = random_token()?;
    write_private(&admin_token, &secret)?;
    write_private(&admin_token_path(layout.prefix), &secret)?;
    // The mesh CA, generated here so that proxies get its root out of band and verify the
    // operator over TLS (the operator refuses plaintext).
    let issuer = dir.join("identity");
    weft_common::ca::generate_ca("cluster.local")
        .context("generating the demo CA")?
        .write_issuer_dir(&issuer)
        .context("writing the demo CA")?;
    let anchors = issuer.join(weft_common::ca::CA_CERT_FILE);
    out.line(&format!(
        "weft demo: manifests in {}; the canary is {}",
        manifests.display(),
        if opts.gateway_api {
            "HTTPRoute api-canary (gateway.networking.k8s.io/v1, parentRef Service api) in route.yaml"
        } else {
            "TrafficSplit api-canary (split.smi-spec.io/v1alpha4) in split.yaml"
        }
    ));

    let operator_bin = procs::find_binary("weft-operator")?;
    let proxy_bin = procs::find_binary("weft-proxy")?;
    let me = std::env::current_exe().context("locating the weft executable")?;

    // The control plane.
    let op_ip = layout.operator_ip();
    let discovery = format!("{op_ip}:{}", manifests::DISCOVERY_PORT);
    let op_admin = format!("{op_ip}:{}", manifests::OPERATOR_ADMIN_PORT);
    let pid = mesh.sup.spawn(
        "weft-operator",
        &operator_bin,
        &[
            "--manifests".into(),
            manifests.display().to_string(),
            "--discovery-addr".into(),
            discovery.clone(),
            "--admin-addr".into(),
            op_admin.clone(),
            "--bootstrap-token-file".into(),
            token.display().to_string(),
            "--identity-issuer".into(),
            issuer.display().to_string(),
            "--admin-token-file".into(),
            admin_token.display().to_string(),
            "--require-control-tls".into(),
            "--require-discovery-identity".into(),
        ],
        &[("WEFT_LOG".into(), "info".into())],
        &dir.join("logs/operator.log"),
    )?;
    out.line(&format!(
        "started weft-operator (pid {pid}): discovery {discovery} (TLS only, as {OPERATOR_IDENTITY}; proxies subscribe with their certificates), admin http://{op_admin}"
    ));
    ready_or_explain(mesh, &op_admin, "/ready", "weft-operator").await?;

    // The workloads and their proxies.
    for pod in PODS {
        let ip = layout.ip(pod.host);
        if pod.serves {
            let version = pod.version.unwrap_or("v1");
            mesh.sup.spawn(
                &format!("{}/app", pod.name),
                &me,
                &[
                    "demo-app".into(),
                    "--name".into(),
                    pod.app.into(),
                    "--version".into(),
                    version.into(),
                    "--pod".into(),
                    pod.name.into(),
                    "--listen".into(),
                    format!("{ip}:{}", manifests::APP_PORT),
                ],
                &[],
                &dir.join(format!("logs/{}-app.log", pod.name)),
            )?;
        }
        let env = proxy_env(pod, &layout, &discovery, &token, &anchors);
        let pid = mesh.sup.spawn(
            &format!("{}/proxy", pod.name),
            &proxy_bin,
            &[],
            &env,
            &dir.join(format!("logs/{}-proxy.log", pod.name)),
        )?;
        out.line(&format!(
            "started pod {NAMESPACE}/{} on {ip}: weft-proxy (pid {pid}) as spiffe://cluster.local/ns/{NAMESPACE}/sa/{}{}",
            pod.name,
            pod.service_account,
            if pod.serves { format!(", app {}:{}", pod.app, pod.version.unwrap_or("")) } else { String::new() }
        ));
    }
    for pod in PODS {
        let admin = format!("{}:{}", layout.ip(pod.host), manifests::PROXY_ADMIN_PORT);
        ready_or_explain(
            mesh,
            &admin,
            "/ready",
            &format!("weft-proxy of {}", pod.name),
        )
        .await?;
    }
    out.line("every proxy holds a certificate and its first config");

    // Traffic: the frontend calls the canary; batch calls it too, until it is locked out.
    let (stop_tx, stop_rx) = watch::channel(false);
    let authority = format!("api.{NAMESPACE}.svc.cluster.local:{}", manifests::APP_PORT);
    let frontend = caller(
        &layout,
        "frontend-0",
        &authority,
        Method::GET,
        "/items",
        opts.rate,
    );
    let batch = caller(
        &layout,
        "batch-0",
        &authority,
        Method::GET,
        "/items",
        (opts.rate / 4).max(5),
    );
    let frontend_load = traffic::start(frontend, stop_rx.clone());
    let batch_load = traffic::start(batch, stop_rx.clone());
    let window = (opts.duration / 5).max(Duration::from_secs(1));
    let mut all_ok = true;

    out.line(&format!(
        "traffic: frontend -> {authority} GET /items at {} rps, batch -> the same at {} rps",
        opts.rate,
        (opts.rate / 4).max(5)
    ));
    let frontend_admin = format!("{}:{}", layout.ip(10), manifests::PROXY_ADMIN_PORT);
    for (i, &v2) in STEPS.iter().enumerate() {
        if i > 0 {
            let before = proxy_version(&frontend_admin).await;
            write_atomic(&manifests.join(canary), &canary_yaml(v2))?;
            let t = Instant::now();
            wait_version_change(&frontend_admin, before.as_deref()).await?;
            out.line(&format!(
                "edited {canary}: api-v1={} api-v2={v2}; frontend's proxy applied it in {} ms",
                100 - v2,
                t.elapsed().as_millis()
            ));
        }
        if opts.gateway_api {
            // What Flagger waits for before each step: the route's status for its parent.
            let (line, ok) = route_status_line(&manifests);
            all_ok &= ok;
            out.line(&line);
        }
        frontend_load.reset();
        let title = format!(
            "canary step {}/{}: weights api-v1={} api-v2={v2}",
            i + 1,
            STEPS.len(),
            100 - v2
        );
        let tally = measure(out, &title, &frontend_load, window, |t| canary_lines(t, v2)).await;
        let measured_v2 = tally.share("v2");
        let weight_v2 = f64::from(v2) / 100.0;
        let tolerance = share_tolerance(weight_v2, tally.requests);
        let ok = (measured_v2 - weight_v2).abs() <= tolerance
            && tally.success() == tally.requests
            && tally.requests > 0;
        all_ok &= ok;
        let [p50, p99] = tally.percentiles_ms([0.5, 0.99]);
        out.line(&format!(
            "step {}/{} weights api-v1={} api-v2={v2} measured api-v1={:.1}% api-v2={:.1}% requests={} success={:.1}% p50={} p99={} {} (within ±{:.1} points)",
            i + 1,
            STEPS.len(),
            100 - v2,
            tally.share("v1") * 100.0,
            measured_v2 * 100.0,
            tally.requests,
            pct(tally.success(), tally.requests),
            ms(p50),
            ms(p99),
            if ok { "OK" } else { "MISMATCH" },
            tolerance * 100.0
        ));
        if !ok {
            explain_failure(&tally, out);
        }
    }

    // Access: lock `api` down to the frontend.
    let api_admins: Vec<String> = PODS
        .iter()
        .filter(|p| p.app == "api")
        .map(|p| format!("{}:{}", layout.ip(p.host), manifests::PROXY_ADMIN_PORT))
        .collect();
    let mut befores = Vec::new();
    for a in &api_admins {
        befores.push(proxy_version(a).await);
    }
    write_atomic(&manifests.join("access.yaml"), &manifests::access_yaml())?;
    for (a, b) in api_admins.iter().zip(&befores) {
        wait_version_change(a, b.as_deref()).await?;
    }
    out.line("applied access.yaml: TrafficTarget api-access lets only sa/frontend call GET /items on sa/api");
    frontend_load.reset();
    batch_load.reset();
    let title = "access: TrafficTarget api-access in force".to_string();
    let fl = frontend_load.clone();
    let bl = batch_load.clone();
    measure(out, &title, &frontend_load, window, move |_| {
        access_lines(&fl.snapshot(), &bl.snapshot())
    })
    .await;
    let f = frontend_load.snapshot();
    let b = batch_load.snapshot();
    let access_ok =
        f.success() == f.requests && f.requests > 0 && b.count(403) == b.requests && b.requests > 0;
    all_ok &= access_ok;
    out.line(&format!(
        "access frontend GET /items -> 200 x{} of {}; batch GET /items -> 403 x{} of {} reason={:?} {}",
        f.success(),
        f.requests,
        b.count(403),
        b.requests,
        b.last_deny_reason.clone().unwrap_or_default(),
        if access_ok { "OK" } else { "MISMATCH" }
    ));
    if !access_ok {
        explain_failure(&b, out);
    }

    // mTLS: the identity the server side saw, as the app received it from its proxy.
    let expected = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/frontend");
    let seen = f.last_client_identity.clone().unwrap_or_default();
    let mtls_ok = seen == expected;
    all_ok &= mtls_ok;
    out.line(&format!(
        "mtls: api saw client identity {} {}",
        if seen.is_empty() {
            "(none)"
        } else {
            seen.as_str()
        },
        if mtls_ok { "OK" } else { "MISMATCH" }
    ));

    if opts.keep {
        // The traffic goes on, so that `weft stat` and the proxies' metrics have something to show.
        mesh.traffic_stop = Some(stop_tx);
    } else {
        let _ = stop_tx.send(true);
    }
    out.line(if all_ok {
        "demo finished: every check held"
    } else {
        "demo finished: some checks did not hold (see MISMATCH lines and the logs)"
    });
    Ok(all_ok)
}

/// The HTTPRoute's `status.parents[]` as the operator computes it (the same compiler, run on the
/// demo's folder): one line, and whether it is Accepted and ResolvedRefs.
fn route_status_line(manifests: &Path) -> (String, bool) {
    match crate::cmd::routes::compile_dir(manifests, &weft_core::compile::CompileOptions::default())
    {
        Ok(report) => {
            let mut parts = Vec::new();
            let mut ok = !report.routes.is_empty();
            for r in &report.routes {
                ok &= crate::cmd::routes::judge_route(r).outcome == crate::cmd::check::Outcome::Ok;
                for p in &r.parents {
                    let conds: Vec<String> = p
                        .conditions
                        .iter()
                        .map(|c| format!("{}={}", c.type_, c.status))
                        .collect();
                    parts.push(format!(
                        "{} {}/{} parent {}: {}",
                        r.kind,
                        r.namespace,
                        r.name,
                        p.parent,
                        conds.join(" ")
                    ));
                }
            }
            (
                format!(
                    "route status: {} {}",
                    if parts.is_empty() {
                        "(no route)".to_string()
                    } else {
                        parts.join("; ")
                    },
                    if ok { "OK" } else { "MISMATCH" }
                ),
                ok,
            )
        }
        Err(e) => (
            format!("route status: cannot compile: {e:#} MISMATCH"),
            false,
        ),
    }
}

/// The operator's identity on the discovery port (its defaults: namespace `weft-system`,
/// service account `weft-operator`); the demo's control address is an IP, so proxies check this.
const OPERATOR_IDENTITY: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-operator";

fn proxy_env(
    pod: &DemoPod,
    layout: &Layout,
    discovery: &str,
    token: &Path,
    anchors: &Path,
) -> Vec<(String, String)> {
    let ip = layout.ip(pod.host);
    [
        ("WEFT_PROXY_CONTROL_ADDR", discovery.to_string()),
        (
            "WEFT_PROXY_TRUST_ANCHORS_FILE",
            anchors.display().to_string(),
        ),
        ("WEFT_PROXY_CONTROL_IDENTITY", OPERATOR_IDENTITY.to_string()),
        ("WEFT_PROXY_POD", format!("{NAMESPACE}/{}", pod.name)),
        // #18: the workload label of the Linkerd-compatible metrics (`api-v1-0` → `api-v1`).
        (
            "WEFT_PROXY_WORKLOAD",
            format!("deployment/{}", pod.deployment()),
        ),
        (
            "WEFT_PROXY_SERVICE_ACCOUNT",
            pod.service_account.to_string(),
        ),
        ("WEFT_PROXY_TOKEN_FILE", token.display().to_string()),
        (
            "WEFT_PROXY_INBOUND_ADDR",
            format!("{ip}:{}", manifests::INBOUND_PORT),
        ),
        (
            "WEFT_PROXY_OUTBOUND_ADDR",
            format!("{ip}:{}", manifests::OUTBOUND_PORT),
        ),
        (
            "WEFT_PROXY_ADMIN_ADDR",
            format!("{ip}:{}", manifests::PROXY_ADMIN_PORT),
        ),
        ("WEFT_PROXY_APP_IP", ip.to_string()),
        // #18: each pod's tap port on its own address, as in a cluster.
        (
            "WEFT_PROXY_TAP_ADDR",
            format!("{ip}:{}", manifests::PROXY_TAP_PORT),
        ),
        ("WEFT_LOG", "info".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn caller(
    layout: &Layout,
    pod: &str,
    authority: &str,
    method: Method,
    path: &str,
    rate: u32,
) -> Caller {
    let host = layout.pod(pod).map(|p| p.host).unwrap_or(10);
    Caller {
        proxy: std::net::SocketAddr::new(layout.ip(host).into(), manifests::OUTBOUND_PORT),
        authority: authority.into(),
        method,
        path: path.into(),
        rate,
        concurrency: 4,
    }
}

async fn ready_or_explain(
    mesh: &mut Mesh,
    addr: &str,
    path: &str,
    what: &str,
) -> anyhow::Result<()> {
    if let Err(e) = admin_http::wait_ready(addr, path, Duration::from_secs(60)).await {
        if let Some((label, status)) = mesh.sup.exited() {
            bail!(
                "{what} is not ready: {label} exited ({status}); see {}",
                mesh.dir.join("logs").display()
            );
        }
        bail!("{what} is not ready: {e}");
    }
    Ok(())
}

/// The config version a proxy reports at `/config`.
async fn proxy_version(admin: &str) -> Option<String> {
    admin_http::get_json(admin, "/config", Duration::from_secs(2))
        .await
        .ok()
        .and_then(|v| v.get("version").and_then(|x| x.as_str()).map(str::to_owned))
}

async fn wait_version_change(admin: &str, before: Option<&str>) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let now = proxy_version(admin).await;
        if now.is_some() && now.as_deref() != before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the proxy at {admin} did not apply the change within 30 s (version still {before:?})")
}

/// Lets the load run for `window`, showing `lines` live on a terminal; returns the tally.
async fn measure<F>(out: &Output, title: &str, load: &Load, window: Duration, lines: F) -> Tally
where
    F: Fn(&Tally) -> Vec<String>,
{
    let start = Instant::now();
    let mut drawn = 0usize;
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(250).min(window)).await;
        if out.live {
            let t = load.snapshot();
            let mut block = vec![format!(
                "{title}  [{:>4.1}s]",
                start.elapsed().as_secs_f64()
            )];
            block.extend(lines(&t));
            drawn = out.redraw(drawn, &block);
        }
    }
    if out.live {
        out.redraw(drawn, &[]);
    }
    load.snapshot()
}

fn canary_lines(t: &Tally, v2_weight: u32) -> Vec<String> {
    let mut lines = Vec::new();
    for (version, weight) in [("v1", 100 - v2_weight), ("v2", v2_weight)] {
        let share = t.share(version);
        let filled = (share * 40.0).round() as usize;
        lines.push(format!(
            "  api-{version} [{}{}] {:>5.1}%  (weight {weight}%)",
            "#".repeat(filled.min(40)),
            " ".repeat(40 - filled.min(40)),
            share * 100.0
        ));
    }
    let [p50, p99] = t.percentiles_ms([0.5, 0.99]);
    lines.push(format!(
        "  {:.0} rps  success {:.1}%  p50 {}  p99 {}",
        t.rps(),
        pct(t.success(), t.requests),
        ms(p50),
        ms(p99)
    ));
    lines
}

fn access_lines(f: &Tally, b: &Tally) -> Vec<String> {
    vec![
        format!(
            "  frontend GET /items: {} x 200, {} x 403",
            f.success(),
            f.count(403)
        ),
        format!(
            "  batch    GET /items: {} x 200, {} x 403  {}",
            b.success(),
            b.count(403),
            b.last_deny_reason.clone().unwrap_or_default()
        ),
    ]
}

fn explain_failure(t: &Tally, out: &Output) {
    out.line(&format!(
        "  statuses {:?}, transport errors {}{}",
        t.by_status,
        t.errors,
        t.last_error
            .as_ref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    ));
}

async fn keep_running(mesh: &Mesh, out: &Output) {
    let m = mesh.dir.join("manifests");
    let l = &mesh.layout;
    out.line(&format!(
        "\nthe mesh keeps running (Ctrl-C stops it). Try:\n\
         \x20 curl -H 'Host: api.demo.svc.cluster.local:8080' http://{fe}:4140/items   # as frontend\n\
         \x20 curl -H 'Host: api.demo.svc.cluster.local:8080' http://{ba}:4140/items   # as batch\n\
         \x20 $EDITOR {m}/{canary}        # move the canary; proxies apply it within a second\n\
         \x20 rm {m}/access.yaml            # open api up again\n\
         \x20 curl http://{op}:9990/proxies    # which proxy runs which config version\n\
         \x20 curl http://{fe}:4191/metrics    # golden metrics of the frontend's proxy\n\
         \x20 weft stat --demo                 # golden metrics of every proxy\n\
         \x20 weft tap --demo{ipf}             # live requests (identities, status, latency)\n\
         \x20 weft top --demo{ipf}             # most-requested paths\n\
         logs: {logs}",
        fe = l.ip(10),
        ba = l.ip(11),
        op = l.operator_ip(),
        m = m.display(),
        canary = canary_file(mesh.gateway_api).0,
        logs = mesh.dir.join("logs").display(),
        ipf = if l.prefix == [127, 42, 0] {
            String::new()
        } else {
            format!(" --ip-prefix {}.{}.{}", l.prefix[0], l.prefix[1], l.prefix[2])
        },
    ));
    stop_requested().await;
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (`kill`, `timeout`, a CI job cancelled), so that
/// either stops every process the demo started: killed by the signal's default action, the demo
/// would leave its operator and proxies running, holding their addresses.
async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // Without a SIGTERM handler Ctrl-C still works.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// 32 hex digits from the OS's random source.
fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the admin token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Writes via a temporary file and rename, so the operator never reads half a file.
fn write_atomic(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn pct(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 * 100.0 / d as f64
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}ms")).unwrap_or_else(|| "-".into())
}

/// Plain lines, or a live block redrawn in place on a terminal.
struct Output {
    live: bool,
}

impl Output {
    fn new(plain: bool) -> Self {
        Output {
            // Redrawing in place needs escape sequences: only on a terminal, never with NO_COLOR.
            live: !plain && crate::term::stdout_colour(),
        }
    }
    fn line(&self, s: &str) {
        println!("{s}");
    }
    /// Erases the `previous` lines drawn and draws `block`; returns its height.
    fn redraw(&self, previous: usize, block: &[String]) -> usize {
        let mut stdout = std::io::stdout().lock();
        if previous > 0 {
            let _ = write!(stdout, "\x1b[{previous}A\x1b[J");
        }
        for l in block {
            let _ = writeln!(stdout, "{l}");
        }
        let _ = stdout.flush();
        block.len()
    }
}

/// Where a running demo leaves its operator's admin token (for `weft tap --demo`).
pub fn admin_token_path(prefix: [u8; 3]) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "weft-demo-{}.{}.{}.admin-token",
        prefix[0], prefix[1], prefix[2]
    ))
}

/// The admin addresses of the demo's proxies (default layout), for `weft stat/edges --demo`.
pub fn proxy_admins() -> Vec<String> {
    let layout = manifests::Layout {
        prefix: [127, 42, 0],
    };
    manifests::PODS
        .iter()
        .map(|p| format!("{}:{}", layout.ip(p.host), manifests::PROXY_ADMIN_PORT))
        .collect()
}

/// The demo's operator (`--ip-prefix`) and the token it left, as a tap source.
pub fn tap_source(
    prefix: [u8; 3],
    token_file: Option<std::path::PathBuf>,
) -> anyhow::Result<crate::cmd::tap::Source> {
    use anyhow::Context as _;
    let layout = manifests::Layout { prefix };
    let path = token_file.unwrap_or_else(|| admin_token_path(prefix));
    let token = crate::cmd::tap::read_token(&path).with_context(|| {
        format!(
            "no admin token at {} (is `weft demo --keep` running on {}.{}.{}?)",
            path.display(),
            prefix[0],
            prefix[1],
            prefix[2]
        )
    })?;
    Ok(crate::cmd::tap::Source::Admin {
        addr: format!(
            "{}:{}",
            layout.operator_ip(),
            manifests::OPERATOR_ADMIN_PORT
        ),
        token,
    })
}
