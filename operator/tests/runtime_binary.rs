//! The real `weft-operator` binary in `--manifests` mode: serves a proxy, applies an edit,
//! and drains on SIGTERM.

mod operator_process;
mod runtime_support;

use operator_process::Operator;
use runtime_support::*;

#[tokio::test]
async fn binary_serves_manifests_and_drains_on_sigterm() {
    let dir = mesh_dir();
    let op = Operator::spawn(dir.path(), &[]);
    let (discovery, admin) = (op.discovery, op.admin);
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

    op.terminate();
    let end = tokio::time::timeout(WAIT, proxy.rx.message())
        .await
        .expect("stream ended");
    match end {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        Ok(other) => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    let exit = op.wait().await;
    assert!(exit.success(), "{exit:?}");
}
