//! The aggregated API group `tap.weft.io/v1alpha1` (a cluster's way in to tap): the API server
//! authenticates the user and checks RBAC (`weft-tap` ClusterRole: verb `watch` or `get` on the
//! group's resources) before it proxies the request here; this handler refuses a request without
//! an authenticated [`Caller`] as well.
//!
//! - `GET /apis/tap.weft.io/v1alpha1`: discovery (an `APIResourceList`).
//! - `GET /apis/tap.weft.io/v1alpha1/namespaces/{ns}/tap`: every meshed pod of the namespace.
//! - `GET /apis/tap.weft.io/v1alpha1/namespaces/{ns}/{pods|deployments|statefulsets|daemonsets|jobs}/{name}/tap`.
//!
//! Filters and limit travel in the query string (`to`, `path`, `method`, `direction`, `max`),
//! events come back as newline-delimited JSON, as from the admin port's `GET /tap`.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{TapQuery, Tapper, Target};
use crate::aggregated::{Caller, GroupHandler, ResponseFuture};
use crate::respond::{json, text, Body};

pub const GROUP: &str = "tap.weft.io";
pub const VERSION: &str = "v1alpha1";
/// The workload kinds that may be tapped, as the URL names them.
pub const RESOURCES: [&str; 6] = [
    "namespaces",
    "pods",
    "deployments",
    "statefulsets",
    "daemonsets",
    "jobs",
];

/// `tap.weft.io` for the aggregated API server.
pub struct TapGroup {
    tapper: Arc<Tapper>,
}

impl TapGroup {
    pub fn new(tapper: Arc<Tapper>) -> Self {
        TapGroup { tapper }
    }
}

/// The target a path names, or why not.
pub fn target_of(path: &str) -> Result<Option<Target>, String> {
    let prefix = format!("/apis/{GROUP}/{VERSION}");
    let rest = path
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("not under {prefix}"))?
        .trim_end_matches('/');
    if rest.is_empty() {
        return Ok(None);
    }
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let bad = || format!("no such resource: {path}");
    match parts.as_slice() {
        ["namespaces", ns, "tap"] => Ok(Some(Target::Namespace((*ns).to_string()))),
        ["namespaces", ns, kind, name, "tap"]
            if RESOURCES.contains(kind) && *kind != "namespaces" =>
        {
            Target::parse(&format!("{kind}/{name}"), ns).map(Some)
        }
        _ => Err(bad()),
    }
}

fn discovery() -> serde_json::Value {
    let resources: Vec<serde_json::Value> = RESOURCES
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": format!("{r}/tap"),
                "singularName": "",
                "namespaced": *r != "namespaces",
                "kind": "Tap",
                "verbs": ["get", "watch"],
            })
        })
        .collect();
    serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": resources,
    })
}

impl GroupHandler for TapGroup {
    fn group(&self) -> &'static str {
        GROUP
    }

    fn handle(&self, req: Request<Incoming>, caller: Caller) -> ResponseFuture {
        let response = answer(&self.tapper, &req, &caller);
        Box::pin(async move { response })
    }
}

/// The answer to one request of the group (the whole decision, for tests).
pub fn answer<B>(tapper: &Tapper, req: &Request<B>, caller: &Caller) -> Response<Body> {
    if caller.user.is_empty() {
        return text(
            StatusCode::UNAUTHORIZED,
            "tap.weft.io: no authenticated user (the API server did not say who calls)\n",
        );
    }
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "tap.weft.io: GET only\n");
    }
    match target_of(req.uri().path()) {
        Ok(None) => json(StatusCode::OK, &discovery()),
        Ok(Some(target)) => {
            match TapQuery::from_query(req.uri().query().unwrap_or(""), Some(target)) {
                Ok(q) => {
                    tracing::info!(user = %caller.user, target = ?q.target, "tap opened through the aggregated API");
                    tapper.open(q)
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{CaStore, SpiffeId};

    fn tapper() -> Tapper {
        let ca = Arc::new(CaStore::generate("cluster.local").unwrap());
        let own = SpiffeId::new("cluster.local", "weft-system", "weft-operator").unwrap();
        Tapper::new(
            super::super::TapDirectory::new(),
            Arc::new(super::super::cert::TapClientCert::new(ca, own)),
            "cluster.local".into(),
            4190,
            None,
        )
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn a_request_without_a_caller_is_refused_and_paths_name_targets() {
        let t = tapper();
        let path = "/apis/tap.weft.io/v1alpha1/namespaces/demo/deployments/api/tap";
        let rsp = answer(&t, &get(path), &Caller::default());
        assert_eq!(rsp.status(), StatusCode::UNAUTHORIZED);
        let alice = Caller {
            user: "alice".into(),
            ..Caller::default()
        };
        let rsp = answer(&t, &get("/apis/tap.weft.io/v1alpha1"), &alice);
        assert_eq!(rsp.status(), StatusCode::OK);
        // No pod of the target in the model: 404, nothing opened.
        let rsp = answer(&t, &get(path), &alice);
        assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
        let post = Request::post(path).body(()).unwrap();
        assert_eq!(
            answer(&t, &post, &alice).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            target_of(path).unwrap(),
            Some(Target::Workload {
                namespace: "demo".into(),
                kind: "deployments".into(),
                name: "api".into()
            })
        );
        assert_eq!(
            target_of("/apis/tap.weft.io/v1alpha1/namespaces/demo/tap").unwrap(),
            Some(Target::Namespace("demo".into()))
        );
        assert!(target_of("/apis/tap.weft.io/v1alpha1/namespaces/demo/secrets/x/tap").is_err());
        // The admin port without a token file: 403 (tested end to end in cli/tests/tap.rs).
    }
}
