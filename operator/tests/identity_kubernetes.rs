//! The Kubernetes token flow (TokenReview against a fake API server on 127.0.0.1) refuses the
//! control plane's identities even for a token that really is the operator's service account.

mod identity_support;
mod operator_process;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use identity_support::{certify, request, uri_san, OPERATOR_ID};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::transport::Server;
use weft_operator::identity::{CaStore, IdentityOptions, IdentityService, SpiffeId, TokenReview};
use weft_proxy_api::v1::identity_client::IdentityClient;

/// Answers TokenReviews: `operator-token` is `weft-system:weft-operator` (bound to pod
/// `weft-operator-0`), `web-token` is `demo:web` (bound to `web-0`). Counts the reviews.
async fn fake_apiserver(reviews: Arc<AtomicUsize>) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reviews = reviews.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let reviews = reviews.clone();
                        async move {
                            reviews.fetch_add(1, Ordering::SeqCst);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let (user, pod) = match review["spec"]["token"].as_str() {
                                Some("operator-token") => (
                                    "system:serviceaccount:weft-system:weft-operator",
                                    "weft-operator-0",
                                ),
                                _ => ("system:serviceaccount:demo:web", "web-0"),
                            };
                            let answer = serde_json::json!({
                                "apiVersion": "authentication.k8s.io/v1",
                                "kind": "TokenReview",
                                "metadata": {},
                                "spec": review["spec"],
                                "status": {
                                    "authenticated": true,
                                    "audiences": ["weft.io/identity"],
                                    "user": {
                                        "username": user,
                                        "extra": {"authentication.kubernetes.io/pod-name": [pod]}
                                    }
                                },
                            });
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
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
async fn a_token_review_for_the_operators_account_gets_no_workload_certificate() {
    let reviews = Arc::new(AtomicUsize::new(0));
    let api = fake_apiserver(reviews.clone()).await;
    let kube_client =
        kube::Client::try_from(kube::Config::new(format!("http://{api}").parse().unwrap()))
            .unwrap();
    // As the operator binary configures it in a cluster (defaults of --namespace and
    // --service-account).
    let opts = IdentityOptions {
        reserved: vec![SpiffeId::parse(OPERATOR_ID).unwrap()],
        ..IdentityOptions::default()
    };
    let service = IdentityService::new(
        Arc::new(CaStore::generate("cluster.local").unwrap()),
        Arc::new(TokenReview::new(kube_client)),
        opts,
    );
    let mut registry = Registry::default();
    service.register_metrics(&mut registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = IdentityClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // The operator's own service account, with a token the API server vouches for.
    let mut req = request(OPERATOR_ID, "weft-system", "weft-operator-0");
    req.token = b"operator-token".to_vec();
    let status = certify(&mut client, req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("reserved"), "{status:?}");
    // Refused before any TokenReview is made.
    assert_eq!(reviews.load(Ordering::SeqCst), 0);

    // The same token asking for another identity in the control plane's namespace: the
    // review says weft-operator, the decision refuses the whole namespace.
    let other = "spiffe://cluster.local/ns/demo/sa/web";
    let mut req = request(other, "weft-system", "weft-operator-0");
    req.token = b"operator-token".to_vec();
    let status = certify(&mut client, req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("control plane"), "{status:?}");
    assert_eq!(reviews.load(Ordering::SeqCst), 1);

    // An ordinary workload is certified.
    let mut req = request(other, "demo", "web-0");
    req.token = b"web-token".to_vec();
    let resp = certify(&mut client, req).await.expect("web certified");
    assert_eq!(uri_san(&resp.leaf_der), other);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"weft_identity_certificates_refused_total{reason="reserved_identity"} 2"#),
        "{text}"
    );
    assert!(
        text.contains("weft_identity_certificates_issued_total 1"),
        "{text}"
    );
}
