//! Runs `weft demo --plain` for real (operator, proxies and apps as processes on loopback) and
//! checks what it printed: the measured canary shares, the 403s, the mTLS identity.

use std::process::Command;

mod demo_support;
use demo_support::{ensure_binaries, spawn_demo};

fn percent(line: &str, key: &str) -> f64 {
    let start = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    let rest = &line[start..];
    let end = rest
        .find('%')
        .unwrap_or_else(|| panic!("% after {key} in {line}"));
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("number after {key} in {line}"))
}

/// Runs `weft demo --plain` with `extra` arguments on the loopback /24 `prefix`; returns its
/// stdout, a context string for failures (stdout, stderr, log tails) and whether it exited 0.
fn run_demo(prefix: &str, extra: &[&str]) -> (String, String, bool, tempfile::TempDir) {
    ensure_binaries();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "demo",
            "--plain",
            "--duration",
            "25s",
            "--ip-prefix",
            prefix,
            "--rate",
            "300",
        ])
        .args(extra)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("running weft demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = std::fs::read_dir(dir.path().join("logs"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    format!(
                        "--- {}\n{}",
                        e.path().display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}\nlogs:\n{logs}");
    (stdout, ctx, out.status.success(), dir)
}

/// The four canary steps: api-v2's measured share within four standard errors (at least 2
/// points) of its weight, shares summing to 100 %, no failed request.
fn assert_canary_steps(stdout: &str, ctx: &str) {
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 4, "four canary steps\n{ctx}");
    for (line, v2) in steps.iter().zip([0.0, 10.0, 50.0, 100.0]) {
        let measured = percent(line, "measured api-v1=");
        // The weights come first on the line; the measured shares follow "measured".
        let after = &line[line.find("measured").unwrap_or(0)..];
        let measured_v2_real = percent(after, "api-v2=");
        // Four standard errors of a share over this step's requests, at least 2 points.
        let n: f64 = line
            .split("requests=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("requests= in {line}"));
        assert!(n >= 100.0, "enough requests to measure a share: {line}");
        let w = v2 / 100.0;
        let tolerance = (4.0 * (w * (1.0 - w) / n).sqrt()).max(0.02) * 100.0;
        assert!(
            (measured_v2_real - v2).abs() <= tolerance,
            "api-v2 share {measured_v2_real}% for weight {v2}% (tolerance {tolerance:.1})\n{ctx}"
        );
        assert!((measured + measured_v2_real - 100.0).abs() < 0.5, "{line}");
        assert!(
            line.contains("success=100.0%"),
            "no failed request: {line}\n{ctx}"
        );
    }
}

#[test]
fn demo_walks_the_canary_denies_the_caller_and_shows_identities() {
    let (stdout, ctx, success, dir) = run_demo("127.43.0", &[]);
    // The operator refuses plaintext; every proxy verified it over TLS.
    assert!(stdout.contains("(TLS only, as spiffe://"), "{ctx}");
    let proxy_logs: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with("-proxy.log"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    assert!(!proxy_logs.is_empty(), "{ctx}");
    for log in &proxy_logs {
        assert!(
            log.contains("TLS, verified against WEFT_PROXY_TRUST_ANCHORS"),
            "{ctx}"
        );
        assert!(!log.contains("UNAUTHENTICATED"), "{ctx}");
    }
    assert!(stdout.contains("edited split.yaml"), "{ctx}");
    assert_canary_steps(&stdout, &ctx);
    let access = stdout
        .lines()
        .find(|l| l.starts_with("access "))
        .unwrap_or_else(|| panic!("an access line\n{ctx}"));
    assert!(access.contains("OK"), "{access}\n{ctx}");
    assert!(access.contains("batch GET /items -> 403"), "{access}");
    let mtls = stdout
        .lines()
        .find(|l| l.starts_with("mtls: "))
        .unwrap_or_else(|| panic!("an mtls line\n{ctx}"));
    assert!(
        mtls.contains("spiffe://cluster.local/ns/demo/sa/frontend"),
        "{mtls}\n{ctx}"
    );
    assert!(success, "weft demo exits 0 when every check holds\n{ctx}");
}

#[test]
fn demo_gateway_api_walks_the_canary_with_an_httproute() {
    let (stdout, ctx, success, dir) = run_demo("127.44.0", &["--gateway-api"]);
    // The canary is an HTTPRoute in route.yaml; no TrafficSplit is written.
    let manifests = dir.path().join("manifests");
    let route = std::fs::read_to_string(manifests.join("route.yaml"))
        .unwrap_or_else(|e| panic!("route.yaml: {e}\n{ctx}"));
    assert!(route.contains("kind: HTTPRoute"), "{route}");
    assert!(
        !manifests.join("split.yaml").exists(),
        "no TrafficSplit beside the route\n{ctx}"
    );
    assert!(stdout.contains("edited route.yaml"), "{ctx}");
    // Before each step the route is Accepted and ResolvedRefs for its Service parent.
    let statuses: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("route status: "))
        .collect();
    assert_eq!(statuses.len(), 4, "one status line per step\n{ctx}");
    for s in statuses {
        assert!(
            s.contains("HTTPRoute demo/api-canary parent Service api:8080: Accepted=True ResolvedRefs=True OK"),
            "{s}\n{ctx}"
        );
    }
    assert_canary_steps(&stdout, &ctx);
    // The access step still holds: the route changes where requests go, not who may send them.
    let access = stdout
        .lines()
        .find(|l| l.starts_with("access "))
        .unwrap_or_else(|| panic!("an access line\n{ctx}"));
    assert!(access.contains("OK"), "{access}\n{ctx}");
    assert!(success, "weft demo --gateway-api exits 0\n{ctx}");
}

/// The fields of /proc/<pid>/stat after the command name (state, ppid, ...); the name may hold
/// spaces and parentheses, so they are read after its last closing parenthesis.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat_fields(*p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}

/// Whether `pid` still runs (a zombie nobody reaped does not).
fn running(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// `kill <pid>` (SIGTERM) stops the demo and every process it started, as Ctrl-C does: none is
/// left running, holding the demo's addresses.
#[test]
fn demo_stops_every_process_it_started_on_sigterm() {
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut demo = spawn_demo(
        "127.46.0",
        &["--duration", "60s", "--rate", "100"],
        dir.path(),
    );
    let (seen, up) = demo.read_until("every proxy holds a certificate and its first config");
    assert!(up, "the demo's mesh came up:\n{seen}");
    let started = children_of(demo.child.id());
    assert!(
        started.len() >= 5,
        "the operator and the proxies run as the demo's children: {started:?}"
    );
    let status = Command::new("kill")
        .arg(demo.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = demo.child.try_wait().expect("waiting for the demo") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = demo.child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let left: Vec<u32> = started.into_iter().filter(|p| running(*p)).collect();
    for p in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    assert!(exited.is_some(), "the demo exits on SIGTERM");
    assert!(
        left.is_empty(),
        "processes the demo started still run: {left:?}"
    );
    let rest: Vec<String> = demo.lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("stopping every process")),
        "the demo says it stops its processes: {rest:?}"
    );
}
