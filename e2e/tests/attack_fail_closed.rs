//! Issue #13, fail closed: each mistake in a TrafficSplit keeps traffic where it was (or fails
//! it), never shifts it, and the operator's `/status` says so (manifests mode).
//!
//! Real processes on loopback (see `weft_e2e::loopback`). Build them first:
//! `cargo build -p weft-proxy -p weft-operator -p weft-e2e --bins`.

use std::time::Duration;

use weft_e2e::loopback::{
    route_group_yaml, split_yaml, Condition, LoopbackMesh, MeshSpec, PodSpec, ServiceSpec,
};

const NS: &str = "shop";

/// client-0 (sa/client); web-v1-0 and web-v2-0 (sa/web, answering "web v1" / "web v2").
/// `web_selects_v1_only`: Service `web` selects only v1 (an A/B root whose beta is `web-v2`);
/// otherwise both. Services `web-v1`, `web-v2` select one version each.
fn spec(web_selects_v1_only: bool, files: &[(&str, String)]) -> MeshSpec {
    let mut web = ServiceSpec::new("web", 8080).select("app", "web");
    if web_selects_v1_only {
        web = web.select("version", "v1");
    }
    let mut s = MeshSpec::new(NS)
        .pod(PodSpec::new("client-0", "client", 10))
        .pod(
            PodSpec::new("web-v1-0", "web", 20)
                .label("app", "web")
                .label("version", "v1")
                .http_app(8080, "web", "v1"),
        )
        .pod(
            PodSpec::new("web-v2-0", "web", 21)
                .label("app", "web")
                .label("version", "v2")
                .http_app(8080, "web", "v2"),
        )
        .service(web)
        .service(
            ServiceSpec::new("web-v1", 8080)
                .select("app", "web")
                .select("version", "v1"),
        )
        .service(
            ServiceSpec::new("web-v2", 8080)
                .select("app", "web")
                .select("version", "v2"),
        );
    for (name, yaml) in files {
        s = s.file(name, yaml);
    }
    s
}

/// Waits (up to 30 s) until `/status` reports conditions for the TrafficSplit `name`; returns
/// them (panics with the full status otherwise).
async fn split_conditions(mesh: &LoopbackMesh, name: &str, want_problem: bool) -> Vec<Condition> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let conds = mesh.conditions("TrafficSplit", name).await;
        if let Some(c) = &conds {
            if !want_problem
                || c.iter()
                    .any(|c| c.status != "True" && c.type_ != "Conflicted")
            {
                return c.clone();
            }
        }
        if tokio::time::Instant::now() > deadline {
            return conds.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn not_all_true(conds: &[Condition]) -> bool {
    conds
        .iter()
        .any(|c| c.status != "True" && c.type_ != "Conflicted")
}

/// A header-matched A/B split (`x-beta` header, 100 % to `web-v2`) whose HTTPRouteGroup regex
/// cannot be compiled. Today the match is dropped, the split keeps `matches: []` and EVERY
/// request goes to the beta backend, with `Accepted=True`.
async fn ab_with_bad_regex(regex: &str) {
    let files = vec![
        (
            "routes.yaml",
            route_group_yaml(
                NS,
                "beta-users",
                &format!("  - name: beta\n    headers:\n      x-beta: {regex:?}\n"),
            ),
        ),
        (
            "split.yaml",
            split_yaml(NS, "web-ab", "web", &[("web-v2", 100)], &["beta-users"]),
        ),
    ];
    let mesh = LoopbackMesh::start(spec(true, &files)).await;
    let web = mesh.authority("web", 8080);
    let plain = mesh.tally("client-0", &web, "/", &[], 40).await;
    let beta = mesh
        .tally(
            "client-0",
            &web,
            "/",
            &[("x-beta", "on"), ("x-beta", "(on")],
            40,
        )
        .await;
    assert_eq!(
        plain.body("web v2\n") + beta.body("web v2\n"),
        0,
        "regex {regex:?}: requests reached the beta backend through a match that cannot be \
         compiled: plain {plain:?}, with x-beta {beta:?}"
    );
    assert_eq!(
        plain.body("web v1\n"),
        40,
        "regex {regex:?}: requests without the header must keep going to web: {plain:?}\n{}",
        mesh.logs()
    );
    let conds = split_conditions(&mesh, "web-ab", true).await;
    assert!(
        not_all_true(&conds),
        "regex {regex:?}: the split's status must say it is not (fully) in force: {conds:?}"
    );
}

/// Mistake: `x-beta: "(on"` (invalid regex). Fixed outcome: 0 requests to the beta backend,
/// requests without the header still reach web (v1), and the split has a condition that is not
/// True.
///
/// Depends on: the compiler fail-closed fix (a match that cannot be compiled routes nothing).
#[tokio::test]
async fn ab_split_with_invalid_regex_sends_nothing_to_beta() {
    ab_with_bad_regex("(on").await;
}

/// Mistake: `x-beta: "a{1000}{1000}"` (over the regex size limit). Fixed outcome as above.
///
/// Depends on: the compiler fail-closed fix.
#[tokio::test]
async fn ab_split_with_oversized_regex_sends_nothing_to_beta() {
    ab_with_bad_regex("a{1000}{1000}").await;
}

/// Mistake: a 90/10 canary whose stable backend name has a typo (`web-v1x`, 90) next to the
/// canary `web-v2` (10). Today the missing backend's weight is dropped and 100 % go to the
/// canary.
///
/// Fixed outcome (Gateway API rule for invalid backendRefs): the missing backend keeps its
/// weight: about 90 % of 200 requests fail with 5xx, about 10 % reach the canary, and none of the
/// 90 % reach it (bounds: at least 140 answers 5xx; between 1 and 50 reach v2; a binomial(200,
/// 0.1) is above 50 with probability < 1e-9); the split's status has a condition that is not
/// True.
///
/// Depends on: the compiler fail-closed fix (missing backend keeps its weight).
#[tokio::test]
async fn canary_with_missing_stable_backend_fails_its_share() {
    let files = vec![(
        "split.yaml",
        split_yaml(
            NS,
            "web-canary",
            "web",
            &[("web-v1x", 90), ("web-v2", 10)],
            &[],
        ),
    )];
    let mesh = LoopbackMesh::start(spec(false, &files)).await;
    let web = mesh.authority("web", 8080);
    let t = mesh.tally("client-0", &web, "/", &[], 200).await;
    let canary = t.body("web v2\n");
    assert!(
        canary <= 50,
        "the stable backend's share shifted to the canary: {canary} of 200 reached web-v2: {t:?}"
    );
    assert!(
        t.server_errors() >= 140,
        "the stable backend's share must fail (5xx), not go elsewhere: {t:?}"
    );
    assert!(
        canary >= 1,
        "the canary's own 10 % must still be served: {t:?}"
    );
    let conds = split_conditions(&mesh, "web-canary", true).await;
    assert!(
        not_all_true(&conds),
        "the split's status must say a backend is missing: {conds:?}"
    );
}

/// Mistakes: weights 0/0, and a split whose root Service does not exist. Today both are silent
/// (`Accepted=True`, or no status at all).
///
/// Fixed outcome: each split's `Accepted` condition is present and not True.
///
/// Depends on: the compiler fail-closed fix (status for NoWeight / ServiceNotFound).
#[tokio::test]
async fn zero_weights_and_missing_root_are_not_accepted() {
    let files = vec![
        (
            "split-zero.yaml",
            split_yaml(NS, "web-zero", "web", &[("web-v1", 0), ("web-v2", 0)], &[]),
        ),
        (
            "split-noroot.yaml",
            split_yaml(
                NS,
                "no-root",
                "nosuch",
                &[("web-v1", 50), ("web-v2", 50)],
                &[],
            ),
        ),
    ];
    let mesh = LoopbackMesh::start(spec(false, &files)).await;
    for name in ["web-zero", "no-root"] {
        let conds = split_conditions(&mesh, name, true).await;
        let accepted = conds.iter().find(|c| c.type_ == "Accepted");
        assert!(
            accepted.is_some_and(|c| c.status != "True"),
            "TrafficSplit {name}: Accepted must be present and not True: {conds:?}\n/status: {}",
            mesh.operator_status().await
        );
    }
}
