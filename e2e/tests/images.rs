//! The images `scripts/build-images.sh` builds: reproducible, non-root, self-contained (every
//! ELF file finds its shared libraries inside the image), runnable (`weft-operator --help`, the
//! proxy image's iptables in a scratch network namespace), and the kubelet stand-in runs pods
//! from them: a pod runs the image's entrypoint as the image's user in the image's root, and a
//! container whose command is not in the image fails its pod.
//!
//! Needs root (chroot, network namespaces); without it the tests skip loudly (fail in CI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use weft_e2e::cluster::{is_root, skip};
use weft_e2e::harness::kube_env;
use weft_e2e::images::{Image, ImageStore};

const TEST: &str = "images";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn store(test: &str) -> Option<std::sync::Arc<ImageStore>> {
    if !is_root() {
        skip(test, "not root (chroot and network namespaces need root)");
        return None;
    }
    match ImageStore::ensure() {
        Ok(s) => Some(s),
        Err(e) => {
            skip(test, &format!("images: {e}"));
            None
        }
    }
}

fn image<'a>(s: &'a ImageStore, repo: &str) -> &'a Image {
    s.get(repo).unwrap_or_else(|| panic!("no {repo} image"))
}

/// Every regular file under `root` that starts with the ELF magic (paths inside the image).
fn elf_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            let p = e.path();
            if ft.is_dir() {
                if p != root.join("proc") && p != root.join("dev") {
                    todo.push(p);
                }
            } else if ft.is_file() {
                let mut magic = [0u8; 4];
                let is_elf = std::fs::File::open(&p)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok()
                    && magic == *b"\x7fELF";
                if is_elf {
                    out.push(format!("/{}", p.strip_prefix(root).unwrap().display()));
                }
            }
        }
    }
    out.sort();
    out
}

fn chroot(root: &Path, userspec: Option<&str>, argv: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("chroot");
    if let Some(u) = userspec {
        cmd.arg(format!("--userspec={u}"));
    }
    cmd.arg(root)
        .args(argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap()
}

#[test]
fn images_config_users_entrypoints_and_shared_libraries() {
    let Some(s) = store("images_config") else {
        return;
    };
    let version = env!("CARGO_PKG_VERSION");
    for (repo, user, bins) in [
        ("weft/operator", "65532:65532", &["weft-operator"][..]),
        (
            "weft/proxy",
            "2102:2102",
            &["weft-proxy", "weft-proxy-init"][..],
        ),
        ("weft/sample-app", "65532:65532", &["weft-test-app"][..]),
    ] {
        let im = image(&s, repo);
        assert_eq!(im.reference, format!("{repo}:{version}"));
        // Non-root by default (the proxy's uid is the one the injector and chart use, which
        // weft-proxy-init excludes from redirection); the init container runs as root by its
        // pod's securityContext.
        assert_eq!(im.config.user, user, "{repo}");
        assert_ne!(im.user_ids().unwrap().0, 0, "{repo} must not run as root");
        let entry = im.config.entrypoint.first().expect("entrypoint");
        assert_eq!(entry, &format!("/usr/local/bin/{}", bins[0]));
        for b in bins {
            let p = im.rootfs.join(format!("usr/local/bin/{b}"));
            assert!(p.is_file(), "{repo}: {} missing", p.display());
        }
        assert!(
            im.config
                .env
                .iter()
                .any(|(k, v)| k == "PATH" && v.contains("/usr/sbin")),
            "{repo}: PATH"
        );
        // No shell: nothing but what the binaries need.
        assert!(!im.rootfs.join("bin/sh").exists(), "{repo} has a shell");
        // Every ELF file's shared libraries are inside the image (the image's own loader).
        let elves = elf_files(&im.rootfs);
        assert!(elves.len() >= bins.len() + 2, "{repo}: {elves:?}");
        for f in &elves {
            if f.contains("/ld-linux") {
                continue;
            }
            let out = chroot(
                &im.rootfs,
                None,
                &["/lib64/ld-linux-x86-64.so.2", "--list", f],
            );
            let t = text(&out);
            assert!(
                out.status.success() && !t.contains("not found"),
                "{repo}: {f}: {t}"
            );
        }
    }
    // The proxy is a static PIE (no shared library, still randomized) whose relative
    // relocations are packed (DT_RELR; docs/benchmarks.md, "The relocations packed"), and it
    // starts inside its image as the image's user.
    let proxy = image(&s, "weft/proxy");
    let bin = proxy.rootfs.join("usr/local/bin/weft-proxy");
    let out = Command::new("readelf")
        .arg("-hdW")
        .arg(&bin)
        .output()
        .expect("readelf (binutils)");
    let t = text(&out);
    assert!(out.status.success(), "readelf: {t}");
    assert!(
        t.contains("DYN (Position-Independent Executable file)"),
        "weft-proxy is not a PIE: {t}"
    );
    assert!(
        !t.contains("(NEEDED)"),
        "weft-proxy links a shared library: {t}"
    );
    assert!(
        t.contains("(RELR)"),
        "weft-proxy's relocations are not packed: {t}"
    );
    let out = chroot(
        &proxy.rootfs,
        Some("2102:2102"),
        &["weft-proxy", "--version"],
    );
    assert!(out.status.success(), "weft-proxy --version: {}", text(&out));
    // The binaries run inside their image, as the image's user.
    let op = image(&s, "weft/operator");
    let out = chroot(
        &op.rootfs,
        Some("65532:65532"),
        &["weft-operator", "--help"],
    );
    assert!(out.status.success(), "weft-operator --help: {}", text(&out));
    assert!(text(&out).contains("--kubeconfig"), "{}", text(&out));
    let app = image(&s, "weft/sample-app");
    let out = chroot(
        &app.rootfs,
        Some("65532:65532"),
        &["weft-test-app", "--help"],
    );
    assert!(out.status.success(), "weft-test-app --help: {}", text(&out));
}

#[test]
fn proxy_image_iptables_runs_in_a_network_namespace() {
    let Some(s) = store("images_iptables") else {
        return;
    };
    let proxy = image(&s, "weft/proxy");
    let ns = format!("weft-img-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(ok.success(), "ip netns add");
    let in_ns = |argv: &[&str]| {
        let mut full = vec!["netns", "exec", &ns, "chroot"];
        let root = proxy.rootfs.display().to_string();
        full.push(&root);
        full.extend_from_slice(argv);
        Command::new("ip")
            .args(&full)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .output()
            .unwrap()
    };
    let list = in_ns(&["iptables", "-t", "nat", "-L", "-n"]);
    // The init program's rules, applied by the image's iptables (nf_tables backend), with every
    // extension it uses (tcp, multiport, owner, REDIRECT).
    let rules: Vec<Vec<&str>> = vec![
        vec!["-t", "nat", "-N", "WEFT_TEST"],
        vec![
            "-t",
            "nat",
            "-A",
            "WEFT_TEST",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "22,3306:3310",
            "-j",
            "RETURN",
        ],
        vec![
            "-t",
            "nat",
            "-A",
            "WEFT_TEST",
            "-m",
            "owner",
            "--uid-owner",
            "2102",
            "-j",
            "RETURN",
        ],
        vec![
            "-t",
            "nat",
            "-A",
            "WEFT_TEST",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            "4140",
        ],
        vec!["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "WEFT_TEST"],
    ];
    let mut outs = Vec::new();
    for r in &rules {
        let mut argv = vec!["iptables"];
        argv.extend_from_slice(r);
        outs.push((r.join(" "), in_ns(&argv)));
    }
    let saved = in_ns(&["iptables", "-t", "nat", "-S"]);
    let dry = in_ns(&["weft-proxy-init", "--proxy-uid", "2102", "--dry-run"]);
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    assert!(list.status.success(), "iptables -t nat -L: {}", text(&list));
    for (r, o) in &outs {
        assert!(o.status.success(), "iptables {r}: {}", text(o));
    }
    let saved = text(&saved);
    assert!(
        saved.contains("-A WEFT_TEST -m owner --uid-owner 2102 -j RETURN")
            && saved.contains("-A WEFT_TEST -p tcp -j REDIRECT --to-ports 4140"),
        "{saved}"
    );
    assert!(
        dry.status.success(),
        "weft-proxy-init --dry-run: {}",
        text(&dry)
    );
    assert!(text(&dry).contains("WEFT_OUTPUT"), "{}", text(&dry));
}

/// Building again from the same inputs gives byte-identical images: the binaries are taken out of
/// the images under test (which may have come from the cache, built by another run on another
/// day), and two fresh builds from them, skipping the cache, must both give exactly the digests
/// of the images they came from.
#[test]
fn images_are_reproducible() {
    let Some(s) = store("images_reproducible") else {
        return;
    };
    let bins = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    for im in s.all() {
        let dir = im.rootfs.join("usr/local/bin");
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), bins.path().join(e.file_name())).unwrap();
        }
        want.push((im.reference.clone(), im.digest.clone()));
    }
    want.sort();
    assert_eq!(want.len(), 3, "{want:?}");
    let mut archives = Vec::new();
    for _ in 0..2 {
        let out_dir = tempfile::tempdir().unwrap();
        let out = Command::new(weft_e2e::cluster::repo_root().join("scripts/build-images.sh"))
            .args(["--no-cargo", "--no-cache", "--bins"])
            .arg(bins.path())
            .arg("--out")
            .arg(out_dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "build-images: {}", text(&out));
        let info: Value = serde_json::from_str(
            &std::fs::read_to_string(out_dir.path().join("images.json")).unwrap(),
        )
        .unwrap();
        let mut got = Vec::new();
        let mut a = Vec::new();
        for im in info["images"].as_array().unwrap() {
            got.push((
                im["reference"].as_str().unwrap().to_string(),
                im["digest"].as_str().unwrap().to_string(),
            ));
            let archive: PathBuf = out_dir.path().join(im["archive"].as_str().unwrap());
            a.push(std::fs::read(&archive).unwrap());
        }
        got.sort();
        assert_eq!(got, want, "same binaries and packages, different digests");
        archives.push(a);
    }
    assert!(
        archives[0] == archives[1],
        "same inputs, different archives"
    );
    // The layers the harness unpacked are the ones the script wrote.
    for im in s.all() {
        assert!(im.rootfs.join(".weft-unpacked").is_file());
    }
}

async fn wait_phase(client: &kube::Client, ns: &str, name: &str, want: &str) -> Pod {
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pod = api.get_opt(name).await.ok().flatten();
        if let Some(p) = &pod {
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(want) {
                return p.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {ns}/{name} never {want}: {pod:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_pods_run_from_images_and_unstartable_images_fail_the_pod() {
    let Some(env) = kube_env(TEST, &[], Path::new(env!("CARGO_BIN_EXE_weft-test-app"))).await
    else {
        return;
    };
    env.namespace("img", json!({})).await;
    // Any image name runs the sample app, from its image, as the image's user.
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "img"},
        "spec": {"containers": [{"name": "app", "image": "example.com/whatever:1",
            "env": [{"name": "APP_NAME", "value": "app"}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}}]}
    }))
    .await;
    // A command that is not in the image; an init container whose command is not either.
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "missing", "namespace": "img"},
        "spec": {"containers": [{"name": "app", "image": "weft/sample-app:dev",
            "command": ["/usr/local/bin/not-in-the-image"]}]}
    }))
    .await;
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "missing-init", "namespace": "img"},
        "spec": {
            "initContainers": [{"name": "init", "image": "weft/proxy:dev",
                "command": ["sh", "-c", "true"], "securityContext": {"runAsUser": 0}}],
            "containers": [{"name": "app", "image": "weft/sample-app:dev"}]}
    }))
    .await;

    let pod = env.wait_ready("img", "app", Duration::from_secs(60)).await;
    let status = pod.status.unwrap_or_default();
    let cs = status.container_statuses.unwrap_or_default();
    let image_id = cs.first().map(|c| c.image_id.clone()).unwrap_or_default();
    let sample = env.images.get("weft/sample-app").unwrap();
    assert_eq!(
        image_id,
        format!("docker.io/weft/sample-app@{}", sample.digest)
    );
    // The container's process: the image's binary, as uid 65532, in a root that is not the host's.
    let netns = weft_e2e::kubelet::netns_of(&env.state_dir, "img", "app").unwrap();
    let pids = Command::new("ip")
        .args(["netns", "pids", &netns])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    let pid = pids
        .split_whitespace()
        .next()
        .expect("a process in the pod");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("65532"),
        "{uid_line}"
    );
    let root_link = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_ne!(
        root_link,
        Path::new("/"),
        "the container runs in the host's root"
    );
    // Its root as it sees it (through the magic link, in its mount namespace).
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(root.join("usr/local/bin/weft-test-app").is_file());
    assert!(
        !root.join("bin/sh").exists(),
        "the host's files are visible"
    );
    assert!(
        root.join("var/run/weft-e2e/kubeconfig").is_file(),
        "kubeconfig"
    );
    let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
    assert!(
        hosts.contains("kubernetes.default.svc.cluster.local"),
        "{hosts}"
    );
    let cwd_exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        cwd_exe.ends_with("usr/local/bin/weft-test-app"),
        "{cwd_exe:?}"
    );
    // The pod's /etc/hosts is the kubelet's (names of Services), the sample app answers.
    let out = env
        .exec(
            "img",
            "app",
            None,
            &["curl", "-s", "--max-time", "5", "http://127.0.0.1:8080/"],
        )
        .await;
    assert_eq!(text(&out).trim(), "app v1");

    for (name, needle) in [
        ("missing", "not-in-the-image"),
        ("missing-init", "init container init failed"),
    ] {
        let p = wait_phase(&env.client, "img", name, "Failed").await;
        let msg = p.status.and_then(|s| s.message).unwrap_or_default();
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    env.shutdown().await;
}

/// The chart's defaults name exactly the images the script builds (tag = appVersion = the
/// workspace version), and the proxy's uid is the proxy image's user.
#[test]
fn chart_defaults_name_the_built_images() {
    let root = weft_e2e::cluster::repo_root();
    let read = |p: &str| -> Value {
        let text = std::fs::read_to_string(root.join(p)).unwrap();
        serde_yaml::from_str(&text).unwrap()
    };
    let values = read("charts/weft/values.yaml");
    let chart = read("charts/weft/Chart.yaml");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["appVersion"], json!(version));
    assert_eq!(
        values["operator"]["image"]["repository"],
        json!("weft/operator")
    );
    assert_eq!(values["proxy"]["image"]["repository"], json!("weft/proxy"));
    for c in ["operator", "proxy"] {
        let tag = values[c]["image"]["tag"].as_str().unwrap_or("");
        assert!(tag.is_empty() || tag == version, "{c} tag {tag}");
    }
    assert_eq!(values["proxy"]["uid"], json!(2102));
    let script = std::fs::read_to_string(root.join("scripts/build_images.py")).unwrap();
    assert!(script.contains("PROXY_UID = 2102"));
    let rendered =
        std::fs::read_to_string(root.join("charts/weft/rendered/install.yaml")).unwrap_or_default();
    if !rendered.is_empty() {
        assert!(rendered.contains(&format!("image: weft/operator:{version}")));
    }
}
