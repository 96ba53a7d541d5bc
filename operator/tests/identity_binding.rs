//! The bootstrap token buys only the identity the manifests give the pod it names: the real
//! `weft-operator` binary in `--manifests` mode on 127.0.0.1, Certify over gRPC.

mod identity_support;
mod operator_process;

use identity_support::*;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const DB: &str = "spiffe://cluster.local/ns/demo/sa/db";

fn mesh_yaml() -> String {
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n".to_string(),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: demo}\n".into(),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: db, namespace: demo}\n".into(),
        pod("demo", "web-0", Some("web"), "127.0.0.11"),
        pod("demo", "db-0", Some("db"), "127.0.0.12"),
        // No serviceAccountName: runs as `default`.
        pod("demo", "plain-0", None, "127.0.0.13"),
        // A pod that the manifests put in the control plane's namespace, as its service
        // account: it still gets no certificate for that identity.
        pod(
            "weft-system",
            "weft-operator-0",
            Some("weft-operator"),
            "127.0.0.14",
        ),
    ]
    .join("---\n")
}

fn code_and_message(
    r: Result<weft_proxy_api::v1::CertifyResponse, tonic::Status>,
) -> (tonic::Code, String) {
    match r {
        Ok(resp) => panic!("a certificate was issued, for {}", uri_san(&resp.leaf_der)),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[tokio::test]
async fn a_token_holder_gets_only_the_identity_the_manifests_give_its_pod() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write_atomic(&manifests.join("mesh.yaml"), &mesh_yaml());
    let token = token_file(dir.path());
    let issuer = dir.path().join("issuer");
    let op = Operator::start(
        &manifests,
        &[
            "--bootstrap-token-file",
            token.to_str().unwrap(),
            "--identity-issuer",
            issuer.to_str().unwrap(),
        ],
    )
    .await;
    let mut client = op.client().await;

    // The pod's own service account: issued, and chains to the operator's anchor.
    for (identity, pod) in [
        (WEB, "web-0"),
        (DB, "db-0"),
        ("spiffe://cluster.local/ns/demo/sa/default", "plain-0"),
    ] {
        let resp = certify(&mut client, request(identity, "demo", pod))
            .await
            .unwrap_or_else(|s| panic!("{pod} as {identity}: {s:?}"));
        assert_eq!(uri_san(&resp.leaf_der), identity);
        assert!(chains_to(
            &resp.leaf_der,
            &resp.intermediates_der[0],
            &resp.trust_anchors_der[0]
        ));
    }

    // Another pod's service account: refused, naming the pod's own.
    let (code, message) =
        code_and_message(certify(&mut client, request(DB, "demo", "web-0")).await);
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(
        message.contains("pod demo/web-0 runs as service account \"web\""),
        "{message}"
    );
    // A service account that exists nowhere: refused.
    let ghost_sa = "spiffe://cluster.local/ns/demo/sa/ghost";
    let (code, message) =
        code_and_message(certify(&mut client, request(ghost_sa, "demo", "web-0")).await);
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    // The right service account in another namespace: refused.
    let (code, message) = code_and_message(
        certify(
            &mut client,
            request("spiffe://cluster.local/ns/prod/sa/web", "demo", "web-0"),
        )
        .await,
    );
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");

    // The operator's identity: refused, whether asked for by a pod of another namespace or by
    // a pod the manifests put in weft-system as service account weft-operator.
    for (ns, pod) in [("demo", "web-0"), ("weft-system", "weft-operator-0")] {
        let (code, message) =
            code_and_message(certify(&mut client, request(OPERATOR_ID, ns, pod)).await);
        assert_eq!(code, tonic::Code::PermissionDenied, "{ns}/{pod}: {message}");
        assert!(
            message.contains("reserved") || message.contains("control plane"),
            "{message}"
        );
    }
    // Anything else in the control plane's namespace too.
    let (code, message) = code_and_message(
        certify(
            &mut client,
            request(
                "spiffe://cluster.local/ns/weft-system/sa/default",
                "weft-system",
                "weft-operator-0",
            ),
        )
        .await,
    );
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");

    // A pod the manifests do not have (yet): UNAVAILABLE, which proxies retry; issued once
    // the pod is in the manifests.
    let (code, message) =
        code_and_message(certify(&mut client, request(WEB, "demo", "web-9")).await);
    assert_eq!(code, tonic::Code::Unavailable, "{message}");
    assert!(message.contains("demo/web-9"), "{message}");
    write_atomic(
        &manifests.join("late.yaml"),
        &pod("demo", "web-9", Some("web"), "127.0.0.19"),
    );
    let issued = tokio::time::timeout(WAIT, async {
        loop {
            match certify(&mut client, request(WEB, "demo", "web-9")).await {
                Ok(resp) => return resp,
                Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("web-9 certified once it is in the manifests");
    assert_eq!(uri_san(&issued.leaf_der), WEB);

    // A wrong token learns nothing.
    let mut wrong = request(WEB, "demo", "web-0");
    wrong.token = b"guess".to_vec();
    let (code, _) = code_and_message(certify(&mut client, wrong).await);
    assert_eq!(code, tonic::Code::Unauthenticated);

    let (_, metrics) = get(op.admin, "/metrics").await;
    for line in [
        r#"weft_identity_certificates_refused_total{reason="reserved_identity"} 3"#,
        r#"weft_identity_certificates_refused_total{reason="permission_denied"} 3"#,
        r#"weft_identity_certificates_refused_total{reason="unauthenticated"} 1"#,
        r#"weft_identity_certificates_refused_total{reason="unknown_pod"} "#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(
        op.log().contains("reserved identity requested"),
        "{}",
        op.log()
    );
    op.stop().await;
}
