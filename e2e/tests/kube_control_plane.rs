//! The control plane itself: etcd + kube-apiserver + kube-controller-manager start, serve
//! RBAC-protected APIs, and run the endpoints controller.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use weft_e2e::cluster::{skip, Binaries, Cluster, ClusterOptions};

async fn start(test: &str) -> Option<Cluster> {
    let bins = match tokio::task::spawn_blocking(Binaries::locate_or_build).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            skip(test, &e.to_string());
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    match Cluster::start(&bins, ClusterOptions::default()).await {
        Ok(c) => Some(c),
        Err(e) => panic!("{test}: control plane failed to start: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_control_plane_serves_and_runs_endpoints_controller() {
    let Some(cluster) = start("kube_control_plane").await else {
        return;
    };
    let client = cluster.client().await.unwrap();

    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "20")
    );

    let ns: Api<Namespace> = Api::all(client.clone());
    let mut n = Namespace::default();
    n.metadata.name = Some("e2e".into());
    ns.create(&PostParams::default(), &n).await.unwrap();

    // Anonymous requests are refused: RBAC and authentication are on.
    let anon = reqwest_like_get(&cluster.server, "/api/v1/namespaces").await;
    assert!(anon == 401 || anon == 403, "anonymous list answered {anon}");

    // A Service and a Pod whose status says Ready: the endpoints controller lists its IP.
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "e2e"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "e2e")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "e2e");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "e2e", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "weft-test-app"}], "nodeName": "e2e"}
    }))
    .unwrap();
    // The ServiceAccount admission plugin refuses pods until the default SA has a token.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("retrying pod create: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("creating pod: {e}"),
        }
    }
    let status = serde_json::json!({"status": {
        "phase": "Running", "podIP": "198.18.0.10", "podIPs": [{"ip": "198.18.0.10"}],
        "conditions": [{"type": "Ready", "status": "True"}]
    }});
    pods.patch_status("web-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "e2e");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ips = loop {
        let ips: Vec<String> = eps
            .get_opt("web")
            .await
            .unwrap()
            .and_then(|e| e.subsets)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| a.ip)
            .collect();
        if !ips.is_empty() || tokio::time::Instant::now() > deadline {
            break ips;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ips, ["198.18.0.10"]);
}

/// Status code of an unauthenticated GET (trusting any certificate; only status is read).
async fn reqwest_like_get(server: &str, path: &str) -> u16 {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{server}{path}"),
        ])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}
