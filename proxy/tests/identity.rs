//! Proxy identities obtained from an in-process operator over gRPC on loopback, then used for
//! mTLS between real sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::transport::{Endpoint, Server};
use weft_operator::identity::{BootstrapToken, CaStore, IdentityOptions, IdentityService};
use weft_proxy::identity::{peer_identity, server_name_for, Identity, IdentityConfig, RenewPolicy};

const TOKEN: &str = "bootstrap-secret";

struct Operator {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn operator(ca: CaStore, leaf_lifetime: Duration) -> Operator {
    operator_with(Arc::new(ca), leaf_lifetime).await
}

async fn operator_with(ca: Arc<CaStore>, leaf_lifetime: Duration) -> Operator {
    let opts = IdentityOptions {
        leaf_lifetime,
        clock_skew: Duration::ZERO,
        ..IdentityOptions::default()
    };
    let service = IdentityService::new(ca, Arc::new(BootstrapToken::new(TOKEN.as_bytes())), opts);
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
    Operator { addr, _stop: stop }
}

struct Proxy {
    identity: Identity,
    _token: tempfile::NamedTempFile,
}

async fn proxy(op: &Operator, sa: &str, token: &str) -> Proxy {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), token).unwrap();
    let cfg = IdentityConfig {
        control_addr: format!("http://{}", op.addr),
        token_file: token_file.path().to_path_buf(),
        pod_namespace: "default".into(),
        pod_name: format!("{sa}-0"),
        service_account: sa.into(),
        trust_domain: "cluster.local".into(),
        trust_anchors: None,
    };
    let channel = Endpoint::from_shared(cfg.control_addr.clone())
        .unwrap()
        .connect_lazy();
    let policy = RenewPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..RenewPolicy::default()
    };
    let (identity, driver) = Identity::with_policy(cfg, channel, policy);
    tokio::spawn(driver);
    Proxy {
        identity,
        _token: token_file,
    }
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// An mTLS echo server: replies with the client's SPIFFE id (or "anonymous"), then the bytes read.
async fn tls_server(identity: &Identity) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(peer_identity)
                    .unwrap_or_else(|| "anonymous".into());
                let mut buf = [0u8; 4];
                if tls.read_exact(&mut buf).await.is_ok() {
                    let _ = tls
                        .write_all(format!("{peer} {}\n", String::from_utf8_lossy(&buf)).as_bytes())
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// One request over a fresh mTLS connection; returns the server's answer and the server's
/// leaf certificate.
async fn call(
    client: &Identity,
    addr: SocketAddr,
    expect: &str,
) -> Result<(String, Vec<u8>), String> {
    let connector = tokio_rustls::TlsConnector::from(client.client_config());
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(server_name_for(expect), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let server_leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok((answer, server_leaf))
}

async fn ready(p: &Proxy) {
    tokio::time::timeout(Duration::from_secs(20), p.identity.ready())
        .await
        .expect("no certificate");
}

#[tokio::test]
async fn proxies_get_identities_and_authenticate_each_other() {
    let op = operator(
        CaStore::generate("cluster.local").unwrap(),
        Duration::from_secs(3600),
    )
    .await;
    let web = proxy(&op, "web", TOKEN).await;
    let db = proxy(&op, "db", TOKEN).await;
    ready(&web).await;
    ready(&db).await;
    assert!(web.identity.is_ready());
    assert_eq!(web.identity.local_identity(), Some(spiffe("web")));
    let expiry = web.identity.expiry().unwrap();
    let left = expiry.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));

    let db_addr = tls_server(&db.identity).await;
    let (answer, _) = call(&web.identity, db_addr, &spiffe("db")).await.unwrap();
    assert_eq!(answer, format!("{} ping\n", spiffe("web")));

    // Expecting another identity than the server's: the client refuses.
    let err = call(&web.identity, db_addr, &spiffe("payments"))
        .await
        .unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");
    // A server name that carries no identity: refused too.
    let connector = tokio_rustls::TlsConnector::from(web.identity.client_config());
    let tcp = TcpStream::connect(db_addr).await.unwrap();
    let name = ServerName::try_from("db.default.svc.cluster.local").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());

    // A plain TLS client without a certificate is still served (client certs are optional),
    // and the server sees no identity. It must trust the anchor to get that far.
    let chain = db.identity.certificate_chain();
    let anchor_holder = web.identity.certificate_chain();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], anchor_holder[1]);
    let anon_cfg = anonymous_client_config(&web.identity);
    let connector = tokio_rustls::TlsConnector::from(anon_cfg);
    let tcp = TcpStream::connect(db_addr).await.unwrap();
    let mut tls = connector
        .connect(server_name_for(&spiffe("db")), tcp)
        .await
        .unwrap();
    tls.write_all(b"ping").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "anonymous ping\n");
}

/// The client config of `identity` without its client certificate.
fn anonymous_client_config(identity: &Identity) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*identity.client_config()).clone();
    cfg.client_auth_cert_resolver = Arc::new(NoClientCert);
    Arc::new(cfg)
}

#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_wrong_token_never_yields_a_certificate() {
    let op = operator(
        CaStore::generate("cluster.local").unwrap(),
        Duration::from_secs(3600),
    )
    .await;
    let p = proxy(&op, "web", "not-the-token").await;
    // Several attempts (backoff 50..200 ms) within this window; none may succeed.
    let got = tokio::time::timeout(Duration::from_secs(1), p.identity.ready()).await;
    assert!(got.is_err());
    assert!(!p.identity.is_ready());
    assert_eq!(p.identity.local_identity(), None);
}

#[tokio::test]
async fn peers_from_another_trust_anchor_are_rejected_both_ways() {
    let op_a = operator(
        CaStore::generate("cluster.local").unwrap(),
        Duration::from_secs(3600),
    )
    .await;
    let op_b = operator(
        CaStore::generate("cluster.local").unwrap(),
        Duration::from_secs(3600),
    )
    .await;
    let a = proxy(&op_a, "web", TOKEN).await;
    let a_server = proxy(&op_a, "db", TOKEN).await;
    let b = proxy(&op_b, "web", TOKEN).await;
    let b_server = proxy(&op_b, "db", TOKEN).await;
    for p in [&a, &a_server, &b, &b_server] {
        ready(p).await;
    }
    let a_addr = tls_server(&a_server.identity).await;
    let b_addr = tls_server(&b_server.identity).await;
    // Same anchor: fine.
    assert!(call(&a.identity, a_addr, &spiffe("db")).await.is_ok());
    assert!(call(&b.identity, b_addr, &spiffe("db")).await.is_ok());
    // A's client rejects B's server (same identity name, foreign anchor).
    let err = call(&a.identity, b_addr, &spiffe("db")).await.unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");

    // B's client, trusting A's anchor but presenting B's certificate: A's server rejects it.
    let b_trusting_a = client_trusting(&b.identity, &a.identity);
    let connector = tokio_rustls::TlsConnector::from(b_trusting_a);
    let tcp = TcpStream::connect(a_addr).await.unwrap();
    let result = async {
        let mut tls = connector
            .connect(server_name_for(&spiffe("db")), tcp)
            .await?;
        tls.write_all(b"ping").await?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    }
    .await;
    assert!(
        !matches!(&result, Ok(a) if a.contains("ping")),
        "A's server accepted a client certificate from another anchor: {result:?}"
    );
}

/// A client presenting `presenting`'s certificate but verifying servers with `trusting`'s
/// anchors.
fn client_trusting(presenting: &Identity, trusting: &Identity) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*trusting.client_config()).clone();
    cfg.client_auth_cert_resolver = presenting.client_config().client_auth_cert_resolver.clone();
    Arc::new(cfg)
}

#[tokio::test]
async fn certificates_renew_before_expiry_without_failing_requests() {
    // 3 second certificates: renewal at ~2 s.
    let op = operator(
        CaStore::generate("cluster.local").unwrap(),
        Duration::from_secs(3),
    )
    .await;
    let web = proxy(&op, "web", TOKEN).await;
    let db = proxy(&op, "db", TOKEN).await;
    ready(&web).await;
    ready(&db).await;
    let db_addr = tls_server(&db.identity).await;
    let first_server_leaf = db.identity.certificate_chain()[0].to_vec();
    let first_client_expiry = web.identity.expiry().unwrap();

    // Keep making requests until both sides renewed twice; every request must succeed.
    let renewals = async {
        for _ in 0..2 {
            tokio::join!(web.identity.changed(), db.identity.changed());
        }
    };
    tokio::pin!(renewals);
    let mut requests = 0u32;
    let mut server_leaves = std::collections::HashSet::new();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    let db_id = spiffe("db");
    loop {
        tokio::select! {
            _ = &mut renewals => break,
            _ = &mut deadline => panic!("no renewal within 30 s"),
            result = call(&web.identity, db_addr, &db_id) => {
                let (answer, leaf) = result.unwrap_or_else(|e| panic!("request {requests} failed: {e}"));
                assert_eq!(answer, format!("{} ping\n", spiffe("web")));
                server_leaves.insert(leaf);
                requests += 1;
            }
        }
    }
    // Still working after the renewals, with a new certificate on both sides.
    let (_, leaf) = call(&web.identity, db_addr, &spiffe("db")).await.unwrap();
    assert_ne!(leaf, first_server_leaf);
    assert!(web.identity.expiry().unwrap() > first_client_expiry);
    assert!(requests > 0);
    assert!(server_leaves.len() >= 2, "the server kept one certificate");
}

#[tokio::test]
async fn renewal_failures_keep_the_current_certificate() {
    let op = operator(
        CaStore::generate("cluster.local").unwrap(),
        Duration::from_secs(3),
    )
    .await;
    let web = proxy(&op, "web", TOKEN).await;
    ready(&web).await;
    let before = web.identity.certificate_chain();
    // The operator goes away; renewals fail; the proxy keeps its certificate.
    drop(op);
    std::fs::write(web._token.path(), "rotated-away").unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(4), web.identity.changed()).await;
    assert!(
        changed.is_err(),
        "a certificate was installed without an operator"
    );
    assert!(web.identity.is_ready());
    assert_eq!(web.identity.certificate_chain(), before);
}

#[tokio::test]
async fn proxies_move_to_a_rotated_issuer_and_keep_talking() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = weft_operator::identity::generate_ca("cluster.local").unwrap();
    bundle.write_issuer_dir(dir.path()).unwrap();
    let ca = CaStore::from_dir(dir.path()).unwrap();
    let mut issuers = ca.subscribe();
    issuers.mark_unchanged();
    let ca = Arc::new(ca);
    tokio::spawn(Arc::clone(&ca).watch(Duration::from_millis(50)));
    let op = operator_with(ca, Duration::from_secs(3)).await;
    let web = proxy(&op, "web", TOKEN).await;
    let db = proxy(&op, "db", TOKEN).await;
    ready(&web).await;
    ready(&db).await;
    let old_issuer = db.identity.certificate_chain()[1].to_vec();

    let rotated = bundle.rotate_issuer("cluster.local").unwrap();
    rotated.write_issuer_dir(dir.path()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), issuers.changed())
        .await
        .unwrap()
        .unwrap();
    // The next renewal of `db` chains to the new issuer; `web` may still hold an old-issuer
    // leaf: both chain to the same anchor, so they keep talking.
    tokio::time::timeout(Duration::from_secs(10), db.identity.changed())
        .await
        .unwrap();
    let new_issuer = db.identity.certificate_chain()[1].to_vec();
    assert_ne!(new_issuer, old_issuer);
    assert_eq!(
        new_issuer,
        ::pem::parse(&rotated.issuer_cert_pem)
            .unwrap()
            .into_contents()
    );
    let db_addr = tls_server(&db.identity).await;
    let (answer, _) = call(&web.identity, db_addr, &spiffe("db")).await.unwrap();
    assert_eq!(answer, format!("{} ping\n", spiffe("web")));
}
