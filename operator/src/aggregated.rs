//! The seam between the operator's aggregated API server (Kubernetes API aggregation: the API
//! server authenticates and authorizes the user, then proxies the request here with the user in
//! front-proxy headers) and the API groups it serves (`metrics.smi-spec.io`, `tap.weft.io`).
//!
//! The server authenticates the front proxy and extracts the [`Caller`]; a [`GroupHandler`]
//! answers every request under `/apis/<group>/...`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::respond::Body;

/// The user the API server authenticated (from its `X-Remote-User`, `X-Remote-Group` and
/// `X-Remote-Extra-*` headers, trusted only over a verified front-proxy connection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A response being produced.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Serves one API group of the aggregated API.
pub trait GroupHandler: Send + Sync + 'static {
    /// The API group, e.g. `metrics.smi-spec.io`.
    fn group(&self) -> &'static str;
    /// Answers a request whose path starts with `/apis/<group>` (discovery documents included).
    fn handle(&self, req: Request<Incoming>, caller: Caller) -> ResponseFuture;
}
