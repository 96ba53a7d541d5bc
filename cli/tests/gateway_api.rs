//! `weft compile`, `weft check -f` and `weft diff` on folders with Gateway API HTTPRoutes (GAMMA),
//! each run as a process: the route's `status.parents[]` and what it compiled to, a failing check
//! for a route not Accepted or not ResolvedRefs, a warning for a TrafficSplit an HTTPRoute
//! overrides, and route weight and status changes in a diff.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .expect("running weft")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The canary example's namespace, Services and pods, plus `extra` files.
fn folder(extra: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["00-namespace.yaml", "10-services.yaml", "20-pods.yaml"] {
        std::fs::copy(repo().join("examples/canary").join(f), dir.path().join(f))
            .expect("copy example");
    }
    for (name, body) in extra {
        std::fs::write(dir.path().join(name), body).expect("write");
    }
    dir
}

/// An HTTPRoute on Service `web` port 80 with web-v1/`backend2` weighted `w1`/`w2`.
fn route(w1: u32, backend2: &str, w2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web-route\n  namespace: shop\n\
         spec:\n  parentRefs:\n  - group: \"\"\n    kind: Service\n    name: web\n    port: 80\n  rules:\n  \
         - backendRefs:\n    - name: web-v1\n      port: 80\n      weight: {w1}\n    - name: {backend2}\n      port: 80\n      weight: {w2}\n"
    )
}

fn path(d: &tempfile::TempDir) -> &str {
    d.path().to_str().expect("utf-8 path")
}

#[test]
fn compile_shows_route_status_and_what_it_compiled_to() {
    let d = folder(&[("40-route.yaml", route(80, "web-v2", 20))]);
    let o = weft(&["compile", "-f", path(&d), "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let routes = v["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 1, "{}", text(&o));
    let r = &routes[0];
    assert_eq!(r["kind"], "HTTPRoute");
    assert_eq!(r["name"], "web-route");
    let parent = &r["parents"][0];
    assert_eq!(parent["parent"], "Service web:80");
    assert_eq!(parent["controller_name"], "weft.io/mesh-controller");
    for t in ["Accepted", "ResolvedRefs"] {
        assert!(
            parent["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .any(|c| c["type"] == t && c["status"] == "True"),
            "{t} True: {parent}"
        );
    }
    let to = &r["compiled_to"][0];
    assert_eq!(to["resource"], "outbound:web.shop");
    assert_eq!(to["port"], 80);
    assert!(
        to["route"]
            .as_str()
            .is_some_and(|n| n.starts_with("httproute:shop/web-route/")),
        "{to}"
    );
    assert_eq!(
        to["backends"],
        serde_json::json!(["web-v1=80", "web-v2=20"])
    );
}

#[test]
fn check_passes_an_accepted_route_and_fails_an_unresolved_one() {
    let good = folder(&[("40-route.yaml", route(80, "web-v2", 20))]);
    let o = weft(&["check", "-f", path(&good)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().any(|l| l.starts_with("ok")
            && l.contains("httproute/shop/web-route")
            && l.contains("web-v1=80,web-v2=20")),
        "{}",
        text(&o)
    );

    // A backendRef to a Service that does not exist: ResolvedRefs=False, BackendNotFound.
    let bad = folder(&[("40-route.yaml", route(80, "web-v3", 20))]);
    let o = weft(&["check", "-f", path(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("httproute/shop/web-route"))
        .unwrap_or_else(|| panic!("a line for the route\n{}", text(&o)));
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(
        line.contains("ResolvedRefs=False (BackendNotFound)"),
        "{line}"
    );
    // compile exits 1 on the same route, and says why on stderr.
    let o = weft(&["compile", "-f", path(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("BackendNotFound"),
        "{}",
        text(&o)
    );
}

#[test]
fn check_fails_a_route_that_is_not_accepted() {
    // A parentRef to a Service that does not exist: Accepted=False, NoMatchingParent.
    let r = route(50, "web-v2", 50).replace("    name: web\n", "    name: nosuch\n");
    let d = folder(&[("40-route.yaml", r)]);
    let o = weft(&["check", "-f", path(&d), "-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let c = v
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "httproute/shop/web-route")
        .unwrap_or_else(|| panic!("{}", text(&o)))
        .clone();
    assert_eq!(c["outcome"], "fail", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Accepted=False (NoMatchingParent)")),
        "{c}"
    );
}

#[test]
fn check_warns_when_a_route_overrides_a_traffic_split() {
    let split = std::fs::read_to_string(repo().join("examples/canary/30-split.yaml"))
        .expect("split example");
    let d = folder(&[
        ("30-split.yaml", split),
        ("40-route.yaml", route(80, "web-v2", 20)),
    ]);
    let o = weft(&["check", "-f", path(&d)]);
    // A warning does not fail the check: the route is in force, as documented.
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("trafficsplit/shop/web-canary"))
        .unwrap_or_else(|| panic!("a line for the split\n{}", text(&o)));
    assert!(line.starts_with("warn"), "{line}");
    assert!(line.contains("web-route"), "names the route: {line}");
}

#[test]
fn diff_shows_route_weight_and_status_changes() {
    let base = folder(&[("40-route.yaml", route(90, "web-v2", 10))]);
    let new = folder(&[("40-route.yaml", route(50, "web-v2", 50))]);
    let o = weft(&["diff", "-f", path(&new), "-f", path(&base)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("routes[name=httproute:shop/web-route/rule-0].backends[service=web-v1].weight: 90 -> 50"),
        "{}",
        text(&o)
    );
    assert!(
        out.contains("backends[service=web-v2].weight: 10 -> 50"),
        "{}",
        text(&o)
    );

    // A route that stops resolving: its status change is in the diff.
    let broken = folder(&[("40-route.yaml", route(90, "web-v3", 10))]);
    let o = weft(&["diff", "-f", path(&broken), "-f", path(&base), "-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let conds: Vec<&str> = v["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        conds.iter().any(|c| c.starts_with(
            "HTTPRoute shop/web-route: Service web:80 ResolvedRefs True(ResolvedRefs)"
        ) && c.contains("-> False(BackendNotFound)")),
        "{conds:?}"
    );

    // The same folder twice: nothing changes, exit 0.
    let o = weft(&["diff", "-f", path(&base), "-f", path(&base)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
