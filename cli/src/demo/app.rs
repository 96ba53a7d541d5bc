//! The sample workload of the demo: a tiny HTTP server that answers with its name and version.
//!
//! It runs as `weft demo-app --name api --version v2 --listen 127.42.0.12:8080` (a hidden
//! subcommand), so that the demo needs no binary beyond weft's own. Each response is a line of
//! JSON that also echoes the client identity the local proxy vouched for (`x-weft-client-id`),
//! which is how the demo shows mTLS identities.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Header the server-side proxy sets to the authenticated client's SPIFFE identity.
pub const CLIENT_ID_HEADER: &str = "x-weft-client-id";

#[derive(Clone, Debug)]
pub struct AppOptions {
    pub name: String,
    pub version: String,
    pub pod: String,
    pub listen: SocketAddr,
}

/// Serves until the process is stopped.
pub async fn run(opts: AppOptions) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let opts = Arc::new(opts);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let opts = opts.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(opts.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    opts: Arc<AppOptions>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = req
        .headers()
        .get(CLIENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = serde_json::json!({
        "service": opts.name,
        "version": opts.version,
        "pod": opts.pod,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "clientIdentity": client,
    });
    let mut text = body.to_string();
    text.push('\n');
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(resp)
}
