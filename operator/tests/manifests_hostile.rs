//! The `--manifests` source against hostile or careless directory contents (issue #13,
//! "Manifest watcher stalls"): FIFOs, symlink loops, deeply nested and oversized files, files
//! rewritten in place. Most tests run the real `weft-operator` binary on loopback and judge
//! what a proxy is served and what `/ready` and `/status` say.

mod operator_process;
mod runtime_support;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use operator_process::Operator;
use runtime_support::*;
use weft_operator::runtime::{Runtime, RuntimeConfig, SourceConfig};
use weft_operator::source::manifests::WatchOptions;

impl Operator {
    /// Resident memory of the operator process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

fn weights(w1: u64, w2: u64) -> Option<Vec<(String, u64)>> {
    Some(vec![("web-v1".to_string(), w1), ("web-v2".to_string(), w2)])
}

/// Waits for the operator to be ready and returns a proxy that has ACKed its first config.
async fn ready_proxy(op: &Operator) -> Proxy {
    until(op.admin, "/ready", |code, _| code == 200).await;
    let mut proxy = Proxy::connect(op.discovery, "web-0").await;
    let first = proxy.next().await;
    assert_eq!(split_weights(&first), weights(100, 0));
    proxy.ack(&first).await;
    proxy
}

/// Edits the split and waits for the proxy to be pushed the new weights.
async fn edit_applies(dir: &Path, proxy: &mut Proxy, w1: u64, w2: u64) {
    write_atomic(&dir.join("split.yaml"), &split(w1, w2));
    loop {
        let push = proxy.next().await;
        proxy.ack(&push).await;
        if split_weights(&push) == weights(w1, w2) {
            return;
        }
    }
}

/// The weights a proxy connecting now is served (what is in force).
async fn served_weights(op: &Operator) -> Option<Vec<(String, u64)>> {
    let mut fresh = Proxy::connect(op.discovery, "web-0").await;
    let first = fresh.next().await;
    assert!(first.full_state);
    split_weights(&first)
}

fn source_error(status: &str, file: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(status).ok()?;
    v["sourceErrors"][file].as_str().map(str::to_string)
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

#[tokio::test]
async fn a_fifo_or_socket_named_yaml_is_skipped_and_edits_still_apply() {
    let dir = mesh_dir();
    // One present at start (the first rescan must not block on it)...
    mkfifo(&dir.path().join("x.yaml"));
    let op = Operator::spawn(dir.path(), &[]);
    let mut proxy = ready_proxy(&op).await;
    // ...and more created while it runs.
    mkfifo(&dir.path().join("sub-fifo.yml"));
    let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock.json"))
        .expect("bind a socket named sock.json");
    edit_applies(dir.path(), &mut proxy, 50, 50).await;

    let status = until(op.admin, "/status", |_, b| {
        source_error(b, "sock.json").is_some() && source_error(b, "sub-fifo.yml").is_some()
    })
    .await;
    let fifo = source_error(&status, "x.yaml").expect("x.yaml named");
    assert!(fifo.contains("not a regular file (FIFO)"), "{fifo}");
    let socket = source_error(&status, "sock.json").expect("sock.json named");
    assert!(socket.contains("not a regular file (socket)"), "{socket}");
    let (code, ready) = get(op.admin, "/ready").await;
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("warning: x.yaml: skipped"), "{ready}");
    // Later edits keep applying.
    edit_applies(dir.path(), &mut proxy, 10, 90).await;
}

#[tokio::test]
async fn symlink_loops_keep_memory_bounded_and_edits_still_apply() {
    let dir = mesh_dir();
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let op = Operator::spawn(dir.path(), &[]);
    let mut proxy = ready_proxy(&op).await;

    // Two symlinks to `.` (and one to the parent of a subdirectory): an unbounded walk would
    // go down a/a/b/a/... exponentially.
    std::os::unix::fs::symlink(".", dir.path().join("a")).expect("symlink a");
    std::os::unix::fs::symlink(".", dir.path().join("b")).expect("symlink b");
    std::os::unix::fs::symlink("..", dir.path().join("sub/up")).expect("symlink up");
    // A second path to a manifest file is read once.
    std::os::unix::fs::symlink("split.yaml", dir.path().join("z-alias.yaml")).expect("symlink");
    edit_applies(dir.path(), &mut proxy, 30, 70).await;
    // Several rescans later (every edit is one), memory is still bounded and edits apply.
    for w in [40, 60, 80] {
        edit_applies(dir.path(), &mut proxy, w, 100 - w).await;
    }
    let rss = op.rss();
    assert!(rss < 200 * 1024 * 1024, "operator RSS {} MiB", rss >> 20);

    let status = until(op.admin, "/status", |_, b| {
        source_error(b, "a").is_some() && source_error(b, "b").is_some()
    })
    .await;
    let a = source_error(&status, "a").expect("a");
    assert!(a.contains("already read through another path"), "{a}");
    assert!(source_error(&status, "sub/up").is_some(), "{status}");
    let alias = source_error(&status, "z-alias.yaml").expect("z-alias.yaml");
    assert!(alias.contains("the same file as split.yaml"), "{alias}");
    assert_eq!(get(op.admin, "/ready").await.0, 200);
}

#[tokio::test]
async fn a_deeply_nested_file_is_refused_quickly_and_edits_still_apply() {
    let dir = mesh_dir();
    let op = Operator::spawn(dir.path(), &[]);
    let mut proxy = ready_proxy(&op).await;

    // 120 KB of `[` (21.7 s of parsing before the fix) and 160 KB of `{a: ` (over 30 s).
    std::fs::write(dir.path().join("deep.yaml"), "[".repeat(120_000)).expect("write");
    std::fs::write(dir.path().join("deeper.yaml"), "{a: ".repeat(40_000)).expect("write");
    // An unrelated edit applies (`Proxy::next` waits at most 20 s, less than the unbounded
    // parse of these two files would take).
    edit_applies(dir.path(), &mut proxy, 20, 80).await;

    let status = until(op.admin, "/status", |_, b| {
        source_error(b, "deep.yaml").is_some() && source_error(b, "deeper.yaml").is_some()
    })
    .await;
    for file in ["deep.yaml", "deeper.yaml"] {
        let e = source_error(&status, file).expect("named");
        assert!(
            e.contains("refused before parsing") && e.contains("nested more than 64 deep"),
            "{file}: {e}"
        );
    }
    // A file nested deeper than the limit by indentation alone is refused too.
    let mut block = String::new();
    for i in 0..80 {
        block.push_str(&" ".repeat(i));
        block.push_str("a:\n");
    }
    std::fs::write(dir.path().join("indented.yaml"), block).expect("write");
    edit_applies(dir.path(), &mut proxy, 25, 75).await;
    let status = until(op.admin, "/status", |_, b| {
        source_error(b, "indented.yaml").is_some()
    })
    .await;
    let e = source_error(&status, "indented.yaml").expect("named");
    assert!(e.contains("nested"), "{e}");
}

#[tokio::test]
async fn a_too_large_file_is_refused_and_keeps_the_last_good_objects() {
    let dir = mesh_dir();
    let op = Operator::spawn(dir.path(), &[]);
    let mut proxy = ready_proxy(&op).await;

    // services.yaml grows past the limit (valid YAML: a comment): refused, and its services
    // stay in force (the split still routes to them).
    let big = format!(
        "{}\n# {}\n",
        services(),
        "x".repeat(weft_operator::model::manifests::MAX_MANIFEST_BYTES)
    );
    write_atomic(&dir.path().join("services.yaml"), &big);
    let status = until(op.admin, "/status", |_, b| {
        source_error(b, "services.yaml").is_some()
    })
    .await;
    let e = source_error(&status, "services.yaml").expect("named");
    assert!(e.contains("more than the limit of 4194304 bytes"), "{e}");
    assert!(e.contains("stay in force"), "{e}");
    assert_eq!(served_weights(&op).await, weights(100, 0));
    edit_applies(dir.path(), &mut proxy, 35, 65).await;
}

#[tokio::test]
async fn a_file_rewritten_in_place_never_loses_its_objects_in_the_gap() {
    let dir = mesh_dir();
    let op = Operator::spawn(dir.path(), &[]);
    let mut proxy = ready_proxy(&op).await;
    let path = dir.path().join("split.yaml");

    // Truncate in place (as `>` or an editor writing in place does) and pause.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("truncate");
    let status = until(op.admin, "/status", |_, b| {
        source_error(b, "split.yaml").is_some_and(|e| e.starts_with("empty"))
    })
    .await;
    let e = source_error(&status, "split.yaml").expect("named");
    assert!(e.contains("last good 1 objects stay in force"), "{e}");
    // The weight-0 canary still gets nothing: the split is still served.
    assert_eq!(served_weights(&op).await, weights(100, 0));

    // Half of the new content, another pause: invalid, still the old split.
    let new = split(90, 10);
    let (head, tail) = new.split_at(new.len() / 2);
    file.write_all(head.as_bytes()).expect("write half");
    file.flush().expect("flush");
    until(op.admin, "/status", |_, b| {
        source_error(b, "split.yaml").is_some_and(|e| !e.starts_with("empty"))
    })
    .await;
    assert_eq!(served_weights(&op).await, weights(100, 0));
    let (code, ready) = get(op.admin, "/ready").await;
    assert_eq!(code, 200, "the last good config is in force: {ready}");
    assert!(ready.contains("warning: split.yaml:"), "{ready}");

    // The rest: the new weights apply and the warning clears.
    file.write_all(tail.as_bytes()).expect("write rest");
    drop(file);
    loop {
        let push = proxy.next().await;
        proxy.ack(&push).await;
        let w = split_weights(&push);
        // No push in between ever removed the split.
        assert!(w.is_some(), "split removed: {push:?}");
        if w == weights(90, 10) {
            break;
        }
    }
    until(op.admin, "/status", |_, b| {
        source_error(b, "split.yaml").is_none()
    })
    .await;
}

#[tokio::test]
async fn an_emptied_file_is_honoured_after_the_grace_and_a_deleted_one_at_once() {
    let dir = mesh_dir();
    let mut config = RuntimeConfig::manifests_on_loopback(dir.path());
    config.source = SourceConfig::Manifests {
        dir: dir.path().to_path_buf(),
        watch: WatchOptions {
            empty_grace: Duration::from_millis(1500),
            ..WatchOptions::default()
        },
    };
    let rt = Runtime::start(config).await.expect("runtime starts");
    until(rt.admin_addr, "/ready", |code, _| code == 200).await;
    let mut proxy = Proxy::connect(rt.discovery_addr, "web-0").await;
    let first = proxy.next().await;
    assert_eq!(split_weights(&first), weights(100, 0));
    proxy.ack(&first).await;

    // Emptied and left empty: after the grace (and with no further event) the split goes.
    std::fs::write(dir.path().join("split.yaml"), "").expect("empty");
    until(rt.admin_addr, "/status", |_, b| {
        source_error(b, "split.yaml").is_some_and(|e| e.starts_with("empty"))
    })
    .await;
    loop {
        let push = proxy.next().await;
        proxy.ack(&push).await;
        if split_weights(&push).is_none()
            && push.resources.iter().any(|r| r.name == "outbound:web.demo")
        {
            break;
        }
    }
    until(rt.admin_addr, "/status", |_, b| {
        source_error(b, "split.yaml").is_none()
    })
    .await;

    // Deleting a file removes its objects at once (no grace).
    std::fs::remove_file(dir.path().join("services.yaml")).expect("remove");
    loop {
        let push = proxy.next().await;
        proxy.ack(&push).await;
        if push.removed.iter().any(|n| n == "outbound:web.demo") {
            break;
        }
    }
    rt.shutdown();
    rt.wait().await.expect("clean shutdown");
}
