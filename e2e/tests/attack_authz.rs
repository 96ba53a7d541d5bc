//! Issue #13, authorization: no bypass through any inbound port or path encoding.
//!
//! Real `weft-operator`, `weft-proxy` and `weft-test-app` processes on loopback (see
//! `weft_e2e::loopback`). Build them first:
//! `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`.

use std::time::Duration;

use weft_e2e::loopback::{
    normalise_path, read_all_within, route_group_yaml, traffic_target_yaml, LoopbackMesh, MeshSpec,
    PodSpec, ServiceSpec, OUTBOUND_PORT, PROXY_ADMIN_PORT,
};

const NS: &str = "shop";
const ECHO_PORT: u16 = 9999;

/// client-0 (sa/client, an undeclared echo server on 9999), other-0 (sa/other), web-0 (sa/web,
/// HTTP app on 8080 behind Service `web`), and `extra` manifest files.
fn spec(files: &[(&str, String)]) -> MeshSpec {
    let mut s = MeshSpec::new(NS)
        .pod(PodSpec::new("client-0", "client", 10).undeclared_echo(ECHO_PORT))
        .pod(PodSpec::new("other-0", "other", 11))
        .pod(
            PodSpec::new("web-0", "web", 20)
                .label("app", "web")
                .http_app(8080, "web", "v1"),
        )
        .service(ServiceSpec::new("web", 8080).select("app", "web"));
    for (name, yaml) in files {
        s = s.file(name, yaml);
    }
    s
}

/// Only sa/client may call sa/web (every path).
fn only_client_may_call_web() -> Vec<(&'static str, String)> {
    vec![
        (
            "routes.yaml",
            route_group_yaml(NS, "web-routes", "  - name: all\n    pathRegex: /\n"),
        ),
        (
            "access.yaml",
            traffic_target_yaml(NS, "web-access", "web", &["client"], "web-routes", &["all"]),
        ),
    ]
}

fn has(bytes: &[u8], needle: &str) -> bool {
    String::from_utf8_lossy(bytes).contains(needle)
}

/// Attack: a caller that may not call `web` (sa/other, or no certificate at all) opens TLS to
/// client-0's inbound port and names, in the transport header, client-0's outbound listener
/// (4140), its proxy admin port (4191) or an app port client-0 does not declare (9999). Today the
/// inbound proxy forwards to `app_ip:port`, so sa/other reaches `web` AS sa/client (200), reads
/// the admin API, and talks to the undeclared server.
///
/// Fixed outcome: none of these connections is served (closed, refused or an error answer), and
/// `web`'s app never receives a request caused by them.
///
/// Depends on: the proxy inbound/transport fix (transport header may only target the pod's
/// application ports; a header requires a mesh client certificate).
#[tokio::test]
async fn transport_header_cannot_reach_outbound_admin_or_undeclared_ports() {
    let mesh = LoopbackMesh::start(spec(&only_client_may_call_web())).await;
    let web = mesh.authority("web", 8080);

    // The policy works for direct calls (true before and after the fix).
    let direct = mesh
        .get_via("other-0", &web, "/whoami", &[])
        .await
        .unwrap_or_else(|e| panic!("other-0 -> web: {e}\n{}", mesh.logs()));
    assert_eq!(
        direct.status, 403,
        "sa/other calling web directly: {direct:?}"
    );
    let ok = mesh
        .get_via("client-0", &web, "/whoami", &[])
        .await
        .unwrap_or_else(|e| panic!("client-0 -> web: {e}\n{}", mesh.logs()));
    assert_eq!(
        ok.status,
        200,
        "sa/client calling web: {ok:?}\n{}",
        mesh.logs()
    );
    assert_eq!(
        ok.body_text().trim(),
        format!("client-id {}", mesh.spiffe("client"))
    );
    let baseline = mesh.app_seen("web-0").await.len();

    let http_req = format!("GET /whoami HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n");
    let admin_req = "GET /config HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let mut served = Vec::new();
    for cert in [Some("other"), None] {
        for hint in [0u8, 1] {
            let cases: [(u16, &str, &str); 3] = [
                (OUTBOUND_PORT, http_req.as_str(), "HTTP/1.1 2"),
                (PROXY_ADMIN_PORT, admin_req, "HTTP/1.1 200"),
                (ECHO_PORT, "weft-e2e-probe\n", "weft-e2e-probe"),
            ];
            for (port, payload, success) in cases {
                let what = format!("client cert {cert:?}, header port {port} hint {hint}");
                let mut tls = match mesh
                    .mesh_connect("client-0", cert, Some((port, hint)))
                    .await
                {
                    Ok(t) => t,
                    Err(_) => continue, // refused: not served
                };
                use tokio::io::AsyncWriteExt;
                if tls.write_all(payload.as_bytes()).await.is_err() {
                    continue;
                }
                let _ = tls.flush().await;
                let (got, _end) = read_all_within(&mut tls, Duration::from_secs(8)).await;
                if has(&got, success) {
                    served.push(format!("{what}: {:?}", String::from_utf8_lossy(&got)));
                }
            }
        }
    }
    let after = mesh.app_seen("web-0").await;
    let caused: Vec<&String> = after[baseline..].iter().collect();
    assert!(
        served.is_empty(),
        "connections to client-0's inbound port were served through a non-application port:\n{}",
        served.join("\n")
    );
    assert!(
        caused.is_empty(),
        "web's app received requests caused by the attack (acting as sa/client): {caused:?}"
    );
}

/// A `pathRegex: /public` rule for sa/client on `web`.
fn only_public_paths() -> Vec<(&'static str, String)> {
    vec![
        (
            "routes.yaml",
            route_group_yaml(
                NS,
                "web-routes",
                "  - name: public\n    pathRegex: /public\n",
            ),
        ),
        (
            "access.yaml",
            traffic_target_yaml(
                NS,
                "web-access",
                "web",
                &["client"],
                "web-routes",
                &["public"],
            ),
        ),
    ]
}

/// Attack: dot segments (plain and percent-encoded) in a path that starts with the granted
/// prefix. Today the proxy matches the raw path `/public/../private` against `/public` and
/// forwards it unchanged: an app that normalises serves `/private`.
///
/// Fixed outcome: each request is 403, or reaches the app only as a path that stays under
/// `/public`; the app never receives a path that normalises to `/private`.
///
/// Depends on: the proxy HTTP fix (path normalisation before matching; forward what was
/// authorized).
#[tokio::test]
async fn dot_segments_do_not_escape_a_path_rule() {
    let mesh = LoopbackMesh::start(spec(&only_public_paths())).await;
    let web = mesh.authority("web", 8080);
    let public = mesh.get_via("client-0", &web, "/public/x", &[]).await;
    assert_eq!(
        public.as_ref().map(|r| r.status).ok(),
        Some(200),
        "/public/x: {public:?}\n{}",
        mesh.logs()
    );
    let private = mesh.get_via("client-0", &web, "/private", &[]).await;
    assert_eq!(
        private.as_ref().map(|r| r.status).ok(),
        Some(403),
        "/private: {private:?}"
    );

    let attacks = [
        "/public/../private",
        "/public/%2e%2e/private",
        "/public/%2E%2E/private",
        "/public/.%2e/private",
        "/public/%2e%2E/private?x=1",
    ];
    let mut answers = Vec::new();
    for path in attacks {
        let r = mesh.get_via("client-0", &web, path, &[]).await;
        answers.push(format!("{path} -> {:?}", r.as_ref().map(|r| r.status)));
        if let Ok(r) = &r {
            assert!(
                r.status == 403 || r.status == 400 || r.status == 404 || r.status == 200,
                "{path}: unexpected {r:?}"
            );
        }
    }
    let seen = mesh.app_seen("web-0").await;
    let escaped: Vec<String> = seen
        .iter()
        .filter_map(|head| head.lines().next())
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|p| !normalise_path(p).starts_with("/public"))
        .map(str::to_owned)
        .collect();
    assert!(
        escaped.is_empty(),
        "the app received paths outside /public although only /public is granted: {escaped:?} \
         (answers: {answers:?})"
    );
}

/// Attack: a request carrying `x-user: other` and `x-user: admin` against a rule `^admin$`.
/// Today one matching value satisfies the rule.
///
/// Fixed outcome: 403 (repeated values cannot satisfy a rule that one of them fails).
///
/// Depends on: the proxy HTTP fix (repeated header values).
#[tokio::test]
async fn repeated_header_cannot_satisfy_an_exact_rule() {
    let files = vec![
        (
            "routes.yaml",
            route_group_yaml(
                NS,
                "web-routes",
                "  - name: admins\n    headers:\n      x-user: \"^admin$\"\n",
            ),
        ),
        (
            "access.yaml",
            traffic_target_yaml(
                NS,
                "web-access",
                "web",
                &["client"],
                "web-routes",
                &["admins"],
            ),
        ),
    ];
    let mesh = LoopbackMesh::start(spec(&files)).await;
    let web = mesh.authority("web", 8080);
    let admin = mesh
        .get_via("client-0", &web, "/", &[("x-user", "admin")])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    assert_eq!(
        admin.status,
        200,
        "x-user: admin: {admin:?}\n{}",
        mesh.logs()
    );
    let other = mesh
        .get_via("client-0", &web, "/", &[("x-user", "other")])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other.status, 403, "x-user: other: {other:?}");
    for order in [["other", "admin"], ["admin", "other"]] {
        let both = mesh
            .get_via(
                "client-0",
                &web,
                "/",
                &[("x-user", order[0]), ("x-user", order[1])],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            both.status == 403 || both.status == 400,
            "x-user: {} and x-user: {} against ^admin$: {both:?}",
            order[0],
            order[1]
        );
    }
}
