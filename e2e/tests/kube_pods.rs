//! Pods without a kubelet: the kubelet stand-in runs a pod's init container (`weft-proxy-init`)
//! and containers in a network namespace; inbound and outbound TCP are redirected to the proxy
//! ports, except for the proxy's uid and the skipped ports; Services resolve and reach endpoints.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use weft_e2e::harness::kube_env;

const TEST: &str = "kube_pods";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_pods_run_in_netns_with_iptables_redirection() {
    let Some(env) = kube_env(
        TEST,
        &["weft-proxy-init"],
        Path::new(env!("CARGO_BIN_EXE_weft-test-app")),
    )
    .await
    else {
        return;
    };
    env.namespace("e2e", json!({})).await;

    // A pod whose "proxy" reports the original destination of what it receives.
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "redirected", "namespace": "e2e",
                     "annotations": {"weft.io/skip-outbound-ports": "3306"}},
        "spec": {
            "initContainers": [{"name": "weft-init", "image": "weft/proxy:dev",
                "command": ["weft-proxy-init"],
                // As the injector does: the image's user is the proxy's, iptables needs root.
                "securityContext": {"runAsUser": 0},
                "args": ["--proxy-uid", "2102", "--skip-inbound-ports", "4191", "--skip-outbound-ports", "3306"]}],
            "containers": [
                {"name": "inbound", "image": "weft-test-app", "args": ["origdst", "--listen", "0.0.0.0:4143"]},
                {"name": "outbound", "image": "weft-test-app", "args": ["origdst", "--listen", "127.0.0.1:4140"]},
                {"name": "admin", "image": "weft-test-app", "args": ["http", "--listen", "0.0.0.0:4191", "--name", "admin"],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 4191}}}
            ]
        }
    }))
    .await;
    // A plain web server behind a Service.
    env.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "e2e"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .await;
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "e2e", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "weft-test-app",
            "env": [{"name": "APP_NAME", "value": "web"}, {"name": "APP_VERSION", "value": "v1"}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}}]}
    }))
    .await;

    let pod = env
        .wait_ready("e2e", "redirected", Duration::from_secs(60))
        .await;
    let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
    assert!(ip.starts_with("198.18."), "pod IP {ip}");
    env.wait_ready("e2e", "web", Duration::from_secs(60)).await;

    // Inbound: a connection to any port lands on the inbound port, original destination intact.
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "--http0.9",
            &format!("http://{ip}:8080/"),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(text(&out).trim(), format!("{ip}:8080"), "inbound redirect");
    // Skipped inbound port: reaches the app directly.
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{ip}:4191/")])
        .output()
        .await
        .unwrap();
    assert_eq!(text(&out).trim(), "admin v1", "skipped inbound port");

    // Outbound from the app (root): redirected to the outbound port.
    let out = env
        .exec(
            "e2e",
            "redirected",
            None,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "--http0.9",
                "http://198.18.0.1:9/",
            ],
        )
        .await;
    assert_eq!(text(&out).trim(), "198.18.0.1:9", "outbound redirect");
    // Outbound to a Service name: resolved to its ClusterIP, then redirected.
    let out = env
        .exec(
            "e2e",
            "redirected",
            None,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "--http0.9",
                "http://web.e2e.svc.cluster.local/",
            ],
        )
        .await;
    let got = text(&out);
    assert!(
        got.trim().starts_with("198.19.") && got.trim().ends_with(":80"),
        "service redirect: {got}"
    );

    // The proxy's uid is not redirected: it reaches the Service (ClusterIP → endpoint) for real.
    let out = env
        .exec(
            "e2e",
            "redirected",
            Some(2102),
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "http://web.e2e.svc.cluster.local/",
            ],
        )
        .await;
    if text(&out).trim() != "web v1" {
        let host = std::process::Command::new("iptables")
            .args(["-t", "nat", "-S"])
            .output()
            .unwrap();
        let verbose = env
            .exec(
                "e2e",
                "redirected",
                Some(2102),
                &[
                    "curl",
                    "-sv",
                    "--max-time",
                    "5",
                    "http://web.e2e.svc.cluster.local/",
                ],
            )
            .await;
        panic!(
            "proxy uid must bypass the redirect: {}\nhost nat:\n{}",
            text(&verbose),
            text(&host)
        );
    }
    // A skipped outbound port is not redirected either (nothing listens: connection refused).
    let out = env
        .exec(
            "e2e",
            "redirected",
            None,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://198.18.0.1:3306/",
            ],
        )
        .await;
    assert_eq!(
        text(&out).trim(),
        "000",
        "skipped outbound port must not be redirected"
    );

    // Re-running the init binary is idempotent (no duplicate rules).
    let init = env.bin_dir.join("weft-proxy-init");
    let init = init.to_string_lossy();
    for _ in 0..2 {
        let out = env
            .exec(
                "e2e",
                "redirected",
                None,
                &[
                    &init,
                    "--proxy-uid",
                    "2102",
                    "--skip-inbound-ports",
                    "4191",
                    "--skip-outbound-ports",
                    "3306",
                ],
            )
            .await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let rules = env
        .exec("e2e", "redirected", None, &["iptables", "-t", "nat", "-S"])
        .await;
    let rules = text(&rules);
    assert_eq!(
        rules.matches("-A OUTPUT -p tcp -j WEFT_OUTPUT").count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules.matches("--uid-owner 2102 -j RETURN").count(),
        1,
        "{rules}"
    );

    // A bad flag fails with a clear message.
    let out = env
        .exec("e2e", "redirected", None, &[&init, "--proxy-uid", "x"])
        .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid uid"), "{}", text(&out));

    env.shutdown().await;
}
