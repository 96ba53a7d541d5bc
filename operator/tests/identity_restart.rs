//! An operator that restarts keeps its CA: the real `weft-operator` binary in `--manifests`
//! mode on 127.0.0.1, with `--identity-issuer DIR`.

mod identity_support;
mod operator_process;

use std::os::unix::fs::PermissionsExt;

use identity_support::*;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

fn mesh(dir: &std::path::Path) -> std::path::PathBuf {
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write_atomic(
        &manifests.join("mesh.yaml"),
        &pod("demo", "web-0", Some("web"), "127.0.0.11"),
    );
    manifests
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_restarted_operator_keeps_the_ca_it_generated() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = mesh(dir.path());
    let token = token_file(dir.path());
    // Does not exist yet: the operator creates it.
    let issuer = dir.path().join("state").join("issuer");
    let args = [
        "--bootstrap-token-file",
        token.to_str().unwrap(),
        "--identity-issuer",
        issuer.to_str().unwrap(),
    ];

    let first = Operator::start(&manifests, &args).await;
    let before = certify(&mut first.client().await, request(WEB, "demo", "web-0"))
        .await
        .expect("certified before the restart");
    // Written where restarts find it; the key readable by the owner only.
    assert_eq!(mode(&issuer), 0o700);
    assert_eq!(mode(&issuer.join("issuer.key")), 0o600);
    let anchors = pem_file_ders(&issuer.join("ca.crt"));
    assert_eq!(before.trust_anchors_der, anchors);
    let key = std::fs::read(issuer.join("issuer.key")).unwrap();
    first.stop().await;

    let second = Operator::start(&manifests, &args).await;
    let after = certify(&mut second.client().await, request(WEB, "demo", "web-0"))
        .await
        .expect("certified after the restart");
    // The same anchor and issuer: leaves from before and after the restart verify each other.
    assert_eq!(after.trust_anchors_der, before.trust_anchors_der);
    assert_eq!(after.intermediates_der, before.intermediates_der);
    assert!(chains_to(
        &before.leaf_der,
        &after.intermediates_der[0],
        &after.trust_anchors_der[0]
    ));
    assert!(chains_to(
        &after.leaf_der,
        &before.intermediates_der[0],
        &before.trust_anchors_der[0]
    ));
    assert_eq!(std::fs::read(issuer.join("issuer.key")).unwrap(), key);
    assert!(
        second.log().contains("identity issuer loaded"),
        "{}",
        second.log()
    );
    second.stop().await;
}

#[tokio::test]
async fn a_partial_issuer_directory_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = mesh(dir.path());
    let token = token_file(dir.path());
    let issuer = dir.path().join("issuer");
    std::fs::create_dir(&issuer).unwrap();
    let ca = weft_operator::identity::generate_ca("cluster.local").unwrap();
    std::fs::write(issuer.join("ca.crt"), &ca.ca_cert_pem).unwrap();

    // Bounded: an operator that (wrongly) starts is killed and the test fails.
    let out = tokio::task::spawn_blocking({
        let (manifests, token, issuer) = (manifests.clone(), token.clone(), issuer.clone());
        move || {
            let mut child = command(
                &manifests,
                &[
                    "--bootstrap-token-file",
                    token.to_str().unwrap(),
                    "--identity-issuer",
                    issuer.to_str().unwrap(),
                ],
            )
            .spawn()
            .expect("run weft-operator");
            let deadline = std::time::Instant::now() + WAIT;
            while child.try_wait().expect("wait").is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            child.wait_with_output().expect("operator output")
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds ca.crt but not issuer.crt, issuer.key"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(issuer.join("ca.crt")).unwrap(),
        ca.ca_cert_pem
    );
    assert!(!issuer.join("issuer.key").exists());
    assert!(!issuer.join("issuer.crt").exists());
}

#[tokio::test]
async fn without_an_issuer_directory_the_operator_warns_that_a_restart_changes_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = mesh(dir.path());
    let token = token_file(dir.path());
    let op = Operator::start(
        &manifests,
        &["--bootstrap-token-file", token.to_str().unwrap()],
    )
    .await;
    let log = op.log();
    let warning = log
        .lines()
        .find(|l| l.contains("no --identity-issuer"))
        .unwrap_or_else(|| panic!("no warning in\n{log}"));
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(warning.contains("restart"), "{warning}");
    op.stop().await;
}
