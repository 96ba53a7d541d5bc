//! The real `weft-operator` binary in `--manifests` mode: serves a proxy, applies an edit,
//! and drains on SIGTERM.

mod runtime_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use runtime_support::*;

/// Reads the operator's log until it reports its bound addresses.
fn addresses(stderr: std::process::ChildStderr) -> (SocketAddr, SocketAddr) {
    let mut lines = BufReader::new(stderr).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if line.contains("weft-operator started") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(WAIT).expect("operator started");
    let field = |name: &str| -> SocketAddr {
        line.split(&format!("\"{name}\":\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {name} address in {line}"))
    };
    (field("discovery"), field("admin"))
}

#[tokio::test]
async fn binary_serves_manifests_and_drains_on_sigterm() {
    let dir = mesh_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-operator"))
        .args(["--manifests"])
        .arg(dir.path())
        .args([
            "--discovery-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("WEFT_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn weft-operator");
    let stderr = child.stderr.take().expect("stderr");
    let (discovery, admin) = addresses(stderr);
    until(admin, "/ready", |code, _| code == 200).await;
    let (code, _) = get(admin, "/live").await;
    assert_eq!(code, 200);

    let mut proxy = Proxy::connect(discovery, "web-0").await;
    let first = proxy.next().await;
    assert!(first.full_state);
    proxy.ack(&first).await;
    write_atomic(&dir.path().join("split.yaml"), &split(10, 90));
    let push = proxy.next().await;
    assert_eq!(
        split_weights(&push),
        Some(vec![("web-v1".into(), 10), ("web-v2".into(), 90)])
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let end = tokio::time::timeout(WAIT, proxy.rx.message())
        .await
        .expect("stream ended");
    match end {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        Ok(other) => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}
