//! Issue #13, threat model: what a reader of the admin ports learns and can do. The proxy's admin
//! port (4191) and the operator's (9990) are read-only and carry no secret: no private key, no
//! bootstrap token, nothing that changes a proxy or the operator.
//!
//! Real processes on loopback (see `weft_e2e::loopback`). Build them first:
//! `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`.

use std::net::SocketAddr;
use std::time::Duration;

use weft_e2e::loopback::{http_get, http_raw, LoopbackMesh, MeshSpec, PodSpec, ServiceSpec};

const NS: &str = "shop";

async fn mesh() -> LoopbackMesh {
    LoopbackMesh::start(
        MeshSpec::new(NS)
            .pod(PodSpec::new("client-0", "client", 10))
            .pod(
                PodSpec::new("web-0", "web", 20)
                    .label("app", "web")
                    .http_app(8080, "web", "v1"),
            )
            .service(ServiceSpec::new("web", 8080).select("app", "web")),
    )
    .await
}

/// Every admin page a reader can fetch, with its body.
async fn pages(addr: SocketAddr, paths: &[&str]) -> Vec<(String, u16, String)> {
    let mut out = Vec::new();
    for path in paths {
        let rsp = http_get(addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
        out.push((path.to_string(), rsp.status, rsp.body_text()));
    }
    out
}

/// The secrets a proxy or the operator holds: the issuer's and the proxies' private keys (PEM
/// markers), and the bootstrap token's value.
fn assert_no_secret(what: &str, body: &str, token: &str) {
    for marker in ["PRIVATE KEY", "BEGIN EC", "BEGIN RSA"] {
        assert!(
            !body.contains(marker),
            "{what} exposes key material ({marker})"
        );
    }
    assert!(!body.contains(token), "{what} exposes the bootstrap token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ports_are_read_only_and_hold_no_secret() {
    let mesh = mesh().await;
    let token = String::from_utf8_lossy(&mesh.token()).trim().to_string();
    assert!(!token.is_empty());

    // The proxies: config and metrics are readable (that is what the port is for)...
    for pod in ["client-0", "web-0"] {
        let admin = mesh.pod(pod).admin();
        for (path, status, body) in pages(admin, &["/ready", "/live", "/metrics", "/config"]).await
        {
            assert_eq!(status, 200, "{pod} admin {path}: {body}");
            assert_no_secret(&format!("{pod} admin {path}"), &body, &token);
        }
        // ... and nothing on it writes: every other method is refused.
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let req = format!(
                "{method} /config HTTP/1.1\r\nHost: admin\r\nContent-Length: 2\r\n\
                 Connection: close\r\n\r\n{{}}"
            );
            let rsp = http_raw(admin, req.as_bytes(), Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{method} {admin}/config: {e}"));
            assert_eq!(rsp.status, 405, "{pod} admin {method} /config: {rsp:?}");
        }
    }

    // The operator's admin port: the same.
    let admin = mesh.operator_admin();
    for (path, status, body) in pages(
        admin,
        &["/ready", "/live", "/metrics", "/proxies", "/status"],
    )
    .await
    {
        assert_eq!(status, 200, "operator admin {path}: {body}");
        assert_no_secret(&format!("operator admin {path}"), &body, &token);
    }
    for method in ["POST", "PUT", "DELETE"] {
        let req = format!(
            "{method} /status HTTP/1.1\r\nHost: admin\r\nContent-Length: 2\r\n\
             Connection: close\r\n\r\n{{}}"
        );
        let rsp = http_raw(admin, req.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{method} operator admin: {e}"));
        assert_eq!(rsp.status, 405, "operator admin {method}: {rsp:?}");
    }

    // None of the above disturbed the mesh.
    let web = mesh.authority("web", 8080);
    let ok = mesh
        .get_via("client-0", &web, "/whoami", &[])
        .await
        .unwrap_or_else(|e| panic!("client-0 -> web: {e}\n{}", mesh.logs()));
    assert_eq!(ok.status, 200, "the mesh still works: {ok:?}");
}
