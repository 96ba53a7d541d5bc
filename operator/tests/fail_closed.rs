//! Issue #13, "mistakes that shift traffic instead of failing closed", against the real
//! `weft-operator` binary in `--manifests` mode: each mistake is applied by writing a file, and
//! the admin `/status` must say the split is not Accepted (or the relevant condition is not
//! True) with the reason, the log must carry a warning line for it, and the config pushed to a
//! proxy must fail closed (a missing backend keeps its weight; an uncompilable match routes
//! nothing).

mod operator_process;
mod runtime_support;

use operator_process::Operator;
use runtime_support::*;
use weft_proxy_api::v1;

/// A Service `name` selecting `app: web` pods of `version` on port 80.
fn svc(name: &str, version: &str, n: u8) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: 10.96.1.{n}\n  selector: {{app: web, version: {version}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
    )
}

fn ts(name: &str, root: &str, backends: &[(&str, u64)], group: Option<&str>) -> String {
    let b: String = backends
        .iter()
        .map(|(s, w)| format!("  - {{service: {s}, weight: {w}}}\n"))
        .collect();
    let m = group
        .map(|g| format!("  matches: [{{kind: HTTPRouteGroup, name: {g}}}]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  service: {root}\n  backends:\n{b}{m}---\n"
    )
}

fn group(name: &str, header_regex: &str) -> String {
    format!(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  matches:\n  - name: beta\n    headers: {{x-beta: '{header_regex}'}}\n---\n"
    )
}

/// Every mistake of the issue, each on its own root service.
fn mistakes() -> String {
    [
        svc("ab", "v1", 20),
        svc("ab2", "v1", 21),
        svc("zero", "v1", 22),
        svc("cf", "v1", 23),
        svc("tw", "v1", 24),
        // A 90/10 canary whose stable backend has a typo.
        ts("typo", "tw", &[("web-v1typo", 90), ("web-v2", 10)], None),
        // A/B splits whose header regex is invalid / over the regex size limit.
        group("bad-regex", "(on"),
        ts("ab", "ab", &[("web-v2", 100)], Some("bad-regex")),
        group("huge-regex", "a{1000}{1000}"),
        ts("ab2", "ab2", &[("web-v2", 100)], Some("huge-regex")),
        // 0/0 weights.
        ts("zero", "zero", &[("web-v1", 0), ("web-v2", 0)], None),
        // A root that does not exist.
        ts("ghost", "ghost", &[("web-v2", 1)], None),
        // Two splits on one root, neither with a creationTimestamp: "a" wins by name.
        ts("cf-b", "cf", &[("web-v2", 1)], None),
        ts("cf-a", "cf", &[("web-v1", 1)], None),
    ]
    .concat()
}

/// (status, reason, message) of condition `type_` of object `kind`/`name` in a `/status` body.
fn condition(body: &str, kind: &str, name: &str, type_: &str) -> Option<(String, String, String)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let obj = v["objects"].as_array()?.iter().find(|o| {
        o["object"]["kind"] == kind
            && o["object"]["namespace"] == "demo"
            && o["object"]["name"] == name
    })?;
    let c = obj["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["message"].as_str()?.to_string(),
    ))
}

fn outbound(r: &v1::DiscoveryResponse, name: &str) -> Option<v1::OutboundService> {
    r.resources
        .iter()
        .find(|x| x.name == name)
        .and_then(|x| match &x.kind {
            Some(v1::resource::Kind::Outbound(o)) => Some(o.clone()),
            _ => None,
        })
}

#[tokio::test]
async fn binary_reports_each_mistake_and_pushes_a_config_that_fails_closed() {
    let dir = mesh_dir();
    let op = Operator::spawn(dir.path(), &[]);
    until(op.admin, "/ready", |code, _| code == 200).await;
    let mut proxy = Proxy::connect(op.discovery, "web-0").await;
    let first = proxy.next().await;
    proxy.ack(&first).await;

    // Apply every mistake.
    write_atomic(&dir.path().join("mistakes.yaml"), &mistakes());
    let body = until(op.admin, "/status", |_, b| {
        condition(b, "TrafficSplit", "cf-b", "Conflicted").is_some()
            && condition(b, "TrafficSplit", "typo", "ResolvedRefs").is_some()
    })
    .await;

    let not_true = |kind: &str, name: &str, type_: &str, reason: &str| -> String {
        let (status, got, message) = condition(&body, kind, name, type_)
            .unwrap_or_else(|| panic!("no {type_} on {kind} {name}: {body}"));
        assert_ne!(status, "True", "{kind} {name} {type_}: {message}");
        assert_eq!(got, reason, "{kind} {name} {type_}: {message}");
        message
    };
    // Missing stable backend: ResolvedRefs=False, the message names it and says it fails.
    let m = not_true("TrafficSplit", "typo", "ResolvedRefs", "BackendNotFound");
    assert!(m.contains("web-v1typo") && m.contains("503"), "{m}");
    // Uncompilable matches: neither the split nor the group is Accepted.
    for (split, g) in [("ab", "bad-regex"), ("ab2", "huge-regex")] {
        let m = not_true("TrafficSplit", split, "Accepted", "InvalidMatch");
        assert!(m.contains("matches no request"), "{m}");
        not_true("HTTPRouteGroup", g, "Accepted", "InvalidMatch");
    }
    // 0/0 weights and a missing root: not Accepted.
    let m = not_true("TrafficSplit", "zero", "Accepted", "NoWeight");
    assert!(m.contains("503"), "{m}");
    not_true("TrafficSplit", "ghost", "Accepted", "ServiceNotFound");
    // The conflict names the real reason: no timestamps, name order.
    let m = not_true("TrafficSplit", "cf-b", "Accepted", "Conflicted");
    assert!(
        m.contains("demo/cf-a") && m.contains("neither has a creationTimestamp"),
        "{m}"
    );
    assert!(!m.contains("older"), "{m}");

    // Each is also a warning line in the log.
    let log = op.log_lines();
    for (name, reason) in [
        ("typo", "BackendNotFound"),
        ("ab", "InvalidMatch"),
        ("ab2", "InvalidMatch"),
        ("zero", "NoWeight"),
        ("ghost", "ServiceNotFound"),
        ("cf-b", "Conflicted"),
    ] {
        assert!(
            log.iter().any(|l| l.contains("WARN")
                && l.contains(&format!("TrafficSplit demo/{name}"))
                && l.contains(reason)),
            "no warning for {name} ({reason}) in:\n{}",
            log.join("\n")
        );
    }

    // What the proxy is told fails closed. Pushes may be coalesced: read until the split on
    // web and the zero-weight split are both there.
    let mut web = None;
    let mut zero = None;
    let mut ab = None;
    while web.is_none() || zero.is_none() || ab.is_none() {
        let push = proxy.next().await;
        proxy.ack(&push).await;
        web = outbound(&push, "outbound:tw.demo").or(web);
        zero = outbound(&push, "outbound:zero.demo").or(zero);
        ab = outbound(&push, "outbound:ab.demo").or(ab);
    }
    let web = web.unwrap_or_default();
    let split = &web.ports[0].routes[0];
    let got: Vec<(&str, u64, &str, &str)> = split
        .backends
        .iter()
        .map(|b| {
            (
                b.service.as_str(),
                b.weight,
                b.endpoint_set.as_str(),
                b.unavailable_reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "web-v1typo",
                90,
                "",
                "backend web-v1typo of split demo/typo does not exist"
            ),
            ("web-v2", 10, "endpoints:web-v2.demo:80", ""),
        ]
    );
    // 0/0: the split route stays, with no weight (the proxy answers 503), not the root.
    let zero = zero.unwrap_or_default();
    assert_eq!(zero.ports[0].routes[0].name, "split:demo/zero");
    assert!(zero.ports[0].routes[0]
        .backends
        .iter()
        .all(|b| b.weight == 0));
    // The A/B split with an invalid regex routes nothing: only the default route.
    let ab = ab.unwrap_or_default();
    let names: Vec<&str> = ab.ports[0].routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["default"]);
}
