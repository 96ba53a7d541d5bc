//! A mocked Kubernetes API server for operator tests (in the style of kube-rs controller-rs
//! `fixtures.rs`): a `kube::Client` over a `tower_test` mock service, and an [`ApiServer`] that
//! receives each request the client makes, lets the test assert its method, path, query and
//! body, and answers it.
#![allow(dead_code)] // each test file uses a part

use std::collections::BTreeMap;

use futures::FutureExt;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

/// A client whose every request goes to the returned [`ApiServer`].
pub fn client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

/// The server side of [`client`].
pub struct ApiServer {
    handle: Handle,
}

/// One request the client made, and the way to answer it.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
    reply: Reply,
}

impl ApiServer {
    /// The next request (panics if the client is gone).
    pub async fn next(&mut self) -> Call {
        let (request, reply) = self
            .handle
            .next_request()
            .await
            .expect("the client hung up before the expected request");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        let query = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect();
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body,
            reply,
        }
    }

    /// The next request, asserted to be `method path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request (query {:?}, body {})",
            call.query,
            call.body
        );
        call
    }

    /// Whether a request is waiting unanswered right now (no waiting, no clock involved; a
    /// client that is gone has none).
    pub fn has_pending(&mut self) -> bool {
        matches!(self.handle.next_request().now_or_never(), Some(Some(_)))
    }
}

impl Call {
    /// Answers with `status` and a JSON body.
    pub fn json(self, status: StatusCode, body: Value) {
        let bytes = serde_json::to_vec(&body).expect("JSON");
        self.raw(status, bytes);
    }

    /// Answers 200 with a JSON body.
    pub fn ok(self, body: Value) {
        self.json(StatusCode::OK, body);
    }

    /// Answers with a Kubernetes `Status` failure.
    pub fn fail(self, code: u16, reason: &str) {
        let status = StatusCode::from_u16(code).expect("status code");
        self.json(
            status,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("mock: {reason}"),
                "reason": reason, "code": code,
            }),
        );
    }

    /// Answers with `status` and raw bytes (a watch stream: one JSON event per line).
    pub fn raw(self, status: StatusCode, bytes: Vec<u8>) {
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .expect("response");
        self.reply.send_response(response);
    }

    /// A query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
}

/// A watch stream body: one `{"type": .., "object": ..}` per line.
pub fn watch_events(events: &[(&str, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, object) in events {
        out.extend(serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON"));
        out.push(b'\n');
    }
    out
}
