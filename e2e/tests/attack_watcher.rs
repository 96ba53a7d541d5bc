//! Issue #13, manifest watcher: it survives FIFOs, symlink loops, deep nesting and in-place
//! rewrites.
//!
//! Real processes on loopback (see `weft_e2e::loopback`). Build them first:
//! `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_e2e::loopback::{split_yaml, LoopbackMesh, MeshSpec, PodSpec, ServiceSpec};

const NS: &str = "shop";
/// Generous bound for an edit to reach a proxy (normally well under a second).
const EDIT_BOUND: Duration = Duration::from_secs(60);
const RSS_LIMIT_KIB: u64 = 200 * 1024;

/// client-0; web-v1-0 / web-v2-0 behind `web` (both), `web-v1`, `web-v2`; split.yaml: v1 100 %.
fn spec() -> MeshSpec {
    MeshSpec::new(NS)
        .pod(PodSpec::new("client-0", "client", 10))
        .pod(
            PodSpec::new("web-v1-0", "web", 20)
                .label("app", "web")
                .label("version", "v1")
                .http_app(8080, "web", "v1"),
        )
        .pod(
            PodSpec::new("web-v2-0", "web", 21)
                .label("app", "web")
                .label("version", "v2")
                .http_app(8080, "web", "v2"),
        )
        .service(ServiceSpec::new("web", 8080).select("app", "web"))
        .service(
            ServiceSpec::new("web-v1", 8080)
                .select("app", "web")
                .select("version", "v1"),
        )
        .service(
            ServiceSpec::new("web-v2", 8080)
                .select("app", "web")
                .select("version", "v2"),
        )
        .file("split.yaml", &canary(0))
}

fn canary(v2: u32) -> String {
    split_yaml(
        NS,
        "web-canary",
        "web",
        &[("web-v1", 100 - v2), ("web-v2", v2)],
        &[],
    )
}

/// Plants `hostile` in the manifests folder, then moves the canary to 100 % v2 in another file
/// and asserts that the edit reaches client-0's proxy within [`EDIT_BOUND`], that traffic follows
/// it, and that the operator's RSS stays under 200 MB throughout.
async fn edit_survives(what: &str, hostile: impl FnOnce(&std::path::Path)) {
    let mesh = LoopbackMesh::start(spec()).await;
    let web = mesh.authority("web", 8080);
    let before = mesh.tally("client-0", &web, "/", &[], 10).await;
    assert_eq!(
        before.body("web v1\n"),
        10,
        "{what}: initial split: {before:?}"
    );
    hostile(&mesh.manifests());
    // Give the watcher a rescan with the hostile entry before the edit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let version = mesh.proxy_config_version("client-0").await;
    mesh.write_manifest("split.yaml", &canary(100));
    let deadline = tokio::time::Instant::now() + EDIT_BOUND;
    let mut max_rss = 0;
    let mut applied = false;
    while tokio::time::Instant::now() < deadline {
        max_rss = max_rss.max(mesh.operator_rss_kib().unwrap_or(0));
        let now = mesh.proxy_config_version("client-0").await;
        if now.is_some() && now != version {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        max_rss < RSS_LIMIT_KIB,
        "{what}: operator RSS reached {max_rss} KiB"
    );
    assert!(
        applied,
        "{what}: an unrelated weight edit did not reach the proxy within {EDIT_BOUND:?}\n{}",
        mesh.logs()
    );
    let after = mesh.tally("client-0", &web, "/", &[], 10).await;
    assert_eq!(
        after.body("web v2\n"),
        10,
        "{what}: after the edit: {after:?}"
    );
    let rss = mesh.operator_rss_kib().unwrap_or(0);
    assert!(rss < RSS_LIMIT_KIB, "{what}: operator RSS {rss} KiB");
}

/// Hostile input: a FIFO named `x.yaml`. Today the rescan opens it and blocks forever, so no
/// later edit is applied.
///
/// Fixed outcome: the FIFO is skipped; an unrelated edit reaches the proxy; RSS < 200 MB.
///
/// Depends on: the manifests watcher fix (only regular files are read).
#[tokio::test]
async fn fifo_in_manifests_does_not_block_edits() {
    edit_survives("FIFO x.yaml", |dir| {
        let st = std::process::Command::new("mkfifo")
            .arg(dir.join("x.yaml"))
            .status()
            .unwrap_or_else(|e| panic!("mkfifo: {e}"));
        assert!(st.success(), "mkfifo failed");
    })
    .await;
}

/// Hostile input: two symlinks to `.` in the manifests folder. Today the walk is exponential (RSS
/// 14 MB → 1.55 GB in 85 s).
///
/// Fixed outcome: each real path is read once; an unrelated edit reaches the proxy; RSS < 200 MB.
///
/// Depends on: the manifests watcher fix (symlinks followed at most once per real path).
#[tokio::test]
async fn symlink_loops_do_not_blow_up_the_walk() {
    edit_survives("two symlinks to .", |dir| {
        std::os::unix::fs::symlink(".", dir.join("loop-a")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(".", dir.join("loop-b")).unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
}

/// Hostile input: a 120 KB YAML file of nested flow sequences under a key (`a: [[[[…`). Today it
/// parses in quadratic time before any depth check (serde_yaml's recursion limit applies only
/// after the whole document is scanned): about 5 minutes in a debug build, and every rescan
/// parses it again, so an unrelated edit waits behind it. (A bare `[[[[…` costs ~13 s per
/// rescan in a debug build: slow, but within this test's bound.)
///
/// Fixed outcome: the file is rejected (depth limit) without stalling; an unrelated edit reaches
/// the proxy within the bound; RSS < 200 MB.
///
/// Depends on: the manifests watcher fix (depth and size limits).
#[tokio::test]
async fn deeply_nested_yaml_does_not_stall_edits() {
    edit_survives("120 KB nested YAML", |dir| {
        let text = format!("a: {}", "[".repeat(120 * 1024 - 3));
        std::fs::write(dir.join("deep.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
}

/// Failure: split.yaml holding a weight-0 canary is rewritten in place (truncate, 500 ms pause,
/// write the same content) while client-0 sends traffic throughout. Today the watcher reads the
/// empty file, removes the split, and `web` (which selects both versions) sends part of the
/// traffic to the canary.
///
/// Fixed outcome: no request reaches web-v2 during or after three rewrites.
///
/// Depends on: the manifests watcher fix (a file that turns empty or invalid keeps its last good
/// objects; debounce).
#[tokio::test]
async fn in_place_rewrite_never_routes_to_weight_zero_canary() {
    let mesh = Arc::new(LoopbackMesh::start(spec()).await);
    let web = mesh.authority("web", 8080);
    let first = mesh.tally("client-0", &web, "/", &[], 10).await;
    assert_eq!(first.body("web v1\n"), 10, "initial split: {first:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let (v1, v2, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (mesh, web, stop) = (mesh.clone(), web.clone(), stop.clone());
        let (v1, v2, other) = (v1.clone(), v2.clone(), other.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match mesh.get_via("client-0", &web, "/", &[]).await {
                    Ok(r) if r.body_text() == "web v1\n" => v1.fetch_add(1, Ordering::Relaxed),
                    Ok(r) if r.body_text() == "web v2\n" => v2.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let path = mesh.manifests().join("split.yaml");
    let content = canary(0);
    for _ in 0..3 {
        let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        f.write_all(content.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        f.sync_all().unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let (v1, v2, other) = (
        v1.load(Ordering::Relaxed),
        v2.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    assert!(
        v1 > 0,
        "no traffic was served during the rewrites ({other} failures)"
    );
    assert_eq!(
        v2, 0,
        "a weight-0 canary got {v2} requests while its split file was rewritten in place \
         (v1: {v1}, other: {other})"
    );
}
