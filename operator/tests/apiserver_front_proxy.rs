//! The aggregated API server on a real TLS socket: only the front proxy's client certificate
//! (requestheader CA, allowed name) gets a request in; over it the user comes from the
//! `X-Remote-*` headers into the `Caller` the group handler sees; `/apis` lists the groups.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use weft_operator::admin::Body;
use weft_operator::aggregated::{Caller, GroupHandler, ResponseFuture};
use weft_operator::apiserver::{serve, ApiServerState, FrontProxy, ServedGroup};
use weft_operator::shutdown::Shutdown;
use weft_operator::webhook::TlsPem;

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.clone().self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A leaf of `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    (
        params.signed_by(&key, &issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

/// Answers with the caller it was given.
struct EchoCaller;

impl GroupHandler for EchoCaller {
    fn group(&self) -> &'static str {
        "test.weft.io"
    }
    fn handle(&self, _req: Request<Incoming>, caller: Caller) -> ResponseFuture {
        let body = format!(
            "{}|{}|{:?}",
            caller.user,
            caller.groups.join(","),
            caller.extra
        );
        Box::pin(async move {
            let body: Body = http_body_util::Full::new(Bytes::from(body))
                .map_err(|never| -> std::io::Error { match never {} })
                .boxed();
            Response::new(body)
        })
    }
}

struct Server {
    addr: std::net::SocketAddr,
    serving_ca: String,
    front_ca: Ca,
    _stop: weft_operator::shutdown::ShutdownTrigger,
}

async fn start() -> Server {
    let _ = weft_common::tls::crypto_provider().install_default();
    let serving_ca = ca("serving-ca");
    let (crt, key) = leaf(
        &serving_ca,
        "weft-operator",
        vec!["localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let front_ca = ca("front-proxy-ca");
    let front = FrontProxy::new(front_ca.pem.clone(), vec!["front-proxy-client".into()]);
    let acceptor = front
        .acceptor(&TlsPem {
            cert_chain_pem: crt,
            key_pem: key,
        })
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let state = ApiServerState {
        front_proxy: Arc::new(front),
        groups: vec![ServedGroup {
            handler: Arc::new(EchoCaller),
            version: "v1",
        }],
    };
    tokio::spawn(serve(listener, acceptor, state, shutdown));
    Server {
        addr,
        serving_ca: serving_ca.pem,
        front_ca,
        _stop: trigger,
    }
}

/// GET `path` with `headers`, presenting `client` (cert, key) if any: the status and body, or
/// the connection's error.
async fn get(
    s: &Server,
    client: Option<&(String, String)>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(s.serving_ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((crt, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(crt.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

const FORGED: &[(&str, &str)] = &[
    ("x-remote-user", "admin"),
    ("x-remote-group", "system:masters"),
];

#[tokio::test]
async fn only_the_front_proxy_certificate_gets_a_request_in() {
    let s = start().await;
    let front = leaf(
        &s.front_ca,
        "front-proxy-client",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    // The front proxy: answered, with the user of its headers.
    let (code, body) = get(
        &s,
        Some(&front),
        "/apis/test.weft.io/v1/things",
        &[
            ("x-remote-user", "alice"),
            ("x-remote-group", "devs"),
            ("x-remote-group", "system:authenticated"),
            ("x-remote-extra-scopes", "read"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        r#"alice|devs,system:authenticated|{"scopes": ["read"]}"#
    );

    // No client certificate, forged headers: no request gets in.
    let r = get(&s, None, "/apis/test.weft.io/v1/things", FORGED).await;
    assert!(r.is_err(), "answered without a certificate: {r:?}");

    // A certificate of the requestheader CA with a name that is not allowed.
    let other_name = leaf(
        &s.front_ca,
        "someone-else",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let r = get(
        &s,
        Some(&other_name),
        "/apis/test.weft.io/v1/things",
        FORGED,
    )
    .await;
    assert!(r.is_err(), "answered a name not allowed: {r:?}");

    // The allowed name from another CA.
    let stranger = ca("front-proxy-ca");
    let forged_cert = leaf(
        &stranger,
        "front-proxy-client",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let r = get(
        &s,
        Some(&forged_cert),
        "/apis/test.weft.io/v1/things",
        FORGED,
    )
    .await;
    assert!(r.is_err(), "answered a certificate of another CA: {r:?}");

    // The front proxy without a user header: 401.
    let (code, _) = get(&s, Some(&front), "/apis/test.weft.io/v1/things", &[])
        .await
        .unwrap();
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn apis_lists_the_groups_and_unknown_groups_are_not_found() {
    let s = start().await;
    let front = leaf(
        &s.front_ca,
        "front-proxy-client",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let user = &[("x-remote-user", "alice")];
    let (code, body) = get(&s, Some(&front), "/apis", user).await.unwrap();
    assert_eq!(code, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "APIGroupList");
    assert_eq!(v["groups"][0]["name"], "test.weft.io");
    assert_eq!(
        v["groups"][0]["preferredVersion"]["groupVersion"],
        "test.weft.io/v1"
    );
    let (code, _) = get(&s, Some(&front), "/apis/other.io/v1", user)
        .await
        .unwrap();
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = get(&s, Some(&front), "/api/v1/secrets", user)
        .await
        .unwrap();
    assert_eq!(code, StatusCode::NOT_FOUND);
}
