//! The identity service over real gRPC on loopback: issuance, every refusal, metrics, TokenReview
//! against a fake API server, and issuer rotation from a directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;
use weft_operator::identity::{
    generate_ca, BootstrapToken, CaStore, IdentityOptions, IdentityService, TokenAuthenticator,
    TokenReview,
};
use weft_proxy_api::v1::identity_client::IdentityClient;
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse};
use x509_parser::prelude::*;

const ID: &str = "spiffe://cluster.local/ns/default/sa/default";
const TOKEN: &[u8] = b"bootstrap-secret";

/// RSA 1024 CSR for `ID`, made with `openssl req -newkey rsa:1024`.
const RSA1024_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBmTCCAQICAQAwDzENMAsGA1UEAwwEd2VhazCBnzANBgkqhkiG9w0BAQEFAAOB
jQAwgYkCgYEAxSYQbKseonMhJgMa3UaxkbTGePw/W91dKptxNkhlZ7E9YojxaHS3
YyoGNp+JGZ6yFGoWd9Ndset11X4Bua0EQkXdaYZ3bROEXOxTSxxDYeEMZTA5LKci
dgk3mLDD2pXt/damJPU7W3KkBhMX4iZKuulLjj0F/dfPtMJsKyO7310CAwEAAaBK
MEgGCSqGSIb3DQEJDjE7MDkwNwYDVR0RBDAwLoYsc3BpZmZlOi8vY2x1c3Rlci5s
b2NhbC9ucy9kZWZhdWx0L3NhL2RlZmF1bHQwDQYJKoZIhvcNAQELBQADgYEAVyNo
9+7GQ3xrIG4XkRbLczYTeHzBQwUf/UX6H67RlBc/ZqbJuFJP+jYpiWJswjTBrp7i
WRxvc8njfeaq5qPFDDT7X/2AvH0Qy7j0/ODAeHqKXX7twZ3r3+Jdt7kOhfSF4P5M
fgeqQCHXaFFpOXIztwVvfi1y2t6alJv34pzh82k=
-----END CERTIFICATE REQUEST-----";

/// P-192 CSR for `ID`, made with `openssl ecparam -name prime192v1`.
const P192_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIH0MIGrAgEAMA8xDTALBgNVBAMMBHdlYWswSTATBgcqhkjOPQIBBggqhkjOPQMB
AQMyAASlB+fwepuwH6LvWlLCJA6QTNZTnLgw8oRsV4JBMnwtA+M3TpRnJiUJ3B+R
Yw1l4eigSjBIBgkqhkiG9w0BCQ4xOzA5MDcGA1UdEQQwMC6GLHNwaWZmZTovL2Ns
dXN0ZXIubG9jYWwvbnMvZGVmYXVsdC9zYS9kZWZhdWx0MAoGCCqGSM49BAMCAzgA
MDUCGQC8un1XxPG0wexz4fhBEIAvH8qgKFCua20CGBeyhKJBXj9xTp1ZM966NFP1
mE4U9st6nw==
-----END CERTIFICATE REQUEST-----";

struct Running {
    client: IdentityClient<tonic::transport::Channel>,
    registry: Registry,
    _stop: oneshot::Sender<()>,
}

async fn serve(ca: Arc<CaStore>, auth: Arc<dyn TokenAuthenticator>) -> Running {
    let service = IdentityService::new(ca, auth, IdentityOptions::default());
    let mut registry = Registry::default();
    service.register_metrics(&mut registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let client = IdentityClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Running {
        client,
        registry,
        _stop: stop,
    }
}

fn csr(sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    csr_with(&key, sans)
}

fn csr_with(key: &KeyPair, sans: Vec<SanType>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_owned().try_into().unwrap())
}

fn request(identity: &str, token: &[u8], csr_der: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        identity: identity.to_owned(),
        token: token.to_vec(),
        csr_der,
        pod_namespace: "default".into(),
        pod_name: "web-0".into(),
    }
}

fn pem_der(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().into_contents()
}

fn metrics_text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

async fn refused(
    client: &mut IdentityClient<tonic::transport::Channel>,
    req: CertifyRequest,
) -> tonic::Status {
    match client.certify(req).await {
        Ok(_) => panic!("a certificate was issued"),
        Err(status) => status,
    }
}

fn check_leaf(resp: &CertifyResponse, identity: &str) {
    let (_, leaf) = parse_x509_certificate(&resp.leaf_der).unwrap();
    let (_, issuer) = parse_x509_certificate(&resp.intermediates_der[0]).unwrap();
    let (_, anchor) = parse_x509_certificate(&resp.trust_anchors_der[0]).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).unwrap();
    issuer.verify_signature(Some(anchor.public_key())).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![GeneralName::URI(identity)]);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!leaf.is_ca());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    // Backdated by the 5 minute skew allowance, valid for 24 hours.
    assert!(
        (now - 300 - 5..=now - 300 + 5).contains(&nb),
        "not_before {nb}, now {now}"
    );
    assert!(
        (now + 86_400 - 5..=now + 86_400 + 5).contains(&na),
        "not_after {na}, now {now}"
    );
    assert_eq!(resp.not_after_unix_ms, na * 1000);
    assert_eq!(resp.not_before_unix_ms, nb * 1000);
}

#[tokio::test]
async fn issues_a_leaf_for_the_authenticated_identity() {
    let ca = Arc::new(CaStore::generate("cluster.local").unwrap());
    let mut op = serve(ca, Arc::new(BootstrapToken::new(TOKEN))).await;
    for key_alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let key = KeyPair::generate_for(key_alg).unwrap();
        let resp = op
            .client
            .certify(request(ID, TOKEN, csr_with(&key, vec![uri(ID)])))
            .await
            .unwrap()
            .into_inner();
        check_leaf(&resp, ID);
        // The leaf certifies the CSR's key.
        let (_, leaf) = parse_x509_certificate(&resp.leaf_der).unwrap();
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }
    let text = metrics_text(&op.registry);
    assert!(
        text.contains("weft_identity_certificates_issued_total 3"),
        "{text}"
    );
    assert!(
        text.contains("weft_identity_issuer_expiry_timestamp_seconds "),
        "{text}"
    );
}

#[tokio::test]
async fn refusals_have_precise_codes_and_issue_nothing() {
    let ca = Arc::new(CaStore::generate("cluster.local").unwrap());
    let mut op = serve(ca, Arc::new(BootstrapToken::new(TOKEN))).await;
    let other = "spiffe://cluster.local/ns/prod/sa/db";
    let cases: Vec<(&str, CertifyRequest, tonic::Code, &str)> = vec![
        (
            "wrong token",
            request(ID, b"guess", csr(vec![uri(ID)])),
            tonic::Code::Unauthenticated,
            "bootstrap token does not match",
        ),
        (
            "empty token",
            request(ID, b"", csr(vec![uri(ID)])),
            tonic::Code::Unauthenticated,
            "bootstrap token",
        ),
        (
            "someone else's identity (another namespace)",
            request(other, TOKEN, csr(vec![uri(other)])),
            tonic::Code::PermissionDenied,
            "spiffe://cluster.local/ns/prod/sa/db",
        ),
        (
            "foreign trust domain",
            request(
                "spiffe://evil.org/ns/default/sa/default",
                TOKEN,
                csr(vec![uri("spiffe://evil.org/ns/default/sa/default")]),
            ),
            tonic::Code::PermissionDenied,
            "evil.org",
        ),
        (
            "CSR for someone else than the request names",
            request(ID, TOKEN, csr(vec![uri(other)])),
            tonic::Code::InvalidArgument,
            "exactly one SAN",
        ),
        (
            "extra SANs",
            request(
                ID,
                TOKEN,
                csr(vec![
                    uri(ID),
                    SanType::DnsName("web.default.svc".try_into().unwrap()),
                ]),
            ),
            tonic::Code::InvalidArgument,
            "DNS:web.default.svc",
        ),
        (
            "two URI SANs",
            request(ID, TOKEN, csr(vec![uri(ID), uri(ID)])),
            tonic::Code::InvalidArgument,
            "exactly one SAN",
        ),
        (
            "no SAN",
            request(ID, TOKEN, csr(vec![])),
            tonic::Code::InvalidArgument,
            "no subjectAltName",
        ),
        (
            "RSA 1024",
            request(ID, TOKEN, pem_der(RSA1024_CSR)),
            tonic::Code::InvalidArgument,
            "RSA 1024 bits",
        ),
        (
            "P-192",
            request(ID, TOKEN, pem_der(P192_CSR)),
            tonic::Code::InvalidArgument,
            "elliptic curve",
        ),
        (
            "garbage DER",
            request(ID, TOKEN, b"\x30\x03garbage".to_vec()),
            tonic::Code::InvalidArgument,
            "not a DER PKCS#10",
        ),
        (
            "not a SPIFFE ID",
            request("web", TOKEN, csr(vec![uri(ID)])),
            tonic::Code::InvalidArgument,
            "not a SPIFFE ID",
        ),
    ];
    for (name, req, code, needle) in cases {
        let status = refused(&mut op.client, req).await;
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: {:?}",
            status.message()
        );
    }

    // A CSR whose signature does not verify: flip a bit in the signature.
    let mut tampered = csr(vec![uri(ID)]);
    let last = tampered.len() - 3;
    tampered[last] ^= 0x01;
    let status = refused(&mut op.client, request(ID, TOKEN, tampered)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("signature"),
        "{}",
        status.message()
    );

    let text = metrics_text(&op.registry);
    assert!(
        text.contains("weft_identity_certificates_issued_total 0"),
        "{text}"
    );
    for line in [
        r#"weft_identity_certificates_refused_total{reason="unauthenticated"} 2"#,
        r#"weft_identity_certificates_refused_total{reason="permission_denied"} 2"#,
        r#"weft_identity_certificates_refused_total{reason="san_mismatch"} 4"#,
        r#"weft_identity_certificates_refused_total{reason="weak_key"} 2"#,
        r#"weft_identity_certificates_refused_total{reason="invalid_csr"} 2"#,
        r#"weft_identity_certificates_refused_total{reason="invalid_request"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

/// A fake Kubernetes API server that answers TokenReviews on loopback.
async fn fake_apiserver() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        assert_eq!(
                            req.uri().path(),
                            "/apis/authentication.k8s.io/v1/tokenreviews"
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        assert_eq!(review["spec"]["audiences"][0], "weft.io/identity");
                        let status = match review["spec"]["token"].as_str().unwrap() {
                            "web-token" => serde_json::json!({
                                "authenticated": true,
                                "audiences": ["weft.io/identity"],
                                "user": {
                                    "username": "system:serviceaccount:default:web",
                                    "extra": {"authentication.kubernetes.io/pod-name": ["web-0"]}
                                }
                            }),
                            "foreign-token" => serde_json::json!({
                                "authenticated": true,
                                "audiences": ["https://kubernetes.default.svc"],
                                "user": {"username": "system:serviceaccount:default:web"}
                            }),
                            _ => serde_json::json!({
                                "authenticated": false,
                                "error": "token has expired"
                            }),
                        };
                        let answer = serde_json::json!({
                            "apiVersion": "authentication.k8s.io/v1",
                            "kind": "TokenReview",
                            "metadata": {},
                            "spec": review["spec"],
                            "status": status,
                        });
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(answer.to_string())))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn token_review_identities_are_enforced() {
    let api = fake_apiserver().await;
    let config = kube::Config::new(format!("http://{api}").parse().unwrap());
    let kube_client = kube::Client::try_from(config).unwrap();
    let ca = Arc::new(CaStore::generate("cluster.local").unwrap());
    let mut op = serve(ca, Arc::new(TokenReview::new(kube_client))).await;
    let web = "spiffe://cluster.local/ns/default/sa/web";

    let resp = op
        .client
        .certify(request(web, b"web-token", csr(vec![uri(web)])))
        .await
        .unwrap()
        .into_inner();
    check_leaf(&resp, web);

    // A valid token for `web` cannot get `default`'s identity, nor another pod's.
    let status = refused(
        &mut op.client,
        request(ID, b"web-token", csr(vec![uri(ID)])),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status
        .message()
        .contains("the token is for spiffe://cluster.local/ns/default/sa/web"));
    let mut other_pod = request(web, b"web-token", csr(vec![uri(web)]));
    other_pod.pod_name = "web-1".into();
    let status = refused(&mut op.client, other_pod).await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("bound to pod \"web-0\""));

    let status = refused(
        &mut op.client,
        request(web, b"expired-token", csr(vec![uri(web)])),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("token has expired"),
        "{}",
        status.message()
    );

    let status = refused(
        &mut op.client,
        request(web, b"foreign-token", csr(vec![uri(web)])),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("audience"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn token_review_unreachable_is_unavailable() {
    // Bind and drop: nothing listens on this loopback port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let auth = TokenReview::new(kube::Client::try_from(config).unwrap())
        .with_timeout(Duration::from_secs(5));
    let ca = Arc::new(CaStore::generate("cluster.local").unwrap());
    let mut op = serve(ca, Arc::new(auth)).await;
    let status = refused(&mut op.client, request(ID, b"any", csr(vec![uri(ID)]))).await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn rotated_issuer_files_are_picked_up_and_broken_ones_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate_ca("cluster.local").unwrap();
    first.write_issuer_dir(dir.path()).unwrap();
    let ca = Arc::new(CaStore::from_dir(dir.path()).unwrap());
    let mut updates = ca.subscribe();
    updates.mark_unchanged();
    let watcher = tokio::spawn(Arc::clone(&ca).watch(Duration::from_millis(50)));
    let mut op = serve(Arc::clone(&ca), Arc::new(BootstrapToken::new(TOKEN))).await;

    let before = op
        .client
        .certify(request(ID, TOKEN, csr(vec![uri(ID)])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.intermediates_der[0], pem_der(&first.issuer_cert_pem));

    // Rotate the issuer under the same anchor; the watcher installs it.
    let second = first.rotate_issuer("cluster.local").unwrap();
    second.write_issuer_dir(dir.path()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), updates.changed())
        .await
        .expect("new issuer not picked up")
        .unwrap();
    let after = op
        .client
        .certify(request(ID, TOKEN, csr(vec![uri(ID)])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.intermediates_der[0], pem_der(&second.issuer_cert_pem));
    assert_eq!(after.trust_anchors_der, before.trust_anchors_der);
    let (_, leaf) = parse_x509_certificate(&after.leaf_der).unwrap();
    let (_, issuer) = parse_x509_certificate(&after.intermediates_der[0]).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).unwrap();

    // From here the test calls `reload` itself: stop the watcher, which would otherwise see each
    // broken state first (a state already seen is reported as unchanged, `Ok(false)`).
    watcher.abort();
    let _ = watcher.await;

    // A broken key: reload fails, the second issuer stays.
    std::fs::write(dir.path().join("issuer.key"), "not a key").unwrap();
    assert!(ca.reload().is_err());
    // A key that does not match the certificate: refused too.
    let third = first.rotate_issuer("cluster.local").unwrap();
    std::fs::write(dir.path().join("issuer.key"), &third.issuer_key_pem).unwrap();
    assert!(ca.reload().is_err());
    // An issuer from another anchor: refused.
    let foreign = generate_ca("cluster.local").unwrap();
    std::fs::write(dir.path().join("issuer.key"), &foreign.issuer_key_pem).unwrap();
    std::fs::write(dir.path().join("issuer.crt"), &foreign.issuer_cert_pem).unwrap();
    assert!(ca.reload().is_err());
    let still = op
        .client
        .certify(request(ID, TOKEN, csr(vec![uri(ID)])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.intermediates_der[0], pem_der(&second.issuer_cert_pem));
}
